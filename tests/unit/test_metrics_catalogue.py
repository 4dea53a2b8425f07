"""README.md's metrics catalogue (the tables ``| name | type | labels | meaning |``: the worker's and
``attribution serve``'s) names every ``attribution_*`` series a worker or the API exports, as it
appears on /metrics, with its type and labels, and no series that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from attribution.api.metrics import ApiMetrics
from attribution.infra.metrics import Metrics

README = Path(__file__).resolve().parents[2] / "README.md"
HEADER = re.compile(r"^\|\s*name\s*\|\s*type\s*\|\s*labels\s*\|\s*meaning\s*\|\s*$")
SUFFIX = {"counter": "_total", "info": "_info"}  # what prometheus_client appends on /metrics


def exported() -> dict[str, tuple[str, tuple[str, ...]]]:
    """(type, label names) of every attribution_* family of a worker's and of the API's registry, by
    exposed name."""
    found = {}
    for metrics in (Metrics(), ApiMetrics()):
        labels = {
            w._name: tuple(w._labelnames) for w in vars(metrics).values() if isinstance(w, MetricWrapperBase)
        }
        for family in metrics.registry.collect():
            if family.name.startswith("attribution_"):
                # an Info (attribution_build, attribution_api_build) is no attribute: its labels are
                # its sample's
                names = labels.get(family.name, tuple(sorted({k for s in family.samples for k in s.labels})))
                found[family.name + SUFFIX.get(family.type, "")] = (family.type, names)
    assert len(found) >= 15 + 7, sorted(found)
    assert any(name.startswith("attribution_api_") for name in found)
    return found


def catalogue() -> dict[str, list[str]]:
    """The cells of the catalogue row of each name written in backticks in its first column, over
    every catalogue table (the worker's, ``attribution serve``'s)."""
    lines = README.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if HEADER.match(line)]
    assert starts, "README.md has no metrics catalogue table: | name | type | labels | meaning |"
    rows: dict[str, list[str]] = {}
    for start in starts:
        for line in lines[start + 2 :]:
            if not line.startswith("|"):
                break
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            for name in re.findall(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", cells[0]):
                rows[name] = cells
    return rows


def test_readme_catalogue_names_every_attribution_series() -> None:
    missing = sorted(set(exported()) - set(catalogue()))
    assert not missing, f"README.md's metrics catalogue lacks {missing}"


def test_readme_catalogue_gives_each_series_its_type_and_labels() -> None:
    rows = catalogue()
    for name, (kind, labels) in exported().items():
        if name not in rows:
            continue  # reported by the test above
        cells = rows[name]
        assert kind in cells[1], f"{name}: type {kind!r}, README says {cells[1]!r}"
        written = set(re.findall(r"`(\w+)`", cells[2]))
        assert written == set(labels), f"{name}: labels {sorted(labels)}, README says {cells[2]!r}"


def test_readme_catalogue_names_no_attribution_series_that_does_not_exist() -> None:
    stale = sorted(n for n in catalogue() if n.startswith("attribution_") and n not in exported())
    assert not stale, f"README.md's metrics catalogue names series no worker or API exports: {stale}"
