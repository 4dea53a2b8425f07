"""The arrows of the package point one way: a production import never reaches the dev kit, the core
knows no I/O, and the engine knows no Kafka client."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "attribution"

#: package -> packages it must never import (directly or by a lazy import inside a function)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": ("state", "engine", "runtime", "infra", "devkit", "contract", "cli", "api"),
    "contract": ("state", "engine", "runtime", "infra", "devkit", "cli", "api"),
    "state": ("engine", "runtime", "infra", "devkit", "cli", "api"),
    "engine": ("runtime", "infra", "devkit", "cli", "api"),
    "infra": ("engine", "runtime", "devkit", "cli", "api"),
    "runtime": ("devkit", "cli", "api"),
    "api": ("devkit", "cli"),
}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_point_one_way(package: str) -> None:
    bad = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "attribution" and len(parts) > 1 and parts[1] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not bad, "\n".join(bad)


def test_external_clients_stay_in_their_layers() -> None:
    """Kafka clients only in runtime/ (and the dev kit), Faust only in runtime/faust/ (and the dev
    kit's bench); no Redis client in core/ or engine/."""
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = path.relative_to(PACKAGE).parts[0]
        for name in _imports(path):
            root = name.split(".")[0]
            if root == "confluent_kafka" and layer not in ("runtime", "devkit"):
                bad.append(f"{path.name} imports {name}")
            # Faust and its driver only in the Faust runtime: the confluent worker never loads them
            faust_home = path.relative_to(PACKAGE).parts[:2] == ("runtime", "faust") or layer == "devkit"
            if root in ("faust", "aiokafka", "mode") and not faust_home:
                bad.append(f"{path.name} imports {name}")
            if root == "redis" and layer in ("core", "engine", "contract"):
                bad.append(f"{path.name} imports {name}")
    assert not bad, "\n".join(bad)
