"""The writer thread: the one owner of the SQLite connection, and the commit-then-ack step.

Messages from the receiver (paho's thread) and calls from the asyncio side (forwarder,
housekeeping) share one FIFO queue. Messages are group-committed: take what is queued, up to
`commit_max`, lingering a few ms for more; screen; store in one transaction; only then ack each
one to the edge broker. A crash before the ack means the broker re-delivers (DUP), and the buffer
stores it once. Because the queue is FIFO, a call submitted after a message runs after that
message is committed and acked: `barrier()` relies on that during a drain.

The forwarder's calls (claim a batch, apply a cloud ack) are *urgent*: they run before the next
group, not behind every message queued ahead of them. A burst of incoming readings (every meter
re-sending its outbox after an outage) can queue tens of thousands of messages; in FIFO order the
forwarder then waited for all of them before each claim and sent next to nothing to the cloud
until the burst was stored. Urgent calls only touch committed rows, so running them early changes
nothing for the messages still queued (they are neither stored nor acked yet).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from edge.buffer import Buffer, Drop, IngestOutcome, LimitedCount
from edge.guard import Guard
from edge.integrity import damaged_sentence, is_damage, is_full
from edge.metrics import EdgeMetrics
from edge.screening import screen

log = logging.getLogger(__name__)

T = TypeVar("T")


class Incoming(msgspec.Struct, gc=False):  # one per reading: a Struct builds ~7x faster than a frozen dataclass
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int


class Limited(msgspec.Struct, gc=False):
    """A message of a cut-off meter (edge.guard): acked after its count is committed, never stored."""
    meter_id: str
    size: int
    mid: int
    qos: int
    generation: int


@dataclass(frozen=True, slots=True)
class _Call:
    fn: Callable[[Buffer], Any]
    future: Future[Any]


class _Stop:
    pass


class _Wake:
    """Wakes the writer for an urgent call (the call itself waits in `Writer._urgent`)."""


Acker = Callable[[list[tuple[int, int, int]]], None]
"""ack_all([(mid, qos, connection generation), ...]): release committed messages at the broker"""


class Writer:
    def __init__(self, buffer: Buffer, *, metrics: EdgeMetrics, keys: Mapping[str, bytes] | None,
                 commit_max: int = 500, linger_s: float = 0.005) -> None:
        self.buffer = buffer
        self._metrics = metrics
        self.metrics = metrics
        self._keys = keys
        self._commit_max = commit_max
        self._linger = linger_s
        self._queue: queue.SimpleQueue[Incoming | Limited | _Call | _Stop | _Wake] = queue.SimpleQueue()
        self._urgent: collections.deque[_Call] = collections.deque()
        self.guard: Guard | None = None
        self._q0_limited: dict[str, LimitedCount] = {}
        self._q0_lock = threading.Lock()
        self._counted: set[int] = set()
        """ids of the Limited items of the group being committed whose count is already stored."""
        self._thread = threading.Thread(target=self._main, name="edge-writer", daemon=True)
        self.ack_all: Acker = lambda _acks: None
        self.on_stored: Callable[[], None] = lambda: None
        """Called (on the writer thread) after a commit that added pending rows."""
        self.on_failure: Callable[[BaseException], None] = lambda _exc: None
        self.failure: BaseException | None = None
        self.disk_full = False
        """True while a commit waits for disk space (nothing is acked meanwhile: the broker keeps it)."""
        self.on_disk_full: Callable[[bool], None] = lambda _full: None

    # -- producer side (any thread) -----------------------------------------------------------

    def submit(self, topic: str, payload: bytes, mid: int, qos: int, generation: int) -> None:
        guard = self.guard
        meter = guard.admit(topic, len(payload)) if guard is not None else None
        if meter is None:
            self._queue.put(Incoming(topic, payload, mid, qos, generation))
        elif qos > 0:
            self._queue.put(Limited(meter, len(payload), mid, qos, generation))  # no payload kept
        else:  # nothing to ack: just count it (a QoS 0 flood never grows the queue)
            with self._q0_lock:
                c = self._q0_limited.get(meter)
                if c is None:
                    c = self._q0_limited[meter] = LimitedCount(guard.cut_off.get(meter, "") if guard else "")
                c.messages += 1
                c.bytes += len(payload)

    def call_soon(self, fn: Callable[[Buffer], T], *, urgent: bool = False) -> Future[T]:
        future: Future[T] = Future()
        if self.failure is not None:
            future.set_exception(RuntimeError("the buffer writer has stopped after an error"))
            return future
        if urgent:
            self._urgent.append(_Call(fn, future))
            self._queue.put(_Wake())
        else:
            self._queue.put(_Call(fn, future))
        return future

    async def call(self, fn: Callable[[Buffer], T], *, urgent: bool = False) -> T:
        """Run `fn(buffer)` on the writer thread: in queue order, or with `urgent` before the next
        group of queued messages (for calls on committed rows only: claims and cloud acks)."""
        return await asyncio.wrap_future(self.call_soon(fn, urgent=urgent))

    async def barrier(self) -> None:
        """Returns once every message queued before it is committed and acked.

        On a full disk it returns at once: the messages held then are not acked, so the broker keeps
        them for the next start, which is just as safe and does not wait for space."""
        if self.disk_full:
            return
        await self.call(lambda _b: None)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            self._queue.put(_Stop())
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.failure is None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # -- the thread ---------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug or a broken disk: stop the agent, say why once
            if is_damage(exc):
                log.error("buffer writer stopped: %s (unacked readings stay with the broker)",
                          damaged_sentence(self.buffer.path, str(exc)))
            else:
                log.exception("buffer writer failed; the agent stops (unacked readings stay with the broker)")
            self.failure = exc
            self.on_failure(exc)
            self._fail_pending(exc)

    def _fail_pending(self, exc: BaseException) -> None:
        while self._urgent:
            call = self._urgent.popleft()
            if not call.future.done():
                call.future.set_exception(RuntimeError(f"the buffer writer has stopped: {exc}"))
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Call) and not item.future.done():
                item.future.set_exception(RuntimeError(f"the buffer writer has stopped: {exc}"))

    def _loop(self) -> None:
        q = self._queue
        while True:
            self._run_urgent()
            item = q.get()
            if isinstance(item, _Stop):
                return
            if isinstance(item, _Wake):
                continue
            if isinstance(item, _Call):
                self._run(item)
                continue
            messages: list[Incoming | Limited] = [item]
            calls: list[_Call] = []
            stop = False
            deadline = time.monotonic() + self._linger
            while len(messages) < self._commit_max:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        nxt = q.get(timeout=remaining)
                    except queue.Empty:
                        break
                if isinstance(nxt, _Stop):
                    stop = True
                    break
                if isinstance(nxt, _Wake):
                    continue  # the urgent call runs right after this commit
                if isinstance(nxt, _Call):
                    calls.append(nxt)  # runs right after this commit: still FIFO w.r.t. the messages
                    continue
                messages.append(nxt)
            if not self._commit_or_wait(messages, calls):
                return
            for call in calls:
                self._run(call)
            if stop:
                return

    def _commit_or_wait(self, messages: list[Incoming | Limited], calls: list[_Call]) -> bool:
        """Commit, or on a full disk (SQLITE_FULL) hold the messages unacked and retry with a backoff
        until space returns. Calls queued meanwhile still run (acks from the cloud free space); later
        messages join the held group. False: a stop came while waiting (nothing held is acked)."""
        delay = 0.2
        while True:
            try:
                self._commit(messages)
            except sqlite3.OperationalError as exc:
                if not is_full(exc):
                    raise
                self.buffer.resync()  # the rolled-back transaction had moved the in-memory counts
                if not self.disk_full:
                    self.disk_full = True
                    self.on_disk_full(True)
                    log.error("the disk under the buffer is full: %d message(s) held unacked (the broker keeps "
                              "them) until space returns; free space or run `gridtokenx edge inspect purge`",
                              len(messages))
                for call in calls:
                    self._run(call)
                calls.clear()
                if not self._wait_for_space(messages, calls, delay):
                    return False
                delay = min(5.0, delay * 2)
                continue
            if self.disk_full:
                self.disk_full = False
                self.on_disk_full(False)
                log.warning("disk space is back: %d held message(s) committed and acked", len(messages))
            return True

    def _wait_for_space(self, messages: list[Incoming | Limited], calls: list[_Call], delay: float) -> bool:
        deadline = time.monotonic() + delay
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                return True
            if isinstance(item, _Stop):
                return False
            if isinstance(item, _Wake):
                self._run_urgent()
            elif isinstance(item, _Call):
                self._run(item)
            else:
                messages.append(item)
        return True

    def _run_urgent(self) -> None:
        while self._urgent:
            self._run(self._urgent.popleft())

    def _run(self, call: _Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            call.future.set_result(call.fn(self.buffer))
        except Exception as exc:  # reported to the caller, who decides; the writer goes on
            call.future.set_exception(exc)

    def _take_limited(self, messages: Sequence[Incoming | Limited]) -> dict[str, LimitedCount]:
        with self._q0_lock:
            limited, self._q0_limited = self._q0_limited, {}
        cut_off = self.guard.cut_off if self.guard is not None else {}
        for m in messages:
            if isinstance(m, Limited):
                c = limited.get(m.meter_id)
                if c is None:
                    c = limited[m.meter_id] = LimitedCount(cut_off.get(m.meter_id, ""))
                c.messages += 1
                c.bytes += m.size
        return limited

    def flush_limited(self) -> None:
        """Commit the counts of QoS 0 messages of cut-off meters (housekeeping, when no commit ran)."""
        self._record_limited(self._take_limited([]))

    def _record_limited(self, limited: dict[str, LimitedCount]) -> None:
        if not limited:
            return
        self.buffer.record_limited(limited, time.time())
        for meter, c in limited.items():
            self._metrics.meter_limited.labels("rate_limited").inc(c.messages)
            self._metrics.meter_limited_bytes.inc(c.bytes)
            log.debug("meter %s is cut off: %d message(s) acked unstored", meter, c.messages)

    def _commit(self, messages: list[Incoming | Limited]) -> None:
        # Counted once even when the ingest below hits a full disk and the group is retried.
        fresh = [m for m in messages if isinstance(m, Limited) and id(m) not in self._counted]
        self._record_limited(self._take_limited(fresh))
        self._counted.update(id(m) for m in fresh)
        incoming = [m for m in messages if isinstance(m, Incoming)]
        verdicts = [screen(m.topic, m.payload, self._keys) for m in incoming]
        started = time.perf_counter()
        outcome = self.buffer.ingest(verdicts, time.time()) if verdicts else IngestOutcome()
        self._metrics.commit_seconds.observe(time.perf_counter() - started)
        # Only now, with the readings durable (per the synchronous setting), release them at the broker.
        self.ack_all([(m.mid, m.qos, m.generation) for m in messages if m.qos > 0])
        self._account(len(messages), outcome)
        self._counted.clear()
        if outcome.stored:
            self.on_stored()

    def _account(self, received: int, out: IngestOutcome) -> None:
        m = self._metrics
        m.received.inc(received)
        m.stored.inc(out.stored)
        if out.duplicates:
            m.duplicates.inc(out.duplicates)
        for reason, n in out.quarantined.items():
            m.quarantined.labels(reason).inc(n)
            log.warning("quarantined %d message(s): %s", n, reason)
        if out.drops:
            self.account_drops(out.drops)
        if out.evicted:
            m.evidence_evicted.inc(out.evicted)
            log.warning("evidence quota full: removed the %d oldest quarantined/rejected row(s)", out.evicted)

    def account_drops(self, drops: list[Drop]) -> None:
        """Count and log drops (one line per group, each drop is also a row in `drops`)."""
        by_reason: dict[str, int] = {}
        for d in drops:
            by_reason[d.reason.value] = by_reason.get(d.reason.value, 0) + 1
        for reason, n in by_reason.items():
            self._metrics.dropped.labels(reason).inc(n)
        first, last = drops[0], drops[-1]
        log.warning("dropped %d reading(s) (%s), first %s/%d, last %s/%d; see the drops table",
                    len(drops), first.detail, first.meter_id, first.seq, last.meter_id, last.seq)
