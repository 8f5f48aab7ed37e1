"""Completion callbacks: a request may name a URL that is told, signed, when the request settles.

A ticketing tool or privacy portal that filed a request should not have to poll for it. The
URL is checked against `requests.callback_hosts` when the request is recorded (an intake that
POSTs wherever a client says would be a request-forgery relay), kept in the ledger, and each
settling status (promoted, rejected, failed) queues one delivery in the same transaction
(`Ledger.due_callbacks`): an outbox, so a crash loses none. `deliver_due` sends what is due,
once each; a failed send is retried later with exponential backoff (by the next `process`,
or `serve`'s watch every few seconds) and abandoned after `requests.callback_attempts`. The
request itself never depends on it.

The body holds the request id, status and the certificate's summary, never an id of a
person. It is signed like a webhook: `X-Oblivio-Signature: t=UNIX,v1=HEX`, HMAC-SHA256 with
the intake token over `t.` + body, so a receiver checks who sent it and when (`verify`).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import urlparse

from oblivio.errors import RequestError
from oblivio.ledger import Delivery, Ledger, certificate_summary
from oblivio.workspace import WorkspaceDir

SIGNATURE_HEADER = "X-Oblivio-Signature"
EVENT = "oblivio.request.settled"
SEND_TIMEOUT_S = 5.0
MAX_URL_LENGTH = 2048

# (url, body, headers) -> None, raising on anything but a 2xx answer
Post = Callable[[str, bytes, dict[str, str]], None]


def check_url(url: str | None, allowed_hosts: Sequence[str]) -> str | None:
    """The URL if a callback may go there; None for no callback; RequestError saying why not."""
    if url is None or url == "":
        return None
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise RequestError(f"callback_url must be an http(s) URL of at most {MAX_URL_LENGTH} characters.")
    parsed = urlparse(url)
    try:
        host, _ = parsed.hostname, parsed.port
    except ValueError:
        host = None
    if parsed.scheme not in ("http", "https") or not host or parsed.username or parsed.password:
        raise RequestError("callback_url must be an http(s) URL with a host and no credentials, "
                           "e.g. https://portal.internal/hooks/erasure.")
    if not allowed_hosts:
        raise RequestError("Completion callbacks are off in this workspace: list the hosts that may receive "
                           "them in params.yaml, requests.callback_hosts.")
    if host.lower() not in {h.lower() for h in allowed_hosts}:
        raise RequestError(f"callback_url's host {host} is not in requests.callback_hosts "
                           f"({', '.join(allowed_hosts)}); add it there if it should receive callbacks.")
    return url


def sign(body: bytes, token: str, timestamp: int) -> str:
    mac = hmac.new(token.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(body: bytes, header: str, token: str, *, now: float | None = None, tolerance_s: float = 300) -> bool:
    """What a receiver runs: the signature matches the body and was made within `tolerance_s`."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    fresh = abs((time.time() if now is None else now) - timestamp) <= tolerance_s
    return fresh and hmac.compare_digest(sign(body, token, timestamp), header)


def summary(ledger: Ledger, delivery: Delivery) -> dict:
    """The body: the request's status and certificate summary (hashes and counts only)."""
    request = ledger.get(delivery.request_id)
    body = {"event": EVENT, "request_id": request.id, "kind": request.kind, "status": delivery.status,
            "created_at": request.created_at, "updated_at": request.updated_at,
            "error": request.error if delivery.status in ("rejected", "failed") else None}
    cert = ledger.certificate(request.id)
    if delivery.status == "promoted" and cert:
        body["certificate"] = certificate_summary(cert)
    return body


def post(url: str, body: bytes, headers: dict[str, str]) -> None:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_S) as answer:  # noqa: S310 (host allow-listed)
        if not 200 <= answer.status < 300:
            raise OSError(f"HTTP {answer.status}")


@dataclass(frozen=True)
class DeliveryReport:
    delivered: int = 0
    retrying: int = 0
    abandoned: int = 0


def backoff(attempts: int, base_s: float) -> timedelta:
    """Wait after the `attempts`-th failed send: base, 2·base, 4·base, ..."""
    return timedelta(seconds=base_s * 2 ** (attempts - 1))


def deliver_due(ws: WorkspaceDir, *, now: datetime | None = None, send: Post = post) -> DeliveryReport:
    """Send every due callback once; never raises for a receiver's failure."""
    params = ws.params.requests
    at = now or datetime.now(timezone.utc)
    if not ws.ledger_path.exists():
        return DeliveryReport()
    counts = {"delivered": 0, "retrying": 0, "abandoned": 0}
    ledger = Ledger(ws.ledger_path)
    try:
        for delivery in ledger.due_callbacks(at):
            body = json.dumps(summary(ledger, delivery), sort_keys=True).encode()
            headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, ws.intake_token, int(at.timestamp())),
                       "User-Agent": "oblivio-callback"}
            try:
                send(delivery.url, body, headers)
                error = None
            except (OSError, urllib.error.URLError, ValueError) as err:  # a receiver's fault, not the request's
                error = f"{type(err).__name__}: {str(err)[:200]}"
            attempts = delivery.attempts + 1
            retry_at = (at + backoff(attempts, params.callback_backoff_seconds)
                        if error and attempts < params.callback_attempts else None)
            ledger.callback_sent(delivery, error=error, retry_at=retry_at)
            counts["delivered" if error is None else ("retrying" if retry_at else "abandoned")] += 1
    finally:
        ledger.close()
    return DeliveryReport(**counts)
