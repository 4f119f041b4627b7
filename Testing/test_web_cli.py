"""`medagentseg web` as a command: registered without importing trame, binds 127.0.0.1 unless told, and says what
to install when the `web` extra is missing (no browser needed here; Testing/test_web.py drives the app itself)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from MedAgentSegLib import cli
from MedAgentSegWeb import cli as web_cli


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
    assert cli.main(["web", "--labeling", str(tmp_path)]) == 2
    assert "has no manifest.jsonl" in capsys.readouterr().err


def test_a_path_from_the_page_must_resolve_inside_a_served_folder(tmp_path, monkeypatch):
    from MedAgentSegWeb.files import OutsideError, within

    served = tmp_path / "served"
    (served / "sub").mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    (served / "link").symlink_to(tmp_path / "secret")
    assert within(served / "sub" / "a.nrrd", [served], "The path") == (served / "sub" / "a.nrrd").resolve()
    for bad in (served / ".." / "secret", served / "link", "/etc/hostname", tmp_path):
        with pytest.raises(OutsideError, match="outside the folders this server serves.*--data-dir"):
            within(bad, [served], "The path")
