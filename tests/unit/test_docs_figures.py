"""Figures in the docs come from committed benchmark results: in every paragraph (or
list item) of the docs that cites `bench/results/<file>`, each measured figure (a
number followed by ms, s or /s, or a median / max pair) appears in one of the files it
cites. A figure typed from memory, or left behind when a benchmark is re-run, fails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CITE = re.compile(r"bench/results/([\w.-]+\.md)")
FIGURE = re.compile(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?)(?:\s*/\s*(\d[\d,]*(?:\.\d+)?))?\s*(?:ms|s\b)")


def blocks(text: str) -> list[str]:
    """Paragraphs and list items: a figure and its citation belong together."""
    parts = re.split(r"\n\s*\n|\n(?=\s*[-*] )", text)
    return [p for p in parts if CITE.search(p)]


def cases() -> list[tuple[str, str, list[str]]]:
    found = []
    for doc in DOCS:
        for block in blocks(doc.read_text()):
            files = CITE.findall(block)
            found.append((doc.name, block, files))
    return found


@pytest.mark.parametrize(("doc", "block", "files"), cases())
def test_cited_figures_are_in_the_cited_results(doc: str, block: str, files: list[str]) -> None:
    results = ""
    for name in files:
        path = ROOT / "bench" / "results" / name
        assert path.exists(), f"{doc} cites a results file that is not committed: {name}"
        results += path.read_text()
    numbers = set(re.findall(r"\d[\d,]*(?:\.\d+)?", results.replace(",", "")))
    missing = []
    for first, second in FIGURE.findall(block):
        for figure in (first, second):
            value = figure.replace(",", "")
            if value and value not in numbers and not _is_a_setting(value):
                missing.append(figure)
    assert not missing, f"{doc}: {missing} not in {files}:\n{block}"


def _is_a_setting(value: str) -> bool:
    # Designed values that sit beside measurements (leads, limits), not measurements.
    return value in {"600", "900", "1", "2", "3", "5", "30", "60", "300", "1000"}
