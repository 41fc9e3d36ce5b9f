"""`cloud why` on a reading whose meter equivocated names the evidence and the quarantine (before: a
plain "minted" or "waiting", as if nothing had happened)."""

from __future__ import annotations

import asyncio
import hashlib
import json

import asyncpg
from click.testing import CliRunner

from cloud.db import migrate
from cloud.mint_cli import why
from tests.cloud.minter.conftest import add_fleet


def test_why_shows_equivocation_evidence_and_quarantine(database_url: str) -> None:
    async def setup() -> str:
        await migrate(database_url)
        fleet = await add_fleet(database_url, meters=1, readings_per_meter=1, seed=3)
        (meter_id,) = fleet.meters
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("UPDATE meter_readings SET minted = true, mint_base_units = 1 WHERE meter_id = $1",
                               meter_id)
            await conn.execute("UPDATE meters SET status = 'quarantined', status_reason = 'equivocation at seq 1'"
                               " WHERE meter_id = $1", meter_id)
            await conn.execute("INSERT INTO rejected_readings (meter_id, seq, reason, detail, payload, payload_sha256)"
                               " VALUES ($1, 1, 'equivocation', 'different bytes', '\\x02'::bytea, $2)",
                               meter_id, hashlib.sha256(b"\x02").digest())
        finally:
            await conn.close()
        return meter_id

    meter_id = asyncio.run(setup())
    args = [f"{meter_id}:1", "--database-url", database_url]
    text = CliRunner().invoke(why, args)
    assert text.exit_code == 0, text.output
    assert "minted" in text.output and "EQUIVOCATION" in text.output
    assert "the meter is quarantined (equivocation at seq 1)" in text.output
    doc = json.loads(CliRunner().invoke(why, [*args, "--json"]).output)
    assert doc["meter_status"] == "quarantined" and len(doc["equivocation_evidence"]) == 1
