"""Build hook: compiles the per-user rules and the batch protocol's Python side with mypyc.

pyproject.toml stays the metadata source; this file only adds the extension modules. The pure-Python
sources stay the reference (the tests run against both). `pip install -e .` builds the modules in
place, next to their .py, with the system C compiler; `ATTRIBUTION_PURE_BUILD=1` at install time skips
compilation (a platform without a C compiler). Beside the modules the build writes
`attribution/_compiled.py`: a SHA-256 of each compiled module's source, so that `attribution.compiled`
can refuse a stale build (see there).
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import sys
import time
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent

# The modules to compile, and why the others stay pure, are listed in attribution/compiled.py, which
# also decides at import whether this build may run; read here without importing the package.
_LISTS = runpy.run_path(str(ROOT / "attribution" / "compiled.py"))
COMPILED: tuple[str, ...] = _LISTS["COMPILED"]
HASHED: tuple[str, ...] = _LISTS["HASHED"]  # COMPILED and the modules whose types mypyc read
# mypyc's shared library (the group's code; each compiled module is a small shim calling into it): a
# top-level module beside the package (mypyc derives each module's __file__ from its place, so it
# cannot live inside the package).
GROUP = "attribution_native"
MANIFEST = "attribution/_compiled.py"


def _source(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


def _manifest(sources: dict[str, str], build: str) -> str:
    lines = [
        '"""Written by setup.py at build time: do not edit, do not commit (see attribution/compiled.py)."""',
        "",
        f"BUILD = {json.dumps(build)}",
        "SOURCES: dict[str, str] = {",
        *(f"    {json.dumps(module)}: {json.dumps(digest)}," for module, digest in sources.items()),
        "}",
        "",
    ]
    return "\n".join(lines)


def _digests() -> dict[str, str]:
    return {m: hashlib.sha256(_source(m).read_bytes()).hexdigest() for m in HASHED}


class BuildCompiled(build_ext):  # type: ignore[misc, unused-ignore]  # untyped before setuptools 71
    """setuptools' build_ext, timed, then the manifest of what it compiled beside the modules."""

    digests: dict[str, str] = {}  # noqa: RUF012  # the sources as mypyc read them (set by _options)

    def run(self) -> None:
        started = time.perf_counter()
        super().run()
        seconds = time.perf_counter() - started
        target = ROOT if self.inplace else Path(self.build_lib)
        (target / MANIFEST).write_text(_manifest(self.digests, "mypyc"), encoding="utf-8")
        print(f"attribution: mypyc compiled {len(COMPILED)} modules in {seconds:.1f} s", file=sys.stderr)


def _options() -> dict[str, Any]:
    if os.environ.get("ATTRIBUTION_PURE_BUILD") == "1":
        # No extension modules; an empty manifest also disables .so files an earlier build left here.
        (ROOT / MANIFEST).write_text(_manifest({}, "ATTRIBUTION_PURE_BUILD=1"), encoding="utf-8")
        return {}
    from mypyc.build import mypycify  # noqa: PLC0415  # a build requirement, absent in a pure build

    # Hashed before mypyc reads them: a source edited meanwhile makes the build stale, never wrong.
    BuildCompiled.digests = _digests()
    modules = mypycify([str(_source(m).relative_to(ROOT)) for m in COMPILED], opt_level="3", group_name=GROUP)
    return {"ext_modules": modules, "cmdclass": {"build_ext": BuildCompiled}}


setup(**_options())
