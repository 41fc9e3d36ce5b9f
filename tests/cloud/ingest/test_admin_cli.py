"""`gridtokenx cloud migrate` and `gridtokenx cloud meters ...` against a real Postgres."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gridtokenx.cli import root
from tests.cloud.ingest.support import Meter, query


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(root, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_migrate_is_idempotent(database_url: str) -> None:
    code, out = cli("cloud", "migrate", "--database-url", database_url, "--json")
    assert code == 0 and "001_meter_readings_tables" in json.loads(out)["applied"]
    code, out = cli("cloud", "migrate", "--database-url", database_url, "--json")
    assert code == 0 and json.loads(out) == {"applied": []}


def test_migrate_without_postgres_is_one_sentence() -> None:
    code, out = cli("cloud", "migrate", "--database-url", "postgresql://postgres@127.0.0.1:1/none")
    assert code == 1 and "cannot connect to PostgreSQL" in out and "Traceback" not in out


def test_import_is_idempotent_and_reports_bad_lines(migrated_db: str, tmp_path: Path) -> None:
    meters = [Meter.make(f"m-{i}") for i in range(3)]
    rows = [f"{r.meter_id},{r.public_key},{r.wallet_address},{r.meter_type},{r.capacity_w}"
            for r in (m.row() for m in meters)]
    csv = tmp_path / "meters.csv"
    csv.write_text("meter_id,public_key,wallet_address,meter_type,capacity_w\n" + "\n".join(
        [*rows, "bad/id,x,y,solar,5", f"m-9,{meters[0].row().public_key},{meters[0].wallet},solar,-3"]) + "\n")
    code, out = cli("cloud", "meters", "import", str(csv), "--database-url", migrated_db, "--json")
    doc = json.loads(out)
    assert code == 1
    assert (doc["inserted"], doc["updated"], doc["unchanged"]) == (3, 0, 0)
    assert [e["line"] for e in doc["errors"]] == [5, 6]
    assert "capacity_w -3 is negative" in doc["errors"][1]["error"]

    good = tmp_path / "good.csv"
    good.write_text("meter_id,public_key,wallet_address,meter_type,capacity_w\n" + "\n".join(rows) + "\n")
    code, out = cli("cloud", "meters", "import", str(good), "--database-url", migrated_db, "--json")
    assert code == 0 and json.loads(out) == {"inserted": 0, "updated": 0, "unchanged": 3, "errors": []}

    # A different key for a known meter is not silently a rotation.
    other = Meter.make("other").row()
    clash = tmp_path / "clash.csv"
    clash.write_text("meter_id,public_key,wallet_address,meter_type,capacity_w\n"
                     f"m-1,{other.public_key},{other.wallet_address},solar,5000\n")
    code, out = cli("cloud", "meters", "import", str(clash), "--database-url", migrated_db, "--json")
    assert code == 1 and "rotate-key" in json.loads(out)["errors"][0]["error"]


def test_add_list_suspend_revoke_rotate(migrated_db: str) -> None:
    m, new = Meter.make("solar-1"), Meter.make("new-key")
    row = m.row()
    code, out = cli("cloud", "meters", "add", "solar-1", "--public-key", row.public_key, "--wallet", m.wallet,
                    "--capacity-w", "5000", "--database-url", migrated_db)
    assert code == 0 and "added" in out
    code, out = cli("cloud", "meters", "suspend", "solar-1", "--reason", "site visit", "--database-url", migrated_db)
    assert code == 0
    code, out = cli("cloud", "meters", "list", "--json", "--database-url", migrated_db)
    [listed] = json.loads(out)
    assert (listed["status"], listed["status_reason"], listed["capacity_w"]) == ("suspended", "site visit", 5000)

    new_key = new.row().public_key
    code, out = cli("cloud", "meters", "rotate-key", "solar-1", new_key, "--json", "--database-url", migrated_db)
    assert code == 0
    assert json.loads(out) == {"meter_id": "solar-1", "public_key": new_key, "compromised": False,
                               "old_key_below_seq": 0}  # no reading stored yet
    keys = asyncio.run(query(migrated_db, "SELECT public_key, valid_until FROM meter_keys WHERE meter_id = 'solar-1'"
                                          " ORDER BY valid_from"))
    assert [(k["public_key"], k["valid_until"] is None) for k in keys] == [(row.public_key, False), (new_key, True)]
    code, out = cli("cloud", "meters", "rotate-key", "solar-1", row.public_key, "--database-url", migrated_db)
    assert code == 1 and "had this key before" in out

    code, out = cli("cloud", "meters", "revoke", "solar-1", "--database-url", migrated_db)
    assert code == 0
    code, out = cli("cloud", "meters", "list", "--status", "revoked", "--json", "--database-url", migrated_db)
    assert [(x["meter_id"], x["keys"], x["public_key"]) for x in json.loads(out)] == [("solar-1", 2, new_key)]
    code, out = cli("cloud", "meters", "suspend", "nobody", "--database-url", migrated_db)
    assert code == 1 and "not registered" in out


def test_run_mint_role_without_minter_is_one_sentence(migrated_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A build without the minter: importing cloud.minter.service fails as if the file were missing.
    monkeypatch.setitem(sys.modules, "cloud.minter.service", None)
    code, out = cli("cloud", "run", "--role", "mint", "--database-url", migrated_db)
    assert code == 1 and "--role ingest" in out and "Traceback" not in out
