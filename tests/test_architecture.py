"""docs/architecture.md's layer table is true: core imports only point down, and the core
imports no plugin."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core" / "noisesearch"


def documented_layers() -> list[list[str]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("## Layers", 1)[1].split("```", 2)[1]
    return [re.findall(r"(\w+)\.py", line) for line in block.strip().splitlines()][::-1]


def runtime_imports(path: Path) -> set[str]:
    """Core modules imported by ``path``, outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "noisesearch" and len(parts) > 1 and (CORE / f"{parts[1]}.py").exists():
                found.add(parts[1])
            if parts[0].startswith("noisesearch_"):
                found.add(parts[0])
    return found - {path.stem}


def test_every_core_module_is_in_the_documented_layers() -> None:
    documented = {name for layer in documented_layers() for name in layer}
    actual = {p.stem for p in CORE.glob("*.py") if p.stem != "__init__"}
    assert documented == actual


def test_core_imports_only_point_down() -> None:
    rank = {name: i for i, layer in enumerate(documented_layers()) for name in layer}
    violations = []
    for path in CORE.glob("*.py"):
        if path.stem == "__init__":
            continue
        for imported in runtime_imports(path):
            if imported.startswith("noisesearch_"):
                violations.append(f"{path.stem} imports the plugin package {imported}")
            elif rank[imported] >= rank[path.stem]:
                violations.append(f"{path.stem} (row {rank[path.stem]}) imports {imported} "
                                  f"(row {rank[imported]})")
    assert not violations, violations


def test_the_bench_package_stands_between_cli_and_api() -> None:
    """``noisesearch/bench/`` imports api.py and the rows below it, never cli.py or console.py;
    ``bench/cli.py`` (the command itself) belongs to the CLI layer."""
    rank = {name: i for i, layer in enumerate(documented_layers()) for name in layer}
    violations = []
    for path in (CORE / "bench").glob("*.py"):
        if path.name == "cli.py":
            continue
        for imported in runtime_imports(path):
            if imported.startswith("noisesearch_"):
                violations.append(f"bench/{path.name} imports the plugin package {imported}")
            elif imported in rank and rank[imported] > rank["api"]:
                violations.append(f"bench/{path.name} imports {imported}, above api.py")
    assert not violations, violations


def test_no_core_module_imports_ray() -> None:
    """Ray is an optional extra (``noisesearch[ray]``): only the plugin executor imports it."""
    importers = []
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name == "ray" or name.startswith("ray.") for name in names):
                importers.append(str(path.relative_to(CORE)))
    assert not importers, importers
