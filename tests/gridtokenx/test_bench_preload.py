"""`gridtokenx bench preload`: minted readings with their keys, counted, and the bytes per reading."""

from __future__ import annotations

import asyncio
import json

import asyncpg
from click.testing import CliRunner

from gridtokenx.cli import root


def test_preload_stores_minted_readings_with_keys_and_reports_bytes(database_url: str) -> None:
    result = CliRunner().invoke(root, ["bench", "preload", "--readings", "2500", "--meters", "10",
                                       "--database-url", database_url, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["stored_readings"] == report["readings"] == 2500
    parts = report["readings_bytes_per_reading"] + report["keys_bytes_per_reading"]
    assert report["bytes_per_reading"] > 0 and abs(report["bytes_per_reading"] - parts) < 0.2

    async def check() -> asyncpg.Record:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetchrow(
                "SELECT count(*) AS n, count(*) FILTER (WHERE r.minted) AS minted,"
                " count(*) FILTER (WHERE k.payload_sha256 = sha256(r.payload)) AS keyed,"
                " count(DISTINCT r.meter_id) AS meters, max(k.seq) AS top,"
                " (SELECT sum(minted_wh) FROM meter_mint_ledger) = sum(r.export_wh) AS ledger,"
                " (SELECT count(*) FROM api_events) AS events"
                " FROM meter_readings r JOIN meter_reading_keys k ON k.reading_id = r.id")
        finally:
            await conn.close()
    row = asyncio.run(check())
    assert (row["n"], row["minted"], row["keyed"], row["meters"], row["top"]) == (2500, 2500, 2500, 10, 250)
    assert row["ledger"] and row["events"] == 0
