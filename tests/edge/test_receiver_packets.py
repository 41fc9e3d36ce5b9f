"""The receiver's own PUBLISH parser (edge.receiver._BulkReadClient._packet_read) against paho's.

The agent parses whole QoS 0/1 PUBLISH packets from its read buffer itself; whatever it does not take
goes through paho. Both paths are fed the same bytes here, well-formed or not: what reaches the
agent (topic, payload, mid, qos) and paho's return codes must be the same, packet for packet.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge.receiver import Receiver, _BulkReadClient
from runtime.config import BrokerURL

Seen = tuple[bytes, bytes, int, int]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 127, n >> 7
        out.append(byte | (128 if n else 0))
        if not n:
            return bytes(out)


@st.composite
def publish_packets(draw: st.DrawFn) -> bytes:
    """A whole PUBLISH packet (the remaining length is right), its variable header possibly broken."""
    qos = draw(st.integers(0, 1))
    flags = qos << 1 | draw(st.integers(0, 1)) << 3 | draw(st.integers(0, 1))
    topic = draw(st.one_of(st.binary(min_size=0, max_size=40),
                           st.text(min_size=1, max_size=40).map(str.encode),
                           st.just(b"meters/m00001/readings")))
    declared = draw(st.one_of(st.just(len(topic)), st.integers(0, 0xFFFF)))  # a lying topic length
    body = struct.pack("!H", declared) + topic
    if qos:
        body += struct.pack("!H", draw(st.integers(0, 0xFFFF)))
    body += draw(st.binary(max_size=300))
    if draw(st.booleans()):
        body = body[:draw(st.integers(0, len(body)))]  # cut anywhere (the length prefix says so)
    return bytes([0x30 | flags]) + _varint(len(body)) + body


def _run(stream: bytes, *, fast: bool) -> tuple[list[Seen], list[int]]:
    seen: list[Seen] = []
    client = _BulkReadClient(CallbackAPIVersion.VERSION2, client_id="t", clean_session=False, manual_ack=True)
    if fast:
        client.on_incoming = lambda topic, payload, mid, qos: seen.append((topic, payload, mid, qos))
    else:
        client.on_message = lambda _c, _u, m: seen.append((m._topic, bytes(m.payload), m.mid, m.qos))
    client._rbuf, client._rpos = stream, 0
    codes: list[int] = []
    while client._rpos < len(stream):
        rc = client._packet_read()
        codes.append(rc)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            break
    return seen, codes


@given(st.lists(publish_packets(), min_size=1, max_size=6))
def test_same_messages_and_codes_as_paho(packets: list[bytes]) -> None:
    stream = b"".join(packets)
    assert _run(stream, fast=True) == _run(stream, fast=False)


def test_a_reading_takes_the_fast_path() -> None:
    topic, payload = b"meters/m00001/readings", b"GRIDTOKENX/READING/1\n{}\nsig"
    body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", 4242) + payload
    packet = bytes([0x32]) + _varint(len(body)) + body
    seen: list[Seen] = []
    client = _BulkReadClient(CallbackAPIVersion.VERSION2, client_id="t", clean_session=False, manual_ack=True)
    client.on_incoming = lambda *args: seen.append(args)
    client.on_message = lambda *_args: seen.append((b"paho", b"", 0, 0))
    client._rbuf, client._rpos = packet * 3, 0
    for _ in range(3):
        assert client._packet_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert seen == [(topic, payload, 4242, 1)] * 3
    assert client._in_packet["command"] == 0


def test_a_commit_group_is_acked_in_one_packet_on_the_delivering_connection_only() -> None:
    receiver = Receiver(BrokerURL.parse("mqtt://127.0.0.1:1"), client_id="t", sink=lambda *_args: None)
    receiver.generation = 2
    # (mid, qos, connection generation): mid 6 came on an earlier connection, mid 8 at QoS 0.
    receiver.ack_all([(5, 1, 2), (6, 1, 1), (7, 1, 2), (8, 0, 2)])
    queued = [bytes(p["packet"]) for p in receiver._client._out_packet]
    assert queued == [struct.pack("!BBH", 0x40, 2, 5) + struct.pack("!BBH", 0x40, 2, 7)]
