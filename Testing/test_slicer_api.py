"""The Slicer module may only use names that 3D Slicer has.

The Qt widget cannot run here (no Slicer application), so every `slicer.*`, `qt.*`, `ctk.*` name and every
qMRML / qSlicer / ctk / vtkMRML / vtkSlicer class the module and its .ui use is checked against
Testing/data/slicer_api_names.json, a list extracted from Slicer's source by scripts/slicer_api_names.py.
Qt and CTK classes are checked by class name (and by the full name where Slicer's own code uses it); members
of Slicer's C++ classes are checked against the names their headers (and their Slicer base classes) declare.
"""

from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MedAgentSeg"
NAMES_FILE = Path(__file__).parent / "data" / "slicer_api_names.json"
OWN_MODULE = "medagentseg"  # slicer.modules.<this module> exists once the extension is loaded
CLASS_PREFIXES = ("qMRML", "qSlicer", "ctk", "vtkMRML", "vtkSlicer")
ROOTS = ("slicer", "qt", "ctk")
CLASS_STRING = re.compile(r"(?:vtkMRML|vtkSlicer|qMRML|qSlicer)[A-Za-z0-9]+")


@lru_cache(maxsize=1)
def api() -> dict:
    data = json.loads(NAMES_FILE.read_text())
    data["qt_classes"] = {n.split(".")[0] for n in data["qt"]}
    data["ctk_classes"] = {n.split(".")[0] for n in data["ctk"]}
    return data


def _chain(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def used_names(source: str, filename: str = "<string>") -> list[tuple[int, str]]:
    """(line, dotted name) for each Slicer/Qt/CTK name a Python source uses."""
    tree = ast.parse(source, filename)
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain = _chain(node)
            if chain and (chain[0] in ROOTS or chain[0].startswith(CLASS_PREFIXES)):
                found.append((node.lineno, ".".join(chain)))
        elif isinstance(node, ast.Name) and id(node) not in inner and node.id.startswith(CLASS_PREFIXES):
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ROOTS:
            found.extend((node.lineno, f"{node.module}.{a.name}") for a in node.names if a.name != "*")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and CLASS_STRING.fullmatch(node.value):
            # A class name or a singleton node ID, e.g. AddNewNodeByClass("vtkMRMLSegmentationNode").
            found.append((node.lineno, node.value.removesuffix("Singleton")))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names if a.name.split(".")[0] in ROOTS)
    return sorted(set(found))


def _members(cls: str) -> set[str]:
    """Names declared by a Slicer class and its Slicer base classes."""
    classes, members = api()["classes"], set()
    while cls in classes:
        members.update(classes[cls]["members"].split())
        cls = classes[cls]["base"]
    return members


def _class_ok(parts: list[str]) -> bool:
    """A Slicer C++ class, optionally with one member (deeper parts are values we cannot type)."""
    if parts[0] in api()["classes"]:
        return len(parts) == 1 or parts[1] in _members(parts[0])
    if parts[0].startswith("ctk"):
        return parts[0] in api()["ctk_classes"]
    return False


def is_known(name: str) -> bool:
    parts = name.split(".")
    data = api()
    if parts[0] in ("qt", "ctk"):
        if len(parts) == 1:
            return True
        full = ".".join(parts[1:])
        if full in data[parts[0]]:
            return True
        return parts[1] in data[f"{parts[0]}_classes"]
    if parts[0] != "slicer":
        return _class_ok(parts) or name in data["node_class_strings"]
    if len(parts) == 1:
        return True
    top, rest = parts[1], parts[2:]
    if top == "mrmlScene":
        return _class_ok(["vtkMRMLScene", *rest])
    if top == "app":
        return _class_ok(["qSlicerApplication", *rest])
    if top == "modules":
        if not rest:
            return True
        module_ok = rest[0] in data["modules"] or rest[0] == OWN_MODULE
        return module_ok and (len(rest) == 1 or rest[1] in _members("qSlicerAbstractModule"))
    if top in data["classes"]:
        return _class_ok(parts[1:])
    module = f"slicer.{top}"
    if module in data["python_modules"]:
        return not rest or rest[0] in data["python_modules"][module]
    return top in data["python_modules"]["slicer"]


