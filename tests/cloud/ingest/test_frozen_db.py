"""A database that stops answering without closing its connections (a TCP proxy that stops
forwarding): /healthz says 503 with the reason within 10 s, the log says so once, SIGTERM still
ends the process within 15 s, and ingest resumes by itself when the database answers again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from gridtokenx.harness.brokers import Mosquitto
from tests.cloud.ingest.conftest import GATEWAY, ConsumerFactory
from tests.cloud.ingest.support import ConsumerProcess, Gateway, Meter, register
from tests.helpers import wait_for


class FreezableProxy:
    """TCP proxy to PostgreSQL in its own thread. `freeze()` stops forwarding in both directions
    and leaves every socket open: the peer sees no RST, no FIN, just silence (a black hole)."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thawed: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> FreezableProxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None and self._thawed is not None
        self._thawed.set()
        self._server.close()
        for writer in self._writers:
            writer.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def freeze(self) -> None:
        assert self._thawed is not None
        self._loop.call_soon_threadsafe(self._thawed.clear)

    def thaw(self) -> None:
        assert self._thawed is not None
        self._loop.call_soon_threadsafe(self._thawed.set)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._thawed is not None
        self._writers.append(writer)
        await self._thawed.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.append(up_writer)
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._thawed is not None
        try:
            while data := await reader.read(65536):
                await self._thawed.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


def health(proc: ConsumerProcess) -> tuple[int, dict[str, object]]:
    url = f"http://127.0.0.1:{proc.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


@pytest.fixture
def proxy() -> Iterator[FreezableProxy]:
    with FreezableProxy("127.0.0.1", 5432) as p:
        yield p


def _via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def test_frozen_database_is_reported_survives_sigterm_and_ingest_resumes(
        consumers: ConsumerFactory, migrated_db: str, cloud: Mosquitto, gateway_password: str,
        proxy: FreezableProxy, tmp_path: object) -> None:
    meter = Meter.make("frozen-1")
    asyncio.run(register(migrated_db, [meter]))
    consumer = ConsumerProcess(dsn=_via(migrated_db, proxy.port), broker_url=cloud.url_for("cloud-consumer"),
                               client_id="cloud-consumer-1", log_dir=tmp_path,  # type: ignore[arg-type]
                               env={"GRIDTOKENX_INGEST_DB_TIMEOUT_SECS": "2"})
    try:
        consumer.wait_ready()
        gw = Gateway("127.0.0.1", cloud.port, GATEWAY, gateway_password)
        assert asyncio.run(gw.deliver([gw.batch("before", [meter.item(1, 10, 10)])]))["before"].results[0].status \
            == "accepted"

        proxy.freeze()
        frozen_at = time.monotonic()
        wait_for(lambda: health(consumer)[0] == 503, timeout=10, message="/healthz 503 after the freeze")
        noticed = time.monotonic() - frozen_at
        _, doc = health(consumer)
        assert "database" in str(doc.get("reason")), doc
        print(f"/healthz 503 {noticed:.1f} s after the freeze: {doc['reason']}")

        proxy.thaw()
        wait_for(lambda: health(consumer)[0] == 200, timeout=15, message="/healthz 200 after the thaw")
        acks = asyncio.run(gw.deliver([gw.batch("after", [meter.item(2, 10, 20)])], resend_after=2))
        assert acks["after"].results[0].status == "accepted"
        log = consumer.log_path.read_text()
        assert log.count("the database is not answering") == 1, log[-3000:]
        assert log.count("the database answers again") == 1

        # Frozen again with a batch in hand: SIGTERM still ends the process within 15 s.
        proxy.freeze()

        async def send_one() -> None:
            with contextlib.suppress(AssertionError):
                await gw.deliver([gw.batch("stuck", [meter.item(3, 10, 30)])], timeout=1)
        asyncio.run(send_one())
        wait_for(lambda: health(consumer)[0] == 503, timeout=10, message="/healthz 503 on the second freeze")
        started = time.monotonic()
        code = consumer.terminate(timeout=15)
        took = time.monotonic() - started
        print(f"SIGTERM while frozen: exit {code} after {took:.1f} s")
        assert took < 15
    finally:
        proxy.thaw()
        consumer.close()
