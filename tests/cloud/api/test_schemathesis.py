"""Must show: schemathesis against the running API (real PostgreSQL, real SVM): no 5xx, and every
response conforms to the OpenAPI document (status codes, content types, bodies). Bounded: a fixed
seed and 5 examples per operation per phase."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cloud.api.conftest import Api, make_token, start_api, stop_api
from tests.cloud.api.support import SimMeter

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_schemathesis_finds_no_5xx_and_no_schema_violation(migrated: str, tmp_path: Path) -> None:
    """Every operation but the two that drive the chain (each call opens the embedded SVM), 25 s budget."""
    api = start_api(migrated, tmp_path, args=("--client-rate", "0"))
    try:
        _fuzz(api, make_token(migrated, "admin")[0], tmp_path, examples=3, max_time=25,
              extra=("--exclude-path-regex", "/api/admin/(mint|reconcile)"), phases="examples,fuzzing")
    finally:
        stop_api(api)


@pytest.mark.slow
def test_schemathesis_every_operation(migrated: str, tmp_path: Path) -> None:
    """All operations, manual mint and reconcile included (bounded to 120 s)."""
    api = start_api(migrated, tmp_path, args=("--client-rate", "0"))
    try:
        _fuzz(api, make_token(migrated, "admin")[0], tmp_path, examples=10, max_time=120)
    finally:
        stop_api(api)


def _fuzz(api: Api, admin: str, tmp_path: Path, *, examples: int, max_time: int,
          extra: tuple[str, ...] = (), phases: str = "examples,coverage,fuzzing") -> None:
    meter = SimMeter("M-FUZZ-1")
    assert api.call("POST", "/api/admin/meters", token=admin, body=meter.admin_body())[0] == 200
    end = int(time.time()) // 300 * 300 - 600
    assert api.call("POST", "/api/meters/submit-reading", token=admin, raw=meter.v1(1, end, 5, 5),
                    content_type="application/octet-stream")[0] == 200
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    run = subprocess.run(
        [exe, "run", f"{api.url}/openapi.json", "-H", f"Authorization: Bearer {admin}", "--checks", CHECKS,
         "--max-examples", str(examples), "--seed", "7", "--workers", "1", "--no-color", "--max-time",
         str(max_time), "--phases", phases, "--report-dir", str(tmp_path), *extra],
        check=False, capture_output=True, text=True, timeout=240, cwd=tmp_path)  # its cache stays in tmp
    (tmp_path / "schemathesis.txt").write_text(run.stdout)
    failures = run.stdout.split("FAILURES")[-1].split("WARNINGS")[0] if "FAILURES" in run.stdout else ""
    summary = failures[:6000] + run.stdout[-1500:]
    print(summary)
    assert run.returncode == 0, summary + run.stderr[-2000:]
    assert "passed" in summary and "failed" not in summary.split("SUMMARY")[-1].lower()