def unknown_names(source: str, filename: str = "<string>") -> list[str]:
    return [f"{filename}:{line}: {name}" for line, name in used_names(source, filename) if not is_known(name)]


def ui_classes(ui_text: str) -> list[str]:
    """Widget and layout classes a Qt Designer .ui file instantiates."""
    root = ET.fromstring(ui_text)
    return sorted({e.get("class") for e in root.iter() if e.tag in ("widget", "layout") and e.get("class")})


def is_known_ui_class(cls: str) -> bool:
    data = api()
    return cls in data["qt_classes"] or cls in data["ctk_classes"] or cls in data["classes"]


def module_sources() -> list[Path]:
    return [MODULE_DIR / "MedAgentSeg.py", *sorted((MODULE_DIR / "MedAgentSegModuleLib").glob("*.py")),
            *sorted((MODULE_DIR / "MedAgentSegWidgets").glob("*.py"))]


def test_names_file_records_its_slicer_source():
    data = api()
    assert len(data["slicer_commit"]) == 40
    assert data["slicer_version"].startswith("v5.")
    assert "vtkMRMLScene" in data["classes"] and "pip_install" in data["python_modules"]["slicer.util"]


@pytest.mark.parametrize("path", module_sources(), ids=lambda p: p.name)
def test_module_python_uses_only_slicer_api(path):
    assert unknown_names(path.read_text(), str(path.relative_to(REPO))) == []


def test_module_ui_uses_only_known_widgets():
    ui = MODULE_DIR / "Resources" / "UI" / "MedAgentSeg.ui"
    classes = ui_classes(ui.read_text())
    assert "ctkCollapsibleButton" in classes
    assert [c for c in classes if not is_known_ui_class(c)] == []


def test_checker_reports_planted_unknown_names():
    source = (
        "import slicer, qt, ctk\n"
        "from slicer import vtkMRMLNoSuchNode\n"
        "slicer.util.getNode('x')\n"
        "slicer.util.noSuchHelper()\n"
        "slicer.mrmlScene.GetFirstNodeByClass('vtkMRMLScalarVolumeNode')\n"
        "slicer.mrmlScene.NoSuchMethod()\n"
        "slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere\n"
        "slicer.vtkMRMLSegmentationNode.NoSuchEnum\n"
        "qt.QPushButton('ok')\n"
        "qt.QNoSuchWidget()\n"
        "ctk.ctkCollapsibleButton()\n"
        "ctk.ctkNoSuchButton()\n"
        "slicer.modules.sequences.logic()\n"
        "slicer.modules.nosuchmodule.logic()\n"
        "w = qMRMLNoSuchComboBox()\n"
        "slicer.mrmlScene.AddNewNodeByClass('vtkMRMLNoSuchVolumeNode')\n"
    )
    assert unknown_names(source, "planted.py") == [
        "planted.py:2: slicer.vtkMRMLNoSuchNode",
        "planted.py:4: slicer.util.noSuchHelper",
        "planted.py:6: slicer.mrmlScene.NoSuchMethod",
        "planted.py:8: slicer.vtkMRMLSegmentationNode.NoSuchEnum",
        "planted.py:10: qt.QNoSuchWidget",
        "planted.py:12: ctk.ctkNoSuchButton",
        "planted.py:14: slicer.modules.nosuchmodule.logic",
        "planted.py:15: qMRMLNoSuchComboBox",
        "planted.py:16: vtkMRMLNoSuchVolumeNode",
    ]


def test_ui_checker_reports_planted_unknown_widget():
    ui = ('<ui version="4.0"><widget class="qMRMLWidget" name="w"><layout class="QVBoxLayout">'
          '<item><widget class="qMRMLNoSuchSelector" name="s"/></item></layout></widget></ui>')
    assert [c for c in ui_classes(ui) if not is_known_ui_class(c)] == ["qMRMLNoSuchSelector"]
