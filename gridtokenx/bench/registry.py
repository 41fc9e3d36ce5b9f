"""Attach commands that live next to the code they drive to a click group, by module name."""

from __future__ import annotations

import importlib

import click


def attach(group: click.Group, modules: tuple[str, ...]) -> None:
    """Each module exposes COMMANDS (a list of click commands). A module not built yet is skipped."""
    for module in modules:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not exc.name or not (module == exc.name or module.startswith(exc.name + ".")):
                raise
            continue
        for command in mod.COMMANDS:
            group.add_command(command)
