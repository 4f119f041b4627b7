"""`medagentseg web` as a command: registered without importing trame, binds 127.0.0.1 unless told, and says what
to install when the `web` extra is missing (no browser needed here; Testing/test_web.py drives the app itself)."""

from __future__ import annotations

import subprocess
import sys

from MedAgentSegLib import cli, web_cli


def test_the_cli_registers_web_without_importing_trame():
    code = ("import sys; from MedAgentSegLib.cli import build_parser; p = build_parser(); "
            "a = p.parse_args(['web']); print(a.host, a.port, any(m.startswith('trame') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["127.0.0.1", "8080", "False"]


def test_without_the_web_extra_it_says_what_to_install(monkeypatch, capsys):
    real = web_cli.importlib.util.find_spec
    monkeypatch.setattr(web_cli.importlib.util, "find_spec",
                        lambda name, *a: None if name == "trame_slicer" else real(name, *a))
    assert cli.main(["web"]) == 2
    err = capsys.readouterr().err
    assert "needs the 'web' extra" in err and "pip install -e '.[web]'" in err and "Traceback" not in err


def test_a_missing_image_or_a_bad_port_is_one_line(capsys, tmp_path):
    assert cli.main(["web", str(tmp_path / "missing.nrrd")]) == 2
    assert "there is no file" in capsys.readouterr().err
    assert cli.main(["web", "--port", "70000"]) == 2
    assert "not a port number" in capsys.readouterr().err
