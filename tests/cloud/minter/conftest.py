"""Minter test helpers: settings for a temp state dir, meters and readings inserted with plain SQL."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from solders.keypair import Keypair

from cloud.settings import ChainSettings, CloudSettings, TokenizationSettings
from protocol.reading import Reading
from protocol.wire import sign_reading


def minter_settings(database_url: str, state_dir: Path, **tokenization: object) -> CloudSettings:
    tok = dataclasses.replace(TokenizationSettings(), polling_interval_secs=0.2, **tokenization)  # type: ignore[arg-type]
    chain = ChainSettings(state_dir=state_dir, confirm_poll_secs=0.05)
    return CloudSettings(database_url=database_url, tokenization=tok, chain=chain)


@dataclass(frozen=True)
class Fleet:
    meters: dict[str, str]  # meter_id -> wallet
    wh: dict[str, int]  # meter_id -> total inserted export_wh
    reading_ids: list[int]


async def add_fleet(dsn: str, *, meters: int, readings_per_meter: int, wallets: int | None = None,
                    seed: int = 7, status: str = "active", max_wh: int = 5000) -> Fleet:
    rng = random.Random(seed)
    wallet_keys = [str(Keypair().pubkey()) for _ in range(wallets or meters)]
    fleet = {f"m-{seed}-{i:04d}": wallet_keys[i % len(wallet_keys)] for i in range(meters)}
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO meters (meter_id, public_key, wallet_address, meter_type, capacity_w, status)"
            " VALUES ($1, $2, $3, 'solar', 20000, $4)",  # 5,000 Wh per 15 min
            [(m, str(meter_key(m).pubkey()), w, status) for m, w in fleet.items()])
        await conn.executemany("INSERT INTO meter_keys (meter_id, public_key) VALUES ($1, $2)",
                               [(m, str(meter_key(m).pubkey())) for m in fleet])
        return await add_readings(conn, fleet, readings_per_meter, rng, max_wh)
    finally:
        await conn.close()


def meter_key(meter_id: str) -> Keypair:
    """A meter's Ed25519 key, derived from its id (a Solana keypair is an Ed25519 keypair)."""
    return Keypair.from_seed(hashlib.sha256(meter_id.encode()).digest())


async def add_readings(conn: asyncpg.Connection, fleet: dict[str, str], per_meter: int, rng: random.Random,
                       max_wh: int, start_seq: int = 1) -> Fleet:
    """Readings as ingest would store them: real signed payloads (reconcile re-reads the evidence), and keys."""
    rows = []
    wh: dict[str, int] = {}
    t0 = datetime(2026, 11, 27, tzinfo=UTC)
    for seq in range(start_seq, start_seq + per_meter):
        for m, w in fleet.items():
            e = rng.randint(0, max_wh)
            wh[m] = wh.get(m, 0) + e
            end = t0 + timedelta(minutes=15 * seq)
            start = end - timedelta(minutes=15)
            payload = sign_reading(Reading(m, seq, int(start.timestamp()), int(end.timestamp()), e,
                                           export_register_wh=0), bytes(meter_key(m)))
            rows.append((m, seq, w, start, end, e, payload, payload.rsplit(b"\n", 1)[1].decode()))
    ids = await conn.fetch(
        "INSERT INTO meter_readings (meter_id, seq, wallet_address, interval_start, interval_end, export_wh,"
        " format, payload, signature) SELECT m, s, w, a, b, e, 'v1', p, g"
        " FROM unnest($1::text[], $2::bigint[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::bigint[],"
        " $7::bytea[], $8::text[]) AS u(m, s, w, a, b, e, p, g) RETURNING id",
        *[list(col) for col in zip(*rows, strict=True)])
    # Ingest writes each reading's idempotency key with it (migration 060); lookups by meter go through it.
    await conn.execute(
        "INSERT INTO meter_reading_keys (meter_id, seq, reading_id, payload_sha256, export_wh, export_register_wh,"
        " interval_start, interval_end) SELECT meter_id, seq, id, sha256(payload), export_wh, export_register_wh,"
        " interval_start, interval_end FROM meter_readings WHERE id = ANY($1)", [r["id"] for r in ids])
    return Fleet(fleet, wh, [r["id"] for r in ids])


def entitled_by_wallet(fleet: Fleet, *, ratio_num: int = 1, ratio_den: int = 1, decimals: int = 9) -> dict[str, int]:
    out: dict[str, int] = {}
    for m, w in fleet.meters.items():
        out[w] = out.get(w, 0) + fleet.wh.get(m, 0) * ratio_num * 10**decimals // (1000 * ratio_den)
    return out


async def unminted(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM meter_readings WHERE NOT minted"))
    finally:
        await conn.close()


def ids_of(rows: Sequence[asyncpg.Record]) -> list[int]:
    return [r["id"] for r in rows]
