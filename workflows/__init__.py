"""Temporal workflows and the pure, deterministic rules they use."""
