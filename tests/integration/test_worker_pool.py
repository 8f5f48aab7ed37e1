"""`serve`'s training tasks: Prefect runs them in the flow's process, their bodies go to the warm worker pool."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from oblivio.flows.runners import WorkerPoolTaskRunner, make_task_runner
from oblivio.tasks.stages import on_worker_pool


@pytest.fixture
def prefect_flow(shared_prefect_server):
    from prefect import flow, task
    from prefect.settings import PREFECT_API_URL, temporary_settings

    @task(name="where")
    def where() -> tuple[int, int]:
        return os.getpid(), on_worker_pool(os.getpid)

    @flow(name="worker-pool-test")
    def pids(n: int) -> list[tuple[int, int]]:
        return [f.result() for f in [where.submit() for _ in range(n)]]

    with temporary_settings(updates={PREFECT_API_URL: shared_prefect_server}):
        yield pids


def test_a_worker_pool_runner_sends_task_bodies_to_its_pool_and_runs_the_engine_here(prefect_flow):
    with ProcessPoolExecutor(max_workers=1) as pool:
        worker = pool.submit(os.getpid).result()
        # the flow run enters a duplicate of the runner: the pool must survive the copy
        pids = prefect_flow.with_options(task_runner=WorkerPoolTaskRunner(2, pool))(3)
    assert pids == [(os.getpid(), worker)] * 3


def test_other_runners_run_task_bodies_where_the_task_runs(prefect_flow):
    pids = prefect_flow.with_options(task_runner=make_task_runner("thread", max_workers=2))(2)
    assert pids == [(os.getpid(), os.getpid())] * 2
