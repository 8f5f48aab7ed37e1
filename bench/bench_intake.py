"""Intake: the HTTP deletion intake under load, and the Python API's overhead against the CLI.

8 concurrent asyncio clients (keep-alive HTTP/1.1 over asyncio streams, on uvloop) on loopback send 5,000 submissions (`--quick`: 500), a mix of new
requests (60 %), idempotent retries of earlier ones (same Idempotency-Key and body, 25 %) and
bad ones (malformed JSON, unknown fields, a wrong token: 15 %), bounded in count and in time.
Every accepted request must be recorded exactly once, every retry must return its request,
every bad one must be refused and record nothing. The intake runs in its own process, as in
`oblivio serve`, on a workspace whose data is placed (`oblivio stage ingest`), so each new
request is prechecked against the real partitions; announcing to Prefect is left out (without
a deletion deployment to trigger, it would only measure a failing POST). "Accepted" counts
requests created (202); idempotent retries answer 200 with the same request.

Then `forget` three ways, side by side: the CLI (a fresh process), a fresh interpreter calling
the API, and the API in a warm process (what the intake does per request).
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench.common import OBLIVIO, Section, Settings, _environment, figures, log, make_workspace, secs, \
    training_subjects

CLIENTS = 8
TIME_LIMIT_S = 600
SERVER = """
import sys, time, json
from oblivio import Workspace
from oblivio.http_intake import IntakeServer
ws = Workspace.open(sys.argv[1])
server = IntakeServer(ws, port=0)
server.start(announce=lambda request_id: False)
print(json.dumps({"url": server.url, "token": ws.layout.intake_token}), flush=True)
sys.stdin.read()
server.stop()
"""


def _plan(people: list[str], n: int, seed: int = 0) -> list[tuple[str, dict]]:
    """(kind, spec) for each submission: new, retry (of an earlier new one), bad."""
    rng = random.Random(seed)
    plan, made = [], []
    fresh = iter(people)
    for i in range(n):
        roll = rng.random()
        if roll < 0.60 or not made:
            subject = next(fresh)
            spec = {"key": f"bench-{i}", "body": {"subjects": [subject], "reason": f"bench #{i}"}}
            made.append(spec)
            plan.append(("new", spec))
        elif roll < 0.85:
            plan.append(("retry", rng.choice(made)))
        else:
            plan.append(("bad", {"variant": rng.choice(["json", "field", "token"])}))
    return plan


class _Connection:
    """One keep-alive HTTP/1.1 connection over asyncio streams: a client lean enough that the
    intake, not the load generator, is what gets measured (httpx spent twice the server's CPU)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
                          f"{head}\r\n".encode() + body)
        status_line = await self.reader.readline()
        status, length, closing = int(status_line.split()[1]), 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                closing = True
        answer = await self.reader.readexactly(length)
        if closing:
            await self.close()
        return status, answer

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def _drive(url: str, token: str, plan: list[tuple[str, dict]]) -> tuple[list[tuple], float]:
    from urllib.parse import urlparse

    where = urlparse(url)
    queue: asyncio.Queue = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    results: list[tuple] = []
    auth = f"Bearer {token}"

    async def client() -> None:
        http = _Connection(where.hostname, where.port)
        try:
            while not queue.empty():
                kind, spec = queue.get_nowait()
                headers = {"Content-Type": "application/json", "Authorization": auth}
                if kind == "bad":
                    content = {"json": b"{nope", "field": b'{"subjects": ["1"], "colour": 1}',
                               "token": b'{"subjects": ["1"]}'}[spec["variant"]]
                    if spec["variant"] == "token":
                        headers["Authorization"] = "Bearer wrong"
                    code, _ = await http.post("/v1/requests", content, headers)
                    results.append((kind, spec.get("variant"), code, None))
                else:
                    headers["Idempotency-Key"] = spec["key"]
                    code, answer = await http.post("/v1/requests", json.dumps(spec["body"]).encode(), headers)
                    rid = json.loads(answer).get("request_id") if code < 300 else None
                    results.append((kind, spec["key"], code, rid))
        finally:
            await http.close()

    began = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(CLIENTS))), TIME_LIMIT_S)
    return results, time.perf_counter() - began


