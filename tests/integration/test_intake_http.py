"""The HTTP intake against a real workspace: real placed data (`oblivio stage ingest`), the real
ledger, the real FastAPI app (in process, through Starlette's TestClient), a settable clock."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from helpers import cli, csv_workspace

SUBJECT = "100007"  # a person of the synthetic table (ids 100000..100239)


@pytest.fixture(scope="module")
def placed(tmp_path_factory):
    ws = csv_workspace(tmp_path_factory.mktemp("intake"))
    cli(ws, "stage", "ingest")
    return ws


@pytest.fixture
def intake(placed):
    from oblivio import Workspace
    from oblivio.http_intake import create_app

    ws = Workspace.open(placed)
    announced: list[str] = []
    clock = {"now": datetime.now(timezone.utc)}
    app = create_app(ws, token=ws.layout.intake_token, announce=lambda rid: announced.append(rid) or True,
                     clock=lambda: clock["now"], max_body=4096)
    client = TestClient(app)
    client.headers["Authorization"] = f"Bearer {ws.layout.intake_token}"
    yield client, ws, announced, clock
    client.close()


def ledger_rows(ws) -> list[tuple]:
    from oblivio.ledger import Ledger

    ledger = Ledger(ws.layout.ledger_path)
    try:
        return [(r.id, r.status) for r in ledger.list()]
    finally:
        ledger.close()


def test_token_file_is_owner_only(placed):
    mode = (placed / ".oblivio" / "intake-token").stat().st_mode & 0o777
    assert mode == 0o600


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-000000000000000000000000", "Basic abc"])
def test_missing_or_wrong_token_is_401_and_records_nothing(intake, header):
    client, ws, announced, _ = intake
    before = ledger_rows(ws)
    headers = {} if header is None else {"Authorization": header}
    anonymous = TestClient(client.app)
    for method, path, body in (("post", "/v1/requests", b'{"subjects": ["100001"]}'),
                               ("post", "/v1/requests", b"{not json"), ("get", "/v1/requests", None)):
        response = anonymous.request(method, path, content=body, headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
    assert ledger_rows(ws) == before and not announced


def test_submit_is_durable_before_202_announced_and_echoes_no_raw_id(intake):
    client, ws, announced, _ = intake
    response = client.post("/v1/requests", json={"subjects": [SUBJECT], "reason": "portal #881"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending" and body["created"] is True and body["request_id"].startswith("req-")
    assert SUBJECT not in response.text
    assert (body["request_id"], "pending") in ledger_rows(ws)
    assert announced == [body["request_id"]]
    one = client.get(f"/v1/requests/{body['request_id']}")
    assert one.status_code == 200 and one.json()["subjects"] == 1 and SUBJECT not in one.text
    due = datetime.fromisoformat(one.json()["due"]) - datetime.fromisoformat(one.json()["created_at"])
    assert due == timedelta(days=ws.layout.params.requests.deadline_days)


def test_idempotency_key_same_body_same_request_other_body_409(intake):
    client, ws, announced, _ = intake
    headers = {"Idempotency-Key": "portal-882"}
    first = client.post("/v1/requests", json={"subjects": ["100011"], "reason": "a"}, headers=headers)
    again = client.post("/v1/requests", json={"subjects": ["100011"], "reason": "a"}, headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["request_id"] == first.json()["request_id"] and again.json()["created"] is False
    n = len(ledger_rows(ws))
    other = client.post("/v1/requests", json={"subjects": ["100012"], "reason": "a"}, headers=headers)
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
    assert len(ledger_rows(ws)) == n and announced == [first.json()["request_id"]]


@pytest.mark.parametrize("body, where", [
    (b"{not json", "json"),
    (b'{"subjects": ["100001"], "colour": "red"}', "colour"),
    (b"{}", "names no subject"),
    (b'{"subjects": [], "records": []}', "names no subject"),
    (b'{"subjects": [100001]}', "subjects.0"),
    (b'{"subjects": ["100001"], "kind": "maybe"}', "kind"),
    (b"[1, 2]", "body"),
])
def test_bad_bodies_are_422_with_a_clear_message_and_no_raw_id(intake, body, where):
    client, ws, announced, _ = intake
    before = ledger_rows(ws)
    response = client.post("/v1/requests", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert where in response.json()["detail"].lower() or where in response.json()["detail"]
    assert "100001" not in response.text
    assert ledger_rows(ws) == before and not announced


def test_unknown_id_is_recorded_rejected_as_the_cli_does(intake):
    client, ws, announced, _ = intake
    response = client.post("/v1/requests", json={"subjects": ["no-such-person-77"]})
    assert response.status_code == 422
    body = response.json()
    assert body["status"] == "rejected" and "match no record" in body["detail"]
    assert "no-such-person-77" not in response.text
    assert (body["request_id"], "rejected") in ledger_rows(ws) and not announced


def test_body_over_the_limit_is_413_and_records_nothing(intake):
    client, ws, _, _ = intake
    before = ledger_rows(ws)
    big = json.dumps({"subjects": [f"{100000 + i % 240}" for i in range(1000)]})
    response = client.post("/v1/requests", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "4096" in response.json()["detail"]
    assert ledger_rows(ws) == before


def test_unknown_request_id_is_404(intake):
    client, _, _, _ = intake
    assert client.get("/v1/requests/req-0000000000000000").status_code == 404


def test_overdue_listing_follows_the_clock(intake):
    client, ws, _, clock = intake
    made = client.post("/v1/requests", json={"records": ["r20-0"]})
    assert made.status_code == 202, made.text
    rid = made.json()["request_id"]
    assert rid not in [r["request_id"] for r in client.get("/v1/requests", params={"overdue": "true"}).json()]
    clock["now"] += timedelta(days=ws.layout.params.requests.deadline_days, seconds=1)
    late = client.get("/v1/requests", params={"overdue": "true"}).json()
    assert rid in [r["request_id"] for r in late] and all(r["overdue"] for r in late)
    assert all(r["status"] in ("pending", "failed", "applied") for r in late)  # rejected ones are never overdue
    pending = client.get("/v1/requests", params={"status": "pending"}).json()
    assert pending and all(r["status"] == "pending" for r in pending)
    assert client.get("/v1/requests", params={"status": "lost"}).status_code == 422


def test_healthz_needs_no_token(intake):
    client, _, _, _ = intake
    assert TestClient(client.app).get("/healthz").json() == {"ok": True}
