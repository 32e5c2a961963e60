"""pydantic v2 models: the system's vocabulary (specs, activity I/O, API bodies, settings)."""
