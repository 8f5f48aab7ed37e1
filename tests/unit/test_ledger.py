"""The deletion ledger: durable, idempotent, all-or-nothing, concurrent, and free of raw ids."""
from __future__ import annotations

import hashlib
import multiprocessing
import queue
import re
from pathlib import Path

import pytest

from oblivio.errors import IntegrityError, RequestError
from oblivio.keys import keyed_hash
from oblivio.ledger import REQUEST_KINDS, STATUSES, Ledger, Request


def h(label: object) -> str:
    """A well-formed stand-in for a keyed hash."""
    return hashlib.sha256(str(label).encode()).hexdigest()


@pytest.fixture
def ledger(tmp_path: Path):
    led = Ledger(tmp_path / "state" / "ledger.db")
    yield led
    led.close()


def test_submit_round_trips_every_field_and_is_durable(ledger: Ledger) -> None:
    req, created = ledger.submit(
        kind="erasure",
        subject_hashes=[h("s2"), h("s1"), h("s2")],
        record_hashes=[h("r1")],
        reason="GDPR art. 17",
    )
    assert created
    assert re.fullmatch(r"req-[0-9a-f]{16}", req.id)
    assert req.kind == "erasure"
    assert req.subject_hashes == tuple(sorted({h("s1"), h("s2")}))
    assert req.record_hashes == (h("r1"),)
    assert req.reason == "GDPR art. 17"
    assert req.status == "pending"
    assert req.attempts == 0 and req.outcome is None and req.error is None
    assert req.created_at == req.updated_at and req.created_at.endswith("+00:00")
    assert re.fullmatch(r"[0-9a-f]{64}", req.fingerprint)
    assert ledger.get(req.id) == req

    other = Ledger(ledger.path)
    try:
        assert other.get(req.id) == req
    finally:
        other.close()

    as_json = req.to_json()
    assert as_json["subject_hashes"] == list(req.subject_hashes)
    assert as_json["record_hashes"] == [h("r1")]
    assert set(as_json) == set(Request.__dataclass_fields__)


def test_unknown_id_names_it_and_suggests_listing(ledger: Ledger) -> None:
    with pytest.raises(RequestError, match=r"req-0000000000000000.*oblivio requests"):
        ledger.get("req-0000000000000000")


def test_resubmission_is_idempotent_until_rejected(ledger: Ledger) -> None:
    first, created = ledger.submit(kind="erasure", subject_hashes=[h(1), h(2)])
    again, created_again = ledger.submit(kind="erasure", subject_hashes=[h(2), h(1), h(1)])
    assert created and not created_again
    assert again.id == first.id

    corrective, created_corrective = ledger.submit(kind="corrective", subject_hashes=[h(1), h(2)])
    assert created_corrective and corrective.id != first.id

    as_record, created_as_record = ledger.submit(kind="erasure", record_hashes=[h(1), h(2)])
    assert created_as_record and as_record.id != first.id

    ledger.mark_failed([first.id], error="disk full")
    assert ledger.submit(kind="erasure", subject_hashes=[h(1), h(2)])[0].id == first.id

    ledger.mark_rejected(first.id, reason="identity not verified")
    renewed, created_renewed = ledger.submit(kind="erasure", subject_hashes=[h(1), h(2)])
    assert created_renewed and renewed.id != first.id
    assert renewed.fingerprint == first.fingerprint
    assert ledger.get(first.id).status == "rejected"
    assert ledger.get(first.id).error == "identity not verified"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "forget", "subject_hashes": [h(1)]}, "Unknown request kind"),
        ({"kind": "erasure"}, "no subject and no record"),
        ({"kind": "erasure", "subject_hashes": [h(1), "alice"]}, "hash #2 is not a keyed hash"),
        ({"kind": "erasure", "record_hashes": [h(1).upper()]}, "hash #1 is not a keyed hash"),
        ({"kind": "erasure", "subject_hashes": h(1)}, "not a single string"),
    ],
)
def test_bad_requests_are_refused_and_write_nothing(ledger: Ledger, kwargs, message) -> None:
    ledger.submit(kind="erasure", subject_hashes=[h("existing")])
    before = ledger.counts()
    with pytest.raises(RequestError, match=message) as err:
        ledger.submit(**kwargs)
    assert "alice" not in str(err.value)
    assert ledger.counts() == before
    assert sum(before.values()) == 1


