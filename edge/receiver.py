"""The meter side: paho-mqtt on its own network thread, persistent session, manual acks.

aiomqtt cannot ack manually, so paho runs here in its own thread (loop_start). Each message is
handed to the writer as-is; the writer acks it (`ack_all`, a commit group at once) only after the
SQLite commit. The session is persistent (clean_session=False, a fixed client id), so whatever was not acked when we
crash or disconnect is re-delivered by the broker with the DUP flag.
"""

from __future__ import annotations

import json
import logging
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from protocol.topics import METER_READINGS_FILTER
from runtime.config import BrokerURL

log = logging.getLogger(__name__)

#: Mosquitto's dynamic-security plugin (broker-config/edge/mosquitto.conf): the agent may disable a
#: meter's account there (edge.guard). Its ACL grants exactly these two topics.
DYNSEC_TOPIC = "$CONTROL/dynamic-security/v1"
DYNSEC_RESPONSE = DYNSEC_TOPIC + "/response"
#: Accounts the agent never disables, whatever their topics do (services, and the dev fleet user).
SERVICE_ACCOUNTS = frozenset({"edge-agent", "edge-inspector", "sim-fleet"})

Sink = Callable[[str, bytes, int, int, int], None]
"""(topic, payload, mid, qos, connection generation)"""
Publish = Callable[[bytes, bytes, int, int], None]
"""(raw topic, payload, mid, qos) of one incoming PUBLISH"""

#: Packets read per wake-up at most while our read buffer is empty (Home Assistant reads 500).
READ_BURST = 1000
PUBACK = PacketTypes.PUBACK << 4
PUBLISH = PacketTypes.PUBLISH
RECV_BYTES = 256 * 1024
_PUBACK_PACKET = struct.Struct("!BBH")


class _BulkReadClient(mqtt.Client):
    """paho with bulk reads. Measured: paho 2.2 spends half its time on one select() and three or four
    recv() calls per incoming PUBLISH (loop_read ignores max_packets when nothing is outgoing).

    Overrides of private paho methods (pinned paho-mqtt < 3): `_sock_recv` serves paho's small
    reads from one large recv, and `loop_read` keeps reading until the socket and that buffer are
    both empty (or READ_BURST packets, so acks still get written between bursts), and
    `_packet_write` sends a run of PUBACKs in one send(), and `_handle_on_message` skips the
    per-topic callback matcher we do not use. The read buffer is
    dropped on every (re)connect, so no stale bytes reach a new session.

    With `on_incoming` set, `_packet_read` parses a QoS 0/1 PUBLISH that is whole in the read buffer
    itself and hands (topic, payload, mid, qos) straight to it: no MQTTMessage (with its Condition)
    per reading, no byte-at-a-time header reads. Anything else, or anything that does not look
    well-formed, takes paho's own path, which then reads, handles or refuses it as before.
    """

    _rbuf = b""
    _rpos = 0
    on_incoming: Publish | None = None

    def reconnect(self) -> MQTTErrorCode:
        self._rbuf, self._rpos = b"", 0
        return super().reconnect()

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(RECV_BYTES)  # raises BlockingIOError when the socket is empty
            if not data:
                return data  # EOF: paho handles the lost connection
            self._rbuf, self._rpos = data, 0
            with self._msgtime_mutex:  # keepalive: what paho's own read loop records per packet
                self._last_bytes_received = time.monotonic()
        chunk = self._rbuf[self._rpos:self._rpos + bufsize]
        self._rpos += len(chunk)
        return chunk

    def _packet_read(self) -> MQTTErrorCode:
        handler, buf, pos = self.on_incoming, self._rbuf, self._rpos
        end = len(buf)
        if (handler is None or end - pos < 5 or self._in_packet["command"] != 0
                or self._protocol == MQTTProtocolVersion.MQTTv5):
            return super()._packet_read()  # type: ignore[no-any-return]
        command = buf[pos]
        qos = (command >> 1) & 3
        if command >> 4 != PUBLISH or qos == 2:
            return super()._packet_read()  # type: ignore[no-any-return]
        # Remaining length: 1 to 4 bytes, 7 bits each, low first.
        i, length, shift = pos + 1, 0, 0
        while True:
            if i >= end or shift > 21:
                return super()._packet_read()  # type: ignore[no-any-return]
            byte = buf[i]
            i += 1
            length |= (byte & 127) << shift
            shift += 7
            if byte < 128:
                break
        if i + length > end or length < 2:
            return super()._packet_read()  # type: ignore[no-any-return]
        topic_len = buf[i] << 8 | buf[i + 1]
        header = 2 + topic_len + (2 if qos else 0)
        if topic_len == 0 or header > length:  # paho refuses these (MalformedPacket)
            return super()._packet_read()  # type: ignore[no-any-return]
        mid = buf[i + header - 2] << 8 | buf[i + header - 1] if qos else 0
        self._rpos = i + length
        handler(buf[i + 2:i + 2 + topic_len], buf[i + header:i + length], mid, qos)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: Iterable[int]) -> None:
        """PUBACK several QoS 1 messages with one queued packet and one wake-up of the network thread,
        instead of paho's `ack` per message (a dict, a lock and a socketpair write each)."""
        data = b"".join([_PUBACK_PACKET.pack(PUBACK, 2, mid) for mid in mids])
        if data:
            self._packet_queue(PUBACK, data, 0, 0)

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        # No per-topic callbacks are registered: skip paho's topic matcher (5% of ingest CPU).
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)

    def _packet_write(self) -> MQTTErrorCode:
        # One send() for the whole run of PUBACKs the writer queued after a commit, instead of one
        # each. PUBACKs have no callbacks, so merging them changes nothing else. A packet already
        # partly written (pos > 0) is left alone.
        out = self._out_packet
        if len(out) > 1 and out[0]["command"] & 0xF0 == PUBACK and out[0]["pos"] == 0:
            run: list[Any] = []
            while out and out[0]["command"] & 0xF0 == PUBACK and out[0]["pos"] == 0 and len(run) < 8192:
                run.append(out.popleft())
            data = b"".join(p["packet"] for p in run)
            out.appendleft({"command": PUBACK, "mid": 0, "qos": 0, "pos": 0, "to_process": len(data),
                            "packet": data, "info": None})
        return super()._packet_write()  # type: ignore[no-any-return]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        count = 0
        while True:
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)  # type: ignore[no-any-return]
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            count += 1
            if count >= READ_BURST and self._rpos >= len(self._rbuf):
                return MQTTErrorCode.MQTT_ERR_SUCCESS


