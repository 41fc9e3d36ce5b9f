"""The edge's verdict on one MQTT message, before it touches the buffer. Pure: no I/O.

Structure, topic and (when a key file is configured) the signature. Everything else — the
registry, the validation rules, equivocation against accepted readings — is the cloud's job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import msgspec

from protocol.check import check_topic
from protocol.errors import ProtocolError
from protocol.reasons import Reason
from protocol.topics import meter_of
from protocol.wire import V1_PREFIX, parse_payload, verify_signed


class Accepted(msgspec.Struct, frozen=True, gc=False):  # Structs: one of these per reading, built cheaply
    meter_id: str
    seq: int
    reading_end: int
    payload: bytes


class Quarantined(msgspec.Struct, frozen=True, gc=False):
    topic: str
    payload: bytes
    reason: Reason
    detail: str
    meter_id: str | None = None
    seq: int | None = None


Verdict = Accepted | Quarantined


def screen(topic: str, payload: bytes, keys: Mapping[str, bytes] | None = None) -> Verdict:
    """Accepted readings go to the buffer; everything else to quarantine with its reason."""
    try:
        signed = parse_payload(payload)
    except ProtocolError as exc:
        return Quarantined(topic, payload, exc.reason, exc.detail, _topic_meter(topic), _claimed_seq(payload))
    meter_id, seq = signed.reading.meter_id, signed.reading.seq
    try:
        check_topic(signed, topic)
    except ProtocolError as exc:
        return Quarantined(topic, payload, exc.reason, exc.detail, meter_id, seq)
    if keys is not None:
        public_key = keys.get(meter_id)
        # A meter missing from the local key file is forwarded: the cloud's registry is newer than
        # the gateway's copy and is the judge of record (it rejects unknown meters itself).
        if public_key is not None and not verify_signed(signed, public_key):
            return Quarantined(topic, payload, Reason.BAD_SIGNATURE,
                               f"signature does not verify with the key of meter {meter_id!r} in the key file",
                               meter_id, seq)
    return Accepted(meter_id, seq, signed.reading.end, signed.payload)


def _topic_meter(topic: str) -> str | None:
    try:
        return meter_of(topic)
    except ProtocolError:
        return None


def _claimed_seq(payload: bytes) -> int | None:
    """The seq a bad v1 reading claims, when its JSON has one: shown with the quarantined row so a
    technician can match it (None for anything that does not even say)."""
    body = payload[:payload.rfind(b"\n")].removeprefix(V1_PREFIX)
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    seq = doc.get("seq") if isinstance(doc, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 2**63 else None
