"""Operations: settings, metrics, health/HTTP, embedded services for local runs."""
