"""The Litestar application: routes, scopes, audit, rate limits, /metrics, /healthz, OpenAPI 3.1.

Every route but /healthz, /metrics, /openapi.json and /docs needs a bearer token whose scope grants
the route's `opt["scope"]` (checked by `scope_guard`, on every request, against PostgreSQL). Request
and response bodies are msgspec structs; Litestar derives the OpenAPI document from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from litestar import Litestar, MediaType, Request, Response, WebSocket, get, post, websocket
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.exceptions import (
    ClientException,
    HTTPException,
    InternalServerException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    WebSocketDisconnect,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.params import Parameter
from litestar.types import ASGIApp, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from cloud.api import events as ev
from cloud.api import tokens
from cloud.api.ratelimit import Buckets
from cloud.api.settings import ApiSettings
from cloud.api.submit import MeterRateLimited, Phase2Reading, Submitter, reading_for_phase2
from cloud.chain.base import ChainError
from cloud.ingest import admin as registry_admin
from cloud.settings import CloudSettings
from protocol.errors import ProtocolError
from protocol.meters_csv import MeterRow
from protocol.units import base_units_to_tokens_text, entitled_base_units

log = logging.getLogger("cloud.api")
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json"})


# -- bodies ------------------------------------------------------------------------------------
class ErrorOut(msgspec.Struct):
    status_code: int
    detail: str
    extra: Any = None


class SubmitOut(msgspec.Struct):
    status: Literal["accepted", "duplicate", "rejected"]
    meter_id: str | None
    seq: int | None
    reason: str | None = None
    detail: str | None = None
    reading_id: int | None = None


class HealthOut(msgspec.Struct):
    healthy: bool
    component: str
    database: str
    events_connected: bool
    websocket_clients: int


class MeterOut(msgspec.Struct):
    meter_id: str
    public_key: str
    wallet_address: str
    meter_type: str
    capacity_w: int
    status: str
    status_reason: str | None
    keys: int
    updated_at: float


class ReadingOut(msgspec.Struct):
    state: Literal["minted", "in_batch", "unminted", "rejected"]
    seq: int | None
    id: int | None = None
    export_wh: int | None = None
    export_register_wh: int | None = None
    interval_end: int | None = None
    format: str | None = None
    mint_batch_id: int | None = None
    mint_tx_signature: str | None = None
    mint_slot: int | None = None
    reason: str | None = None
    detail: str | None = None
    received_at: float | None = None


class ReadingsPage(msgspec.Struct):
    meter_id: str
    items: list[ReadingOut]
    next_before_seq: int | None
    """Pass as `before_seq` for the next (older) page; null at the end."""


class StoryOut(msgspec.Struct):
    state: str
    text: str
    detail: dict[str, Any]


class BalanceOut(msgspec.Struct):
    wallet: str
    meters: list[str]
    validated_wh: int
    entitled_base_units: int
    entitled_tokens: str
    minted_recorded_base_units: int
    """Sum of this wallet's amounts in confirmed mint batches (the database's view)."""
    on_chain_base_units: int | None
    on_chain_tokens: str | None
    note: str | None = None


class BatchOut(msgspec.Struct):
    id: int
    status: str
    signature: str | None
    signatures: list[str]
    """Every signature this batch was ever signed with (re-signing after blockhash expiry)."""
    slot: int | None
    wallets: list[str]
    amounts: list[str]
    reading_ids: list[int]
    manual: bool
    created_at: float
    confirmed_at: float | None
    error: str | None


class BatchesPage(msgspec.Struct):
    items: list[BatchOut]
    next_before_id: int | None


Id = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
Text64 = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class MintIn(msgspec.Struct, kw_only=True):
    reading_ids: Annotated[list[Id], msgspec.Meta(max_length=1000)] | None = None
    meter_id: Text64 | None = None
    wait_secs: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0


class MeterIn(msgspec.Struct, kw_only=True):
    meter_id: Text64
    public_key: Text64
    wallet_address: Text64
    meter_type: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] = "solar"
    capacity_w: Annotated[int, msgspec.Meta(ge=0, le=10**12)]


class StatusIn(msgspec.Struct, kw_only=True):
    reason: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class RotateIn(msgspec.Struct, kw_only=True):
    public_key: Text64


class ReconcileIn(msgspec.Struct, kw_only=True):
    fix: bool = False


class AdminOut(msgspec.Struct):
    ok: bool
    action: str
    result: dict[str, Any]


class AuditOut(msgspec.Struct):
    id: int
    token_id: int | None
    token_name: str | None
    action: str
    target: str | None
    params: dict[str, Any]
    status: int
    outcome: str | None
    at: float


# -- per-process context -----------------------------------------------------------------------
class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("gridtokenx_api_requests_total", "HTTP requests by route and status",
                                ["route", "status"], registry=registry)
        self.seconds = Histogram("gridtokenx_api_request_seconds", "HTTP request duration by route", ["route"],
                                 registry=registry, buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.readings = Counter("gridtokenx_api_readings_total", "Readings posted, by outcome and reason",
                                ["status", "reason"], registry=registry)
        self.rate_limited = Counter("gridtokenx_api_rate_limited_total", "429 answers by limit", ["limit"],
                                    registry=registry)
        self.auth_refused = Counter("gridtokenx_api_auth_refused_total", "401/403 answers", ["why"],
                                    registry=registry)
        self.ws_clients = Gauge("gridtokenx_api_websocket_clients", "Connected WebSocket clients", registry=registry)
        self.ws_events = Counter("gridtokenx_api_websocket_events_total", "Events sent to WebSocket clients",
                                 registry=registry)
        self.ws_dropped = Counter("gridtokenx_api_websocket_dropped_total", "Clients dropped for lagging",
                                  registry=registry)


@dataclass
class ApiContext:
    cloud: CloudSettings
    api: ApiSettings
    metrics: ApiMetrics
    pool: asyncpg.Pool | None = None
    submitter: Submitter | None = None
    hub: ev.EventHub | None = None
    clients: Buckets = field(init=False)
    meters: Buckets = field(init=False)
    token_cache: tokens.TokenCache = field(default_factory=tokens.TokenCache)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.clients = Buckets(self.api.client_rate, self.api.client_burst)
        self.meters = Buckets(self.api.meter_rate, self.api.meter_burst)

    @property
    def db(self) -> asyncpg.Pool:
        assert self.pool is not None, "the API is not started"
        return self.pool


def _ctx(conn: ASGIConnection[Any, Any, Any, Any]) -> ApiContext:
    ctx: ApiContext = conn.app.state.ctx
    return ctx


# -- auth --------------------------------------------------------------------------------------
def _secret(conn: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = conn.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    if conn.scope["type"] == ScopeType.WEBSOCKET:  # browsers cannot set headers on a WebSocket
        return conn.query_params.get("token")
    return None


async def scope_guard(conn: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    required = handler.opt.get("scope")
    if required is None:
        return
    ctx = _ctx(conn)
    secret = _secret(conn)
    if not secret:
        ctx.metrics.auth_refused.labels("missing").inc()
        raise NotAuthorizedException("an API token is required: Authorization: Bearer <token>",
                                     headers={"WWW-Authenticate": "Bearer"})
    try:
        info = await ctx.token_cache.authenticate(ctx.db, secret)
    except tokens.TokenRefused as exc:
        ctx.metrics.auth_refused.labels("invalid").inc()
        raise NotAuthorizedException(str(exc), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from exc
    if info.scope not in tokens.GRANTS[required]:
        ctx.metrics.auth_refused.labels("scope").inc()
        raise PermissionDeniedException(f"this route needs a token with scope {required!r}; this one has "
                                        f"{info.scope!r}")
    retry = ctx.clients.take(f"token:{info.id}")
    if retry is not None:
        ctx.metrics.rate_limited.labels("client").inc()
        raise HTTPException(status_code=429, detail=f"rate limit of token {info.id} exceeded",
                            headers={"Retry-After": str(max(1, int(retry + 0.999)))})
    conn.state.token = info


def _token(request: Request[Any, Any, Any]) -> tokens.TokenInfo:
    info: tokens.TokenInfo = request.state.token
    return info


def _errors(*codes: int) -> dict[int, ResponseSpec]:
    text = {400: "Bad request (validation)", 401: "No token, or an unknown, expired or revoked token",
            403: "The token's scope does not grant this route", 404: "Not found",
            409: "Conflict (the chain is busy in another process)", 413: "Body too large",
            422: "Rejected", 429: "Rate limited; see Retry-After", 503: "Not available"}
    return {c: ResponseSpec(data_container=ErrorOut, description=text[c]) for c in codes}


_READ = {**_errors(400, 401, 403, 413, 429)}
_ADMIN = {**_errors(400, 401, 403, 404, 409, 413, 429)}


# -- metrics middleware ------------------------------------------------------------------------
def metrics_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        status = 500

        async def capture(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await app(scope, receive, capture)
        finally:
            route = str(scope.get("path_template", "other"))  # type: ignore[misc]
            metrics: ApiMetrics = scope["app"].state.ctx.metrics  # type: ignore[attr-defined]
            metrics.requests.labels(route, str(status)).inc()
            metrics.seconds.labels(route).observe(time.perf_counter() - started)

    return middleware


# -- public --------------------------------------------------------------------------------------
@get("/healthz", responses={503: ResponseSpec(HealthOut)})
async def healthz(request: Request[Any, Any, Any]) -> Response[HealthOut]:
    ctx = _ctx(request)
    database = "ok"
    try:
        async with asyncio.timeout(ctx.api.health_timeout_secs):
            await ctx.db.fetchval("SELECT 1")
    except TimeoutError:
        database = f"no answer within {ctx.api.health_timeout_secs:g} s"
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        database = f"error: {exc}"[:200]
    hub_ok = ctx.hub is not None and ctx.hub.connected
    healthy = database == "ok"
    body = HealthOut(healthy, "cloud-api", database, hub_ok, len(ctx.hub.subscriptions) if ctx.hub else 0)
    return Response(body, status_code=200 if healthy else 503)


@get("/metrics", media_type="text/plain; version=0.0.4", include_in_schema=False)
async def metrics(request: Request[Any, Any, Any]) -> bytes:
    return generate_latest(_ctx(request).metrics.registry)


@get("/openapi.json", include_in_schema=False, media_type=MediaType.JSON)
async def openapi_json(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return request.app.openapi_schema.to_schema()


# -- readings in --------------------------------------------------------------------------------
_PHASE2_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["meter_serial", "kwh_amount", "reading_timestamp", "wallet_address", "meter_signature"],
    properties={
        "meter_serial": Schema(type=OpenAPIType.STRING),
        "kwh_amount": Schema(type=OpenAPIType.NUMBER),
        "reading_timestamp": Schema(type=OpenAPIType.STRING, description="RFC 3339, as signed"),
        "wallet_address": Schema(type=OpenAPIType.STRING),
        "meter_signature": Schema(type=OpenAPIType.STRING, description="base58 Ed25519 signature"),
    },
    description="The GridTokenX gateway's SubmitReadingRequest; other fields it accepts are ignored.")


@dataclass
class SubmitOperation(Operation):
    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True, description="A Phase 2 JSON reading, or a raw protocol payload (v1 or legacy).",
            content={"application/json": OpenAPIMediaType(schema=_PHASE2_SCHEMA),
                     "application/octet-stream": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING,
                                                                            format=OpenAPIFormat.BINARY))})


_phase2_decode = msgspec.json.Decoder(Phase2Reading).decode


@post("/api/meters/submit-reading", opt={"scope": "submit"}, security=BEARER, operation_class=SubmitOperation,
      status_code=200, responses={422: ResponseSpec(SubmitOut, description="Rejected, with the reason code"),
                                  **_errors(400, 401, 403, 413, 429)},
      summary="Submit one signed reading", tags=["readings"])
async def submit_reading(request: Request[Any, Any, Any]) -> Response[SubmitOut]:
    """Answered after the commit: `accepted`, `duplicate` (these bytes are already stored, whichever way
    they came) or `rejected` with the protocol's reason code. JSON bodies are the GridTokenX Phase 2
    request; `application/octet-stream` bodies are the meter's framed payload, byte for byte."""
    ctx = _ctx(request)
    assert ctx.submitter is not None
    raw = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type == "application/octet-stream":
            payload = raw
        else:
            try:
                payload = reading_for_phase2(_phase2_decode(raw))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise ClientException(f"the body is not a Phase 2 reading ({exc}); send JSON or "
                                      "application/octet-stream") from exc
        outcome = await ctx.submitter.submit(payload, client=_token(request).name)
    except ProtocolError as exc:
        ctx.metrics.readings.labels("rejected", exc.reason.value).inc()
        return Response(SubmitOut("rejected", None, None, exc.reason.value, exc.detail), status_code=422)
    except MeterRateLimited as exc:
        ctx.metrics.rate_limited.labels("meter").inc()
        raise HTTPException(status_code=429, detail=f"rate limit of meter {exc.meter_id} exceeded",
                            headers={"Retry-After": str(max(1, int(exc.retry_after + 0.999)))}) from exc
    reason = outcome.reason.value if outcome.reason is not None else None
    ctx.metrics.readings.labels(outcome.status, reason or "").inc()
    body = SubmitOut(outcome.status, outcome.meter_id, outcome.seq, reason,  # type: ignore[arg-type]
                     outcome.detail or None, outcome.reading_id)
    return Response(body, status_code=422 if outcome.status == "rejected" else 200)


