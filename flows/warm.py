"""Flow runs executed inside `oblivio serve`, in a process that is already warm.

Prefect's runner starts every flow run in a freshly spawned interpreter, which pays the
imports of torch, Prefect and MLflow again (seconds), more than an erasure or a growth run
itself. The workspace's deployments (the scheduled pipeline, the deletion flow) are therefore
registered with the server, so their schedule, automation, concurrency limit and runs in the
UI are Prefect's own, but their scheduled runs are claimed and executed here, in the serving
process, where the stack is imported once and the MLflow store, torch's lazy modules and the
audit's inputs are already loaded. `oblivio run` hands its runs over the same way
(flows/handover.py).
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

from oblivio.errors import OblivioError
from oblivio.flows.handover import Doorbell, ring
from oblivio.workspace import WorkspaceDir

# A read on the API, between rings of the doorbell (flows/handover.py) by the commands that
# create runs: what it still finds at once are the runs the server creates itself (the
# schedule's, the automation's on a request event)
POLL_SECONDS = 0.5


def warm_up(ws: WorkspaceDir) -> None:
    """Load what the first erasure or run would otherwise load lazily, seconds of it: the
    MLflow store, `mlflow gc`, the workspace's DVC pipeline, MLflow's map of installed
    packages (which `log_model` builds on first use to check the model's requirements) and
    its run context (git), pyarrow's dataset layer, Great Expectations (ingest's validation),
    the parts of torch that the first optimiser step imports, and the audit's inputs and
    logits for the published models."""
    import great_expectations  # noqa: F401
    import mlflow.cli  # noqa: F401  (`mlflow gc`)
    import mlflow.pyfunc  # noqa: F401
    import pyarrow.dataset  # noqa: F401  (`pq.read_table`)
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils import requirements_utils

    from oblivio import evaluation, lineage, tracking

    tracking.ensure_experiment(ws.mlflow)
    lineage.load_pipeline(ws.root)
    try:
        evaluation.prime_audit(ws.root)
    except (OblivioError, OSError) as err:  # a run replaced the models meanwhile: the first audit primes itself
        print(f"oblivio serve: audit cache not primed ({type(err).__name__}); the first erasure fills it",
              file=sys.stderr, flush=True)
    resolve_tags()  # each context provider caches what it found (the git lookup imports GitPython)
    build_map = getattr(requirements_utils, "_init_modules_to_packages_map", None)  # private; skipped if renamed
    if build_map is not None:
        build_map()
    first_optimiser_step()


def first_optimiser_step() -> None:
    """What torch imports at an optimiser's first step (its compiler stack), on a throwaway layer."""
    import torch

    layer = torch.nn.Linear(2, 2)
    optimiser = torch.optim.Adam(layer.parameters())
    layer(torch.zeros(1, 2)).sum().backward()
    optimiser.step()


@dataclass(frozen=True)
class WarmDeployment:
    """A deployment whose runs `serve` executes itself: its flow, the workspace lock it takes,
    whether a waiting command reads its outcome (`oblivio run`) or the ledger holds it (deletions)."""

    id: UUID
    flow: Any
    lock: str
    keeps_outcome: bool = False
    settles_requests: bool = False  # a failed run is recorded in the ledger, whose requests are retried


class WarmRuns:
    """Claims the scheduled runs of the workspace's deployments and runs them in this process, one
    at a time (they take the workspace's lock anyway), oldest first."""

    def __init__(self, root: Path, deployments: list[WarmDeployment]) -> None:
        self.root = root
        self.deployments = {d.id: d for d in deployments}
        self.stopping = threading.Event()
        self.doorbell = Doorbell()
        self.thread = threading.Thread(target=self._loop, name="oblivio-warm-runs", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 600) -> None:
        """Let a run in progress finish (a killed one would be redone: checkpoints and the ledger)."""
        self.stopping.set()
        ring(self.doorbell.port)  # an idle loop ends now, not at its next poll
        self.thread.join(timeout)
        if not self.thread.is_alive():  # a run still going past the timeout keeps its loop's doorbell
            self.doorbell.close()

    def _loop(self) -> None:
        from prefect.client.orchestration import get_client

        from prefect.client.schemas.filters import (
            FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterNextScheduledStartTime, FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort

        def due() -> FlowRunFilter:  # a read: the runner's own poll also stamps the deployment (a write)
            return FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=list(self.deployments)),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(before_=datetime.now(timezone.utc)))

        with get_client(sync_client=True) as client:
            try:
                self.crash_leftovers(client)
            except Exception as err:  # the loop still runs; the leftovers then only block their deployment
                print(f"oblivio serve: warm runs: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            while not self.stopping.is_set():
                try:
                    for flow_run in client.read_flow_runs(flow_run_filter=due(),
                                                          sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC):
                        if self._claim(client, flow_run):
                            self._execute(flow_run, self.deployments[flow_run.deployment_id])
                except Exception as err:  # the server restarting must not end the loop
                    print(f"oblivio serve: warm runs: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
                self.doorbell.wait(POLL_SECONDS)

    def crash_leftovers(self, client) -> list[str]:
        """Mark Crashed the runs of these deployments that a killed serve left Pending, Running or
        Cancelling; their ids. Nothing else would ever end them, and the one concurrency slot of the
        deletion deployment stays taken by such a run, so no later deletion would start. A new
        serve is the only claimant of its workspace's deployments (`serve` refuses a second one),
        and the crashed run's work is redone from checkpoints and the ledger by the next run."""
        from prefect.client.schemas.filters import (
            FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterState, FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.states import Crashed
        from prefect.utilities.engine import propose_state_sync

        left = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=list(self.deployments)),
            state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]))))
        for flow_run in left:
            # proposed, not forced: the server's rules then release the run's concurrency slot
            propose_state_sync(client, Crashed(message="the `oblivio serve` running it stopped without "
                                                       "finishing it; the next run redoes its work"),
                               flow_run_id=flow_run.id)
            print(f"oblivio serve: {flow_run.name} was left unfinished by a stopped serve: marked crashed",
                  file=sys.stderr, flush=True)
        return [str(r.id) for r in left]

    @staticmethod
    def _claim(client, flow_run) -> bool:
        """Pending, as Prefect's own runner proposes it: the server refuses a second claimant."""
        from prefect.exceptions import Abort
        from prefect.states import Pending
        from prefect.utilities.engine import propose_state_sync

        try:
            return propose_state_sync(client, Pending(), flow_run_id=flow_run.id).is_pending()
        except Abort:
            return False

    def _execute(self, flow_run, deployment: WarmDeployment) -> None:
        from prefect.flow_engine import run_flow

        from oblivio import erasure
        from oblivio.flows import handover

        ws = WorkspaceDir(self.root)
        with ws.exclusive(deployment.lock):
            try:
                outcome = {"summary": run_flow(deployment.flow, flow_run=flow_run, parameters=flow_run.parameters)}
            except Exception as err:
                if deployment.settles_requests:
                    erasure.record_failure(ws, err)
                outcome = handover.error_outcome(err)
                print(f"oblivio serve: {deployment.flow.name} run {flow_run.name} failed: {type(err).__name__}: "
                      f"{err}", file=sys.stderr, flush=True)
            if deployment.keeps_outcome:
                handover.write_outcome(ws.runs_dir, str(flow_run.id), outcome)
