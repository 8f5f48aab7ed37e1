"""Load: concurrent `oblivio forget` submissions while a deletion batch runs.

8 processes submit 1,000 requests between them (`--quick`: 80) with the real CLI, while an
`oblivio process` batch runs; every request must be recorded exactly once, and all of them
are then processed in one batch. (Memory on a 1M-row table is `bench/scale.py`.)
"""
from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import (
    OBLIVIO, Section, Settings, _environment, cli_json, figures, log, make_workspace, round_robin,
    secs, training_subjects,
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
    people = round_robin(training_subjects(ws), n + 1)  # spread over the shards: a request may not empty one
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


def run(settings: Settings) -> Section:
    rows, raw = submissions(settings)
    return Section("Load: concurrent submissions during a batch", [figures(rows)], {"submissions": raw})