# -- reads ---------------------------------------------------------------------------------------
def _meter_out(m: registry_admin.MeterInfo) -> MeterOut:
    return MeterOut(m.meter_id, m.public_key, m.wallet_address, m.meter_type, m.capacity_w, m.status,
                    m.status_reason, m.keys, m.updated_at.timestamp())


@get("/api/meters", opt={"scope": "read"}, security=BEARER, responses=_READ, tags=["registry"])
async def list_meters(request: Request[Any, Any, Any],
                      status: Literal["active", "suspended", "revoked", "quarantined"] | None = None) -> list[MeterOut]:
    """Registry entries, optionally of one status."""
    async with _ctx(request).db.acquire() as conn:
        return [_meter_out(m) for m in await registry_admin.list_meters(conn, status=status)]


@get("/api/meters/{meter_id:str}", opt={"scope": "read"}, security=BEARER, responses={**_READ, **_errors(404)},
     tags=["registry"])
async def get_meter(request: Request[Any, Any, Any], meter_id: str) -> MeterOut:
    async with _ctx(request).db.acquire() as conn:
        for m in await registry_admin.list_meters(conn):
            if m.meter_id == meter_id:
                return _meter_out(m)
    raise NotFoundException(f"meter {meter_id!r} is not registered")


# A reading in an open batch is not written to until the batch confirms (migration 055): the open
# batches say which readings they hold.
_STATE_SQL = {"minted": " AND r.minted", "unminted": " AND NOT r.minted AND o.batch_id IS NULL",
              "in_batch": " AND NOT r.minted AND o.batch_id IS NOT NULL", "all": ""}


