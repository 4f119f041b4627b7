"""Build the list of 3D Slicer API names the MedAgentSeg module may use, from a Slicer source tree.

Usage: python scripts/slicer_api_names.py SLICER_GIT_DIR_OR_FOLDER [--rev REV] --out Testing/data/slicer_api_names.json

Only names are kept (no Slicer source): the Python `slicer` package's module-level names, the C++ classes that
Slicer wraps into `slicer` (with their base class and the method/enum names their header declares), Slicer's
module names (`slicer.modules.<name>`), and the Qt / CTK classes that Slicer's own Python and .ui files use.
Testing/test_slicer_api.py checks the module against this list.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

__all__ = ["build", "main"]

PY_ROOT = "Base/Python/slicer/"
CPP_DIRS = ("Base/", "Libs/", "Modules/")
EXPORT_CLASS = re.compile(r"^class\s+\w+_EXPORT\s+(\w+)\s*(?:final\s*)?:\s*public\s+(\w+)", re.M)
WRAPPED_PREFIXES = ("vtk", "q")  # Slicer wraps its exported vtk* and q* classes into `slicer`
METHOD = re.compile(r"\b([A-Za-z_]\w*)\s*\(")
VTK_MACRO = re.compile(r"\bvtk(Get|Set|Boolean)(\w*)Macro\s*\(\s*(\w+)")
QT_PROPERTY = re.compile(r"Q_PROPERTY\s*\(\s*[\w:<>*& ]+?\s+(\w+)\s")
ENUM_BODY = re.compile(r"\benum\b[^{;]*\{([^}]*)\}", re.S)
ENUM_ITEM = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:=|,|$)", re.M)
QT_NAME = re.compile(r"\bqt\.(Q\w+(?:\.\w+)*)")
CTK_NAME = re.compile(r"\bctk\.(ctk\w+(?:\.\w+)*)")
UI_CLASS = re.compile(r'class="(\w+)"')
CLASS_STRING = re.compile(r"""["'](vtkMRML\w+Node)["']""")
CPP_KEYWORDS = {"if", "for", "while", "switch", "return", "sizeof", "defined", "static_cast", "const_cast",
                "dynamic_cast", "reinterpret_cast", "operator", "Q_PROPERTY", "Q_OBJECT", "Q_ENUMS", "Q_ENUM",
                "Q_FLAGS", "Q_DECLARE_PRIVATE", "Q_DISABLE_COPY", "Q_DECLARE_FLAGS", "vtkTypeMacro"}


class Source:
    """Read files from a git directory (at a revision) or from a plain folder."""

    def __init__(self, root: Path, rev: str):
        self.root = root
        self.git = (root / "HEAD").is_file() and (root / "objects").is_dir() or (root / ".git").exists()
        self.rev = rev

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", "--git-dir", str(self._git_dir()), *args], check=True, capture_output=True,
                              text=True, errors="replace").stdout

    def _git_dir(self) -> Path:
        return self.root / ".git" if (self.root / ".git").exists() else self.root

    def describe(self) -> dict:
        if not self.git:
            return {"slicer_source": str(self.root)}
        commit = self._git("rev-parse", self.rev).strip()
        version = self._git("describe", "--tags", commit).strip()
        date = self._git("show", "-s", "--format=%cI", commit).strip()
        return {"slicer_commit": commit, "slicer_version": version, "slicer_commit_date": date}

    def paths(self) -> list[str]:
        if self.git:
            return self._git("ls-tree", "-r", "--name-only", self.rev).splitlines()
        return [p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()]

    def read_many(self, paths: list[str]) -> dict[str, str]:
        if not self.git:
            return {p: (self.root / p).read_text(errors="replace") for p in paths}
        spec = "".join(f"{self.rev}:{p}\n" for p in paths).encode()
        out = subprocess.run(["git", "--git-dir", str(self._git_dir()), "cat-file", "--batch"], input=spec,
                             check=True, capture_output=True).stdout
        texts, pos = {}, 0
        for p in paths:
            header_end = out.index(b"\n", pos)
            size = int(out[pos:header_end].split()[2])
            texts[p] = out[header_end + 1:header_end + 1 + size].decode(errors="replace")
            pos = header_end + 1 + size + 1
        return texts


def python_names(text: str, stars: list[str] | None = None) -> set[str]:
    """Public module-level names of a Python file: defs, classes, assignments, imports and `__all__`.

    Relative `from .x import *` modules are appended to `stars` so the caller can add their names.
    """
    tree = ast.parse(text)
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and any(a.name == "*" for a in node.names):
            (stars if stars is not None else []).append(node.module or "")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and isinstance(
                    node.value, (ast.List, ast.Tuple)):
                names.update(e.value for e in node.value.elts if isinstance(e, ast.Constant))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
    return {n for n in names if not n.startswith("_")}


