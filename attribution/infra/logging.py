"""Where the ``attribution`` commands log: stderr, as readable text or one JSON object per line.

``ATTRIBUTION_LOG_FORMAT=text`` (the default) writes ``<asctime> <LEVEL> <logger>: <message>``;
``json`` writes ``{"level", "logger", "message", "timestamp"}`` (UTC, ISO 8601), plus ``exc_info``
(the formatted traceback) when the record carries an exception, and any ``extra=`` fields. Python
``warnings`` go through logging too (logger ``py.warnings``), so they come out in the same format.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LogFormat = Literal["text", "json"]


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure_logging`` installs (told apart from others to replace it)."""


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``fmt`` ("text" or "json")."""
    if fmt == "text":
        return logging.Formatter(TEXT_FORMAT)
    if fmt == "json":
        return JsonFormatter(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp=True,
        )
    raise ValueError(f"log format must be text or json, got {fmt!r}")


def configure_logging(level: str, fmt: str) -> None:
    """Log at ``level`` and above to stderr in ``fmt`` ("text" or "json"). Calling it again replaces
    the previous set-up (and a ``logging.basicConfig`` stderr handler): one line per record, always."""
    handler = _Handler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        # ours, or the plain stream handler logging.basicConfig installs; others (a test's
        # capture, a file) stay
        if isinstance(old, _Handler) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
