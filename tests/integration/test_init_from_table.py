"""`oblivio init --from-table`: params.yaml from a Parquet or CSV schema, refusals, and a run on it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import FAST, TEST_SECRET, cli, cli_json, set_params, string_table

pytestmark = pytest.mark.integration


def user_table(folder: Path, suffix: str) -> Path:
    """The string table as a user has it: no record id, an email column, a nested column (Parquet)."""
    table = string_table().drop(columns=["rid"])
    table["email"] = table["person"].str.lower() + "@example.com"
    path = folder / f"customers{suffix}"
    if suffix == ".parquet":
        table["tags"] = [["a", "b"]] * len(table)
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)
    return path


def features_of(ws: Path) -> dict:
    entries = yaml.safe_load((ws / "params.yaml").read_text())["data"]["columns"]["features"]
    return {e if isinstance(e, str) else e["name"]: "" if isinstance(e, str) else e["kind"] for e in entries}


def test_parquet_schema_gives_kinds_a_derived_record_id_and_a_workspace_that_runs(tmp_path):
    source = user_table(tmp_path, ".parquet")
    ws = tmp_path / "ws"
    proc = cli(None, "init", str(ws), "--from-table", str(source), "--subject-id", "person", "--label", "churned")
    told = proc.stderr
    assert "region     categorical" in told and "a          numeric" in told
    assert "record id (derived)" in told and "two identical rows of one person would share an id" in told
    assert "warning: feature column 'email' looks like an identifier" in told
    assert "tags       excluded: type list" in told
    params = yaml.safe_load((ws / "params.yaml").read_text())
    assert params["data"]["columns"]["derive_record_id"] is True
    assert params["data"]["label_domain"] == ["no", "yes"]
    assert features_of(ws) == {"a": "", "b": "", "region": "", "plan": "", "active": "", "signup": "", "email": "",
                               "tags": "excluded"}
    assert "# categorical: text: hashed buckets" in (ws / "params.yaml").read_text()
    assert "C-1000" not in (ws / "params.yaml").read_text()  # no value of anyone's data

    (ws / ".oblivio" / "secret").write_text(TEST_SECRET + "\n")
    set_params(ws, {**FAST, "data": {**params["data"], "min_rows": 50}})
    run = cli(ws, "run", "--json")
    result = json.loads(run.stdout)
    assert result["ingest"]["warnings"] == [w for w in result["ingest"]["warnings"] if "'email'" in w] != []
    assert result["metrics"]["accuracy"] > 0.55


def test_csv_schema_reads_the_types_pandas_reads(tmp_path):
    source = user_table(tmp_path, ".csv")
    ws = tmp_path / "ws"
    cli(None, "init", str(ws), "--from-table", str(source), "--subject-id", "person", "--label", "churned",
        "--record-id", "email")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    assert params["data"]["columns"]["record_id"] == "email"
    assert params["data"]["columns"]["derive_record_id"] is False
    assert features_of(ws) == {"a": "", "b": "", "region": "", "plan": "", "active": "", "signup": ""}


@pytest.mark.parametrize("args, message", [
    (["--subject-id", "customer_id", "--label", "churned"],
     "no column for --subject-id 'customer_id'. The columns found: person, churned, a, b"),
    (["--subject-id", "person", "--label", "a"], "--label 'a' has"),
    (["--subject-id", "person"], "--from-table needs --subject-id COL and --label COL"),
])
def test_refusals_write_nothing(tmp_path, args, message):
    source = user_table(tmp_path, ".csv")
    proc = cli(None, "init", str(tmp_path / "ws"), "--from-table", str(source), *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "ws").exists()


def test_a_file_that_is_not_parquet_or_csv_is_refused(tmp_path):
    (tmp_path / "customers.xlsx").write_bytes(b"PK\x03\x04")
    proc = cli(None, "init", str(tmp_path / "ws"), "--from-table", str(tmp_path / "customers.xlsx"),
               "--subject-id", "person", "--label", "churned", check=False)
    assert proc.returncode == 2 and "only .parquet and .csv files" in proc.stderr
    assert not (tmp_path / "ws").exists()
