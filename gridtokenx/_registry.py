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
            if exc.name != module:
                raise
            continue
        for command in mod.COMMANDS:
            group.add_command(command)
