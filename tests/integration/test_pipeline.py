"""The whole pipeline through the real CLI: Prefect, GX, DVC and an MLflow sqlite registry."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import cli, cli_json, csv_workspace, set_params

pytestmark = pytest.mark.integration

CONTRACT = {"model_name", "model_version", "aliases", "promoted", "dataset_version", "n_records", "n_subjects",
            "n_shards", "n_slices", "metrics", "gates", "seconds"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ws = csv_workspace(tmp_path_factory.mktemp("pipeline"))
    first = cli_json(ws, "run", embedded=True)  # the default: a temporary Prefect server of its own
    return ws, first


def mlflow_client(ws):
    from oblivio.workspace import WorkspaceDir
    from oblivio.tracking import client

    cfg = WorkspaceDir(ws).mlflow
    return client(cfg), cfg


def test_run_prints_the_json_contract(trained):
    _, result = trained
    assert CONTRACT <= result.keys()
    assert result["promoted"] is True and {"candidate", "champion"} <= set(result["aliases"])
    assert (result["n_shards"], result["n_slices"]) == (3, 2)
    assert 0.5 < result["metrics"]["accuracy"] <= 1.0
    assert result["gates"]["min_accuracy"]["passed"] is True


def test_registry_holds_the_version_with_lineage(trained):
    ws, result = trained
    c, cfg = mlflow_client(ws)
    champion = c.get_model_version_by_alias(cfg.model_name, "champion")
    assert int(champion.version) == result["model_version"]
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    shards_md5 = {o["path"]: o["md5"] for o in lock["stages"]["ingest"]["outs"]}["data/shards"]
    assert result["dataset_version"] == shards_md5 and champion.tags["oblivio.dataset_version"] == shards_md5
    run = c.get_run(champion.run_id)
    digests = {i.dataset.name: i.dataset.digest for i in run.inputs.dataset_inputs}
    assert shards_md5.startswith(digests["train-shards"])
    assert run.data.tags["oblivio.git_commit"]
    assert float(run.data.params["sisa.shards"]) == 3
    children = c.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == ["shard-0", "shard-1", "shard-2"]
    assert "min_accuracy" in champion.description and f"v{result['model_version']}" in champion.description


def test_registered_model_serves_and_matches_the_ensemble(trained):
    import mlflow.pyfunc

    from oblivio.data.sharding import read_holdout
    from oblivio.ensemble import Ensemble

    ws, _ = trained
    _, cfg = mlflow_client(ws)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{cfg.model_name}@champion")
    holdout = read_holdout(ws / "data" / "holdout.parquet")
    served = model.predict(holdout[["a", "b", "c"]])
    direct = Ensemble.load(ws / "models").predict_proba(holdout[["a", "b", "c"]].to_numpy("float64"))
    assert list(served["prediction"]) == list(direct.argmax(1))
    artifacts = list((ws / "mlartifacts").rglob("*"))
    assert not [p for p in artifacts if "input_example" in p.name], "training rows must not be logged"
    assert not [p for p in artifacts if p.suffix in (".pkl", ".pickle")]


def test_dvc_tracks_data_and_models(trained):
    ws, _ = trained
    dag = cli(None, "--help")  # the CLI itself stays importable without the heavy stack
    assert "forget" in dag.stdout or "run" in dag.stdout
    from oblivio import lineage

    hashes = lineage.output_hashes(ws)
    assert {"data/shards", "data/holdout.parquet", "models"} <= hashes.keys()
    remote_objects = [p for p in (ws / ".oblivio" / "dvc-remote").rglob("*") if p.is_file()]
    assert len(remote_objects) >= 5  # partitions, holdout, manifest, shard weights pushed


def test_second_run_reuses_every_checkpoint(trained):
    ws, first = trained
    second = cli_json(ws, "run")
    assert second["slices_trained"] == 0 and second["slices_reused"] == 3 * 2
    assert second["dataset_version"] == first["dataset_version"]
    assert second["model_version"] == first["model_version"] + 1
    assert second["gates"]["no_regression"]["passed"] is True
    assert [s["weights_sha256"] for s in second["shards"]] == [s["weights_sha256"] for s in first["shards"]]


def test_baseline_accuracy_is_the_baseline_checkpoint_on_the_holdout(make_csv_workspace):
    """The run's baseline figure (off in the other tests' workspaces, for time), recomputed from
    the baseline's final checkpoint and the holdout file."""
    import pyarrow.parquet as pq
    import torch

    from oblivio import shard_training
    from oblivio.training.sisa import CheckpointStore, chain_keys, load_final_model, slice_commitments
    from oblivio.workspace import WorkspaceDir

    ws = make_csv_workspace()
    set_params(ws, {"report": {"baseline": True}})
    first = cli_json(ws, "run")
    w = WorkspaceDir(ws)
    rows = pd.concat([pq.read_table(p, columns=["_slice", "_record_key"]).to_pandas()
                      for p in sorted(w.shards_dir.glob("shard=*/part.parquet"))]).sort_values(["_slice", "_record_key"])
    recipe = shard_training.recipe_for(w)
    final = chain_keys(recipe.digest(), shard_training.BASELINE,
                       slice_commitments(tuple(rows["_record_key"]), rows["_slice"].to_numpy(), w.params.sisa.slices))[-1]
    model = load_final_model(recipe, w.secret, shard_training.BASELINE, CheckpointStore(w.checkpoints_dir), final)
    holdout = pq.read_table(w.holdout_path).to_pandas()
    cols = w.params.data.columns
    y = holdout[cols.label].map({v: i for i, v in enumerate(w.params.data.label_domain)}).to_numpy()
    with torch.no_grad():
        pred = model(torch.from_numpy(recipe.encoding.transform(holdout))).argmax(1).numpy()
    assert first["metrics"]["baseline_accuracy"] == float((pred == y).mean())


