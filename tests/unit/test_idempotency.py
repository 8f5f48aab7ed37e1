"""Idempotency-Key in the ledger: same key and body -> the same request, another body -> 409, races -> one."""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from oblivio.errors import IdempotencyConflict
from oblivio.ledger import Ledger
from oblivio.results import ProcessResult, RequestResult

H = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4)]


def test_same_key_same_body_returns_the_first_request(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    first, created = ledger.submit(kind="erasure", subject_hashes=[H[0]], idempotency=("k" * 64, "body-1"))
    again, created_again = ledger.submit(kind="erasure", subject_hashes=[H[0]], idempotency=("k" * 64, "body-1"))
    assert created and not created_again and again.id == first.id


def test_same_key_other_body_conflicts_and_records_nothing(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.submit(kind="erasure", subject_hashes=[H[0]], idempotency=("k" * 64, "body-1"))
    with pytest.raises(IdempotencyConflict, match="different request body"):
        ledger.submit(kind="erasure", subject_hashes=[H[1]], idempotency=("k" * 64, "body-2"))
    assert len(ledger.list()) == 1


def test_a_key_returns_its_request_even_after_rejection(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    made, _ = ledger.submit(kind="erasure", subject_hashes=[H[2]], idempotency=("j" * 64, "b"))
    ledger.mark_rejected(made.id, reason="unknown ids")
    again, created = ledger.submit(kind="erasure", subject_hashes=[H[2]], idempotency=("j" * 64, "b"))
    assert again.id == made.id and again.status == "rejected" and not created


def test_concurrent_retries_of_one_key_make_one_request(tmp_path):
    path = tmp_path / "l.db"

    def submit(_):
        ledger = Ledger(path)
        try:
            return ledger.submit(kind="erasure", subject_hashes=[H[3]], idempotency=("r" * 64, "b"))[0].id
        finally:
            ledger.close()

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(submit, range(32)))
    assert len(ids) == 1 and len(Ledger(path).list()) == 1


def test_results_round_trip_their_summary_exactly():
    summary = {"status": "nothing to do", "request_ids": [], "rejected": [], "seconds": 0.5}
    result = ProcessResult.from_dict(summary)
    assert result.to_dict() == summary and result.status == "nothing to do" and result.model_version is None
    made = RequestResult(request_ids=["req-1"], status="pending", created=True, announced=False, due="d")
    assert made.to_dict() == {"request_ids": ["req-1"], "status": "pending", "created": True, "announced": False,
                              "due": "d"} and made.request_id == "req-1"
    with pytest.raises(AttributeError):
        made.status = "promoted"  # frozen
