"""The minter's part of /healthz (no chain or database imports, so `cloud run --role ingest` stays light)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass
class MinterHealth:
    """What /healthz says about the minter: the truth about its last pass, not that the process lives."""

    stale_after_secs: float = 60.0
    last_ok: float | None = None
    """monotonic time of the last pass that reached the database and the chain."""
    problem: str | None = "starting: the chain and the database have not answered yet"

    def ok(self) -> None:
        self.last_ok, self.problem = time.monotonic(), None

    def failed(self, why: str) -> None:
        self.problem = why

    def report(self) -> dict[str, Any]:
        age = None if self.last_ok is None else time.monotonic() - self.last_ok
        healthy = age is not None and age < self.stale_after_secs
        return {"healthy": healthy, "component": "cloud-mint",
                "last_pass_age_s": None if age is None else round(age, 1), "problem": self.problem}
