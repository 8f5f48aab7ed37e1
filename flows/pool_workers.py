"""What a training worker process runs before its first shard; imports no Prefect.

A worker unpickles these by reference to this module, so a module that imported Prefect
would cost every worker that import before it trains anything.
"""
from __future__ import annotations


def init_worker(environment: dict[str, str]) -> None:
    """The pool's initializer: the parent's pinned numerics, and a quick exit."""
    import atexit
    import os

    os.environ.update(environment)
    # the last exit handler (registered first): the pool waits for its workers to exit, and one that
    # loaded torch would then spend seconds finalising modules it no longer needs
    atexit.register(os._exit, 0)


def load_training() -> None:
    """What a worker's first shard would load (seconds of it): the training code and torch, and
    the part of torch an optimiser's first step imports."""
    import oblivio.shard_training  # noqa: F401
    from oblivio.flows.warm import first_optimiser_step

    first_optimiser_step()
