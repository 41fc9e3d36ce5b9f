"""The replay fleet's own publish path (simulator.publish): paho's bytes, every PUBACK, and a broker
restart mid-run that loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from protocol.topics import METER_READINGS_FILTER
from simulator.fleet import Fleet as SimFleet
from simulator.fleet import run_fleet
from simulator.meter import Outgoing
from simulator.publish import PublishClient, publish_head, publish_packet
from simulator.report import Stats
from simulator.settings import MeterSettings
from simulator.state import StateStore, id_ranges
from tests.simulator.checks import assert_continuous, registry, verified_series
from tests.simulator.conftest import Fleet
from tests.simulator.test_fleet import SUMMER_NOON


@contextlib.contextmanager
def wired(client: mqtt.Client) -> Iterator[socket.socket]:
    """The client writes into one end of a socket pair; the test reads (and answers) on the other."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours
    try:
        yield theirs
    finally:
        client._sock = None
        ours.close()
        theirs.close()


def written(client: mqtt.Client, sock: socket.socket, size: int) -> bytes:
    """What the client writes, letting it write the rest of a packet the socket did not take at once."""
    data = b""
    while len(data) < size:
        client.loop_write()
        data += sock.recv(1 << 20)
    return data


@pytest.mark.parametrize("payload_len", [0, 1, 100, 107, 108, 16_360, 16_361, 16_362, 300_000])
@pytest.mark.parametrize("mid", [1, 255, 256, 65_535])
def test_a_publish_packet_is_the_packet_paho_writes_for_qos_1(payload_len: int, mid: int) -> None:
    topic = "meters/M-00042/readings"  # the remaining length crosses 127 and 16,383 at the sizes above
    payload = bytes(i % 251 for i in range(payload_len))
    ours = publish_packet(publish_head(topic, payload_len), mid, payload)
    paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="M-00042", protocol=mqtt.MQTTv311)
    with wired(paho) as theirs:
        paho._send_publish(mid, topic.encode(), payload, qos=1)  # what publish(topic, payload, qos=1) sends
        assert written(paho, theirs, len(ours)) == ours

    fast = PublishClient(CallbackAPIVersion.VERSION2, client_id="M-00042", protocol=mqtt.MQTTv311,
                         on_pubacks=lambda _m: None)
    with wired(fast) as theirs:
        fast.send(ours + ours)  # what the socket does not take now stays queued, in order
        assert written(fast, theirs, 2 * len(ours)) == ours + ours
        assert not fast.want_write()


def test_pubacks_split_across_reads_and_between_other_packets_all_reach_the_link() -> None:
    got: list[list[int]] = []
    client = PublishClient(CallbackAPIVersion.VERSION2, client_id="M-00001", protocol=mqtt.MQTTv311,
                           on_pubacks=got.append)
    client._ping_t = 1.0  # a PINGREQ is outstanding
    with wired(client) as broker:
        pieces = [b"\x40\x02\x00\x01\x40\x02\x01\x00\x40",  # two whole PUBACKs, one cut after its first byte
                  b"\x02\xff",  # ... and after its third
                  b"\xff\xd0\x00\x40\x02\x00\x03",  # its last byte, a PINGRESP, one more
                  b"\xd0", b"\x00\x40\x02\x00\x04",  # a PINGRESP cut in two, one more
                  b"\x40\x82\x00\x00\x05"]  # a PUBACK with a two-byte length: paho's reader takes it
        for piece in pieces:
            broker.sendall(piece)
            assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
        assert [mid for batch in got for mid in batch] == [1, 256, 65_535, 3, 4, 5]
        assert client._ping_t == 0  # paho handled the PINGRESPs
        broker.close()
        client.loop_read()  # end of stream: paho's reader reports the lost connection
        assert client._sock is None


def test_acknowledged_outbox_rows_leave_in_runs_of_consecutive_ids(tmp_path: Path) -> None:
    assert id_ranges([7, 3, 4, 5, 9, 8, 1, 4]) == [(1, 1), (3, 5), (7, 9)]
    store = StateStore(tmp_path / "state.sqlite")
    try:
        items = [Outgoing("M-1", seq, "meters/M-1/readings", b"x") for seq in range(1, 11)]
        store.commit((), items)
        store.commit((), [], [i.id for i in items if i.seq not in (4, 9)])
        assert [i.seq for i in store.load_outbox()] == [4, 9]
    finally:
        store.close()


async def test_replay_over_the_fast_path_survives_a_broker_restart_without_losing_or_duplicating_a_seq(
        fleet_factory: Callable[..., Fleet], tmp_path: Path) -> None:
    fleet = fleet_factory(3)
    broker = fleet.broker
    intervals, interval = 400, 600  # 1,200 messages over about 4 s, a window of 8 per meter
    settings = fleet.settings(mode="replay", meter=MeterSettings(reading_interval_seconds=interval),
                              speed=intervals * interval / 4.0, duration=4.0,
                              backfill=float(intervals * interval), drain_timeout=30.0,
                              state=tmp_path / "state.sqlite")

    def client() -> aiomqtt.Client:
        return aiomqtt.Client("127.0.0.1", broker.port, username="edge-agent", password=broker.users["edge-agent"],
                              identifier="test-fast-sub", clean_session=False)

    async with client() as sub:  # a persistent session (as the edge agent's) keeps them across the restart
        await sub.subscribe(METER_READINGS_FILTER, qos=1)

    midway = asyncio.Event()

    def progress(stats: Stats, _fleet: SimFleet) -> None:
        if 0 < stats.acked < 3 * intervals // 2:
            midway.set()

    run = asyncio.create_task(run_fleet(settings, progress=progress, clock=lambda: float(SUMMER_NOON)))
    await asyncio.wait_for(midway.wait(), 20)
    await asyncio.to_thread(broker.restart)  # the fleet keeps publishing into the stopping broker
    report = await asyncio.wait_for(run, 60)

    assert report.errors.get("disconnected", 0) >= 1, report.errors  # the restart hit connected links
    assert report.acked == report.generated == 3 * intervals and report.pending == 0
    assert all(t.readings == intervals for t in report.per_meter.values())

    messages: list[tuple[str, bytes]] = []
    async with client() as sub:
        async def collect() -> None:
            async for message in sub.messages:
                messages.append((message.topic.value, bytes(message.payload)))  # type: ignore[arg-type]
                if len({p for _, p in messages}) == 3 * intervals:
                    return
        await asyncio.wait_for(collect(), 30)
    series = verified_series(messages, registry(fleet.keys_dir))  # same seq twice: same bytes (asserted)
    for readings in series.readings.values():
        assert sorted(readings) == list(range(1, intervals + 1))
        assert_continuous(readings)
    # A resend after the restart may duplicate what was in flight (identical bytes), as live mode may.
    assert series.duplicates <= 3 * 8
