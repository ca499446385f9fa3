"""The house's floors (docs/architecture.md): the kernel `dalaba` imports nothing of
ours; the controller never imports the terminal's agent or the simulator; the agent
never imports the controller; only `dalaba_ops` (the top floor) may import anything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"dalaba", "dalaba_ops", "controller", "edge_agent", "firmware_sim"}
# package -> the packages of ours it may import
ALLOWED = {
    "dalaba": {"dalaba"},
    "controller": {"dalaba", "controller"},
    "edge_agent": {"dalaba", "edge_agent"},
    "firmware_sim": {"dalaba", "edge_agent", "firmware_sim"},
    "dalaba_ops": OURS,
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_floor_imports_only_what_is_below_it(package: str) -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(imports_of(path) - ALLOWED[package])
        for path in (ROOT / package).rglob("*.py")
        if imports_of(path) - ALLOWED[package]
    }
    assert wrong == {}
