"""Recording a deletion request, the one room every face uses (CLI, Python API, HTTP):
read the ids, hash them, record durably, refuse ids that match nothing, and read the
outcome back once another process (`serve`) has settled it.

No pandas here: `forget` is a short command, often run by many writers at once, and its
imports are most of its cost. `erasure.plan` applies the same unknown-id rule later.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from oblivio.callbacks import check_url
from oblivio.data.columns import RECORD_KEY, SUBJECT_KEY
from oblivio.errors import RequestError, RequestRejected
from oblivio.keys import record_key, subject_key
from oblivio.ledger import Ledger, Request, Submission
from oblivio.workspace import WorkspaceDir


def hash_ids(ws: WorkspaceDir, *, subjects: list[str], records: list[str]) -> tuple[list[str], list[str]]:
    """Raw ids -> keyed hashes; the raw ids go no further than this function."""
    return [subject_key(ws.secret, s) for s in subjects], [record_key(ws.secret, r) for r in records]


@dataclass(frozen=True)
class Ask:
    """One deletion request as a client gives it (raw ids: they go no further than `record_many`)."""

    subjects: Collection[str] = ()
    records: Collection[str] = ()
    kind: str = "erasure"
    reason: str = ""
    idempotency: tuple[str, str] | None = None  # (key hash, body digest) of an Idempotency-Key
    callback_url: str | None = None  # told when the request settles (oblivio.callbacks)


def record(ws: WorkspaceDir, *, subjects: Collection[str] = (), records: Collection[str] = (), kind: str = "erasure",
           reason: str = "", idempotency: tuple[str, str] | None = None, callback_url: str | None = None
           ) -> tuple[Request, bool]:
    """Hash, record (committed before return), precheck; returns (request, created).

    A new request whose ids match no record is recorded as rejected and raises
    RequestRejected (nothing else changed); a repeat of a rejected one raises it again.
    """
    (result,) = record_many(ws, [Ask(subjects, records, kind, reason, idempotency, callback_url)])
    if isinstance(result, Exception):
        raise result
    return result


def record_many(ws: WorkspaceDir, asks: list[Ask], ledger: Ledger | None = None
                ) -> list[tuple[Request, bool] | RequestError]:
    """`record` for several requests with one commit (the intake's group commit); each gets its
    own result or refusal, and one refusal does not affect the others. A long-lived caller may
    pass its open `ledger` (kept open); the placed data and the tombstones are read once per call."""
    out: list = [None] * len(asks)
    subs, where = [], []
    for i, ask in enumerate(asks):
        try:
            subject_hashes, record_hashes = hash_ids(ws, subjects=_checked(ask.subjects, "subject"),
                                                     records=_checked(ask.records, "record"))
            if not subject_hashes and not record_hashes:
                raise RequestError("The request names no subject and no record; give at least one id.")
            callback_url = check_url(ask.callback_url, ws.params.requests.callback_hosts)
        except RequestError as err:
            out[i] = err
            continue
        subs.append(Submission(kind=ask.kind, subject_hashes=subject_hashes, record_hashes=record_hashes,
                               reason=ask.reason, idempotency=ask.idempotency, callback_url=callback_url))
        where.append(i)
    own = ledger is None
    ledger = Ledger(ws.ledger_path) if own else ledger
    try:
        check = Precheck(ws, ledger)
        for i, result in zip(where, ledger.submit_many(subs) if subs else []):
            if isinstance(result, RequestError):
                out[i] = result
                continue
            request, created = result
            problem = check(request) if created else None
            if problem:
                ledger.mark_rejected(request.id, reason=problem)
                request = ledger.get(request.id)
            if request.status == "rejected":
                out[i] = RequestRejected(f"Request {request.id} rejected, nothing changed: "
                                         f"{problem or request.error}", request.id)
            else:
                out[i] = (request, created)
    finally:
        if own:
            ledger.close()
    return out


def _checked(ids: Collection[str], role: str) -> list[str]:
    if isinstance(ids, (str, bytes)):
        raise RequestError(f"{role}s must be a list of ids, not a single string; wrap the id in a list.")
    for position, value in enumerate(ids, start=1):
        if not isinstance(value, str) or not value.strip() or value != value.strip():
            raise RequestError(f"{role} id #{position} must be a non-empty string without surrounding spaces.")
    return list(ids)


def read_ids_file(path: Path) -> list[str]:
    """One id per line; blank lines and `#` comments are skipped. Errors name lines, never values."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise RequestError(f"--from-file {path}: no such file.") from None
    except UnicodeDecodeError:
        raise RequestError(f"--from-file {path} is not UTF-8 text; give one id per line.") from None
    ids, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        value = line.strip()
        if not value or value.startswith("#"):
            continue
        if any(ch.isspace() for ch in value) or "," in value or ";" in value:
            bad.append(number)
        ids.append(value)
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        raise RequestError(f"--from-file {path}: line(s) {shown} hold more than one id. "
                           "Give exactly one id per line (no spaces, commas or semicolons); nothing was recorded.")
    if not ids:
        raise RequestError(f"--from-file {path} holds no ids; nothing was recorded.")
    return ids


def unknown_ids(placed_subjects: Collection[str], placed_records: Collection[str], req: Request,
                erased: tuple[frozenset[str], frozenset[str]]) -> str | None:
    """Why a request names ids that are neither placed nor already erased, or None."""
    missing_subjects = sum(h not in erased[0] and h not in placed_subjects for h in req.subject_hashes)
    missing_records = sum(h not in erased[1] and h not in placed_records for h in req.record_hashes)
    parts = []
    if missing_subjects:
        parts.append(f"{missing_subjects} of {len(req.subject_hashes)} subject id(s) match no record")
    if missing_records:
        parts.append(f"{missing_records} of {len(req.record_hashes)} record id(s) match no record")
    return "; ".join(parts) + " in the current data (check the ids)" if parts else None


class Precheck:
    """At submission: why a request can already be refused (unknown ids), or None.

    Reads the tombstones and the placed keys once, on first need, for all the requests of a batch.
    """

    def __init__(self, ws: WorkspaceDir, ledger: Ledger):
        self.ws, self.ledger = ws, ledger
        self._erased: tuple[frozenset[str], frozenset[str]] | None = None
        self._placed: dict[bool, tuple[frozenset[str], frozenset[str]]] = {}

    def __call__(self, req: Request) -> str | None:
        if not self.ws.shards_dir.exists():
            return None  # nothing placed yet; `plan` decides when the data exists
        if self._erased is None:
            self._erased = (self.ledger.tombstones(), self.ledger.record_tombstones())
        with_records = bool(req.record_hashes)
        if with_records not in self._placed:
            self._placed[with_records] = placed_keys(self.ws, with_records=with_records)
        subjects, records = self._placed[with_records]
        return unknown_ids(subjects, records, req, self._erased)


_PLACED: dict[Path, tuple[tuple, frozenset[str], frozenset[str] | None]] = {}


def placed_keys(ws: WorkspaceDir, *, with_records: bool) -> tuple[frozenset[str], frozenset[str]]:
    """Subject (and record) keys of the placed data; a long-lived process (`serve`'s intake)
    rereads the partitions only when one of the files changed (size or mtime)."""
    import pyarrow.parquet as pq

    files = sorted(ws.shards_dir.glob("shard=*/part.parquet")) + ([ws.holdout_path] if ws.holdout_path.exists() else [])
    signature = tuple((str(p), st.st_mtime_ns, st.st_size) for p in files for st in [p.stat()])
    cached = _PLACED.get(ws.root)
    if cached and cached[0] == signature and (cached[2] is not None or not with_records):
        return cached[1], cached[2] or frozenset()
    subjects, records = set(), set()
    for path in files:
        with pq.ParquetFile(path) as file:  # not `read_table`: its dataset layer imports pandas (0.3 s)
            table = file.read(columns=[SUBJECT_KEY, RECORD_KEY] if with_records else [SUBJECT_KEY])
        subjects.update(table.column(SUBJECT_KEY).to_pylist())
        if with_records:
            records.update(table.column(RECORD_KEY).to_pylist())
    _PLACED[ws.root] = (signature, frozenset(subjects), frozenset(records) if with_records else None)
    return frozenset(subjects), frozenset(records)


def settled(ws: WorkspaceDir, request_id: str) -> dict | None:
    """What `forget --wait` reports once another process has finished a request; None before.

    Done means rejected or failed, promoted, or applied with a certificate that says the
    gates held promotion back. The figures come from the ledger and the certificate.
    """
    ledger = Ledger(ws.ledger_path)
    try:
        req = ledger.get(request_id)
        cert = ledger.certificate(request_id)
    finally:
        ledger.close()
    if req.status in ("rejected", "failed"):
        return {"request_ids": [request_id], "status": req.status, "error": req.error}
    final = cert is not None and "certified_at" in cert  # apply keeps a partial one (the resolution) before
    if req.status not in ("promoted", "applied") or not final or (req.status == "applied" and cert["promoted"]):
        return None
    return {
        "request_ids": [request_id], "status": req.status, "route": cert["route"],
        "records_removed": cert["records_removed"],
        "shards_retrained": sorted(int(k) for k in cert["slices_retrained"]),
        "slices_retrained": sum(len(v) for v in cert["slices_retrained"].values()),
        "model_version": cert["model_version"], "promoted": cert["promoted"], "decision": cert["promotion"],
        "certificate": {request_id: str(ws.certificates_dir / f"{request_id}.json")},
        "dataset_version": cert["data_version_after"], "purge": cert["purge"],
    }
