"""`gridtokenx demo --json` end to end: every published reading is accounted for, and minted = entitled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil


def test_demo_json_accounts_for_every_reading_and_has_zero_drift(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gridtokenx", "demo", "--meters", "10", "--duration", "15", "--json",
         "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=400, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    sim = doc["simulator"]
    duplicates = sum(f["count"] for f in sim["faults"].values() if f["expected"] == "duplicate")
    injected = sum(f["count"] for f in sim["faults"].values() if f["expected"] not in ("duplicate",))
    # Every reading the edge broker acknowledged is persisted, rejected (cloud) or quarantined (edge);
    # replays are acknowledged as duplicates and stored once.
    assert sim["acked"] == doc["readings_accepted"] + doc["readings_rejected"] + doc["edge_quarantined"] + duplicates
    assert doc["readings_rejected"] + doc["edge_quarantined"] == injected
    assert doc["readings_accepted"] == sum(m["readings"] for m in sim["per_meter"].values())
    assert doc["readings_accepted"] > 0
    # Tokens: on-chain balances equal the validated energy, exactly.
    assert doc["drift"] == 0
    assert doc["supply"] == doc["entitled_total"] > 0
    assert doc["reconcile"]["clean"] is True
    assert "drift 0" in doc["check_line"]
    # The live view's frames are in the JSON, and the last one shows the pipeline drained.
    assert doc["snapshots"] and doc["final"]["edge_depth"] == 0 and doc["final"]["unminted_backlog"] == 0
    # Nothing the demo started is left running (brokers and components all name the workdir).
    leftovers = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
                 if any(str(tmp_path) in part for part in (p.info["cmdline"] or []))]
    assert leftovers == []
