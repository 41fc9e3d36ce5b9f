"""Confirmation by subscription: `signatureSubscribe` over SOLANA_WS_URL (solana-py's SolanaWsClient).

The watcher only ever *adds* knowledge: a notification for a signature says it landed at `confirmed`
(with or without an error), exactly what a getSignatureStatuses answer would say. It never says that
a signature did *not* land; the minter still proves that by reading the block height and then an
empty status over HTTP (docs/minter.md, "Safety"), so the write-ahead rules are unchanged.

A subscription only reports what happens after the node acknowledged it. So each signature carries
`covered_since_first_send`: True when it was subscribed on the current connection before this
process first broadcast it (nothing can have been missed); otherwise the minter polls its status once
after subscribing. When the socket drops, every subscription is forgotten, `healthy` goes False and
the minter polls; a background task reconnects with backoff and the minter resubscribes what is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from prometheus_client import Counter, Gauge
from solana.rpc.commitment import Confirmed
from solana.rpc.websocket_api import SolanaWsClient
from solders.rpc.responses import SignatureNotification
from solders.signature import Signature

from cloud.chain.base import SignatureStatus

log = logging.getLogger(__name__)

WS_CONNECTED = Gauge("gridtokenx_ws_connected", "1 while the minter's signatureSubscribe socket is up")
WS_RECONNECTS = Counter("gridtokenx_ws_reconnects_total", "Times the minter's WebSocket was (re)opened")
WS_NOTIFICATIONS = Counter("gridtokenx_ws_signature_notifications_total", "signatureNotification messages")


@dataclass(slots=True)
class _Sub:
    subscription_id: int
    generation: int


class SignatureWatcher:
    def __init__(self, url: str, *, request_timeout: float = 5.0, max_backoff_secs: float = 5.0) -> None:
        self.url = url
        self.request_timeout = request_timeout
        self.max_backoff_secs = max_backoff_secs
        self.landed: dict[str, SignatureStatus] = {}
        self.wake = asyncio.Event()  # set on every notification and every change of connection state
        self.generation = 0
        self.messages = 0  # subscribe requests sent (WebSocket frames, not HTTP requests)
        self.notifications = 0  # landings learnt by notification
        self._client: SolanaWsClient | None = None
        self._subs: dict[str, _Sub] = {}
        self._by_id: dict[int, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._warned = False

    @property
    def healthy(self) -> bool:
        return self._client is not None and self._up.is_set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="signature-watcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._drop()

    async def wait_connected(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), within)
        return self.healthy

    def subscribed(self, signature: str) -> bool:
        sub = self._subs.get(signature)
        return self.healthy and sub is not None and sub.generation == self.generation

    async def watch(self, signatures: list[str]) -> set[str]:
        """Subscribe the signatures not yet subscribed on this connection; returns those now subscribed
        (acknowledged by the node). An error drops the connection: the caller falls back to polling."""
        client = self._client
        if client is None or not self.healthy:
            return set()
        try:
            for sig in signatures:
                if sig in self.landed or self.subscribed(sig):
                    continue
                self.messages += 1
                sub = await asyncio.wait_for(client.signature_subscribe(
                    signature=Signature.from_string(sig), commitment=Confirmed), self.request_timeout)
                self._subs[sig] = _Sub(sub.subscription_id, self.generation)
                self._by_id[sub.subscription_id] = sig
        except Exception as exc:  # any socket failure: poll until it is back
            self._lost(exc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 2.0)  # ends the reader, which reconnects
        return {s for s in signatures if self.subscribed(s)}

    def forget(self, signature: str) -> None:
        """The batch left the open states (or was re-signed): stop tracking this signature."""
        self.landed.pop(signature, None)
        sub = self._subs.pop(signature, None)
        if sub is not None:
            self._by_id.pop(sub.subscription_id, None)

    # -- connection ---------------------------------------------------------------------------
    async def _run(self) -> None:
        attempt = 0
        while True:
            client = SolanaWsClient(self.url, request_timeout=self.request_timeout, open_timeout=self.request_timeout)
            try:
                await client.connect()
            except Exception as exc:
                attempt += 1
                if not self._warned:
                    log.warning("WebSocket %s unreachable (%s); confirming by polling until it is back",
                                self.url, exc)
                    self._warned = True
                await asyncio.sleep(min(0.25 * 2 ** min(attempt, 5), self.max_backoff_secs))
                continue
            attempt = 0
            self.generation += 1
            self._client = client
            self._subs.clear()
            self._by_id.clear()
            self._up.set()
            WS_CONNECTED.set(1)
            WS_RECONNECTS.inc()
            if self._warned:
                log.warning("WebSocket %s is back; confirming by subscription again", self.url)
                self._warned = False
            self.wake.set()
            try:
                async for note in client:
                    if isinstance(note, SignatureNotification):
                        self._notified(note)
                raise ConnectionError("socket closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._lost(exc)
                await self._drop()

    def _notified(self, note: SignatureNotification) -> None:
        WS_NOTIFICATIONS.inc()
        sig = self._by_id.pop(note.subscription, None)
        if sig is None:
            return
        self._subs.pop(sig, None)
        value = note.result.value
        err = getattr(value, "err", None)
        if not hasattr(value, "err"):
            return  # a "received" notification (not asked for): not a landing
        self.notifications += 1
        self.landed[sig] = SignatureStatus(note.result.context.slot, None if err is None else str(err))
        self.wake.set()

    def _lost(self, exc: BaseException) -> None:
        if self._up.is_set():
            log.warning("WebSocket %s dropped (%s: %s); confirming by polling until it is back", self.url,
                        type(exc).__name__, exc)
            self._warned = True
        self._up.clear()
        WS_CONNECTED.set(0)
        self.wake.set()

    async def _drop(self) -> None:
        client, self._client = self._client, None
        self._up.clear()
        WS_CONNECTED.set(0)
        self._subs.clear()
        self._by_id.clear()
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 2.0)
