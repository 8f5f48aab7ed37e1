"""The deletion-request ledger: a durable SQLite record of what must be forgotten.

Every erasure or correction is committed here before anything acts on it, so a crash
at any point leaves a request that processing can pick up again. People are named only
by keyed hashes (see `oblivio.keys`): the ledger never sees a raw id, so the file can be
backed up or inspected without exposing whom it concerns.

Many worker processes may write at once, so the database runs in WAL mode, waits (up
to a minute) instead of failing when locked, and takes the write lock up front
(`BEGIN IMMEDIATE`) so that read-check-write sequences cannot interleave.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from oblivio.errors import IdempotencyConflict, IntegrityError, RequestError

REQUEST_KINDS = ("erasure", "corrective")
STATUSES = ("pending", "applied", "promoted", "rejected", "failed")

# Which status each status may move to. `applied -> applied` and `failed -> failed`
# exist because re-processing an interrupted run must be allowed to record again.
_TRANSITIONS = {
    "pending": frozenset({"applied", "rejected", "failed"}),
    "failed": frozenset({"applied", "rejected", "failed"}),
    "applied": frozenset({"promoted", "applied", "failed"}),
    "promoted": frozenset(),
    "rejected": frozenset(),
}
_ACTIONABLE = ("pending", "failed", "applied")
# The statuses a completion callback announces (each at most once per request).
CALLBACK_STATUSES = ("promoted", "rejected", "failed")
_HASH = re.compile(r"[0-9a-f]{64}")
# How long a writer waits for another process's lock before giving up.
_LOCK_TIMEOUT_S = 60

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS requests (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        outcome TEXT,
        error TEXT,
        fingerprint TEXT NOT NULL
    )""",
    # At most one live (not rejected) request per fingerprint, enforced by the database
    # itself so that no code path can record the same deletion twice.
    """CREATE UNIQUE INDEX IF NOT EXISTS requests_live_fingerprint
        ON requests (fingerprint) WHERE status != 'rejected'""",
    "CREATE INDEX IF NOT EXISTS requests_status ON requests (status, created_at)",
    """CREATE TABLE IF NOT EXISTS request_hashes (
        request_id TEXT NOT NULL REFERENCES requests (id),
        role TEXT NOT NULL CHECK (role IN ('subject', 'record')),
        hash TEXT NOT NULL,
        PRIMARY KEY (request_id, role, hash)
    )""",
    "CREATE INDEX IF NOT EXISTS request_hashes_hash ON request_hashes (hash)",
    """CREATE TABLE IF NOT EXISTS tombstones (
        role TEXT NOT NULL CHECK (role IN ('subject', 'record')),
        hash TEXT NOT NULL,
        request_id TEXT NOT NULL REFERENCES requests (id),
        created_at TEXT NOT NULL,
        PRIMARY KEY (role, hash)
    )""",
    # A client's Idempotency-Key (hashed: a key may carry a ticket number) -> the request it
    # created and a digest of the body it came with: a retry finds its request, another body 409.
    """CREATE TABLE IF NOT EXISTS idempotency_keys (
        key_hash TEXT PRIMARY KEY,
        body_digest TEXT NOT NULL,
        request_id TEXT NOT NULL REFERENCES requests (id)
    )""",
    # A request's completion callback (optional) and its deliveries: an outbox, written in the
    # same transaction as the status it announces, so a crash cannot lose or invent one.
    """CREATE TABLE IF NOT EXISTS callbacks (
        request_id TEXT PRIMARY KEY REFERENCES requests (id),
        url TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS callback_deliveries (
        request_id TEXT NOT NULL REFERENCES requests (id),
        status TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'abandoned')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        last_error TEXT,
        PRIMARY KEY (request_id, status)
    )""",
    """CREATE TABLE IF NOT EXISTS certificates (
        request_id TEXT PRIMARY KEY REFERENCES requests (id),
        body TEXT NOT NULL,
        saved_at TEXT NOT NULL
    )""",
)

_SCHEMA_OBJECTS = {re.search(r"EXISTS (\w+)", statement).group(1) for statement in _SCHEMA}

# One statement, so a request and its hashes are read from the same snapshot even
# while other processes commit.
_SELECT = """
    SELECT r.*,
        (SELECT group_concat(hash, ',') FROM request_hashes h
            WHERE h.request_id = r.id AND h.role = 'subject') AS subjects,
        (SELECT group_concat(hash, ',') FROM request_hashes h
            WHERE h.request_id = r.id AND h.role = 'record') AS records
    FROM requests r
"""
_ORDER = " ORDER BY r.created_at, r.id"


