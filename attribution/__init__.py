"""Streaming conversion attribution: sends/clicks x goals joined in Redis, exact per-campaign tallies."""

from attribution.errors import (
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