def test_a_primed_audit_scores_nothing_again_and_reports_the_same(trained, tmp_path, monkeypatch):
    """`serve` primes the audit cache when it starts (`prime_audit`): its first audit must then
    run no model again and report exactly what an audit from nothing reports."""
    import shutil

    from oblivio import evaluation
    from oblivio.ensemble import AuditCache, Ensemble

    ws = tmp_path / "copy"
    shutil.copytree(trained[0], ws)  # evaluate rewrites reports/: the module's workspace stays as the run left it
    monkeypatch.setattr(evaluation, "AUDIT_CACHE", AuditCache())
    cold = evaluation.evaluate(ws)
    monkeypatch.setattr(evaluation, "AUDIT_CACHE", AuditCache())
    evaluation.prime_audit(ws)
    scored, original = [], Ensemble.model_logits
    monkeypatch.setattr(Ensemble, "model_logits", lambda self, k, x: scored.append(k) or original(self, k, x))
    assert evaluation.evaluate(ws) == cold
    assert scored == []


def test_deferred_intervals_give_the_report_of_one_audit_and_the_same_gates(trained, tmp_path):
    """A deletion's audit leaves the intervals no gate reads for after promotion: the metrics
    must be those of a full audit, and the report, once completed (in the workspace and in the
    run's artifacts), exactly the full audit's."""
    import json
    import shutil

    from oblivio import evaluation
    from oblivio.audit.membership import AuditChanged

    ws = tmp_path / "copy"
    shutil.copytree(trained[0], ws)
    full_metrics = evaluation.evaluate(ws)
    full_report = (ws / "reports" / "mia.json").read_text()
    assert evaluation.evaluate(ws, defer_intervals=True) == full_metrics
    pending = json.loads((ws / "reports" / "mia.json").read_text())
    assert pending["intervals_pending"] is True and pending["ensemble"]["intervals"] == {}
    assert all(s["intervals"] == {} for s in pending["shards"] + pending["rmia_shards"])

    c, cfg = mlflow_client(ws)
    run_id = c.get_model_version(cfg.model_name, str(trained[1]["model_version"])).run_id
    assert evaluation.attach_intervals(ws, run_id) is True
    assert (ws / "reports" / "mia.json").read_text() == full_report
    assert Path(c.download_artifacts(run_id, "mia.json", str(tmp_path))).read_text() == full_report
    assert evaluation.attach_intervals(ws, run_id) is False, "nothing was pending any more"

    evaluation.evaluate(ws, defer_intervals=True)
    altered = json.loads((ws / "reports" / "mia.json").read_text())
    altered["shards"][0]["auc"] += 0.01  # as if a model had changed since the audit
    (ws / "reports" / "mia.json").write_text(json.dumps(altered))
    with pytest.raises(AuditChanged):
        evaluation.attach_intervals(ws, run_id)


def test_bad_data_changes_nothing(trained):
    """A failing validation leaves the data version, models and registry as they were."""
    ws, _ = trained
    lock_before = (ws / "dvc.lock").read_text()
    manifest_before = (ws / "models" / "manifest.json").read_text()
    c, cfg = mlflow_client(ws)
    versions_before = len(c.search_model_versions(f"name='{cfg.model_name}'"))
    table = pd.read_csv(ws / "table.csv")
    good = table.copy()
    table.loc[1, "rid"] = table.loc[0, "rid"]
    table.loc[2, "y"] = 7
    table.to_csv(ws / "table.csv", index=False)
    try:
        proc = cli(ws, "run", check=False)
    finally:
        good.to_csv(ws / "table.csv", index=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "expect_column_values_to_be_unique on rid" in proc.stderr
    assert "expect_column_values_to_be_in_set on y" in proc.stderr
    assert (ws / "dvc.lock").read_text() == lock_before
    assert (ws / "models" / "manifest.json").read_text() == manifest_before
    assert len(c.search_model_versions(f"name='{cfg.model_name}'")) == versions_before


def test_corrupt_parquet_is_one_clear_error(tmp_path):
    ws = csv_workspace(tmp_path)
    (ws / "table.parquet").write_bytes(b"PAR1 this is not a parquet file")
    from helpers import set_params

    set_params(ws, {"data": {"source": "table.parquet"}})
    proc = cli(ws, "run", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "could not be read" in proc.stderr and "table.parquet" in proc.stderr
    assert not (ws / "data" / "shards").exists() and not (ws / "dvc.lock").exists()


@pytest.mark.parametrize("edit, message", [
    ({"train": {"epochz": 3}}, "train.epochz is not a known key"),
    ({"sisa": {"shards": "eight"}}, "sisa.shards must be an integer"),
])
def test_bad_params_fail_before_anything_starts(tmp_path, edit, message):
    ws = csv_workspace(tmp_path)
    from helpers import set_params

    set_params(ws, edit)
    proc = cli(ws, "run", check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (ws / "mlflow.db").exists() and not (ws / "data" / "shards").exists()


def test_outside_a_workspace(tmp_path):
    proc = cli(tmp_path, "run", check=False)
    assert proc.returncode == 2 and "not inside an Oblivio workspace" in proc.stderr and "oblivio init" in proc.stderr
