"""The only module that imports MLflow (lazily: it costs ~2 s).

One parent run per pipeline run, a child run per shard, the ensemble logged as a pyfunc
model from code and registered; aliases `candidate` and `champion` carry the promotion
decision, tags carry the machine-readable audit, the description the human one.
No training row is logged anywhere (no input examples); datasets are logged by their
DVC hash and schema only.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

from oblivio.config import MlflowConfig

PYFUNC_FILE = Path(__file__).parent / "serving" / "pyfunc_model.py"


def _mlflow(cfg: MlflowConfig):
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.registry_uri)
    return mlflow


def client(cfg: MlflowConfig):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.registry_uri)


def ensure_experiment(cfg: MlflowConfig) -> str:
    """Create the experiment (with its artifact location) once, before any parallel writer.

    MLflow stores that location as an absolute URI. A copied or moved workspace still
    points at the original's artifacts, where its purge would delete them: refused here.
    """
    mlflow = _mlflow(cfg)
    exp = mlflow.get_experiment_by_name(cfg.experiment)
    if not cfg.artifact_location:  # the tracking server chooses (and owns) the location
        return exp.experiment_id if exp else mlflow.create_experiment(cfg.experiment)
    wanted = Path(cfg.artifact_location).as_uri() if "://" not in cfg.artifact_location else cfg.artifact_location
    if exp is None:
        return mlflow.create_experiment(cfg.experiment, artifact_location=wanted)
    if exp.artifact_location != wanted:
        from oblivio.errors import WorkspaceError

        raise WorkspaceError(
            f"MLflow experiment '{cfg.experiment}' keeps its artifacts in {exp.artifact_location}, but mlflow.yaml "
            f"puts them in {wanted}. Was this workspace copied or moved? It would write to (and purge) the "
            "original's artifacts. Create a new workspace with `oblivio init DIR` and run it there instead.")
    return exp.experiment_id


def _dataset(name: str, digest: str, uri: str, columns: list[str], types: dict[str, str] | None = None):
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.types import ColSpec, Schema

    schema = Schema([ColSpec((types or {}).get(c, "double"), c) for c in columns])
    return MetaDataset(source=resolve_dataset_source(uri), name=name, digest=digest[:36], schema=schema)


def model_signature(features: list[str], labels: list, types: dict[str, str] | None = None):
    """Inputs: the raw feature columns with their own types (`types`, from the encoder: strings as
    strings; missing values allowed); outputs: the class name and one probability per class."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = Schema([ColSpec("string" if isinstance(labels[0], str) else "long", "prediction"),
                      *[ColSpec("double", f"proba_{lab}") for lab in labels]])
    types = types or {}
    return ModelSignature(inputs=Schema([ColSpec(types.get(f, "double"), f, required=False) for f in features]),
                          outputs=outputs)


def _requirements() -> list[str]:
    import mlflow
    import numpy
    import pandas
    import torch

    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={numpy.__version__}", f"pandas=={pandas.__version__}"]


def numeric_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Flatten nested metric dicts to MLflow's `a.b` keys, keeping numbers only."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(numeric_metrics(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def log_pipeline_run(cfg: MlflowConfig, *, run_name: str, params: dict[str, Any], tags: dict[str, str],
                     dataset: dict, shards: list[dict], metrics: dict, models_dir: Path,
                     features: list[str], labels: list, feature_types: dict[str, str] | None = None,
                     artifacts: dict[str, Path] | None = None, version_tags: dict[str, str] | None = None) -> dict:
    """Log the parent run, per-shard child runs and the registered ensemble; returns ids.

    `version_tags` are the new model version's from its first moment (one store call, where
    setting them one by one afterwards takes one each)."""
    import oblivio

    mlflow = _mlflow(cfg)
    experiment_id = ensure_experiment(cfg)
    with warnings.catch_warnings(), mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as parent:
        # we log no input example on purpose (training rows are personal data), and our
        # dataset source is a plain local path: MLflow's advice on both is noise here
        warnings.filterwarnings("ignore", message=".*input example.*")
        warnings.filterwarnings("ignore", message=".*dataset source can be interpreted.*")
        mlflow.log_params({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in params.items()})
        mlflow.set_tags(tags)
        mlflow.log_input(_dataset("train-shards", dataset["version"], dataset["uri"], features, feature_types),
                         context="training")
        mlflow.log_input(_dataset("holdout", dataset["holdout_version"], dataset["holdout_uri"], features,
                                  feature_types),
                         context="evaluation")
        for path in (artifacts or {}).values():
            mlflow.log_artifact(str(path))
        shard_client = client(cfg)
        for shard in shards:
            _log_shard_run(shard_client, experiment_id, parent.info.run_id, shard, metrics)
        with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints "Created version ..." itself
            info = mlflow.pyfunc.log_model(
                name="ensemble", python_model=str(PYFUNC_FILE), artifacts={"models": str(models_dir)},
                code_paths=[str(Path(oblivio.__file__).parent)], pip_requirements=_requirements(),
                signature=model_signature(features, labels, feature_types),
            )
            # what `log_model(registered_model_name=...)` does, with the version's tags
            version = mlflow.register_model(info.model_uri, cfg.model_name, await_registration_for=0,
                                            tags=version_tags)
        # logged after the model, linked to it in one batch: logged before, `log_model` would
        # read back every metric's history to link it (a query per metric, about 0.5 s)
        mlflow.log_metrics(numeric_metrics(metrics), model_id=info.model_id)
    return {"run_id": parent.info.run_id, "model_version": int(version.version), "model_uri": info.model_uri}


