"""`medagentseg label --ray ADDRESS` (issue #19): the cases run on the actors of a local Ray instance that this module
starts and stops (one for all its tests: Ray takes seconds to start).

The first test runs the real default engine in the actors (nothing replaced: they import MedAgentSegLib as a remote
node would); the others give the actors the model-free `fakes.BoxEngine`, sent to them by value with this module
(the actors are not forked from the test, so a monkeypatch would not reach them).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import slicerio
from fakes import BOXES, BoxEngine, box_cases

import MedAgentSegLib.engines as engines
from MedAgentSegLib.cli import main
from MedAgentSegLib.labeling import batch, ray_runner
from MedAgentSegLib.labeling.manifest import read_manifest


@pytest.fixture(scope="module")
def head():
    """The address of a Ray head started for this module (2 CPUs, its own ports and temp folder), stopped after."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' (scripts/setup.sh does)")
    import fakes

    for module in (fakes, sys.modules[__name__]):  # the actors cannot import Testing/: these travel by value
        ray.cloudpickle.register_pickle_by_value(module)
    with ray_runner.local_head(cpus=2) as address:
        yield address


@pytest.fixture
def cases(tmp_path) -> tuple[Path, Path]:
    """(folder of 3 PNG cases, prompts file with a box for each)."""
    return box_cases(tmp_path)


def _label(src: Path, prompts: Path, out: Path, *extra: str) -> int:
    return main(["label", str(src), "--target", "polyp", "--prompts", str(prompts), "--out", str(out), *extra])


def _mask(out: Path, cid: str) -> np.ndarray:
    seg = slicerio.read_segmentation(str(out / "cases" / cid / "original.seg.nrrd"))
    return np.asarray(seg["voxels"])[:, :, 0].T > 0


def _statuses(out: Path) -> dict[str, str]:
    return {cid: r["status"] for cid, r in read_manifest(out).items()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _box_label(task: dict) -> dict:
    """Runs in an actor: label_case with the fake engine; a case named in the file `die` beside --out kills its
    actor's process, one named in `raise` raises. Each case done is added to done.log there."""
    engines.create_engine = lambda *a, **k: BoxEngine()
    folder = Path(task["out"]).parent
    if task["case_id"] in (folder / "die").read_text().split():
        os._exit(1)
    if task["case_id"] in (folder / "raise").read_text().split():
        raise RuntimeError("a bug outside the case (injected)")
    rec = batch.label_case(task)
    with open(folder / "done.log", "a") as fh:
        fh.write(task["case_id"] + "\n")
    return rec


def test_ray_gives_the_same_manifest_as_one_worker(head, cases, tmp_path):
    pytest.importorskip("torch", reason="the real engine needs torch: pip install -e '.[engine]'")
    src, prompts = cases
    (src / "broken.png").write_bytes(b"not a png at all")
    one, on_ray = tmp_path / "one", tmp_path / "ray"
    assert _label(src, prompts, one) == 0
    assert _label(src, prompts, on_ray, "--ray", head) == 0
    ref, got = read_manifest(one), read_manifest(on_ray)
    assert list(got) == list(ref) == ["broken", "c0", "c1", "c2"]  # the input's order, not the finishing order
    assert _statuses(on_ray) == _statuses(one) and got["broken"]["status"] == "failed"
    assert "broken.png" in got["broken"]["reason"]
    for cid in BOXES:
        for key in ("engine", "encoder", "turns", "policy", "mode", "versions", "outputs"):
            assert got[cid][key] == ref[cid][key], (cid, key)
        assert np.array_equal(_mask(on_ray, cid), _mask(one, cid)) and _mask(one, cid).any()
    assert not [p for p in (on_ray / "cases").iterdir() if p.name.startswith(".")]


def test_an_actor_that_dies_is_recorded_failed_and_the_batch_goes_on(head, cases, tmp_path, monkeypatch):
    src, prompts = cases
    (tmp_path / "die").write_text("c1")
    (tmp_path / "raise").write_text("")
    monkeypatch.setattr(ray_runner, "label_case", _box_label)
    out = tmp_path / "out"
    assert _label(src, prompts, out, "--ray", head, "--workers", "1") == 0
    records = read_manifest(out)
    assert _statuses(out) == {"c0": "pre-labelled", "c1": "failed", "c2": "pre-labelled"}
    assert "Ray actor died" in records["c1"]["reason"]
    assert not (out / "cases" / "c1").exists()
    x1, y1, x2, y2 = BOXES["c2"]
    assert _mask(out, "c2").sum() == (x2 - x1 + 1) * (y2 - y1 + 1)  # done by the actor that replaced the dead one
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 3


def test_an_error_raised_in_an_actor_fails_its_case_and_the_actor_goes_on(head, cases, tmp_path, monkeypatch):
    src, prompts = cases
    (tmp_path / "die").write_text("")
    (tmp_path / "raise").write_text("c0")
    monkeypatch.setattr(ray_runner, "label_case", _box_label)
    out = tmp_path / "out"
    assert _label(src, prompts, out, "--ray", head, "--workers", "1") == 0
    records = read_manifest(out)
    assert _statuses(out) == {"c0": "failed", "c1": "pre-labelled", "c2": "pre-labelled"}
    assert "a bug outside the case (injected)" in records["c0"]["reason"]


def test_interrupted_ray_batch_resumes_without_doing_a_case_twice(head, cases, tmp_path, monkeypatch):
    src, prompts = cases
    (tmp_path / "die").write_text("")
    (tmp_path / "raise").write_text("")
    monkeypatch.setattr(ray_runner, "label_case", _box_label)
    out = tmp_path / "out"

    def stop_after_first(line: str) -> None:
        if line.startswith("[1/"):
            raise KeyboardInterrupt  # as a Ctrl+C right after the first case was recorded

    with pytest.raises(KeyboardInterrupt):
        batch.run_batch(src, "polyp", out, batch.read_prompts(prompts), workers=2, ray=head, log=stop_after_first)
    assert sorted(_statuses(out).values()).count("pre-labelled") == 1  # the case in flight on the other actor
    batch.run_batch(src, "polyp", out, batch.read_prompts(prompts), workers=2, ray=head, log=lambda line: None)
    assert _statuses(out) == {cid: "pre-labelled" for cid in BOXES}
    done = (tmp_path / "done.log").read_text().split()
    assert len(done) == len(set(done))  # none was done again (one killed in flight may be redone, never twice)
    for cid, (x1, y1, x2, y2) in BOXES.items():
        assert _mask(out, cid).sum() == (x2 - x1 + 1) * (y2 - y1 + 1)
    assert not [p for p in (out / "cases").iterdir() if p.name.startswith(".")]


def test_a_dead_address_is_one_clear_line_and_nothing_is_written(cases, tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    src, prompts = cases
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    out = tmp_path / "out"
    assert _label(src, prompts, out, "--ray", address) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and address in err and "ray start --head" in err
    assert not out.exists()
    out.mkdir()  # an earlier run's manifest is left byte for byte
    (out / "manifest.jsonl").write_text('{"case_id": "c0", "status": "pending"}\n')
    assert _label(src, prompts, out, "--ray", address) == 2
    assert (out / "manifest.jsonl").read_text() == '{"case_id": "c0", "status": "pending"}\n'
    assert _label(src, prompts, out, "--ray", "no-port-here") == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_without_ray_installed_the_message_names_the_extra(cases, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as when it is not installed
    src, prompts = cases
    assert _label(src, prompts, tmp_path / "out", "--ray", "auto") == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[ray]'" in err and "--workers" in err
    assert not (tmp_path / "out").exists()
