"""Regression: `POST /api/admin/meters` answered 500 (found by test_schemathesis_every_operation).

The sequence schemathesis found: register M-FUZZ-1, submit one reading, mint it through the API
(direct mode: the API process drives the embedded chain), then post the meter again with an
integral float capacity and a public key that is not base58. After the manual mint, Litestar's
signature conversion intermittently refused the integral float ("Expected `int`, got `float`") and,
finding no field to blame on its re-check, raised InternalServerException: a bare 500 that the
after-exception hook did not log (it skipped every HTTPException). Real API process, real PostgreSQL.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.cloud.api.conftest import make_token, start_api, stop_api
from tests.cloud.api.support import SimMeter

FUZZ_KEY = "\u00ab\u008d\u00bb\u00aa7Xj\u000e\u00e1\U000bceba`\u0019\u001c\u0006"


def test_admin_meters_after_manual_mint_answers_4xx_never_500(migrated: str, tmp_path: Path) -> None:
    api = start_api(migrated, tmp_path, args=("--client-rate", "0"))
    try:
        admin = make_token(migrated, "admin")[0]
        meter = SimMeter("M-FUZZ-1")
        assert api.call("POST", "/api/admin/meters", token=admin, body=meter.admin_body())[0] == 200
        end = int(time.time()) // 300 * 300 - 600
        assert api.call("POST", "/api/meters/submit-reading", token=admin, raw=meter.v1(1, end, 5, 5),
                        content_type="application/octet-stream")[0] == 200
        assert api.call("POST", "/api/admin/meters/M-FUZZ-1/suspend", token=admin, body={})[0] == 200
        status, answer, _ = api.call("POST", "/api/admin/mint", token=admin,
                                     body={"meter_id": "M-FUZZ-1", "reading_ids": None, "wait_secs": 0})
        assert status == 200, answer
        bad_key = {"wallet_address": meter.wallet, "meter_id": "M-FUZZ-1", "public_key": FUZZ_KEY,
                   "capacity_w": 781793616.0}
        same_key = bad_key | {"public_key": meter.public_key, "capacity_w": 20_000.0}
        for _ in range(30):
            status, answer, _ = api.call("POST", "/api/admin/meters", token=admin, body=bad_key)
            assert status == 400, (status, answer)
            assert answer["detail"].count(".") <= 2 and "not" in answer["detail"], answer
            status, answer, _ = api.call("POST", "/api/admin/meters", token=admin, body=same_key)
            assert status in (200, 400), (status, answer)
            if status == 200:
                assert answer["ok"] is True
        log = next(tmp_path.glob("api-*.log")).read_text()
        assert "Internal Server Error" not in log
    finally:
        stop_api(api)
