"""The replay fleet's publish path: pre-encoded QoS 1 PUBLISH packets out, PUBACKs in, in bulk.

paho keeps what it does well: connect, authentication, TLS, keepalive pings and the lost-connection
handling. Only its per-message machinery is bypassed, which a py-spy profile of the replaying
simulator showed to be most of its CPU: per publish an MQTTMessageInfo, a queued packet dict, a
socket-pair wake-up byte and two selector changes (register/unregister write); per PUBACK three or
four recv() calls, a ReasonCode and a Properties object and a callback.

`PublishClient.send` writes whole packets built by `publish_packet` (the bytes paho builds for a
QoS 1 publish, byte for byte: tests compare) through paho's own write queue, so they never
interleave with a ping paho is writing. `loop_read` peels runs of PUBACKs (4 bytes each) off one
large recv() and hands their packet ids to `on_pubacks` in one call; any other packet (CONNACK,
PINGRESP, anything unexpected) goes through paho's reader, and a PUBACK that reaches paho's
reader anyway is routed to `on_pubacks` too, so no acknowledgement is lost.

The link, not paho, owns packet ids and the in-flight window (paho's `_out_messages` stays empty):
the session is clean, a lost connection makes the link requeue its in-flight messages and publish
them on a new client, exactly as with paho's own publish (a duplicate of identical bytes at worst).
Overrides of private paho methods: pinned paho-mqtt < 3, as edge.receiver does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes

#: Fixed header byte of a QoS 1 PUBLISH (no DUP, no retain): what paho sends for publish(qos=1).
PUBLISH_QOS1 = (PacketTypes.PUBLISH << 4) | 0x02
_PUBACK = PacketTypes.PUBACK << 4
_PUBACK_HEAD = bytes((_PUBACK, 2))
RECV_BYTES = 256 * 1024
#: Packets paho's reader handles per wake-up at most (the rest on the next one).
READ_BURST = 1000


def publish_head(topic: str, payload_len: int) -> bytes:
    """Fixed header and topic of a QoS 1 PUBLISH; the packet id (2 bytes) and the payload follow."""
    name = topic.encode()
    remaining = 2 + len(name) + 2 + payload_len
    head = bytearray((PUBLISH_QOS1,))
    while True:
        byte, remaining = remaining % 128, remaining // 128
        head.append(byte | 0x80 if remaining else byte)
        if not remaining:
            break
    head += len(name).to_bytes(2, "big")
    head += name
    return bytes(head)


def publish_packet(head: bytes, mid: int, payload: bytes) -> bytes:
    return head + mid.to_bytes(2, "big") + payload


class PublishClient(mqtt.Client):
    """paho for the connection, our own bytes for QoS 1 publishes and their PUBACKs (see module doc)."""

    _rbuf = b""
    _rpos = 0

    def __init__(self, *args: Any, on_pubacks: Callable[[list[int]], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_pubacks = on_pubacks
        """Called with the packet ids of the PUBACKs read, in arrival order."""

    def send(self, data: bytes) -> None:
        """Write whole PUBLISH packets now; what the socket does not take now, paho writes when it can."""
        if not self._out_packet:  # nothing of paho's is half written: straight to the socket
            try:
                sent = self._sock_send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)  # paho closes, calls on_disconnect
                return
            self._last_msg_out = time.monotonic()
            if sent == len(data):
                return
            data = data[sent:]
        self._out_packet.append({"command": PUBLISH_QOS1, "mid": 0, "qos": 1, "pos": 0,
                                 "to_process": len(data), "packet": data, "info": None})
        self._call_socket_register_write()  # paho's loop_write sends the rest, after what it queued before

    # --- reading ----------------------------------------------------------------------------------

    def _sock_recv(self, bufsize: int) -> bytes:
        # paho's reader takes its bytes from our buffer first, so nothing read in bulk is lost to it.
        if self._rpos >= len(self._rbuf):
            return super()._sock_recv(bufsize)  # type: ignore[no-any-return]
        chunk = self._rbuf[self._rpos:self._rpos + bufsize]
        self._rpos += len(chunk)
        return chunk

    def _take_pubacks(self) -> bool:
        """Consume PUBACKs from the buffer and the socket; True once the socket is drained, False when
        paho's reader must handle the next bytes (another packet, end of stream or an error)."""
        mids: list[int] = []
        short_read = False
        try:
            while True:
                buf, pos = self._rbuf, self._rpos
                end = len(buf)
                while pos + 4 <= end and buf[pos] == _PUBACK and buf[pos + 1] == 2:
                    mids.append((buf[pos + 2] << 8) | buf[pos + 3])
                    pos += 4
                self._rpos = pos
                rest = end - pos
                if rest and (rest >= 4 or not _PUBACK_HEAD.startswith(buf[pos:pos + 2])):
                    return False  # another kind of packet
                if short_read:
                    # The kernel had no more: the selector wakes us for the next bytes (a partial
                    # PUBACK stays buffered until then). TLS may hold decrypted bytes back, so
                    # there we read until the socket says it is empty.
                    return True
                try:
                    data = super()._sock_recv(RECV_BYTES)
                except BlockingIOError:
                    return True
                except OSError:
                    return False  # paho's reader meets the error and handles the lost connection
                if not data:
                    return False  # end of stream: likewise
                self._rbuf, self._rpos = buf[pos:] + data, 0
                short_read = len(data) < RECV_BYTES and not self._ssl
        finally:
            if mids:
                self._last_bytes_received = time.monotonic()
                self.on_pubacks(mids)

    def _handle_pubackcomp(self, cmd: str) -> MQTTErrorCode:
        # A PUBACK that reached paho's reader after all (say, its length encoded in two bytes): its
        # packet id is ours, not paho's, which would drop it as unknown.
        if self._in_packet["remaining_length"] != 2:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL  # as paho: a malformed PUBACK ends the connection
        packet = self._in_packet["packet"]
        self.on_pubacks([(packet[0] << 8) | packet[1]])
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        for _ in range(READ_BURST):
            if self._sock is not None and self._in_packet["command"] == 0 and self._take_pubacks():
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            if self._sock is None:  # closed, or lost while on_pubacks published
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return self._loop_rc_handle(rc)  # type: ignore[no-any-return]
        return MQTTErrorCode.MQTT_ERR_SUCCESS
