"""`cloud reconcile` sees every mis-mint: each case planted directly in a clean, fully minted state
(real PostgreSQL, real SVM) makes it exit 1 and name it; undone, it is clean again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
from click.testing import CliRunner
from solders.pubkey import Pubkey

from cloud.chain.factory import open_backend
from cloud.chain.tx import build_mint_tx
from cloud.db import migrate
from cloud.mint_cli import reconcile
from protocol.reading import Reading
from protocol.wire import V1_PREFIX, frame, sign, sign_reading
from tests.cloud.minter.conftest import add_fleet, meter_key, minter_settings
from tests.cloud.minter.test_economics import _mint_all

Plant = tuple[str, list[str], list[str], str]  # name, SQL to plant, SQL to undo, expected words


def _run(state: Path, dsn: str) -> tuple[int, str]:
    result = CliRunner().invoke(reconcile, ["--database-url", dsn],
                                env={"GRIDTOKENX_CHAIN_STATE_DIR": str(state),
                                     "TOKENIZATION_KWH_TO_TOKEN_RATIO": "7"})  # the shell's ratio is ignored
    return result.exit_code, result.output


def test_every_planted_mis_mint_is_named(database_url: str, tmp_path: Path) -> None:
    state = tmp_path / "chain"
    settings = minter_settings(database_url, state)
    asyncio.run(migrate(database_url))
    fleet = asyncio.run(add_fleet(database_url, meters=3, readings_per_meter=3, seed=13))
    asyncio.run(_mint_all(settings))
    code, out = _run(state, database_url)
    assert code == 0, out

    meter = sorted(fleet.meters)[0]
    first = fleet.reading_ids[0]
    reading = asyncio.run(_row(database_url, first))
    dup_body = (b'{"meter_id":"%s","seq":%d,"start":%d,"end":%d,"export_wh":%d,"export_register_wh":0,'
                b'"export_wh":%d}' % (meter.encode(), reading["seq"], reading["s"], reading["e"], reading["export_wh"],
                                      reading["export_wh"]))
    dup_payload = frame(V1_PREFIX + dup_body, sign(V1_PREFIX + dup_body, bytes(meter_key(meter))))
    overlap = sign_reading(Reading(meter, 100, reading["s"] + 60, reading["e"] + 60, 0, export_register_wh=0),
                           bytes(meter_key(meter)))
    cases: list[Plant] = [
        ("history re-priced", ["UPDATE mint_settings SET ratio_num = 2"],
         ["UPDATE mint_settings SET ratio_num = 1"], "MIS-MINTED"),
        ("units recorded wrong",
         [f"UPDATE meter_readings SET mint_base_units = mint_base_units + 5 WHERE id = {first}"],
         [f"UPDATE meter_readings SET mint_base_units = mint_base_units - 5 WHERE id = {first}"], f"meter {meter}:"),
        ("decimals disagree with the chain", ["UPDATE mint_settings SET decimals = 12"],
         ["UPDATE mint_settings SET decimals = 9"], "has 9 decimals on chain"),
        ("overlapping intervals",
         [f"INSERT INTO meter_readings (meter_id, seq, wallet_address, interval_start, interval_end, export_wh,"
          f" format, payload, signature, minted) SELECT meter_id, 100, wallet_address,"
          f" interval_start + interval '60 s', interval_end + interval '60 s', 0, 'v1',"
          f" '\\x{overlap.hex()}'::bytea, 's', TRUE FROM meter_readings WHERE id = {first}"],
         [f"DELETE FROM meter_readings WHERE meter_id = '{meter}' AND seq = 100"], "overlapping intervals"),
        ("above capacity", [f"UPDATE meters SET capacity_w = 1 WHERE meter_id = '{meter}'"],
         [f"UPDATE meters SET capacity_w = 20000 WHERE meter_id = '{meter}'"], "above capacity"),
        ("one byte string, two amounts", [f"UPDATE meter_readings SET payload = '\\x{dup_payload.hex()}'::bytea"
                                          f" WHERE id = {first}"],
         [f"UPDATE meter_readings SET payload = '\\x{bytes(reading['payload']).hex()}'::bytea WHERE id = {first}"],
         "signed bytes are malformed"),
        ("accepted after its key was compromised",
         [f"UPDATE meter_keys SET compromised_at = now() - interval '1 day', valid_until = now() - interval '1 day'"
          f" WHERE meter_id = '{meter}'"],
         [f"UPDATE meter_keys SET compromised_at = NULL, valid_until = NULL WHERE meter_id = '{meter}'"],
         "not signed by a key that covered it"),
    ]
    for name, plant, undo, words in cases:
        asyncio.run(_exec(database_url, plant))
        code, out = _run(state, database_url)
        assert code == 1 and words in out, (name, out)
        asyncio.run(_exec(database_url, undo))
        code, out = _run(state, database_url)
        assert code == 0, (name, "after undo", out)

    # On chain: tokens minted outside any batch (as a re-priced or rogue mint would) to a wallet.
    wallet = fleet.meters[meter]
    asyncio.run(_rogue_mint(settings, wallet))
    code, out = _run(state, database_url)
    assert code == 1 and "OVERMINTED wallets" in out and wallet in out, out


async def _row(dsn: str, rid: int) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchrow("SELECT seq, export_wh, payload, extract(epoch FROM interval_start)::bigint AS s,"
                                   " extract(epoch FROM interval_end)::bigint AS e FROM meter_readings WHERE id = $1",
                                   rid)
    finally:
        await conn.close()


async def _exec(dsn: str, statements: list[str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def _rogue_mint(settings: object, wallet: str) -> None:
    backend = await open_backend(settings)  # type: ignore[arg-type]
    try:
        recent = await backend.latest_blockhash()
        tx = build_mint_tx(backend.identity, [(Pubkey.from_string(wallet), 1234)], "not a batch", recent.blockhash)
        await backend.send(bytes(tx))
    finally:
        await backend.close()

