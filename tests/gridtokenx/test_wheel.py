"""The wheel is the product: built, installed into a fresh virtualenv outside the repository, and run
from another directory, it migrates a database and runs the demo to drift 0.

The fresh virtualenv gets only the built wheel (`pip install --no-deps`); its third-party
dependencies come from the development virtualenv through a `.pth` path line (no network, and the
same versions the suite tests). That path line adds no `.pth` processing, so the development
virtualenv's editable install of this checkout is NOT visible: the test asserts that every package
is imported from the fresh virtualenv.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import asyncpg
import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the checkout's files (tracked or new, not ignored): pip builds in the source
    # tree, whose build/ would otherwise collect stale files and race with other runs.
    source = base / "src"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    dist = base / "dist"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)], cwd=base)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("gridtokenx_edge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for source in ("migrations", "broker-config", "deploy"):
        for path in (REPO / source).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                assert f"runtime/_data/{path.relative_to(REPO)}" in names, f"{path} is not in the wheel"
    assert "edge/schema.sql" in names
    venv = base / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], cwd=base)
    assert made.returncode == 0, made.stderr
    installed = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                      str(wheel)], cwd=base)
    assert installed.returncode == 0, installed.stderr[-3000:]
    (site_packages,) = (venv / "lib").glob("python3*/site-packages")
    (site_packages / "zz_dev_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRIDTOKENX_", "TOKENIZATION_", "PYTHON"))}
    return env | extra


async def _tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


def test_installed_wheel_migrates_and_runs_the_demo(wheel_venv: Path, database_url: str, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python, gridtokenx = str(wheel_venv / "bin" / "python"), str(wheel_venv / "bin" / "gridtokenx")
    where = _run([python, "-c", "import cloud, gridtokenx, runtime.assets as a; "
                  "print(cloud.__file__); print(gridtokenx.__file__); print(a.folder('migrations'))"],
                 cwd=elsewhere, env=_env())
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert line.startswith(str(wheel_venv)), f"imported from outside the fresh virtualenv: {line}"

    migrated = _run([gridtokenx, "cloud", "migrate", "--json"], cwd=elsewhere, env=_env(DATABASE_URL=database_url))
    assert migrated.returncode == 0, migrated.stderr
    applied = json.loads(migrated.stdout)["applied"]
    assert len(applied) == len(list((REPO / "migrations").glob("[0-9][0-9][0-9]_*.sql")))
    assert {"meters", "meter_readings", "rejected_readings", "schema_migrations"} <= asyncio.run(_tables(database_url))

    demo = _run([gridtokenx, "demo", "--meters", "5", "--duration", "10", "--json"], cwd=elsewhere,
                env=_env(DATABASE_URL=database_url), timeout=400)
    assert demo.returncode == 0, demo.stderr[-3000:]
    doc = json.loads(demo.stdout)
    assert doc["drift"] == 0 and doc["readings_accepted"] > 0
    assert doc["database"]["name"].startswith("gridtokenx_") and doc["database"]["kept"] is False
    assert doc["final"]["meters → edge broker"] == doc["simulator"]["published"] > 0
    assert doc["reconcile"]["foreign_transactions"] >= 1  # creating the mint, on a fresh chain: explained
    assert "creating the mint" in doc["reconcile"]["foreign_transactions_note"]
    assert (elsewhere / ".gridtokenx" / "demo").is_dir()  # the default workdir is relative to where it runs


def test_migrate_refuses_an_empty_migrations_folder(tmp_path: Path, database_url: str) -> None:
    """A broken install (no SQL files) is an error, never 'database is up to date'."""
    from cloud import db

    with pytest.raises(db.MigrationError, match="no migration files"):
        asyncio.run(db.migrate(database_url, tmp_path))
