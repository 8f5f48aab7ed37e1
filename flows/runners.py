"""Which task runner trains the shards: chosen in params.yaml or on the command line."""
from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from oblivio.flows.pool_workers import init_worker, load_training


def make_task_runner(kind: str, *, max_workers: int, dask_address: str = "", environment: dict | None = None
                     ) -> TaskRunner:
    if kind == "sequential":
        return ThreadPoolTaskRunner(max_workers=1)
    if kind == "thread":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    if kind == "process":
        return ProcessWorkerPoolTaskRunner(max_workers=max_workers, environment=environment or {})
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": max_workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


class WorkerPoolTaskRunner(ThreadPoolTaskRunner):
    """Task runs in threads of the flow's process, their heavy bodies on `worker_pool`.

    Prefect's engine runs each task run here, so it costs what a thread's does; a task that
    trains hands its work to `worker_pool` (tasks/stages.py, `on_worker_pool`). A Prefect task
    run on a Dask worker would rebuild the flow's settings context from its serialised copy
    and open an API client before the body starts, which costs more than a reused shard's
    whole check.
    """

    def __init__(self, max_workers: int, worker_pool: Executor | None) -> None:
        super().__init__(max_workers=max_workers)
        self.worker_pool = worker_pool

    def duplicate(self) -> WorkerPoolTaskRunner:  # Prefect enters a duplicate for each flow run
        return type(self)(max_workers=self._max_workers, worker_pool=self.worker_pool)


class ProcessWorkerPoolTaskRunner(WorkerPoolTaskRunner):
    """A flow run's own pool of `max_workers` processes, started when the run starts (the flow
    enters its task runner before `ingest`), so the workers import torch and the training code
    while the run ingests; stopped when the run ends. Prefect's process pool would spawn its
    workers at the first task, after ingest, and run Prefect's task engine in each of them."""

    def __init__(self, max_workers: int, environment: dict[str, str]) -> None:
        super().__init__(max_workers=max_workers, worker_pool=None)  # the pool starts with the flow run
        self.environment = environment
        self._warming: list[Future] = []

    def duplicate(self) -> ProcessWorkerPoolTaskRunner:
        return type(self)(max_workers=self._max_workers, environment=self.environment)

    def __enter__(self) -> ProcessWorkerPoolTaskRunner:
        super().__enter__()
        self.worker_pool = ProcessPoolExecutor(self._max_workers, mp_context=multiprocessing.get_context("spawn"),
                                               initializer=init_worker, initargs=(self.environment,))
        # a worker is spawned for each task no idle one can take
        self._warming = [self.worker_pool.submit(load_training) for _ in range(self._max_workers)]
        return self

    def __exit__(self, *exc) -> None:
        try:
            super().__exit__(*exc)
        finally:
            pool, self.worker_pool = self.worker_pool, None
            if pool is not None:
                if not all(f.done() for f in self._warming):
                    # the run ended before its workers were ready (an ingest error): none of them has
                    # trained, and waiting for torch to load would only delay the error's message
                    # (`_processes`: the executor's own map of its workers; none if it is renamed)
                    for process in list((getattr(pool, "_processes", None) or {}).values()):
                        process.terminate()
                pool.shutdown(wait=True, cancel_futures=True)


# A warm pool idles between runs, for days: Dask's statistical profiler (a sample of every
# worker thread each 10 ms, for its dashboard, which serve does not start) and its system
# monitor's twice-a-second reading cost CPU all that time and nothing a run needs.
QUIET_WORKERS = {"distributed.worker.profile.enabled": False, "distributed.admin.system-monitor.interval": "5s",
                 "distributed.admin.system-monitor.gil.enabled": False, "distributed.admin.tick.interval": "1s",
                 "distributed.worker.memory.monitor-interval": "1s"}


@contextmanager
def warm_task_runner(kind: str, *, max_workers: int, dask_address: str = "") -> Iterator[TaskRunner]:
    """The task runner of a long-lived process (`serve`), whose worker processes outlive each run.

    A process pool is started, and stopped, by every flow run: spawning workers that import
    torch, then waiting for them to exit, costs more than a growth run's training. So for
    `process` (and `dask` without an address) the workers are a local Dask cluster of
    `max_workers` single-threaded processes started here once, with the training code loaded,
    and the runs' training tasks hand their work to it (`WorkerPoolTaskRunner`). The workers
    inherit this process's environment, so its pinned numerics.
    """
    if kind not in ("process", "dask") or dask_address:
        yield make_task_runner(kind, max_workers=max_workers, dask_address=dask_address)
        return
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set(QUIET_WORKERS), LocalCluster(n_workers=max_workers, threads_per_worker=1, processes=True,
                                                      dashboard_address=None) as cluster:
        with Client(cluster) as client:
            client.run(load_training)
            yield WorkerPoolTaskRunner(max_workers, client.get_executor(pure=False))
