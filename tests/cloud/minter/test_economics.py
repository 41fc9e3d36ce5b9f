"""Economic settings are records, and the chain agrees with them: real PostgreSQL, real SVM (embedded),
`gridtokenx localnet` over RPC for the pre-existing-mint case. Each attack from the issue is refused
with one sentence or dead-lettered, and nothing is minted for it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner
from solders.keypair import Keypair

from cloud.chain.factory import open_backend
from cloud.chain.tx import token_account
from cloud.db import create_pool, migrate
from cloud.mint_cli import set_ratio, why
from cloud.minter import MinterRefused
from cloud.minter.admin import run_reconcile
from cloud.minter.economics import SettingsError
from cloud.minter.service import Minter, run_minter
from cloud.settings import ChainSettings, CloudSettings, TokenizationSettings
from tests.cloud.chain.conftest import LocalnetFactory, localnet_factory  # noqa: F401 (fixture)
from tests.cloud.minter.conftest import add_fleet, add_readings, minter_settings
from tests.helpers import async_wait_for

ROOT = Path(__file__).resolve().parents[3]


async def _mint_all(settings: CloudSettings, passes: int = 3) -> None:
    """Plan and drive like the service does (a few polls), in this process."""
    backend = await open_backend(settings)
    pool = await create_pool(settings.database_url)
    try:
        minter = Minter(pool, backend, settings)
        for _ in range(passes):
            await minter.plan()

            async def settled() -> bool:
                return await minter.drive() == 0
            await async_wait_for(settled, timeout=20, message="open batches settled")
    finally:
        await pool.close()
        await backend.close()


async def _balance(settings: CloudSettings, wallet: str) -> int:
    backend = await open_backend(settings)
    try:
        from solders.pubkey import Pubkey

        return await backend.token_balance(token_account(backend.identity, Pubkey.from_string(wallet)))
    finally:
        await backend.close()


def _start_refused(settings: CloudSettings, capsys: pytest.CaptureFixture[str]) -> str:
    async def go() -> None:
        await run_minter(settings, asyncio.Event())
    with pytest.raises(MinterRefused) as info:
        asyncio.run(go())
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("minter refuses to start: ")
    return err[-1]


def test_mint_on_chain_must_match_decimals_authority_and_program(database_url: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The report: GRIDTOKENX_MINT_ADDRESS at a 9-decimal mint with TOKENIZATION_DECIMALS=12 minted
    4 kWh as 4,000 tokens. Now the minter refuses to start; variants: another token program, another
    authority."""
    state = tmp_path / "chain"
    nine = minter_settings(database_url, state)
    asyncio.run(migrate(database_url))
    fleet = asyncio.run(add_fleet(database_url, meters=1, readings_per_meter=1, seed=3))

    async def make_mint() -> str:
        backend = await open_backend(nine)  # creates the 9-decimal mint, authority in state/
        try:
            return str(backend.identity.mint)
        finally:
            await backend.close()
    mint = asyncio.run(make_mint())
    chain = dataclasses.replace(nine.chain, mint_address=mint)
    twelve = dataclasses.replace(nine, chain=chain,
                                 tokenization=dataclasses.replace(nine.tokenization, decimals=12))
    line = _start_refused(twelve, capsys)
    assert "has 9 decimals on chain but TOKENIZATION_DECIMALS is 12" in line

    program = dataclasses.replace(nine, chain=dataclasses.replace(chain, token_program="token-2022"))
    assert "not by the configured token program" in _start_refused(program, capsys)

    stranger = tmp_path / "stranger.json"
    stranger.write_text(json.dumps(list(bytes(Keypair()))))
    other = dataclasses.replace(nine, chain=dataclasses.replace(chain, authority_keypair=stranger))
    assert "mint authority of" in _start_refused(other, capsys)

    assert asyncio.run(_balance(nine, fleet.meters[next(iter(fleet.meters))])) == 0
    rows = asyncio.run(_fetch(database_url, "SELECT count(*) AS n FROM mint_batches"))
    assert rows[0]["n"] == 0


