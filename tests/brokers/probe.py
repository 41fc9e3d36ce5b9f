"""A small synchronous MQTT client for access-control tests: it reports the broker's reason codes.

paho runs its network loop in a thread; every call here waits for the broker's answer (CONNACK,
PUBACK, SUBACK) with a deadline, so a test asserts what the broker said, not what it might say later.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

TIMEOUT = 5.0
NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86
NO_MATCHING_SUBSCRIBERS = 0x10
CLOSED = -1
"""connect(): the broker closed the connection without a CONNACK."""


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes


class Probe:
    def __init__(self, host: str, port: int, username: str | None, password: str | None, *,
                 client_id: str = "", v5: bool = True, clean: bool = True, ca: Path | None = None,
                 cert: tuple[Path, Path] | None = None) -> None:
        self._v5 = v5
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        kwargs: dict[str, Any] = {} if v5 else {"clean_session": clean}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                                  **kwargs)
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca), certfile=str(cert[0]) if cert else None,
                                keyfile=str(cert[1]) if cert else None)
        self.host, self.port, self.clean = host, port, clean
        self.messages: queue.Queue[Received] = queue.Queue()
        self._connack: queue.Queue[int] = queue.Queue()
        self._acks: dict[int, queue.Queue[list[int]]] = {}
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    # paho callbacks (network thread)
    def _on_connect(self, _c: Any, _u: Any, _flags: Any, rc: Any, _props: Any) -> None:
        self._connack.put(rc.value)

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, _rc: Any, _props: Any) -> None:
        self._connack.put(CLOSED)  # wakes a connect() that will never get its CONNACK

    def _ack_queue(self, mid: int) -> queue.Queue[list[int]]:
        with self._lock:
            return self._acks.setdefault(mid, queue.Queue())

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _props: Any) -> None:
        self._ack_queue(mid).put([rc.value])

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: Any, _props: Any) -> None:
        self._ack_queue(mid).put([r.value for r in rcs])

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(Received(msg.topic, bytes(msg.payload)))

    def connect(self) -> int:
        """The CONNACK reason code (0 = accepted), or CLOSED if the broker hung up without one."""
        kwargs: dict[str, Any] = {"clean_start": self.clean} if self._v5 else {}
        self.client.connect(self.host, self.port, keepalive=30, **kwargs)
        self.client.loop_start()
        try:
            return self._connack.get(timeout=TIMEOUT)
        except queue.Empty:
            raise ConnectionError(f"no CONNACK from {self.host}:{self.port} within {TIMEOUT}s") from None

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> int:
        """The PUBACK reason code (MQTT 5) for a QoS 1 publish."""
        info = self.client.publish(topic, payload, qos=qos)
        return self._ack_queue(info.mid).get(timeout=TIMEOUT)[0]

    def subscribe(self, topic: str, qos: int = 1) -> int:
        """The SUBACK code: granted QoS (0-2) or a failure code (>= 0x80)."""
        _rc, mid = self.client.subscribe(topic, qos=qos)
        assert mid is not None
        return self._ack_queue(mid).get(timeout=TIMEOUT)[0]

    def barrier(self) -> None:
        """A round trip on this connection: the broker writes to one client in order, so any message
        it routed to us before this SUBACK has arrived when this returns."""
        self.subscribe("gridtokenx/test/barrier", qos=0)

    def next_message(self, timeout: float = TIMEOUT) -> Received:
        return self.messages.get(timeout=timeout)

    def drained(self) -> list[Received]:
        out: list[Received] = []
        while not self.messages.empty():
            out.append(self.messages.get_nowait())
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
