"""The Python API: one façade over a workspace, which the CLI and the HTTP intake also use.

    from oblivio import Workspace
    ws = Workspace.open("path/to/ws")        # validates params.yaml and mlflow.yaml
    ws.run()                                 # RunResult
    ws.forget(subjects=["17"], reason="ticket 881")   # RequestResult: durable on return
    ws.forget(subjects=["23"], wait=True)    # ProcessResult: removed, retrained, certified
    ws.process(); ws.requests(status="pending"); ws.verify(replay=2); ws.review()

Each method returns a frozen result (oblivio.results) whose `to_dict()` is the CLI's
`--json`. Like the CLI this is a face, not the core: it may start Prefect flows
(`oblivio.flows`), always lazily, so recording a request imports neither Prefect, torch
nor MLflow. User mistakes raise OblivioError subclasses with one clear message.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Literal, overload
from urllib.parse import urlparse

from oblivio import deadlines
from oblivio.config import CHOICES, SCENARIO_KINDS, STAGES
from oblivio.errors import OblivioError, RequestError
from oblivio.results import (
    ApproveResult, CertificateResult, DeployResult, DoctorResult, DpAuditResult, InitResult, NumericsResult,
    ProcessResult, RequestResult, RequestsResult, Result, ReviewResult, RunResult, ScenarioResult, VerifyResult,
)
from oblivio.workspace import WorkspaceDir

Progress = Callable[[str], None]
EXECUTOR_KINDS = CHOICES["executor.kind"]
# how often a command waiting on `serve` looks for its outcome: a read of the ledger or of one file
SERVED_POLL_SECONDS = 0.05


def _silent(message: str) -> None:
    pass


class Workspace:
    """An opened Oblivio workspace (the façade). `layout` is where its files live."""

    def __init__(self, layout: WorkspaceDir, *, progress: Progress = _silent):
        self.layout = layout
        self.progress = progress

    # --- opening ---------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, progress: Progress = _silent) -> Workspace:
        """The workspace at (or above) `path`, default the current directory; both config files validated."""
        from oblivio import numerics, script_guard

        script_guard.refuse_reimported_main()

        layout = WorkspaceDir.find(Path(path) if path is not None else None)
        _ = layout.params, layout.mlflow  # every problem of both files, before anything starts
        numerics.pin_process(layout.params.train.numerics)  # before torch and numpy load
        os.environ.update(layout.environment())
        _quiet_libraries()
        _ = layout.secret
        return cls(layout, progress=progress)

    @classmethod
    def init(cls, directory: str | os.PathLike, *, source: str | None = None, profile: str = "embedded",
             production=None, from_table: str | os.PathLike | None = None, subject_id: str | None = None,
             label: str | None = None, record_id: str | None = None,
             progress: Progress = _silent) -> InitResult:
        """Create a workspace: config files, git and DVC repositories, secret, intake token.

        `profile="production"` points it at the servers in `production` (oblivio.profiles.Production);
        `from_table` writes params.yaml from a table's schema (oblivio.data.schema_inference).
        """
        from oblivio import script_guard

        script_guard.refuse_reimported_main()
        from oblivio.workspace import init_workspace

        if from_table is not None and profile != "embedded":
            raise OblivioError("--from-table and --profile production do not combine yet: init --from-table, then "
                               "point that workspace at the servers by hand (see README, The production profile).")
        if from_table is not None:
            from oblivio.data.schema_inference import init_from_table

            ws, told = init_from_table(Path(directory), Path(from_table), subject_id=subject_id, label=label,
                                       record_id=record_id)
            progress(told)
        else:
            ws = init_workspace(Path(directory), source=source, profile=profile, production=production)
        return InitResult(workspace=str(ws.root))

    @property
    def root(self) -> Path:
        return self.layout.root

    # --- training --------------------------------------------------------
    def run(self, *, from_scratch: bool = False, baseline: bool | None = None, reslice: bool = False,
            executor: str | None = None, workers: int | None = None, dask_address: str | None = None,
            trigger: str = "manual") -> RunResult:
        """The training pipeline: ingest, validate, version, train, audit, register, promote.

        `reslice` places every record anew (sisa.placement), undoing what growth runs did to the
        slices' balance. With `oblivio serve` running (and no executor chosen here) the run is
        handed to its warm process, as `forget(wait=True)` is."""
        began = time.perf_counter()
        ws = self.layout
        runner = self._runner(executor, workers, dask_address)
        from oblivio.doctor import require_reachable

        require_reachable(ws, "run")  # a backend that is down: one message, nothing written
        served = executor is None and workers is None and dask_address is None and self._run_in_serve(
            {"baseline": baseline, "from_scratch": from_scratch, "reslice": reslice, "trigger": trigger})
        if served:
            return RunResult.from_dict(_timed({**served, "model_name": ws.mlflow.model_name}, began))
        from oblivio.flows.prefect_api import prefect_api

        with ws.exclusive("run"), prefect_api() as ready:  # the server boots while the stack imports
            from oblivio import tracking
            from oblivio.flows.training import training_pipeline

            tracking.ensure_experiment(ws.mlflow)
            flow = training_pipeline.with_options(task_runner=runner())
            ready()
            result = flow(str(ws.root), ws.params.sisa.shards, from_scratch=from_scratch, trigger=trigger,
                          baseline=ws.params.report.baseline if baseline is None else baseline, reslice=reslice)
        result["model_name"] = ws.mlflow.model_name
        return RunResult.from_dict(_timed(result, began))

    # --- deletion requests -----------------------------------------------
    @overload
    def forget(self, *, subjects: Iterable[str] = ..., records: Iterable[str] = ..., kind: str = ...,
               reason: str = ..., wait: Literal[False] = ..., callback_url: str | None = ...,
               **executor) -> RequestResult: ...

    @overload
    def forget(self, *, subjects: Iterable[str] = ..., records: Iterable[str] = ..., kind: str = ...,
               reason: str = ..., wait: Literal[True], callback_url: str | None = ...,
               **executor) -> ProcessResult: ...

    def forget(self, *, subjects: Iterable[str] = (), records: Iterable[str] = (), kind: str = "erasure",
               reason: str = "", wait: bool = False, callback_url: str | None = None, executor: str | None = None,
               workers: int | None = None, dask_address: str | None = None) -> RequestResult | ProcessResult:
        """Record a deletion request durably; with `wait`, also process it and return the batch's result.

        `callback_url` (a host in `requests.callback_hosts`) is POSTed a signed summary when the
        request is promoted, rejected or failed (oblivio.callbacks).

        Raises RequestRejected (recorded as rejected, nothing else changed) when its ids
        match no record; with `wait`, OblivioError when processing failed (it is retried later).
        """
        began = time.perf_counter()
        runner = self._runner(executor, workers, dask_address, default_kind="thread") if wait else None
        # a waiting command starts the work itself: a run of serve's deployment (`_wait_for_serve`), or here
        recorded = self.submit(subjects=subjects, records=records, kind=kind, reason=reason,
                               callback_url=callback_url, announce=not wait)
        if not wait:
            return recorded
        request_id = recorded.request_id
        result = ((recorded.created and executor is None and self._wait_for_serve(request_id))
                  or self._process(runner, trigger="forget"))
        _timed(result, began)
        if result["status"] == "failed":
            raise OblivioError(f"Request {request_id} failed and will be retried: {result['error']}")
        refused = [r["reason"] for r in result.get("rejected", []) if r["request_id"] == request_id]
        if result["status"] == "rejected" or refused:
            from oblivio.errors import RequestRejected

            raise RequestRejected(f"Request {request_id} rejected, nothing changed: "
                                  f"{refused[0] if refused else result['error']}", request_id)
        return ProcessResult.from_dict(result)

    def submit(self, *, subjects: Iterable[str] = (), records: Iterable[str] = (), kind: str = "erasure",
               reason: str = "", idempotency: tuple[str, str] | None = None, announce: bool = True,
               callback_url: str | None = None) -> RequestResult:
        """Record one request (hash, commit, precheck) and tell a running `serve`; no processing here."""
        from oblivio import intake
        from oblivio.errors import RequestRejected

        from oblivio.ledger import REQUEST_KINDS

        if kind not in REQUEST_KINDS:
            raise RequestError(f"kind must be one of {', '.join(REQUEST_KINDS)}, got {kind!r}.")
        if not isinstance(reason, str):
            raise RequestError("reason must be text.")
        try:
            request, created = intake.record(self.layout, subjects=_ids(subjects, "subjects"),
                                             records=_ids(records, "records"), kind=kind, reason=reason,
                                             idempotency=idempotency, callback_url=callback_url)
        except RequestRejected:
            if callback_url:  # the requester hears of the refusal too
                self.deliver_callbacks()
            raise
        announced = bool(announce and created and self._announce(request.id))
        return self._recorded(request, created, announced)

    def submit_many(self, asks: list, *, ledger=None) -> list[RequestResult | RequestError]:
        """`submit` for several requests in one ledger commit (an intake's group commit); nothing announced.

        `asks` are `oblivio.intake.Ask`; each gets its RequestResult or the RequestError `submit` would raise.
        A long-lived caller may pass its open `oblivio.ledger.Ledger`.
        """
        from oblivio import intake

        return [r if isinstance(r, RequestError) else self._recorded(*r, False)
                for r in intake.record_many(self.layout, asks, ledger)]

    def _recorded(self, request, created: bool, announced: bool) -> RequestResult:
        return RequestResult(request_ids=[request.id], status=request.status, created=created, announced=announced,
                             due=self._due(request.created_at))

    def process(self, *, executor: str | None = None, workers: int | None = None,
                dask_address: str | None = None, trigger: str = "process") -> ProcessResult:
        """Apply every actionable request in one batch (each affected shard retrained once)."""
        began = time.perf_counter()
        runner = self._runner(executor, workers, dask_address, default_kind="thread")
        return ProcessResult.from_dict(_timed(self._process(runner, trigger=trigger), began))

    def requests(self, *, status: str | None = None, overdue: bool = False,
                 now: datetime | None = None) -> RequestsResult:
        """The ledger, oldest first; `overdue` keeps the unsettled ones past their due date at `now`."""
        from oblivio.ledger import STATUSES, Ledger

        if status is not None and status not in STATUSES:
            raise RequestError(f"status must be one of {', '.join(STATUSES)}, got {status!r}.")
        at = now or deadlines.now()
        days = self.layout.params.requests.deadline_days
        ledger = Ledger(self.layout.ledger_path)
        try:
            rows = ledger.list(status=status)
        finally:
            ledger.close()
        out = []
        for r in rows:
            late = deadlines.is_overdue(r.status, r.created_at, days, at)
            if overdue and not late:
                continue
            out.append({**r.to_json(), "due": self._due(r.created_at), "overdue": late})
        return RequestsResult(requests=out)

    def request(self, request_id: str, *, now: datetime | None = None) -> dict:
        """One request as `requests()` lists it, plus its certificate's summary (hashes and counts only)
        and its callbacks' deliveries."""
        from oblivio.ledger import Ledger, certificate_summary

        ledger = Ledger(self.layout.ledger_path)
        try:
            r = ledger.get(request_id)
            cert = ledger.certificate(request_id)
            deliveries = ledger.callbacks_of(request_id)
        finally:
            ledger.close()
        days = self.layout.params.requests.deadline_days
        row = {**r.to_json(), "due": self._due(r.created_at),
               "overdue": deadlines.is_overdue(r.status, r.created_at, days, now or deadlines.now())}
        if cert and "certified_at" in cert:
            row["certificate"] = certificate_summary(cert)
        if deliveries:
            row["callbacks"] = deliveries
        return row

    # --- checks and promotion --------------------------------------------
    def verify(self, *, alias: str = "champion", replay: int = 0) -> VerifyResult:
        """The model under `alias` against the ledger and the data; `replay` slices retrained and compared bit for bit."""
        if isinstance(replay, bool) or not isinstance(replay, int) or replay < 0:
            raise OblivioError(f"replay must be a whole number of slices >= 0 (0 = no replay), got {replay!r}.")
        from oblivio.verify import verify

        return VerifyResult.from_dict(verify(self.root, alias=alias, replay=replay))

    def review(self, version: int | None = None, *, alias: str | None = None) -> ReviewResult:
        """A version's audit (default: the candidate) beside the champion's."""
        if version is not None:
            _version(version)
        from oblivio.registry import review

        return ReviewResult.from_dict(review(self.root, version=version, alias=alias))

    def approve(self, version: int, *, by: str) -> ApproveResult:
        """Make a version that passed every gate on current data champion, by a named person."""
        _version(version)
        if not isinstance(by, str) or not by.strip():
            raise OblivioError("approve needs the approver's name (by=...).")
        from oblivio.registry import approve

        return ApproveResult.from_dict(approve(self.root, version, by=by))

    # --- scenarios --------------------------------------------------------
    def scenario(self, kind: str, *, fraction: float = 0.05, flagged: float = 0.2, seed: int = 0,
                 keep: str | os.PathLike | None = None, executor: str | None = None, workers: int | None = None,
                 dask_address: str | None = None) -> ScenarioResult:
        """Inject manipulated records into a scratch copy, train, flag a share, correct, measure."""
        import shutil
        import tempfile

        if kind not in SCENARIO_KINDS:
            raise OblivioError(f"scenario kind must be one of {', '.join(SCENARIO_KINDS)}, got {kind!r}.")
        for name, value in (("fraction", fraction), ("flagged", flagged)):
            if not 0 < value <= 1:
                raise OblivioError(f"{name} must be a share in (0, 1], got {value!r}.")
        runner = self._runner(executor, workers, dask_address)
        from oblivio import intake, scenario
        from oblivio.ledger import Ledger
        from oblivio.unlearning.scenarios import flag_sample
        from oblivio.workspace import init_workspace

        ws = self.layout
        scratch = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="oblivio-scenario-"))
        try:
            table, manipulated, spec = scenario.poison(ws.root, kind=kind, fraction=fraction, seed=seed)
            source = scratch / "manipulated.parquet"
            scratch.mkdir(parents=True, exist_ok=True)
            table.to_parquet(source, index=False)
            sc = init_workspace(scratch / "workspace",
                                params=scenario.params_with_source((ws.root / "params.yaml").read_text(), source))
            sc = WorkspaceDir(sc.root)
            _ = sc.params
            self.progress(f"scenario {kind}: {len(manipulated)} manipulated records ({fraction:.0%}); training")
            trained = _flow_in(sc, runner, "training")
            before = scenario.measure(sc.root, spec, set(manipulated))["published"]
            chosen = flag_sample(manipulated, share=flagged, seed=seed)
            _, record_hashes = intake.hash_ids(sc, subjects=[], records=chosen)
            ledger = Ledger(sc.ledger_path)
            try:
                ledger.submit(kind="corrective", record_hashes=record_hashes, reason=f"scenario {kind}")
            finally:
                ledger.close()
            self.progress(f"flagged {len(chosen)} of them ({flagged:.0%}); corrective route")
            corrected = _flow_in(sc, runner, "deletion")
            after = scenario.measure(sc.root, spec, set(manipulated))
        finally:
            if not keep:
                shutil.rmtree(scratch, ignore_errors=True)
        return ScenarioResult.from_dict({
            "scenario": spec, "manipulated": len(manipulated), "flagged": len(chosen), "before": before,
            "exact_only": after["exact_only"], "corrective": after["published"],
            "train_seconds": trained["seconds"], "corrective_seconds": corrected["seconds"]})

    def stage(self, name: str, *, progress: Progress | None = None) -> Result:
        """One dvc.yaml stage without Prefect (what `dvc repro` runs): ingest, train or evaluate."""
        if name not in STAGES:
            raise OblivioError(f"stage must be ingest, train or evaluate, got {name!r}.")
        from oblivio import evaluation, ingestion, publishing, shard_training

        ws = self.layout
        if name == "ingest":
            return Result(details=ingestion.ingest(ws.root))
        if name == "evaluate":
            return Result(details=evaluation.evaluate(ws.root))
        shards = [shard_training.train_one_shard(ws.root, k, progress or self.progress) for k in range(ws.params.sisa.shards)]
        publishing.publish_models(ws.root, shards)
        return Result(details={"shards": [{k: s[k] for k in ("index", "weights_sha256", "slices_trained")}
                                          for s in shards]})

    def audit_dp(self, *, canaries: int = 1000, seed: int = 0, keep: str | os.PathLike | None = None,
                 executor: str | None = None, workers: int | None = None,
                 dask_address: str | None = None) -> DpAuditResult:
        """One-run DP audit (Steinke, Nasr, Jagielski 2023) on scratch copies: canaries, each included with
        probability 1/2, trained with and without DP; epsilon's empirical lower bound from each run.

        Raises IntegrityError when the bound exceeds the accounted epsilon (a bug in accounting or training);
        the result is logged on the candidate version first."""
        import shutil
        import tempfile

        from oblivio import dp_audit

        dp_audit.require_canaries(canaries)
        runner = self._runner(executor, workers, dask_address)
        ws = self.layout
        scratch = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="oblivio-audit-dp-"))
        began = time.perf_counter()
        user_mlflow = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        try:
            table = dp_audit.source_table(ws.root)
            runs = {"private": True, "non_private": False} if ws.params.dp.enabled else {"non_private": False}
            secret, marked, included, bounds = dp_audit.scratch_secret(ws.secret, seed), None, None, {}
            for name, dp_on in runs.items():
                sc = dp_audit.scratch_workspace(ws, scratch / name, secret=secret, dp_enabled=dp_on)
                if marked is None:
                    marked, included = dp_audit.make_canaries(table, scratch=sc, m=canaries,
                                                              seed=dp_audit.seeds(ws.secret, seed))
                    dp_audit.with_canaries(table, marked, included).to_parquet(scratch / "table.parquet", index=False)
                self.progress(f"audit-dp: {len(marked)} canaries ({int(included.sum())} included); training "
                              f"{'with' if dp_on else 'without'} DP")
                _flow_in(sc, runner, "training")
                bounds[name] = dp_audit.audit(sc.root, marked, included, delta=ws.params.dp.delta)
                if dp_on:
                    bounds[name]["unit"], bounds[name]["epsilon"] = dp_audit.epsilon_of_run(sc.root)
        finally:
            if not keep:
                shutil.rmtree(scratch, ignore_errors=True)
            for name, value in user_mlflow.items():  # MLflow exported the scratch runs' URIs
                os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        private = bounds.get("private")
        result = {**(private or bounds["non_private"]), "dp_enabled": private is not None,
                  "non_private_epsilon_lower": bounds["non_private"]["epsilon_lower"], "runs": bounds,
                  "seconds": time.perf_counter() - began}
        result.setdefault("unit", None)
        result.setdefault("epsilon", None)
        result["ok"] = private is None or private["epsilon_lower"] <= private["epsilon"]
        result["model_version"] = dp_audit.record(ws.root, result) if private else None
        dp_audit.require_sound(result)
        return DpAuditResult.from_dict(result)

    def doctor(self) -> DoctorResult:
        """Each configured backend: reachable, credentials, the rights the purge needs."""
        from oblivio.doctor import run_checks

        checks = run_checks(self.layout)
        return DoctorResult(ok=all(c["ok"] for c in checks), checks=checks)

    def deploy(self, *, work_pool: str) -> DeployResult:
        """The scheduled pipeline on a process work pool, run by `prefect worker` (not by `serve`)."""
        if not isinstance(work_pool, str) or not work_pool.strip():
            raise OblivioError("deploy needs the name of a Prefect work pool (--work-pool NAME).")
        if not os.environ.get("PREFECT_API_URL"):
            raise OblivioError("deploy needs a Prefect server that outlives this command: set PREFECT_API_URL or "
                               "`oblivio init --profile production --prefect-api URL`.")
        from oblivio.flows.prefect_api import prefect_api

        ws = self.layout
        schedule = ws.params.schedule
        with prefect_api() as ready:
            from oblivio.flows.deployments import deploy_to_work_pool

            ready()
            deployed = deploy_to_work_pool(str(ws.root), n_shards=ws.params.sisa.shards, cron=schedule.cron,
                                           timezone=schedule.timezone, work_pool=work_pool)
        return DeployResult(**deployed, cron=schedule.cron)

    # --- serving -----------------------------------------------------------
    def serve(self, *, host: str = "127.0.0.1", port: int = 4200, intake_port: int = 0, allow_remote: bool = False,
              ready: Callable[[str, list[str], str], None] | None = None) -> None:
        """The scheduled pipeline, the deletion processor and the HTTP intake, until interrupted."""
        if not 1 <= port <= 65535:
            raise OblivioError(f"port must be in 1..65535, got {port}.")
        if not 0 <= intake_port <= 65535:
            raise OblivioError(f"intake port must be in 1..65535 (0: a free one), got {intake_port}.")
        if host not in ("127.0.0.1", "localhost", "::1") and not allow_remote:
            raise OblivioError(f"--host {host} would expose the Prefect API and the intake beyond this machine; "
                               "add --allow-remote if that is intended (and put authentication in front of it).")
        from oblivio.flows.service import serve_workspace, serving_api
        from oblivio.http_intake import IntakeServer

        if (running := serving_api(self.layout.serve_state_path)) is not None:
            # two serves would claim each other's runs and the second's exit would hide the first
            raise OblivioError(f"`oblivio serve` already runs for this workspace (its Prefect API: {running}); "
                               "stop it first, or use it: commands hand their work to it.")

        ws = self.layout
        intake_server = IntakeServer(self, host=host, port=intake_port)
        schedule = ws.params.schedule
        serve_workspace(ws.root, n_shards=ws.params.sisa.shards, cron=schedule.cron, timezone=schedule.timezone,
                        host=host, port=port, state_file=ws.serve_state_path,
                        log_path=ws.state_dir / "prefect-server.log", intake=intake_server, ready=ready)

    # --- internals ----------------------------------------------------------
    def _due(self, created_at: str) -> str:
        return deadlines.due_at(created_at, self.layout.params.requests.deadline_days).isoformat()

    def _runner(self, kind: str | None, workers: int | None, dask_address: str | None,
                default_kind: str | None = None) -> Callable:
        """Check the executor options now (one message each); the runner itself is built when needed."""
        ex = self.layout.params.executor
        kind = kind or default_kind or ex.kind
        if kind not in EXECUTOR_KINDS:
            raise OblivioError(f"executor must be one of {', '.join(EXECUTOR_KINDS)}, got {kind!r}.")
        workers = ex.max_workers if workers is None else workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise OblivioError(f"workers must be a whole number >= 1, got {workers!r}.")
        address = dask_address or (ex.dask_address if kind == "dask" else "")
        if dask_address and kind != "dask":
            raise OblivioError("--dask-address needs --executor dask (or executor.kind: dask in params.yaml).")
        if kind == "dask" and address:
            check_dask_address(address)
        environment = self.layout.environment()

        def build():
            from oblivio.flows.runners import make_task_runner

            return make_task_runner(kind, max_workers=workers, dask_address=address, environment=environment)

        return build

    def _process(self, runner: Callable, *, trigger: str) -> dict:
        """The deletion flow over every actionable request; a failure is recorded in the ledger."""
        ws = self.layout
        from oblivio.flows.prefect_api import prefect_api

        with ws.exclusive("process"), prefect_api() as ready:  # the server boots while the stack imports
            from oblivio import erasure, tracking
            from oblivio.flows.deletion import deletion_pipeline

            tracking.ensure_experiment(ws.mlflow)
            # a batch retrains a shard or two: threads start at once, a process pool costs seconds
            flow = deletion_pipeline.with_options(task_runner=runner())
            ready()
            try:
                return flow(str(ws.root), ws.params.sisa.shards, trigger=trigger)
            except Exception as err:
                erasure.record_failure(ws, err)
                self.deliver_callbacks()
                if isinstance(err, OblivioError):
                    raise
                from oblivio.errors import BackendError  # a backend failed mid-batch: nothing is lost, say so

                raise BackendError(f"the deletion batch stopped ({type(err).__name__}: {str(err)[:300]}); its "
                                   "requests stay in the ledger and the next `oblivio process` retries them") from err

    def deliver_callbacks(self) -> None:
        """Send the completion callbacks that are due; a receiver's failure is retried later, never raised."""
        from oblivio import callbacks

        report = callbacks.deliver_due(self.layout)
        if report.retrying or report.abandoned:
            self.progress(f"callbacks: {report.delivered} delivered, {report.retrying} to retry, "
                          f"{report.abandoned} abandoned (see `oblivio requests --json`)")

    def _wait_for_serve(self, request_id: str) -> dict | None:
        """With `oblivio serve` running, its warm process does the work: a run of its deletion
        deployment is asked for and the ledger is watched until the request is settled.

        The run is created directly, as the automation would on the event, which saves the
        event's trip through the server's trigger evaluation. None when nothing serves this
        workspace, or when `serve` stops before the request is settled: the caller then
        processes it here (the ledger makes that safe).
        """
        import json

        from oblivio import intake
        from oblivio.flows.service import serving_api, still_serving

        api_url = serving_api(self.layout.serve_state_path)
        if api_url is None:
            return None
        serve_pid = json.loads(self.layout.serve_state_path.read_text())["pid"]
        self._start_deletion_run(api_url, request_id)
        self.progress(f"{request_id}: handed to the running `oblivio serve`; waiting for it")
        checks = 0
        while (result := intake.settled(self.layout, request_id)) is None:
            checks += 1
            if checks % 40 == 0 and not still_serving(self.layout.serve_state_path, serve_pid):
                return None
            time.sleep(SERVED_POLL_SECONDS)
        return {**result, "processed_by": "serve"}

    def _start_deletion_run(self, api_url: str, request_id: str) -> None:
        """A run of serve's deletion deployment, now; the event (`_announce`) where serve predates
        the deployment ids in its state file."""
        import json

        from oblivio.flows import handover

        started = handover.start_run(api_url, json.loads(self.layout.serve_state_path.read_text()), "deletion",
                                     {"root": str(self.root), "n_shards": self.layout.params.sisa.shards,
                                      "trigger": "forget"})
        if started is None:
            self._announce(request_id)

    def _run_in_serve(self, options: dict) -> dict | None:
        """The training pipeline as a flow run of the `serve`d deployment, executed by serve's warm
        process; its summary, or None when nothing serves this workspace (or serve stopped before
        the run ended: the caller then runs it here, resuming from whatever checkpoints it left)."""
        import json

        from oblivio.flows import handover
        from oblivio.flows.service import serving_api, still_serving

        api_url = serving_api(self.layout.serve_state_path)
        if api_url is None:
            return None
        serve_pid = json.loads(self.layout.serve_state_path.read_text())["pid"]
        # this command waits for the promoted version, not for the MIA intervals no gate reads
        parameters = {"root": str(self.root), "n_shards": self.layout.params.sisa.shards, **options,
                      "defer_intervals": True}
        flow_run = handover.start_run(api_url, json.loads(self.layout.serve_state_path.read_text()), "pipeline",
                                      parameters)
        if flow_run is None:  # a `serve` from before runs were handed over
            return None
        self.progress(f"run handed to the running `oblivio serve` (flow run {flow_run}); waiting for it")
        checks = 0
        while (outcome := handover.read_outcome(self.layout.runs_dir, flow_run)) is None:
            checks += 1
            if checks % 40 == 0:
                if not still_serving(self.layout.serve_state_path, serve_pid):
                    self.progress("`oblivio serve` stopped before the run ended; running it here")
                    return None
                state, message = handover.flow_run_state(api_url, flow_run)
                if state in ("CANCELLED", "CRASHED"):
                    raise OblivioError(f"The run handed to `oblivio serve` ended {state.lower()}: {message} "
                                       "Run it again.")
            time.sleep(SERVED_POLL_SECONDS)
        if "error" in outcome:
            raise _served_error(outcome)
        return {**outcome["summary"], "processed_by": "serve", "flow_run_id": flow_run}

    def _announce(self, request_id: str) -> bool:
        """With `oblivio serve` running, an event starts the deletion flow within seconds."""
        from oblivio.flows.service import serving_api

        api_url = serving_api(self.layout.serve_state_path)
        if api_url is None:
            return False
        from oblivio.flows.events import announce_request

        announce_request(api_url, str(self.root), request_id)
        return True


