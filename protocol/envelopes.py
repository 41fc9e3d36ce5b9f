"""Edge ↔ cloud envelopes: the batch of signed payloads and the application ack.

Both are JSON (msgspec structs). A batch item carries the meter's payload as base64 bytes, so the
cloud sees exactly what the meter published. The item's meter_id/seq are the edge's *claim*, used
only to route the ack for payloads the cloud cannot parse; the cloud trusts the signed bytes.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from protocol.reading import METER_ID_RE
from protocol.reasons import Reason

ENVELOPE_VERSION = 1

# Limits of a batch envelope (PROTOCOL.md, "Envelope limits"). The cloud checks every one of them
# before any database work (cloud/ingest/boundary.py); anything outside is a bad envelope.
#: Items per batch; the edge's --batch-size is capped at this.
MAX_BATCH_ITEMS = 1000
#: Bytes of one batch message: 1,000 × 4096-byte payloads, base64 in JSON, with room for the claims.
#: Equal to the cloud broker's max_packet_size (broker-config/cloud/mosquitto.conf).
MAX_ENVELOPE_BYTES = 6_000_000
#: A gateway_id is an MQTT topic level and the gateway's broker username: the meter_id alphabet.
GATEWAY_ID_RE = METER_ID_RE
#: A batch_id is chosen by the edge (a uuid4 hex today); printable ASCII without spaces or wildcards.
BATCH_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

Status = Literal["accepted", "duplicate", "rejected"]


class BatchItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    meter_id: str
    seq: int
    payload: bytes
    """The meter's MQTT payload, byte for byte (base64 in JSON)."""


class Batch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    gateway_id: str
    batch_id: str
    sent_at: int
    """UTC seconds when the edge (re)sent the batch."""
    items: list[BatchItem]
    v: int = ENVELOPE_VERSION


class AckItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    meter_id: str
    seq: int
    status: Status
    reason: Reason | None = None


class Ack(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    gateway_id: str
    batch_id: str
    results: list[AckItem]
    v: int = ENVELOPE_VERSION


_batch_decoder = msgspec.json.Decoder(Batch)
_ack_decoder = msgspec.json.Decoder(Ack)
_encoder = msgspec.json.Encoder()


def encode(envelope: Batch | Ack) -> bytes:
    return _encoder.encode(envelope)


def decode_batch(data: bytes) -> Batch:
    """Raises msgspec.DecodeError / ValidationError on a bad envelope (a bug or an attack at the edge)."""
    return _batch_decoder.decode(data)


def decode_ack(data: bytes) -> Ack:
    return _ack_decoder.decode(data)
