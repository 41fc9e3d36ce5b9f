"""`gridtokenx cloud api` (the HTTP/WebSocket server) and `gridtokenx cloud tokens create|list|revoke`."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import click

from cloud import db
from cloud.api import tokens
from cloud.cli_common import config_option, dsn_option, json_option, load_settings
from runtime import logs

T = TypeVar("T")



def _run(work: Callable[[asyncpg.Connection], Awaitable[T]], dsn: str) -> T:
    async def go() -> T:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await work(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(go())
    except asyncpg.UndefinedTableError as exc:
        raise click.ClickException(f"the database is not migrated ({exc}); run `gridtokenx cloud migrate`") from exc
    except (OSError, asyncpg.InvalidCatalogNameError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise click.ClickException(f"cannot connect to PostgreSQL ({exc}); start it or set DATABASE_URL") from exc


# -- server ------------------------------------------------------------------------------------
@click.command(help="Serve the HTTP and WebSocket API (uvicorn): POST /api/meters/submit-reading, reads, admin "
               "routes, /api/ws live events, /metrics, /healthz, /openapi.json and /docs. Any number of "
               "processes (--workers, or several hosts behind a load balancer) share one database.")
@config_option()
@dsn_option
@click.option("--host", default="0.0.0.0", show_default=True, help="bind address")
@click.option("--port", type=int, default=8090, show_default=True, help="TCP port")
@click.option("--workers", type=int, default=1, show_default=True, help="uvicorn worker processes")
@click.option("--client-rate", type=float,
              help="requests/s per API token, 0 = unlimited [env GRIDTOKENX_API_CLIENT_RATE]")
@click.option("--client-burst", type=float, help="[env GRIDTOKENX_API_CLIENT_BURST]")
@click.option("--meter-rate", type=float, help="readings/s per meter, 0 = unlimited [env GRIDTOKENX_API_METER_RATE]")
@click.option("--meter-burst", type=float, help="[env GRIDTOKENX_API_METER_BURST]")
@click.option("--migrate/--no-migrate", "run_migrations", default=True, show_default=True,
              help="apply pending migrations before serving")
@click.option("--log-level", default=None, help="[env LOG_LEVEL]")
def api(config: Path | None, database_url: str | None, host: str, port: int, workers: int,
        client_rate: float | None, client_burst: float | None, meter_rate: float | None,
        meter_burst: float | None, run_migrations: bool, log_level: str | None) -> None:
    import uvicorn

    settings = load_settings(config, database_url=database_url)
    logs.setup(level=log_level or settings.log_level, json_format=settings.log_format == "json",
               log_file=settings.log_file)
    if run_migrations:
        try:
            asyncio.run(db.migrate(settings.database_url))
        except (OSError, asyncpg.PostgresError, db.MigrationError) as exc:
            raise click.ClickException(f"cannot migrate the database ({exc})") from exc
    # Worker processes build their settings from the environment (cloud.api.app.create_app_from_env).
    env = {"DATABASE_URL": settings.database_url, "GRIDTOKENX_API_CONFIG": str(config) if config else None,
           "GRIDTOKENX_API_CLIENT_RATE": client_rate, "GRIDTOKENX_API_CLIENT_BURST": client_burst,
           "GRIDTOKENX_API_METER_RATE": meter_rate, "GRIDTOKENX_API_METER_BURST": meter_burst}
    os.environ.update({k: str(v) for k, v in env.items() if v is not None})
    uvicorn.run("cloud.api.app:create_app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=(log_level or settings.log_level).lower(), access_log=False, lifespan="on",
                ws_max_size=65_536)


# -- tokens ------------------------------------------------------------------------------------
def _parse_expiry(text: str | None) -> datetime | None:
    """`30d`, `12h`, `90m` from now, or an ISO 8601 instant (UTC if no offset)."""
    if not text:
        return None
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.now(UTC) + timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is neither a duration (30d, 12h, 90m) nor an ISO 8601 instant") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _token_json(info: tokens.TokenInfo) -> dict[str, Any]:
    return {"id": info.id, "name": info.name, "scope": info.scope, "prefix": info.prefix, "state": info.state,
            "created_at": info.created_at.isoformat(),
            "expires_at": info.expires_at.isoformat() if info.expires_at else None,
            "revoked_at": info.revoked_at.isoformat() if info.revoked_at else None,
            "last_used_at": info.last_used_at.isoformat() if info.last_used_at else None}


@click.group(help="API bearer tokens: create (the secret is printed once), list, revoke.")
def tokens_group() -> None:
    pass


@tokens_group.command(help="Create a token. Scopes: admin (everything), read (reads and live events), submit "
                      "(POST readings only).")
@click.option("--scope", type=click.Choice(tokens.SCOPES), required=True)
@click.option("--name", required=True, help="who or what uses it (kept in the audit table)")
@click.option("--expires", help="30d, 12h, 90m or an ISO 8601 instant; default: never")
@config_option()
@dsn_option
@json_option
def create(scope: tokens.Scope, name: str, expires: str | None, config: Path | None, database_url: str | None,
           as_json: bool) -> None:
    settings = load_settings(config, database_url=database_url)
    expires_at = _parse_expiry(expires)
    secret, info = _run(lambda c: tokens.create(c, name=name, scope=scope, expires_at=expires_at),
                        settings.database_url)
    if as_json:
        click.echo(json.dumps(_token_json(info) | {"token": secret}))
    else:
        click.echo(secret)
        click.echo(f"token {info.id} ({name}, scope {scope}"
                   f"{', expires ' + info.expires_at.isoformat() if info.expires_at else ''}); "
                   "the secret above is not stored and cannot be shown again", err=True)


@tokens_group.command("list", help="Every token (never the secrets).")
@config_option()
@dsn_option
@json_option
def list_(config: Path | None, database_url: str | None, as_json: bool) -> None:
    settings = load_settings(config, database_url=database_url)
    rows = _run(tokens.list_tokens, settings.database_url)
    if as_json:
        click.echo(json.dumps([_token_json(t) for t in rows]))
        return
    for t in rows:
        click.echo(f"{t.id:>5}  {t.prefix}…  {t.scope:<6}  {t.state:<7}  {t.name}"
                   f"{'  expires ' + t.expires_at.isoformat() if t.expires_at else ''}")


@tokens_group.command(help="Revoke a token by id; refused from the next request on, in every API process.")
@click.argument("token_id", type=int)
@config_option()
@dsn_option
def revoke(token_id: int, config: Path | None, database_url: str | None) -> None:
    settings = load_settings(config, database_url=database_url)
    info = _run(lambda c: tokens.revoke(c, token_id), settings.database_url)
    if info is None:
        raise click.ClickException(f"no token {token_id}; see `gridtokenx cloud tokens list`")
    click.echo(f"token {info.id} ({info.name}) revoked at {info.revoked_at}")


tokens_group.name = "tokens"
COMMANDS: list[click.Command] = [api, tokens_group]
