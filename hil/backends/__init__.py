"""Backends: one module per way of reaching a target (local engine, SSH), imported lazily."""
