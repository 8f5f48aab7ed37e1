"""A throwaway production stack on loopback: what the production tests and a first try-out run.

PostgreSQL 15 (a cluster under a temporary directory, run as the `postgres` user), an S3
endpoint (moto's standalone server: the stand-in for S3 or MinIO), an `mlflow server` on
PostgreSQL with its artifacts in S3, a Prefect server on PostgreSQL with a process work
pool and a `prefect worker`, and a Dask scheduler with two worker processes. Every
service is a real process started by its own command; `stop` ends each one it started,
whatever state the others are in.

    python -m oblivio.loopback start DIR    # prints the environment to export
    python -m oblivio.loopback stop DIR
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from oblivio.errors import BackendError

PG_BIN = Path(os.environ.get("OBLIVIO_PG_BIN", "/usr/lib/postgresql/15/bin"))
DB_USER, DB_PASSWORD = "oblivio", "oblivio"
ACCESS_KEY = SECRET_KEY = "testing"  # moto accepts any key pair
BUCKETS = ("mlflow", "dvc")
WORK_POOL = "oblivio"
# stopped in this order: clients before the servers they talk to
SERVICES = ("worker", "dask-worker-1", "dask-worker-0", "dask-scheduler", "prefect", "mlflow", "moto")


class StackError(BackendError):
    """A loopback service did not start."""


def postgres_available() -> bool:
    """Whether this machine can run a throwaway cluster (binaries installed, root for `runuser`)."""
    return (PG_BIN / "initdb").exists() and shutil.which("runuser") is not None and os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except OSError:
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class LoopbackStack:
    base: Path
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    venv_bin: Path = Path(sys.executable).parent

    # --- addresses ---------------------------------------------------------
    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow']}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.ports['prefect']}/api"

    @property
    def dask_address(self) -> str:
        return f"tcp://127.0.0.1:{self.ports['dask']}"

    def database_uri(self, name: str, driver: str = "psycopg2", password: bool = True) -> str:
        auth = f"{DB_USER}:{DB_PASSWORD}" if password else DB_USER
        return f"postgresql+{driver}://{auth}@127.0.0.1:{self.ports['pg']}/{name}"

    def init_options(self, *, dvc_prefix: str = "oblivio") -> dict[str, str]:
        """The `oblivio init WS --profile production` options (flag -> value) that point a workspace here."""
        return {"--mlflow-uri": self.mlflow_uri, "--mlflow-database": self.database_uri("mlflow", password=False),
                "--dvc-remote": f"s3://dvc/{dvc_prefix}", "--s3-endpoint": self.s3_endpoint,
                "--prefect-api": self.prefect_api, "--dask-address": self.dask_address}

    def client_environment(self) -> dict[str, str]:
        """What a user of the stack exports: credentials only (addresses live in the workspace's config)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1", "PGPASSWORD": DB_PASSWORD}

    def _server_environment(self) -> dict[str, str]:
        from oblivio import numerics

        env = {**os.environ, **self.client_environment(), **numerics.environment(numerics.requested_mode()),
               "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
               "PREFECT_HOME": str(self.base / "prefect-home"), "PREFECT_API_URL": self.prefect_api,
               "PREFECT_API_DATABASE_CONNECTION_URL": self.database_uri("prefect", driver="asyncpg"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
               "PREFECT_LOGGING_LEVEL": "WARNING"}
        for leaked in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            env.pop(leaked, None)
        return env

    # --- start ---------------------------------------------------------------
    def start(self) -> "LoopbackStack":
        """Start every service; on any failure, stop what was started and raise."""
        if not postgres_available():
            raise StackError(f"PostgreSQL binaries ({PG_BIN}) or root (for runuser) are missing.")
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)  # the postgres user must traverse it
        for name in ("pg", "s3", "mlflow", "prefect", "dask"):
            self.ports.setdefault(name, free_port())
        try:
            self._start_postgres()
            self._start("moto", [self.venv_bin / "moto_server", "-H", "127.0.0.1", "-p", str(self.ports["s3"])])
            self._wait(f"{self.s3_endpoint}/moto-api/", "moto")
            self._create_buckets()
            self._start("mlflow", [self.venv_bin / "mlflow", "server", "--backend-store-uri",
                                   self.database_uri("mlflow"), "--artifacts-destination", "s3://mlflow/mlartifacts",
                                   "--host", "127.0.0.1", "--port", str(self.ports["mlflow"]), "--workers", "1"])
            self._start("prefect", [self.venv_bin / "prefect", "server", "start", "--host", "127.0.0.1",
                                    "--port", str(self.ports["prefect"])])
            self._start("dask-scheduler", [self.venv_bin / "dask", "scheduler", "--host", "127.0.0.1",
                                           "--port", str(self.ports["dask"]), "--no-dashboard"])
            self._wait(f"{self.mlflow_uri}/health", "mlflow")
            self._wait(f"{self.prefect_api}/health", "prefect")
            for i in range(2):  # started with the pinned numerics: distributed imports numpy before any task
                self._start(f"dask-worker-{i}", [self.venv_bin / "dask", "worker", self.dask_address, "--nworkers",
                                                 "1", "--nthreads", "1", "--no-dashboard", "--name", f"w{i}"])
            self._run([self.venv_bin / "prefect", "work-pool", "create", WORK_POOL, "--type", "process",
                       "--overwrite"])
            self._start("worker", [self.venv_bin / "prefect", "worker", "start", "--pool", WORK_POOL])
            self._wait_dask_workers(2)
        except BaseException:
            self.stop()
            raise
        self.save()
        return self

    def _start_postgres(self) -> None:
        pg, sock = self.base / "pg", self.base / "pgsock"
        for d in (pg, sock):
            subprocess.run(["install", "-d", "-o", "postgres", "-g", "postgres", str(d)], check=True)
        self._run(["runuser", "-u", "postgres", "--", PG_BIN / "initdb", "-D", pg, "-U", "postgres", "-A", "trust",
                   "-E", "UTF8", "--locale=C.UTF-8"])
        self._run(["runuser", "-u", "postgres", "--", PG_BIN / "pg_ctl", "-D", pg, "-l", pg / "server.log", "-w",
                   "-o", f"-p {self.ports['pg']} -k {sock} -c listen_addresses=127.0.0.1", "start"])
        self.pids["postgres"] = -1  # stopped with pg_ctl
        self.psql("postgres", f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'",
                  f"CREATE DATABASE mlflow OWNER {DB_USER}", f"CREATE DATABASE prefect OWNER {DB_USER}")

    def psql(self, database: str, *statements: str) -> None:
        args = ["psql", "-h", "127.0.0.1", "-p", str(self.ports["pg"]), "-U", "postgres", "-d", database,
                "-v", "ON_ERROR_STOP=1", "-q"]
        for s in statements:
            args += ["-c", s]
        self._run(args)

    def pg_dump(self, database: str) -> str:
        """The whole database as SQL text (what the purge test scans)."""
        return subprocess.run(["pg_dump", "-h", "127.0.0.1", "-p", str(self.ports["pg"]), "-U", "postgres",
                               database], capture_output=True, text=True, check=True).stdout

    def _create_buckets(self) -> None:
        for bucket in BUCKETS:
            self.s3().create_bucket(Bucket=bucket)

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def _start(self, name: str, cmd: list) -> None:
        log = open(self.base / f"{name}.log", "ab")
        proc = subprocess.Popen([str(c) for c in cmd], env=self._server_environment(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=self.base)
        log.close()
        self.pids[name] = proc.pid
        self._procs = {**getattr(self, "_procs", {}), name: proc}

    def _run(self, cmd: list) -> None:
        result = subprocess.run([str(c) for c in cmd], env=self._server_environment(), capture_output=True,
                                text=True, cwd=self.base)
        if result.returncode != 0:
            raise StackError(f"`{' '.join(map(str, cmd))}` failed: {(result.stderr or result.stdout)[-2000:]}")

    def _wait(self, url: str, name: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not _answers(url):
            proc = getattr(self, "_procs", {}).get(name)
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                log = (self.base / f"{name}.log").read_text(errors="replace")[-3000:]
                raise StackError(f"{name} did not answer at {url}:\n{log}")
            time.sleep(0.2)

    def _wait_dask_workers(self, n: int, timeout: float = 60) -> None:
        from distributed import Client

        with Client(self.dask_address, timeout=timeout) as client:
            client.wait_for_workers(n, timeout=timeout)

    # --- one service at a time (the fault tests) ------------------------------
    def kill(self, name: str) -> None:
        """SIGKILL one service, as a crash would."""
        os.killpg(self.pids[name], signal.SIGKILL)
        _wait_gone(self.pids[name], 10)

    def restart_mlflow(self) -> None:
        self._start("mlflow", [self.venv_bin / "mlflow", "server", "--backend-store-uri",
                               self.database_uri("mlflow"), "--artifacts-destination", "s3://mlflow/mlartifacts",
                               "--host", "127.0.0.1", "--port", str(self.ports["mlflow"]), "--workers", "1"])
        self._wait(f"{self.mlflow_uri}/health", "mlflow")
        self.save()

    # --- stop ---------------------------------------------------------------
    def stop(self) -> None:
        """Stop every service this stack started (each one even if another fails to stop)."""
        signalled = []
        for name in SERVICES:  # all at once: each takes seconds to shut down
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                # the worker ignores SIGTERM for a minute; SIGINT twice, a moment apart, stops it
                os.killpg(pid, signal.SIGINT if name == "worker" else signal.SIGTERM)
                signalled.append((name, pid))
            except ProcessLookupError:
                pass
        if any(name == "worker" for name, _ in signalled):
            time.sleep(1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(dict(signalled)["worker"], signal.SIGINT)
        deadline = time.monotonic() + 10
        for _, pid in signalled:
            if not _wait_gone(pid, max(0.0, deadline - time.monotonic())):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                _wait_gone(pid, 5)
        for proc in getattr(self, "_procs", {}).values():
            try:
                proc.wait(timeout=1)  # reap
            except subprocess.TimeoutExpired:
                pass
        if self.pids.pop("postgres", None) is not None or (self.base / "pg" / "postmaster.pid").exists():
            subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.base / "pg"),
                            "-m", "fast", "-w", "stop"], capture_output=True)
        (self.base / "stack.json").unlink(missing_ok=True)

    # --- state file ----------------------------------------------------------
    def save(self) -> None:
        (self.base / "stack.json").write_text(json.dumps({"ports": self.ports, "pids": self.pids}))

    @classmethod
    def load(cls, base: Path) -> "LoopbackStack":
        state = json.loads((base / "stack.json").read_text())
        return cls(base, ports=state["ports"], pids=state["pids"])


def _wait_gone(pid: int, timeout: float) -> bool:
    """Whether the process ended within `timeout` (reaped if it is our child)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return True
        except ChildProcessError:  # not our child (or reaped already): is it still there?
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2 or args[0] not in ("start", "stop"):
        print("usage: python -m oblivio.loopback start|stop DIR", file=sys.stderr)
        return 2
    base = Path(args[1]).resolve()
    if args[0] == "start":
        stack = LoopbackStack(base).start()
        for key, value in stack.client_environment().items():
            print(f"export {key}={value}")
        options = " ".join(f"{flag} {value}" for flag, value in stack.init_options().items())
        print(f"# oblivio init WS --profile production {options}")
    elif (base / "stack.json").exists():
        LoopbackStack.load(base).stop()
    else:
        print(f"nothing to stop: {base} holds no running stack (stack.json)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
