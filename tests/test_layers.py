"""No module imports a package on a higher floor, or a sibling component (see tests/layers.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.layers import FLOORS, violations

ROOT = Path(__file__).resolve().parent.parent


def test_no_package_imports_upward_or_sideways() -> None:
    found = violations(ROOT)
    assert not found, "layering broken:\n" + "\n".join(map(str, found))


def test_the_check_catches_a_planted_upward_import(tmp_path: Path) -> None:
    for package in FLOORS:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    planted = tmp_path / "protocol" / "planted.py"
    planted.write_text("from edge.buffer import Buffer\n")
    (tmp_path / "edge" / "planted.py").write_text("import importlib\nimportlib.import_module('cloud.db')\n")
    found = {str(v) for v in violations(tmp_path)}
    assert found == {"protocol/planted.py:1: protocol (floor 0) imports edge (floor 2)",
                     "edge/planted.py:2: edge (floor 2) imports cloud (floor 2)"}
