"""The exception tree: one root, a few children that each call for a different reaction."""

from __future__ import annotations


class AttributionError(Exception):
    """Root of every error this package raises on purpose."""


class BadInput(AttributionError):
    """A record that cannot be used; it goes to the DLQ with this message as the reason."""


class BadSettings(AttributionError):
    """A setting (env var, CLI option or project settings document) is refused; names the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class StateConflict(AttributionError):
    """Redis state was written by someone else between our read and our write (lost ownership)."""


class LostState(AttributionError):
    """Redis no longer holds state it should hold (restart without persistence, flush)."""


class Unavailable(AttributionError):
    """A service (the Kafka broker, Redis) does not answer; names the setting that locates it."""


class MissingTopics(AttributionError):
    """Topics the engine needs do not exist on the broker: ``attribution topics create`` makes them."""
