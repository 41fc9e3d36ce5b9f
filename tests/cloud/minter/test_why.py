"""`cloud why`: rejected with its reason, waiting behind a quarantined meter, waiting for a poll."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import asyncpg
from click.testing import CliRunner

from cloud.db import migrate
from cloud.mint_cli import why
from tests.cloud.minter.conftest import add_fleet


def test_why_explains_rejected_quarantined_and_waiting(database_url: str, tmp_path: Path) -> None:
    async def setup() -> tuple[int, int]:
        await migrate(database_url)
        active = await add_fleet(database_url, meters=1, readings_per_meter=1, seed=1)
        held = await add_fleet(database_url, meters=1, readings_per_meter=1, seed=2, status="quarantined")
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("INSERT INTO rejected_readings (meter_id, seq, reason, detail, payload, payload_sha256)"
                               " VALUES ('m-x', 9, 'bad_signature', 'key mismatch', '\\x01'::bytea, $1)",
                               hashlib.sha256(b"\x01").digest())
        finally:
            await conn.close()
        return active.reading_ids[0], held.reading_ids[0]

    active_id, held_id = asyncio.run(setup())
    runner = CliRunner()
    args = ["--database-url", database_url]
    out = runner.invoke(why, ["m-x:9", *args])
    assert out.exit_code == 0 and "rejected: bad_signature (key mismatch)" in out.output, out.output
    out = runner.invoke(why, [str(held_id), *args, "--json"])
    doc = json.loads(out.output)
    assert doc["state"] == "waiting" and doc["meter_status"] == "quarantined"
    out = runner.invoke(why, [str(active_id), *args])
    assert "waiting to be minted (0 older unminted readings)" in out.output, out.output
    out = runner.invoke(why, ["999999", *args])
    assert out.exit_code == 1 and "no reading 999999" in out.output
