"""Fuzzing that reaches the database: hypothesis-generated batch messages (arbitrary text, integers of
any size, any item counts, raw bytes, signed and mangled payloads) go through the real consumer's
boundary, pipeline and store into real PostgreSQL. None may raise or stall: after each, an honest
batch still commits, and every item of an accepted envelope ends with a status."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import aiomqtt
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.ingest.consumer import IngestConsumer
from cloud.ingest.metrics import IngestMetrics
from cloud.settings import CloudSettings, IngestSettings
from protocol import topics
from protocol.envelopes import Batch
from protocol.reasons import Reason
from tests.cloud.ingest.support import Meter, register

GW = "fuzz-gw"
METER = Meter.make("fuzz-1")
HONEST = Meter.make("fuzz-honest")
END = int(time.time()) - 600  # fixed for the run: generation must not depend on the clock
big_ints = st.one_of(st.integers(-(2**64), 2**64), st.integers(-(10**40), 10**40), st.integers(0, 10))


@st.composite
def items(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["signed", "mangled", "bytes"]))
    seq = draw(st.integers(1, 50))
    payload = METER.sign(METER.reading(seq, 10, seq * 10, end=END - (50 - seq) * 300))
    if kind == "mangled":
        cut = draw(st.integers(0, len(payload)))
        payload = payload[:cut] + draw(st.binary(max_size=16)) + payload[cut:]
    elif kind == "bytes":
        payload = draw(st.binary(max_size=5000))
    meter_id = draw(st.one_of(st.just(METER.meter_id), st.text(max_size=70)))
    claim = draw(st.one_of(st.just(seq), big_ints))
    return {"meter_id": meter_id, "seq": claim, "payload": payload}


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    body = draw(st.lists(items(), max_size=6))
    count = draw(st.sampled_from([len(body)] * 6 + [1000, 1001]))
    if body and count > len(body):
        body = list(itertools.islice(itertools.cycle(body), count))
    doc: dict[str, Any] = {
        "gateway_id": GW if draw(st.integers(0, 9)) else draw(st.text(max_size=70)),
        "batch_id": draw(st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True)) if draw(st.integers(0, 4))
        else draw(st.text(max_size=140)),
        "sent_at": END if draw(st.integers(0, 4)) else draw(big_ints),
        "items": body,
    }
    if not draw(st.integers(0, 9)):
        doc["v"] = draw(big_ints)
    return msgspec.json.encode(doc)


def test_generated_envelopes_reach_postgres_and_never_stall_ingest(migrated_db: str) -> None:
    asyncio.run(register(migrated_db, [METER, HONEST]))
    loop = asyncio.new_event_loop()
    consumer = IngestConsumer(CloudSettings(database_url=migrated_db, ingest=IngestSettings(db_timeout_secs=5)),
                              metrics=IngestMetrics())
    honest_seq = itertools.count(1)
    reached: list[int] = []
    try:
        loop.run_until_complete(consumer.db.open())
        loop.run_until_complete(consumer.db.run("registry", consumer.registry.load))

        @settings(max_examples=120, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(messages(), st.integers(0, 19).map(lambda n: n == 0))
        def one(raw: bytes, retained: bool) -> None:
            async def go() -> None:
                message = aiomqtt.Message(topics.batches(GW), raw, qos=1, retain=retained, mid=1, properties=None)
                prepared = await asyncio.wait_for(consumer.prepare(message), 30)
                if prepared is not None:
                    reached.append(len(prepared.batch.items))
                    results = await asyncio.wait_for(consumer.store(prepared), 30)
                    assert len(results) == len(prepared.batch.items)
                    for r in results:
                        assert r.status in ("accepted", "duplicate") or isinstance(r.reason, Reason)
                seq = next(honest_seq)
                honest = Batch("honest-gw", f"h-{seq}", int(time.time()), [HONEST.item(seq, 10, seq * 10)])
                after = await asyncio.wait_for(consumer.store(await consumer._prepare_batch(honest)), 10)
                assert [r.status for r in after] == ["accepted"], after
            loop.run_until_complete(go())

        one()
        print(f"{len(reached)} generated envelopes reached PostgreSQL, {sum(reached)} items")
        assert len(reached) >= 15, "the generator should mostly produce envelopes that pass the boundary"
    finally:
        loop.run_until_complete(consumer.db.close())
        loop.close()