def test_valid_transition_chain(ledger: Ledger) -> None:
    req, _ = ledger.submit(kind="erasure", subject_hashes=[h(1)])
    ledger.mark_applied([req.id], outcome={"shards": [3]})
    applied = ledger.get(req.id)
    assert applied.status == "applied" and applied.outcome == {"shards": [3]}
    assert applied.updated_at >= req.updated_at
    ledger.mark_applied([req.id], outcome={"shards": [3], "rerun": True})
    ledger.mark_promoted([req.id], outcome={"model": "v2"})
    promoted = ledger.get(req.id)
    assert promoted.status == "promoted" and promoted.outcome == {"model": "v2"}
    assert ledger.counts() == {**dict.fromkeys(STATUSES, 0), "promoted": 1}


@pytest.mark.parametrize("final", ["promoted", "rejected"])
def test_invalid_transition_changes_nothing(ledger: Ledger, final: str) -> None:
    done, _ = ledger.submit(kind="erasure", subject_hashes=[h("done")])
    if final == "promoted":
        ledger.mark_applied([done.id], outcome={})
        ledger.mark_promoted([done.id], outcome={"model": "v2"})
    else:
        ledger.mark_rejected(done.id, reason="duplicate")
    fresh, _ = ledger.submit(kind="erasure", subject_hashes=[h("fresh")])
    done_before = ledger.get(done.id)

    with pytest.raises(IntegrityError, match=rf"{done.id}.*{final}.*applied"):
        ledger.mark_applied([fresh.id, done.id], outcome={"shards": [1]})

    assert ledger.get(fresh.id) == fresh
    assert ledger.get(done.id) == done_before


def test_unknown_id_in_a_mark_changes_nothing(ledger: Ledger) -> None:
    req, _ = ledger.submit(kind="erasure", subject_hashes=[h(1)])
    with pytest.raises(RequestError, match="req-ffffffffffffffff"):
        ledger.mark_failed([req.id, "req-ffffffffffffffff"], error="boom")
    assert ledger.get(req.id) == req


def test_failure_counts_attempts_and_stays_actionable(ledger: Ledger) -> None:
    req, _ = ledger.submit(kind="erasure", subject_hashes=[h(1)])
    ledger.mark_failed([req.id], error="GPU lost")
    ledger.mark_failed([req.id, req.id], error="GPU lost again")
    failed = ledger.get(req.id)
    assert failed.status == "failed"
    assert failed.attempts == 2
    assert failed.error == "GPU lost again"
    assert [r.id for r in ledger.actionable()] == [req.id]
    ledger.mark_applied([req.id], outcome={"ok": True})
    assert ledger.get(req.id).error is None


def test_actionable_is_unfinished_work_oldest_first(ledger: Ledger) -> None:
    ids = {}
    for name in ["pending", "failed", "applied", "promoted", "rejected"]:
        ids[name] = ledger.submit(kind="erasure", subject_hashes=[h(name)])[0].id
    ledger.mark_failed([ids["failed"]], error="x")
    ledger.mark_applied([ids["applied"], ids["promoted"]], outcome={})
    ledger.mark_promoted([ids["promoted"]], outcome={})
    ledger.mark_rejected(ids["rejected"], reason="no")

    actionable = ledger.actionable()
    assert [r.id for r in actionable] == [ids["pending"], ids["failed"], ids["applied"]]
    assert [r.id for r in ledger.list()] == list(ids.values())
    assert [r.id for r in ledger.list(status="applied")] == [ids["applied"]]
    with pytest.raises(RequestError, match="Unknown status"):
        ledger.list(status="done")


def test_tombstones_are_idempotent_sets(ledger: Ledger) -> None:
    req, _ = ledger.submit(kind="erasure", subject_hashes=[h("s")], record_hashes=[h("r")])
    ledger.add_tombstones([h("s"), h("s2")], request_id=req.id)
    ledger.add_tombstones([h("s")], request_id=req.id)
    ledger.add_record_tombstones([h("r")], request_id=req.id)
    ledger.add_record_tombstones([h("r")], request_id=req.id)

    assert ledger.tombstones() == frozenset({h("s"), h("s2")})
    assert ledger.record_tombstones() == frozenset({h("r")})
    assert isinstance(ledger.tombstones(), frozenset)
    with pytest.raises(RequestError):
        ledger.add_tombstones([h("x")], request_id="req-ffffffffffffffff")
    assert h("x") not in ledger.tombstones()


