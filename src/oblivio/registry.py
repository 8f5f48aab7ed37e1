"""Register a trained ensemble and decide its aliases.

`register` logs the run and the model version with its audit (tags for machines, a
markdown description for people); `promote` moves `candidate` to it and `champion` only
when every gate passed and no approval is pending. A blocked version says why in its
tags, so a reviewer in the MLflow UI needs to run nothing.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from oblivio import tracking
from oblivio.audit.gates import AuditContext, GateResult, all_passed, evaluate_gates
from oblivio.config import params_as_flat_dict
from oblivio.data.columns import SUBJECT_KEY
from oblivio.errors import OblivioError
from oblivio.faults import crash_point
from oblivio.report import render_version_report
from oblivio.step_results import Promotion, Registered, RunRecord
from oblivio.workspace import WorkspaceDir


def git_commit(root: Path) -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "uncommitted"


def dataset_counts(ws: WorkspaceDir) -> dict[str, int]:
    """Training records and subjects of the current data version (keys column only)."""
    import pyarrow.parquet as pq

    keys = [pq.read_table(p, columns=[SUBJECT_KEY]).column(0) for p in ws.shards_dir.glob("shard=*/part.parquet")]
    subjects = {k for column in keys for k in column.to_pylist()}
    return {"n_records": sum(len(c) for c in keys), "n_subjects": len(subjects)}


def champion_metrics(ws: WorkspaceDir) -> tuple[int | None, dict | None]:
    version = tracking.alias_version(ws.mlflow, ws.mlflow.champion_alias)
    return (version, tracking.metrics_of(ws.mlflow, version)) if version else (None, None)


def _raw_types(ws: WorkspaceDir) -> dict[str, str]:
    """Each feature column's raw type as the published recipe's encoder reads it (the model's signature)."""
    encoding = json.loads(ws.manifest_path.read_text())["recipe"].get("encoding") or {"columns": []}
    return {c["name"]: c["source_type"] for c in encoding["columns"]}


def register(root: Path, run: RunRecord) -> Registered:
    """Audit against the gates, log to MLflow, register the version; returns its identity and verdicts."""
    ws = WorkspaceDir(root)
    cfg = ws.mlflow
    champion_version, champion = champion_metrics(ws)
    gates = evaluate_gates(AuditContext(metrics=run.metrics, champion=champion, gates=ws.params.gates))
    hashes = run.data
    dataset = {
        "version": hashes.get("data/shards", ""), "uri": ws.shards_dir.as_uri(),
        "holdout_version": hashes.get("data/holdout.parquet", ""), "holdout_uri": ws.holdout_path.as_uri(),
    }
    tags = {"oblivio.trigger": run.trigger, "oblivio.git_commit": git_commit(ws.root),
            "oblivio.dataset_version": dataset["version"], "oblivio.models_version": hashes.get("models", ""),
            **({"oblivio.requests": ",".join(sorted(run.requests))} if run.requests else {})}
    verdicts = {name: g.to_json() for name, g in gates.items()}
    audit_tags = {
        "oblivio.metrics": json.dumps(run.metrics, sort_keys=True),
        "oblivio.gates": json.dumps(verdicts, sort_keys=True),
        "oblivio.dataset_version": dataset["version"],
        "oblivio.gates_passed": str(all_passed(gates)).lower(),
        **{f"gate.{name}": "passed" if g.passed else "FAILED" for name, g in gates.items()},
    }
    # a retried deletion batch whose version was registered before a failure: that version, not a second one
    earlier = run.requests and tracking.registered_for(cfg, tags)
    ids = earlier or tracking.log_pipeline_run(
        cfg, run_name=run.run_name, params=params_as_flat_dict(ws.params), tags=tags,
        dataset=dataset, shards=run.shards, metrics=run.metrics, models_dir=ws.models_dir,
        features=list(ws.params.data.columns.features), labels=list(ws.params.data.label_domain),
        feature_types=_raw_types(ws),
        artifacts={name: ws.reports_dir / name for name in ("metrics.json", "mia.json", "mia_roc.svg")
                   if (ws.reports_dir / name).exists()},
        version_tags=audit_tags,
    )
    summary = Registered(
        model_version=ids["model_version"], run_id=ids["run_id"], dataset_version=dataset["version"],
        **dataset_counts(ws),
        n_shards=ws.params.sisa.shards, n_slices=ws.params.sisa.slices, metrics=run.metrics, gates=verdicts,
        champion_before=champion_version, champion_metrics=champion,
        requests=list(run.requests),
    )
    # the description names the version, known only now; an earlier attempt's version gets the tags as well
    tracking.version_tags(cfg, ids["model_version"], audit_tags if earlier else {},
                          description=render_version_report(summary.to_dict()))
    crash_point("registry:registered")
    return summary


def promote(root: Path, registered: Registered) -> Promotion:
    """Move `candidate` to the new version; `champion` too when it earned it."""
    ws = WorkspaceDir(root)
    cfg = ws.mlflow
    version = registered.model_version
    gates = {name: GateResult(**g) for name, g in registered.gates.items()}
    tracking.set_alias(cfg, cfg.candidate_alias, version)
    failed = [name for name, g in gates.items() if not g.passed]
    if failed:
        decision = f"blocked: gate(s) {', '.join(failed)} failed"
    elif ws.params.gates.require_approval:
        decision = "awaiting approval (`oblivio approve VERSION --by NAME`)"
    else:
        tracking.set_alias(cfg, cfg.champion_alias, version)
        decision = "promoted to champion"
    tracking.version_tags(cfg, version, {"oblivio.promotion": decision})
    aliases = tracking.version_info(cfg, version)["aliases"]
    return Promotion(aliases=sorted(aliases), promoted=cfg.champion_alias in aliases, decision=decision)


def version_review(ws: WorkspaceDir, version: int) -> dict:
    """What the registry says about a version, parsed for the terminal and for scripts."""
    info = tracking.version_info(ws.mlflow, version)
    tags = info["tags"]
    gates = json.loads(tags.get("oblivio.gates", "{}"))
    return {"version": info["version"], "aliases": sorted(info["aliases"]), "description": info["description"],
            "data_version": tags.get("oblivio.dataset_version", ""),
            "metrics": json.loads(tags.get("oblivio.metrics", "{}")), "gates": gates,
            "gates_passed": tags.get("oblivio.gates_passed") == "true",
            "failed_gates": [name for name, g in gates.items() if not g["passed"]],
            "promotion": tags.get("oblivio.promotion", ""), "approved_by": tags.get("oblivio.approved_by")}


def review(root: Path, *, version: int | None = None, alias: str | None = None) -> dict:
    """A version (default: the candidate) beside the current champion."""
    ws = WorkspaceDir(root)
    cfg = ws.mlflow
    chosen = version or tracking.alias_version(cfg, alias or cfg.candidate_alias)
    if chosen is None:
        raise OblivioError(f"No model version to review: alias {alias or cfg.candidate_alias!r} is not set in "
                           f"{cfg.model_name!r}. Run `oblivio run` first, or name a VERSION.")
    candidate = _existing_version(ws, chosen)
    champion_version = tracking.alias_version(cfg, cfg.champion_alias)
    champion = version_review(ws, champion_version) if champion_version else None
    return {"model_name": cfg.model_name, "candidate": candidate, "champion": champion}


def _existing_version(ws: WorkspaceDir, version: int) -> dict:
    from mlflow.exceptions import MlflowException

    try:
        return version_review(ws, version)
    except MlflowException:
        raise OblivioError(f"{ws.mlflow.model_name!r} has no version {version} (it may have been purged after "
                           "an erasure; `oblivio review` with no argument shows the candidate).") from None


def approve(root: Path, version: int, *, by: str) -> dict:
    """A person's approval: `champion` for a version that passed every gate on current data."""
    ws = WorkspaceDir(root)
    cfg = ws.mlflow
    v = _existing_version(ws, version)
    if not v["gates_passed"]:
        raise OblivioError(f"v{version} failed gate(s) {', '.join(v['failed_gates'])}: it cannot be approved. "
                           "Fix the cause and run the pipeline again.")
    from oblivio import lineage

    if v["data_version"] != lineage.dataset_version(ws.root):
        raise OblivioError(f"v{version} was trained on data version {v['data_version'][:12]}, which is no longer "
                           "current (records were erased or added since): approve a version of the current data.")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tracking.set_alias(cfg, cfg.champion_alias, version)
    tracking.version_tags(cfg, version, {"oblivio.approved_by": by, "oblivio.approved_at": when,
                                         "oblivio.promotion": f"promoted to champion, approved by {by}"})
    return {"model_version": version, "aliases": sorted(tracking.version_info(cfg, version)["aliases"]),
            "approved_by": by, "approved_at": when}
