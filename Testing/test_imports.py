"""Imports run one way (issue #25): every import in the product's packages, lazy ones inside functions included, goes
to a module of the same layer or a lower one, and no two modules import each other, directly or around a circle.

The layers, lowest first, are LAYERS below; a module not listed takes its package's layer. The shared logic
(MedAgentSegModuleLib) imports neither Qt nor trame, so the Slicer module and the browser can both use it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"MedAgentSegLib": REPO / "MedAgentSegLib",
         "MedAgentSegModuleLib": REPO / "MedAgentSeg" / "MedAgentSegModuleLib",
         "MedAgentSegWeb": REPO / "MedAgentSegWeb"}

# lowest first: the data and its readers; the engines (networks and their weights); the session and the rules over
# any engine; the agents; the pipeline the front ends call; trainers; evaluation; labeling; the command line; the
# logic shared by Slicer and the browser; the browser app
LAYERS = [
    ["MedAgentSegLib", "MedAgentSegLib.rle", "MedAgentSegLib.metrics", "MedAgentSegLib.fileio", "MedAgentSegLib.images",
     "MedAgentSegLib.actions", "MedAgentSegLib.oracle", "MedAgentSegLib.sample", "MedAgentSegLib.language",
     "MedAgentSegLib.datasets", "MedAgentSegLib.click_rules", "MedAgentSegLib.trajectory_schema"],
    ["MedAgentSegLib.engines"],
    ["MedAgentSegLib.observation", "MedAgentSegLib.session", "MedAgentSegLib.render", "MedAgentSegLib.policies",
     "MedAgentSegLib.propagation"],
    ["MedAgentSegLib.agent", "MedAgentSegLib.routing"],
    ["MedAgentSegLib.pipeline"],
    ["MedAgentSegLib.training"],
    ["MedAgentSegLib.evaluation"],
    ["MedAgentSegLib.labeling"],
    ["MedAgentSegLib.cli"],
    ["MedAgentSegModuleLib"],
    ["MedAgentSegWeb"],
]
GUI = ("qt", "ctk", "slicer.util", "trame", "trame_slicer", "trame_vuetify", "trame_server")


def _module_name(root: str, path: Path) -> str:
    parts = [root, *path.relative_to(ROOTS[root]).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(root: str, path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, relative ones resolved."""
    name = _module_name(root, path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            found += [(base, node.lineno)] + [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return found


def _modules() -> dict[str, Path]:
    return {_module_name(root, p): p for root, folder in ROOTS.items() for p in sorted(folder.rglob("*.py"))}


def _layer(module: str) -> int | None:
    best = None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and (best is None or len(n) > len(best[1])):
                best = (i, n)
    return None if best is None else best[0]


def _graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[str, int]]]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    raw: dict[str, list[tuple[str, int]]] = {}
    for m, path in mods.items():
        root = m.split(".")[0]
        raw[m] = _imports(root, path)
        for target, _ in raw[m]:
            if target in mods and target != m:
                edges[m].add(target)
    return edges, raw


def test_every_module_has_a_layer():
    assert [m for m in _modules() if _layer(m) is None] == []


def test_no_import_runs_upward():
    edges, raw = _graph()
    mods = _modules()
    upward = [f"{m}:{line} imports {t} (layer {_layer(t)} above {_layer(m)})"
              for m, found in raw.items() for t, line in found
              if t in mods and _layer(t) is not None and _layer(m) is not None and _layer(t) > _layer(m)]
    assert upward == []


def test_no_import_circle():
    edges, _ = _graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert cycles == []


@pytest.mark.parametrize("root", ["MedAgentSegLib", "MedAgentSegModuleLib"])
def test_the_library_and_the_shared_logic_import_no_gui(root):
    _, raw = _graph()
    gui = [f"{m}:{line} imports {t}" for m, found in raw.items() if m.split(".")[0] == root
           for t, line in found if any(t == g or t.startswith(g + ".") for g in GUI)]
    assert gui == []
