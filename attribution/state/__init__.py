"""Redis state: key layout, batched offset-fenced Lua scripts, the in-memory twin used by unit tests."""
