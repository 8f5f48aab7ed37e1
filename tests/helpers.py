"""Shared helpers: real workspaces driven through the real `oblivio` command (fixtures: conftest.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

OBLIVIO = str(Path(sys.executable).parent / "oblivio")


SHARED_API = "OBLIVIO_TEST_PREFECT_API"


def cli(ws: Path | None, *args: str, check: bool = True, env: dict | None = None,
        embedded: bool = False) -> subprocess.CompletedProcess:
    """Run `oblivio ARGS` in `ws` as a user would; `check` asserts exit 0 and shows stderr if not.

    Commands use the session's shared Prefect server (the scaled-out configuration), which
    saves each one a server boot; `embedded=True` lets the command start its own temporary
    server, as it does by default for a user.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    for leaked in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # set by in-process helpers
        full_env.pop(leaked, None)
    if not embedded and os.environ.get(SHARED_API):
        full_env["PREFECT_API_URL"] = os.environ[SHARED_API]
    proc = subprocess.run([OBLIVIO, *args], cwd=ws, capture_output=True, text=True, env=full_env, timeout=600,
                          start_new_session=True)  # its own process group: crash points kill only it
    if check:
        assert proc.returncode == 0, f"oblivio {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc


def cli_json(ws: Path, *args: str, embedded: bool = False) -> dict:
    return json.loads(cli(ws, *args, "--json", embedded=embedded).stdout)




def synthetic_table(n_subjects: int = 240, seed: int = 0) -> pd.DataFrame:
    """A learnable table with the shape of real data: several rows per person."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        for j in range(int(rng.integers(1, 5))):
            a, b, c = rng.normal(size=3)
            rows.append({"rid": f"r{s}-{j}", "person": 100000 + s, "y": int(a + 0.5 * b > 0), "a": a, "b": b, "c": c})
    return pd.DataFrame(rows)


FAST = {
    "sisa": {"shards": 3, "slices": 2},
    "train": {"hidden": [16], "epochs_per_slice": 2, "batch_size": 32},
    "report": {"baseline": False},
    "executor": {"kind": "thread", "max_workers": 2},
    # tiny data: one retrained shard can move accuracy by a few points, and a TPR at 1 % FPR read
    # off ~150 members of a shard is noise (with RMIA beside LiRA the worst attack crossed 0.1 by chance)
    "gates": {"min_accuracy": 0.5, "max_accuracy_regression": 0.2, "max_mia_tpr_at_1pct_fpr": 0.5},
}
TEST_SECRET = "5eed" * 16  # tests place records the same way on every run: no flaky shard layouts


def set_params(ws: Path, updates: dict) -> None:
    path = ws / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in updates.items():
        if isinstance(values, dict):
            params.setdefault(section, {}).update(values)
        else:
            params[section] = values
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def csv_workspace(root: Path, table: pd.DataFrame | None = None, **extra) -> Path:
    """A workspace on a user CSV file, small enough to train in seconds."""
    ws = root / "ws"
    cli(None, "init", str(ws))
    (ws / ".oblivio" / "secret").write_text(TEST_SECRET + "\n")
    (table if table is not None else synthetic_table()).to_csv(ws / "table.csv", index=False)
    set_params(ws, {**FAST, "data": {"source": "table.csv", "min_rows": 50,
                                     "columns": {"record_id": "rid", "subject_id": "person", "label": "y",
                                                 "features": ["a", "b", "c"]}}, **extra})
    return ws


def marker_hits(ws: Path, marker: str, value: float) -> list[str]:
    """Every file of the workspace holding `marker` (as bytes) or, in a Parquet table, `marker` or `value`.
    (The production tests scan objects and database dumps the same way: canary.object_hits.)"""
    import pyarrow.parquet as pq

    hits = []
    for path in ws.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if marker.encode() in data:
            hits.append(str(path))
        if data[:4] == b"PAR1":
            table = pq.read_table(path).to_pandas()
            as_text = table.astype(str)
            if as_text.apply(lambda col: col.str.contains(marker)).any().any() or (table == value).any().any():
                hits.append(f"{path} (table)")
    return hits


RARE_CATEGORY = "zz-rare-region"


def string_table(n_subjects: int = 240, seed: int = 0) -> pd.DataFrame:
    """A learnable table as a platform team has it: string ids and label, string categoricals,
    a boolean, a date, missing values in every feature kind; one person alone holds a rare region."""
    rng = np.random.default_rng(seed)
    regions, plans = ["north", "south", "east", "west"], ["basic", "plus", "pro"]
    rows = []
    for s in range(n_subjects):
        for j in range(int(rng.integers(1, 5))):
            a, b = rng.normal(size=2)
            plan = plans[int(rng.integers(0, 3))]
            region = regions[int(rng.integers(0, 4))]
            score = 1.5 * a + 1.5 * (plan == "pro") - 1.5 * (region == "west")
            rows.append({"rid": f"r{s}-{j}", "person": f"C-{1000 + s}", "churned": "yes" if score > 0 else "no",
                         "a": a if rng.random() > 0.1 else np.nan, "b": b,
                         "region": region if rng.random() > 0.1 else None,
                         "plan": plan if rng.random() > 0.05 else None,
                         "active": bool(rng.random() > 0.5),
                         "signup": f"20{10 + int(rng.integers(0, 10))}-0{1 + int(rng.integers(0, 9))}-1{j}"
                         if rng.random() > 0.1 else None})
    frame = pd.DataFrame(rows)
    frame.loc[frame["person"] == f"C-{1000 + n_subjects - 1}", "region"] = RARE_CATEGORY
    return frame


STRING_FEATURES = ["a", "b", "region", {"name": "plan", "kind": "categorical", "vocabulary": ["basic", "plus", "pro"]},
                   "active", {"name": "signup", "kind": "datetime"}]


def string_workspace(root: Path, table: pd.DataFrame | None = None, suffix: str = ".parquet", **extra) -> Path:
    """A workspace on a user table with strings and missing values, small enough to train in seconds."""
    ws = root / "ws"
    cli(None, "init", str(ws))
    (ws / ".oblivio" / "secret").write_text(TEST_SECRET + "\n")
    table = table if table is not None else string_table()
    path = ws / f"table{suffix}"
    table.to_parquet(path, index=False) if suffix == ".parquet" else table.to_csv(path, index=False)
    set_params(ws, {**FAST, "data": {"source": path.name, "min_rows": 50, "label_domain": ["no", "yes"],
                                     "columns": {"record_id": "rid", "subject_id": "person", "label": "churned",
                                                 "features": STRING_FEATURES}},
                    # a few more steps than FAST: with ~75 rows a slice, 2 epochs leave shards near chance
                    "train": {**FAST["train"], "epochs_per_slice": 8}, **extra})
    return ws


class CallbackReceiver:
    """An HTTP endpoint on loopback that fails the first `fail` POSTs with a 503, then answers 204."""

    def __init__(self, fail: int = 0):
        self.fail, self.received, self.paths = fail, [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((body, dict(self.headers)))
                outer.paths.append(self.path)
                self.send_response(503 if len(outer.received) <= outer.fail else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}"
        self.url = f"{self.base_url}/hooks/erasure"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
