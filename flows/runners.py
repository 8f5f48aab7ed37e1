"""Which task runner trains the shards: chosen in params.yaml or on the command line."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner


def _init_worker(environment: dict[str, str]) -> None:
    import atexit
    import os

    os.environ.update(environment)
    # the last exit handler (registered first): the pool waits for its workers to exit, and one that
    # loaded torch and Prefect would then spend seconds finalising modules it no longer needs
    atexit.register(os._exit, 0)


def make_task_runner(kind: str, *, max_workers: int, dask_address: str = "", environment: dict | None = None
                     ) -> TaskRunner:
    if kind == "sequential":
        return ThreadPoolTaskRunner(max_workers=1)
    if kind == "thread":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    if kind == "process":
        return ProcessPoolTaskRunner(max_workers=max_workers, initializer=_init_worker, initargs=(environment or {},))
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": max_workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


def _load_training() -> None:
    """In a pool worker, before its first shard, what that shard would load (seconds of it): the
    training code and torch, the part of torch an optimiser's first step imports, and Prefect's
    task engine with its API client, log and event workers (one no-op task run, `warm-up`)."""
    from prefect import task

    import oblivio.shard_training  # noqa: F401
    from oblivio.flows.warm import first_optimiser_step

    first_optimiser_step()
    task(name="warm-up", persist_result=False)(lambda: None)()


@contextmanager
def warm_task_runner(kind: str, *, max_workers: int, dask_address: str = "") -> Iterator[TaskRunner]:
    """The task runner of a long-lived process (`serve`), whose worker processes outlive each run.

    A process pool is started, and stopped, by every flow run: spawning workers that import
    torch, then waiting for them to exit, costs more than a growth run's training. So for
    `process` (and `dask` without an address) the workers are a local Dask cluster of
    `max_workers` single-threaded processes started here once, with the training code loaded;
    each run connects to it. They inherit this process's environment, so its pinned numerics.
    """
    if kind not in ("process", "dask") or dask_address:
        yield make_task_runner(kind, max_workers=max_workers, dask_address=dask_address)
        return
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner

    with LocalCluster(n_workers=max_workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            client.run(_load_training)
        yield DaskTaskRunner(address=cluster.scheduler_address)
