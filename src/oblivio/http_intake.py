"""The HTTP intake for deletion requests, served by `oblivio serve` (FastAPI + uvicorn).

    POST /v1/requests          {"subjects": [...], "records": [...], "kind": "erasure", "reason": "...",
                                "callback_url": "https://portal.internal/hooks/erasure"}   (optional)
    GET  /v1/requests/{id}     status, due date, outcome, certificate summary (counts and hashes only)
    GET  /v1/requests?status=&overdue=
    GET  /healthz

A face like the CLI: each request goes through the same use case as `forget`
(`intake.record_many`, through `api.Workspace.submit_many`: requests arriving together share
one commit): hashed, committed to the ledger before the 202, then announced to the deletion
deployment with the same event `forget` sends. A bearer token from
`.oblivio/intake-token` guards every /v1 route (compared in constant time; no token or a
wrong one is a 401 and records nothing). Raw ids never appear in a response or a log line:
validation messages name positions, not values.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

from oblivio import deadlines
from oblivio.errors import IdempotencyConflict, OblivioError, RequestError, RequestRejected
from oblivio.intake import Ask
from oblivio.keys import keyed_hash

if TYPE_CHECKING:
    from oblivio.api import Workspace

MAX_BODY_BYTES = 256 * 1024  # about 4,000 ids; larger batches belong in several requests or `forget --from-file`
MAX_IDS = 10_000
MAX_KEY_CHARS = 200


class SubmitBody(BaseModel):
    """A deletion request: at least one subject or record id."""

    model_config = ConfigDict(extra="forbid")

    subjects: list[StrictStr] = Field(default_factory=list, max_length=MAX_IDS, description="subject (person) ids")
    records: list[StrictStr] = Field(default_factory=list, max_length=MAX_IDS, description="single record ids")
    kind: Literal["erasure", "corrective"] = "erasure"
    reason: StrictStr = Field("", max_length=1000, description="free text kept with the request; no personal data")
    callback_url: StrictStr | None = Field(None, max_length=2048, description="told (a signed POST) when the request "
                                           "settles; its host must be in params.yaml requests.callback_hosts")

    @model_validator(mode="after")
    def _names_someone(self) -> SubmitBody:
        if not self.subjects and not self.records:
            raise ValueError("the request names no subject and no record; give at least one id")
        return self


class Accepted(BaseModel):
    request_id: str
    status: str
    created: bool  # False: an identical request (or this Idempotency-Key) was already recorded
    due: str
    announced: bool  # the deletion deployment was triggered


class RequestSummary(BaseModel):
    request_id: str
    kind: str
    status: str
    subjects: int
    records: int
    created_at: str
    updated_at: str
    due: str
    overdue: bool
    error: str | None = None
    outcome: dict | None = None
    certificate: dict | None = None
    callbacks: list[dict] | None = None  # each delivery: the status it announces, state, attempts, last error


def _summary(row: dict) -> RequestSummary:
    return RequestSummary(request_id=row["id"], kind=row["kind"], status=row["status"],
                          subjects=len(row["subject_hashes"]), records=len(row["record_hashes"]),
                          created_at=row["created_at"], updated_at=row["updated_at"], due=row["due"],
                          overdue=row["overdue"], error=row["error"], outcome=row["outcome"],
                          certificate=row.get("certificate"), callbacks=row.get("callbacks"))


def _problems(err: ValidationError) -> str:
    """Where and what, never the offending value (it may be a raw id)."""
    parts = []
    for e in err.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def create_app(ws: Workspace, *, token: str, announce: Callable[[str], bool] | None = None,
               clock: Callable[[], datetime] = deadlines.now, max_body: int = MAX_BODY_BYTES) -> FastAPI:
    """The intake app for one workspace; `announce(request_id)` triggers the deletion deployment."""
    bearer = HTTPBearer(auto_error=False)
    expected = token.encode()
    commits = GroupCommit(ws)

    def authenticated(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = (credentials.credentials if credentials else "").encode()
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "missing or wrong bearer token (see .oblivio/intake-token)",
                                headers={"WWW-Authenticate": "Bearer"})

    router = APIRouter(prefix="/v1/requests", dependencies=[Depends(authenticated)], tags=["deletion requests"])

    @router.post("", status_code=202, response_model=Accepted,
                 openapi_extra={"requestBody": {"content": {"application/json": {
                     "schema": SubmitBody.model_json_schema()}}, "required": True}},
                 responses={200: {"model": Accepted}, 409: {}, 413: {}, 422: {}})
    async def submit(request_body: bytes = Depends(_body), idempotency_key: str | None = Header(None)
                     ) -> JSONResponse:
        # async: the handler only validates and waits for the committer thread (no worker-thread hop)
        try:
            body = SubmitBody.model_validate_json(request_body)
        except ValidationError as err:
            raise HTTPException(422, f"invalid request: {_problems(err)}") from None
        idempotency = None
        if idempotency_key is not None:
            if not 0 < len(idempotency_key) <= MAX_KEY_CHARS:
                raise HTTPException(400, f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} characters")
            digest = hashlib.sha256(json.dumps(body.model_dump(), sort_keys=True).encode()).hexdigest()
            idempotency = (keyed_hash(ws.layout.secret, "idempotency", idempotency_key), digest)
        try:
            result = await commits.submit_async(Ask(subjects=body.subjects, records=body.records, kind=body.kind,
                                                    reason=body.reason, idempotency=idempotency,
                                                    callback_url=body.callback_url))
        except IdempotencyConflict as err:
            raise HTTPException(409, str(err)) from None
        except RequestRejected as err:
            return JSONResponse({"request_id": err.request_id, "status": "rejected", "detail": str(err)}, 422)
        except RequestError as err:
            raise HTTPException(422, str(err)) from None
        announced = bool(result.created and announce
                         and await asyncio.get_running_loop().run_in_executor(None, announce, result.request_id))
        accepted = Accepted(request_id=result.request_id, status=result.status, created=result.created,
                            due=result.due, announced=announced)
        return JSONResponse(accepted.model_dump(), 202 if result.created else 200)

    @router.get("/{request_id}", response_model=RequestSummary)
    def one(request_id: str) -> RequestSummary:
        try:
            return _summary(ws.request(request_id, now=clock()))
        except RequestError:
            raise HTTPException(404, "no deletion request has this id") from None

    @router.get("", response_model=list[RequestSummary])
    def listing(status: Literal["pending", "applied", "promoted", "rejected", "failed"] | None = Query(None),
                overdue: bool = Query(False)) -> list[RequestSummary]:
        return [_summary(r) for r in ws.requests(status=status, overdue=overdue, now=clock()).requests]

    app = FastAPI(title="Oblivio deletion intake", version="1", docs_url=None, redoc_url=None)
    app.include_router(router)
    app.state.max_body = max_body
    app.state.commits = commits

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.exception_handler(OblivioError)
    def _user_error(request: Request, err: OblivioError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 422)

    return app


async def _body(request: Request) -> bytes:
    """The raw body, refused past the size limit (413) before it is read whole."""
    limit = request.app.state.max_body
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPException(413, f"request body over {limit} bytes; split the ids over several requests")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body over {limit} bytes; split the ids over several requests")
        chunks.append(chunk)
    return b"".join(chunks)


class GroupCommit:
    """Submissions that arrive together are recorded in one ledger transaction.

    The commit's fsync is most of a submission's cost and SQLite has one writer at a time, so
    concurrent clients would queue for it one by one. Here each handler thread hands its request
    to one committer thread and waits; the committer takes everything waiting (up to `max_batch`),
    records it in one transaction and answers each. Every answer still comes after its commit.
    """

    def __init__(self, ws: Workspace, *, max_batch: int = 256):
        import queue

        self.ws, self.max_batch = ws, max_batch
        self.queue: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def enqueue(self, ask: Ask):
        """A future of the RequestResult, or of the RequestError `Workspace.submit` would raise."""
        from concurrent.futures import Future

        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="oblivio-intake-commits", daemon=True)
                self.thread.start()
        future: Future = Future()
        self.queue.put((ask, future))
        return future

    async def submit_async(self, ask: Ask, timeout: float = 120):
        result = await asyncio.wait_for(asyncio.wrap_future(self.enqueue(ask)), timeout)
        if isinstance(result, Exception):
            raise result
        return result

    def _loop(self) -> None:
        import queue

        from oblivio.ledger import Ledger

        ledger = Ledger(self.ws.layout.ledger_path)  # this thread's, open for the intake's life
        while True:
            batch = [self.queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self.ws.submit_many([ask for ask, _ in batch], ledger=ledger)
            except Exception as err:  # e.g. the disk is full: every waiting client gets the error (a 500)
                results = [err] * len(batch)
            for (_, future), result in zip(batch, results):
                future.set_result(result)


class IntakeServer:
    """uvicorn in a background thread of `oblivio serve`, on a socket bound up front (port 0: a free one)."""

    def __init__(self, ws: Workspace, *, host: str = "127.0.0.1", port: int = 0):
        self.ws, self.host = ws, host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as err:
            self.sock.close()
            raise OblivioError(f"The deletion intake cannot listen on {host}:{port} ({err.strerror}); "
                               "choose another --intake-port (0 picks a free one).") from None
        self.sock.listen(2048)  # listening from here: a client that connects before uvicorn accepts waits, not refused
        self.port = self.sock.getsockname()[1]
        self.server = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, announce: Callable[[str], bool]) -> None:
        import uvicorn

        app = create_app(self.ws, token=self.ws.layout.intake_token, announce=announce)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # the serving process handles signals
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="oblivio-intake", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            if self.thread is not None:
                self.thread.join(10)
        self.sock.close()


def announcer(api_url: str, root: str) -> Callable[[str], bool]:
    """Announce as `forget` does; a failure to reach Prefect leaves the request pending (processed later)."""
    from oblivio.flows.events import announce_request

    def announce(request_id: str) -> bool:
        try:
            announce_request(api_url, root, request_id)
            return True
        except OSError as err:
            print(f"oblivio serve: intake: {request_id} recorded, announcement failed ({type(err).__name__}); "
                  "the next `oblivio process` or announcement applies it", file=sys.stderr, flush=True)
            return False

    return announce
