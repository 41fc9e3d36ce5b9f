"""Latency probes for the end-to-end benchmark: a few meters, publish times recorded exactly.

The probe publishes signed readings for meters the simulator does not run, notes the wall-clock
time of each publish, and afterwards joins them with `meter_readings.submitted_at` (the ingest
transaction's time) and `minted_at` (the confirmed mint), on the same machine's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import asyncpg

from protocol import Reading, sign_reading, topics
from protocol.keys import decode_key


@dataclass
class Probe:
    keys: list[Path]
    host: str
    port: int
    rate: float = 20.0
    sent: dict[tuple[str, int], float] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> None:
        meters = [decode_key(p.read_bytes()) for p in self.keys]
        clients = [aiomqtt.Client(self.host, self.port, username=m.meter_id, password=m.mqtt_password,
                                  identifier=f"probe-{m.meter_id}") for m in meters]
        secrets_ = [m.keypair()[1] for m in meters]
        seqs = [0] * len(meters)
        period = 1.0 / self.rate
        # One meter's intervals must follow each other without overlap (the cloud quarantines a meter
        # whose seq n+1 starts before seq n ended): 1 s intervals from a day back, so a probe meter
        # sending a few readings a second stays in the past (not in_future) for hours.
        base = int(time.time()) - 86_400
        async with contextlib.AsyncExitStack() as opened:
            for client in clients:
                await opened.enter_async_context(client)
            i = 0
            while not stop.is_set():
                k = i % len(meters)
                seqs[k] += 1
                start = base + seqs[k] - 1
                reading = Reading(meters[k].meter_id, seqs[k], start, start + 1, 0, export_register_wh=0)
                payload = sign_reading(reading, secrets_[k])
                self.sent[(reading.meter_id, reading.seq)] = time.time()
                await clients[k].publish(topics.meter_readings(reading.meter_id), payload, qos=1)
                i += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), period)

    async def latencies(self, database_url: str) -> dict[str, list[float]]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                # Through the keys: the readings' partitions have no meter_id index (migration 060).
                "SELECT k.meter_id, k.seq, extract(epoch FROM r.submitted_at)::float8 AS committed,"
                " extract(epoch FROM r.minted_at)::float8 AS minted FROM meter_reading_keys k"
                " JOIN meter_readings r ON r.id = k.reading_id WHERE k.meter_id = ANY($1)",
                sorted({m for m, _ in self.sent}))
        finally:
            await conn.close()
        commit, mint = [], []
        for r in rows:
            published = self.sent.get((r["meter_id"], r["seq"]))
            if published is None:
                continue
            commit.append(r["committed"] - published)
            if r["minted"] is not None:
                mint.append(r["minted"] - r["committed"])
        return {"publish_to_commit": commit, "commit_to_mint": mint, "probes_sent": [float(len(self.sent))]}


def percentiles(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)

    return {"n": len(ordered), "p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "max": round(ordered[-1], 4)}


def dump(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2))