@get("/api/meters/{meter_id:str}/readings", opt={"scope": "read"}, security=BEARER, responses=_READ,
     tags=["readings"])
async def meter_readings(request: Request[Any, Any, Any], meter_id: str,
                         reading_state: Annotated[Literal["all", "minted", "in_batch", "unminted", "rejected"],
                                          Parameter(query="state")] = "all",
                         since: Annotated[int | None, Parameter(ge=0, le=2**40)] = None,
                         until: Annotated[int | None, Parameter(ge=0, le=2**40)] = None,
                         before_seq: Annotated[int | None, Parameter(ge=0, le=2**63 - 1)] = None,
                         limit: Annotated[int, Parameter(ge=1, le=1000)] = 100) -> ReadingsPage:
    """A meter's readings, newest first, `limit` per page (1-1000). `since`/`until`: UTC seconds of the
    interval end (rejected: of receipt). `state=rejected` lists the rejection evidence instead."""
    limit = min(max(limit, 1), 1000)
    since_v = None if since is None else max(min(since, 2**40), -(2**40))
    until_v = None if until is None else max(min(until, 2**40), -(2**40))
    before = None if before_seq is None else max(min(before_seq, 2**62), -(2**62))
    pool = _ctx(request).db
    items: list[ReadingOut] = []
    if reading_state == "rejected":
        rows = await pool.fetch(
            "SELECT seq, reason, detail, extract(epoch FROM received_at)::float8 AS at FROM rejected_readings"
            " WHERE meter_id = $1 AND ($2::bigint IS NULL OR seq < $2)"
            " AND ($3::float8 IS NULL OR received_at >= to_timestamp($3))"
            " AND ($4::float8 IS NULL OR received_at < to_timestamp($4))"
            " ORDER BY seq DESC NULLS LAST, id DESC LIMIT $5", meter_id, before, since_v, until_v, limit)
        items = [ReadingOut("rejected", r["seq"], reason=r["reason"], detail=r["detail"], received_at=r["at"])
                 for r in rows]
    else:
        rows = await pool.fetch(
            # A meter's readings by seq come from meter_reading_keys (the partitions are by id and
            # have no (meter_id, seq) index); readings of archived partitions are not listed.
            "SELECT r.id, k.seq, r.export_wh, r.export_register_wh, extract(epoch FROM k.interval_end)::bigint AS iend,"
            " r.format, r.minted, COALESCE(r.mint_batch_id, o.batch_id) AS mint_batch_id, r.mint_tx_signature,"
            " r.mint_slot, o.batch_id AS open_batch_id"
            " FROM meter_reading_keys k JOIN meter_readings r ON r.id = k.reading_id"
            " LEFT JOIN open_batch_readings o ON o.reading_id = r.id AND NOT r.minted"
            " WHERE k.meter_id = $1 AND ($2::bigint IS NULL OR k.seq < $2)"
            " AND ($3::float8 IS NULL OR k.interval_end >= to_timestamp($3))"
            " AND ($4::float8 IS NULL OR k.interval_end < to_timestamp($4))" + _STATE_SQL[reading_state] +
            " ORDER BY k.seq DESC LIMIT $5", meter_id, before, since_v, until_v, limit)
        for r in rows:
            st: Literal["minted", "in_batch", "unminted"] = (
                "minted" if r["minted"] else "in_batch" if r["open_batch_id"] is not None else "unminted")
            items.append(ReadingOut(st, r["seq"], r["id"], r["export_wh"], r["export_register_wh"], r["iend"],
                                    r["format"], r["mint_batch_id"], r["mint_tx_signature"], r["mint_slot"]))
    last = items[-1].seq if len(items) == limit else None
    return ReadingsPage(meter_id, items, last)