def _log_shard_run(c, experiment_id: str, parent_run_id: str, shard: dict, metrics: dict) -> None:
    """A finished child run for one shard, in three store calls (the fluent API takes six)."""
    from mlflow.entities import Metric

    run = c.create_run(experiment_id, run_name=shard["shard"], tags={
        "mlflow.parentRunId": parent_run_id, "oblivio.weights_sha256": shard["weights_sha256"],
        "oblivio.final_checkpoint": shard["chain"][-1]})
    values = {"n_records": shard["n_records"], "slices_trained": len(shard["slices_trained"]),
              "slices_reused": len(shard["slices_reused"]), "train_seconds": shard["seconds"],
              **({"accuracy": metrics["shard_accuracy"][shard["index"]]} if "shard_accuracy" in metrics else {})}
    now = run.info.start_time
    c.log_batch(run.info.run_id, metrics=[Metric(key, float(v), now, 0) for key, v in values.items()])
    c.set_terminated(run.info.run_id)


def logged_model_id(mv) -> str | None:
    """The logged model behind a version (its files live there): `model_id`, which a tracking
    server's REST answer leaves empty, else its `models:/m-...` source."""
    if getattr(mv, "model_id", None):
        return mv.model_id
    source = mv.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def registered_for(cfg: MlflowConfig, tags: dict[str, str]) -> dict | None:
    """The version an earlier attempt registered from a run with exactly these data, models and
    requests tags (a retry after a failure past registration), or None."""
    c = client(cfg)
    keys = ("oblivio.dataset_version", "oblivio.models_version", "oblivio.requests")
    for mv in c.search_model_versions(f"name='{cfg.model_name}'"):
        run_tags = c.get_run(mv.run_id).data.tags if mv.run_id else {}
        if all(run_tags.get(k) == tags.get(k) for k in keys):
            return {"run_id": mv.run_id, "model_version": int(mv.version), "model_uri": mv.source}
    return None


def version_tags(cfg: MlflowConfig, version: int, tags: dict[str, str], description: str | None = None) -> None:
    c = client(cfg)
    for key, value in tags.items():
        c.set_model_version_tag(cfg.model_name, version, key, str(value))
    if description is not None:
        c.update_model_version(cfg.model_name, version, description=description)


def alias_version(cfg: MlflowConfig, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client(cfg).get_model_version_by_alias(cfg.model_name, alias).version)
    except MlflowException:
        return None


def set_alias(cfg: MlflowConfig, alias: str, version: int) -> None:
    client(cfg).set_registered_model_alias(cfg.model_name, alias, version)


def version_info(cfg: MlflowConfig, version: int) -> dict:
    """A model version's tags, description and aliases (what a reviewer sees)."""
    mv = client(cfg).get_model_version(cfg.model_name, version)
    return {"version": int(mv.version), "tags": dict(mv.tags), "description": mv.description or "",
            "aliases": list(mv.aliases), "run_id": mv.run_id, "source": mv.source}


def metrics_of(cfg: MlflowConfig, version: int) -> dict:
    """The audit summary stored on a version (tag `oblivio.metrics`)."""
    tags = version_info(cfg, version)["tags"]
    return json.loads(tags.get("oblivio.metrics", "{}"))


def attach_files(cfg: MlflowConfig, run_id: str, paths: list[str], artifact_path: str | None = None) -> None:
    """Add files (certificates, audit reports) to an existing run's artifacts."""
    c = client(cfg)
    for path in paths:
        c.log_artifact(run_id, path, artifact_path)
