"""Every widget MedAgentSeg.py uses exists in the Qt Designer file, and the build lists every module file.

Static checks (no Qt, no Slicer): the module file is parsed with ``ast`` for ``self.ui.<name>`` attribute uses and
``SHORTCUTS`` keys; the .ui file is parsed as XML for widget names and parameter-node bindings.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODULE_DIR = REPO / "MedAgentSeg"
MODULE = MODULE_DIR / "MedAgentSeg.py"
UI = MODULE_DIR / "Resources" / "UI" / "MedAgentSeg.ui"


def ui_widgets() -> dict[str, str]:
    root = ET.parse(UI).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def _uses_getattr_ui(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "getattr" and n.args
               and isinstance(n.args[0], ast.Attribute) and n.args[0].attr == "ui" for n in ast.walk(node))


def used_ui_names() -> set[str]:
    """self.ui.<name> uses, SHORTCUTS keys, and names looped over with getattr(self.ui, name)."""
    tree = ast.parse(MODULE.read_text())
    names = set()
    for node in ast.walk(tree):
        owner = node.value if isinstance(node, ast.Attribute) else None
        if isinstance(owner, ast.Attribute) and owner.attr == "ui" and isinstance(owner.value, ast.Name) \
                and owner.value.id == "self":
            names.add(node.attr)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "SHORTCUTS" for t in node.targets):
            names.update(k.value for k in node.value.keys)
        if isinstance(node, ast.For) and isinstance(node.iter, ast.Tuple) and _uses_getattr_ui(node):
            names.update(e.value for e in node.iter.elts if isinstance(e, ast.Constant))
    return names


def test_every_ui_widget_used_in_python_exists_in_the_ui_file():
    widgets = ui_widgets()
    used = used_ui_names()
    assert len(used) >= 10, f"the parser found too few self.ui uses ({sorted(used)}); is the test still reading them?"
    missing = sorted(used - set(widgets))
    assert not missing, f"MedAgentSeg.py uses widgets missing from {UI.name}: {missing}"


def test_panel_has_every_control_the_issue_asks_for():
    widgets = ui_widgets()
    for name, cls in {"inputVolumeSelector": "qMRMLNodeComboBox", "outputSegmentationSelector": "qMRMLNodeComboBox",
                      "segmentNameLineEdit": "QLineEdit", "engineComboBox": "QComboBox", "policyComboBox": "QComboBox",
                      "chatView": "QTextBrowser", "requestLineEdit": "QLineEdit", "runButton": "QPushButton",
                      "stepButton": "QPushButton", "stopButton": "QPushButton", "acceptButton": "QPushButton",
                      "rejectButton": "QPushButton", "undoButton": "QPushButton", "propagateButton": "QPushButton",
                      "deviceWarningLabel": "QLabel", "dependencyLabel": "QLabel"}.items():
        assert widgets.get(name) == cls, f"{name} should be a {cls}, found {widgets.get(name)}"


def test_parameter_bindings_name_real_parameters():
    root = ET.parse(UI).getroot()
    bound = {p.find("string").text for p in root.iter("property") if p.get("name") == "SlicerParameterName"}
    source = MODULE.read_text()
    block = source[source.index("class MedAgentSegParameterNode"):source.index("# -- widget")]
    declared = set(re.findall(r"^    (\w+): ", block, flags=re.M))
    assert bound and bound <= declared, f"unknown parameters bound in the .ui: {sorted(bound - declared)}"


def test_module_cmakelists_lists_every_module_file():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "MedAgentSeg")
    files = [p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*")
             if p.is_file() and p.suffix in {".py", ".ui", ".png"} and "__pycache__" not in p.parts]
    unlisted = sorted(f for f in files if f not in cmake)
    assert not unlisted, f"files missing from MedAgentSeg/CMakeLists.txt: {unlisted}"
