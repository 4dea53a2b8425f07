"""Whether the mypyc-compiled modules run, decided once when the package is imported.

`pip install -e .` (setup.py) compiles COMPILED with mypyc, next to each .py, and writes
`attribution/_compiled.py`: the SHA-256 of each module's source as it was compiled. The compiled
modules run only when every one of those sources is unchanged, every compiled module is present and
`ATTRIBUTION_PURE_PYTHON` is not 1. Otherwise a finder placed before Python's own loads every listed
module from its .py: all or nothing, because mypyc's modules call their compiled siblings directly, so
one stale .so beside fresh sources would still run old code.

The decision is quiet (no log line, no warning: pytest turns warnings into errors) and readable as
BUILD, which the bench and the worker's startup log print. The pure-Python sources stay the reference:
`make test` runs the unit tests on both.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Final

# Compiled together as one mypyc group (setup.py reads this list). Left out:
# - modules that define msgspec.Struct subclasses (core/rules.py, core/tally.py, core/subscriptions.py
#   and the struct modules user_state, model, outputs, state/base): mypyc builds such a class without
#   its class keywords (frozen=True, kw_only=True, gc=False, omit_defaults=True...), which msgspec
#   reads from the class statement; tests/unit/test_compiled.py refuses one in this list.
# - engine/processor.py: it compiles, but compiled it calls the rules directly, so a test can no
#   longer swap `user.apply` for a failing one (tests/unit/test_poison.py), and it measured no faster.
COMPILED: Final = (
    "attribution.core.money",
    "attribution.core.state_codec",
    "attribution.core.web",
    "attribution.core.items",
    "attribution.core.credit",
    "attribution.core.identity",
    "attribution.core.user",
    "attribution.state.ledger",
)
# What mypyc read the types of while compiling (structs, settings, deltas, errors): an edit there can
# change what the compiled code assumes, so it makes the build stale too.
TYPED_BY: Final = (
    "attribution.core.model",
    "attribution.core.outputs",
    "attribution.core.rules",
    "attribution.core.subscriptions",
    "attribution.core.tally",
    "attribution.core.user_state",
    "attribution.errors",
    "attribution.state.base",
    "attribution.state.cache",
    "attribution.state.generation",
    "attribution.state.keys",
)
HASHED: Final = COMPILED + TYPED_BY
PURE_ENV: Final = "ATTRIBUTION_PURE_PYTHON"
MYPYC: Final = "mypyc"
_PACKAGE_DIR: Final = Path(__file__).resolve().parent
_SHARED_LIB: Final = "attribution_native__mypyc"  # the group's code, a top-level module (setup.py)

BUILD: str = "undecided"  # set by select(): "mypyc" or "pure python (<why>)"


def source_path(module: str) -> Path:
    """The .py file of a listed module (``attribution.core.user`` -> ``.../attribution/core/user.py``)."""
    return _PACKAGE_DIR.joinpath(*module.split(".")[1:]).with_suffix(".py")


def _extension_present(stem: Path) -> bool:
    return any(
        stem.with_name(stem.name + suffix).exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def decide() -> str:
    """Why the compiled build may run ("mypyc") or may not ("pure python (...)"), from the environment,
    the build's manifest and the sources on disk."""
    if os.environ.get(PURE_ENV) == "1":
        return f"pure python ({PURE_ENV}=1)"
    try:
        manifest = importlib.import_module("attribution._compiled")
    except ModuleNotFoundError:
        return "pure python (not compiled: run make)"
    built: dict[str, str] = getattr(manifest, "SOURCES", {})
    if not built:
        return f"pure python (built with {getattr(manifest, 'BUILD', '?')})"
    if sorted(built) != sorted(HASHED):
        return "pure python (built from another module list: run make)"
    changed = [m for m in HASHED if _digest(source_path(m)) != built[m]]
    if changed:
        return f"pure python (sources changed since the build: run make; {', '.join(changed)})"
    if importlib.util.find_spec(_SHARED_LIB) is None or not all(
        _extension_present(source_path(m).with_suffix("")) for m in COMPILED
    ):
        return "pure python (compiled modules missing: run make)"
    return MYPYC


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds every listed module as its .py, ahead of the .so that Python's path finder prefers."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in COMPILED:
            return None
        source = str(source_path(fullname))
        return importlib.util.spec_from_file_location(
            fullname, source, loader=importlib.machinery.SourceFileLoader(fullname, source)
        )


def select() -> str:
    """Decide once which build runs, before any listed module is imported; returns BUILD."""
    global BUILD  # noqa: PLW0603  # one decision per process, read as a module attribute
    if BUILD == "undecided":
        BUILD = decide()
        if BUILD != MYPYC and not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _SourceFinder())
    return BUILD
