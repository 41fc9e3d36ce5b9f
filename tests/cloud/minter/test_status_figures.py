"""Issue 20: the guide's key metrics come from the minter's per-second counts (migration 056), not
from a scan of the last hour's readings, and they equal the guide's own SQL, run verbatim."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from cloud.chain.factory import open_backend
from cloud.db import migrate
from cloud.minter.service import Minter
from cloud.minter.status import read_status
from tests.cloud.minter.conftest import add_fleet, minter_settings

# The seed guide's "Key Metrics" queries, verbatim.
GUIDE_BACKLOG = "SELECT COUNT(*) FROM meter_readings WHERE minted = FALSE;"
GUIDE_SUCCESS = """
SELECT
    COUNT(*) FILTER (WHERE minted = TRUE) as minted,
    COUNT(*) FILTER (WHERE minted = FALSE) as unminted,
    ROUND(100.0 * COUNT(*) FILTER (WHERE minted = TRUE) / COUNT(*), 2) as success_rate
FROM meter_readings
WHERE submitted_at >= NOW() - INTERVAL '1 hour';
"""
GUIDE_LATENCY = """
SELECT
    AVG(EXTRACT(EPOCH FROM (updated_at - submitted_at))) as avg_latency_seconds
FROM meter_readings
WHERE minted = TRUE
AND submitted_at >= NOW() - INTERVAL '1 hour';
"""


async def test_status_equals_the_guides_sql(database_url: str, tmp_path: Path) -> None:
    settings = minter_settings(database_url, tmp_path / "chain", batch_size=1000)
    await migrate(database_url)
    minted_fleet = await add_fleet(database_url, meters=5, readings_per_meter=3, seed=41)
    backend = await open_backend(settings)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        minter = Minter(pool, backend, settings)
        assert await minter.plan()
        assert await minter.drive() == 0
        # One reading moves out of the window (submitted and minted 2 h earlier), its count with it.
        old = await pool.fetchrow("SELECT floor(extract(epoch FROM submitted_at))::bigint AS second,"
                                  " extract(epoch FROM minted_at - submitted_at)::float8 AS latency"
                                  " FROM meter_readings WHERE id = $1", minted_fleet.reading_ids[0])
        await pool.execute("UPDATE meter_readings SET submitted_at = submitted_at - interval '2 hours',"
                           " minted_at = minted_at - interval '2 hours', updated_at = updated_at - interval '2 hours'"
                           " WHERE id = $1", minted_fleet.reading_ids[0])
        await pool.execute("UPDATE mint_stats_by_second SET minted = minted - 1, latency_sum_secs = latency_sum_secs"
                           " - $2 WHERE submitted_second = $1", old["second"], old["latency"])
        await pool.execute("DELETE FROM mint_stats_by_second WHERE minted = 0")
        # Waiting: a quarantined meter's readings are not minted.
        await add_fleet(database_url, meters=2, readings_per_meter=2, seed=42, status="quarantined")

        status = await read_status(pool)
        backlog = await pool.fetchval(GUIDE_BACKLOG)
        success = await pool.fetchrow(GUIDE_SUCCESS)
        latency = await pool.fetchval(GUIDE_LATENCY)
        assert status.unminted_backlog == backlog == 4
        assert status.minted_last_hour == success["minted"] == 14
        assert status.submitted_last_hour == success["minted"] + success["unminted"] == 18
        assert status.success_rate_pct == pytest.approx(float(success["success_rate"]), abs=0.01)
        assert status.avg_latency_secs == pytest.approx(float(latency), abs=0.001)
    finally:
        await pool.close()
        await backend.close()
