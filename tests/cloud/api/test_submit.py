"""POST /api/meters/submit-reading: raw payloads, Phase 2 JSON, rejections with reasons, limits."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from tests.cloud.api.conftest import Api, make_token, start_api, stop_api
from tests.cloud.api.support import SimMeter

SUBMIT = "/api/meters/submit-reading"
OCTET = "application/octet-stream"


def _register(dsn: str, *meters: SimMeter) -> None:
    async def go() -> None:
        from cloud.ingest import admin

        conn = await asyncpg.connect(dsn)
        try:
            await admin.upsert_meters(conn, [m.row() for m in meters])
        finally:
            await conn.close()

    asyncio.run(go())


def test_raw_and_phase2_readings_share_the_mqtt_rules(api: Api) -> None:
    meter, stranger = SimMeter("M-HTTP-1"), SimMeter("M-HTTP-UNKNOWN")
    _register(api.dsn, meter)
    token = api.secrets["submit"]
    end = int(time.time()) // 300 * 300 - 600
    payload = meter.v1(1, end, 250, 250)
    status, body, _ = api.call("POST", SUBMIT, token=token, raw=payload, content_type=OCTET)
    assert (status, body["status"], body["meter_id"], body["seq"]) == (200, "accepted", "M-HTTP-1", 1)
    assert body["reading_id"] > 0
    # The same bytes again: duplicate, the same reading id.
    status, again, _ = api.call("POST", SUBMIT, token=token, raw=payload, content_type=OCTET)
    assert (status, again["status"], again["reading_id"]) == (200, "duplicate", body["reading_id"])
    # Signed by someone else: rejected with the protocol's reason, kept as evidence.
    forged = payload[: payload.rfind(b"\n") + 1] + stranger.v1(1, end, 250, 250).rsplit(b"\n", 1)[1]
    status, rej, _ = api.call("POST", SUBMIT, token=token, raw=forged, content_type=OCTET)
    assert (status, rej["status"], rej["reason"]) == (422, "rejected", "equivocation") or \
        (status, rej["status"], rej["reason"]) == (422, "rejected", "bad_signature")
    # A register that does not add up: the ingest rules apply.
    status, rej, _ = api.call("POST", SUBMIT, token=token, raw=meter.v1(2, end + 300, 100, 999), content_type=OCTET)
    assert (status, rej["reason"]) == (422, "register_mismatch")
    # Unknown meter, not a reading at all.
    status, rej, _ = api.call("POST", SUBMIT, token=token, raw=stranger.v1(1, end, 1, 1), content_type=OCTET)
    assert (status, rej["reason"]) == (422, "unknown_meter")
    status, rej, _ = api.call("POST", SUBMIT, token=token, raw=b"hello", content_type=OCTET)
    assert (status, rej["reason"]) == (422, "malformed")
    # Phase 2 JSON, signed as the GridTokenX simulator signs: its 5-minute interval follows the v1 reading's.
    when = datetime.fromtimestamp(end + 600, UTC)
    doc, _ = meter.phase2(when, 0.5)
    status, ok, _ = api.call("POST", SUBMIT, token=token, body=doc)
    assert (status, ok["status"], ok["seq"]) == (200, "accepted", end + 600), ok
    tampered = doc | {"kwh_amount": 0.75}
    status, rej, _ = api.call("POST", SUBMIT, token=token, body=tampered)
    assert (status, rej["reason"]) == (422, "bad_signature")
    status, rej, _ = api.call("POST", SUBMIT, token=token, body=doc | {"kwh_amount": 0.0001})
    assert (status, rej["reason"]) == (422, "malformed")  # sub-Wh
    # Not a Phase 2 body: 400, nothing stored.
    assert api.call("POST", SUBMIT, token=token, body={"meter_serial": "x"})[0] == 400
    # Body size limit.
    status, _, _ = api.call("POST", SUBMIT, token=token, raw=b"x" * 20_000, content_type=OCTET)
    assert status == 413
    rejected = asyncio.run(_fetch(api.dsn, "SELECT reason FROM rejected_readings ORDER BY id"))
    assert "register_mismatch" in rejected and "unknown_meter" in rejected and "malformed" not in rejected


async def _fetch(dsn: str, sql: str) -> list[object]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def test_rate_limits_answer_429_with_retry_after(migrated: str, tmp_path: Path) -> None:
    server = start_api(migrated, tmp_path, args=("--meter-rate", "0.01", "--meter-burst", "2",
                                                  "--client-rate", "0.01", "--client-burst", "5"))
    try:
        meter = SimMeter("M-RATE-1")
        _register(migrated, meter)
        token, _ = make_token(migrated, "submit")
        end = int(time.time()) // 300 * 300 - 3600
        answers = [server.call("POST", SUBMIT, token=token, raw=meter.v1(seq, end + seq * 300, 10, 10 * seq),
                               content_type=OCTET) for seq in range(1, 4)]
        assert [a[0] for a in answers] == [200, 200, 429]
        assert int(answers[2][2]["retry-after"]) >= 1 and "meter M-RATE-1" in answers[2][1]["detail"]
        # Junk does not spend a meter's budget (only its key can), but it does spend the client's.
        other = SimMeter("M-RATE-2")
        _register(migrated, other)
        forged = other.v1(1, end, 10, 10)[:-5] + b"11111"
        assert server.call("POST", SUBMIT, token=token, raw=forged, content_type=OCTET)[0] == 422
        assert server.call("POST", SUBMIT, token=token, raw=other.v1(1, end, 10, 10), content_type=OCTET)[0] == 200
        status, body, headers = server.call("POST", SUBMIT, token=token, raw=b"x", content_type=OCTET)
        assert status == 429 and "token" in body["detail"] and int(headers["retry-after"]) >= 1
    finally:
        stop_api(server)
