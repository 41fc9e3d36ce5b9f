"""Structure + topic + signature: everything about a payload that needs no database or clock."""

from __future__ import annotations

from protocol import topics
from protocol.errors import ProtocolError
from protocol.reading import SignedReading
from protocol.reasons import Reason
from protocol.wire import parse_payload, verify_signed


def check_topic(signed: SignedReading, topic: str) -> None:
    """The topic's meter must be the reading's meter: a meter may only speak for itself."""
    named = topics.meter_of(topic)
    if named != signed.reading.meter_id:
        raise ProtocolError(
            Reason.TOPIC_MISMATCH,
            f"reading of meter {signed.reading.meter_id!r} published on the topic of meter {named!r}",
        )


def check_payload(payload: bytes, *, public_key: bytes, topic: str | None = None) -> SignedReading:
    """Parse, check the topic (when given) and verify the signature. Raises `ProtocolError`."""
    signed = parse_payload(payload)
    if topic is not None:
        check_topic(signed, topic)
    if not verify_signed(signed, public_key):
        raise ProtocolError(Reason.BAD_SIGNATURE, f"signature does not verify for meter {signed.reading.meter_id!r}")
    return signed