@get("/api/readings/{reading:str}", opt={"scope": "read"}, security=BEARER, responses={**_READ, **_errors(404)},
     tags=["readings"])
async def reading_story(request: Request[Any, Any, Any], reading: str) -> StoryOut:
    """One reading's story, as `gridtokenx cloud why` tells it. READING: a reading id or METER_ID:SEQ."""
    from cloud.minter.admin import explain

    ctx = _ctx(request)
    if reading.isdigit() and int(reading) >= 2**63:
        raise NotFoundException(f"no reading {reading}")
    answer = await explain(ctx.cloud, reading)  # the command's own function, word for word
    if answer.state == "unknown":
        raise NotFoundException(answer.text)
    detail = json.loads(json.dumps(answer.detail, default=str))
    return StoryOut(answer.state, answer.text, detail)


@get("/api/wallets/{wallet:str}/balance", opt={"scope": "read"}, security=BEARER, responses=_READ,
     tags=["wallets"])
async def wallet_balance(request: Request[Any, Any, Any], wallet: str) -> BalanceOut:
    """What the wallet's meters' validated energy entitles it to, what confirmed batches minted to it,
    and its token balance on chain (null when the chain cannot be read from this process)."""
    ctx = _ctx(request)
    tok = ctx.cloud.tokenization
    rows = await ctx.db.fetch(
        # Stored readings (found through meter_reading_keys) plus archived partitions' totals.
        "SELECT m.meter_id, coalesce(sum(t.wh), 0)::bigint AS wh FROM meters m LEFT JOIN ("
        " SELECT k.meter_id, r.wallet_address, r.export_wh AS wh"
        " FROM meter_reading_keys k JOIN meter_readings r ON r.id = k.reading_id"
        " UNION ALL SELECT meter_id, wallet_address, wh FROM meter_readings_archived"
        ") t ON t.meter_id = m.meter_id AND t.wallet_address = m.wallet_address"
        " WHERE m.wallet_address = $1 GROUP BY m.meter_id ORDER BY m.meter_id", wallet)
    entitled = sum(entitled_base_units(int(r["wh"]), ratio=tok.ratio, decimals=tok.decimals) for r in rows)
    minted = await ctx.db.fetchval(
        "SELECT coalesce(sum(w.amount), 0)::numeric FROM mint_batches b, unnest(b.wallets, b.amounts) AS w(wallet,"
        " amount) WHERE b.status = 'confirmed' AND w.wallet = $1", wallet)
    on_chain, note = (await _on_chain_balance(ctx, wallet)) if rows or minted else (
        None, "no meter is registered to this wallet and nothing was minted to it")
    return BalanceOut(wallet, [r["meter_id"] for r in rows], sum(int(r["wh"]) for r in rows), entitled,
                      base_units_to_tokens_text(entitled, tok.decimals), int(minted), on_chain,
                      None if on_chain is None else base_units_to_tokens_text(on_chain, tok.decimals), note)


