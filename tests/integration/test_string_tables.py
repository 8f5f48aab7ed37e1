"""A user's own table (string ids, string label, string categoricals, missing values) end to end."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import RARE_CATEGORY, TEST_SECRET, cli, cli_json, string_table, string_workspace

pytestmark = pytest.mark.integration


def training_side_subject(table: pd.DataFrame) -> str:
    from oblivio.data.sharding import is_holdout

    secret = bytes.fromhex(TEST_SECRET)
    return next(s for s in table["person"].unique()[::-1] if not is_holdout(secret, s, 0.2))


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def erased(tmp_path_factory):
    """Train on the string table, then erase the only person who has a rare region."""
    table = string_table()
    table["region"] = table["region"].replace(RARE_CATEGORY, "north")
    rare = training_side_subject(table)
    table.loc[table["person"] == rare, "region"] = RARE_CATEGORY
    ws = string_workspace(tmp_path_factory.mktemp("strings"), table)
    before = cli_json(ws, "run")
    state = {"checkpoints": digests(ws / "checkpoints"), "shards": digests(ws / "data" / "shards"),
             "manifest": json.loads((ws / "models" / "manifest.json").read_text())}
    result = json.loads(cli(ws, "forget", "--subject", rare, "--wait", "--json").stdout)
    return ws, table, before, state, result


def test_class_names_are_the_users(erased):
    _, _, before, _, _ = erased
    assert set(before["metrics"]["per_class_accuracy"]) == {"no", "yes"}
    assert before["metrics"]["accuracy"] > 0.7
    review = cli(erased[0], "review").stdout
    assert "accuracy per class: no " in review and ", yes " in review


def test_erasing_the_last_person_with_a_rare_category_touches_one_shard_only(erased):
    ws, _, _, state, result = erased
    assert result["status"] == "promoted" and len(result["shards_retrained"]) == 1
    (k,) = result["shards_retrained"]
    shards_after, checkpoints_after = digests(ws / "data" / "shards"), digests(ws / "checkpoints")
    for name, digest in state["shards"].items():
        if not name.startswith(f"shard={k}/"):
            assert shards_after.get(name) == digest, f"{name}: another shard's inputs changed"
    for name, digest in state["checkpoints"].items():
        if not name.startswith(f"shard-{k}/"):
            assert checkpoints_after.get(name) == digest, f"{name}: another shard's checkpoint changed"
    manifest = json.loads((ws / "models" / "manifest.json").read_text())
    assert manifest["recipe"] == state["manifest"]["recipe"]  # same encoding, same input width
    assert manifest["recipe_sha256"] == state["manifest"]["recipe_sha256"]


def test_erasure_equals_training_from_scratch_bit_for_bit(erased):
    ws = erased[0]
    erased_weights = [s["weights_sha256"] for s in json.loads((ws / "models" / "manifest.json").read_text())["shards"]]
    cli(ws, "verify", "--replay", "2")
    scratch = cli_json(ws, "run", "--from-scratch", "--no-baseline")
    assert [s["weights_sha256"] for s in scratch["shards"]] == erased_weights


def test_registered_model_predicts_raw_string_rows_as_the_ensemble_does(erased, monkeypatch):
    ws, table, _, _, _ = erased
    import mlflow

    from oblivio.ensemble import Ensemble
    from oblivio.evaluation import holdout_arrays
    from oblivio.workspace import WorkspaceDir

    uri = f"sqlite:///{ws / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/oblivio-ensemble@champion")
    inputs = {c.name: str(c.type) for c in model.metadata.signature.inputs.inputs}
    assert inputs["region"] == "DataType.string" and inputs["active"] == "DataType.boolean"
    assert inputs["a"] == "DataType.double"

    raw = pd.read_parquet(ws / "table.parquet")  # as the user has it: strings, None, NaN
    held_out = WorkspaceDir(ws)
    x, _ = holdout_arrays(held_out)
    ensemble = Ensemble.load(ws / "models")
    own = ensemble.predict_proba(x)  # the audit's probabilities, from the stored partition
    rows = raw.set_index("rid").loc[pd.read_parquet(held_out.holdout_path)["rid"]].reset_index()
    out = model.predict(rows.drop(columns=["churned"]))
    np.testing.assert_array_equal(out[["proba_no", "proba_yes"]].to_numpy(), own)
    assert set(out["prediction"]) <= {"no", "yes"}
    assert (out["prediction"] == np.where(own[:, 1] > own[:, 0], "yes", "no")).all()


def test_dvc_status_is_clean_after_the_runs(erased):
    import subprocess
    import sys

    ws = erased[0]
    dvc = Path(sys.executable).parent / "dvc"
    status = subprocess.run([str(dvc), "status", "--json"], cwd=ws, capture_output=True, text=True, check=True)
    # ingest is `always_changed` (the source may have grown); nothing else: no deleted outputs,
    # no changed dependency, and no second pipeline (the shipped template is not a dvc.yaml)
    assert json.loads(status.stdout) == {"ingest": ["always changed"]}
