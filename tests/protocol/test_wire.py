"""Property and example tests of the wire format: round trips, tampering, and malformed input."""

from __future__ import annotations

import base58
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    ProtocolError,
    Reading,
    Reason,
    parse_payload,
    secret_key_from_seed,
    sign_reading,
    verify_signed,
)
from protocol import legacy as legacy_format
from protocol.check import check_payload
from protocol.wire import MAX_PAYLOAD_BYTES, V1_PREFIX, frame, sign

PUBLIC, SECRET = secret_key_from_seed(bytes(range(32)))
OTHER_PUBLIC, _ = secret_key_from_seed(bytes(range(1, 33)))

meter_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
u63 = st.integers(min_value=0, max_value=2**62)


@st.composite
def readings(draw: st.DrawFn) -> Reading:
    start = draw(st.integers(min_value=0, max_value=2**40))
    return Reading(
        meter_id=draw(meter_ids),
        seq=draw(u63),
        start=start,
        end=start + draw(st.integers(min_value=1, max_value=86_400)),
        export_wh=draw(st.integers(min_value=-(2**40), max_value=2**40)),
        export_register_wh=draw(u63),
        import_wh=draw(st.none() | u63),
        import_register_wh=draw(st.none() | u63),
        flags=draw(st.integers(min_value=0, max_value=15)),
    )


@given(readings())
def test_sign_then_verify_round_trips(reading: Reading) -> None:
    payload = sign_reading(reading, SECRET)
    signed = parse_payload(payload)
    assert signed.reading == reading
    assert signed.payload == payload
    assert verify_signed(signed, PUBLIC)
    assert not verify_signed(signed, OTHER_PUBLIC)


@settings(max_examples=300)
@given(readings(), st.data())
def test_any_single_byte_change_fails(reading: Reading, data: st.DataObject) -> None:
    payload = sign_reading(reading, SECRET)
    index = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    replacement = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != payload[index]))
    mutated = payload[:index] + bytes([replacement]) + payload[index + 1 :]
    with pytest.raises(ProtocolError) as caught:
        check_payload(mutated, public_key=PUBLIC)
    assert caught.value.reason in (Reason.BAD_SIGNATURE, Reason.MALFORMED)


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    try:
        parse_payload(data)
    except ProtocolError as exc:
        assert isinstance(exc.reason, Reason)


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_arbitrary_text_after_the_v1_prefix_raises_only_protocol_errors(body: str) -> None:
    payload = frame(V1_PREFIX + body.encode(), bytes(64))
    try:
        parse_payload(payload)
    except ProtocolError as exc:
        assert isinstance(exc.reason, Reason)


GOOD = Reading("M-1", 7, 1_800_000_000, 1_800_000_900, 500, export_register_wh=10_500)
WALLET = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"


def _signed_body(body: bytes) -> bytes:
    message = V1_PREFIX + body
    return frame(message, sign(message, SECRET))


MALFORMED = {
    "empty payload": b"",
    "no signature line": V1_PREFIX + b'{"meter_id":"M-1"}',
    "signature not base58": V1_PREFIX + b"{}\n0OIl",
    "signature of wrong length": V1_PREFIX + b"{}\n" + base58.b58encode(bytes(10)),
    "unknown format prefix": b"HELLO\n" + base58.b58encode(bytes(64)),
    "body is not JSON": _signed_body(b"{meter_id: M-1}"),
    "JSON array instead of object": _signed_body(b"[1,2,3]"),
    "energy as a string": _signed_body(
        b'{"meter_id":"M-1","seq":1,"start":1,"end":2,"export_wh":"5","export_register_wh":5}'),
    "seq negative": _signed_body(
        b'{"meter_id":"M-1","seq":-1,"start":1,"end":2,"export_wh":5,"export_register_wh":5}'),
    "meter id with a slash": _signed_body(
        b'{"meter_id":"M/1","seq":1,"start":1,"end":2,"export_wh":5,"export_register_wh":5}'),
    "integer beyond 64 bits": _signed_body(
        b'{"meter_id":"M-1","seq":1,"start":1,"end":2,"export_wh":99999999999999999999999,'
        b'"export_register_wh":5}'),
    "legacy with a missing line": frame(b"GRIDTOKENX_METER_READING\nmeter_serial: M-1", bytes(64)),
    "legacy timestamp not RFC 3339": frame(
        legacy_format.format_message("M-1", 1_800_000_000, "1.000000", WALLET).replace(b"T", b" ", 1),
        bytes(64)),
    "oversized": b"x" * (MAX_PAYLOAD_BYTES + 1),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_payloads_get_a_reason_and_a_sentence(name: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_payload(MALFORMED[name])
    expected = Reason.OVERSIZED if name == "oversized" else Reason.MALFORMED
    assert caught.value.reason is expected
    assert caught.value.detail and "\n" not in caught.value.detail


def test_legacy_reading_maps_to_the_model() -> None:
    message = legacy_format.format_message("M-1", 1_800_000_300, legacy_format.kwh_text(12_345), WALLET)
    signed = check_payload(frame(message, sign(message, SECRET)), public_key=PUBLIC,
                           topic="meters/M-1/readings")
    assert signed.format == "legacy"
    assert signed.reading == Reading("M-1", 1_800_000_300, 1_800_000_000, 1_800_000_300, 12_345)
    assert signed.claimed_wallet == WALLET


def test_reading_on_another_meters_topic_is_a_topic_mismatch() -> None:
    with pytest.raises(ProtocolError) as caught:
        check_payload(sign_reading(GOOD, SECRET), public_key=PUBLIC, topic="meters/M-2/readings")
    assert caught.value.reason is Reason.TOPIC_MISMATCH
