"""A minimal MQTT 3.1.1 QoS 1 publisher over a raw socket, for `gridtokenx bench edge`.

paho's publish path (a lock, a wake-up of its network thread and a syscall per message) tops out
at a few thousand messages/s on a small machine and would measure the publisher, not the agent.
This writes pre-built PUBLISH packets in large chunks and counts PUBACKs, with a window of
unacknowledged packet ids, so the edge broker and the agent are the bottleneck. Benchmark tool
only: no reconnects, no TLS.
"""

from __future__ import annotations

import socket
import struct
import time

from runtime.config import BrokerURL

WINDOW = 2000
CHUNK = 200


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id: str, username: str | None, password: str | None) -> bytes:
    flags = 0x02 | (0x80 if username else 0) | (0x40 if password else 0)
    body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", 60) + _str(client_id)
    if username:
        body += _str(username)
    if password:
        body += _str(password)
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    body = _str(topic) + struct.pack("!H", packet_id) + payload
    return b"\x32" + _varint(len(body)) + body


def publish_all(url: BrokerURL, messages: list[tuple[str, bytes]], *, client_id: str,
                timeout: float = 600.0) -> float:
    """Publish every (topic, payload) at QoS 1; return the seconds until the last PUBACK."""
    sock = socket.create_connection((url.host, url.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.sendall(connect_packet(client_id, url.username, url.password))
        connack = _read_exact(sock, 4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"the broker refused the connection (CONNACK {connack.hex()})")
        started = time.monotonic()
        deadline = started + timeout
        sent = acked = 0
        pending = b""
        total = len(messages)
        while acked < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{total - acked} PUBACKs missing after {timeout:.0f} s")
            if sent < total and sent - acked < WINDOW:
                end = min(total, sent + CHUNK, acked + WINDOW)
                sock.sendall(b"".join(publish_packet(t, p, (i % 65535) + 1)
                                      for i, (t, p) in enumerate(messages[sent:end], start=sent)))
                sent = end
                continue
            data = pending + sock.recv(65536)
            if not data:
                raise ConnectionError("the broker closed the connection")
            whole = len(data) // 4 * 4  # PUBACK is 4 bytes: 0x40 0x02 id id
            for i in range(0, whole, 4):
                if data[i] != 0x40:
                    raise ConnectionError(f"unexpected packet 0x{data[i]:02x} from the broker")
            acked += whole // 4
            pending = data[whole:]
        return time.monotonic() - started
    finally:
        sock.close()


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return data


def flood(url: BrokerURL, topic: str, payload: bytes, *, client_id: str, seconds: float,
          qos: int = 1) -> int:
    """Publish the same payload as fast as the broker takes it for `seconds` (an abusive meter).

    QoS 1 keeps a window of WINDOW unacknowledged packets, QoS 0 just writes. Returns how many
    were published (QoS 1: PUBACKed). Stops early, without raising, when the broker closes the
    connection (it may cut the flooder off)."""
    sock = socket.create_connection((url.host, url.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header = b"\x32" if qos else b"\x30"
    body_len = len(_str(topic)) + (2 if qos else 0) + len(payload)
    prefix = header + _varint(body_len) + _str(topic)
    try:
        sock.sendall(connect_packet(client_id, url.username, url.password))
        connack = _read_exact(sock, 4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"the broker refused the connection (CONNACK {connack.hex()})")
        deadline = time.monotonic() + seconds
        sent = acked = 0
        pending = b""
        sock.settimeout(1.0)
        while time.monotonic() < deadline:
            if not qos or sent - acked < WINDOW:
                n = CHUNK
                chunk = b"".join(prefix + (struct.pack("!H", ((sent + i) % 65535) + 1) if qos else b"") + payload
                                 for i in range(n))
                try:
                    sock.sendall(chunk)
                except OSError:
                    break
                sent += n
                if not qos:
                    acked = sent
                continue
            try:
                data = pending + sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            whole = len(data) // 4 * 4
            acked += whole // 4
            pending = data[whole:]
        return acked
    finally:
        sock.close()
