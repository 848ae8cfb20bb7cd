"""The parts of edgekit import only what docs/design.md allows them, no two parts import each other,
and no module outside edgekit/formats/ tests an artifact's file suffix."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "edgekit"


def _allowed() -> dict[str, set[str]]:
    """The 'may import' column of the parts table in docs/design.md."""
    rows = {}
    for line in (REPO / "docs" / "design.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0] != "`part`":
            part = cells[0].strip("`")
            rows[part] = {"*"} if cells[2] == "every part" else set(re.findall(r"`([a-z_]+)`", cells[2]))
    return rows


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports() -> dict[str, set[str]]:
    """{part: the other parts it imports}, top level and inside functions alike."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__main__.py":
            continue
        part = _part(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "edgekit" else [])
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "edgekit" and len(parts) > 1 and parts[1] != part and parts[1] != "__version__":
                    found.setdefault(part, set()).add(parts[1])
    return found


def test_every_part_of_the_package_is_in_the_design_table():
    allowed = _allowed()
    parts = {_part(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert parts - set(allowed) == set(), "parts missing from docs/design.md"
    assert set(allowed) - parts == set(), "docs/design.md names parts the code does not have"


@pytest.mark.parametrize("part", sorted(_allowed()))
def test_a_part_imports_only_what_the_design_allows(part):
    allowed = _allowed()[part]
    used = _imports().get(part, set())
    if "*" in allowed:
        return
    assert used - allowed == set(), f"{part} imports {sorted(used - allowed)}; docs/design.md allows {sorted(allowed)}"


def test_no_two_parts_import_each_other():
    graph = _imports()
    cycles = []

    def visit(node, stack):
        for nxt in sorted(graph.get(node, ())):
            if nxt in stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif len(stack) < 12:
                visit(nxt, stack + [nxt])

    for start in sorted(graph):
        if start in ("api", "cli"):  # they sit on top and import everything
            continue
        visit(start, [start])
    assert not cycles, f"import cycles between parts: {sorted(set(' -> '.join(c) for c in cycles))[:5]}"


SUFFIXES = re.compile(r"""["'](\.pte|\.ptl|\.onnx|\.tflite)["']""")


def test_no_module_outside_formats_tests_an_artifact_suffix():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if _part(path) == "formats":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if SUFFIXES.search(code):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == [], "\n".join(offenders)
