"""Due dates and overdue requests, on a settable clock."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from oblivio import deadlines
from oblivio.errors import OblivioError

CREATED = "2026-12-02T10:00:00.000000+00:00"


def test_due_is_created_plus_the_deadline():
    assert deadlines.due_at(CREATED, 30) == datetime(2027, 1, 1, 10, tzinfo=timezone.utc)


@pytest.mark.parametrize("status, late", [("pending", True), ("failed", True), ("applied", True),
                                          ("promoted", False), ("rejected", False)])
def test_only_unsettled_requests_become_overdue(status, late):
    just_after = deadlines.due_at(CREATED, 30) + timedelta(microseconds=1)
    assert deadlines.is_overdue(status, CREATED, 30, just_after) is late
    assert deadlines.is_overdue(status, CREATED, 30, deadlines.due_at(CREATED, 30)) is False  # due, not past it


def test_the_clock_can_be_set_for_a_drill(monkeypatch):
    monkeypatch.setenv("OBLIVIO_NOW", "2027-02-01T00:00:00")
    assert deadlines.now() == datetime(2027, 2, 1, tzinfo=timezone.utc)
    monkeypatch.setenv("OBLIVIO_NOW", "next tuesday")
    with pytest.raises(OblivioError, match="OBLIVIO_NOW='next tuesday' is not an ISO date-time"):
        deadlines.now()
    monkeypatch.delenv("OBLIVIO_NOW")
    assert abs(deadlines.now() - datetime.now(timezone.utc)) < timedelta(seconds=5)
