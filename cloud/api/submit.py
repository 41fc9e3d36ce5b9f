"""Readings in over HTTP: the same parse, signature, rules and store as a reading that came by MQTT.

A reading posted here becomes a one-item `Batch` from the pseudo-gateway `api:<token name>` and
runs through `cloud.ingest.pipeline` (parse_items → verify_signatures → classify) and
`cloud.ingest.commit` (meter locks → context → rules → write), exactly as the MQTT consumer runs a batch; the
answer is given after the commit. The stored payload is the meter's signed bytes, so the same bytes
arriving later by MQTT (or again by HTTP) are a duplicate.

The GridTokenX Phase 2 JSON body (the gateway's SubmitReadingRequest) carries the parts of a
legacy reading, not its bytes: `reading_for_phase2` rebuilds the exact message the GridTokenX
simulator signs (the timestamp text as sent, kWh as {:.6f}) and frames it with the signature.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import asyncpg
import msgspec

from cloud.ingest.commit import decide_and_write
from cloud.ingest.pipeline import parse_items, verify_signatures
from cloud.ingest.registry import Registry
from cloud.ingest.rules import Limits
from cloud.ingest.store import StaleDecision
from cloud.settings import CloudSettings
from protocol.envelopes import Batch, BatchItem
from protocol.errors import ProtocolError
from protocol.legacy import HEADER
from protocol.reasons import Reason
from protocol.wire import parse_payload

GATEWAY_PREFIX = "api:"


class Phase2Reading(msgspec.Struct, kw_only=True):
    """The GridTokenX gateway's `POST /api/meters/submit-reading` body. Fields the gateway also
    accepts (voltage, energy_generated, GPS, ...) are ignored; only the signed ones count."""

    meter_serial: str
    kwh_amount: Decimal
    reading_timestamp: str
    """RFC 3339 text exactly as signed (e.g. 2026-11-27T12:00:00+00:00)."""
    wallet_address: str
    meter_signature: str
    """base58 Ed25519 signature over the legacy message."""


def reading_for_phase2(body: Phase2Reading) -> bytes:
    """The framed legacy payload (message LF base58 signature) the body's fields describe."""
    try:
        kwh = f"{body.kwh_amount:.6f}"
    except (InvalidOperation, ValueError) as exc:
        raise ProtocolError(Reason.MALFORMED, "kwh_amount is not a decimal number") from exc
    for name, value in (("meter_serial", body.meter_serial), ("reading_timestamp", body.reading_timestamp),
                        ("wallet_address", body.wallet_address), ("meter_signature", body.meter_signature)):
        if "\n" in value or "\r" in value:
            raise ProtocolError(Reason.MALFORMED, f"{name} contains a line break")
    message = (HEADER.decode() + f"meter_serial: {body.meter_serial}\ntimestamp: {body.reading_timestamp}\n"
               f"kwh_amount: {kwh}\nwallet: {body.wallet_address}")
    return message.encode() + b"\n" + body.meter_signature.encode()


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # accepted | duplicate | rejected
    meter_id: str | None
    seq: int | None
    reason: Reason | None = None
    detail: str = ""
    reading_id: int | None = None


class MeterRateLimited(Exception):
    def __init__(self, meter_id: str, retry_after: float) -> None:
        super().__init__(meter_id)
        self.meter_id = meter_id
        self.retry_after = retry_after


class Submitter:
    """One per API process: the registry cache and the database pool are shared by all requests."""

    def __init__(self, pool: asyncpg.Pool, settings: CloudSettings, *,
                 meter_limit: Callable[[str], float | None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.pool = pool
        self.limits = Limits.from_settings(settings.tokenization)
        self.registry = Registry()
        self._meter_limit = meter_limit
        self._clock = clock
        self._registry_lock = asyncio.Lock()

    async def submit(self, payload: bytes, *, client: str) -> Outcome:
        try:
            signed = parse_payload(payload)
        except ProtocolError as exc:
            # Not a reading: nobody's key vouches for it, so it is answered and counted, not stored.
            return Outcome("rejected", None, None, exc.reason, exc.detail)
        meter_id, seq = signed.key
        batch = Batch(gateway_id=GATEWAY_PREFIX + client, batch_id=f"http-{uuid.uuid4().hex}",
                      sent_at=int(self._clock()), items=[BatchItem(meter_id, seq, payload)])
        parsed = parse_items(batch)
        async with self.pool.acquire() as conn:
            async with self._registry_lock:
                await self.registry.sync(conn)  # registry_version moved → refresh now (a new key works at once)
                await self.registry.ensure(conn, [meter_id])
            verified = verify_signatures(parsed, self.registry.get)
            if verified and self._meter_limit is not None:
                # Charged only once the meter's key vouched for the reading: nobody else can spend its budget.
                retry_after = self._meter_limit(meter_id)
                if retry_after is not None:
                    raise MeterRateLimited(meter_id, retry_after)
            # The same transaction as an MQTT batch: meter locks, context, rules, write.
            try:
                plan, _ = await decide_and_write(conn, batch, parsed, verified, self.registry.get,
                                                 limits=self.limits, now=int(self._clock()))
            except StaleDecision:  # a writer that skipped the locks raced us: decide again, once
                plan, _ = await decide_and_write(conn, batch, parsed, verified, self.registry.get,
                                                 limits=self.limits, now=int(self._clock()))
            for quarantined in plan.quarantine:
                self.registry.mark(quarantined, "quarantined")
            result = plan.results()[0]
            reading_id = None
            if result.status != "rejected":
                reading_id = await conn.fetchval("SELECT reading_id FROM meter_reading_keys"
                                                 " WHERE meter_id = $1 AND seq = $2", meter_id, seq)
        detail = plan.rejected[0].detail if plan.rejected else ""
        return Outcome(result.status, meter_id, seq, result.reason, detail, reading_id)
