"""What a subscriber can check about the readings it saw, using only protocol/ and meters.csv."""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import base58

from protocol.check import check_payload
from protocol.errors import ProtocolError
from protocol.reading import SignedReading
from protocol.topics import meter_of


def registry(keys_dir: Path) -> dict[str, bytes]:
    """meter_id → public key, from the exported meters.csv (what the cloud imports)."""
    with (keys_dir / "meters.csv").open() as f:
        return {row["meter_id"]: base58.b58decode(row["public_key"]) for row in csv.DictReader(f)}


@dataclass
class Series:
    """Verified readings per meter, keyed by seq; identical re-deliveries collapse."""

    readings: dict[str, dict[int, SignedReading]] = field(default_factory=lambda: defaultdict(dict))
    duplicates: int = 0


def verified_series(messages: list[tuple[str, bytes]], keys: dict[str, bytes]) -> Series:
    """Every message must verify with its meter's exported key; same key twice must be the same bytes."""
    series = Series()
    for topic, payload in messages:
        signed = check_payload(payload, public_key=keys[meter_of(topic)], topic=topic)
        seen = series.readings[signed.reading.meter_id].get(signed.key[1])
        if seen is not None:
            assert seen.payload == payload, f"{signed.key} was reused with different bytes"
            series.duplicates += 1
        series.readings[signed.reading.meter_id][signed.key[1]] = signed
    return series


def assert_continuous(readings: dict[int, SignedReading], *, step: int = 1) -> None:
    """No seq gap, and every delta equals the register change since the previous reading."""
    seqs = sorted(readings)
    assert seqs == list(range(seqs[0], seqs[0] + step * len(seqs), step)), f"seq gaps: {seqs[:20]}..."
    previous = None
    for seq in seqs:
        r = readings[seq].reading
        if previous is not None and r.export_register_wh is not None:
            assert previous.export_register_wh is not None
            assert r.export_register_wh - previous.export_register_wh == r.export_wh, (r, previous)
            assert r.import_register_wh is not None and previous.import_register_wh is not None
            assert r.import_register_wh - previous.import_register_wh == r.import_wh
            assert r.start == previous.end
        assert r.export_wh >= 0
        previous = r


def classify(topic: str, payload: bytes, keys: dict[str, bytes]) -> str:
    """The reason a careful receiver gives a payload, without any database: structure and signature."""
    try:
        check_payload(payload, public_key=keys[meter_of(topic)], topic=topic)
    except ProtocolError as exc:
        return exc.reason.value
    return "ok"