def numerics_report(mode: str | None = None) -> NumericsResult:
    """This machine's numerics, whether it can honour `mode` (default: the pinned one), and the
    variables a worker must set for it. Needs no workspace."""
    from oblivio import numerics

    mode = mode or numerics.requested_mode()
    if mode not in CHOICES["train.numerics"]:
        raise OblivioError(f"numerics mode must be one of {', '.join(CHOICES['train.numerics'])}, got {mode!r}.")
    here = numerics.current(mode)
    problems = numerics.machine_problems(mode)
    return NumericsResult.from_dict({**here.to_json(), "mode": mode, "description": here.describe(), "can_honour": not problems,
                                     "problems": problems, "environment": numerics.environment(mode)})


def verify_certificate(path: str | os.PathLike, *, public_key: str | os.PathLike) -> CertificateResult:
    """A deletion certificate's signature and internal consistency, offline: no workspace, no secret."""
    from oblivio import signing

    cert = signing.read_certificate(Path(path))
    checks = signing.verify_certificate(cert, signing.read_public_key(Path(public_key)))
    return CertificateResult(ok=all(c["ok"] for c in checks), request_id=cert.get("request_id"), checks=checks)


def check_dask_address(address: str, *, timeout: float = 3.0) -> None:
    """A scheduler address must parse and answer now: Dask itself waits 30 s, then a traceback."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host = port = None
    if parsed.scheme not in ("tcp", "tls") or not host or not port:
        raise OblivioError(f"--dask-address {address!r} is not a scheduler address; write it as tcp://HOST:PORT "
                           "(a `dask scheduler` prints it when it starts).")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise OblivioError(f"No Dask scheduler answers at {address} ({err.strerror or err}); start one with "
                           "`dask scheduler` (and workers with `dask worker ADDRESS`), or drop --dask-address "
                           "to use a local cluster.") from None


def _served_error(outcome: dict) -> Exception:
    """The error that stopped a run in `serve`, as the same kind of error here (same message and exit code)."""
    from oblivio import errors

    cls = getattr(errors, outcome["error_type"], None)
    if isinstance(cls, type) and issubclass(cls, OblivioError):
        err = OblivioError(outcome["error"])
        err.exit_code = cls.exit_code
        return err
    return RuntimeError(f"{outcome['error_type']}: {outcome['error']} (in `oblivio serve`; see its output)")


def _ids(values: Iterable[str], what: str) -> list[str]:
    if isinstance(values, (str, bytes)):
        raise RequestError(f"{what} must be a list of ids, not a single string; wrap the id in a list.")
    return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values]


def _version(version: int) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise OblivioError(f"A model version is a whole number >= 1, got {version!r}.")


def _timed(result: dict, began: float) -> dict:
    """`seconds` is the whole call, as a user waits for it; `flow_seconds` the flow alone."""
    if "seconds" in result:
        result["flow_seconds"] = result["seconds"]
    result["seconds"] = time.perf_counter() - began
    return result


def _flow_in(ws: WorkspaceDir, runner: Callable, which: str) -> dict:
    from oblivio.flows.prefect_api import prefect_api

    with prefect_api() as ready:
        from oblivio import tracking

        if which == "training":
            from oblivio.flows.training import training_pipeline as flow
        else:
            from oblivio.flows.deletion import deletion_pipeline as flow
        tracking.ensure_experiment(ws.mlflow)
        ready()
        kwargs = {"baseline": False} if which == "training" else {}
        return flow.with_options(task_runner=runner())(str(ws.root), ws.params.sisa.shards, trigger="scenario",
                                                       **kwargs)


def _quiet_libraries() -> None:
    """Progress bars and advice from MLflow and GX are noise in a pipeline's output."""
    import logging
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("alembic").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")
