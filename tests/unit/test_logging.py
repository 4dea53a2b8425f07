"""``configure_logging``: readable text or one JSON object per line on stderr, idempotent, warnings
included."""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from attribution.infra.logging import configure_logging

log = logging.getLogger("attribution.test")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(False)


def records(err: str) -> list[dict[str, Any]]:
    lines = err.splitlines()
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(p, dict) for p in parsed), lines
    return parsed


def test_json_gives_one_object_per_line_with_the_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    log.info("hello %s", "world")
    log.warning("two\nlines stay one record")
    log.debug("below the level")
    got = records(capsys.readouterr().err)
    assert [(r["level"], r["logger"], r["message"]) for r in got] == [
        ("INFO", "attribution.test", "hello world"),
        ("WARNING", "attribution.test", "two\nlines stay one record"),
    ]
    for r in got:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00", r["timestamp"]), r
        assert "exc_info" not in r


def test_json_includes_the_exception(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        log.exception("the batch failed")
    (r,) = records(capsys.readouterr().err)
    assert (r["level"], r["message"]) == ("ERROR", "the batch failed")
    assert r["exc_info"].startswith("Traceback (most recent call last):")
    assert "ZeroDivisionError: division by zero" in r["exc_info"]


def test_extra_fields_are_kept(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    log.info("batch done", extra={"events": 42})
    (r,) = records(capsys.readouterr().err)
    assert r["events"] == 42


def test_text_keeps_the_readable_format(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG", "text")
    log.debug("state generation %s", "v2-abc")
    (line,) = capsys.readouterr().err.splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG attribution\.test: state generation v2-abc", line
    ), line


def test_calling_it_again_replaces_the_set_up(capsys: pytest.CaptureFixture[str]) -> None:
    # what logging.basicConfig installs (as the CLI used to): replaced, not doubled
    logging.getLogger().addHandler(logging.StreamHandler(sys.stderr))
    configure_logging("INFO", "text")
    configure_logging("WARNING", "json")
    configure_logging("INFO", "json")
    log.info("once")
    (r,) = records(capsys.readouterr().err)
    assert r["message"] == "once"
    assert logging.getLogger().level == logging.INFO


def test_warnings_go_through_logging(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("an old API", DeprecationWarning, stacklevel=1)
    (r,) = records(capsys.readouterr().err)
    assert (r["level"], r["logger"]) == ("WARNING", "py.warnings")
    assert "DeprecationWarning: an old API" in r["message"]


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text or json"):
        configure_logging("INFO", "yaml")