def test_localnet_pre_existing_9_decimal_mint_with_decimals_12_refuses(
        database_url: str, tmp_path: Path, localnet_factory: LocalnetFactory) -> None:  # noqa: F811
    """Against `gridtokenx localnet` (RPC): a mint created beforehand with 9 decimals; the minter
    configured with its address and TOKENIZATION_DECIMALS=12 exits 2 with one sentence."""
    url = localnet_factory()
    state = tmp_path / "state"
    base = CloudSettings(database_url=database_url,
                         tokenization=TokenizationSettings(decimals=9),
                         chain=ChainSettings(backend="rpc", rpc_url=url, state_dir=state, rpc_timeout_secs=3))

    async def make_mint() -> str:
        backend = await open_backend(base)
        try:
            return str(backend.identity.mint)
        finally:
            await backend.close()
    mint = asyncio.run(make_mint())
    asyncio.run(migrate(database_url))
    env = {"DATABASE_URL": database_url, "GRIDTOKENX_CHAIN_BACKEND": "rpc", "SOLANA_RPC_URL": url,
           "GRIDTOKENX_CHAIN_STATE_DIR": str(state), "GRIDTOKENX_MINT_ADDRESS": mint,
           "TOKENIZATION_DECIMALS": "12", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "cloud.minter"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    refusal = [line for line in done.stderr.splitlines() if line.startswith("minter refuses to start:")]
    assert refusal == [f"minter refuses to start: mint {mint} has 9 decimals on chain but TOKENIZATION_DECIMALS "
                       "is 12; set TOKENIZATION_DECIMALS=9 (amounts would be off by 10^3); the minter refuses "
                       "to start"], done.stderr


async def _fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def test_unsafe_decimals_refused_and_an_unmintable_reading_never_stops_the_others(
        database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The report: TOKENIZATION_DECIMALS=18 made a 20 kWh reading overflow u64 and the minter
    crash-looped. Now 18 is refused at start; and a reading that cannot fit u64 under settings that
    are safe for the configured per-reading maximum is dead-lettered with its reason."""
    asyncio.run(migrate(database_url))
    eighteen = minter_settings(database_url, tmp_path / "c18", decimals=18)
    assert "more than u64 max" in _start_refused(eighteen, capsys)

    # A ratio of 10^9 tokens per kWh is safe for 1 Wh readings (the configured maximum) ...
    settings = minter_settings(database_url, tmp_path / "chain", kwh_to_token_ratio="1000000000",
                               max_reading_kwh="0.001")
    fleet = asyncio.run(add_fleet(database_url, meters=3, readings_per_meter=2, max_wh=1, seed=5))
    # ... but a 20 kWh reading accepted earlier (under another maximum) is 2 × 10^22 base units.
    big = asyncio.run(_plant_big(database_url, next(iter(fleet.meters)), fleet.meters))
    asyncio.run(_mint_all(settings))
    rows = asyncio.run(_fetch(database_url, "SELECT r.id, r.minted, q.dead_lettered, q.error_message"
                                            " FROM meter_readings r LEFT JOIN minting_retry_queue q"
                                            " ON q.reading_id = r.id ORDER BY r.id"))
    by_id = {r["id"]: r for r in rows}
    assert by_id[big]["dead_lettered"] and "above the SPL maximum" in by_id[big]["error_message"]
    assert not by_id[big]["minted"]
    assert all(r["minted"] for r in rows if r["id"] != big), "other readings must still mint"


async def _plant_big(dsn: str, meter_id: str, wallets: dict[str, str]) -> int:
    import random

    conn = await asyncpg.connect(dsn)
    try:
        planted = await add_readings(conn, {meter_id: wallets[meter_id]}, 1, random.Random(1), 0, start_seq=50)
        await conn.execute("UPDATE meter_readings SET export_wh = 20000 WHERE id = $1", planted.reading_ids[0])
        return planted.reading_ids[0]
    finally:
        await conn.close()


def test_a_ratio_change_is_a_recorded_command_and_never_reprices_history(
        database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The report: 1 → 2 between restarts made a 1 kWh reading mint 12 tokens; 2 → 0.5 marked readings
    minted with 0 units. Now changing the environment alone refuses to start; `cloud settings
    set-ratio` applies from the next reading on, and reconcile/why read the records."""
    import random

    state = tmp_path / "chain"
    one = minter_settings(database_url, state)
    asyncio.run(migrate(database_url))
    fleet = asyncio.run(add_fleet(database_url, meters=1, readings_per_meter=1, max_wh=1000, seed=9))
    meter, wallet = next(iter(fleet.meters.items()))
    asyncio.run(_set_wh(database_url, 1000))
    asyncio.run(_mint_all(one))
    assert asyncio.run(_balance(one, wallet)) == 10**9  # 1 kWh at ratio 1, 9 decimals

    async def add(seq: int) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await add_readings(conn, {meter: wallet}, 1, random.Random(seq), 0, start_seq=seq)
        finally:
            await conn.close()
        await _set_wh(database_url, 1000)
    asyncio.run(add(2))  # accepted before the change: stays at ratio 1 even though minted after it

    two = minter_settings(database_url, state, kwh_to_token_ratio="2")
    assert "ratio in force is 1.0" in _start_refused(two, capsys)
    with pytest.raises(SettingsError):
        asyncio.run(_mint_all(two))

    result = CliRunner().invoke(set_ratio, ["2", "--note", "tariff", "--database-url", database_url])
    assert result.exit_code == 0 and "applies to readings from id" in result.output, result.output
    asyncio.run(add(3))  # after the change: ratio 2
    asyncio.run(_mint_all(two, passes=4))
    assert asyncio.run(_balance(two, wallet)) == 10**9 + 10**9 + 2 * 10**9
    units = asyncio.run(_fetch(database_url, "SELECT seq, mint_base_units FROM meter_readings ORDER BY seq"))
    assert [(r["seq"], int(r["mint_base_units"])) for r in units] == [(1, 10**9), (2, 10**9), (3, 2 * 10**9)]

    # reconcile uses the records whatever the caller's shell says (ratio 0.5 here).
    half = minter_settings(database_url, state, kwh_to_token_ratio="0.5")
    first, _ = asyncio.run(run_reconcile(half, fix=False))
    assert first.clean, first
    # why: the reading's units in the decimals recorded, the auto-mint state of the service.
    out = CliRunner().invoke(why, [f"{meter}:3", "--database-url", database_url]).output
    assert "2.000000000 tokens" in out, out


async def _set_wh(dsn: str, wh: int) -> None:
    """Give every unminted reading `wh`, re-signed with its meter's key (reconcile re-reads the bytes)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT id, meter_id, seq, interval_start, interval_end FROM meter_readings"
                                " WHERE NOT minted AND export_wh <> $1", wh)
        from datetime import UTC

        from protocol.reading import Reading
        from protocol.wire import sign_reading
        from tests.cloud.minter.conftest import meter_key

        for r in rows:
            start, end = (int(r[c].astimezone(UTC).timestamp()) for c in ("interval_start", "interval_end"))
            payload = sign_reading(Reading(r["meter_id"], r["seq"], start, end, wh, export_register_wh=0),
                                   bytes(meter_key(r["meter_id"])))
            await conn.execute("UPDATE meter_readings SET export_wh = $2, payload = $3 WHERE id = $1",
                               r["id"], wh, payload)
    finally:
        await conn.close()


def test_why_reports_the_services_auto_mint_not_the_callers(database_url: str, tmp_path: Path) -> None:
    """The report: `cloud why` said "auto-mint is on" (the caller's environment) while the service
    ran with it off. It now says what the minter started with (minter_runtime)."""
    from cloud.minter import economics

    asyncio.run(migrate(database_url))
    fleet = asyncio.run(add_fleet(database_url, meters=1, readings_per_meter=1, seed=2))
    rid = fleet.reading_ids[0]
    out = CliRunner().invoke(why, [str(rid), "--database-url", database_url]).output
    assert "no minter has run yet" in out, out

    async def started(auto: bool) -> None:
        pool = await create_pool(database_url)
        try:
            await economics.record_runtime(pool, "authority", TokenizationSettings(auto_mint_enabled=auto))
        finally:
            await pool.close()
    asyncio.run(started(False))
    out = CliRunner().invoke(why, [str(rid), "--database-url", database_url],
                             env={"TOKENIZATION_AUTO_MINT_ENABLED": "true"}).output
    assert "auto-mint is off" in out and "as the minter last started" in out, out
