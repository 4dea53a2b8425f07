"""What a production worker needs besides the engine: settings, metrics, health/HTTP, logging."""
