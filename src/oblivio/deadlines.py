"""When each deletion request is due, and which are overdue.

GDPR art. 12(3): a controller answers a request within one month. A request is due
`requests.deadline_days` after it was recorded, and overdue while it is still unsettled
(pending, failed, or applied but not yet in the champion) after that.

The clock is a parameter everywhere; `now()` reads `OBLIVIO_NOW` (an ISO date-time) when
set, so a drill or a test can look at the ledger from a later day.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from oblivio.errors import OblivioError

UNSETTLED = ("pending", "failed", "applied")


def now() -> datetime:
    fixed = os.environ.get("OBLIVIO_NOW")
    if not fixed:
        return datetime.now(timezone.utc)
    try:
        moment = datetime.fromisoformat(fixed)
    except ValueError:
        raise OblivioError(f"OBLIVIO_NOW={fixed!r} is not an ISO date-time (e.g. 2026-12-31T12:00:00+00:00); "
                           "unset it to use the real clock.") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def due_at(created_at: str, days: int) -> datetime:
    return datetime.fromisoformat(created_at) + timedelta(days=days)


def is_overdue(status: str, created_at: str, days: int, at: datetime) -> bool:
    return status in UNSETTLED and due_at(created_at, days) < at
