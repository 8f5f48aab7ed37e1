"""Section `pipeline`: what SISA costs in accuracy, and what the machinery costs in time.

One `oblivio run` on the default data (with the non-sharded baseline), then the same
training again in this process, one shard after the other, with no Prefect, MLflow, DVC
or GX around it: the difference is the price of orchestration, tracking and versioning.
"""
from __future__ import annotations

import time
from pathlib import Path

from bench.common import (
    OBLIVIO, Section, Settings, Table, cli_json, figures, flow_phases, log, make_workspace, median, phase_table,
    read_params, secs, times, verdict, wall_times,
)

ACCURACY_BAR_POINTS = 2.0  # the bar: the ensemble within 2 points of one non-sharded model


def bare_training(ws: Path) -> dict:
    """Every shard, then the baseline, trained from scratch here: the compute a run cannot avoid.

    `resume=False` ignores the run's checkpoints and rewrites them with identical bits,
    so the workspace is left as it was. The first shard pays torch's one-time warm-up,
    as the first shard of every worker process does in a run.
    """
    from oblivio import shard_training

    shards = []
    for k in range(read_params(ws)["sisa"]["shards"]):
        began = time.perf_counter()
        shard_training.train_one_shard(ws, k, resume=False)
        shards.append(time.perf_counter() - began)
    began = time.perf_counter()
    shard_training.train_baseline(ws, resume=False)
    return {"shards": shards, "baseline": time.perf_counter() - began}


EXECUTORS = ("sequential", "thread", "process", "dask")


def executors(ws: Path) -> tuple[Table, dict]:
    """The same 8 shards retrained from scratch on each task runner (2 workers where parallel).

    Scheduling overhead per task = (train-step wall x workers - summed task compute) / tasks:
    the time a worker slot spent on anything but training (dispatch, (de)serialising,
    result round trips). Runner start-up (process pool, Dask cluster) is shown apart.
    """
    table = Table(["task runner", "runner start (s)", "train step wall (s)", "summed shard compute (s)",
                   "vs sequential", "overhead per task (s)", "same weights"])
    raw, reference, sequential_wall = {}, None, None
    for kind in EXECUTORS:
        log(f"shard training on the {kind} runner")
        result, wall = cli_json(ws, "run", "--from-scratch", "--no-baseline", "--executor", kind, "--workers", "2")
        phases = dict(flow_phases(ws, wall))
        train, start = phases.get("train", 0.0), phases.get("idle before train", 0.0)
        compute = sum(s["seconds"] for s in result["shards"])
        workers = 1 if kind == "sequential" else 2
        overhead = (train * workers - compute) / len(result["shards"])
        weights = [s["weights_sha256"] for s in result["shards"]]
        reference = reference or weights
        sequential_wall = sequential_wall or train
        table.rows.append([kind, f"{start:.1f}", f"{train:.1f}", f"{compute:.1f}", times(sequential_wall / train),
                           f"{overhead:.2f}", "yes" if weights == reference else "NO"])
        raw[kind] = {"runner_start": start, "train_wall": train, "compute": compute, "overhead_per_task": overhead,
                     "same_weights": weights == reference, "wall": wall}
    return table, raw


def run(settings: Settings) -> Section:
    ws = make_workspace(settings, "pipeline", {"report": {"baseline": True}})
    result, wall = cli_json(ws, "run")
    phases = flow_phases(ws, wall)
    log("training the same shards in-process, sequentially")
    bare = bare_training(ws)
    help_wall = median(wall_times([OBLIVIO, "--help"], 5))
    m = result["metrics"]
    gap = 100 * (m["baseline_accuracy"] - m["accuracy"])
    shard_seconds = [s["seconds"] for s in result["shards"]]
    reported = sum(shard_seconds)
    in_process = sum(bare["shards"]) + bare["baseline"]
    rows = [
        ("SISA ensemble accuracy (held out)", f"{m['accuracy']:.4f}", f"{result['n_shards']} shards x "
         f"{result['n_slices']} slices, {result['n_records']} training records"),
        ("single non-sharded model accuracy", f"{m['baseline_accuracy']:.4f}", "same recipe, all training rows"),
        ("accuracy cost of sharding", f"{gap:+.2f} points",
         f"bar: within {ACCURACY_BAR_POINTS:g} points: {verdict(gap <= ACCURACY_BAR_POINTS)}"),
        ("`oblivio run` wall clock", secs(wall),
         f"the command's own timer (JSON `seconds`): {result['seconds']:.1f} s"),
        ("bare training compute = sum of shards[*].seconds", secs(reported),
         f"as the run reports them; per shard {min(shard_seconds):.2f}-{max(shard_seconds):.2f} s "
         "(trained in parallel worker processes)"),
        ("run wall / bare training compute", times(wall / reported), ""),
        ("overhead share of the run", f"{100 * (1 - reported / wall):.0f} %", "1 - bare compute / run wall"),
        ("same shards trained in-process, sequentially", secs(sum(bare["shards"])),
         f"no Prefect/MLflow/DVC/GX; first shard {bare['shards'][0]:.2f} s (torch warm-up), "
         f"others {min(bare['shards'][1:]):.2f}-{max(bare['shards'][1:]):.2f} s"),
        ("+ the baseline model, in-process", secs(bare["baseline"]), "the run trains it too (report.baseline)"),
        ("run wall / in-process training (shards + baseline)", times(wall / in_process), ""),
        ("`oblivio --help` wall clock", secs(help_wall), "median of 5"),
    ]
    raw = {"wall_seconds": wall, "flow_seconds": result["flow_seconds"], "accuracy": m["accuracy"],
           "baseline_accuracy": m["baseline_accuracy"], "shard_seconds": shard_seconds,
           "in_process_shard_seconds": bare["shards"], "in_process_baseline_seconds": bare["baseline"],
           "help_seconds": help_wall, "phases": phases}
    runners, raw["executors"] = executors(ws)
    return Section("pipeline: accuracy and overhead of one run, and the task runners side by side",
                   [figures(rows), phase_table({"`oblivio run`": phases}), runners], raw)
