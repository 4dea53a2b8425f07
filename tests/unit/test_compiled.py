"""The mypyc build (setup.py, attribution.compiled): CI runs it, ATTRIBUTION_PURE_PYTHON=1 really runs
the .py sources, and a build whose sources changed is never used, not even in part."""

from __future__ import annotations

import ast
import importlib.machinery
import os
import subprocess
import sys
import types

import pytest

from attribution import compiled

REPORT = (
    "import importlib, attribution.compiled as c\n"
    "print(c.BUILD)\n"
    "for m in c.COMPILED:\n"
    "    print(importlib.import_module(m).__file__)\n"
)


def _run(pure: bool) -> tuple[str, list[str]]:
    """BUILD and the listed modules' files, in a fresh interpreter with or without pure mode."""
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    if pure:
        env[compiled.PURE_ENV] = "1"
    done = subprocess.run(
        [sys.executable, "-c", REPORT], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    build, *files = done.stdout.splitlines()
    return build, files


def _is_extension(path: str) -> bool:
    return path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_ci_runs_the_compiled_build() -> None:
    if os.environ.get("CI") != "true":
        pytest.skip("only CI must run the compiled build (here a stale build falls back to the sources)")
    build, files = _run(pure=False)
    assert build == compiled.MYPYC, f"CI must test the mypyc build, not {build}"
    assert all(_is_extension(f) for f in files), files
    if os.environ.get(compiled.PURE_ENV) != "1":  # `make test`'s second pass is pure on purpose
        assert compiled.BUILD == compiled.MYPYC


def test_pure_mode_loads_every_listed_module_from_its_source() -> None:
    build, files = _run(pure=True)
    assert build == f"pure python ({compiled.PURE_ENV}=1)"
    assert files == [str(compiled.source_path(m)) for m in compiled.COMPILED]


def test_without_pure_mode_a_current_build_loads_every_compiled_module() -> None:
    build, files = _run(pure=False)
    if build != compiled.MYPYC:
        pytest.skip(f"no current mypyc build here: {build}")
    assert len(files) == len(compiled.COMPILED)
    assert all(_is_extension(f) for f in files), files


def test_a_changed_source_disables_the_whole_build(monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = types.ModuleType("attribution._compiled")
    manifest.SOURCES = {m: "0" * 64 for m in compiled.HASHED}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "attribution._compiled", manifest)
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    assert compiled.decide().startswith("pure python (sources changed since the build: run make;")


def test_a_pure_build_manifest_disables_stale_extension_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = types.ModuleType("attribution._compiled")
    manifest.BUILD = "ATTRIBUTION_PURE_BUILD=1"  # type: ignore[attr-defined]
    manifest.SOURCES = {}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "attribution._compiled", manifest)
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    assert compiled.decide() == "pure python (built with ATTRIBUTION_PURE_BUILD=1)"


def test_no_compiled_module_defines_a_msgspec_struct() -> None:
    """mypyc builds a msgspec.Struct subclass without its class keywords (frozen, kw_only, gc,
    omit_defaults...), so a module that defines one must stay pure."""
    for module in compiled.COMPILED:
        tree = ast.parse(compiled.source_path(module).read_text(encoding="utf-8"))
        structs = [
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef) and any("Struct" in ast.unparse(b) for b in node.bases)
        ]
        assert not structs, f"{module} defines msgspec structs {structs}: it cannot be compiled"
