"""The layering rule, checked over the source with `ast` (no imports executed).

Floors, from the bottom: protocol (pure) ← runtime (process plumbing) ← simulator, edge, cloud
(independent of each other) ← gridtokenx (root command, demo, stack, benchmarks, dev harness).
A module may import its own package and packages on lower floors, never a higher floor or a sibling.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

FLOORS: dict[str, int] = {"protocol": 0, "runtime": 1, "simulator": 2, "edge": 2, "cloud": 2, "gridtokenx": 3}


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    importer: str
    imported: str

    def __str__(self) -> str:
        return (f"{self.path}:{self.line}: {self.importer} (floor {FLOORS[self.importer]}) imports "
                f"{self.imported} (floor {FLOORS[self.imported]})")


def imported_packages(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, arg.value.split(".")[0]))
    return found


def violations(root: Path) -> list[Violation]:
    out: list[Violation] = []
    for package, floor in FLOORS.items():
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for line, imported in imported_packages(tree):
                if imported == package or imported not in FLOORS:
                    continue
                if FLOORS[imported] >= floor:
                    out.append(Violation(path.relative_to(root), line, package, imported))
    return out
