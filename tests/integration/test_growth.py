"""Growth-aware slicing end to end: a table that grows between runs retrains one stage per grown shard.

The table gains people twice (one of them a marked person), then that newcomer is erased:
the erasure must equal a from-scratch run bit for bit, leave no trace, and keep them out of
the next growth run.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest

from helpers import FAST, TEST_SECRET, cli, cli_json, csv_workspace, marker_hits, synthetic_table

pytestmark = pytest.mark.integration
MARKER = "zq-GROWTH-5d1e"
MARKER_VALUE = 9876.54321
SLICES = FAST["sisa"]["slices"]


def newcomer() -> str:
    """A marked subject id the test secret places on the training side."""
    from oblivio.data.sharding import is_holdout

    secret = bytes.fromhex(TEST_SECRET)
    return next(f"{MARKER}-{i}" for i in range(100) if not is_holdout(secret, f"{MARKER}-{i}", 0.2))


NEWCOMER = newcomer()


def tables() -> list[pd.DataFrame]:
    """The table on three days: 160 people, then 200 and the newcomer, then 240 and the newcomer."""
    full = synthetic_table()
    full["person"] = "p" + full["person"].astype(str)
    planted = pd.DataFrame([{"rid": f"{MARKER}-r{j}", "person": NEWCOMER, "y": j % 2,
                             "a": MARKER_VALUE if j == 0 else 0.3, "b": -0.1, "c": 0.2} for j in range(3)])
    day = full["rid"].str.extract(r"r(\d+)-")[0].astype(int)
    return [full[day < 160], pd.concat([full[day < 200], planted]), pd.concat([full, planted])]


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    root = tmp_path_factory.mktemp("growth")
    days = tables()
    ws = csv_workspace(root, days[0])
    runs = [cli_json(ws, "run")]
    for table in days[1:]:
        table.to_csv(ws / "table.csv", index=False)
        runs.append(cli_json(ws, "run"))
    erased = json.loads(cli(ws, "forget", "--subject", NEWCOMER, "--wait", "--json").stdout)
    return ws, runs, erased


def test_a_growth_run_retrains_only_the_last_stage_of_the_shards_that_received_records(grown):
    _, runs, _ = grown
    for run in runs[1:]:
        placement = run["ingest"]["placement"]
        assert placement["layout"] == "kept" and placement["records_arrived"] > 0
        trained = {s["index"]: s["slices_trained"] for s in run["shards"]}
        assert {k for k, t in trained.items() if t} == set(placement["shards_grown"])
        assert all(t == [SLICES - 1] for k, t in trained.items() if t)  # the newest stage alone
        assert run["slices_trained"] == len(placement["shards_grown"])
    assert runs[0]["ingest"]["placement"]["layout"] == "new"


def test_after_growth_runs_an_erasure_equals_training_from_scratch(grown):
    ws, _, erased = grown
    assert erased["status"] == "promoted"
    manifest = json.loads((ws / "models" / "manifest.json").read_text())
    scratch = cli_json(ws, "run", "--from-scratch")
    assert scratch["ingest"]["placement"]["layout"] == "kept"  # from scratch keeps where growth put records
    assert [s["weights_sha256"] for s in scratch["shards"]] == [s["weights_sha256"] for s in manifest["shards"]]


def test_the_erased_newcomer_stays_out_of_the_next_growth_run_and_leaves_no_trace(grown):
    ws, _, _ = grown
    assert marker_hits(ws, MARKER, MARKER_VALUE) == []  # the erasure rewrote table.csv without them too
    tables()[2].to_csv(ws / "table.csv", index=False)  # ... and the upstream sends their rows again
    ingest = json.loads(cli(ws, "stage", "ingest", "--json").stdout)
    assert ingest["n_dropped_tombstoned"] == 3 and ingest["placement"]["records_arrived"] == 0
    (ws / "table.csv").write_text((ws / "table.csv").read_text().replace(MARKER, "gone"))


def test_verify_checks_the_placement(grown):
    ws, _, _ = grown
    report = json.loads(cli(ws, "verify", "--json").stdout)
    placement = next(c for c in report["checks"] if c["check"] == "placement")
    assert report["ok"] and placement["ok"], placement
    import pyarrow as pa
    import pyarrow.parquet as pq
    from oblivio.data.sharding import read_layout

    part = ws / "data" / "shards" / "shard=0" / "part.parquet"
    original = part.read_bytes()
    table = pq.read_table(part).to_pandas()
    layout = read_layout(ws / "data" / "shards")
    rule = [layout.first_slice(bytes.fromhex(TEST_SECRET), s, r) for s, r in zip(table["person"], table["rid"])]
    table.loc[rule.index(SLICES - 1), "_slice"] = 0  # a record moved out of the slice its layout gives it
    try:
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), part)
        tampered = json.loads(cli(ws, "verify", "--json", check=False).stdout)
        assert next(c for c in tampered["checks"] if c["check"] == "placement")["ok"] is False
    finally:
        part.write_bytes(original)
