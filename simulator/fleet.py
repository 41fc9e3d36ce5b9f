"""The fleet: many meters in one process and event loop, publishing over MQTT. `run_fleet` is the API.

Data flow inside: a simulated clock → each meter's interval job (`Meter.next_interval`) → the state
store (write-ahead: counters + outbox in one SQLite transaction) → the meter's link (paho in the
loop) → PUBACK → the outbox row is deleted and the report counts it.

Time anchoring: the cloud rejects interval ends more than 5 minutes in the future or more than
7 days old, so simulated time never passes real time. A fresh meter's clock starts `backfill`
simulated seconds before now (default: duration × speed, at most 6 days), so a simulated day at
high speed ends about now; a clock that catches up with real time just runs in real time.

Replay mode (`simulator.replay`) signs every interval the run will reach before it starts; the same
clock then releases the pre-signed messages instead of running the meters' interval jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable

from protocol.keys import MeterKey
from runtime.config import ConfigError
from runtime.observability import ObservabilityServer
from simulator.keystore import load_keys
from simulator.link import Link
from simulator.meter import Meter, Outgoing, initial_state
from simulator.replay import NEVER, Presigned, presign
from simulator.report import FleetReport, PresignReport, Stats
from simulator.settings import MAX_BACKFILL_SECONDS, SimSettings
from simulator.state import StateStore

log = logging.getLogger(__name__)

#: Intervals one meter may produce per producer pass, so a long backlog never starves the loop.
BURST = 8

Progress = Callable[[Stats, "Fleet"], None]
#: Wall time in UTC seconds; injectable so tests pin the date, the hour and the weather.
Clock = Callable[[], float]


def select_keys(settings: SimSettings) -> list[MeterKey]:
    keys = load_keys(settings.signing.keys_dir)
    if settings.meter.ids:
        by_id = {k.meter_id: k for k in keys}
        missing = [m for m in settings.meter.ids if m not in by_id]
        if missing:
            raise ConfigError(f"no key for meter(s) {', '.join(missing[:5])} in {settings.signing.keys_dir}: "
                              "run `gridtokenx sim keygen` with enough --meters")
        keys = [by_id[m] for m in settings.meter.ids]
    if settings.meter.count is not None:
        if settings.meter.count > len(keys):
            raise ConfigError(f"--meters {settings.meter.count} but {settings.signing.keys_dir} holds "
                              f"{len(keys)} keys: run `gridtokenx sim keygen --meters {settings.meter.count} "
                              f"--out {settings.signing.keys_dir}`")
        keys = keys[: settings.meter.count]
    return keys


class Fleet:
    def __init__(self, settings: SimSettings, keys: list[MeterKey], store: StateStore, *,
                 clock: Clock = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store
        interval = settings.interval
        self.speed = (settings.run.rate * interval / len(keys)) if settings.run.rate else settings.run.speed
        duration = settings.run.duration
        backfill = settings.run.backfill
        if backfill is None:
            backfill = duration * self.speed if duration else 0.0
        if backfill > MAX_BACKFILL_SECONDS:
            log.warning("starting fresh meters %.1f days back, not %.1f: the cloud rejects readings older "
                        "than 7 days", MAX_BACKFILL_SECONDS / 86_400, backfill / 86_400)
            backfill = MAX_BACKFILL_SECONDS
        wall = self.clock()
        fresh_start = int(wall - backfill) // interval * interval
        saved = store.load_meters()
        self.meters: list[Meter] = []
        ids = [k.meter_id for k in keys]
        skipped = 0
        for i, key in enumerate(keys):
            state = saved.get(key.meter_id) or initial_state(key, start=fresh_start, fleet_seed=settings.run.seed)
            if state.next_start < fresh_start and state.next_start < wall - MAX_BACKFILL_SECONDS:
                # A state left for days: skip ahead rather than publish readings the cloud calls too old.
                state.next_start = fresh_start
                skipped += 1
            neighbour = ids[(i + 1) % len(ids)] if len(ids) > 1 else f"{key.meter_id}x"
            self.meters.append(Meter(key, state, interval=interval, fmt="legacy" if settings.meter.format ==
                                     "legacy" else "v1", faults=settings.faults, fleet_seed=settings.run.seed,
                                     max_reading_wh=settings.run.max_reading_wh, neighbour=neighbour,
                                     utc_offset_hours=settings.run.utc_offset_hours))
        if skipped:
            log.info("%d meter clock(s) were more than 6 days behind: skipped ahead (seq and registers "
                     "continue)", skipped)
        self.sim_start = min(m.state.next_start for m in self.meters)
        self.sim_now = self.sim_start
        self.stats = Stats(multiplexed=settings.multiplexed)
        self._done: list[int] = []
        self.presigned: Presigned | None = None
        self.presign_report: PresignReport | None = None
        self._room = asyncio.Event()
        self.links: list[Link] = []
        self.link_of: dict[str, Link] = {}
        b = settings.broker
        if settings.multiplexed:
            assert b.fleet_user and b.fleet_password
            self.links = [self._link(f"{b.fleet_user}-{os.getpid()}-{i}", b.fleet_user, b.fleet_password)
                          for i in range(min(b.connections, len(keys)))]
            for i, m in enumerate(self.meters):
                self.link_of[m.meter_id] = self.links[i % len(self.links)]
        else:
            for key in keys:
                link = self._link(key.meter_id, key.meter_id, key.mqtt_password)
                self.links.append(link)
                self.link_of[key.meter_id] = link

    def _link(self, client_id: str, user: str, password: str) -> Link:
        b = self.settings.broker
        window = b.window or (256 if self.settings.multiplexed else 8)
        return Link(client_id=client_id, broker=b.broker_url, username=user, password=password, window=window,
                    max_buffer=self.settings.run.max_buffer, stats=self.stats, on_done=self._on_done,
                    ca_file=str(b.ca_file) if b.ca_file else None, fast=self.settings.run.mode == "replay")

    def _on_done(self, item: Outgoing, _acked: bool) -> None:
        self._done.append(item.id)
        self._room.set()

    @property
    def backlog(self) -> int:
        return sum(link.backlog for link in self.links)

    def presign(self) -> PresignReport:
        """Replay mode: sign every interval this run's clock will reach (see simulator.replay)."""
        assert self.settings.run.duration is not None  # SimSettings.check
        wall = self.clock()
        until = int(min(self.sim_start + self.settings.run.duration * self.speed, wall))
        self.presigned, self.presign_report = presign(self.meters, self.store, until=until, wall=int(wall))
        self.stats.started = time.monotonic()  # the run's elapsed time starts after the preparation
        return self.presign_report

    def _next_end(self, meter: Meter) -> float:
        return meter.next_end if self.presigned is None else self.presigned.next_end(meter.meter_id)

    def flush_done(self) -> None:
        if self._done:
            done, self._done = self._done, []
            self.store.commit((), [], done)

    def resend_outbox(self) -> None:
        """Messages the previous run persisted but never got a PUBACK for go out first, in order."""
        for item in self.store.load_outbox():
            link = self.link_of.get(item.meter_id)
            if link is not None:
                link.enqueue([item])
                self.stats.generated += 1

    async def produce(self, stop: asyncio.Event) -> None:
        """Run the simulated clock and every meter's interval job until the duration is over."""
        duration = self.settings.run.duration
        started = time.monotonic()
        next_end = self._next_end
        earliest = -NEVER  # the earliest next interval end of any meter after the last pass
        while not stop.is_set():
            elapsed = time.monotonic() - started
            finished = duration is not None and elapsed >= duration
            wall = self.clock()
            target = min(self.sim_start + (min(elapsed, duration) if duration else elapsed) * self.speed, wall)
            self.sim_now = max(self.sim_now, int(target))
            if target < earliest:
                # No meter has an interval due: skip the pass over every meter (it is most of what a
                # replaying fleet spends outside the MQTT I/O).
                if finished:
                    return
            else:
                items: list[Outgoing] = []
                touched: list[Meter] = []
                blocked = behind = False
                earliest = NEVER
                for meter in self.meters:
                    end = next_end(meter)
                    link = self.link_of[meter.meter_id]
                    if link.connected and link.backlog >= 4 * link.window:
                        blocked = True  # backpressure: the broker is slower than the clock
                        earliest = min(earliest, end)
                        continue
                    made = 0
                    while end <= target and made < BURST:
                        if self.presigned is None:
                            items.extend(meter.next_interval(int(wall)))
                        else:
                            items.extend(self.presigned.take(meter.meter_id))
                        made += 1
                        end = next_end(meter)
                    if made:
                        touched.append(meter)
                    earliest = min(earliest, end)
                    behind = behind or end <= target
                if items:
                    if self.presigned is None:  # replay persisted its messages before the run
                        done, self._done = self._done, []
                        self.store.commit(((m.meter_id, m.state) for m in touched), items, done)
                    self.stats.generated_items(items)
                    for item in items:
                        self.link_of[item.meter_id].enqueue([item])
                if finished and not behind and not blocked:
                    return
                if items and not blocked:
                    await asyncio.sleep(0)  # let PUBACKs in before the next pass
                    continue
                if blocked or behind:
                    self._room.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), 0.1)
                    continue
            # Idle: sleep until the clock reaches the next interval end (or real time does).
            wait = (earliest - target) / self.speed if target < wall - 1 else earliest - wall
            if duration is not None:
                wait = min(wait, duration - elapsed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.001, min(wait, 1.0)))

    async def tick(self, progress: Progress | None, every: float = 1.0) -> None:
        """Once a second: keepalives, outbox cleanup, progress."""
        while True:
            await asyncio.sleep(every)
            for link in self.links:
                link.misc()
            if self.presigned is None:  # replay writes no SQLite during the run: acked rows go at the end
                self.flush_done()
            if progress is not None:
                progress(self.stats, self)

    def report(self) -> FleetReport:
        elapsed = self.stats.elapsed()
        return FleetReport(
            meters=len(self.meters), connections=len(self.links), format=self.settings.meter.format,
            interval_s=self.settings.interval, speed=round(self.speed, 3), elapsed_s=round(elapsed, 3),
            sim_start=self.sim_start, sim_end=max(m.state.next_start for m in self.meters),
            generated=self.stats.generated, published=self.stats.published, acked=self.stats.acked,
            pending=self.backlog, dropped=self.stats.dropped, errors=dict(sorted(self.stats.errors.items())),
            rate=self.stats.rate(),
            latency_ms=self.stats.percentiles(), faults=self.stats.fault_summaries(),
            per_meter=dict(sorted(self.stats.per_meter.items())),
            mode=self.settings.run.mode, presign=self.presign_report,
        )


