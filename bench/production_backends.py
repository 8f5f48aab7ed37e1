"""Section `production`: what the production backends cost a served erasure.

Two workspaces on the same data and the same secret (so the same people sit in the same
shards): one embedded (SQLite, local artifacts, a local DVC remote, a temporary Prefect
server) and one `init --profile production` against the loopback stack of
`oblivio.loopback` (an `mlflow server` on PostgreSQL with S3 artifacts, a DVC remote on S3,
a Prefect server on PostgreSQL, a Dask cluster; S3 is moto's server). Each trains once,
then erases the same people one at a time, interleaved, with `oblivio serve` running on both; the deletion
Prefect server's task runs say where the flow's time went, the purge included. The ratio is the
overhead of the tracking server, S3 round trips and the Prefect server for the same work.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from bench.common import (
    QUICK_PARAMS, BenchError, Section, Settings, cli_json, figures, log, make_workspace, median, phase_table,
    round_robin, secs, served_flow_phases, serving, set_params, times, training_subjects,
)

ERASURES = 3  # served one-subject erasures per workspace; medians are reported


def _production_workspace(settings: Settings, stack, embedded: Path) -> Path:
    """`init --profile production` against the stack, with the embedded workspace's sizes and secret."""
    ws = settings.scratch / "production"
    options = [a for flag_value in stack.init_options(dvc_prefix="bench").items() for a in flag_value]
    cli_json(None, "init", str(ws), "--profile", "production", *options)
    if settings.quick:
        set_params(ws, QUICK_PARAMS)
    (ws / ".oblivio" / "secret").write_bytes((embedded / ".oblivio" / "secret").read_bytes())  # the same shards
    return ws


def _erasure(ws: Path, person: str, env: dict | None) -> dict:
    """One served `forget --wait`: its wall time and where the deletion flow's time went."""
    result, wall = cli_json(ws, "forget", "--subject", person, "--wait", env=env)
    if not result.get("promoted") or result.get("processed_by") != "serve":
        raise BenchError(f"erasure of one person in {ws.name} ended {result.get('decision')!r} "
                         f"(processed by {result.get('processed_by')}), not promoted by serve")
    api_url = json.loads((ws / ".oblivio" / "serve.json").read_text())["api_url"]
    phases = served_flow_phases(api_url, "oblivio-deletion", wall)
    return {"wall": wall, "phases": phases, "purge": sum(s for n, s in phases if n == "purge-and-certify"),
            "shards_retrained": result["shards_retrained"]}


def _summary(runs: list[dict]) -> dict:
    middle = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]
    return {"wall": middle["wall"], "purge": median([r["purge"] for r in runs]), "phases": middle["phases"],
            "walls": sorted(r["wall"] for r in runs), "shards": [r["shards_retrained"] for r in runs]}


def run(settings: Settings) -> Section:
    from oblivio.loopback import LoopbackStack, postgres_available

    if not postgres_available():
        raise BenchError("the production section needs PostgreSQL 15's binaries and root (see STACK.md)")
    embedded = make_workspace(settings, "embedded")
    base = Path(tempfile.mkdtemp(prefix="oblivio-loopback-"))  # the postgres user must traverse its parents
    stack = LoopbackStack(base)
    try:
        log("starting the loopback production stack")
        stack.start()
        production = _production_workspace(settings, stack, embedded)
        cli_json(embedded, "run", "--no-baseline")
        cli_json(production, "run", "--no-baseline", env=stack.client_environment())
        people = round_robin(training_subjects(embedded), ERASURES)
        runs: dict[str, list[dict]] = {"embedded": [], "production": []}
        with serving(embedded), serving(production, env=stack.client_environment()):
            for person in people:  # interleaved: the box's load hits both alike
                runs["embedded"].append(_erasure(embedded, person, None))
                runs["production"].append(_erasure(production, person, stack.client_environment()))
        results = {name: _summary(r) for name, r in runs.items()}
    finally:
        stack.stop()
        shutil.rmtree(base, ignore_errors=True)
    e, p = results["embedded"], results["production"]
    rows = [
        (f"served one-subject `forget --wait`, production / embedded (median of {ERASURES})",
         times(p["wall"] / e["wall"]), f"{secs(p['wall'])} vs {secs(e['wall'])}; same people, same shards retrained "
                                       f"({p['shards'] == e['shards']})"),
        ("purge and certify step, production / embedded", times(p["purge"] / e["purge"]),
         f"{secs(p['purge'])} vs {secs(e['purge'])}: `mlflow gc` through the tracking server's database and S3, "
         "`dvc gc -c` on the S3 remote, the Prefect server's flow runs"),
    ]
    return Section("production backends: a served erasure", [figures(rows), phase_table({"embedded (median erasure)": e["phases"],
                                             "production (median erasure)": p["phases"]})], results)

