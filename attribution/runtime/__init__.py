"""Thin Kafka adapters around attribution.processor; no attribution rules here."""
