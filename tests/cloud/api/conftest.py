"""API test fixtures: a migrated scratch database, tokens, and a real `gridtokenx cloud api` process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cloud.api import tokens
from cloud.db import migrate
from gridtokenx.harness.brokers import free_port
from tests.helpers import wait_for


@dataclass
class Api:
    url: str
    dsn: str
    proc: subprocess.Popen[bytes]
    log: Path
    secrets: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, path: str, *, token: str | None = None, body: Any = None, raw: bytes | None = None,
             content_type: str | None = None) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", content_type or "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                text = r.read()
                return r.status, _json(text), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, _json(e.read()), dict(e.headers)


def _json(text: bytes) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def make_token(dsn: str, scope: tokens.Scope, name: str | None = None, **kw: Any) -> tuple[str, int]:
    async def go() -> tuple[str, int]:
        conn = await asyncpg.connect(dsn)
        try:
            secret, info = await tokens.create(conn, name=name or f"test-{scope}", scope=scope,
                                               expires_at=kw.get("expires_at"))
            return secret, info.id
        finally:
            await conn.close()

    return asyncio.run(go())


def start_api(dsn: str, tmp_path: Path, *, extra_env: dict[str, str] | None = None,
              args: tuple[str, ...] = ()) -> Api:
    port = free_port()
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = tmp_path / f"api-{port}.log"
    env = os.environ | {"GRIDTOKENX_CHAIN_STATE_DIR": str(tmp_path / "chain"),
                        "GRIDTOKENX_API_ALERT_INTERVAL_SECS": "0.5"} | (extra_env or {})
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gridtokenx", "cloud", "api", "--database-url", dsn,
                                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    api = Api(f"http://127.0.0.1:{port}", dsn, proc, log)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the API exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            return api.call("GET", "/healthz")[0] == 200
        return False

    wait_for(healthy, timeout=30, message="API healthy")
    return api


def stop_api(api: Api) -> None:
    api.proc.terminate()
    try:
        api.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        api.proc.kill()
        api.proc.wait()


@pytest.fixture
def migrated(database_url: str) -> str:
    asyncio.run(migrate(database_url))
    return database_url


@pytest.fixture
def api(migrated: str, tmp_path: Path) -> Iterator[Api]:
    server = start_api(migrated, tmp_path)
    for scope in tokens.SCOPES:
        server.secrets[scope] = make_token(migrated, scope)[0]
    try:
        yield server
    finally:
        stop_api(server)
