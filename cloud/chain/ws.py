"""Confirmation by subscription: `signatureSubscribe` over SOLANA_WS_URL.

The JSON-RPC over WebSocket is spoken here directly (the `websockets` library, as solana-py does):
solana-py's SolanaWsClient parses each frame with solders, which (solders 0.27) rejects a
signatureNotification whose error is `{"InstructionError": [i, {"Custom": n}]}`, the very error a
failed mint_to reports, and that aborts the whole connection. Only two fields matter to us: the
slot and whether `err` is null.

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
import itertools
import json
import logging
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge
from websockets.asyncio.client import ClientConnection, connect

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
        self._ws: ClientConnection | None = None
        self._subs: dict[str, _Sub] = {}
        self._by_id: dict[int, str] = {}
        self._pending: dict[int, tuple[str, asyncio.Future[int]]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._warned = False

    @property
    def healthy(self) -> bool:
        return self._ws is not None and self._up.is_set()

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
        ws = self._ws
        if ws is None or not self.healthy:
            return set()
        todo = [s for s in signatures if s not in self.landed and not self.subscribed(s)]
        try:
            waits = []
            for sig in todo:
                rid = next(self._ids)
                fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
                fut.add_done_callback(_retrieve)
                self._pending[rid] = (sig, fut)
                self.messages += 1
                await ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": "signatureSubscribe",
                                          "params": [sig, {"commitment": "confirmed"}]}))
                waits.append(fut)
            if waits:
                await asyncio.wait_for(asyncio.gather(*waits), self.request_timeout)
        except Exception as exc:  # any socket failure or refusal: poll until it is back
            self._lost(exc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)  # ends the reader, which reconnects
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
            try:
                ws = await connect(self.url, open_timeout=self.request_timeout, max_size=2**22)
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
            self._ws = ws
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
                async for raw in ws:
                    self._frame(raw)
                raise ConnectionError("socket closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._lost(exc)
                await self._drop()

    def _frame(self, raw: str | bytes) -> None:
        try:
            msg: Any = json.loads(raw)
        except ValueError:
            return
        for item in msg if isinstance(msg, list) else [msg]:
            if not isinstance(item, dict):
                continue
            if "id" in item and item["id"] in self._pending:
                sig, fut = self._pending.pop(item["id"])
                if "result" in item and isinstance(item["result"], int):
                    self._subs[sig] = _Sub(item["result"], self.generation)
                    self._by_id[item["result"]] = sig
                    if not fut.done():
                        fut.set_result(item["result"])
                elif not fut.done():
                    fut.set_exception(ConnectionError(f"signatureSubscribe refused: {item.get('error')}"))
            elif item.get("method") == "signatureNotification":
                self._notified(item.get("params") or {})

    def _notified(self, params: dict[str, Any]) -> None:
        WS_NOTIFICATIONS.inc()
        sig = self._by_id.pop(params.get("subscription", -1), None)
        result = params.get("result") or {}
        value = result.get("value")
        if sig is None or not isinstance(value, dict) or "err" not in value:
            return  # unknown subscription, or a "receivedSignature" notice (not asked for): not a landing
        self._subs.pop(sig, None)
        err = value["err"]
        self.notifications += 1
        self.landed[sig] = SignatureStatus(int((result.get("context") or {}).get("slot", 0)),
                                           None if err is None else json.dumps(err))
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
        ws, self._ws = self._ws, None
        self._up.clear()
        WS_CONNECTED.set(0)
        self._subs.clear()
        self._by_id.clear()
        for _sig, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("socket closed"))
        self._pending.clear()
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)


def _retrieve(fut: asyncio.Future[int]) -> None:
    """Mark a failed subscribe's exception as seen (the caller handles the first one)."""
    if not fut.cancelled():
        fut.exception()
