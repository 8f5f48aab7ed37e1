"""The deletion flow: every actionable request in one batch, each shard retrained at most once."""
from __future__ import annotations

import time

from prefect import flow

from oblivio.flows.step_clock import StepClock
from oblivio.step_results import BatchOutcome, RunRecord
from oblivio.tasks import deletion_steps as d
from oblivio.tasks import stages as t


@flow(name="oblivio-deletion")
def deletion_pipeline(root: str, n_shards: int, trigger: str = "manual") -> dict:
    clock = StepClock()
    batch = d.plan(root)
    clock.lap("plan")
    if not batch.requests:
        d.send_callbacks(root)  # the batch may have rejected requests that asked to be told
        return {"status": "nothing to do", "request_ids": [], "rejected": batch.rejected_dicts(),
                "steps": clock.steps, "seconds": clock.seconds}
    applied = d.apply(root, batch)
    clock.lap("apply")
    # the shards that will retrain go first; the others find their checkpoints in a fraction of a second
    order = sorted(range(n_shards), key=lambda k: str(k) not in batch.first_slice)
    futures = {k: t.train_shard.submit(root, k) for k in order}
    shards = [futures[k].result() for k in range(n_shards)]
    clock.lap("train")
    t.publish_models(root, shards)
    clock.lap("publish")
    metrics = t.evaluate(root, None, defer_intervals=True)  # the gates need no interval but the forget set's
    clock.lap("evaluate")
    hashes = t.version(root, ["ingest", "train", "evaluate"])  # one DVC commit + push for the batch
    clock.lap("version")
    registered = t.register(root, RunRecord(run_name=f"deletion-{time.strftime('%Y%m%d-%H%M%S')}", trigger=trigger,
                                            data=hashes, shards=shards, metrics=metrics, requests=batch.requests))
    clock.lap("register")
    promoted = t.promote(root, registered)
    clock.lap("promote")
    finished = d.finish(root, BatchOutcome(batch, applied, shards, registered, promoted))
    clock.lap("finish")  # purge and certificates
    t.emit_lineage(root, "erasure", {"batch": batch, "registered": registered, "certificates": finished.certificates})
    sent = d.send_callbacks(root)
    clock.lap("notify")  # lineage events and callbacks
    intervals = t.attach_intervals(root, registered.run_id)  # the requests are settled: a waiting `forget` is done
    clock.lap("intervals")
    retrained = [s for s in shards if s["slices_trained"]]
    return {"status": "promoted" if promoted.promoted else "applied", "request_ids": batch.requests,
            "rejected": batch.rejected_dicts(), "route": batch.route, "records_removed": batch.records_removed,
            "shards_retrained": [s["index"] for s in retrained],
            "slices_retrained": sum(len(s["slices_trained"]) for s in retrained),
            "model_version": registered.model_version, "promoted": promoted.promoted,
            "aliases": promoted.aliases, "decision": promoted.decision, "metrics": metrics,
            "gates": registered.gates, "certificate": finished.certificates, "purge": finished.purge.to_dict(),
            "dataset_version": registered.dataset_version, "callbacks": sent, "intervals": intervals,
            "steps": clock.steps, "seconds": clock.seconds}
