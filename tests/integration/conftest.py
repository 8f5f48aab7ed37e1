"""Integration tests share one Prefect server (see `shared_prefect_server`)."""
import pytest


@pytest.fixture(scope="session", autouse=True)
def _shared_prefect(shared_prefect_server):
    yield shared_prefect_server
