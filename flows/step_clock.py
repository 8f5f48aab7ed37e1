"""Wall seconds per step of a flow run, carried in its summary (`steps` in `--json`).

Prefect records task timings in its own database, which a production server keeps out of
reach of a workspace and `oblivio serve` purges with the history; the summary travels with
the result instead, so a user (and bench/) can see where a run's time went on any backend.
"""
from __future__ import annotations

import time


class StepClock:
    def __init__(self) -> None:
        self.began = self._last = time.perf_counter()
        self.steps: dict[str, float] = {}

    def lap(self, step: str) -> None:
        """Close `step`: the time since the previous lap (or the start) is its."""
        now = time.perf_counter()
        self.steps[step] = round(now - self._last, 3)
        self._last = now

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.began
