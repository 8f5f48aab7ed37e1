"""The training pipeline: ingest, validate, version, train shards in parallel, evaluate, register, promote."""
from __future__ import annotations

import time
from pathlib import Path

from prefect import flow

from oblivio.flows.step_clock import StepClock
from oblivio.step_results import RunRecord
from oblivio.tasks import stages as t
from oblivio.workspace import WorkspaceDir


@flow(name="oblivio-pipeline")
def training_pipeline(root: str, n_shards: int, *, baseline: bool | None = None, from_scratch: bool = False,
                      trigger: str = "manual", reslice: bool = False, defer_intervals: bool = False) -> dict:
    """`baseline` None: as `report.baseline` says (a scheduled run passes none).

    `defer_intervals` (a run handed over by a waiting `oblivio run`): the waiting command gets
    its outcome once the version is promoted, and the MIA intervals no gate reads are drawn
    after, as a deletion's are."""
    clock = StepClock()
    if baseline is None:
        baseline = WorkspaceDir(Path(root)).params.report.baseline
    ingested = t.ingest(root, reslice)
    clock.lap("ingest")
    # the baseline first: it is the longest task (all the rows), so a worker starts it while the
    # others take the shards, rather than the run ending on it alone
    baseline_future = t.train_baseline.submit(root, from_scratch) if baseline else None
    shard_futures = [t.train_shard.submit(root, k, from_scratch) for k in range(n_shards)]
    shards = [f.result() for f in shard_futures]
    clock.lap("train")
    t.publish_models(root, shards)
    clock.lap("publish")
    baseline_result = baseline_future.result() if baseline_future else None
    clock.lap("baseline")  # what the baseline still needed once the shards were published
    metrics = t.evaluate(root, baseline_result, defer_intervals=defer_intervals)
    clock.lap("evaluate")
    hashes = t.version(root, ["ingest", "train", "evaluate"])  # one DVC commit + push for the run
    clock.lap("version")
    registered = t.register(root, RunRecord(run_name=f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}", trigger=trigger,
                                            data=hashes, shards=shards, metrics=metrics))
    clock.lap("register")
    promoted = t.promote(root, registered)
    clock.lap("promote")
    t.emit_lineage(root, "pipeline", {"data": hashes, "registered": registered})
    clock.lap("notify")
    summary = {**registered.to_dict(), **promoted.to_dict(), "ingest": ingested, "shards": shards,
               "slices_trained": sum(len(s["slices_trained"]) for s in shards),
               "slices_reused": sum(len(s["slices_reused"]) for s in shards),
               "steps": clock.steps, "seconds": clock.seconds}
    if not defer_intervals:
        return summary
    t.hand_back(root, summary)  # the waiting command is done: what follows changes no figure it printed
    intervals = t.attach_intervals(root, registered.run_id)
    clock.lap("intervals")
    return {**summary, "intervals": intervals, "steps": clock.steps, "seconds": clock.seconds}