async def _on_chain_balance(ctx: ApiContext, wallet: str) -> tuple[int | None, str | None]:
    from solders.pubkey import Pubkey

    from cloud.chain.factory import open_backend
    from cloud.chain.tx import token_account

    try:
        owner = Pubkey.from_string(wallet)
    except ValueError:
        return None, "not a base58 public key"
    try:
        # Opened per request: an embedded chain must stay free for the minter between requests.
        backend = await asyncio.wait_for(open_backend(ctx.cloud), 10)
    except (ChainError, OSError, TimeoutError) as exc:
        return None, f"chain not readable from the API process: {exc}"[:300]
    try:
        return await backend.token_balance(token_account(backend.identity, owner)), None
    except (ChainError, OSError) as exc:
        return None, f"chain not readable: {exc}"[:300]
    finally:
        await backend.close()


def _batch_out(r: asyncpg.Record, signatures: list[str]) -> BatchOut:
    return BatchOut(r["id"], r["status"], r["signature"], signatures, r["slot"], list(r["wallets"]),
                    [str(a) for a in r["amounts"]], list(r["reading_ids"]), r["manual"], r["created"],
                    r["confirmed"], r["error"])


_BATCH_SQL = ("SELECT b.id, b.status, b.signature, b.slot, b.wallets, b.amounts, b.reading_ids, b.manual, b.error,"
              " extract(epoch FROM b.created_at)::float8 AS created,"
              " extract(epoch FROM b.confirmed_at)::float8 AS confirmed,"
              " coalesce((SELECT array_agg(s.signature ORDER BY s.created_at) FROM mint_batch_signatures s"
              " WHERE s.batch_id = b.id), '{}') AS sigs FROM mint_batches b")


@get("/api/mint-batches", opt={"scope": "read"}, security=BEARER, responses=_READ, tags=["minting"])
async def list_batches(request: Request[Any, Any, Any],
                       status: Literal["planned", "sent", "confirmed", "failed", "expired"] | None = None,
                       before_id: Annotated[int | None, Parameter(ge=1, le=2**63 - 1)] = None,
                       limit: Annotated[int, Parameter(ge=1, le=500)] = 50) -> BatchesPage:
    """Mint batches, newest first, with every signature each was sent with."""
    limit = min(max(limit, 1), 500)
    before = None if before_id is None else max(min(before_id, 2**62), -(2**62))
    rows = await _ctx(request).db.fetch(
        _BATCH_SQL + " WHERE ($1::text IS NULL OR b.status = $1) AND ($2::bigint IS NULL OR b.id < $2)"
        " ORDER BY b.id DESC LIMIT $3", status, before, limit)
    items = [_batch_out(r, list(r["sigs"])) for r in rows]
    return BatchesPage(items, items[-1].id if len(items) == limit else None)


@get("/api/mint-batches/{batch_id:int}", opt={"scope": "read"}, security=BEARER,
     responses={**_READ, **_errors(404)}, tags=["minting"])
async def get_batch(request: Request[Any, Any, Any],
                    batch_id: Annotated[int, Parameter(ge=1, le=2**63 - 1)]) -> BatchOut:
    if not -(2**63) <= batch_id < 2**63:
        raise NotFoundException(f"no mint batch {batch_id}")
    r = await _ctx(request).db.fetchrow(_BATCH_SQL + " WHERE b.id = $1", batch_id)
    if r is None:
        raise NotFoundException(f"no mint batch {batch_id}")
    return _batch_out(r, list(r["sigs"]))


