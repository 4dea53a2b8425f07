"""The local dev kit: bench, demo, embedded broker and Redis, traffic. Production code never imports it."""
