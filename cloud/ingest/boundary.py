"""The trust boundary of ingest: bytes from a gateway become a checked `Batch`, or a `BadEnvelope`.

Everything here runs before any database work, and checks each envelope and item field as
PostgreSQL will store it: text is valid UTF-8 without NUL, integers fit in int64, identifiers
match the protocol's patterns, and the item count and envelope size are bounded (PROTOCOL.md,
"Envelope limits"). A bad envelope has nobody trustworthy to ack: it is counted, recorded once
in `ingest_dead_letters`, and never retried. A bad item inside a good envelope becomes a
`Reason` for that item only, and its claims are never written to a typed column unchecked.

Pure functions; the MQTT consumer and any HTTP submission endpoint share them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgspec

from protocol import topics
from protocol.envelopes import (
    BATCH_ID_RE,
    ENVELOPE_VERSION,
    GATEWAY_ID_RE,
    MAX_BATCH_ITEMS,
    MAX_ENVELOPE_BYTES,
    Batch,
    BatchItem,
    decode_batch,
)
from protocol.errors import ProtocolError
from protocol.reading import MAX_INT, METER_ID_RE
from protocol.reasons import Reason
from protocol.wire import MAX_PAYLOAD_BYTES

#: Bytes of a bad envelope kept as evidence; the rest is represented by its length and SHA-256.
MAX_EVIDENCE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class BadEnvelope:
    """A batch message that is not a valid envelope, with bounded evidence of it."""

    reason: Reason
    detail: str
    gateway_id: str | None
    """The gateway named by the topic (the broker's ACL vouches for it), when it is a valid id."""
    size: int
    sha256: bytes
    evidence: bytes
    """The first MAX_EVIDENCE_BYTES of the message."""

    @classmethod
    def of(cls, payload: bytes, reason: Reason, detail: str, gateway_id: str | None) -> BadEnvelope:
        return cls(reason, storable_text(detail, 1000), gateway_id, len(payload),
                   hashlib.sha256(payload).digest(), payload[:MAX_EVIDENCE_BYTES])


def check_envelope(payload: bytes, topic: str, *, retained: bool = False) -> Batch | BadEnvelope:
    """The checked batch of one message on `edge/{gateway_id}/batches`, or why it is not one."""
    gateway = _topic_gateway(topic)
    if retained:
        # A retained batch would be handed to every consumer that subscribes, forever.
        return BadEnvelope.of(payload, Reason.RETAINED, "batch published as a retained message", gateway)
    if gateway is None:
        return BadEnvelope.of(payload, Reason.TOPIC_MISMATCH,
                              f"topic {storable_text(topic, 200)!r} does not name a valid gateway id", None)
    if len(payload) > MAX_ENVELOPE_BYTES:
        return BadEnvelope.of(payload, Reason.OVERSIZED,
                              f"envelope is {len(payload)} bytes, the maximum is {MAX_ENVELOPE_BYTES}", gateway)
    try:
        batch = decode_batch(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError) as exc:
        return BadEnvelope.of(payload, Reason.MALFORMED, f"not a batch envelope: {exc}", gateway)
    problem = _envelope_problem(batch, gateway)
    if problem is not None:
        return BadEnvelope.of(payload, problem[0], problem[1], gateway)
    return batch


def _topic_gateway(topic: str) -> str | None:
    try:
        gateway = topics.gateway_of(topic)
    except ProtocolError:
        return None
    return gateway if GATEWAY_ID_RE.match(gateway) else None


def _envelope_problem(batch: Batch, gateway: str) -> tuple[Reason, str] | None:
    if batch.v != ENVELOPE_VERSION:
        return Reason.MALFORMED, f"envelope version {_int_text(batch.v)} is not {ENVELOPE_VERSION}"
    if batch.gateway_id != gateway:
        claimed = storable_text(batch.gateway_id, 80)
        return Reason.TOPIC_MISMATCH, f"batch of gateway {claimed!r} on the topic of {gateway!r}"
    if not BATCH_ID_RE.match(batch.batch_id):
        batch_id = storable_text(batch.batch_id, 80)
        return Reason.MALFORMED, f"batch_id {batch_id!r} does not match {BATCH_ID_RE.pattern}"
    if not 0 <= batch.sent_at <= MAX_INT:
        return Reason.MALFORMED, f"sent_at {_int_text(batch.sent_at)} is outside 0..2^63-1"
    if len(batch.items) > MAX_BATCH_ITEMS:
        return Reason.OVERSIZED, f"batch has {len(batch.items)} items, the maximum is {MAX_BATCH_ITEMS}"
    return None


def check_item(item: BatchItem) -> tuple[Reason, str] | None:
    """Why the edge's claim or payload of `item` cannot be taken at face value, or None."""
    if not METER_ID_RE.match(item.meter_id):
        return Reason.MALFORMED, f"claimed meter_id {storable_text(item.meter_id, 80)!r} is not a valid meter id"
    if not 0 <= item.seq <= MAX_INT:
        return Reason.MALFORMED, f"claimed seq {_int_text(item.seq)} is outside 0..2^63-1"
    if len(item.payload) > MAX_PAYLOAD_BYTES:
        return Reason.OVERSIZED, f"payload is {len(item.payload)} bytes, the maximum is {MAX_PAYLOAD_BYTES}"
    return None


def storable_claim(item: BatchItem) -> tuple[str | None, int | None]:
    """The claim as it may be written to `rejected_readings` (text, bigint): None where it cannot."""
    meter_id = item.meter_id if METER_ID_RE.match(item.meter_id) else None
    seq = item.seq if 0 <= item.seq <= MAX_INT else None
    return meter_id, seq


def storable_text(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, as PostgreSQL TEXT can hold it: valid UTF-8, no NUL."""
    text = text[:limit]
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _int_text(value: int) -> str:
    text = str(value) if abs(value) < 10**30 else f"a {value.bit_length()}-bit integer"
    return text
