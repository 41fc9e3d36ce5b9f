"""Fuzzing the consumer's pure pipeline (parse → verify → classify) with arbitrary bytes and
structured mutations of valid readings: no exception escapes, and every item of every batch ends
accepted, duplicate, or rejected with a protocol reason code."""

from __future__ import annotations

import hashlib

import base58
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.ingest.pipeline import StoredContext, classify, parse_items, verify_signatures
from cloud.ingest.registry import KeyRecord, MeterRecord
from cloud.ingest.rules import Limits, RegisterPoint
from protocol import legacy
from protocol.envelopes import Batch, BatchItem
from protocol.reading import Reading
from protocol.reasons import Reason
from protocol.wire import V1_PREFIX, frame, secret_key_from_seed, sign, sign_reading

NOW = 1_800_000_000
LIMITS = Limits(max_reading_wh=100_000, max_age_secs=7 * 86_400, clock_skew_secs=300)
PUBLIC, SECRET = secret_key_from_seed(hashlib.sha256(b"fuzz").digest())
RECORD = MeterRecord("m1", base58.b58encode(b"w" * 32).decode(), "solar", 10_000, "active",
                     (KeyRecord(PUBLIC, None),))
REGISTRY = {"m1": RECORD}.get


@st.composite
def readings(draw: st.DrawFn) -> Reading:
    end = draw(st.integers(NOW - 9 * 86_400, NOW + 3_600))
    return Reading("m1", draw(st.integers(0, 50)), end - draw(st.integers(1, 3_600)), end,
                   draw(st.integers(-1_000, 200_000)),
                   export_register_wh=draw(st.integers(0, 10**7)), flags=draw(st.integers(0, 15)))


def mutate(payload: bytes, data: st.DataObject) -> bytes:
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "swap-lines", "none"]))
    if kind == "none" or not payload:
        return payload
    i = data.draw(st.integers(0, len(payload) - 1))
    if kind == "flip":
        return payload[:i] + bytes([payload[i] ^ data.draw(st.integers(1, 255))]) + payload[i + 1:]
    if kind == "truncate":
        return payload[:i]
    if kind == "insert":
        return payload[:i] + data.draw(st.binary(min_size=1, max_size=8)) + payload[i:]
    lines = payload.split(b"\n")
    return b"\n".join(reversed(lines))


@st.composite
def items(draw: st.DrawFn) -> BatchItem:
    data = draw(st.data())
    source = draw(st.sampled_from(["valid", "legacy", "bytes", "json"]))
    r = draw(readings())
    if source == "valid":
        payload = mutate(sign_reading(r, SECRET), data)
    elif source == "legacy":
        wh = draw(st.integers(-5_000, 500_000))
        message = legacy.format_message("m1", r.end, legacy.kwh_text(wh), RECORD.wallet_address)
        payload = mutate(frame(message, sign(message, SECRET)), data)
    elif source == "json":
        body = draw(st.text(max_size=200)).encode()
        payload = frame(V1_PREFIX + body, sign(V1_PREFIX + body, SECRET))
    else:
        payload = draw(st.binary(max_size=600))
    claim_seq = r.seq if draw(st.booleans()) else draw(st.integers(0, 2**63 - 1))
    return BatchItem(draw(st.sampled_from(["m1", "m2", "x/y"])), claim_seq, payload)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(items(), min_size=1, max_size=12), st.booleans())
def test_every_item_ends_accepted_duplicate_or_with_a_reason(batch_items: list[BatchItem], stored: bool) -> None:
    batch = Batch(gateway_id="gw", batch_id="fuzz", sent_at=NOW, items=batch_items)
    other = hashlib.sha256(b"other bytes").digest()
    context = {("m1", 3): StoredContext(other, RegisterPoint(2, 10, 1_000), None)} if stored else {}
    parsed = parse_items(batch)
    verified = verify_signatures(parsed, REGISTRY)
    plan = classify(batch, parsed, verified, context, REGISTRY, limits=LIMITS, now=NOW)
    results = plan.results()
    assert len(results) == len(batch_items)
    for item, result in zip(batch_items, results, strict=True):
        assert (result.meter_id, result.seq) == (item.meter_id, item.seq)
        if result.status == "rejected":
            assert isinstance(result.reason, Reason)
        else:
            assert result.status in ("accepted", "duplicate") and result.reason is None
    # Anything accepted really is a signed reading of a registered meter, and stays within the limits.
    for row in plan.accepted:
        assert row.signed.reading.meter_id == "m1"
        assert 0 <= row.signed.reading.export_wh <= LIMITS.max_reading_wh
