"""The core's layout: every module in a sub-package, imports pointing only down the flow, no import cycles.

The sub-packages of ``ResMTNet/Logic`` (the package ``resmtnet``), lowest first. A module may import from
its own sub-package and from those before it, never from one after it; the package root holds only
``__init__.py`` (its ``__version__`` is for everyone). Imports inside functions count as much as those at
the top of a file: a lazy import up the flow is still a dependency up the flow.
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "ResMTNet" / "Logic"
PACKAGE = "resmtnet"

#: the sub-packages in the order of the flow: each may import the ones before it
LAYERS = ("util", "io", "model", "detect", "data", "scene", "report", "job", "evaluate", "train", "cli")


def module_name(root: Path, path: Path) -> str:
    """``resmtnet.io.ctio`` for ``root/io/ctio.py``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def core_modules(root: Path) -> dict[str, Path]:
    """Every module and package of the core under ``root``, by dotted name."""
    return {module_name(root, p): p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The core modules (or packages) that the module ``name`` at ``path`` imports, relative imports resolved.

    ``from ..evaluate import froc`` names the module ``resmtnet.evaluate.froc`` where that is a module, else the
    package; ``from .. import __version__`` names the package root.
    """
    is_package = path.name == "__init__.py"
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``import resmtnet.io.ctio.x``: the nearest core module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def layer(name: str) -> str | None:
    """The sub-package ``name`` sits in (``io`` for ``resmtnet.io.ctio``); None for the package root."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def layout_problems(root: Path, layers: tuple[str, ...] = LAYERS) -> list[str]:
    """Every breach of the layout under ``root``, one sentence each (empty when the layout holds)."""
    modules = core_modules(root)
    graph = {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}
    problems = []
    for name, path in modules.items():
        rel = path.relative_to(root).as_posix()
        if len(path.relative_to(root).parts) == 1 and path.name != "__init__.py":
            problems.append(f"{rel} sits in the package root: move it into one of {', '.join(layers)}")
            continue
        if len(path.relative_to(root).parts) > 1 and layer(name) not in layers:
            problems.append(f"{rel} is in the sub-package {layer(name)!r}, which LAYERS does not place")
            continue
        here = layer(name)
        for target in sorted(graph[name]):
            there = layer(target)
            if there is None or here is None or there not in layers or here not in layers:
                continue
            if layers.index(there) > layers.index(here):
                problems.append(f"{rel} imports {target}: {there}/ comes after {here}/ in the flow")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in import_cycles(graph)]
    return problems


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (its modules, the first repeated at the end) for each back edge a depth-first search meets."""
    state: dict[str, str] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_every_core_module_sits_in_a_sub_package_and_imports_only_down_the_flow():
    assert layout_problems(CORE) == []


def test_every_sub_package_of_the_core_has_its_place_in_the_flow():
    on_disk = {p.parent.name for p in CORE.glob("*/__init__.py")}
    assert on_disk == set(LAYERS)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def test_the_layout_check_finds_a_root_module_an_upward_import_and_a_cycle(tmp_path):
    """The checker itself, on a small package with one of each breach (and imports that are allowed)."""
    root = _write(tmp_path, {
        "__init__.py": '__version__ = "0"\n',
        "stray.py": "",
        "util/__init__.py": "",
        "util/errors.py": "from .. import __version__\n",
        "io/__init__.py": "",
        "io/ctio.py": "from ..util.errors import x\n\ndef read():\n    from ..detect import pipeline\n",
        "io/a.py": "from . import b\n",
        "io/b.py": "import resmtnet.io.a\n",
        "detect/__init__.py": "",
        "detect/pipeline.py": "from ..io.ctio import read\nfrom resmtnet.util import errors\n",
    })
    problems = layout_problems(root, layers=("util", "io", "detect"))
    assert problems[0].startswith("io/ctio.py imports resmtnet.detect.pipeline: detect/ comes after io/")
    assert problems[1].startswith("stray.py sits in the package root")
    cycles = [p for p in problems[2:] if p.startswith("import cycle: ")]
    assert sorted(cycles) == ["import cycle: resmtnet.detect.pipeline -> resmtnet.io.ctio -> resmtnet.detect.pipeline",
                              "import cycle: resmtnet.io.a -> resmtnet.io.b -> resmtnet.io.a"]
    assert len(problems) == 4
