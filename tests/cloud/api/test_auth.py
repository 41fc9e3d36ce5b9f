"""Auth: no token, wrong scope, expired and revoked tokens are refused on every route; admin calls are audited."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from cloud.api import tokens
from cloud.api.app import PUBLIC_PATHS, ROUTES
from tests.cloud.api.conftest import Api, make_token
from tests.helpers import wait_for

METER = {"meter_id": "M-AUTH-1", "public_key": "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS",
         "wallet_address": "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin", "meter_type": "solar",
         "capacity_w": 5000}


def _rows(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


def test_every_route_but_the_public_ones_names_a_scope() -> None:
    for handler in ROUTES:
        for path in handler.paths:
            if path in PUBLIC_PATHS:
                assert handler.opt.get("scope") is None, path
            else:
                assert handler.opt.get("scope") in tokens.SCOPES, f"{path} has no scope"


def test_refusals_and_audit(api: Api) -> None:
    # No token, a malformed header, an unknown token: 401 with a WWW-Authenticate challenge.
    status, body, headers = api.call("GET", "/api/meters")
    assert status == 401 and "token is required" in body["detail"]
    assert headers.get("www-authenticate", "").startswith("Bearer")
    assert api.call("GET", "/api/meters", token="gtx_not_a_real_token")[0] == 401
    # Wrong scope: 403 names the needed scope.
    status, body, _ = api.call("GET", "/api/meters", token=api.secrets["submit"])
    assert status == 403 and "'read'" in body["detail"]
    assert api.call("POST", "/api/admin/meters", token=api.secrets["read"], body=METER)[0] == 403
    assert api.call("POST", "/api/meters/submit-reading", token=api.secrets["read"], raw=b"x",
                    content_type="application/octet-stream")[0] == 403
    # Expired.
    expired, _ = make_token(api.dsn, "admin", name="old", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    status, body, _ = api.call("GET", "/api/meters", token=expired)
    assert status == 401 and "expired" in body["detail"]
    # Revoked: valid, then refused on the next request.
    secret, token_id = make_token(api.dsn, "read", name="soon-revoked")
    assert api.call("GET", "/api/meters", token=secret)[0] == 200
    _rows(api.dsn, "UPDATE api_tokens SET revoked_at = now() WHERE id = $1", token_id)
    # Processes cache validated tokens; the revocation's NOTIFY drops the cache (milliseconds).
    status, body, _ = wait_for(lambda: (r := api.call("GET", "/api/meters", token=secret))[0] == 401 and r,
                               timeout=5, message="revocation to take effect")
    assert "revoked" in body["detail"]
    # Admin calls (successful or not) are in the audit table with the token that made them.
    assert api.call("POST", "/api/admin/meters", token=api.secrets["admin"], body=METER)[0] == 200
    status, _, _ = api.call("POST", "/api/admin/meters/M-AUTH-1/suspend", token=api.secrets["admin"],
                            body={"reason": "maintenance"})
    assert status == 200
    assert api.call("POST", "/api/admin/meters/NOPE/revoke", token=api.secrets["admin"], body={})[0] == 404
    rows = _rows(api.dsn, "SELECT token_name, action, target, status, params->>'reason' AS reason FROM api_audit"
                 " ORDER BY id")
    assert [(r["token_name"], r["action"], r["target"], r["status"]) for r in rows] == [
        ("test-admin", "meters.add", "M-AUTH-1", 200), ("test-admin", "meters.suspend", "M-AUTH-1", 200),
        ("test-admin", "meters.revoke", "NOPE", 404)]
    assert rows[1]["reason"] == "maintenance"
    assert _rows(api.dsn, "SELECT status FROM meters WHERE meter_id = 'M-AUTH-1'")[0]["status"] == "suspended"
    status, audit, _ = api.call("GET", "/api/admin/audit", token=api.secrets["admin"])
    assert status == 200 and audit[0]["action"] == "meters.revoke"
    # Only hashes are stored.
    stored = _rows(api.dsn, "SELECT token_sha256, prefix FROM api_tokens")
    assert all(bytes(r["token_sha256"]) != api.secrets["admin"].encode() for r in stored)
    assert {bytes(r["token_sha256"]) for r in stored} >= {tokens.digest(s) for s in api.secrets.values()}


def test_websocket_needs_a_read_token(api: Api) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ws_url = api.url.replace("http://", "ws://") + "/api/ws"
    # A refused handshake is answered 403 by the server (ASGI closes before accept), whatever the cause.
    for token, expected in ((None, 403), ("gtx_unknown", 403), (api.secrets["submit"], 403)):
        try:
            with connect(ws_url + (f"?token={token}" if token else ""), open_timeout=10):
                raise AssertionError("connected without a read token")
        except InvalidStatus as exc:
            assert exc.response.status_code == expected
    with connect(ws_url + f"?token={api.secrets['read']}", open_timeout=10) as ws:
        ws.ping().wait(5)