def certificate_summary(certificate: dict) -> dict:
    """What a requester may be shown of a certificate: counts, versions and time, no hashes of people."""
    return {k: certificate.get(k) for k in ("route", "records_removed", "model_version", "promoted", "promotion",
                                            "data_version_after", "certified_at")}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _fingerprint(kind: str, subjects: tuple[str, ...], records: tuple[str, ...]) -> str:
    """Identity of a request's content; JSON keeps subjects and records apart."""
    return hashlib.sha256(json.dumps([kind, subjects, records]).encode()).hexdigest()


@dataclass(frozen=True)
class Request:
    """One deletion request as recorded; hashes are sorted and deduplicated."""

    id: str
    kind: str
    subject_hashes: tuple[str, ...]
    record_hashes: tuple[str, ...]
    reason: str
    status: str
    created_at: str
    updated_at: str
    attempts: int
    outcome: dict | None
    error: str | None
    fingerprint: str

    def to_json(self) -> dict:
        """All fields as JSON-safe values, for the CLI and certificates."""
        return {
            "id": self.id,
            "kind": self.kind,
            "subject_hashes": list(self.subject_hashes),
            "record_hashes": list(self.record_hashes),
            "reason": self.reason,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "attempts": self.attempts,
            "outcome": json.loads(json.dumps(self.outcome)),
            "error": self.error,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> Request:
        def hashes(joined: str | None) -> tuple[str, ...]:
            return tuple(sorted(joined.split(","))) if joined else ()

        return cls(
            id=row["id"],
            kind=row["kind"],
            subject_hashes=hashes(row["subjects"]),
            record_hashes=hashes(row["records"]),
            reason=row["reason"],
            status=row["status"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            attempts=row["attempts"],
            outcome=None if row["outcome"] is None else json.loads(row["outcome"]),
            error=row["error"],
            fingerprint=row["fingerprint"],
        )


def _clean_hashes(hashes: Iterable[str], role: str) -> tuple[str, ...]:
    """Sorted, deduplicated keyed hashes, or RequestError.

    The message gives the position, never the value: a malformed "hash" is most likely
    a raw id passed by mistake, and echoing it would leak it into logs.
    """
    if isinstance(hashes, (str, bytes)):
        raise RequestError(
            f"{role.capitalize()} hashes must be a list of hashes, not a single string; "
            "wrap the hash in a list."
        )
    cleaned = set()
    for position, value in enumerate(hashes, start=1):
        if not isinstance(value, str) or not _HASH.fullmatch(value):
            raise RequestError(
                f"{role.capitalize()} hash #{position} is not a keyed hash "
                "(64 lowercase hex characters). Hash raw ids with oblivio.keys.keyed_hash "
                "first: the ledger never stores raw ids."
            )
        cleaned.add(value)
    return tuple(sorted(cleaned))


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL mode, retrying while another process holds a lock.

    The switch needs an exclusive lock, and SQLite reports "database is locked" at once
    (without its busy timeout, to avoid a deadlock) when processes open a fresh file
    together; once the file is in WAL mode the pragma takes no such lock.
    """
    deadline = time.monotonic() + _LOCK_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))


def _dump(obj: dict, what: str) -> str:
    """JSON text for storage; sorted keys keep identical content byte-identical."""
    if not isinstance(obj, dict):
        raise TypeError(f"{what} must be a dict, not {type(obj).__name__}")
    return json.dumps(obj, sort_keys=True)


@dataclass(frozen=True)
class Submission:
    """One request to record: keyed hashes only; `idempotency` is (key hash, body digest)."""

    kind: str
    subject_hashes: Iterable[str] = ()
    record_hashes: Iterable[str] = ()
    reason: str = ""
    idempotency: tuple[str, str] | None = None
    callback_url: str | None = None  # checked by the caller (oblivio.callbacks.check_url)


@dataclass(frozen=True)
class Delivery:
    """One completion callback to send: the request's status it announces, and where."""

    request_id: str
    status: str
    url: str
    attempts: int


class Ledger:
    """Deletion requests, tombstones and certificates in one SQLite file.

    The connection opens on first use and belongs to the process that opened it, so a
    Ledger may be created before workers fork or be handed to spawned workers.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None

    def __getstate__(self) -> dict:
        """Pickle only the path: a connection cannot cross process boundaries."""
        return {"path": self.path, "_conn": None, "_pid": None}

    def _db(self) -> sqlite3.Connection:
        """The open connection, (re)opened lazily and again in a forked child.

        A forked child must never use its parent's SQLite connection (it would corrupt
        locks), so it is abandoned there, not closed, and a fresh one is opened.
        """
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=_LOCK_TIMEOUT_S, isolation_level=None)
            try:
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout={_LOCK_TIMEOUT_S * 1000}")
                _enable_wal(conn)
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                # a read first: the schema's write lock on every open serialises concurrent writers
                known = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
                if not _SCHEMA_OBJECTS <= known:
                    conn.execute("BEGIN IMMEDIATE")
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute("COMMIT")
            except BaseException:
                conn.close()
                raise
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the lock from the start; all or nothing."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = self._pid = None

    # Requests

    def submit(
        self,
        *,
        kind: str,
        subject_hashes: Iterable[str] = (),
        record_hashes: Iterable[str] = (),
        reason: str = "",
        idempotency: tuple[str, str] | None = None,
    ) -> tuple[Request, bool]:
        """Record a request durably (committed before return); returns (request, created).

        Idempotent on content: while an identical request is pending, applied, promoted
        or failed, it is returned with created=False, so a retried submission is never
        applied twice. Only after a rejection may the same request be filed anew.

        `idempotency` is (key hash, body digest) from a client's Idempotency-Key: the same
        key with the same body returns the request it first made (even a rejected one);
        with another body it raises IdempotencyConflict. Checked in the same transaction.
        """
        (result,) = self.submit_many([Submission(kind=kind, subject_hashes=subject_hashes,
                                                 record_hashes=record_hashes, reason=reason,
                                                 idempotency=idempotency)])
        if isinstance(result, Exception):
            raise result
        return result

    def submit_many(self, submissions: Sequence[Submission]) -> list[tuple[Request, bool] | RequestError]:
        """Several submissions in one transaction (one commit, one fsync): a long-lived intake's
        group commit. Each gets what `submit` would return, or the RequestError it would raise;
        one refused submission does not affect the others."""
        out: list[tuple[Request, bool] | RequestError] = []
        with self._write() as db:
            for sub in submissions:
                try:
                    out.append(self._submit_in(db, sub))
                except RequestError as err:
                    out.append(err)
        return out

    def _submit_in(self, db: sqlite3.Connection, sub: Submission) -> tuple[Request, bool]:
        """Checks first, writes last: a refused submission leaves nothing behind in the transaction."""
        if sub.kind not in REQUEST_KINDS:
            raise RequestError(
                f"Unknown request kind {sub.kind!r}; use one of: {', '.join(REQUEST_KINDS)}."
            )
        subjects = _clean_hashes(sub.subject_hashes, "subject")
        records = _clean_hashes(sub.record_hashes, "record")
        if not subjects and not records:
            raise RequestError(
                "The request names no subject and no record; "
                "give at least one subject hash or record hash."
            )
        if not isinstance(sub.reason, str):
            raise RequestError("The request reason must be text.")
        fingerprint = _fingerprint(sub.kind, subjects, records)
        idempotency = sub.idempotency
        if idempotency is not None:
            known = db.execute("SELECT body_digest, request_id FROM idempotency_keys WHERE key_hash = ?",
                               (idempotency[0],)).fetchone()
            if known is not None:
                if known["body_digest"] != idempotency[1]:
                    raise IdempotencyConflict(
                        "This Idempotency-Key was already used with a different request body; "
                        "use a new key for a new request, or resend the original body.")
                return self._get(db, known["request_id"]), False
        row = db.execute(
            "SELECT id FROM requests WHERE fingerprint = ? AND status != 'rejected'",
            (fingerprint,),
        ).fetchone()
        if row is not None:
            self._remember_key(db, idempotency, row["id"])
            return self._get(db, row["id"]), False
        request_id = "req-" + uuid.uuid4().hex[:16]
        now = _now()
        db.execute(
            "INSERT INTO requests (id, kind, reason, status, created_at, updated_at, "
            "fingerprint) VALUES (?, ?, ?, 'pending', ?, ?, ?)",
            (request_id, sub.kind, sub.reason, now, now, fingerprint),
        )
        db.executemany(
            "INSERT INTO request_hashes (request_id, role, hash) VALUES (?, ?, ?)",
            [(request_id, "subject", h) for h in subjects]
            + [(request_id, "record", h) for h in records],
        )
        self._remember_key(db, idempotency, request_id)
        if sub.callback_url:
            db.execute("INSERT INTO callbacks (request_id, url) VALUES (?, ?)", (request_id, sub.callback_url))
        return self._get(db, request_id), True

    @staticmethod
    def _remember_key(db: sqlite3.Connection, idempotency: tuple[str, str] | None, request_id: str) -> None:
        if idempotency is not None:
            db.execute("INSERT INTO idempotency_keys (key_hash, body_digest, request_id) VALUES (?, ?, ?)",
                       (*idempotency, request_id))

    def _get(self, db: sqlite3.Connection, request_id: str) -> Request:
        row = db.execute(_SELECT + " WHERE r.id = ?", (request_id,)).fetchone()
        if row is None:
            raise RequestError(
                f"No deletion request has id {request_id!r}. "
                "Run `oblivio requests` to list the recorded requests."
            )
        return Request._from_row(row)

    def get(self, request_id: str) -> Request:
        return self._get(self._db(), request_id)

    def list(self, *, status: str | None = None) -> list[Request]:
        """All requests, or those in one status, oldest first."""
        if status is None:
            rows = self._db().execute(_SELECT + _ORDER)
        elif status in STATUSES:
            rows = self._db().execute(_SELECT + " WHERE r.status = ?" + _ORDER, (status,))
        else:
            raise RequestError(f"Unknown status {status!r}; use one of: {', '.join(STATUSES)}.")
        return [Request._from_row(row) for row in rows]

    def actionable(self) -> list[Request]:
        """Requests processing must (re)do, oldest first.

        Applied requests are included: they are done but not yet promoted, and a crash
        before promotion must not lose them (re-applying is idempotent).
        """
        marks = ", ".join("?" * len(_ACTIONABLE))
        rows = self._db().execute(_SELECT + f" WHERE r.status IN ({marks})" + _ORDER, _ACTIONABLE)
        return [Request._from_row(row) for row in rows]

    def standing_corrections(self) -> list[Request]:
        """Corrective requests already in effect; every later retrain must re-apply them."""
        rows = self._db().execute(
            _SELECT + " WHERE r.kind = 'corrective' AND r.status IN ('applied', 'promoted')"
            + _ORDER
        )
        return [Request._from_row(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Requests per status; every status is present so dashboards need no defaults."""
        counts = dict.fromkeys(STATUSES, 0)
        for row in self._db().execute("SELECT status, count(*) AS n FROM requests GROUP BY status"):
            counts[row["status"]] = row["n"]
        return counts

    # Status transitions

    def _transition(self, ids: Sequence[str], status: str, assignments: str, values: tuple) -> None:
        """Move every id to `status` in one transaction, or none if any move is invalid."""
        if isinstance(ids, str):
            raise TypeError("ids must be a sequence of request ids, not a single string")
        unique = list(dict.fromkeys(ids))
        with self._write() as db:
            for request_id in unique:
                current = self._get(db, request_id).status
                if status not in _TRANSITIONS[current]:
                    raise IntegrityError(
                        f"Request {request_id} is {current} and cannot become {status}"
                        f"{' (it is final)' if not _TRANSITIONS[current] else ''}. "
                        "Nothing was changed; run `oblivio requests` to review its history."
                    )
            now = _now()
            db.executemany(
                f"UPDATE requests SET status = ?, updated_at = ?, {assignments} WHERE id = ?",
                [(status, now, *values, request_id) for request_id in unique],
            )
            if status in CALLBACK_STATUSES:
                db.executemany(
                    "INSERT OR IGNORE INTO callback_deliveries (request_id, status, state, next_attempt_at) "
                    "SELECT request_id, ?, 'pending', ? FROM callbacks WHERE request_id = ?",
                    [(status, now, request_id) for request_id in unique],
                )

    def mark_applied(self, ids: Sequence[str], *, outcome: dict) -> None:
        self._transition(ids, "applied", "outcome = ?, error = NULL", (_dump(outcome, "outcome"),))

    def mark_promoted(self, ids: Sequence[str], *, outcome: dict) -> None:
        self._transition(ids, "promoted", "outcome = ?, error = NULL", (_dump(outcome, "outcome"),))

    def mark_rejected(self, request_id: str, *, reason: str) -> None:
        """Refuse a request for good; the reason is kept in `error` for the requester."""
        self._transition([request_id], "rejected", "error = ?", (reason,))

    def note_error(self, ids: Sequence[str], *, error: str) -> None:
        """An applied request whose purge failed: it stays applied (its data is gone from the
        training set) with the error kept, and the next run finishes the purge."""
        self._transition(ids, "applied", "error = ?, attempts = attempts + 1", (error,))

    def mark_failed(self, ids: Sequence[str], *, error: str) -> None:
        """Record a failed attempt; the request stays actionable and will be retried."""
        self._transition(ids, "failed", "error = ?, attempts = attempts + 1", (error,))

    # Tombstones: once a subject or record is erased, ingest drops it forever.

    def _add_tombstones(self, hashes: Iterable[str], role: str, request_id: str) -> None:
        cleaned = _clean_hashes(hashes, role)
        with self._write() as db:
            self._get(db, request_id)
            now = _now()
            db.executemany(
                "INSERT OR IGNORE INTO tombstones (role, hash, request_id, created_at) "
                "VALUES (?, ?, ?, ?)",
                [(role, h, request_id, now) for h in cleaned],
            )

    def _tombstones(self, role: str) -> frozenset[str]:
        rows = self._db().execute("SELECT hash FROM tombstones WHERE role = ?", (role,))
        return frozenset(row["hash"] for row in rows)

    def add_tombstones(self, subject_hashes: Iterable[str], *, request_id: str) -> None:
        """Bar erased subjects from every future ingest; repeating it is harmless."""
        self._add_tombstones(subject_hashes, "subject", request_id)

    def tombstones(self) -> frozenset[str]:
        return self._tombstones("subject")

    def add_record_tombstones(self, record_hashes: Iterable[str], *, request_id: str) -> None:
        """Bar single erased records from every future ingest; repeating it is harmless."""
        self._add_tombstones(record_hashes, "record", request_id)

    def record_tombstones(self) -> frozenset[str]:
        return self._tombstones("record")

    # Certificates

    def save_certificate(self, request_id: str, certificate: dict) -> None:
        """Keep the latest certificate: re-processing a request replaces the old one."""
        body = _dump(certificate, "certificate")
        with self._write() as db:
            self._get(db, request_id)
            db.execute(
                "INSERT INTO certificates (request_id, body, saved_at) VALUES (?, ?, ?) "
                "ON CONFLICT (request_id) DO UPDATE SET body = excluded.body, "
                "saved_at = excluded.saved_at",
                (request_id, body, _now()),
            )

    def certificate(self, request_id: str) -> dict | None:
        row = self._db().execute(
            "SELECT body FROM certificates WHERE request_id = ?", (request_id,)
        ).fetchone()
        return None if row is None else json.loads(row["body"])

    # Completion callbacks (the outbox)

    def due_callbacks(self, now: datetime | None = None) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, oldest first."""
        at = (now or datetime.now(timezone.utc)).isoformat(timespec="microseconds")
        rows = self._db().execute(
            "SELECT d.request_id, d.status, d.attempts, c.url FROM callback_deliveries d "
            "JOIN callbacks c ON c.request_id = d.request_id "
            "WHERE d.state = 'pending' AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at", (at,))
        return [Delivery(r["request_id"], r["status"], r["url"], r["attempts"]) for r in rows]

    def callback_sent(self, delivery: Delivery, *, error: str | None, retry_at: datetime | None) -> None:
        """Record one attempt: delivered (no error), retried at `retry_at`, or abandoned (no `retry_at`)."""
        state = "delivered" if error is None else ("pending" if retry_at else "abandoned")
        with self._write() as db:
            db.execute(
                "UPDATE callback_deliveries SET state = ?, attempts = attempts + 1, last_error = ?, "
                "next_attempt_at = coalesce(?, next_attempt_at) WHERE request_id = ? AND status = ?",
                (state, error, retry_at.isoformat(timespec="microseconds") if retry_at else None,
                 delivery.request_id, delivery.status))

    def callbacks_of(self, request_id: str) -> list[dict]:
        """A request's deliveries (state, attempts, last error), for its status page."""
        rows = self._db().execute(
            "SELECT status, state, attempts, last_error FROM callback_deliveries WHERE request_id = ? "
            "ORDER BY rowid", (request_id,))
        return [dict(r) for r in rows]
