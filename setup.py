"""Build step: ship the top-level data folders inside the wheel (everything else is in pyproject.toml).

`migrations/`, `broker-config/` and `deploy/` stay at the repository root, where operators and
Docker read them; the build copies each, whole, to `runtime/_data/<folder>/` in the wheel, so new
files there need no list update. runtime/assets.py finds them at either place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
FOLDERS = ("migrations", "broker-config", "deploy")  # = runtime.assets.FOLDERS


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the folders in the checkout
        target = Path(self.build_lib) / "runtime" / "_data"
        for name in FOLDERS:
            source = HERE / name
            if not source.is_dir():
                raise SystemExit(f"setup.py: {source} is missing; build from a full checkout or sdist")
            shutil.rmtree(target / name, ignore_errors=True)
            shutil.copytree(source, target / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))


setup(cmdclass={"build_py": BuildWithData})