@get("/api/status", opt={"scope": "read"}, security=BEARER, responses=_READ, tags=["minting"])
async def mint_status(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The seed guide's four key metrics and their alerts, as `gridtokenx cloud status --json`."""
    from cloud.minter.status import read_status

    async with _ctx(request).db.acquire() as conn:
        return (await read_status(conn)).to_json()


# -- admin ---------------------------------------------------------------------------------------
async def _audited(request: Request[Any, Any, Any], action: str, target: str | None, params: dict[str, Any],
                   work: Callable[[], Awaitable[dict[str, Any]]]) -> AdminOut:
    """Run an admin action and write who did what, on what, and how it ended to `api_audit`."""
    ctx = _ctx(request)
    info = _token(request)
    status, outcome = 200, "ok"
    try:
        result = await work()
        return AdminOut(True, action, json.loads(json.dumps(result, default=str)))
    except HTTPException as exc:
        status, outcome = exc.status_code, str(exc.detail)
        raise
    except BaseException as exc:
        status, outcome = 500, f"{type(exc).__name__}: {exc}"
        raise
    finally:
        client = request.client.host if request.client else None
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await ctx.db.execute(
                "INSERT INTO api_audit (token_id, token_name, action, target, params, status, outcome, client)"
                " VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)", info.id, info.name, action, target,
                json.dumps(params, default=str), status, outcome[:1000], client)


def _registry_error(exc: registry_admin.AdminError) -> HTTPException:
    text = str(exc)
    return NotFoundException(text) if "not registered" in text else ClientException(text, status_code=409)


@post("/api/admin/mint", opt={"scope": "admin"}, security=BEARER, responses=_ADMIN, status_code=200, tags=["admin"])
async def admin_mint(request: Request[Any, Any, Any], data: MintIn) -> AdminOut:
    """Mint now (the guide's admin endpoint): the given readings, or every unminted reading of a meter.
    Served by the running minter when it holds the chain, else driven from this process."""
    ctx = _ctx(request)
    params = msgspec.to_builtins(data)

    async def work() -> dict[str, Any]:
        from cloud.minter.admin import manual_mint

        if bool(data.reading_ids) == bool(data.meter_id):
            raise ClientException("give reading_ids (one or more) or meter_id, not both")
        ids = [i for i in (data.reading_ids or []) if 0 < i < 2**63]
        if data.reading_ids:
            found = await ctx.db.fetchval("SELECT count(*) FROM meter_readings WHERE id = ANY($1::bigint[])", ids)
            if not found:
                raise NotFoundException("none of these readings exists")
        elif not await ctx.db.fetchval("SELECT 1 FROM meters WHERE meter_id = $1", data.meter_id):
            raise NotFoundException(f"meter {data.meter_id!r} is not registered")
        wait = min(max(data.wait_secs, 0.0), ctx.api.max_mint_wait_secs)
        try:
            result = await manual_mint(ctx.cloud, reading_ids=ids or None, meter_id=data.meter_id, wait_secs=wait)
        except ChainError as exc:
            raise ClientException(str(exc), status_code=409) from exc
        return result.to_json() | {"complete": result.complete}

    return await _audited(request, "mint", data.meter_id or ",".join(map(str, data.reading_ids or [])),
                          params, work)


@post("/api/admin/meters", opt={"scope": "admin"}, security=BEARER, responses=_ADMIN, status_code=200,
      tags=["admin"])
async def admin_add_meter(request: Request[Any, Any, Any], data: MeterIn) -> AdminOut:
    """Register one meter, or update its wallet, type and capacity (a key change is a rotation)."""
    from protocol.meters_csv import parse

    async def work() -> dict[str, Any]:
        out = io.StringIO()
        csv.writer(out).writerows([["meter_id", "public_key", "wallet_address", "meter_type", "capacity_w"],
                                   [data.meter_id, data.public_key, data.wallet_address, data.meter_type,
                                    str(data.capacity_w)]])
        rows, errors = parse(out.getvalue())
        if errors or len(rows) != 1:
            raise ClientException(errors[0].message if errors else "not one meter row")
        row: MeterRow = rows[0]
        async with _ctx(request).db.acquire() as conn:
            result = await registry_admin.upsert_meters(conn, [row])
        if result.conflicts:
            raise ClientException(result.conflicts[row.meter_id], status_code=409)
        return {"inserted": result.inserted, "updated": result.updated, "unchanged": result.unchanged}

    return await _audited(request, "meters.add", data.meter_id, msgspec.to_builtins(data), work)


async def _set_status(request: Request[Any, Any, Any], meter_id: str, status: registry_admin.Status,
                      action: str, reason: str | None) -> AdminOut:
    async def work() -> dict[str, Any]:
        async with _ctx(request).db.acquire() as conn:
            try:
                await registry_admin.set_status(conn, meter_id, status, reason)
            except registry_admin.AdminError as exc:
                raise _registry_error(exc) from exc
        return {"meter_id": meter_id, "status": status}

    return await _audited(request, action, meter_id, {"reason": reason}, work)


@post("/api/admin/meters/{meter_id:str}/suspend", opt={"scope": "admin"}, security=BEARER, responses=_ADMIN,
      status_code=200, tags=["admin"])
async def admin_suspend(request: Request[Any, Any, Any], meter_id: str, data: StatusIn) -> AdminOut:
    return await _set_status(request, meter_id, "suspended", "meters.suspend", data.reason)


@post("/api/admin/meters/{meter_id:str}/revoke", opt={"scope": "admin"}, security=BEARER, responses=_ADMIN,
      status_code=200, tags=["admin"])
async def admin_revoke(request: Request[Any, Any, Any], meter_id: str, data: StatusIn) -> AdminOut:
    return await _set_status(request, meter_id, "revoked", "meters.revoke", data.reason)


@post("/api/admin/meters/{meter_id:str}/reinstate", opt={"scope": "admin"}, security=BEARER, responses=_ADMIN,
      status_code=200, tags=["admin"])
async def admin_reinstate(request: Request[Any, Any, Any], meter_id: str, data: StatusIn) -> AdminOut:
    return await _set_status(request, meter_id, "active", "meters.reinstate", data.reason)


@post("/api/admin/meters/{meter_id:str}/rotate-key", opt={"scope": "admin"}, security=BEARER, responses=_ADMIN,
      status_code=200, tags=["admin"])
async def admin_rotate(request: Request[Any, Any, Any], meter_id: str, data: RotateIn) -> AdminOut:
    """Make PUBLIC_KEY the meter's key (a routine rotation): the old key keeps verifying readings below the
    default seq watermark, the meter's highest stored seq + 1 (PROTOCOL.md, "Key lifecycle")."""
    from protocol.meters_csv import check_base58_32

    async def work() -> dict[str, Any]:
        problem = check_base58_32(data.public_key, "public_key")
        if problem:
            raise ClientException(problem)
        async with _ctx(request).db.acquire() as conn:
            try:
                await registry_admin.rotate_key(conn, meter_id, data.public_key)
            except registry_admin.AdminError as exc:
                raise _registry_error(exc) from exc
        return {"meter_id": meter_id, "public_key": data.public_key}

    return await _audited(request, "meters.rotate_key", meter_id, {"public_key": data.public_key}, work)


@post("/api/admin/reconcile", opt={"scope": "admin"}, security=BEARER, responses=_ADMIN, status_code=200,
      tags=["admin"])
async def admin_reconcile(request: Request[Any, Any, Any], data: ReconcileIn) -> AdminOut:
    """`gridtokenx cloud reconcile [--fix]`. An embedded chain held by a running minter answers 409."""
    ctx = _ctx(request)

    async def work() -> dict[str, Any]:
        from cloud.minter.admin import run_reconcile

        try:
            first, final = await run_reconcile(ctx.cloud, fix=data.fix)
        except ChainError as exc:
            raise ClientException(str(exc), status_code=409) from exc
        return {"report": first.to_json(), "after_fix": final.to_json() if final is not first else None,
                "clean": final.clean}

    return await _audited(request, "reconcile", None, {"fix": data.fix}, work)


@get("/api/admin/audit", opt={"scope": "admin"}, security=BEARER, responses=_READ, tags=["admin"])
async def admin_audit(request: Request[Any, Any, Any],
                      limit: Annotated[int, Parameter(ge=1, le=1000)] = 100) -> list[AuditOut]:
    """The latest admin calls, newest first."""
    rows = await _ctx(request).db.fetch(
        "SELECT id, token_id, token_name, action, target, params::text AS params, status, outcome,"
        " extract(epoch FROM at)::float8 AS at FROM api_audit ORDER BY id DESC LIMIT $1", min(max(limit, 1), 1000))
    return [AuditOut(r["id"], r["token_id"], r["token_name"], r["action"], r["target"], json.loads(r["params"]),
                     r["status"], r["outcome"], r["at"]) for r in rows]


# -- live events ---------------------------------------------------------------------------------
@websocket("/api/ws", opt={"scope": "read"})
async def events_socket(socket: WebSocket[Any, Any, Any]) -> None:
    """Query: `wallet=W` or `meter=M` (else everything), `last_id=N` to resume after event N,
    `token=T` when no Authorization header can be sent. Messages: one JSON event each."""
    ctx = _ctx(socket)
    hub = ctx.hub
    q = socket.query_params
    wallet, meter = q.get("wallet"), q.get("meter")
    if wallet and meter:
        await socket.close(code=1008, reason="subscribe to a wallet or a meter, not both")
        return
    sub = ev.Subscription("wallet", wallet) if wallet else ev.Subscription("meter", meter) if meter \
        else ev.Subscription("all")
    last_text = q.get("last_id")
    last = int(last_text) if last_text and last_text.isdigit() and len(last_text) < 19 else None
    await socket.accept()
    if hub is None:
        await socket.close(code=1011, reason="events are not available")
        return
    upto = hub.subscribe(sub)
    ctx.metrics.ws_clients.inc()
    sent = last if last is not None else upto
    try:
        if last is not None and last < upto:
            for out in await ev.replay(ctx.db, sub, last, upto):
                await socket.send_text(out.text)
                ctx.metrics.ws_events.inc()
            sent = upto
        reader = asyncio.create_task(_drain_client(socket))
        try:
            while True:
                get_ = asyncio.ensure_future(sub.queue.get())
                dropped = asyncio.ensure_future(sub.dropped.wait())
                done, _ = await asyncio.wait({get_, dropped, reader}, return_when=asyncio.FIRST_COMPLETED)
                if get_ not in done:
                    get_.cancel()
                if dropped not in done:
                    dropped.cancel()
                if get_ in done:
                    out = get_.result()
                    if out.id > sent:
                        await socket.send_text(out.text)
                        sent = out.id
                        ctx.metrics.ws_events.inc()
                    continue
                if dropped in done and sub.queue.empty():
                    ctx.metrics.ws_dropped.inc()
                    await socket.close(code=1013, reason=f"too slow; reconnect with last_id={sent}")
                    return
                if reader in done:
                    return
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                await reader
    except WebSocketDisconnect:
        return
    finally:
        hub.unsubscribe(sub)
        ctx.metrics.ws_clients.dec()


async def _drain_client(socket: WebSocket[Any, Any, Any]) -> None:
    """Read (and ignore) client frames until it goes away; returning ends the connection."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await socket.receive_data(mode="text")
            if message is None:
                return


# -- the application -----------------------------------------------------------------------------
ROUTES = [healthz, metrics, openapi_json, submit_reading, list_meters, get_meter, meter_readings, reading_story,
          wallet_balance, list_batches, get_batch, mint_status, admin_mint, admin_add_meter, admin_suspend,
          admin_revoke, admin_reinstate, admin_rotate, admin_reconcile, admin_audit, events_socket]


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


def _validation_500(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorOut]:
    """Litestar answers 500 when its whole-signature conversion fails but its per-field re-check finds
    no field to blame (seen after a manual mint ran in this process: an integral float such as
    `"capacity_w": 781793616.0` refused as "Expected `int`, got `float`"). The input is what failed
    validation, so it is the client's error; any other 500 stays a 500."""
    cause = exc.__cause__
    if isinstance(cause, msgspec.ValidationError):
        return Response(ErrorOut(400, f"the request is not valid: {cause}"[:300]), status_code=400)
    return Response(ErrorOut(500, "Internal Server Error"), status_code=500)


def _data_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorOut]:
    """Values PostgreSQL cannot hold (a NUL in a text, a number out of range) are the client's error."""
    return Response(ErrorOut(400, f"a value cannot be stored or searched: {exc}"[:300]), status_code=400)


