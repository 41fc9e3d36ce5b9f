"""The code and protocol/test_vectors.json agree, through the same command a user runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from protocol import vectors

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "test_vectors.json"


def test_every_vector_gets_its_expected_verdict() -> None:
    document = json.loads(VECTORS.read_text())
    outcomes = vectors.check(document)
    assert len(outcomes) >= 15
    assert [o.name for o in outcomes if not o.ok] == []
    verdicts = {v["expect"]["verdict"] for v in document["vectors"]}
    assert verdicts == {"valid", "rejected"}


def test_file_is_what_the_generator_writes() -> None:
    """Ed25519 is deterministic, so regenerating from the fixed seeds gives the same bytes."""
    assert json.loads(VECTORS.read_text()) == json.loads(json.dumps(vectors.generate()))


def test_verify_vectors_command_exits_zero_and_prints_each_verdict() -> None:
    result = subprocess.run([sys.executable, "-m", "protocol", "verify-vectors", str(VECTORS)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "21 of 21 vectors agree" in result.stdout
    assert "FAIL" not in result.stdout


def test_verify_vectors_fails_on_a_wrong_expectation(tmp_path: Path) -> None:
    document = json.loads(VECTORS.read_text())
    document["vectors"][0]["expect"]["reading"]["export_wh"] += 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    result = subprocess.run([sys.executable, "-m", "protocol", "verify-vectors", str(bad)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "FAIL v1_basic" in result.stdout
