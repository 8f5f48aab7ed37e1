"""Completion callbacks: allowed hosts, the outbox written with each settling status, signed
delivery to a real receiver on loopback, backoff on a settable clock, abandonment."""
from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path

import pytest
import yaml

from helpers import CallbackReceiver
from oblivio import callbacks, intake
from oblivio.errors import RequestError
from oblivio.ledger import Ledger
from oblivio.workspace import WorkspaceDir

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)  # after every delivery these tests queue
H = "ab" * 32


@pytest.fixture()
def ws(tmp_path: Path) -> WorkspaceDir:
    """A workspace directory with the shipped params, callbacks allowed to loopback."""
    params = yaml.safe_load(resources.files("oblivio.templates").joinpath("params.yaml").read_text())
    params["requests"].update(callback_hosts=["127.0.0.1"], callback_attempts=3, callback_backoff_seconds=5)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return WorkspaceDir(tmp_path)


def _request(ws: WorkspaceDir, url: str | None) -> str:
    ledger = Ledger(ws.ledger_path)
    try:
        request, _ = ledger.submit_many([intake.Submission(kind="erasure", subject_hashes=[H], callback_url=url)])[0]
        return request.id
    finally:
        ledger.close()


def _settle(ws: WorkspaceDir, request_id: str, how: str) -> None:
    ledger = Ledger(ws.ledger_path)
    try:
        if how == "rejected":
            ledger.mark_rejected(request_id, reason="no record matches the request's 1 subject(s)")
        elif how == "failed":
            ledger.mark_failed([request_id], error="boom")
        else:
            ledger.mark_applied([request_id], outcome={"records_removed": 3})
            if how == "promoted":
                ledger.mark_promoted([request_id], outcome={"records_removed": 3})
    finally:
        ledger.close()


@pytest.mark.parametrize("url, problem", [
    ("ftp://127.0.0.1/x", "http\\(s\\) URL"),
    ("http://user:pw@127.0.0.1/x", "no credentials"),
    ("http:///nohost", "with a host"),
    ("https://evil.example/x", "not in requests.callback_hosts"),
    ("http://127.0.0.1/" + "x" * 3000, "at most 2048"),
])
def test_a_callback_goes_only_to_an_allowed_http_host(url, problem):
    with pytest.raises(RequestError, match=problem):
        callbacks.check_url(url, ["127.0.0.1"])
    assert callbacks.check_url("http://127.0.0.1:8080/hook", ["127.0.0.1"]) == "http://127.0.0.1:8080/hook"
    assert callbacks.check_url(None, []) is None


def test_callbacks_are_off_until_hosts_are_listed():
    with pytest.raises(RequestError, match="callbacks are off"):
        callbacks.check_url("http://127.0.0.1/hook", [])


