"""Section `scale`: does memory follow the shard rather than the table?

A table of 1,000,000 rows (`--quick`: 200,000) with the default data's schema (nlswork
copied over with fresh record and subject ids) goes through `oblivio run` in a fresh
workspace, beside the default data in another; same params (S=8, R=4, two worker
processes). Each run's peak memory is taken two ways, both covering the command and every
process it starts (pool workers, the temporary Prefect server): the largest single
process (the kernel's `ru_maxrss` via wait4, exact) and the whole process tree summed
(sampled every 0.2 s, so a short spike can slip by). Runs use `--no-baseline`: the
non-sharded comparison model trains on every row at once, so it is whole-table by nature.
Then one person is erased from the large workspace with `forget --wait`, and every
partition file is hashed before and after: exactly one may change.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import psutil

from bench.common import (
    OBLIVIO, BenchError, Section, Settings, _environment, figures, log, make_workspace, replicated_nlswork, secs,
    times, training_subjects, verdict,
)

ROWS, QUICK_ROWS = 1_000_000, 200_000
SAMPLE_SECONDS = 0.2


def _tree_rss(root: psutil.Process) -> int:
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def measured(ws: Path, *args: str) -> dict:
    """`oblivio ARGS --json` in `ws`: its JSON, wall seconds and peak memory (MiB, see the module doc)."""
    log(f"oblivio {' '.join(args)}  (in {ws.name}, measuring memory)")
    out, err = ws.with_name(f"{ws.name}.stdout"), ws.with_name(f"{ws.name}.stderr")  # beside it, not in it
    began = time.perf_counter()
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([OBLIVIO, *args, "--json"], cwd=ws, stdout=stdout, stderr=stderr, env=_environment())
    tree_peak, done = [0], threading.Event()

    def sample() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not done.is_set():
            tree_peak[0] = max(tree_peak[0], _tree_rss(root))
            done.wait(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise BenchError(f"`oblivio {' '.join(args)}` exited {proc.returncode} after {wall:.1f} s:\n"
                         f"{err.read_text()[-3000:]}")
    log(f"  done in {wall:.1f} s")
    return {"json": json.loads(out.read_text()), "wall": wall, "max_process_mib": usage.ru_maxrss / 1024,
            "tree_mib": tree_peak[0] / 2**20}


def partition_digests(ws: Path) -> dict[str, str]:
    return {p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ws / "data" / "shards").glob("shard=*/part.parquet"))}


def largest_partition(ws: Path) -> tuple[str, int]:
    return max(((p.parent.name, p.stat().st_size) for p in (ws / "data" / "shards").glob("shard=*/part.parquet")),
               key=lambda item: item[1])


def erase_one(ws: Path) -> dict:
    """Erase one training-side person; which partition files changed."""
    subject, shard = training_subjects(ws)[0]
    before = partition_digests(ws)
    forgot = measured(ws, "forget", "--subject", subject, "--wait")
    after = partition_digests(ws)
    changed = sorted(name for name in before if after.get(name) != before[name])
    return {"shard": shard, "changed": changed, "n_partitions": len(before), "wall": forgot["wall"],
            "max_process_mib": forgot["max_process_mib"], "tree_mib": forgot["tree_mib"],
            "records_removed": forgot["json"]["records_removed"]}


def run(settings: Settings) -> Section:
    rows = QUICK_ROWS if settings.quick else ROWS
    unlimited = {"data": {"limit_subjects": 0}}  # --quick samples people elsewhere; here the sizes are the point
    default_ws = make_workspace(settings, "scale-default", unlimited)
    default = measured(default_ws, "run", "--no-baseline")
    log(f"writing a {rows:,}-row table")
    source = replicated_nlswork(settings.scratch / f"nlswork-{rows}.parquet", rows)
    big_ws = make_workspace(settings, "scale-large", {"data": {"limit_subjects": 0, "source": str(source)}})
    big = measured(big_ws, "run", "--no-baseline")
    name, size = largest_partition(big_ws)
    erased = erase_one(big_ws)
    one = erased["changed"] == [f"shard={erased['shard']}"]
    n_default, n_big = (r["json"]["ingest"]["n_records"] for r in (default, big))
    table = figures([
        ("training records (default / large)", f"{n_default:,} / {n_big:,}",
         f"of {rows:,} source rows in the large table; the rest are held-out people"),
        ("`run --no-baseline` wall (default / large)", f"{secs(default['wall'])} / {secs(big['wall'])}", ""),
        ("peak RSS, largest process (default / large)",
         f"{default['max_process_mib']:.0f} / {big['max_process_mib']:.0f} MiB",
         f"ratio {times(big['max_process_mib'] / default['max_process_mib'])} for "
         f"{times(n_big / n_default)} the records; ru_maxrss over the command and its children"),
        ("peak RSS, all processes summed (default / large)", f"{default['tree_mib']:.0f} / {big['tree_mib']:.0f} MiB",
         f"ratio {times(big['tree_mib'] / default['tree_mib'])}; sampled every {SAMPLE_SECONDS:g} s"),
        ("largest shard partition (large)", f"{size / 2**20:.1f} MiB ({name})",
         f"{max(big['json']['ingest']['shard_sizes']):,} records; Parquet, zstd"),
        ("one-subject `forget --wait` (large): partition files rewritten",
         f"{', '.join(erased['changed']) or 'none'} of {erased['n_partitions']}",
         f"{verdict(one)}: exactly the erased person's shard; {erased['records_removed']} records removed"),
        ("`forget --wait` (large): wall, peak RSS largest process / summed",
         f"{secs(erased['wall'])}, {erased['max_process_mib']:.0f} / {erased['tree_mib']:.0f} MiB", ""),
    ])
    raw = {"rows": rows, "default": {k: v for k, v in default.items() if k != "json"},
           "large": {k: v for k, v in big.items() if k != "json"}, "largest_partition_bytes": size,
           "shard_sizes": big["json"]["ingest"]["shard_sizes"], "erasure": erased, "one_partition_rewritten": one}
    return Section(f"scale: a {rows:,}-row table", [table], raw)
