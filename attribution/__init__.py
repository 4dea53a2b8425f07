"""Streaming conversion attribution: sends/clicks x goals joined in Redis, exact per-campaign tallies."""

from attribution.errors import AttributionError, BadInput, BadSettings, LostState, StateConflict

__all__ = ["AttributionError", "BadInput", "BadSettings", "LostState", "StateConflict"]
__version__ = "0.1.0"
