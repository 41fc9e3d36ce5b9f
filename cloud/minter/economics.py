"""Economic settings as records (migration 031): what a token is worth is read from the database.

The ratio, decimals, mint address and token program are recorded on the minter's first start. On
every later start the configuration must agree with the record in force, and the mint on chain
with both (cloud.chain.identity.check_mint_on_chain), or the minter refuses to start with one
sentence. A ratio change is `gridtokenx cloud settings set-ratio`: a new record that applies to
readings with id ≥ its `from_reading_id`, never to readings accepted before it.

Arithmetic guard: SPL amounts are u64. The configuration is refused when one reading at
TOKENIZATION_MAX_READING_KWH would mint more than u64_max / SAFETY_READINGS base units (so a wallet
holds at least that many maximal readings); any single amount is checked again before signing.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction

import asyncpg

from cloud.chain.base import MintIdentity
from cloud.settings import TokenizationSettings
from protocol.units import entitled_base_units

U64_MAX = 2**64 - 1
#: A wallet must be able to hold this many maximal readings (TOKENIZATION_MAX_READING_KWH each).
SAFETY_READINGS = 10_000


class SettingsError(Exception):
    """Configuration that disagrees with the records or cannot be minted safely; one sentence."""


@dataclass(frozen=True, slots=True)
class MintSettings:
    id: int
    mint_address: str
    token_program: str
    decimals: int
    ratio_text: str
    ratio: Fraction
    from_reading_id: int
    reason: str
    recorded_at: datetime


def check_config(tok: TokenizationSettings) -> None:
    """Refuse unsafe decimals / ratio before anything is signed."""
    if not 0 <= tok.decimals <= 255:
        raise SettingsError(f"TOKENIZATION_DECIMALS is {tok.decimals}; a mint's decimals are 0..255")
    per_reading = entitled_base_units(tok.max_reading_wh, ratio=tok.ratio, decimals=tok.decimals)
    if per_reading > U64_MAX // SAFETY_READINGS:
        raise SettingsError(
            f"TOKENIZATION_DECIMALS={tok.decimals} with ratio {tok.kwh_to_token_ratio} makes one "
            f"{tok.max_reading_kwh} kWh reading {per_reading} base units, more than u64 max / {SAFETY_READINGS} "
            f"({U64_MAX // SAFETY_READINGS}); lower the decimals or the ratio")


def _row(r: asyncpg.Record) -> MintSettings:
    return MintSettings(r["id"], r["mint_address"], r["token_program"], r["decimals"], r["ratio"],
                        Fraction(int(r["ratio_num"]), int(r["ratio_den"])), r["from_reading_id"], r["reason"],
                        r["recorded_at"])


async def load(conn: asyncpg.Connection | asyncpg.Pool) -> list[MintSettings]:
    """Every record, oldest first (ascending from_reading_id)."""
    rows = await conn.fetch("SELECT * FROM mint_settings ORDER BY from_reading_id")
    return [_row(r) for r in rows]


def in_force(records: list[MintSettings], reading_id: int) -> MintSettings:
    """The record that applies to `reading_id`."""
    starts = [r.from_reading_id for r in records]
    i = bisect.bisect_right(starts, reading_id) - 1
    if i < 0:
        raise SettingsError(f"no settings record applies to reading {reading_id}")
    return records[i]


async def ensure_recorded(pool: asyncpg.Pool, identity: MintIdentity, tok: TokenizationSettings) -> MintSettings:
    """First start: record the settings (applying to every reading, also the backfilled ledger).
    Later starts: the configuration must equal the latest record, or SettingsError says what differs."""
    mint, program = str(identity.mint), str(identity.token_program)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE mint_settings IN EXCLUSIVE MODE")
        records = await load(conn)
        if not records:
            ratio = tok.ratio
            row = await conn.fetchrow(
                "INSERT INTO mint_settings (mint_address, token_program, decimals, ratio, ratio_num, ratio_den,"
                " from_reading_id, reason) VALUES ($1, $2, $3, $4, $5, $6, 0, 'first start') RETURNING *",
                mint, program, identity.decimals, tok.kwh_to_token_ratio, ratio.numerator, ratio.denominator)
            # Ledgers written before settings were records belong to this first record.
            await conn.execute(
                "INSERT INTO meter_mint_ledger_settings (meter_id, settings_id, minted_wh, minted_units)"
                " SELECT meter_id, $1, minted_wh, minted_units FROM meter_mint_ledger ON CONFLICT DO NOTHING",
                row["id"])
            await conn.execute("UPDATE mint_batches SET settings_id = $1 WHERE settings_id IS NULL", row["id"])
            return _row(row)
    latest = records[-1]
    since = f"recorded {latest.recorded_at:%Y-%m-%d %H:%M:%SZ} ({latest.reason})"
    if latest.mint_address != mint:
        raise SettingsError(f"the configured mint is {mint} but this database mints to {latest.mint_address}, "
                            f"{since}; point GRIDTOKENX_MINT_ADDRESS / the chain state at that mint")
    if latest.token_program != program:
        raise SettingsError(f"the configured token program is {program} but the recorded one is "
                            f"{latest.token_program}, {since}; set GRIDTOKENX_TOKEN_PROGRAM back")
    if latest.decimals != identity.decimals or latest.decimals != tok.decimals:
        raise SettingsError(f"TOKENIZATION_DECIMALS is {tok.decimals} but the recorded decimals are "
                            f"{latest.decimals}, {since}; decimals cannot change for a mint")
    if latest.ratio != tok.ratio:
        raise SettingsError(f"TOKENIZATION_KWH_TO_TOKEN_RATIO is {tok.kwh_to_token_ratio} but the ratio in force is "
                            f"{latest.ratio_text}, {since}; set it back, or change it explicitly with "
                            "`gridtokenx cloud settings set-ratio`")
    return latest


async def set_ratio(conn: asyncpg.Connection, ratio_text: str, *, note: str | None = None) -> MintSettings:
    """Record a new ratio for every reading accepted from now on (ids from the next sequence value)."""
    from protocol.units import parse_ratio

    ratio = parse_ratio(ratio_text)
    async with conn.transaction():
        await conn.execute("LOCK TABLE mint_settings IN EXCLUSIVE MODE")
        records = await load(conn)
        if not records:
            raise SettingsError("no settings are recorded yet: start the minter once first (it records the "
                                "configured ratio, decimals, mint and token program)")
        latest = records[-1]
        if latest.ratio == ratio:
            raise SettingsError(f"the ratio in force is already {latest.ratio_text}")
        start = int(await conn.fetchval("SELECT nextval('meter_readings_id_seq')"))
        row = await conn.fetchrow(
            "INSERT INTO mint_settings (mint_address, token_program, decimals, ratio, ratio_num, ratio_den,"
            " from_reading_id, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
            latest.mint_address, latest.token_program, latest.decimals, ratio_text, ratio.numerator,
            ratio.denominator, start, f"ratio change {latest.ratio_text} -> {ratio_text}"
            + (f": {note}" if note else ""))
    return _row(row)


async def record_runtime(pool: asyncpg.Pool, authority: str, tok: TokenizationSettings) -> None:
    await pool.execute(
        "INSERT INTO minter_runtime (authority, auto_mint_enabled, polling_secs) VALUES ($1, $2, $3)"
        " ON CONFLICT (authority) DO UPDATE SET auto_mint_enabled = EXCLUDED.auto_mint_enabled,"
        " polling_secs = EXCLUDED.polling_secs, started_at = now()",
        authority, tok.auto_mint_enabled, tok.polling_interval_secs)
