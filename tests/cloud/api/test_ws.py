"""WebSocket /api/ws: a wallet subscriber hears its minted batch within 2 s of confirmation; a client that
reconnects with its last event id gets what it missed exactly once, from another API process too."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
from websockets.asyncio.client import ClientConnection, connect

from cloud.minter.service import run_minter
from tests.cloud.api.conftest import Api, start_api, stop_api
from tests.cloud.api.support import SimMeter
from tests.cloud.minter.conftest import minter_settings

SUBMIT = "/api/meters/submit-reading"
OCTET = "application/octet-stream"


def _ws(api: Api, **query: Any) -> str:
    q = "&".join(f"{k}={v}" for k, v in (query | {"token": api.secrets["read"]}).items())
    return api.url.replace("http://", "ws://") + "/api/ws?" + q


async def _recv(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return event


async def _post(api: Api, payload: bytes) -> dict[str, Any]:
    status, body, _ = await asyncio.to_thread(api.call, "POST", SUBMIT, token=api.secrets["submit"], raw=payload,
                                              content_type=OCTET)
    assert status in (200, 422), body
    result: dict[str, Any] = body
    return result


def test_wallet_subscriber_hears_the_mint_within_two_seconds(api: Api, tmp_path: Path) -> None:
    meter = SimMeter("M-WS-1")
    assert api.call("POST", "/api/admin/meters", token=api.secrets["admin"], body=meter.admin_body())[0] == 200
    end = int(time.time()) // 300 * 300 - 600

    async def scenario() -> None:
        stop = asyncio.Event()
        minter = asyncio.create_task(run_minter(minter_settings(api.dsn, tmp_path / "minter-chain"), stop))
        try:
            async with connect(_ws(api, wallet=meter.wallet), open_timeout=10) as ws:
                answer = await _post(api, meter.v1(1, end, 400, 400))
                accepted = await _recv(ws)
                assert accepted["kind"] == "readings.accepted"
                assert [r["reading_id"] for r in accepted["data"]["readings"]] == [answer["reading_id"]]
                minted = await _recv(ws, timeout=30)
                received = time.time()
                assert minted["kind"] == "batch.minted", minted
                data = minted["data"]
                assert data["signature"] and data["slot"] is not None and answer["reading_id"] in data["reading_ids"]
                lag = received - data["confirmed_at"]
                print(f"minted event {lag * 1000:.0f} ms after confirmation")
                assert 0 <= lag < 2.0, lag
        finally:
            stop.set()
            await minter

    asyncio.run(scenario())


def test_reconnect_with_last_id_gets_missed_events_exactly_once(api: Api, tmp_path: Path) -> None:
    other_process = start_api(api.dsn, tmp_path / "second")
    other_process.secrets = api.secrets
    mine, theirs = SimMeter("M-WS-MINE"), SimMeter("M-WS-THEIRS")
    for m in (mine, theirs):
        assert api.call("POST", "/api/admin/meters", token=api.secrets["admin"], body=m.admin_body())[0] == 200
    end = int(time.time()) // 300 * 300 - 6000

    async def scenario() -> None:
        seen: list[int] = []
        async with connect(_ws(other_process, wallet=mine.wallet), open_timeout=10) as ws:
            await _post(api, mine.v1(1, end, 10, 10))
            first = await _recv(ws)
            seen.append(first["id"])
        # While away: two readings, a forged one (rejected, still this wallet's meter), another wallet's.
        await _post(api, mine.v1(2, end + 300, 10, 20))
        await _post(api, mine.v1(3, end + 600, 10, 30))
        forged = mine.v1(4, end + 900, 10, 40)
        assert (await _post(api, forged[:-6] + b"111111"))["reason"] == "bad_signature"
        await _post(api, theirs.v1(1, end, 10, 10))
        expected = await _event_ids(api.dsn, mine.wallet, after=first["id"])
        assert len(expected) == 3

        async with connect(_ws(other_process, wallet=mine.wallet, last_id=first["id"]), open_timeout=10) as ws:
            replayed = [await _recv(ws) for _ in expected]
            assert [e["id"] for e in replayed] == expected
            assert [e["kind"] for e in replayed] == ["readings.accepted", "readings.accepted", "reading.rejected"]
            assert [e["data"]["readings"][0]["seq"] for e in replayed[:2]] == [2, 3]
            assert replayed[2]["data"]["reason"] == "bad_signature"
            seen += [e["id"] for e in replayed]
            await _post(api, mine.v1(5, end + 1200, 10, 50))
            live = await _recv(ws)
            seen.append(live["id"])
            assert live["kind"] == "readings.accepted" and live["data"]["readings"][0]["seq"] == 5
            with_nothing_more = asyncio.wait_for(ws.recv(), 0.5)
            try:
                extra = await with_nothing_more
                raise AssertionError(f"unexpected extra event {extra}")
            except TimeoutError:
                pass
        assert len(seen) == len(set(seen)) == 5
        assert seen == await _event_ids(api.dsn, mine.wallet, after=0)

    try:
        asyncio.run(scenario())
    finally:
        stop_api(other_process)


async def _event_ids(dsn: str, wallet: str, *, after: int) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r["id"] for r in await conn.fetch(
            "SELECT id FROM api_events WHERE $1 = ANY(wallets) AND id > $2 ORDER BY id", wallet, after)]
    finally:
        await conn.close()


def test_an_alert_is_raised_and_cleared_once_across_processes(api: Api, tmp_path: Path) -> None:
    """Two API processes watch the minter's alerts; each change is one event, not one per process."""
    other_process = start_api(api.dsn, tmp_path / "second")
    other_process.secrets = api.secrets
    meter = SimMeter("M-ALERT")
    assert api.call("POST", "/api/admin/meters", token=api.secrets["admin"], body=meter.admin_body())[0] == 200
    end = int(time.time()) // 300 * 300 - 600

    async def scenario() -> None:
        async with connect(_ws(api), open_timeout=10) as ws:
            answer = await _post(api, meter.v1(1, end, 10, 10))
            assert (await _recv(ws))["kind"] == "readings.accepted"
            await _sql(api.dsn, "INSERT INTO minting_retry_queue (reading_id, attempts, dead_lettered, error_message)"
                       " VALUES ($1, 10, TRUE, 'test')", answer["reading_id"])
            raised = await _until(ws, "alert.raised", "dead_letter")
            assert raised["data"]["status"]["dead_lettered"] == 1
            await _sql(api.dsn, "DELETE FROM minting_retry_queue")
            await _until(ws, "alert.cleared", "dead_letter")
        # (success_rate fires too: the reading is not minted.) Each change is one event, whichever
        # process noticed it first.
        changes = await _sql(api.dsn, "SELECT count(*) FROM api_events WHERE kind LIKE 'alert.%'"
                             " GROUP BY kind, body->>'alert'")
        assert changes and set(changes) == {1}

    try:
        asyncio.run(scenario())
    finally:
        stop_api(other_process)


async def _until(ws: ClientConnection, kind: str, alert: str) -> dict[str, Any]:
    while True:
        event = await _recv(ws)
        if event["kind"] == kind and event["data"]["alert"] == alert:
            return event


async def _sql(dsn: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()