def create_app(cloud: CloudSettings, api: ApiSettings, *, registry: CollectorRegistry | None = None) -> Litestar:
    ctx = ApiContext(cloud, api, ApiMetrics(registry or CollectorRegistry()))

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # No session state is ever left on a connection (advisory locks are transaction-scoped), so the
        # pool skips asyncpg's reset round trip on release.
        ctx.pool = await asyncpg.create_pool(cloud.database_url, min_size=1, max_size=api.pool_size,
                                             reset=_no_reset)
        ctx.submitter = Submitter(ctx.pool, cloud, meter_limit=ctx.meters.take)
        ctx.hub = ev.EventHub(cloud.database_url, on_tokens_changed=ctx.token_cache.clear)
        watcher = ev.AlertWatcher(ctx.pool, interval=api.alert_interval_secs,
                                  retention_days=api.events_retention_days)
        ctx.tasks = [asyncio.create_task(ctx.hub.run(ctx.stop)), asyncio.create_task(watcher.run(ctx.stop))]
        try:
            yield
        finally:
            ctx.stop.set()
            for task in ctx.tasks:
                task.cancel()
            for task in ctx.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await ctx.pool.close()

    return Litestar(
        route_handlers=ROUTES,
        guards=[scope_guard],
        exception_handlers={asyncpg.DataError: _data_error, InternalServerException: _validation_500},
        after_exception=[_log_unhandled],
        middleware=[metrics_middleware],
        lifespan=[lifespan],
        state=State({"ctx": ctx}),
        request_max_body_size=api.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="GridTokenX Edge cloud API", version="1.0.0", path="/docs",
            render_plugins=[SwaggerRenderPlugin(path="/")],
            components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
            description="Readings in (the GridTokenX Phase 2 submit-reading endpoint), reads, admin operations; "
                        "live events on the WebSocket /api/ws (see docs/api.md)."),
    )


async def _log_unhandled(exc: Exception, scope: Any) -> None:
    """A 500 is a bug: log it with its traceback so it can be found. HTTP errors below 500 are answers,
    not bugs; Litestar's own InternalServerException (raised, e.g., by its parameter validation) is an
    HTTPException too, so the status decides, not the class."""
    if isinstance(exc, InternalServerException) and isinstance(exc.__cause__, msgspec.ValidationError):
        log.warning("request validation failed without a field to blame on %s %s (answered 400): %s",
                    scope.get("method", "WS"), scope.get("path"), exc.__cause__)
    elif not isinstance(exc, HTTPException) or exc.status_code >= 500:
        log.error("unhandled error on %s %s", scope.get("method", "WS"), scope.get("path"), exc_info=exc)


def create_app_from_env() -> Litestar:
    """uvicorn factory (`cloud.api.app:create_app_from_env`): settings from the environment, which
    `gridtokenx cloud api` fills from its flags before it starts the worker processes."""
    from runtime.config import build, load

    api = build(ApiSettings, {})
    cloud = load(CloudSettings, api.config)
    return create_app(cloud, api)
