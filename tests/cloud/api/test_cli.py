"""`gridtokenx cloud tokens create/list/revoke`, and `gridtokenx cloud api --workers 2`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner

from cloud.cli import cloud as main
from tests.cloud.api.conftest import start_api, stop_api
from tests.cloud.api.support import SimMeter


def test_tokens_create_list_revoke(migrated: str) -> None:
    runner = CliRunner()
    made = runner.invoke(main, ["tokens", "create", "--scope", "read", "--name", "portal", "--expires", "2h",
                                "--json", "--database-url", migrated])
    assert made.exit_code == 0, made.output
    doc = json.loads(made.output)
    assert doc["token"].startswith("gtx_") and doc["scope"] == "read" and doc["state"] == "active"
    assert doc["expires_at"] is not None
    listed = runner.invoke(main, ["tokens", "list", "--json", "--database-url", migrated])
    assert listed.exit_code == 0 and doc["token"] not in listed.output
    assert [t["name"] for t in json.loads(listed.output)] == ["portal"]
    revoked = runner.invoke(main, ["tokens", "revoke", str(doc["id"]), "--database-url", migrated])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    states = json.loads(runner.invoke(main, ["tokens", "list", "--json", "--database-url", migrated]).output)
    assert states[0]["state"] == "revoked"
    missing = runner.invoke(main, ["tokens", "revoke", "999", "--database-url", migrated])
    assert missing.exit_code != 0 and "no token 999" in missing.output
    bad = runner.invoke(main, ["tokens", "create", "--scope", "read", "--name", "x", "--expires", "soon",
                               "--database-url", migrated])
    assert bad.exit_code != 0


def test_several_worker_processes_serve_one_database(migrated: str, tmp_path: Path) -> None:
    from tests.cloud.api.conftest import make_token

    api = start_api(migrated, tmp_path, args=("--workers", "2"))
    try:
        admin, _ = make_token(migrated, "admin")
        meter = SimMeter("M-WORKERS")
        assert api.call("POST", "/api/admin/meters", token=admin, body=meter.admin_body())[0] == 200
        end = int(time.time()) // 300 * 300 - 3000
        statuses = [api.call("POST", "/api/meters/submit-reading", token=admin,
                             raw=meter.v1(s, end + 300 * s, 5, 5 * s),
                             content_type="application/octet-stream")[1]["status"] for s in range(1, 9)]
        assert statuses == ["accepted"] * 8
        assert api.call("GET", "/healthz")[0] == 200
    finally:
        stop_api(api)
