"""Tasks of the training pipeline.

No task caches its result (`NO_CACHE`): a cached result would be a copy in Prefect's
storage that a later erasure would have to find.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from oblivio import evaluation, ingestion, lineage, openlineage_events, publishing, registry, shard_training
from oblivio.step_results import Promotion, Registered, RunRecord

R = TypeVar("R")


def worker_pool() -> Executor | None:
    """The flow's worker pool when its task runner has one: `serve`'s warm workers, or a
    process-executor run's own (flows/runners.py)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return getattr(context.task_runner, "worker_pool", None) if context else None


def on_worker_pool(fn: Callable[..., R], *args, **kwargs) -> R:
    """`fn(*args, **kwargs)` on the flow's worker pool if it has one, else in this task run's thread."""
    pool = worker_pool()
    return fn(*args, **kwargs) if pool is None else pool.submit(fn, *args, **kwargs).result()


@task(name="ingest", cache_policy=NO_CACHE)
def ingest(root: str, reslice: bool = False) -> dict:
    return ingestion.ingest(Path(root), reslice=reslice)


@task(name="version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def version(root: str, stages: list[str]) -> dict:
    return lineage.record(Path(root), stages)


@task(name="train-shard", cache_policy=NO_CACHE)
def train_shard(root: str, shard: int, from_scratch: bool = False) -> dict:
    return on_worker_pool(shard_training.train_one_shard, Path(root), shard, shard_training.print_progress,
                          resume=not from_scratch)


@task(name="train-baseline", cache_policy=NO_CACHE)
def train_baseline(root: str, from_scratch: bool = False) -> dict:
    return on_worker_pool(shard_training.train_baseline, Path(root), shard_training.print_progress,
                          resume=not from_scratch)


@task(name="publish-models", cache_policy=NO_CACHE)
def publish_models(root: str, shard_results: list[dict]) -> dict:
    return publishing.publish_models(Path(root), shard_results)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(root: str, baseline: dict | None, defer_intervals: bool = False) -> dict:
    return evaluation.evaluate(Path(root), baseline, executor=worker_pool(),  # idle workers take the shard attacks
                               defer_intervals=defer_intervals)


@task(name="attach-intervals", cache_policy=NO_CACHE)
def attach_intervals(root: str, run_id: str) -> dict:
    """The audit's deferred intervals, after the requests are settled: a failure here is reported
    and leaves the erasure, its model version and its certificate as they are."""
    from prefect import get_run_logger

    try:
        return {"attached": evaluation.attach_intervals(Path(root), run_id, executor=worker_pool())}
    except Exception as err:  # the report keeps its point figures and says its intervals are pending
        get_run_logger().warning("MIA intervals not attached: %s: %s", type(err).__name__, err)
        return {"attached": False, "error": f"{type(err).__name__}: {err}"}


@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def register(root: str, run: RunRecord) -> Registered:
    return registry.register(Path(root), run)


@task(name="promote", cache_policy=NO_CACHE)
def promote(root: str, registered: Registered) -> Promotion:
    return registry.promote(Path(root), registered)


def hand_back(root: str, summary: dict) -> None:
    """The outcome a waiting `oblivio run` reads (flows/handover.py), before the flow's last step.

    A plain call, not a task: its value is the outcome file, which serve writes again, with
    the last step's result, when the flow ends."""
    from prefect.runtime import flow_run

    from oblivio.flows import handover
    from oblivio.workspace import WorkspaceDir

    handover.write_outcome(WorkspaceDir(Path(root)).runs_dir, flow_run.id, {"summary": summary})


def emit_lineage(root: str, kind: str, summary: dict) -> int:
    """OpenLineage events for the flow run (`openlineage` in params.yaml; off by default).

    A plain call from the flow, not a task: off, it costs a params read, not a task run. The
    flow run's id and name are passed to the core, which does not import Prefect."""
    from prefect.runtime import flow_run

    emit = openlineage_events.emit_pipeline if kind == "pipeline" else openlineage_events.emit_erasure
    return emit(Path(root), flow_run_id=flow_run.id, flow_name=flow_run.flow_name, **summary)