def test_the_signature_is_hmac_sha256_of_timestamp_and_body_and_fails_when_tampered():
    body, token = b'{"status": "promoted"}', "tok" * 10
    header = callbacks.sign(body, token, 1_700_000_000)
    oracle = hmac.new(token.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={oracle}"
    assert callbacks.verify(body, header, token, now=1_700_000_010)
    assert not callbacks.verify(body + b" ", header, token, now=1_700_000_010)
    assert not callbacks.verify(body, header, "other-token", now=1_700_000_010)
    assert not callbacks.verify(body, header, token, now=1_700_000_000 + 3600)  # a replay, an hour later
    assert not callbacks.verify(body, "garbage", token)


@pytest.mark.parametrize("how, queued", [("promoted", ["promoted"]), ("rejected", ["rejected"]),
                                         ("failed", ["failed"]), ("applied", [])])
def test_each_settling_status_queues_one_delivery_in_its_own_transaction(ws, how, queued):
    request_id = _request(ws, "http://127.0.0.1:9/hook")
    _settle(ws, request_id, how)
    if how == "failed":
        _settle(ws, request_id, "failed")  # a second failed attempt is not announced twice
    ledger = Ledger(ws.ledger_path)
    try:
        assert [d.status for d in ledger.due_callbacks(datetime.now(timezone.utc))] == queued
        assert [c["state"] for c in ledger.callbacks_of(request_id)] == ["pending"] * len(queued)
    finally:
        ledger.close()


def test_a_request_without_a_callback_queues_nothing(ws):
    _settle(ws, _request(ws, None), "promoted")
    ledger = Ledger(ws.ledger_path)
    try:
        assert ledger.due_callbacks(datetime.now(timezone.utc)) == []
    finally:
        ledger.close()


def test_a_failing_receiver_is_retried_on_its_backoff_then_told_signed(ws):
    with CallbackReceiver(fail=2) as receiver:
        request_id = _request(ws, receiver.url)
        _settle(ws, request_id, "promoted")
        assert callbacks.deliver_due(ws, now=T0) == callbacks.DeliveryReport(retrying=1)
        assert callbacks.deliver_due(ws, now=T0 + timedelta(seconds=4)) == callbacks.DeliveryReport()  # not due
        assert callbacks.deliver_due(ws, now=T0 + timedelta(seconds=5)) == callbacks.DeliveryReport(retrying=1)
        assert callbacks.deliver_due(ws, now=T0 + timedelta(seconds=14)) == callbacks.DeliveryReport()  # 5 + 10
        assert callbacks.deliver_due(ws, now=T0 + timedelta(seconds=15)) == callbacks.DeliveryReport(delivered=1)
        assert callbacks.deliver_due(ws, now=T0 + timedelta(days=1)) == callbacks.DeliveryReport()  # once only
    assert len(receiver.received) == 3
    body, headers = receiver.received[-1]
    assert callbacks.verify(body, headers[callbacks.SIGNATURE_HEADER], ws.intake_token,
                            now=(T0 + timedelta(seconds=15)).timestamp())
    told = json.loads(body)
    assert told["request_id"] == request_id and told["status"] == "promoted" and told["event"] == callbacks.EVENT
    assert H not in body.decode()  # not even the keyed hash of the person
    ledger = Ledger(ws.ledger_path)
    try:
        assert ledger.callbacks_of(request_id) == [{"status": "promoted", "state": "delivered", "attempts": 3,
                                                    "last_error": None}]
        assert ledger.get(request_id).status == "promoted"  # the request never depended on it
    finally:
        ledger.close()


def test_a_receiver_that_never_answers_is_abandoned_after_the_configured_attempts(ws):
    with CallbackReceiver(fail=99) as receiver:
        request_id = _request(ws, receiver.url)
        _settle(ws, request_id, "rejected")
        reports = [callbacks.deliver_due(ws, now=T0 + timedelta(seconds=s)) for s in (0, 5, 15, 35, 75)]
    assert reports[:3] == [callbacks.DeliveryReport(retrying=1), callbacks.DeliveryReport(retrying=1),
                           callbacks.DeliveryReport(abandoned=1)]
    assert reports[3:] == [callbacks.DeliveryReport()] * 2
    assert json.loads(receiver.received[0][0])["error"].startswith("no record matches")
    ledger = Ledger(ws.ledger_path)
    try:
        (state,) = ledger.callbacks_of(request_id)
        assert state["state"] == "abandoned" and state["attempts"] == 3 and "503" in state["last_error"]
    finally:
        ledger.close()


def test_an_unreachable_receiver_is_a_retry_not_an_error(ws):
    request_id = _request(ws, "http://127.0.0.1:9/hook")  # the discard port: nothing listens
    _settle(ws, request_id, "failed")
    assert callbacks.deliver_due(ws, now=T0) == callbacks.DeliveryReport(retrying=1)


def test_record_refuses_a_callback_to_a_host_not_listed_and_records_nothing(ws):
    with pytest.raises(RequestError, match="not in requests.callback_hosts"):
        intake.record(ws, subjects=["10234"], callback_url="https://elsewhere.example/hook")
    assert not ws.ledger_path.exists() or Ledger(ws.ledger_path).list() == []
