"""Load: concurrent `oblivio forget` submissions while a deletion batch runs, and a large table.

- 8 processes submit 1,000 requests between them (`--quick`: 80) with the real CLI, while
  an `oblivio process` batch runs; every request must be recorded exactly once.
- A generated table of 1,000,000 rows (`--quick`: 100,000) with the default data's schema:
  `oblivio run` peak RSS beside the default data's, and the partitions a one-subject
  erasure rewrites.
"""
from __future__ import annotations

import json
import resource
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import (
    OBLIVIO, Section, Settings, _environment, cli_json, figures, file_sizes, log, make_workspace, secs,
    training_subjects,
)

WRITERS = 8


def _submit_many(ws: Path, subjects: list[str]) -> list[str]:
    ids = []
    for subject in subjects:
        proc = subprocess.run([OBLIVIO, "forget", "--subject", subject, "--json"], cwd=ws, capture_output=True,
                              text=True, env=_environment(), check=True)
        ids.append(json.loads(proc.stdout)["request_ids"][0])
    return ids


def submissions(settings: Settings) -> tuple[list[tuple[str, str, str]], dict]:
    n = 80 if settings.quick else 1000
    ws = make_workspace(settings, "load", {"report": {"baseline": False}})
    cli_json(ws, "run")
    people = [s for s, _ in training_subjects(ws)]
    pending = subprocess.run([OBLIVIO, "forget", "--subject", people[0], "--json"], cwd=ws, capture_output=True,
                             text=True, env=_environment(), check=True)
    batch = subprocess.Popen([OBLIVIO, "process", "--json"], cwd=ws, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=_environment())
    time.sleep(2)  # the batch has started (it holds the workspace lock) before the writers begin
    chunks = [people[1 + i:1 + n:WRITERS] for i in range(WRITERS)]
    log(f"{WRITERS} writers submitting {n} requests while a batch runs")
    began = time.perf_counter()
    with ThreadPoolExecutor(WRITERS) as pool:
        ids = [i for chunk in pool.map(lambda c: _submit_many(ws, c), chunks) for i in chunk]
    elapsed = time.perf_counter() - began
    batch_out = json.loads(batch.communicate()[0])
    listed = json.loads(subprocess.run([OBLIVIO, "requests", "--json"], cwd=ws, capture_output=True, text=True,
                                       env=_environment(), check=True).stdout)["requests"]
    recorded = {r["id"] for r in listed}
    ok = len(set(ids)) == len(ids) == n and set(ids) <= recorded and len(listed) == n + 1
    log(f"processing the {n} submitted requests in one batch")
    processed, process_wall = cli_json(ws, "process")
    statuses = Counter(r["status"] for r in json.loads(subprocess.run(
        [OBLIVIO, "requests", "--json"], cwd=ws, capture_output=True, text=True, env=_environment(),
        check=True).stdout)["requests"])
    rows = [
        ("submissions recorded", f"{len(set(ids))} of {n}, each once: {'yes' if ok else 'NO'}",
         f"{WRITERS} concurrent processes, real CLI, while a deletion batch ran"),
        ("submission throughput", f"{n / elapsed:.1f} /s", f"{secs(elapsed)} for {n}; each is a fresh process"),
        ("batch running meanwhile", f"{batch_out.get('status')}", json.loads(pending.stdout)["request_ids"][0]),
        ("then all processed in one batch", f"{len(processed['request_ids'])} requests, {processed['status']}",
         f"{secs(process_wall)}; {processed['records_removed']} records, shards {processed['shards_retrained']}; "
         f"ledger now {dict(statuses)}"),
    ]
    return rows, {"n": n, "seconds": elapsed, "per_second": n / elapsed, "all_recorded_once": ok,
                  "process_seconds": process_wall, "statuses": dict(statuses)}


def _generated_table(settings: Settings, rows: int) -> Path:
    """Copies of nlswork with fresh record and subject ids, written outside any workspace."""
    import pandas as pd

    from oblivio.data.sources import load_nlswork

    base = load_nlswork()
    copies = -(-rows // len(base))
    frames = []
    for k in range(copies):
        part = base.copy()
        part["idcode"] = part["idcode"] + k * 100000
        part["record_id"] = part["record_id"] + f"-c{k}"
        frames.append(part)
    table = pd.concat(frames, ignore_index=True).iloc[:rows]
    path = settings.scratch / f"generated-{rows}.parquet"
    table.to_parquet(path, index=False)
    return path


def _peak_rss_run(ws: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB of the command and its children) of `oblivio run`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    began = time.perf_counter()
    subprocess.run([OBLIVIO, "run", "--json", "--no-baseline"], cwd=ws, capture_output=True, text=True,
                   env=_environment(), check=True)
    wall = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024


def large_table(settings: Settings) -> tuple[list[tuple[str, str, str]], dict]:
    rows = 100_000 if settings.quick else 1_000_000
    small = make_workspace(settings, "rss-default", {"report": {"baseline": False}})
    small_wall, small_rss = _peak_rss_run(small)
    big = make_workspace(settings, "rss-large", {"data": {"source": str(_generated_table(settings, rows)),
                                                          "limit_subjects": 0}, "report": {"baseline": False}})
    log(f"oblivio run on {rows} rows")
    big_wall, big_rss = _peak_rss_run(big)
    before = file_sizes(big / "data" / "shards")
    subject = training_subjects(big)[0][0]
    cli_json(big, "forget", "--subject", subject, "--wait")
    after = file_sizes(big / "data" / "shards")
    changed = sorted({name.split("/")[0] for name in before if after.get(name) != before[name]})
    table = [
        ("peak RSS, default data", f"{small_rss:.0f} MiB", f"oblivio run, {secs(small_wall)}"),
        (f"peak RSS, {rows:,} rows", f"{big_rss:.0f} MiB", f"oblivio run, {secs(big_wall)}; "
         "ingest and the MIA audit hold the whole table: memory grows with the data, not the shard"),
        ("partitions rewritten by a one-subject erasure", ", ".join(changed) or "none", f"of {len(before)} files"),
    ]
    return table, {"rows": rows, "rss_default_mib": small_rss, "rss_large_mib": big_rss,
                   "partitions_rewritten": changed}


def run(settings: Settings) -> Section:
    sub_rows, sub_raw = submissions(settings)
    big_rows, big_raw = large_table(settings)
    return Section("Load", [figures(sub_rows + big_rows)], {"submissions": sub_raw, "large_table": big_raw})