def test_standing_corrections_are_corrective_and_in_effect(ledger: Ledger) -> None:
    pending_fix, _ = ledger.submit(kind="corrective", record_hashes=[h(1)])
    applied_fix, _ = ledger.submit(kind="corrective", record_hashes=[h(2)])
    promoted_fix, _ = ledger.submit(kind="corrective", record_hashes=[h(3)])
    rejected_fix, _ = ledger.submit(kind="corrective", record_hashes=[h(4)])
    erasure, _ = ledger.submit(kind="erasure", record_hashes=[h(5)])
    ledger.mark_applied([applied_fix.id, promoted_fix.id, erasure.id], outcome={})
    ledger.mark_promoted([promoted_fix.id, erasure.id], outcome={})
    ledger.mark_rejected(rejected_fix.id, reason="bad")

    standing = ledger.standing_corrections()
    assert [r.id for r in standing] == [applied_fix.id, promoted_fix.id]
    assert pending_fix.id not in {r.id for r in standing}


def test_certificate_latest_wins(ledger: Ledger) -> None:
    req, _ = ledger.submit(kind="erasure", subject_hashes=[h(1)])
    assert ledger.certificate(req.id) is None
    ledger.save_certificate(req.id, {"version": 1, "shards": [0]})
    assert ledger.certificate(req.id) == {"version": 1, "shards": [0]}
    ledger.save_certificate(req.id, {"version": 2})
    assert ledger.certificate(req.id) == {"version": 2}
    with pytest.raises(RequestError):
        ledger.save_certificate("req-ffffffffffffffff", {"version": 1})


WORKERS = 8
PER_WORKER = 50


def _submit_many(path: Path, worker: int, start, results) -> None:
    """Runs in a spawned process: its own Ledger, distinct requests plus one shared."""
    start.wait(timeout=60)
    ledger = Ledger(path)
    ids = []
    shared = None
    for i in range(PER_WORKER):
        ids.append(ledger.submit(kind="erasure", subject_hashes=[h((worker, i))])[0].id)
        if i == PER_WORKER // 2:
            shared = ledger.submit(kind=REQUEST_KINDS[0], subject_hashes=[h("shared")])
    ledger.close()
    results.put((ids, shared[0].id, shared[1]))


def test_concurrent_writers_record_everything_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [
        ctx.Process(target=_submit_many, args=(path, w, start, results)) for w in range(WORKERS)
    ]
    outputs = []
    try:
        for proc in procs:
            proc.start()
        while len(outputs) < WORKERS:
            try:
                outputs.append(results.get(timeout=1))
            except queue.Empty:
                crashed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                assert not crashed, f"a writer crashed (exit codes {crashed}); see its stderr"
        for proc in procs:
            proc.join(timeout=30)
            assert proc.exitcode == 0
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()

    distinct_ids = [i for ids, _, _ in outputs for i in ids]
    shared_ids = {shared_id for _, shared_id, _ in outputs}
    assert len(set(distinct_ids)) == WORKERS * PER_WORKER
    assert len(shared_ids) == 1
    assert sum(created for _, _, created in outputs) == 1

    ledger = Ledger(path)
    try:
        recorded = ledger.list()
        assert len(recorded) == WORKERS * PER_WORKER + 1
        assert {r.id for r in recorded} == set(distinct_ids) | shared_ids
        assert [r for r in recorded if r.subject_hashes == (h("shared"),)][0].id in shared_ids
    finally:
        ledger.close()


def test_database_holds_no_raw_ids(tmp_path: Path) -> None:
    secret = bytes(range(32))
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    alice, bob = (keyed_hash(secret, "ledger-subject", name) for name in ("alice", "bob"))
    req, _ = ledger.submit(kind="erasure", subject_hashes=[alice, bob], reason="erasure request")
    ledger.add_tombstones([alice, bob], request_id=req.id)
    ledger.mark_applied([req.id], outcome={"removed": 2})
    ledger.save_certificate(req.id, {"subjects": [alice, bob]})

    wal = path.with_name(path.name + "-wal")
    assert wal.exists(), "the writes should still be in the WAL while the ledger is open"
    while_open = path.read_bytes() + wal.read_bytes()
    ledger.close()
    after_close = path.read_bytes()
    for data in (while_open, after_close):
        assert alice.encode() in data, "the check must look where the hashes are stored"
        assert b"alice" not in data and b"bob" not in data
