"""Section `erasure`: what honouring a deletion request costs, next to retraining everything.

SISA's promise is that erasing one person retrains one shard from the first slice that
held their records. Here that is checked on wall clock, as a user sees it: one
`forget --wait` against a full `run --from-scratch` of the same workspace, on the
default table and on one ten times larger (the speed-up should grow with the data, as
the fixed costs stay fixed); the DVC bytes one erasure adds; and a batch of requests
against the same requests one by one.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from bench.common import (
    QUICK_PARAMS, BenchError, Section, Settings, Table, cli_json, dir_bytes, figures, file_sizes, flow_phases, log,
    make_workspace, phase_table, replicated_nlswork, round_robin, secs, served_flow_phases, serving, times,
    idle_cpu_share, median, training_subjects, verdict,
)

BATCH = 100
COPIES = 10
SPEEDUP_BARS = {"default": 4.0, "10x": 8.0}
SCALES = {"default": "nlswork", "10x": f"nlswork x{COPIES}"}


# --- one erasure vs a full retrain ----------------------------------------------------

def retrained_seconds(ws: Path, version: int) -> float:
    """Training seconds of the shards an erasure retrained: the compute no erasure can skip.

    `forget --json` says which slices were retrained, not how long they took; the flow
    logs each shard's `train_seconds` to an MLflow child run of the new model version.
    """
    from oblivio import tracking
    from oblivio.workspace import WorkspaceDir

    cfg = WorkspaceDir(ws).mlflow
    client = tracking.client(cfg)
    run_id = client.get_model_version(cfg.model_name, str(version)).run_id
    experiment = client.get_experiment_by_name(cfg.experiment).experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run_id}'")
    return sum(r.data.metrics["train_seconds"] for r in children if r.data.metrics["slices_trained"] > 0)


def warm_floor(ws: Path, retrained: dict[str, list[int]]) -> float:
    """The same slices retrained again here, warm: the floor without a fresh process's start-up.

    A worker's first shard pays torch's lazy imports, which the logged floor includes.
    Each shard resumes from a copy of the checkpoint before its first retrained slice, in a
    scratch store, twice; the second, warm attempt is the one counted.
    """
    from oblivio import shard_training
    from oblivio.data.sharding import read_shard
    from oblivio.ensemble import MANIFEST
    from oblivio.training.sisa import CheckpointStore, train_shard
    from oblivio.workspace import WorkspaceDir

    w = WorkspaceDir(ws)
    chains = {s["index"]: s["chain"] for s in json.loads((w.models_dir / MANIFEST).read_text())["shards"]}
    total = 0.0
    for k, stages in ((int(k), v) for k, v in retrained.items()):
        name, data = shard_training.shard_name(k), shard_training.shard_data(w, read_shard(w.shards_dir, k))
        for _ in range(2):
            with tempfile.TemporaryDirectory() as tmp:
                store = CheckpointStore(Path(tmp))
                if min(stages) > 0:
                    parent = chains[k][min(stages) - 1]
                    store.path(name, parent).parent.mkdir()
                    shutil.copy(CheckpointStore(w.checkpoints_dir).path(name, parent), store.path(name, parent))
                result = train_shard(data, recipe=shard_training.recipe_for(w), shard=name, n_slices=w.params.sisa.slices,
                                     secret=w.secret, store=store)
        total += result.seconds
    return total


SERVED = 3  # erasures with `serve` running; the median is reported (each is ~10 s, the box is noisy)
COLD_FLOOR_REPEATS = 2  # cold `oblivio process` runs with nothing to do: the fixed cost under any cold erasure


def forget_vs_retrain(ws: Path) -> dict:
    """Train `ws`, erase one person of shard 0 cold and others with `serve` running, then
    retrain everything from scratch: as configured (the baseline model included, as
    `oblivio run` does by default) and without the baseline (the strictest reference)."""
    trained, _ = cli_json(ws, "run", "--no-baseline")  # also pays Prefect's first-start migrations
    (subject, _), *served_people = training_subjects(ws)[:1 + SERVED]
    cache = ws / ".dvc" / "cache"
    before, shards_bytes = file_sizes(cache), dir_bytes(ws / "data" / "shards")
    forgot, forget_wall = cli_json(ws, "forget", "--subject", subject, "--wait")
    forget_phases = flow_phases(ws, forget_wall)
    # the same cold command with nothing left to do: interpreter, imports, Prefect server, an empty
    # flow; no cold erasure can be quicker, whatever its flow does
    nothing = [cli_json(ws, "process") for _ in range(COLD_FLOOR_REPEATS)]
    if any(out["status"] != "nothing to do" for out, _ in nothing):
        raise BenchError(f"`oblivio process` found work after the erasure: {[out['status'] for out, _ in nothing]}")
    after = file_sizes(cache)
    floor = retrained_seconds(ws, forgot["model_version"])
    certificate = json.loads(Path(next(iter(forgot["certificate"].values()))).read_text())
    warm = warm_floor(ws, certificate["slices_retrained"])
    served = []
    with serving(ws):
        api_url = json.loads((ws / ".oblivio" / "serve.json").read_text())["api_url"]
        idle = idle_cpu_share(ws)
        for person, _ in served_people:
            out, wall = cli_json(ws, "forget", "--subject", person, "--wait")
            # waits for the flow's end: each request comes to an idle serve (the flow's last step,
            # the audit's intervals, runs after the request is settled and `forget` has returned)
            served.append((out, wall, served_flow_phases(api_url, "oblivio-deletion", wall)))
    served_walls = sorted(wall for _, wall, _ in served)
    median_served = sorted(served, key=lambda s: s[1])[len(served) // 2]
    full, full_wall = cli_json(ws, "run", "--from-scratch", "--no-baseline")
    full_phases = flow_phases(ws, full_wall)
    _, configured_wall = cli_json(ws, "run", "--from-scratch")
    return {
        "n_records": trained["n_records"], "records_removed": forgot["records_removed"],
        "slices_retrained": forgot["slices_retrained"], "shards_retrained": forgot["shards_retrained"],
        "slice_stages": trained["n_shards"] * trained["n_slices"], "decision": forgot["decision"],
        "forget_wall": forget_wall, "forget_flow": forgot["flow_seconds"], "compute_floor": floor, "warm_floor": warm,
        "cold_floor": median([wall for _, wall in nothing]), "serve_idle_cpu": idle,
        "full_wall": full_wall, "full_flow": full["flow_seconds"], "configured_wall": configured_wall,
        "served_walls": served_walls, "served_wall": served_walls[len(served_walls) // 2],
        "served_slices": [out["slices_retrained"] for out, _, _ in served],
        "served_by": sorted({out.get("processed_by", "this command") for out, _, _ in served}),
        "cache_added": sum(size for path, size in after.items() if path not in before),
        "cache_net": sum(after.values()) - sum(before.values()), "shards_bytes": shards_bytes,
        "phases": {"forget": forget_phases, "forget, served (the median)": median_served[2],
                   "run --from-scratch --no-baseline": full_phases,
                   "run --from-scratch": flow_phases(ws, configured_wall)},
    }


def comparison_column(r: dict, bar: float) -> list[tuple[str, str]]:
    """(figure, value) for one table size; each speed-up carries that size's bar.

    The issue's reference is "a full `oblivio run` of the same workspace": `run
    --from-scratch` as the workspace is configured, which trains the baseline model too.
    The baseline is a report, not something an erasure must redo, so the speed-up against
    a full retrain without it is shown beside, as the strictest reading.
    """
    def speedup(full: float, forget: float) -> str:
        return f"**{times(full / forget)}** (bar >= {bar:g}x: {verdict(full / forget >= bar)})"

    served = ", ".join(secs(w) for w in r["served_walls"])
    return [
        ("training records", f"{r['n_records']:,}"),
        ("erased: records of one person", str(r["records_removed"])),
        ("`forget --subject X --wait` wall (a cold command)", secs(r["forget_wall"])),
        ("... of which the deletion flow (JSON `flow_seconds`)", secs(r["forget_flow"])),
        ("slice stages retrained", f"{r['slices_retrained']} of {r['slice_stages']} (shards {r['shards_retrained']})"),
        ("compute floor: training s of the retrained slices (MLflow `train_seconds`)", secs(r["compute_floor"])),
        ("forget wall / compute floor", times(r["forget_wall"] / r["compute_floor"])),
        ("same slices retrained in-process, warm", secs(r["warm_floor"])),
        (f"`forget --wait` with `oblivio serve` running: median of {len(r['served_walls'])}",
         f"{secs(r['served_wall'])} ({served}; slice stages {r['served_slices']}; processed by "
         f"{', '.join(r['served_by'])})"),
        ("idle `oblivio serve` (with its Prefect server and warm workers): CPU s per wall s",
         f"{r['serve_idle_cpu']:.3f} (over 20 s, before the served erasures)"),
        ("`run --from-scratch` wall (as configured: baseline included)", secs(r["configured_wall"])),
        ("`run --from-scratch --no-baseline` wall", secs(r["full_wall"])),
        ("**speed-up, served: full run / forget**", speedup(r["configured_wall"], r["served_wall"])),
        ("**speed-up, served: full run without baseline / forget**", speedup(r["full_wall"], r["served_wall"])),
        ("speed-up, cold: full run / forget", speedup(r["configured_wall"], r["forget_wall"])),
        ("speed-up, cold: full run without baseline / forget", speedup(r["full_wall"], r["forget_wall"])),
        (f"cold floor: `oblivio process` with nothing to do (median of {COLD_FLOOR_REPEATS})",
         f"{secs(r['cold_floor'])}; the most a cold erasure could reach: {times(r['configured_wall'] / r['cold_floor'])}"),
        ("DVC cache bytes added by the erasure", f"{r['cache_added']:,}"),
        ("size of data/shards", f"{r['shards_bytes']:,}"),
        ("added / data/shards", f"{r['cache_added'] / r['shards_bytes']:.2f}"),
        ("DVC cache net change (old objects removed by `dvc gc`)", f"{r['cache_net']:+,}"),
        ("promotion of the post-erasure model", r["decision"]),
    ]


def comparison_table(results: dict[str, dict]) -> Table:
    columns = [comparison_column(r, SPEEDUP_BARS[name]) for name, r in results.items()]
    table = Table(["figure", *(SCALES[name] for name in results)])
    for i, (label, _) in enumerate(columns[0]):
        table.rows.append([label, *(column[i][1] for column in columns)])
    return table


# --- the 10x table --------------------------------------------------------------------

def ten_times_updates(settings: Settings) -> dict:
    from oblivio.data.sources import load_nlswork

    # outside the workspace, as an upstream table would be: erasure keeps the file and relies on tombstones
    source = replicated_nlswork(settings.scratch / "nlswork-x10.parquet", COPIES * len(load_nlswork()))
    limit = COPIES * QUICK_PARAMS["data"]["limit_subjects"] if settings.quick else 0
    return {"data": {"source": str(source), "limit_subjects": limit}}


# --- a batch vs one by one ------------------------------------------------------------

def batch_vs_one_by_one(ws: Path, n: int, scratch: Path) -> dict:
    """`n` erasures with `forget --wait` each, then BATCH others in one request and one `process`."""
    people = training_subjects(ws)
    singles = round_robin(people, n)
    taken = set(singles)
    rest = [s for s, _ in people if s not in taken]
    batch = [rest[i * len(rest) // BATCH] for i in range(min(BATCH, len(rest)))]  # evenly over the shards
    walls = [cli_json(ws, "forget", "--subject", s, "--wait")[1] for s in singles]
    ids = scratch / "batch-ids.txt"
    ids.write_text("\n".join(batch) + "\n")
    _, submit_wall = cli_json(ws, "forget", "--from-file", str(ids))
    processed, process_wall = cli_json(ws, "process")
    return {"one_by_one_walls": walls, "batch_size": len(batch), "submit_wall": submit_wall,
            "process_wall": process_wall, "batch_records": processed["records_removed"],
            "batch_shards": processed["shards_retrained"], "batch_slices": processed["slices_retrained"]}


def batch_table(r: dict) -> Table:
    walls, size = r["one_by_one_walls"], r["batch_size"]
    mean = sum(walls) / len(walls)
    batch_total = r["submit_wall"] + r["process_wall"]
    return figures([
        (f"one by one: {len(walls)} x `forget --subject X --wait`", secs(sum(walls)),
         f"measured; per request {mean:.1f} s (min {min(walls):.1f}, max {max(walls):.1f})"),
        (f"one by one, {size} requests", secs(mean * size),
         f"**EXTRAPOLATED** from the {len(walls)} measured (mean x {size}), not measured"),
        (f"batch: `forget --from-file` ({size} ids, one request)", secs(r["submit_wall"]), "records the request"),
        ("batch: `process`", secs(r["process_wall"]),
         f"{r['batch_records']} records removed; shards {r['batch_shards']} retrained, "
         f"{r['batch_slices']} slice stages"),
        (f"batch, {size} requests in all", secs(batch_total), f"per request {batch_total / size:.2f} s (measured)"),
        ("one by one (extrapolated) / batch", times(mean * size / batch_total), "per-request cost ratio"),
    ])


def run(settings: Settings) -> Section:
    default_ws = make_workspace(settings, "erasure")
    results = {"default": forget_vs_retrain(default_ws)}
    log(f"batch of {BATCH} vs {settings.one_by_one} one by one")
    batched = batch_vs_one_by_one(default_ws, settings.one_by_one, settings.scratch)
    log(f"building the {COPIES}x table")
    big_ws = make_workspace(settings, "erasure-10x", ten_times_updates(settings))
    results["10x"] = forget_vs_retrain(big_ws)
    phases = {f"{cmd} ({name})": p for name, r in results.items() for cmd, p in r["phases"].items()}
    return Section("erasure: one deletion vs a full retrain",
                   [comparison_table(results), batch_table(batched), phase_table(phases)],
                   {**results, "batch": batched})