def header_members(text: str) -> set[str]:
    """Method, property and enum names declared in a C++ header (a superset is fine: the test checks spelling)."""
    members = {m for m in METHOD.findall(text) if m not in CPP_KEYWORDS}
    for kind, _, name in VTK_MACRO.findall(text):
        if kind == "Boolean":
            members.update({name + "On", name + "Off"})
        else:
            members.add(kind + name)
    members.update(QT_PROPERTY.findall(text))
    for body in ENUM_BODY.findall(text):
        body = re.sub(r"//[^\n]*|/\*.*?\*/", "", body, flags=re.S)
        members.update(ENUM_ITEM.findall(body.replace(",", ",\n")))
    return members


def build(source: Source) -> dict:
    paths = source.paths()
    py_paths = [p for p in paths if p.startswith(PY_ROOT) and p.endswith(".py") and "/tests/" not in p]
    headers = [p for p in paths if p.startswith(CPP_DIRS) and p.endswith(".h") and "/Testing/" not in p]
    ui_and_scripts = [p for p in paths if p.endswith((".ui", ".py")) and p.startswith(("Base/", "Modules/", "Libs/"))]
    texts = source.read_many(sorted(set(py_paths + headers + ui_and_scripts)))

    python_modules: dict[str, set[str]] = {}
    star_imports: dict[str, list[str]] = {}
    for p in py_paths:
        module = p[len("Base/Python/"):-3].replace("/", ".").removesuffix(".__init__")
        package = module if p.endswith("__init__.py") else module.rpartition(".")[0]
        stars: list[str] = []
        python_modules[module] = python_names(texts[p], stars)
        star_imports[module] = [f"{package}.{s}" for s in stars]
    for module, sources in star_imports.items():
        for src in sources:
            python_modules[module] |= python_modules.get(src, set())
    top = python_modules.setdefault("slicer", set())
    top.update(m.split(".")[1] for m in python_modules if m.count(".") >= 1)
    # Set by the application at start-up (documented in slicer/__init__.py).
    top.update({"app", "mrmlScene", "modules", "moduleNames", "selfTests", "testing"})

    classes: dict[str, dict] = {}
    for p in headers:
        for name, base in EXPORT_CLASS.findall(texts[p]):
            if name.startswith(WRAPPED_PREFIXES) and name not in classes:
                classes[name] = {"base": base, "members": " ".join(sorted(header_members(texts[p])))}
    top.update(classes)

    modules = set()
    for p in paths:
        parts = p.split("/")
        if len(parts) > 3 and parts[0] == "Modules" and parts[1] in ("Loadable", "Scripted", "CLI"):
            modules.add(parts[2].lower())

    qt_names, ctk_names, class_strings = set(), set(), set()
    for p in ui_and_scripts:
        text = texts[p]
        if p.endswith(".py"):
            qt_names.update(QT_NAME.findall(text))
            ctk_names.update(CTK_NAME.findall(text))
            class_strings.update(CLASS_STRING.findall(text))
        else:
            for cls in UI_CLASS.findall(text):
                (qt_names if cls.startswith("Q") else ctk_names if cls.startswith("ctk") else set()).add(cls)

    return {
        **source.describe(),
        "extracted_by": "python scripts/slicer_api_names.py SLICER_GIT_DIR --out Testing/data/slicer_api_names.json",
        "how": "python: public module-level names of Base/Python/slicer/**/*.py (ast); classes: exported C++ classes "
               "in Base/, Libs/, Modules/ headers with Slicer's prefixes, their base and the method/macro/enum names "
               "their header declares (space-separated); modules: lower-cased folder names under "
               "Modules/{Loadable,Scripted,CLI}; "
               "qt/ctk: qt.* / ctk.* names used in Slicer's own Python files and widget classes in its .ui files; "
               "node_class_strings: MRML node class names (e.g. from extensions) Slicer's Python refers to by string.",
        "python_modules": {k: sorted(v) for k, v in sorted(python_modules.items())},
        "modules": sorted(modules),
        "classes": dict(sorted(classes.items())),
        "node_class_strings": sorted(class_strings - set(classes)),
        "qt": sorted(qt_names),
        "ctk": sorted(ctk_names),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slicer", type=Path, help="Slicer git directory (bare or with .git) or a source folder")
    parser.add_argument("--rev", default="HEAD", help="git revision to read (git sources only)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    if not args.slicer.is_dir():
        parser.error(f"{args.slicer} is not a folder: pass a Slicer git directory or source checkout")
    source = Source(args.slicer, args.rev)
    if not source.git and not (args.slicer / PY_ROOT).is_dir():
        parser.error(f"{args.slicer} has no {PY_ROOT}: pass the root of a 3D Slicer source checkout")
    data = build(source)
    args.out.write_text(json.dumps(data, indent=0, separators=(",", ":")) + "\n")
    print(f"wrote {args.out}: {len(data['classes'])} classes, {len(data['qt'])} qt names, {len(data['ctk'])} ctk "
          f"names, {len(data['modules'])} modules from {data.get('slicer_version', args.slicer)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