async def run_fleet(settings: SimSettings, *, stop: asyncio.Event | None = None,
                    progress: Progress | None = None, clock: Clock = time.time) -> FleetReport:
    """Run a fleet until its duration is over or `stop` is set; drain, persist, report.

    `clock` gives the wall time (UTC seconds) the meters live in: readings are anchored to it, and the
    weather and sun follow its date. Tests inject a fixed instant so no result depends on today.

    Raises ConfigError (a one-sentence fix) for unusable settings or key directories.
    """
    settings.check()
    stop = stop or asyncio.Event()
    keys = select_keys(settings)
    store = StateStore(settings.state_path)
    server: ObservabilityServer | None = None
    try:
        store.check_meta({"interval": str(settings.interval), "format": settings.meter.format,
                          "seed": str(settings.run.seed)})
        fleet = Fleet(settings, keys, store, clock=clock)
        fleet.resend_outbox()  # before pre-signing, which adds the run's own messages to the outbox
        if settings.run.mode == "replay":
            # Before /metrics answers: `bench e2e` starts its timed window when it does.
            prep = fleet.presign()
            log.info("replay: signed %d message(s) in %.1f s (%.0f signs/s) before the run",
                     prep.messages, prep.seconds, prep.signs_per_s)
        if settings.run.metrics_port is not None:
            server = ObservabilityServer(host="0.0.0.0", port=settings.run.metrics_port,
                                         health=lambda: {"healthy": True, "connected": sum(
                                             link.connected for link in fleet.links)})
            await server.start()
        drained = asyncio.Event()  # links end once this is set and their backlog is empty
        async with asyncio.TaskGroup() as tg:
            ticker = tg.create_task(fleet.tick(progress))
            link_tasks = [tg.create_task(link.run(drained)) for link in fleet.links]
            await fleet.produce(stop)
            drained.set()
            for link in fleet.links:
                link.wake()
            _, slow = await asyncio.wait(link_tasks, timeout=settings.run.drain_timeout)
            for task in slow:  # left in the outbox for the next run
                task.cancel()
            ticker.cancel()
        fleet.flush_done()
        if progress is not None:
            progress(fleet.stats, fleet)
        return fleet.report()
    finally:
        if server is not None:
            await server.stop()
        store.close()