def http_load(settings: Settings) -> tuple[list, dict]:
    n = 500 if settings.quick else 5000
    ws = make_workspace(settings, "intake")
    log("placing the data (oblivio stage ingest) for the intake's prechecks")
    subprocess.run([OBLIVIO, "stage", "ingest"], cwd=ws, env=_environment(), check=True, capture_output=True)
    people = [p for p, _ in training_subjects(ws)]
    random.Random(1).shuffle(people)
    plan = _plan(people, n)
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(ws)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=_environment())
    try:
        hello = json.loads(server.stdout.readline())
        log(f"{CLIENTS} clients sending {n} submissions to {hello['url']}")
        import uvloop

        results, elapsed = uvloop.run(_drive(hello["url"], hello["token"], plan))
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    from oblivio.ledger import Ledger

    ledger = Ledger(ws / ".oblivio" / "ledger.db")
    try:
        rows = ledger.list()
    finally:
        ledger.close()
    by_key: dict[str, set] = {}
    for kind, key, code, rid in results:
        if kind != "bad" and code in (200, 202):
            by_key.setdefault(key, set()).add(rid)
    # a retry may overtake its first submission (another client): whichever came first got the 202
    created = [r[3] for r in results if r[0] != "bad" and r[2] == 202]
    statuses = Counter((r[0], r[2]) for r in results)
    recorded_ids = [r.id for r in rows]
    once = (len(created) == len(set(created)) == len(recorded_ids) == len(by_key)
            and set(created) == set(recorded_ids) and all(len(v) == 1 for v in by_key.values()))
    bad_refused = all(code in (401, 422) for kind, _, code, _ in results if kind == "bad")
    rate = len(created) / elapsed
    rows_out = [
        ("submissions sent", f"{len(results)} of {n} in {secs(elapsed)}",
         f"{CLIENTS} asyncio clients on loopback; " + ", ".join(f"{k} {c}: {v}" for (k, c), v in sorted(statuses.items()))),
        ("accepted requests recorded exactly once", "yes" if once else "NO",
         f"{len(created)} created (202), {len(recorded_ids)} in the ledger, {len(by_key)} keys; "
         "every retry returned its key's one request"),
        ("bad submissions refused, nothing recorded", "yes" if bad_refused else "NO", "401 / 422"),
        ("accepted submissions per second", f"{rate:.0f} /s", f"all submissions {len(results) / elapsed:.0f} /s; aim >= 500"),
    ]
    return rows_out, {"n": n, "seconds": elapsed, "accepted": len(created), "accepted_per_second": rate,
                      "all_per_second": len(results) / elapsed, "recorded_once": once, "bad_refused": bad_refused,
                      "statuses": {f"{k} {c}": v for (k, c), v in statuses.items()}}


def forget_overhead(settings: Settings, repeats: int) -> tuple[list, dict]:
    ws = Path(settings.scratch) / "intake"
    people = [p for p, _ in training_subjects(ws)]
    random.Random(1).shuffle(people)  # as http_load did: it took people from the front
    people = people[-3 * repeats:]
    env = _environment()

    def wall(cmd: list[str]) -> float:
        began = time.perf_counter()
        subprocess.run(cmd, cwd=ws, env=env, check=True, capture_output=True)
        return time.perf_counter() - began

    script = "import sys; from oblivio import Workspace; Workspace.open('.').forget(subjects=[sys.argv[1]])"
    cli = [wall([OBLIVIO, "forget", "--subject", people[i], "--json"]) for i in range(repeats)]
    api_cold = [wall([sys.executable, "-c", script, people[repeats + i]]) for i in range(repeats)]
    warm_script = ("import sys, time, json; from oblivio import Workspace; ws = Workspace.open('.'); t = []\n"
                   "for s in sys.argv[1:]:\n    b = time.perf_counter(); ws.forget(subjects=[s]); "
                   "t.append(time.perf_counter() - b)\nprint(json.dumps(t))")
    warm = json.loads(subprocess.run([sys.executable, "-c", warm_script, *people[2 * repeats:]], cwd=ws, env=env,
                                     check=True, capture_output=True, text=True).stdout)
    c, a, w = statistics.median(cli), statistics.median(api_cold), statistics.median(warm)
    rows = [("`forget`: CLI / API in a fresh interpreter / API in a warm process",
             f"{secs(c)} / {secs(a)} / {w * 1000:.0f} ms",
             f"medians of {repeats}; CLI / fresh API {c / a:.2f}x, CLI / warm API {c / w:.0f}x")]
    return rows, {"cli_s": c, "api_fresh_s": a, "api_warm_s": w, "repeats": repeats}


def run(settings: Settings) -> Section:
    rows, raw = http_load(settings)
    more, overhead = forget_overhead(settings, 3 if settings.quick else 5)
    return Section("Intake: HTTP submissions under load; API vs CLI for forget", [figures(rows + more)],
                   {"http": raw, "forget_overhead": overhead})
