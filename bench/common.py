"""Shared helpers: throwaway workspaces driven through the real `oblivio` command.

Every timed figure is the wall clock of the command a user types (a subprocess), so
process start, imports and Prefect's temporary server count, as they do for a user.
The box is shared and noisy: compare the ratios measured in one run, not the seconds.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from itertools import zip_longest
from pathlib import Path

import yaml

OBLIVIO = str(Path(sys.executable).parent / "oblivio")
REPO = Path(__file__).resolve().parents[1]
# --quick: a deterministic sample of people and fewer epochs; the shapes (S=8, R=4) stay
QUICK_PARAMS = {"data": {"limit_subjects": 1000}, "train": {"epochs_per_slice": 2}}
_STARTED = time.perf_counter()


class BenchError(RuntimeError):
    """A command the benchmark drives failed; the message holds its stderr tail."""


@dataclass(frozen=True)
class Settings:
    scratch: Path  # workspaces and generated files; the runner deletes it at the end
    quick: bool
    one_by_one: int  # erasures done one at a time (the batch comparison)


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + " --- |" * len(self.columns)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in self.rows])


@dataclass
class Section:
    """What one benchmark section hands the runner: tables for people, raw numbers for scripts."""

    title: str
    tables: list[Table]
    raw: dict


def figures(rows: list[tuple[str, str, str]]) -> Table:
    """The usual three-column table: what was measured, the number, how to read it."""
    return Table(["figure", "value", "note"], [list(r) for r in rows])


def secs(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def times(value: float) -> str:
    return f"{value:.2f}x"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def log(message: str) -> None:
    """Progress on stderr, so a long run can be followed in its log file."""
    print(f"[bench {time.perf_counter() - _STARTED:7.1f} s] {message}", file=sys.stderr, flush=True)


# --- workspaces -----------------------------------------------------------------------

def make_workspace(settings: Settings, name: str, updates: dict | None = None) -> Path:
    """`oblivio init` in the scratch dir, then the --quick sizes (if asked) and `updates`."""
    ws = settings.scratch / name
    cli_json(None, "init", str(ws))
    if settings.quick:
        set_params(ws, QUICK_PARAMS)
    if updates:
        set_params(ws, updates)
    return ws


def set_params(ws: Path, updates: dict) -> None:
    """Merge `updates` into params.yaml one section deep, as a user editing the file would."""
    path = ws / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in updates.items():
        if isinstance(values, dict):
            params.setdefault(section, {}).update(values)
        else:
            params[section] = values
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def read_params(ws: Path) -> dict:
    return yaml.safe_load((ws / "params.yaml").read_text())


def _environment() -> dict[str, str]:
    """The caller's environment without a Prefect server address: each command starts its own, as a user's would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    return env


def cli_json(ws: Path | None, *args: str, env: dict[str, str] | None = None) -> tuple[dict, float]:
    """Run `oblivio ARGS --json` in `ws` (with `env` added, e.g. a stack's credentials); returns (its JSON, wall seconds)."""
    log(f"oblivio {' '.join(args)}" + (f"  (in {ws.name})" if ws else ""))
    began = time.perf_counter()
    proc = subprocess.run([OBLIVIO, *args, "--json"], cwd=ws, capture_output=True, text=True,
                          env={**_environment(), **(env or {})})
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise BenchError(f"`oblivio {' '.join(args)}` exited {proc.returncode} after {wall:.1f} s:\n"
                         f"{proc.stderr[-3000:]}")
    log(f"  done in {wall:.1f} s")
    return json.loads(proc.stdout), wall


@contextmanager
def serving(ws: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """`oblivio serve` on `ws` (with `env` added) for the duration of the block."""
    from oblivio.flows.prefect_api import free_port

    proc = subprocess.Popen([OBLIVIO, "serve", "--port", str(free_port())], cwd=ws, env={**_environment(), **(env or {})},
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not (ws / ".oblivio" / "serve.json").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"`oblivio serve` did not come up in {ws}")
            time.sleep(0.5)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)


