"""Training tasks whose bodies run on a pool of worker processes while Prefect runs the task
runs in the flow's process: `serve`'s warm pool, and a process-executor run's own pool."""
from __future__ import annotations

import os
import sys
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


def worker_state() -> tuple[int, bool, str | None]:
    """In a pool worker: its pid, whether the worker was warmed before this task (an optimiser's first
    step imports torch's compiler stack, which importing this module does not), the test's variable."""
    return os.getpid(), "torch._dynamo" in sys.modules, os.environ.get("OBLIVIO_POOL_TEST")


def test_a_process_run_starts_its_own_warm_pool_with_the_flow_and_stops_it_after(shared_prefect_server):
    """`executor.kind: process`: workers spawned when the flow starts, with the training code
    loaded and the run's environment (its pinned numerics); gone when the flow ends."""
    from prefect import flow, task
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL, temporary_settings

    @task(name="worker-state")
    def state() -> tuple[int, bool, str | None]:
        return on_worker_pool(worker_state)

    @flow(name="process-pool-test")
    def run() -> tuple[list, object]:
        pool = FlowRunContext.get().task_runner.worker_pool
        return [f.result() for f in [state.submit() for _ in range(4)]], pool

    runner = make_task_runner("process", max_workers=2, environment={"OBLIVIO_POOL_TEST": "pinned"})
    with temporary_settings(updates={PREFECT_API_URL: shared_prefect_server}):
        states, pool = run.with_options(task_runner=runner)()
    assert {pid for pid, _, _ in states} - {os.getpid()} == {pid for pid, _, _ in states}  # not this process
    assert all(loaded and variable == "pinned" for _, loaded, variable in states)
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(os.getpid)  # the run's pool stopped with it


def test_a_process_run_that_fails_before_training_does_not_wait_for_its_workers(shared_prefect_server):
    """An ingest error ends the run while its workers still load torch: they are stopped, not
    awaited (the error's message comes sooner), and none is left behind."""
    import multiprocessing
    from concurrent.futures.process import BrokenProcessPool

    from prefect import flow
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL, temporary_settings

    seen = {}

    @flow(name="process-pool-failure-test")
    def fails_at_once() -> None:
        seen["warming"] = FlowRunContext.get().task_runner._warming
        raise ValueError("the table is wrong")

    runner = make_task_runner("process", max_workers=2)
    with temporary_settings(updates={PREFECT_API_URL: shared_prefect_server}):
        with pytest.raises(ValueError, match="the table is wrong"):
            fails_at_once.with_options(task_runner=runner)()
    assert len(seen["warming"]) == 2
    assert any(isinstance(f.exception(), BrokenProcessPool) for f in seen["warming"])  # stopped mid-warm-up
    assert multiprocessing.active_children() == []


def test_the_warm_pool_of_serve_idles_without_dasks_monitors():
    """`serve`'s warm pool waits for days between runs: the settings that keep its idle workers quiet
    (no statistical profiler, slow monitors) must reach the spawned worker processes."""
    from oblivio.flows.runners import QUIET_WORKERS, warm_task_runner

    keys = list(QUIET_WORKERS)
    with warm_task_runner("process", max_workers=1) as runner:
        on_worker = runner.worker_pool.submit(lambda: [__import__("dask").config.get(k) for k in keys]).result()
        worker_pid = runner.worker_pool.submit(os.getpid).result()
    assert worker_pid != os.getpid()
    assert on_worker == list(QUIET_WORKERS.values())
