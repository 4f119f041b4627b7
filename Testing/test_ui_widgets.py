"""The Qt wiring of the Slicer module: every widget MedAgentSeg.py uses exists in the Qt Designer file, its parameters
take their choices and defaults from the tested logic, and the build lists every module file.

Static checks, because no Slicer application runs here (no Qt, no Slicer): the module file is parsed with ``ast``
(its structure, not its text), the .ui file as XML for widget names and parameter-node bindings.
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


def _tree() -> ast.Module:
    return ast.parse(MODULE.read_text(encoding="utf-8"))


def _class(name: str) -> ast.ClassDef:
    return next(n for n in ast.walk(_tree()) if isinstance(n, ast.ClassDef) and n.name == name)


def parameters() -> dict[str, ast.AnnAssign]:
    """The parameter node's fields: name -> its annotated assignment."""
    return {n.target.id: n for n in _class("MedAgentSegParameterNode").body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def _calls(node: ast.AST) -> set[str]:
    return {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def bound_parameters() -> set[str]:
    root = ET.parse(UI).getroot()
    return {p.find("string").text for p in root.iter("property") if p.get("name") == "SlicerParameterName"}


def test_parameter_bindings_name_real_parameters():
    bound, declared = bound_parameters(), set(parameters())
    assert bound and bound <= declared, f"unknown parameters bound in the .ui: {sorted(bound - declared)}"


def test_engine_and_policy_choices_and_defaults_come_from_the_logic():
    """The logic's tested defaults reach the panel: the engine field is a Choice of ENGINES (= engine_choices())
    defaulting to default_engine(); the policy field a Choice of POLICIES (POLICY_CHOICES) defaulting to
    default_policy()."""
    tree = _tree()
    assigned = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}
    assert _calls(assigned["ENGINES"]) == {"engine_choices"}
    assert _names(assigned["POLICIES"]) >= {"POLICY_CHOICES"}
    assert _calls(assigned["DEFAULT_POLICY"]) == {"default_policy"}
    fields = parameters()
    assert "Choice" in _calls(fields["engine"].annotation) and "ENGINES" in _names(fields["engine"].annotation)
    assert _calls(fields["engine"].value) == {"default_engine"}
    assert "POLICIES" in _names(fields["policy"].annotation) and _names(fields["policy"].value) == {"DEFAULT_POLICY"}


def test_the_sam_checkpoint_field_reaches_the_engine_options():
    """'SAM checkpoint' is a bound line edit whose value the widget passes as the engine's checkpoint option."""
    assert "samCheckpoint" in parameters() and "samCheckpoint" in bound_parameters()
    assert ui_widgets().get("samCheckpointLineEdit") == "QLineEdit"
    passed = [d for d in ast.walk(_tree()) if isinstance(d, ast.Dict)
              for k, v in zip(d.keys, d.values) if isinstance(k, ast.Constant) and k.value == "checkpoint"
              and any(isinstance(a, ast.Attribute) and a.attr == "samCheckpoint" for a in ast.walk(v))]
    assert passed, "the widget never passes samCheckpoint as the engine's checkpoint"


def test_the_self_test_uses_the_bundled_sample_and_downloads_nothing():
    """Slicer's Reload and Test runs MedAgentSegTest: on the bundled sample (no SampleData download, nothing from
    ../shared), after checking the dependencies; CTest does not register it (it needs a Slicer application)."""
    test = _class("MedAgentSegTest")
    names = _names(test) | {a.attr for a in ast.walk(test) if isinstance(a, ast.Attribute)}
    strings = {c.value for c in ast.walk(test) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    assert "SampleData" not in names and not any("shared" in t for t in strings)
    assert any("lits117_liver_ct.nrrd" in t for t in strings) and "missing" in names
    assert "slicer_add_python_unittest" not in (MODULE_DIR / "CMakeLists.txt").read_text()
    assert re.search(r"foreach\(_dir [^)]*Samples", (REPO / "CMakeLists.txt").read_text())


def test_module_cmakelists_lists_every_module_file():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "MedAgentSeg")
    files = [p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*")
             if p.is_file() and p.suffix in {".py", ".ui", ".png"} and "__pycache__" not in p.parts]
    unlisted = sorted(f for f in files if f not in cmake)
    assert not unlisted, f"files missing from MedAgentSeg/CMakeLists.txt: {unlisted}"
