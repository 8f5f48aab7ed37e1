"""Section `numerics`: what the pinned (portable) numerics cost against the machine's native kernels.

One workspace on the default data is ingested once; then every shard is trained from
scratch in a fresh process, alternately under `portable` and `native` numerics, three
times each (the median counts: the box is shared). Each process also reports the shards'
weight hashes, so the table says whether the two modes happen to agree on this CPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench.common import Section, Settings, cli_json, figures, log, make_workspace, median, secs, set_params, times
from oblivio import numerics

ROUNDS = 3
TRAIN_EVERY_SHARD = """
import json, sys, time
from pathlib import Path
import oblivio
from oblivio import shard_training
from oblivio.workspace import WorkspaceDir
ws = Path(sys.argv[1])
began = time.perf_counter()
hashes = [shard_training.train_one_shard(ws, k, resume=False)["weights_sha256"]
          for k in range(WorkspaceDir(ws).params.sisa.shards)]
print(json.dumps({"seconds": time.perf_counter() - began, "hashes": hashes}))
"""


def train_all(ws, mode: str) -> dict:
    """Every shard from scratch in a fresh process of `mode` (the workspace's `train.numerics` too)."""
    set_params(ws, {"train": {"numerics": mode}})
    env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENVIRONMENT}
    env[numerics.MODE_VARIABLE] = mode
    proc = subprocess.run([sys.executable, "-c", TRAIN_EVERY_SHARD, str(ws)], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(f"training under {mode} numerics failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(settings: Settings) -> Section:
    ws = make_workspace(settings, "numerics", {"report": {"baseline": False}})
    cli_json(ws, "stage", "ingest")
    runs: dict[str, list[dict]] = {"portable": [], "native": []}
    for i in range(ROUNDS):
        for mode in ("native", "portable") if i % 2 else ("portable", "native"):
            log(f"numerics: training every shard, {mode} (round {i + 1}/{ROUNDS})")
            runs[mode].append(train_all(ws, mode))
    seconds = {m: median([r["seconds"] for r in rs]) for m, rs in runs.items()}
    stable = {m: len({tuple(r["hashes"]) for r in rs}) == 1 for m, rs in runs.items()}
    same = runs["portable"][0]["hashes"] == runs["native"][0]["hashes"]
    cpu = numerics._cpu_model()
    rows = [
        ("shard training, portable / native numerics", times(seconds["portable"] / seconds["native"]),
         f"{secs(seconds['portable'])} vs {secs(seconds['native'])}, median of {ROUNDS} fresh processes each"),
        ("weights identical across processes", f"portable {stable['portable']}, native {stable['native']}", ""),
        ("portable and native weights equal on this CPU", str(same), cpu),
    ]
    return Section("Pinned numerics", [figures(rows)],
                   {"seconds": seconds, "stable": stable, "modes_agree": same, "cpu": cpu, "runs": runs,
                    "when": time.strftime("%H:%M")})
