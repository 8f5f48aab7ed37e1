"""Prefect tasks: one line over a core function each; results are counts and hashes, never rows."""
