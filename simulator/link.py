"""One MQTT connection of the fleet, driven by paho inside the asyncio loop (the Home Assistant way).

A link carries one meter (its own client id and credentials, as real meters connect) or, in fleet
mode, many meters behind one broker user. It keeps a window of QoS 1 publishes in flight and
refills it from PUBACK callbacks, so no task or future is created per message: that is what lets
one process publish thousands of signed readings per second.

Messages leave a link only on PUBACK. On a disconnect the in-flight ones go back to the front of
the queue and are re-sent, in order, on the next connection (a duplicate at worst, same bytes).
While a link is down its queue is bounded: the oldest messages are dropped first, as meter
firmware does with a full ring buffer.

A `fast` link (replay mode) publishes through `simulator.publish` instead of paho's publish(): the
same packets on the same connection, but the link numbers them itself, writes all it may send in
one call and takes PUBACKs in bulk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from runtime.backoff import Backoff
from runtime.config import BrokerURL
from simulator.meter import Outgoing
from simulator.publish import PublishClient, publish_head
from simulator.report import Stats

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
KEEPALIVE = 30


class Link:
    def __init__(self, *, client_id: str, broker: BrokerURL, username: str, password: str, window: int,
                 max_buffer: int, stats: Stats, on_done: Callable[[Outgoing, bool], None],
                 ca_file: str | None = None, fast: bool = False) -> None:
        self.client_id = client_id
        self.broker = broker
        self.username, self.password = username, password
        self.window = window
        self.max_buffer = max_buffer
        self.stats = stats
        self._on_done = on_done
        """Called with (item, acked): acked True on PUBACK, False when dropped from a full buffer."""
        self._ca_file = ca_file
        self.fast = fast
        self._mid = 0
        """Fast links: the last packet id used on this connection."""
        self.pending: deque[Outgoing] = deque()
        self.inflight: dict[int, tuple[Outgoing, float]] = {}
        self.connected = False
        self.client: mqtt.Client | None = None
        self._changed = asyncio.Event()
        self._stop: asyncio.Event | None = None
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    @property
    def backlog(self) -> int:
        return len(self.pending) + len(self.inflight)

    def enqueue(self, items: list[Outgoing]) -> None:
        self.pending.extend(items)
        if not self.connected:
            while self.backlog > self.max_buffer and self.pending:
                self.stats.dropped += 1
                self.stats.error("buffer_full")
                self._on_done(self.pending.popleft(), False)
        self._pump()

    def wake(self) -> None:
        self._changed.set()

    # --- the connection's life -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, publish, reconnect with backoff; return once `stop` is set and nothing is left."""
        backoff = Backoff(0.5, 15.0)
        self._stop = stop
        try:
            while not (stop.is_set() and not self.backlog):
                if not await self._connect():
                    # Even while stopping: the fleet's drain timeout decides when to give up (the
                    # backlog then stays in the outbox for the next run).
                    await asyncio.sleep(backoff.next())
                    continue
                backoff.reset()
                self._pump()
                while self.connected and not (stop.is_set() and not self.backlog):
                    await self._changed.wait()
                    self._changed.clear()
        finally:
            self._close()

    async def _connect(self) -> bool:
        self._close()  # a client the broker dropped still holds paho's socket pair
        if self.fast:
            client: mqtt.Client = PublishClient(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                                clean_session=True, protocol=mqtt.MQTTv311,
                                                on_pubacks=self._on_pubacks)
            self._mid = 0
        else:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True,
                                 protocol=mqtt.MQTTv311)
        client.username_pw_set(self.username, self.password)
        # 0 = unlimited: the link keeps its own window, and paho then skips a scan of every
        # outgoing message on each PUBACK (its queued-message bookkeeping).
        client.max_inflight_messages_set(0)
        if self.broker.tls:
            client.tls_set_context(ssl.create_default_context(cafile=self._ca_file))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self.client = client
        self._connack = self._loop.create_future()
        try:
            # connect() blocks on the TCP (and TLS) handshake: keep it off the event loop.
            await self._loop.run_in_executor(None, client.connect, self.broker.host, self.broker.port, KEEPALIVE)
            code = await asyncio.wait_for(self._connack, CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self.stats.error("connect_failed")
            log.debug("link %s: connect to %s failed: %s", self.client_id, self.broker, exc)
            self._close()
            return False
        if code.is_failure:
            kind = "not_authorized" if code.value in (4, 5, 134, 135) else "connect_refused"
            self.stats.error(kind)
            log.warning("link %s: broker %s refused the connection (%s)", self.client_id, self.broker, code)
            self._close()
            return False
        self.connected = True
        return True

    def _close(self) -> None:
        self.connected = False
        client, self.client = self.client, None
        if client is not None:
            client.disconnect()
            client.loop_write()  # flush DISCONNECT now: the loop may not run again for this socket
            # paho frees its sockets only in __del__; close them now (pytest treats leaks as errors).
            client._reset_sockets()
            self._requeue_inflight()

    def _requeue_inflight(self) -> None:
        if self.inflight:
            self.pending.extendleft(reversed([item for item, _ in self.inflight.values()]))
            self.inflight.clear()

    def misc(self) -> None:
        """Keepalive pings and timeouts; the fleet calls this about once a second."""
        if self.client is not None:
            self.client.loop_misc()

    def _pump(self) -> None:
        client = self.client
        if not self.connected or client is None:
            return
        if isinstance(client, PublishClient):
            self._pump_fast(client)
            return
        now = time.perf_counter()
        while self.pending and len(self.inflight) < self.window:
            item = self.pending.popleft()
            info = client.publish(item.topic, item.payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.pending.appendleft(item)
                self.stats.error("publish_failed")
                return
            self.inflight[info.mid] = (item, now)
            self.stats.sent()

    def _pump_fast(self, client: PublishClient) -> None:
        pending, inflight = self.pending, self.inflight
        room = self.window - len(inflight)
        if not pending or room <= 0:
            return
        now = time.perf_counter()
        parts: list[bytes] = []
        mid = self._mid
        sent = 0
        while pending and sent < room:
            item = pending.popleft()
            mid = mid % 65535 + 1
            while mid in inflight:  # only after a wrap-around with an old message still unacked
                mid = mid % 65535 + 1
            inflight[mid] = (item, now)
            parts += (item.head or publish_head(item.topic, len(item.payload)), mid.to_bytes(2, "big"),
                      item.payload)
            sent += 1
        self._mid = mid
        self.stats.sent(sent)
        client.send(b"".join(parts))

    def _on_pubacks(self, mids: list[int]) -> None:
        now = time.perf_counter()
        inflight, stats, done = self.inflight, self.stats, self._on_done
        for mid in mids:
            entry = inflight.pop(mid, None)
            if entry is None:
                continue
            item, sent_at = entry
            stats.acked_item(item, now - sent_at)
            done(item, True)
        self._pump()
        self._drained()

    # --- paho callbacks (loop thread, except socket_open/register_write during connect) ---------

    def _on_connect(self, _c: mqtt.Client, _u: Any, _flags: Any, code: ReasonCode, _p: Any) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(code)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _flags: Any, code: ReasonCode, _p: Any) -> None:
        if self.connected:
            self.stats.error("disconnected")
            log.info("link %s: lost the connection to %s (%s)", self.client_id, self.broker, code)
        self.connected = False
        self._requeue_inflight()
        self._changed.set()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, _code: Any, _p: Any) -> None:
        entry = self.inflight.pop(mid, None)
        if entry is None:
            return
        item, sent_at = entry
        self.stats.acked_item(item, time.perf_counter() - sent_at)
        self._on_done(item, True)
        self._pump()
        self._drained()

    def _drained(self) -> None:
        # Only a stopping run waits for an empty backlog: no task wake-up per PUBACK before that.
        if not self.backlog and self._stop is not None and self._stop.is_set():
            self._changed.set()

    def _in_loop(self, fn: Callable[[int], object], sock: Any) -> None:
        fd = sock.fileno()
        if threading.get_ident() == self._loop_thread:
            fn(fd)
        else:  # connect() runs in an executor thread
            self._loop.call_soon_threadsafe(self._guarded, fn, fd)

    @staticmethod
    def _guarded(fn: Callable[[int], object], fd: int) -> None:
        # The socket may have been closed (failed connect) before this ran in the loop.
        with contextlib.suppress(OSError, ValueError):
            fn(fd)

    def _on_socket_open(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._in_loop(lambda fd: self._loop.add_reader(fd, client.loop_read), sock)

    def _on_socket_close(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._remove, sock)

    def _remove(self, fd: int) -> None:
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)

    def _on_register_write(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._in_loop(lambda fd: self._loop.add_writer(fd, client.loop_write), sock)

    def _on_unregister_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._loop.remove_writer, sock)
