"""Key lifecycle through a real broker, a real consumer process and real Postgres: a compromised key
mints nothing more whatever its timestamps; a routinely retired key only below its seq watermark; a
new key works for the very next batch on a consumer whose registry cache is warm."""

from __future__ import annotations

import asyncio
import json

from click.testing import CliRunner

from gridtokenx.cli import root
from gridtokenx.harness.brokers import Mosquitto
from protocol.envelopes import BatchItem
from tests.cloud.ingest.conftest import GATEWAY, ConsumerFactory
from tests.cloud.ingest.support import INTERVAL, Gateway, Meter, query, register


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(root, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def _item(meter: Meter, seq: int, wh: int, register_wh: int, *, secret: bytes, end: int | None = None) -> BatchItem:
    reading = meter.reading(seq, wh, register_wh, end=end)
    return BatchItem(meter.meter_id, seq, meter.sign(reading, secret=secret))


def _verdicts(acks: dict, batch_id: str) -> list[str]:  # type: ignore[type-arg]
    return [r.reason or r.status for r in acks[batch_id].results]


def test_compromised_key_is_dead_at_once_and_the_new_key_works_at_once(
        consumers: ConsumerFactory, migrated_db: str, cloud: Mosquitto, gateway_password: str) -> None:
    m = Meter.make("leaky")
    new = Meter.make("leaky-new-key")
    asyncio.run(register(migrated_db, [m]))
    consumers()  # registry cache loaded now, with the old key current
    gw = Gateway("127.0.0.1", cloud.port, GATEWAY, gateway_password)
    acks = asyncio.run(gw.deliver([gw.batch("before", [_item(m, s, 10, 10 * s, secret=m.secret) for s in (1, 2, 3)])]))
    assert _verdicts(acks, "before") == ["accepted"] * 3

    code, out = cli("cloud", "meters", "rotate-key", "leaky", new.row().public_key, "--compromised",
                    "--database-url", migrated_db)
    assert code == 0 and "verifies nothing" in out, out
    # The thief back-dates a gap reading (seq 0, an interval before everything accepted) and a later
    # one; the meter itself, now with the new key, goes on at seq 4: all in the batch right after.
    first_end = m.reading(1, 0, 0).end
    acks = asyncio.run(gw.deliver([gw.batch("after", [
        _item(m, 0, 10, 10, secret=m.secret, end=first_end - INTERVAL),
        _item(m, 5, 10, 50, secret=m.secret),
        _item(m, 4, 10, 40, secret=new.secret),
    ])]))
    assert _verdicts(acks, "after") == ["bad_signature", "bad_signature", "accepted"]
    rows = asyncio.run(query(migrated_db, "SELECT seq FROM meter_readings ORDER BY seq"))
    assert [r["seq"] for r in rows] == [1, 2, 3, 4]
    code, out = cli("cloud", "meters", "keys", "leaky", "--json", "--database-url", migrated_db)
    states = [k["state"] for k in json.loads(out)]
    assert states == ["current", "compromised: verifies nothing"]


def test_routine_rotation_accepts_the_old_key_only_below_the_watermark(
        consumers: ConsumerFactory, migrated_db: str, cloud: Mosquitto, gateway_password: str) -> None:
    m = Meter.make("routine")
    new = Meter.make("routine-new-key")
    asyncio.run(register(migrated_db, [m]))
    consumers()
    gw = Gateway("127.0.0.1", cloud.port, GATEWAY, gateway_password)
    acks = asyncio.run(gw.deliver([gw.batch("b1", [_item(m, 1, 10, 10, secret=m.secret)])]))
    assert _verdicts(acks, "b1") == ["accepted"]
    # The edge still buffers seq 2..3 signed with the old key: the operator lets seq < 4 in.
    code, out = cli("cloud", "meters", "rotate-key", "routine", new.row().public_key, "--old-key-below-seq", "4",
                    "--database-url", migrated_db)
    assert code == 0 and "seq < 4 only" in out, out
    acks = asyncio.run(gw.deliver([gw.batch("b2", [
        _item(m, 2, 10, 20, secret=m.secret), _item(m, 3, 10, 30, secret=m.secret),
        _item(m, 4, 10, 40, secret=m.secret),  # at the watermark: refused
        _item(m, 5, 10, 50, secret=new.secret),
    ])]))
    assert _verdicts(acks, "b2") == ["accepted", "accepted", "bad_signature", "accepted"]
    # The operator lowers it again: nothing more from the old key, not even a gap below.
    code, out = cli("cloud", "meters", "key-watermark", "routine", m.row().public_key, "0",
                    "--database-url", migrated_db)
    assert code == 0
    acks = asyncio.run(gw.deliver([gw.batch("b3", [_item(m, 0, 0, 0, secret=m.secret,
                                                         end=m.reading(1, 0, 0).end - INTERVAL)])]))
    assert _verdicts(acks, "b3") == ["bad_signature"]
    code, out = cli("cloud", "meters", "keys", "routine", "--database-url", migrated_db)
    assert "retired: verifies seq < 0" in out
    # Default watermark: the highest stored seq + 1.
    third = Meter.make("routine-third-key")
    code, out = cli("cloud", "meters", "rotate-key", "routine", third.row().public_key, "--database-url", migrated_db)
    assert code == 0 and "seq < 6 only" in out, out


def test_rotate_key_help_defines_the_watermark() -> None:
    code, out = cli("cloud", "meters", "rotate-key", "--help")
    assert code == 0
    for words in ("--compromised", "--old-key-below-seq", "exclusive", "highest seq stored"):
        assert words in out
