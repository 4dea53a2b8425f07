"""Thin Kafka adapters around attribution.engine.processor; no attribution rules here."""
