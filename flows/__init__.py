"""Prefect flows: they compose tasks and choose task runners; the logic lives in `oblivio`."""
