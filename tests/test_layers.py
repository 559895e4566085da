"""The layers of DESIGN.md hold: no package imports one above it, and no two packages import each other.

    launcher (cli) -> autoscaler -> lifecycle -> providers -> transport -> core;  runtime -> core only

Read from the source with `ast` (imports inside functions count too), so a lazy import cannot hide a
dependency that goes up.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.infra import ROOT

ORDER = ["core", "transport", "providers", "lifecycle", "autoscaler", "launcher"]
# what each package may import; the runtime runs on every node and needs only core
ALLOWED = {name: set(ORDER[:i]) for i, name in enumerate(ORDER)}
ALLOWED["runtime"] = {"core"}
for upper in ("lifecycle", "autoscaler", "launcher"):
    ALLOWED[upper].add("runtime")  # the runtime's client API
PACKAGES = set(ALLOWED)


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PACKAGES


def package_edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for pkg in sorted(PACKAGES):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for dep in imports_of(path) - {pkg}:
                edges.setdefault((pkg, dep), []).append(str(path.relative_to(ROOT)))
    return edges


def test_every_layer_folder_exists():
    assert all((ROOT / pkg / "__init__.py").exists() for pkg in PACKAGES)


def test_no_import_goes_up_a_layer():
    wrong = [f"{pkg} imports {dep} in {', '.join(files)}"
             for (pkg, dep), files in package_edges().items() if dep not in ALLOWED[pkg]]
    assert wrong == []


def test_no_cycle_between_packages():
    edges = package_edges()
    cycles = sorted(f"{a} <-> {b}" for (a, b) in edges if (b, a) in edges and a < b)
    assert cycles == []


def test_the_checker_sees_an_upward_import(tmp_path):
    # the check must be able to fail: a core module importing the lifecycle is caught
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from lifecycle.cluster import Lifecycle\n")
    assert imports_of(bad) == {"lifecycle"}
    assert "lifecycle" not in ALLOWED["core"]
