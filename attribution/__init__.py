"""Streaming conversion attribution: sends/clicks x goals joined in Redis, exact per-campaign tallies."""

# First: whether the mypyc-compiled rules or their .py sources run (attribution.compiled.BUILD says
# which), decided before any of those modules can be imported.
from attribution.compiled import select as _select_build

_select_build()

from attribution.errors import (  # noqa: E402
    AttributionError,
    BadInput,
    BadSettings,
    LostState,
    MissingTopics,
    StateConflict,
    Unavailable,
)

__all__ = [
    "AttributionError",
    "BadInput",
    "BadSettings",
    "LostState",
    "MissingTopics",
    "StateConflict",
    "Unavailable",
]
__version__ = "0.1.0"
