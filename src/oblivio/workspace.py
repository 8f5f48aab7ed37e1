"""Where everything of one workspace lives, and how a new one is made.

A workspace is a directory with `params.yaml`, `mlflow.yaml`, `dvc.yaml` and a DVC
repository. All state (data, checkpoints, ledger, MLflow store, Prefect home) lives
inside it, so erasing a person has one place to search, and purging one place to clean.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

from oblivio.config import MlflowConfig, Params, load_mlflow_config, load_params
from oblivio.errors import WorkspaceError
from oblivio.keys import load_or_create_secret, load_or_create_token

MARKERS = ("params.yaml", "mlflow.yaml", "dvc.yaml")
TEMPLATE_FILES = {"params.yaml": "params.yaml", "mlflow.yaml": "mlflow.yaml", "dvc.yaml.template": "dvc.yaml", "gitignore": ".gitignore"}
DVC_REMOTE = ".oblivio/dvc-remote"


@dataclass(frozen=True)
class WorkspaceDir:
    root: Path

    # --- locations -------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.root / ".oblivio"

    @property
    def secret_path(self) -> Path:
        return self.state_dir / "secret"

    @property
    def signing_key_path(self) -> Path:
        """The Ed25519 private key that signs deletion certificates (owner-only, never logged)."""
        return self.state_dir / "signing-key.pem"

    @property
    def public_key_path(self) -> Path:
        """The signing key's public half, for `oblivio verify-certificate --public-key`."""
        return self.root / "signing-key.pub"

    @property
    def intake_token_path(self) -> Path:
        """The HTTP intake's bearer token (owner-only); `oblivio serve` creates it if missing."""
        return self.state_dir / "intake-token"

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "ledger.db"

    @property
    def serve_state_path(self) -> Path:
        """Written by a running `oblivio serve`: where to announce new requests and hand runs over."""
        return self.state_dir / "serve.json"

    @property
    def runs_dir(self) -> Path:
        """Outcomes of the runs a running `oblivio serve` executed for a waiting `oblivio run`."""
        return self.state_dir / "runs"

    @property
    def dp_calibration_path(self) -> Path:
        """The pinned DP noise multiplier (see dp_calibration.calibrate_dp)."""
        return self.state_dir / "dp-calibration.json"

    @property
    def encoding_path(self) -> Path:
        """The feature encoding pinned at the first ingest (see encoding_pin.pin_encoding)."""
        return self.state_dir / "encoding.json"

    @property
    def corrections_dir(self) -> Path:
        """Flagged rows of corrective requests and their SSD choices (standing corrections)."""
        return self.state_dir / "corrections"

    @property
    def quarantine_dir(self) -> Path:
        """Rows being erased, held only until the forget-set audit of the retrained model."""
        return self.state_dir / "quarantine"

    @property
    def prefect_home(self) -> Path:
        return self.state_dir / "prefect"

    @property
    def dvc_remote(self) -> Path:
        return self.root / DVC_REMOTE

    @property
    def shards_dir(self) -> Path:
        """Training data, one Parquet partition per shard (`shard=K/part.parquet`)."""
        return self.root / "data" / "shards"

    @property
    def holdout_path(self) -> Path:
        return self.root / "data" / "holdout.parquet"

    @property
    def checkpoints_dir(self) -> Path:
        """Content-addressed slice checkpoints: the SISA memo table."""
        return self.root / "checkpoints"

    @property
    def models_dir(self) -> Path:
        """Final shard weights and their manifests (a DVC output)."""
        return self.root / "models"

    @property
    def manifest_path(self) -> Path:
        """The published ensemble's manifest: recipe, shards, commitments, weight hashes."""
        return self.models_dir / "manifest.json"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def certificates_dir(self) -> Path:
        return self.root / "certificates"

    # --- configuration ---------------------------------------------------
    @cached_property
    def params(self) -> Params:
        return load_params(self.root / "params.yaml")

    @cached_property
    def mlflow(self) -> MlflowConfig:
        return load_mlflow_config(self.root / "mlflow.yaml", self.root)

    @cached_property
    def backends(self):
        """backends.yaml: the profile and the services not configured elsewhere (see oblivio.profiles)."""
        from oblivio.profiles import load_backends

        return load_backends(self.root)

    @cached_property
    def secret(self) -> bytes:
        return load_or_create_secret(self.secret_path)

    @cached_property
    def signing_key(self):
        from oblivio.signing import load_or_create_signing_key

        return load_or_create_signing_key(self.signing_key_path, self.public_key_path)

    @property
    def intake_token(self) -> str:
        return load_or_create_token(self.intake_token_path)

    # --- discovery -------------------------------------------------------
    @classmethod
    def find(cls, start: Path | None = None) -> "WorkspaceDir":
        """The workspace containing `start` (default: the current directory)."""
        start = (start or Path.cwd()).resolve()
        for candidate in (start, *start.parents):
            if all((candidate / m).is_file() for m in MARKERS) and (candidate / ".dvc").is_dir():
                return cls(candidate)
        raise WorkspaceError(
            f"{start} is not inside an Oblivio workspace (no directory above it holds "
            f"{', '.join(MARKERS)} and .dvc/). Run `oblivio init DIR` to create one, or cd into one."
        )

    @contextmanager
    def exclusive(self, what: str) -> Iterator[None]:
        """One data-changing command at a time (run, process); a second one waits its turn."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "busy.lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting: another Oblivio command is changing this workspace ({what} starts after it)",
                      file=sys.stderr, flush=True)
                fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def environment(self) -> dict[str, str]:
        """Variables that keep Prefect, MLflow, DVC and GX local, quiet and offline, and that
        pin every child process's numerics (see oblivio.numerics)."""
        from oblivio import numerics

        configured = {"PREFECT_API_URL": self.backends.prefect_api} if self.backends.prefect_api and \
            not os.environ.get("PREFECT_API_URL") else {}
        return {
            **configured,
            **numerics.environment(self.params.train.numerics),
            "PREFECT_HOME": str(self.prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
            "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
            # the terminal shows Oblivio's progress and one error message; Prefect's own log
            # lines (tracebacks included) still reach its API and UI
            "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": os.environ.get("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL"),
            "DO_NOT_TRACK": "true",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # a tracking server's run links would break --json
            "GX_ANALYTICS_ENABLED": "false",
            "DVC_NO_ANALYTICS": "true",
        }


def template_text(name: str) -> str:
    return resources.files("oblivio.templates").joinpath(name).read_text()


def init_workspace(target: Path, *, source: str | None = None, params: str | None = None,
                   profile: str = "embedded", production=None) -> WorkspaceDir:
    """Scaffold a workspace: config files, git + DVC repositories, local remote, secret, signing key.

    `params`: the params.yaml text to write instead of the template (`init --from-table`);
    `profile="production"`: pointed at the `production` backends (oblivio.profiles)."""
    from oblivio import profiles

    profiles.check(profile, production)
    target = target.resolve()
    if target.exists() and any((target / m).exists() for m in MARKERS):
        raise WorkspaceError(f"{target} already holds an Oblivio workspace; use it, or choose an empty directory.")
    target.mkdir(parents=True, exist_ok=True)
    for template, dest in TEMPLATE_FILES.items():
        text = template_text(template)
        if template == "params.yaml" and params is not None:
            text = params
        elif template == "params.yaml" and source:
            from oblivio.data.schema_inference import builtin_params

            text = builtin_params(text, source) or text.replace("source: builtin:nlswork", f"source: {source}", 1)
        (target / dest).write_text(text)
    try:
        if not (target / ".git").exists():
            _run(["git", "init", "-q"], target)
        ensure_dvc(target)
        if profile == "production":
            profiles.apply_production(target, production)
    except Exception:
        shutil.rmtree(target / ".dvc", ignore_errors=True)
        for written in (*TEMPLATE_FILES.values(), profiles.BACKENDS_FILE):
            (target / written).unlink(missing_ok=True)
        raise
    ws = WorkspaceDir(target)
    _ = ws.secret, ws.signing_key, ws.intake_token
    return ws


def ensure_dvc(root: Path) -> None:
    """`dvc init` with autostage, no analytics and the workspace-local default remote.

    The settings go into `.dvc/config` in-process (ConfigObj, the parser DVC itself reads it
    with): one `dvc` process instead of four, a few seconds less per `init`."""
    if not (root / ".dvc").is_dir():
        _run(["dvc", "init", "-q"], root)
    set_dvc_remote(root, "local", "../" + DVC_REMOTE)  # DVC keeps a local remote relative to .dvc/


def set_dvc_remote(root: Path, name: str, url: str, **options: str) -> None:
    """Make `name` the workspace's only DVC remote and its default (as `dvc remote add -f -d`
    followed by `dvc remote remove` of the others would), with autostage on and analytics off."""
    from configobj import ConfigObj

    config = ConfigObj(str(root / ".dvc" / "config"), encoding="utf-8", indent_type="    ")
    core = config.setdefault("core", {})
    core.update({"autostage": "true", "analytics": "false", "remote": name})
    for section in [s for s in config if s.startswith("remote ")]:
        del config[section]
    config[f'remote "{name}"'] = {"url": url, **options}
    config.write()


def _run(cmd: list[str], cwd: Path) -> None:
    exe = shutil.which(cmd[0]) or _venv_tool(cmd[0])
    result = subprocess.run([exe, *cmd[1:]], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise WorkspaceError(f"`{' '.join(cmd)}` failed in {cwd}: {result.stderr.strip() or result.stdout.strip()}")


def _venv_tool(name: str) -> str:
    """Tools installed beside the running interpreter (the venv's `dvc`), even if not on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    raise WorkspaceError(f"`{name}` is not installed. Run `make install` (or pip install the project) first.")
