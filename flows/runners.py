"""Which task runner trains the shards: chosen in params.yaml or on the command line."""
from __future__ import annotations

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner


def _init_worker(environment: dict[str, str]) -> None:
    import os

    os.environ.update(environment)


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
