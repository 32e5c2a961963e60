"""Processes: the Temporal worker, the local stack launcher, logging setup."""