def init_session(url: BrokerURL, *, client_id: str, ca_file: str | None = None, timeout: float = 30.0) -> None:
    """Create the agent's persistent session (subscribed at QoS 1) and leave: from then on the broker
    queues every meter's reading for the agent, even before the agent's first start.

    Without it, a reading a meter publishes before the agent ever subscribed is PUBACKed and routed
    to no one (`gridtokenx edge run --init-session`, docs/edge-agent.md "Install order"). Messages the
    broker delivers meanwhile are not acked: they stay queued for the agent. Raises ConnectionError."""
    done = threading.Event()
    failure: list[str] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, manual_ack=True)
    if url.username:
        client.username_pw_set(url.username, url.password)
    if url.tls:
        client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)

    def connected(c: mqtt.Client, _u: Any, _f: mqtt.ConnectFlags, reason: ReasonCode, _p: Properties | None) -> None:
        if reason.is_failure:
            failure.append(f"the edge broker refused the connection: {reason}")
            done.set()
            return
        c.subscribe([(METER_READINGS_FILTER, 1), (DYNSEC_RESPONSE, 1)])

    def subscribed(_c: mqtt.Client, _u: Any, _mid: int, codes: list[ReasonCode], _p: Properties | None) -> None:
        if codes and codes[0].is_failure:
            failure.append(f"the edge broker refused the subscription to {METER_READINGS_FILTER}: {codes[0]}")
        done.set()

    client.on_connect = connected
    client.on_subscribe = subscribed
    try:
        client.connect(url.host, url.port, keepalive=30)
    except OSError as exc:
        raise ConnectionError(f"cannot reach the edge broker {url}: {exc}") from None
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise ConnectionError(f"no answer from the edge broker {url} within {timeout:.0f} s")
        if failure:
            raise ConnectionError(failure[0])
    finally:
        client.disconnect()
        client.loop_stop()


