"""The example messages of ``topics/examples`` (the readable contract at the repository root)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from attribution.contract.topics import spec

TOPICS_DIR = Path(__file__).resolve().parents[2] / "topics"


def examples(name: str, valid: bool = True) -> list[tuple[str, Any]]:
    """Example messages of topic ``name`` as (file name, parsed JSON), sorted; [] when there are none."""
    spec(name)
    base = TOPICS_DIR / "examples"
    folder = base / name if valid else base / "invalid" / name
    if not folder.is_dir():
        return []
    return [(p.name, orjson.loads(p.read_bytes())) for p in sorted(folder.glob("*.json"))]
