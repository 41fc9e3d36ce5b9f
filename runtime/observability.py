"""`/metrics` (Prometheus) and `/healthz` for every long-running component, on one small aiohttp server."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

HealthCheck = Callable[[], dict[str, Any]]


class ListenError(OSError):
    """The /metrics port cannot be bound (in use, not permitted); the message names it."""


class ObservabilityServer:
    """Serves the registry's metrics and a health document; `healthy` key False → HTTP 503."""

    def __init__(self, *, host: str, port: int, health: HealthCheck,
                 registry: CollectorRegistry = REGISTRY) -> None:
        self.host, self.port = host, port
        self._health = health
        self._registry = registry
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ListenError(exc.errno, f"cannot listen on {self.host}:{self.port} for /metrics and /healthz "
                                         f"({exc.strerror or exc}); pick another port") from exc
        if self.port == 0:
            sockets = getattr(site._server, "sockets", None)
            if sockets:
                self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        doc = self._health()
        status = 200 if doc.get("healthy", True) else 503
        return web.Response(text=json.dumps(doc, default=str), status=status, content_type="application/json")
