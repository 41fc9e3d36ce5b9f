"""`gridtokenx cloud doctor`: the GridTokenX Phase 2 guide's troubleshooting checklist as one command.

One line per check: ok / FAIL / skip, what was seen, and what to do when it fails. A check whose
prerequisite failed (no database, no RPC) is skipped rather than failed, so the first failure
points at the cause. Everything here only reads: the doctor never creates a mint, a keypair or a
migration, and never joins the ingest's shared subscription (it would take batches from it); it
watches the batches topic with a plain subscription instead.

Exit status: 0 when nothing failed, 1 otherwise (skips do not fail).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import click
from solders.pubkey import Pubkey

from cloud.settings import CloudSettings
from protocol import topics
from runtime.config import BrokerURL, ConfigError, load

OK, FAIL, SKIP = "ok", "FAIL", "skip"
TOKEN_ACCOUNT_SIZE = 170
RETRY_QUEUE_ALERT = 50  # the GridTokenX Phase 2 guide's threshold
NO_BATCH_UNITS = 400_000  # unit limit assumed for a full batch before the minter has recorded one


@dataclass(slots=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name:<20} {self.detail}"
        return text + (f"\n      → {self.fix}" if self.status == FAIL and self.fix else "")


@dataclass(slots=True)
class DoctorOptions:
    edge_broker_url: BrokerURL | None = None
    listen_secs: float = 3.0
    ingest_max_lag_secs: float = 300.0
    minter_stale_secs: float | None = None  # default: 3 polling intervals + 60 s
    timeout: float = 5.0


@dataclass(slots=True)
class _Context:
    settings: CloudSettings
    options: DoctorOptions
    db_ok: bool = False
    rpc_ok: bool = False
    cloud_broker_ok: bool = False
    authority: Pubkey | None = None
    notes: dict[str, Any] = field(default_factory=dict)


async def run_checks(settings: CloudSettings, options: DoctorOptions | None = None) -> list[Check]:
    ctx = _Context(settings, options or DoctorOptions())
    checks = []
    for fn in (_database, _migrations, _cloud_broker, _edge_broker, _shared_subscription, _rpc, _mint,
               _fee_payer, _minter_alive, _retry_queue):
        try:
            checks.append(await fn(ctx))
        except Exception as exc:  # a check that crashes is a failed check, not a crashed doctor
            checks.append(Check(fn.__name__.lstrip("_").replace("_", " "), FAIL, f"{type(exc).__name__}: {exc}",
                                "see the error; run again with LOG_LEVEL=DEBUG"))
    return checks


# -- database ---------------------------------------------------------------------------------
async def _connect(ctx: _Context) -> asyncpg.Connection:
    return await asyncpg.connect(ctx.settings.database_url, timeout=ctx.options.timeout)


async def _database(ctx: _Context) -> Check:
    try:
        conn = await _connect(ctx)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return Check("database", FAIL, f"{_dsn(ctx.settings.database_url)}: {type(exc).__name__}: {exc}",
                     "start PostgreSQL or set DATABASE_URL (psql $DATABASE_URL -c 'SELECT 1')")
    try:
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    ctx.db_ok = True
    return Check("database", OK, f"{_dsn(ctx.settings.database_url)} (PostgreSQL {version})")


async def _migrations(ctx: _Context) -> Check:
    from cloud.db import discover

    if not ctx.db_ok:
        return Check("migrations", SKIP, "database unreachable")
    conn = await _connect(ctx)
    try:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations") if exists else []
    finally:
        await conn.close()
    applied = {r["version"]: r["checksum"] for r in rows}
    known = discover()
    pending = [m.name for m in known if m.version not in applied]
    changed = [m.name for m in known if m.version in applied and applied[m.version] != m.checksum]
    if pending or changed:
        what = (f"{len(pending)} pending ({', '.join(pending[:3])}{'...' if len(pending) > 3 else ''})"
                if pending else f"changed after being applied: {', '.join(changed)}")
        return Check("migrations", FAIL, what, "run `gridtokenx cloud migrate`" if pending
                     else "restore the migration files of this release")
    ctx.notes["migrated"] = True
    return Check("migrations", OK, f"{len(known)} applied, none pending")


# -- brokers ----------------------------------------------------------------------------------
def _client(url: BrokerURL, ctx: _Context, ident: str) -> aiomqtt.Client:
    tls = None
    if url.tls:
        ca = ctx.settings.broker_ca
        tls = aiomqtt.TLSParameters(ca_certs=str(ca) if ca else None)
    return aiomqtt.Client(url.host, url.port, username=url.username, password=url.password,
                          identifier=f"{ident}-{int(time.time() * 1000) % 10**9}", clean_session=True,
                          tls_params=tls, timeout=ctx.options.timeout)


async def _broker(ctx: _Context, name: str, url: BrokerURL, who: str) -> Check:
    try:
        async with asyncio.timeout(ctx.options.timeout):
            async with _client(url, ctx, "gridtokenx-doctor"):
                pass
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        return Check(name, FAIL, f"{url}: {type(exc).__name__}: {exc}",
                     f"is the broker up, and are {who}'s username/password in the broker's passwd file?")
    return Check(name, OK, f"{url} as {url.username or 'anonymous'}")


async def _cloud_broker(ctx: _Context) -> Check:
    check = await _broker(ctx, "cloud broker", ctx.settings.broker_url, "GRIDTOKENX_CLOUD_BROKER_URL")
    ctx.cloud_broker_ok = check.status == OK
    return check


async def _edge_broker(ctx: _Context) -> Check:
    url = ctx.options.edge_broker_url
    if url is None:
        return Check("edge broker", SKIP, "no --edge-broker-url (GRIDTOKENX_EDGE_BROKER_URL) given")
    return await _broker(ctx, "edge broker", url, "GRIDTOKENX_EDGE_BROKER_URL")


async def _shared_subscription(ctx: _Context) -> Check:
    """Batches on the broker must reach the database: watch `edge/+/batches` (plain subscription, so the
    ingest group keeps every message) for a moment; if any arrives, the newest accepted reading must be
    recent."""
    name = "shared subscription"
    if not ctx.cloud_broker_ok:
        return Check(name, SKIP, "cloud broker unreachable")
    seen = 0
    with contextlib.suppress(TimeoutError):
        async with _client(ctx.settings.broker_url, ctx, "gridtokenx-doctor-watch") as client:
            await client.subscribe(topics.BATCHES_FILTER, qos=0)
            async with asyncio.timeout(ctx.options.listen_secs):
                async for _message in client.messages:
                    seen += 1
                    break
    if not seen:
        return Check(name, SKIP, f"no batch on {topics.BATCHES_FILTER} in {ctx.options.listen_secs:g} s "
                                 "(no traffic to check against)")
    if not ctx.db_ok or not ctx.notes.get("migrated"):
        return Check(name, SKIP, "batches flow on the broker; database not ready to compare")
    conn = await _connect(ctx)
    try:
        lag = await conn.fetchval("SELECT EXTRACT(EPOCH FROM now() - max(submitted_at))::float8 FROM meter_readings")
    finally:
        await conn.close()
    if lag is None or lag > ctx.options.ingest_max_lag_secs:
        seen_text = "never" if lag is None else f"{lag:.0f} s ago"
        return Check(name, FAIL, f"batches arrive on the broker but the newest stored reading is {seen_text}",
                     f"is `gridtokenx cloud run --role ingest` running and subscribed to "
                     f"{topics.SHARED_BATCHES_FILTER}? (its log says 'consuming ...')")
    return Check(name, OK, f"batches flowing; newest stored reading {lag:.0f} s ago")


# -- chain ------------------------------------------------------------------------------------
async def _rpc(ctx: _Context) -> Check:
    chain = ctx.settings.chain
    if chain.backend != "rpc":
        return Check("rpc", SKIP, f"GRIDTOKENX_CHAIN_BACKEND={chain.backend} (no RPC node)")
    from solana.rpc.async_api import AsyncClient

    client = AsyncClient(chain.rpc_url, timeout=ctx.options.timeout)
    try:
        health = await _rpc_raw(chain.rpc_url, "getHealth", ctx.options.timeout)
        version = (await client.get_version()).value
    except Exception as exc:  # transport, HTTP or JSON-RPC error alike
        return Check("rpc", FAIL, f"{chain.rpc_url}: {type(exc).__name__}: {exc}",
                     "check SOLANA_RPC_URL and that the node is up (curl it with getHealth)")
    finally:
        await client.close()
    if health.get("result") != "ok":
        return Check("rpc", FAIL, f"{chain.rpc_url}: getHealth says {health.get('error') or health}",
                     "the node is behind or unhealthy: wait for it to catch up or use another RPC provider")
    ctx.rpc_ok = True
    return Check("rpc", OK, f"{chain.rpc_url} healthy, {version.solana_core}")


async def _rpc_raw(url: str, method: str, within: float) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=within)) as session, \
            session.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method}) as resp:
        if resp.status != 200:
            return {"error": f"HTTP {resp.status}"}
        doc: dict[str, Any] = await resp.json(content_type=None)
        return doc


def _recorded_identity(settings: CloudSettings) -> tuple[Pubkey | None, Pubkey | None, int, str]:
    """(authority, mint, decimals, where) as configured or recorded in the state dir; reads only."""
    from cloud.chain.identity import AUTHORITY_FILE, MINT_FILE, load_keypair

    chain = settings.chain
    key_path = chain.authority_keypair or chain.state_dir / AUTHORITY_FILE
    authority = load_keypair(key_path).pubkey() if key_path.exists() else None
    if chain.mint_address:
        return authority, Pubkey.from_string(chain.mint_address), settings.tokenization.decimals, \
            "GRIDTOKENX_MINT_ADDRESS"
    mint_file = chain.state_dir / MINT_FILE
    if not mint_file.exists():
        return authority, None, settings.tokenization.decimals, str(mint_file)
    doc = json.loads(mint_file.read_text())
    return authority, Pubkey.from_string(doc["mint"]), int(doc["decimals"]), str(mint_file)


async def _mint(ctx: _Context) -> Check:
    if not ctx.rpc_ok:
        return Check("mint", SKIP, "no RPC to read it from")
    from cloud.chain.identity import token_program_id
    from cloud.chain.rpc import RpcBackend

    authority, mint, decimals, where = _recorded_identity(ctx.settings)
    ctx.authority = authority
    if mint is None or authority is None:
        return Check("mint", FAIL, f"no mint or authority recorded ({where})",
                     "start the minter once (`gridtokenx cloud run --role mint`) to create them, or set "
                     "GRIDTOKENX_MINT_ADDRESS and GRIDTOKENX_MINT_AUTHORITY_KEYPAIR")
    program = token_program_id(ctx.settings.chain.token_program)
    backend = RpcBackend(ctx.settings.chain.rpc_url, timeout=ctx.options.timeout, rate_limit_retries=1)
    try:
        resp = await backend.client.get_account_info(mint)
    finally:
        await backend.close()
    acc = resp.value
    problems = []
    if acc is None:
        problems.append("does not exist on this cluster")
    else:
        data = bytes(acc.data)
        if acc.owner != program:
            problems.append(f"is owned by {acc.owner}, not GRIDTOKENX_TOKEN_PROGRAM {program}")
        if len(data) < 82:
            problems.append("is not a mint account")
        else:
            if data[44] != decimals:
                problems.append(f"has {data[44]} decimals, {where} records {decimals}")
            if decimals != ctx.settings.tokenization.decimals:
                problems.append(f"records {decimals} decimals but TOKENIZATION_DECIMALS is "
                                f"{ctx.settings.tokenization.decimals}")
            has_authority = int.from_bytes(data[0:4], "little") == 1
            if not has_authority or Pubkey.from_bytes(data[4:36]) != authority:
                problems.append(f"mint authority is not {authority}")
    if problems:
        return Check("mint", FAIL, f"{mint} " + "; ".join(problems),
                     "point SOLANA_RPC_URL at the cluster holding this mint, or fix GRIDTOKENX_MINT_ADDRESS / "
                     "the authority keypair / TOKENIZATION_DECIMALS to match it")
    return Check("mint", OK, f"{mint}: {decimals} decimals, authority {authority}, program {program}")


async def _fee_payer(ctx: _Context) -> Check:
    if not ctx.rpc_ok or ctx.authority is None:
        return Check("fee payer", SKIP, "no RPC or no recorded authority")
    from cloud.chain.rpc import RpcBackend
    from cloud.chain.tx import ComputeBudget

    chain = ctx.settings.chain
    backend = RpcBackend(chain.rpc_url, timeout=ctx.options.timeout, rate_limit_retries=1)
    try:
        lamports = await backend.lamports(ctx.authority)
    finally:
        await backend.close()
    units = NO_BATCH_UNITS
    if ctx.db_ok and ctx.notes.get("migrated"):
        conn = await _connect(ctx)
        try:
            recorded = await conn.fetchval("SELECT max(compute_unit_limit) FROM mint_batches")
        finally:
            await conn.close()
        units = int(recorded or units)
    wallets = 9
    per_batch = (ComputeBudget(units, chain.priority_fee_max_micro_lamports).fee()
                 + wallets * (128 + TOKEN_ACCOUNT_SIZE) * 3480 * 2)
    left = lamports // per_batch
    detail = f"{ctx.authority} has {lamports / 1e9:.4f} SOL: {left} worst-case batches ({per_batch} lamports each)"
    if left < chain.fee_payer_min_batches:
        return Check("fee payer", FAIL, detail + f", fewer than GRIDTOKENX_FEE_PAYER_MIN_BATCHES="
                     f"{chain.fee_payer_min_batches}", f"transfer SOL to {ctx.authority} (it pays every fee "
                     "and each new token account's rent)")
    return Check("fee payer", OK, detail)


# -- minter -----------------------------------------------------------------------------------
async def _minter_alive(ctx: _Context) -> Check:
    name = "minter alive"
    if not ctx.db_ok or not ctx.notes.get("migrated"):
        return Check(name, SKIP, "database not ready")
    tok = ctx.settings.tokenization
    if not tok.auto_mint_enabled:
        return Check(name, SKIP, "TOKENIZATION_AUTO_MINT_ENABLED is off (manual `cloud mint` only)")
    stale = ctx.options.minter_stale_secs or 3 * tok.polling_interval_secs + 60
    conn = await _connect(ctx)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS waiting, EXTRACT(EPOCH FROM now() - min(r.submitted_at))::float8 AS oldest"
            " FROM meter_readings r JOIN meters m ON m.meter_id = r.meter_id AND m.status = 'active'"
            " LEFT JOIN minting_retry_queue q ON q.reading_id = r.id"
            " LEFT JOIN meter_mint_ledger l ON l.meter_id = r.meter_id"
            " WHERE NOT r.minted AND l.open_batch_id IS NULL"
            " AND (q.id IS NULL OR (NOT q.dead_lettered AND q.next_retry_at <= now()))")
        last = await conn.fetchval("SELECT EXTRACT(EPOCH FROM now() - max(updated_at))::float8 FROM mint_batches")
    finally:
        await conn.close()
    last_text = "never" if last is None else f"{last:.0f} s ago"
    if row["waiting"] and row["oldest"] > stale and (last is None or last > stale):
        return Check(name, FAIL, f"{row['waiting']} readings waiting (oldest {row['oldest']:.0f} s), last batch "
                     f"{last_text}", "start `gridtokenx cloud run --role mint` (or --role all) and read its log; "
                     "`gridtokenx cloud status` shows the backlog")
    return Check(name, OK, f"last batch {last_text}; {row['waiting']} readings waiting")


async def _retry_queue(ctx: _Context) -> Check:
    if not ctx.db_ok or not ctx.notes.get("migrated"):
        return Check("retry queue", SKIP, "database not ready")
    conn = await _connect(ctx)
    try:
        row = await conn.fetchrow("SELECT count(*) AS size, count(*) FILTER (WHERE dead_lettered) AS dead,"
                                  " coalesce(max(attempts), 0) AS attempts FROM minting_retry_queue")
    finally:
        await conn.close()
    detail = f"{row['size']} queued, {row['dead']} dead-lettered, max {row['attempts']} attempts"
    if row["dead"] or row["size"] > RETRY_QUEUE_ALERT:
        return Check("retry queue", FAIL, detail, "`gridtokenx cloud why <meter_id> <seq>` says why; fix the cause "
                     "(RPC rate limits, SOL for fees, program errors in the log), then `gridtokenx cloud mint`")
    return Check("retry queue", OK, detail)


def _dsn(dsn: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


# -- command ----------------------------------------------------------------------------------
@click.command(help="Run the troubleshooting checklist: database reachable and migrated, both brokers with "
               "the service credentials, batches reaching the database, RPC health and version, the mint "
               "(decimals, authority, program), SOL for fees, the minter alive, the retry queue. One line per "
               "check with what to do; exit 1 when any check fails.")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="cloud YAML settings file (environment variables override it)")
@click.option("--database-url", default=None, help="PostgreSQL URL [env DATABASE_URL]")
@click.option("--edge-broker-url", envvar="GRIDTOKENX_EDGE_BROKER_URL", default=None,
              help="also check the edge broker with these credentials [env GRIDTOKENX_EDGE_BROKER_URL]")
@click.option("--listen-secs", default=3.0, show_default=True,
              help="how long to watch the batches topic for traffic")
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def doctor(config_path: Path | None, database_url: str | None, edge_broker_url: str | None, listen_secs: float,
           as_json: bool) -> None:
    try:
        settings = load(CloudSettings, config_path, overrides={"database_url": database_url})
        edge = BrokerURL.parse(edge_broker_url) if edge_broker_url else None
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    checks = asyncio.run(run_checks(settings, DoctorOptions(edge_broker_url=edge, listen_secs=listen_secs)))
    failed = [c for c in checks if c.status == FAIL]
    if as_json:
        click.echo(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        for c in checks:
            click.echo(c.line())
        click.echo(f"{len(failed)} of {len(checks)} checks failed" if failed else "all checks passed")
    sys.exit(1 if failed else 0)
