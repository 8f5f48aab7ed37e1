"""The event that wakes the deletion processor, sent without importing Prefect.

`oblivio forget` should cost what recording a request costs; Prefect's own event client
would add its import and a websocket handshake (seconds). The server's REST endpoint
takes the same event as one small POST.
"""
from __future__ import annotations

import hashlib
import json
import urllib.request
import uuid
from datetime import datetime, timezone

REQUEST_EVENT = "oblivio.request.recorded"
OVERDUE_EVENT = "oblivio.request.overdue"  # a request passed its due date unsettled: for an alerting automation


def workspace_resource(root: str) -> str:
    """A stable resource id for the workspace (its path hashed: paths can name people too)."""
    return f"oblivio.workspace.{hashlib.sha256(root.encode()).hexdigest()[:16]}"


def announce_request(api_url: str, root: str, request_id: str) -> None:
    """Tell a serving Prefect server that a request was recorded (request id only, no personal data)."""
    _post_event(api_url, root, REQUEST_EVENT, {"request_id": request_id})


def announce_overdue(api_url: str, root: str, request_id: str, *, due: str, status: str) -> None:
    """A request is past its due date and not settled (request id, due date and status only)."""
    _post_event(api_url, root, OVERDUE_EVENT, {"request_id": request_id, "due": due, "status": status})


def _post_event(api_url: str, root: str, name: str, payload: dict) -> None:
    event = {"id": str(uuid.uuid4()), "occurred": datetime.now(timezone.utc).isoformat(), "event": name,
             "resource": {"prefect.resource.id": workspace_resource(root)}, "related": [], "payload": payload}
    request = urllib.request.Request(f"{api_url}/events", data=json.dumps([event]).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10):
        pass
