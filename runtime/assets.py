"""Where the project's non-Python files are: from an installed wheel, or from a source checkout.

The top-level folders `migrations/`, `broker-config/` and `deploy/` are the single source. Building a
wheel copies them, whole, into the package as `runtime/_data/<folder>/` (setup.py's build step), so a
file added to one of them is shipped without touching any list. A source checkout (editable install,
tests) has no `runtime/_data/` and reads the folders at the repository root instead.
"""

from __future__ import annotations

from pathlib import Path

#: Folders shipped as package data, by name; setup.py copies exactly these.
FOLDERS = ("migrations", "broker-config", "deploy")

_PACKAGED = Path(__file__).resolve().parent / "_data"
_CHECKOUT = Path(__file__).resolve().parent.parent


class AssetError(RuntimeError):
    """A shipped folder is missing: the installation is broken (the message names the folder)."""


def locate(name: str) -> Path:
    """The directory of one of FOLDERS: packaged first, else the source checkout's (which may be missing:
    callers that read files say so, see `folder`)."""
    if name not in FOLDERS:
        raise ValueError(f"{name!r} is not a packaged folder (one of {', '.join(FOLDERS)})")
    packaged = _PACKAGED / name
    return packaged if packaged.is_dir() else _CHECKOUT / name


def folder(name: str) -> Path:
    """Like `locate`, but the folder must exist."""
    found = locate(name)
    if found.is_dir():
        return found
    raise AssetError(f"the {name}/ folder is not installed (looked in {_PACKAGED} and {_CHECKOUT}); "
                     "reinstall gridtokenx-edge from a wheel built by `pip wheel .` or `python -m build`")