def idle_cpu_share(ws: Path, seconds: float = 20.0, settle: float = 5.0) -> float:
    """CPU seconds per wall second that a running, idle `oblivio serve` of `ws` spends, with its
    Prefect server and warm workers (its whole process tree), after `settle` seconds of quiet."""
    import psutil

    serve = psutil.Process(json.loads((ws / ".oblivio" / "serve.json").read_text())["pid"])
    time.sleep(settle)

    def cpu() -> float:
        total = 0.0
        for proc in [serve, *serve.children(recursive=True)]:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    before = cpu()
    time.sleep(seconds)
    return (cpu() - before) / seconds


def wall_times(cmd: list[str], repeats: int) -> list[float]:
    """Wall clock of `cmd`, `repeats` times in a row."""
    out = []
    for _ in range(repeats):
        began = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, env=_environment())
        out.append(time.perf_counter() - began)
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- what is on disk ------------------------------------------------------------------

def file_sizes(root: Path) -> dict[str, int]:
    """{relative path: bytes} of every file under `root` (empty when it does not exist)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def dir_bytes(root: Path) -> int:
    return sum(file_sizes(root).values())


def training_subjects(ws: Path) -> list[tuple[str, int]]:
    """(subject id, shard) of every person now in the training partitions, sorted.

    Held-out people are left out on purpose: erasing one of them retrains nothing.
    """
    import pyarrow.parquet as pq

    column = read_params(ws)["data"]["columns"]["subject_id"]
    pairs = set()
    for part in sorted((ws / "data" / "shards").glob("shard=*/part.parquet")):
        table = pq.read_table(part, columns=[column, "_shard"]).to_pydict()
        pairs.update(zip(map(str, table[column]), table["_shard"]))
    return sorted(pairs, key=lambda p: (p[1], p[0]))


# --- where the time goes ----------------------------------------------------------------

def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def flow_phases(ws: Path, cli_wall: float) -> list[tuple[str, float]]:
    """The latest flow run of `ws`, split into steps, from its temporary Prefect server's database.

    Neither `run --json` nor `forget --json` says where its time went, and the fixed
    costs dominate on small data. Consecutive task runs of one kind form a step (the
    parallel shard and baseline trainings are one "train" step); time between steps,
    such as the process pool starting its workers, is an "idle before" step; what the
    command spent outside the flow (interpreter, imports, Prefect server) comes last.
    """
    db = sqlite3.connect(ws / ".oblivio" / "prefect" / "prefect.db")
    try:
        flow_id, flow_start, flow_end = db.execute(
            "select id, start_time, end_time from flow_run order by start_time desc limit 1").fetchone()
        tasks = db.execute("select name, start_time, end_time from task_run where flow_run_id = ? "
                           "and start_time is not null order by start_time", (flow_id,)).fetchall()
    finally:
        db.close()
    return _phases(flow_start, flow_end, tasks, cli_wall)


def served_flow_phases(api_url: str, flow_name: str, cli_wall: float) -> list[tuple[str, float]]:
    """`flow_phases` of the latest `flow_name` run on any Prefect server, through its REST API
    (a served erasure's flow runs on the server `serve` uses: its own, or a production one)."""
    def post(path: str, body: dict) -> list[dict]:
        request = urllib.request.Request(f"{api_url}/{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def tasks_of(run: dict) -> list[tuple[str, str, str]]:
        rows = post("task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
        return sorted(((t["name"], t["start_time"], t["end_time"]) for t in rows if t["start_time"]),
                      key=lambda t: t[1])

    # the latest run that did the work (an event may also start one that finds nothing to do);
    # `forget --wait` returns once certified, so its flow may still be sending its events
    deadline = time.monotonic() + 120
    while True:
        runs = post("flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}},
                                         "sort": "EXPECTED_START_TIME_DESC", "limit": 5})
        working = next(((r, tasks) for r in runs if len(tasks := tasks_of(r)) > 2), None)
        if working and working[0]["state_type"] == "COMPLETED":
            run, tasks = working
            break
        if time.monotonic() > deadline:
            raise BenchError(f"no completed {flow_name} run that did work on {api_url} within 120 s")
        time.sleep(0.3)
    return _phases(run["start_time"], run["end_time"], tasks, cli_wall,
                   "outside the flow (the command, the hand-over to serve and back)", not_waited=NOT_WAITED)


def served_flow_end(ws: Path, flow_run_id: str, timeout: float = 300) -> float:
    """Wait for a served run's flow to end (its last step, the MIA intervals, runs after the
    waiting command has returned); the seconds waited. The next command then meets an idle serve."""
    from oblivio.flows.handover import flow_run_state
    from oblivio.flows.history import FINAL

    api_url = json.loads((ws / ".oblivio" / "serve.json").read_text())["api_url"]
    began = time.monotonic()
    while flow_run_state(api_url, flow_run_id)[0] not in FINAL:
        if time.monotonic() - began > timeout:
            raise BenchError(f"served flow run {flow_run_id} did not end within {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - began


# steps a served deletion flow runs after the requests are settled: `forget --wait` has returned by then
NOT_WAITED = ("attach-intervals",)
AFTER_RETURN = " (after the command returned)"


def _phases(flow_start: str, flow_end: str, tasks, cli_wall: float,
            outside: str = "outside the flow (interpreter, imports, Prefect server)",
            not_waited: tuple[str, ...] = ()) -> list[tuple[str, float]]:
    steps: list[list] = []  # [name, start, end]
    for name, start, end in tasks:
        kind = name.rsplit("-", 1)[0]
        kind = "train" if kind in ("train-shard", "train-baseline") else kind
        if steps and steps[-1][0] == kind:
            steps[-1][2] = max(steps[-1][2], _when(end))
            continue
        steps.append([kind, _when(start), _when(end)])
    out, previous_end = [], _when(flow_start)
    for kind, start, end in steps:
        if (start - previous_end).total_seconds() > 0.5:
            out.append((f"idle before {kind}", (start - previous_end).total_seconds()))
        # a step that overlaps the previous one (publishing while the baseline still trains) counts from its end
        out.append((kind, max(0.0, (end - max(start, previous_end)).total_seconds())))
        previous_end = max(previous_end, end)
    flow_seconds = (_when(flow_end) - _when(flow_start)).total_seconds()
    out.append(("other (short gaps in the flow)", flow_seconds - sum(s for _, s in out)))
    after = sum(seconds for kind, seconds in out if kind in not_waited)
    out.append((outside, cli_wall - (flow_seconds - after)))
    # shown, but not part of the command's wall: it ran after the command had returned
    return [(f"{kind}{AFTER_RETURN}" if kind in not_waited else kind, seconds) for kind, seconds in out]


def phase_table(runs: dict[str, list[tuple[str, float]]]) -> Table:
    """Steps (rows) of several commands (columns), seconds summed per step name."""
    names = list(dict.fromkeys(n for phases in runs.values() for n, _ in phases))
    table = Table(["step (s)", *runs])
    for name in names:
        cells = [[s for n, s in phases if n == name] for phases in runs.values()]
        table.rows.append([name, *(f"{sum(c):.1f}" if c else "–" for c in cells)])
    table.rows.append(["**total (wall)**", *(f"{sum(s for n, s in p if not n.endswith(AFTER_RETURN)):.1f}"
                                             for p in runs.values())])
    return table


def round_robin(people: list[tuple[str, int]], n: int) -> list[str]:
    """`n` people taken from each shard in turn: one-by-one requests that touch different shards."""
    by_shard: dict[int, list[str]] = defaultdict(list)
    for subject, shard in people:
        by_shard[shard].append(subject)
    order = [s for group in zip_longest(*by_shard.values()) for s in group if s is not None]
    return order[:n]


SUBJECT_OFFSET = 100_000  # above every nlswork idcode: each copy's people are new people


def replicated_nlswork(path: Path, rows: int) -> Path:
    """nlswork copied until `rows` rows, each copy with fresh record ids and subject ids."""
    import pandas as pd

    from oblivio.data.sources import load_nlswork

    base = load_nlswork()
    copies = [base.assign(record_id=base["record_id"] + f"-c{k}", idcode=base["idcode"] + k * SUBJECT_OFFSET)
              for k in range(-(-rows // len(base)))]
    pd.concat(copies, ignore_index=True).iloc[:rows].to_parquet(path, index=False)
    return path
