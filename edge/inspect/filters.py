"""Row filters shared by list, export, verify, requeue and purge, turned into indexed SQL per table."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime

from edge.errors import EdgeError
from edge.inspect.models import READING_STATES, SOURCES, Source

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class FilterError(EdgeError, ValueError):
    """A filter value the user typed is wrong; the message says what is accepted."""


def parse_when(text: str, *, now: float | None = None) -> float:
    """`30m`, `2h`, `7d` (that long ago), an RFC 3339 time, or UTC seconds → UTC seconds."""
    now = time.time() if now is None else now
    text = text.strip()
    match = _DURATION.match(text)
    if match:
        return now - float(match.group(1)) * _UNIT[match.group(2)]
    return parse_instant(text)


def parse_instant(text: str) -> float:
    """An RFC 3339 time with a zone, or UTC seconds → UTC seconds; FilterError otherwise."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise FilterError(f"{text!r} is not a time: use 30m, 2h, 7d, 2026-11-27T06:00:00Z or UTC seconds") from exc
    if when.tzinfo is None:
        raise FilterError(f"{text!r} has no time zone: add Z for UTC")
    return when.timestamp()


@dataclass(frozen=True, slots=True)
class Filter:
    sources: tuple[Source, ...] = SOURCES
    meter: str | None = None
    reason: str | None = None
    since: float | None = None
    """received_at >= since"""
    until: float | None = None
    """received_at < until (purge's --older-than)"""
    exclude_reasons: tuple[str, ...] = ()
    """Rows with these reasons never match (requeue leaves equivocation evidence alone unless asked)."""

    def reading_states(self) -> tuple[str, ...]:
        return tuple(s for s in self.sources if s in READING_STATES)

    def where(self, source: Source) -> tuple[str, list[object]]:
        """WHERE clause (without the keyword) and parameters for the table `source` lives in."""
        clauses: list[str] = []
        params: list[object] = []
        if source in READING_STATES:
            clauses.append("state = ?")
            params.append(source)
        if self.meter is not None:
            clauses.append("meter_id = ?")
            params.append(self.meter)
        if self.reason is not None:
            clauses.append("reason = ?")
            params.append(self.reason)
        if self.since is not None:
            clauses.append("received_at >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("received_at < ?")
            params.append(self.until)
        if self.exclude_reasons:
            clauses.append(f"(reason IS NULL OR reason NOT IN ({', '.join('?' * len(self.exclude_reasons))}))")
            params.extend(self.exclude_reasons)
        return (" AND ".join(clauses) or "1"), params


def table_of(source: Source) -> str:
    if source == "quarantined":
        return "quarantine"
    if source == "dropped":
        return "drops"
    return "readings"
