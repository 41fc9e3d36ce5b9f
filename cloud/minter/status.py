"""The GridTokenX Phase 2 guide's four key metrics and its alert thresholds, from the database."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import asyncpg

from cloud.minter import metrics

BACKLOG_ALERT = 100
SUCCESS_ALERT_PCT = 95.0
LATENCY_ALERT_SECS = 120.0
RETRY_QUEUE_ALERT = 50


@dataclass(frozen=True, slots=True)
class MintStatus:
    unminted_backlog: int
    submitted_last_hour: int
    minted_last_hour: int
    success_rate_pct: float | None  # None: nothing submitted in the last hour
    retry_queue_size: int
    retry_queue_avg_attempts: float
    retry_queue_max_attempts: int
    dead_lettered: int
    avg_latency_secs: float | None
    open_batches: int

    @property
    def alerts(self) -> dict[str, bool]:
        return {
            "unminted_backlog": self.unminted_backlog > BACKLOG_ALERT,
            "success_rate": self.success_rate_pct is not None and self.success_rate_pct < SUCCESS_ALERT_PCT,
            "latency": self.avg_latency_secs is not None and self.avg_latency_secs > LATENCY_ALERT_SECS,
            "retry_queue": self.retry_queue_size > RETRY_QUEUE_ALERT,
            "dead_letter": self.dead_lettered > 0,
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"alerts": self.alerts, "alerting": any(self.alerts.values())}


# The guide's last-hour figures without reading the last hour's readings (migration 056): minted and
# latency from the minter's per-second counts, unminted from the unminted index (the backlog), and
# submitted = minted + unminted. Same figures as the guide's SQL, to the second at the window's edge.
_LAST_HOUR = """
WITH edge AS (SELECT now() - interval '1 hour' AS t),
u AS (SELECT count(*) FILTER (WHERE submitted_at >= edge.t) AS unminted, count(*) AS backlog
      FROM meter_readings, edge WHERE minted = FALSE),
m AS (SELECT coalesce(sum(minted), 0) AS minted, sum(latency_sum_secs) AS latency_sum
      FROM mint_stats_by_second, edge WHERE submitted_second >= floor(extract(epoch FROM edge.t)))
SELECT u.backlog, u.unminted + m.minted AS total, m.minted,
       CASE WHEN m.minted > 0 THEN m.latency_sum / m.minted END AS latency
FROM u, m
"""


async def read_status(conn: asyncpg.Pool | asyncpg.Connection) -> MintStatus:
    hour = await conn.fetchrow(_LAST_HOUR)
    backlog = hour["backlog"]
    retry = await conn.fetchrow(
        "SELECT count(*) AS size, coalesce(avg(attempts), 0)::float8 AS avg,"
        " coalesce(max(attempts), 0) AS max, count(*) FILTER (WHERE dead_lettered) AS dead"
        " FROM minting_retry_queue")
    open_batches = await conn.fetchval("SELECT count(*) FROM mint_batches WHERE status IN ('planned','sent')")
    total, minted = int(hour["total"]), int(hour["minted"])
    return MintStatus(
        unminted_backlog=int(backlog), submitted_last_hour=total, minted_last_hour=minted,
        success_rate_pct=round(100.0 * minted / total, 2) if total else None,
        retry_queue_size=int(retry["size"]), retry_queue_avg_attempts=round(float(retry["avg"]), 2),
        retry_queue_max_attempts=int(retry["max"]), dead_lettered=int(retry["dead"]),
        avg_latency_secs=None if hour["latency"] is None else round(float(hour["latency"]), 3),
        open_batches=int(open_batches))


async def prune(conn: asyncpg.Pool | asyncpg.Connection) -> None:
    """Forget per-second counts no window reads any more (the minter calls this as it refreshes)."""
    await conn.execute("DELETE FROM mint_stats_by_second"
                       " WHERE submitted_second < floor(extract(epoch FROM now() - interval '2 hours'))")


def export(status: MintStatus) -> None:
    metrics.UNMINTED_BACKLOG.set(status.unminted_backlog)
    metrics.SUCCESS_RATE.set(100.0 if status.success_rate_pct is None else status.success_rate_pct)
    metrics.RETRY_QUEUE_SIZE.set(status.retry_queue_size)
    metrics.RETRY_AVG_ATTEMPTS.set(status.retry_queue_avg_attempts)
    metrics.RETRY_MAX_ATTEMPTS.set(status.retry_queue_max_attempts)
    metrics.LATENCY_AVG.set(status.avg_latency_secs or 0.0)
    for name, firing in status.alerts.items():
        metrics.ALERT.labels(name=name).set(1 if firing else 0)