class Receiver:
    def __init__(self, url: BrokerURL, *, client_id: str, sink: Sink, ca_file: str | None = None,
                 on_connection: Callable[[bool], None] = lambda _up: None) -> None:
        self._url = url
        self._sink = sink
        self._paused = threading.Event()
        self._on_connection = on_connection
        self.connected = False
        self.generation = 0
        """Bumped on every connect and disconnect: acks are only sent on the connection that delivered."""
        client = _BulkReadClient(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                             manual_ack=True)
        if url.username:
            client.username_pw_set(url.username, url.password)
        if url.tls:
            client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_message = self._message
        client.on_incoming = self._publish
        self._client = client

    def start(self) -> None:
        log.info("connecting to the edge broker %s", self._url)
        self._client.connect_async(self._url.host, self._url.port, keepalive=30)
        self._client.loop_start()

    def ack_all(self, messages: Iterable[tuple[int, int, int]]) -> None:
        """PUBACK committed messages, each (mid, qos, generation) only on the connection that delivered
        it; the QoS 1 ones go in one packet (a group commit's worth).

        A packet id is only meaningful within its session's flight: after a reconnect the broker
        re-delivers every unacked message (DUP), and may reuse a freed id for a new message. An
        ack for an old delivery could then release a message we have not committed yet; instead
        the re-delivered copy is stored as a duplicate and acked on the new connection.
        """
        current = self.generation
        puback: list[int] = []
        for mid, qos, generation in messages:
            if generation != current:
                continue
            if qos == 1:
                puback.append(mid)
            elif qos:
                self._client.ack(mid, qos)
        self._client.ack_many(puback)

    def disable_meter(self, meter_id: str, why: str) -> None:
        """Ask the broker to disable `meter_id`'s account (disconnects it, refuses its reconnects).

        The answer arrives on DYNSEC_RESPONSE and is logged. A broker without the plugin (or an ACL
        without the grant) refuses silently: the meter then stays cut off in the agent only."""
        if meter_id in SERVICE_ACCOUNTS:
            log.error("messages on a topic of service account %s went over the per-meter limit (%s); "
                      "not disabling a service account", meter_id, why)
            return
        log.error("meter %s cut off: %s; its further messages are acked and counted, not stored, and "
                  "its broker account is being disabled (see docs/edge-agent.md, \"Abusive meters\")",
                  meter_id, why)
        command = {"commands": [{"command": "createClient", "username": meter_id},
                                {"command": "disableClient", "username": meter_id}]}
        self._client.publish(DYNSEC_TOPIC, json.dumps(command), qos=1)

    def pause(self) -> None:
        """Stop taking messages (drain): later ones stay un-acked, and the broker keeps them for us."""
        self._paused.set()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _connected(self, client: mqtt.Client, _userdata: Any, _flags: mqtt.ConnectFlags,
                   reason: ReasonCode, _props: Properties | None) -> None:
        if reason.is_failure:
            log.error("edge broker refused the connection: %s (check the edge-agent credentials)", reason)
            return
        # The subscription survives in the persistent session, but subscribing again is harmless and
        # covers a broker that lost its persistence file.
        client.subscribe([(METER_READINGS_FILTER, 1), (DYNSEC_RESPONSE, 1)])
        self.generation += 1
        self.connected = True
        self._on_connection(True)
        log.info("connected to the edge broker, subscribed to %s", METER_READINGS_FILTER)

    def _disconnected(self, _client: mqtt.Client, _userdata: Any, _flags: mqtt.DisconnectFlags,
                      reason: ReasonCode, _props: Properties | None) -> None:
        self.generation += 1
        self.connected = False
        self._on_connection(False)
        if not self._paused.is_set():
            log.warning("edge broker connection lost (%s); paho reconnects", reason)

    def _message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._publish(message._topic, bytes(message.payload), message.mid, message.qos)

    def _publish(self, raw_topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        if self._paused.is_set():
            return
        try:
            topic = raw_topic.decode()
        except UnicodeDecodeError:
            topic = "<not UTF-8>"  # quarantined as a topic mismatch, still acked after the commit
        if topic == DYNSEC_RESPONSE:
            message = mqtt.MQTTMessage(mid, raw_topic)
            message.qos, message.payload = qos, payload
            self._dynsec_response(message)
            return
        self._sink(topic, payload, mid, qos, self.generation)

    def _dynsec_response(self, message: mqtt.MQTTMessage) -> None:
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)
        try:
            responses = json.loads(message.payload).get("responses", [])
        except (ValueError, AttributeError):
            responses = []
        for r in responses:
            if r.get("command") == "disableClient":
                if r.get("error"):
                    log.error("the edge broker did not disable a meter: %s", r["error"])
                else:
                    log.warning("the edge broker disabled the cut-off meter's account")
