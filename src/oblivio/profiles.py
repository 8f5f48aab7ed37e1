"""Configuration profiles: `embedded` (everything inside the workspace, the default) and
`production` (a tracking server on a database with artifacts in S3, a DVC remote on S3,
a Prefect server, a Dask cluster), written in one go by `oblivio init --profile production`.

Addresses go into the workspace's files (mlflow.yaml, .dvc/config, backends.yaml,
params.yaml's executor); credentials never do: they come from the environment
(AWS_*, PGPASSWORD) or the tools' own configuration (~/.aws, ~/.pgpass).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from oblivio.config import _read_yaml
from oblivio.errors import ConfigError

PROFILES = ("embedded", "production")
BACKENDS_FILE = "backends.yaml"
DVC_REMOTE_NAME = "store"


@dataclass(frozen=True)
class Production:
    mlflow_uri: str
    mlflow_database: str
    dvc_remote: str
    s3_endpoint: str = ""
    prefect_api: str = ""
    dask_address: str = ""

    def problems(self) -> list[str]:
        found = []

        def need(value: str, flag: str, schemes: tuple[str, ...], example: str) -> None:
            if not value:
                found.append(f"{flag} is required with --profile production (e.g. {example})")
                return
            parts = urlsplit(value)
            if not value.startswith(schemes):
                found.append(f"{flag} must start with {' or '.join(schemes)}, got {value!r}")
            elif parts.password:
                found.append(f"{flag} holds a password: credentials come from the environment "
                             "(PGPASSWORD, AWS_*) or ~/.pgpass, never from the workspace's files")

        need(self.mlflow_uri, "--mlflow-uri", ("http://", "https://"), "http://mlflow.internal:5000")
        need(self.mlflow_database, "--mlflow-database", ("postgresql", "mysql"),
             "postgresql+psycopg2://mlflow@db.internal/mlflow")
        need(self.dvc_remote, "--dvc-remote", ("s3://",), "s3://bucket/oblivio")
        for value, flag, schemes, example in ((self.s3_endpoint, "--s3-endpoint", ("http://", "https://"), ""),
                                              (self.prefect_api, "--prefect-api", ("http://", "https://"), ""),
                                              (self.dask_address, "--dask-address", ("tcp://", "tls://"), "")):
            if value:
                need(value, flag, schemes, example)
        return found


def check(profile: str, production: Production) -> None:
    """Refuse a bad profile before anything is created."""
    if profile not in PROFILES:
        raise ConfigError(f"--profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if profile == "production" and (found := production.problems()):
        raise ConfigError("init --profile production: " + "; ".join(found) + ". Nothing was created.")


def apply_production(root: Path, production: Production) -> None:
    """Point a freshly scaffolded workspace at the production backends."""
    from oblivio.workspace import set_dvc_remote

    mlflow_yaml = root / "mlflow.yaml"
    text = mlflow_yaml.read_text()
    text = _set_key(text, "tracking_uri", production.mlflow_uri)
    text = _set_key(text, "artifact_location", '""', comment="the server's --artifacts-destination")
    name = f"oblivio-{root.name}"  # one server serves many workspaces: each its own experiment and model
    text = _set_key(text, "experiment", name)
    text = _set_key(text, "model_name", name)
    text += f"gc_backend_store_uri: {production.mlflow_database}   # the server's database, for the purge's mlflow gc\n"
    mlflow_yaml.write_text(text)
    set_dvc_remote(root, DVC_REMOTE_NAME, production.dvc_remote,
                   **({"endpointurl": production.s3_endpoint} if production.s3_endpoint else {}))
    lines = ["# Where this workspace's services run (`oblivio init --profile production`); `oblivio doctor` checks them.",
             "# Credentials are not kept here: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, PGPASSWORD (or ~/.aws, ~/.pgpass).",
             "profile: production"]
    if production.prefect_api:
        lines.append(f"prefect_api: {production.prefect_api}   # PREFECT_API_URL overrides it")
    if production.s3_endpoint:
        lines.append(f"s3_endpoint: {production.s3_endpoint}")
    (root / BACKENDS_FILE).write_text("\n".join(lines) + "\n")
    if production.dask_address:
        params = root / "params.yaml"
        text = params.read_text()
        text = re.sub(r"(?m)^(\s+kind:) process(\s)", r"\1 dask\2", text, count=1)
        text = re.sub(r'(?m)^(\s+dask_address:) ""', rf"\1 {production.dask_address}", text, count=1)
        params.write_text(text)


def _set_key(text: str, key: str, value: str, comment: str | None = None) -> str:
    line = f"{key}: {value}" + (f"   # {comment}" if comment else "")
    new, n = re.subn(rf"(?m)^{key}:.*$", line, text, count=1)
    return new if n else text + line + "\n"


@dataclass(frozen=True)
class Backends:
    profile: str = "embedded"
    prefect_api: str = ""
    s3_endpoint: str = ""


def load_backends(root: Path) -> Backends:
    path = root / BACKENDS_FILE
    if not path.exists():
        return Backends()
    raw = _read_yaml(path) or {}
    known = {"profile", "prefect_api", "s3_endpoint"}
    if not isinstance(raw, dict) or set(raw) - known or raw.get("profile", "embedded") not in PROFILES:
        raise ConfigError(f"{path} must hold only {', '.join(sorted(known))} (profile one of "
                          f"{', '.join(PROFILES)}); fix it or run `oblivio init --profile production` again.")
    return Backends(**{k: str(v) for k, v in raw.items()})
