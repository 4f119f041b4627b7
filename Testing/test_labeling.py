"""`medagentseg label` / `export` (issue #19): a manifest of every case, resumable, failures recorded, workers, export.

The engine is the model-free `fakes.BoxEngine` (the mask is the prompt's box), given to `segment`'s code path through
create_engine; `--workers 2` forks, so the worker processes get it too.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from fakes import BOXES, BoxEngine, box_cases, gray_image
from PIL import Image

import MedAgentSegLib.engines as engines
from MedAgentSegLib.cli import main
from MedAgentSegLib.labeling import batch, manifest
from MedAgentSegLib.labeling.manifest import read_manifest


@pytest.fixture
def engine(monkeypatch):
    eng = BoxEngine()
    monkeypatch.setattr(engines, "create_engine", lambda *a, **k: eng)
    return eng


@pytest.fixture
def cases(tmp_path) -> tuple[Path, Path]:
    """(folder of 3 PNG cases, prompts file with a box for each)."""
    return box_cases(tmp_path)


def _label(src: Path, prompts: Path | None, out: Path, *extra: str) -> int:
    argv = ["label", str(src), "--target", "polyp", "--out", str(out), *extra]
    return main(argv + (["--prompts", str(prompts)] if prompts else []))


def _mask(out: Path, cid: str) -> np.ndarray:
    seg = slicerio.read_segmentation(str(out / "cases" / cid / "original.seg.nrrd"))
    return np.asarray(seg["voxels"])[:, :, 0].T > 0


def _statuses(out: Path) -> dict[str, str]:
    return {cid: r["status"] for cid, r in read_manifest(out).items()}


def test_prompts_file_prelabels_every_case(engine, cases, tmp_path):
    src, prompts = cases
    out = tmp_path / "out"
    assert _label(src, prompts, out) == 0
    records = read_manifest(out)
    assert list(records) == ["c0", "c1", "c2"]
    for cid, rec in records.items():
        assert rec["status"] == "pre-labelled" and rec["prompt"] == "prompts file" and rec["engine"] == "fake-box"
        assert rec["turns"] >= 1 and rec["seconds"] is not None and rec["labelled_at"]
        assert rec["reviewer"] is None and rec["reviewed_at"] is None and rec["outputs"]["final"] is None
        assert set(rec["versions"]) == {"engine_weights", "policy", "locator"}
        for key in ("original", "trajectory"):
            assert (out / rec["outputs"][key]).is_file()
        x1, y1, x2, y2 = BOXES[cid]
        expected = np.zeros((48, 64), bool)
        expected[y1:y2 + 1, x1:x2 + 1] = True
        assert np.array_equal(_mask(out, cid), expected)
        traj = json.loads((out / rec["outputs"]["trajectory"]).read_text())
        assert traj["turns"][0]["action"]["name"] == "add_bbox"
    assert not list((out / "cases").glob(".*"))  # no work folder left


def test_unreadable_case_is_recorded_failed_and_the_rest_finish(engine, cases, tmp_path):
    src, prompts = cases
    (src / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    assert _label(src, prompts, out) == 0
    records = read_manifest(out)
    assert records["broken"]["status"] == "failed" and "broken.png" in records["broken"]["reason"]
    assert not (out / "cases" / "broken").exists()
    assert [records[c]["status"] for c in BOXES] == ["pre-labelled"] * 3


def test_needs_prompt_is_not_failed_and_a_later_prompt_is_used(engine, cases, tmp_path, monkeypatch):
    src, prompts = cases
    out = tmp_path / "out"

    from MedAgentSegLib.agent.locator import Location
    from MedAgentSegLib.pipeline import start as first_module

    class Unsure:  # a locator that knows polyps and is never sure enough
        def knows(self, concept):
            return True

        def locate(self, engine, rgb, concept):
            return Location(concept, (1.0, 1.0, 5.0, 5.0), 0.1)

        def asks(self, loc):
            return True

        def threshold_for(self, concept):
            return 0.9

    monkeypatch.setattr(first_module, "_shipped_locator", Unsure)
    assert _label(src, None, out) == 0
    assert set(_statuses(out).values()) == {"needs prompt"}
    assert "not sure" in read_manifest(out)["c0"]["reason"]
    assert _label(src, prompts, out) == 0  # the prompts file now has a box for each: done with it
    assert set(_statuses(out).values()) == {"pre-labelled"}


def test_rerun_skips_done_cases(engine, cases, tmp_path):
    src, prompts = cases
    (src / "broken.png").write_bytes(b"nope")
    out = tmp_path / "out"
    assert _label(src, prompts, out) == 0
    calls = engine.predicts
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "cases").rglob("*") if p.is_file()}
    manifest = (out / "manifest.jsonl").read_text()
    assert _label(src, prompts, out) == 0
    assert engine.predicts == calls  # the engine was not called again, not even for the failed case
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "cases").rglob("*") if p.is_file()} == before
    assert (out / "manifest.jsonl").read_text() == manifest
    assert _label(src, prompts, out, "--retry-failed") == 0  # asked for: the failed case is tried again
    assert _statuses(out)["broken"] == "failed" and engine.predicts == calls


def test_interrupted_batch_resumes_without_doing_a_case_twice(engine, cases, tmp_path, monkeypatch):
    src, prompts = cases
    out = tmp_path / "out"
    done: list[str] = []
    real = batch.label_case

    def interrupt_second(task):
        if task["case_id"] == "c1" and "c1-interrupted" not in done:
            done.append("c1-interrupted")
            raise KeyboardInterrupt
        done.append(task["case_id"])
        return real(task)

    monkeypatch.setattr(batch, "label_case", interrupt_second)
    assert _label(src, prompts, out) == 130
    assert _statuses(out) == {"c0": "pre-labelled", "c1": "pending", "c2": "pending"}
    assert _label(src, prompts, out) == 0
    assert done == ["c0", "c1-interrupted", "c1", "c2"]
    assert set(_statuses(out).values()) == {"pre-labelled"}


def test_killed_between_outputs_and_manifest_the_case_is_taken_over(engine, cases, tmp_path, monkeypatch):
    """A kill after a case's folder was moved in but before the manifest said so: the re-run adopts the case."""
    src, prompts = cases
    out = tmp_path / "out"
    real = manifest.write_manifest
    writes = []

    def killed_on_first_record(folder, records):
        writes.append(1)
        if len(writes) == 2:  # 1: all pending; 2: after c0
            raise KeyboardInterrupt
        return real(folder, records)

    monkeypatch.setattr(manifest, "write_manifest", killed_on_first_record)
    assert _label(src, prompts, out) == 130
    assert _statuses(out)["c0"] == "pending" and (out / "cases" / "c0" / "record.json").is_file()
    monkeypatch.setattr(manifest, "write_manifest", real)
    calls = engine.predicts
    c0 = (out / "cases" / "c0" / "original.seg.nrrd").stat().st_mtime_ns
    assert _label(src, prompts, out) == 0
    assert set(_statuses(out).values()) == {"pre-labelled"}
    assert (out / "cases" / "c0" / "original.seg.nrrd").stat().st_mtime_ns == c0
    assert engine.predicts - calls == 2 * calls  # c1 and c2 only, each as many calls as c0 took


def test_two_workers_give_the_same_manifest(engine, cases, tmp_path):
    if os.name != "posix":
        pytest.skip("the fake engine reaches worker processes by fork")
    src, prompts = cases
    (src / "broken.png").write_bytes(b"nope")
    one, two = tmp_path / "one", tmp_path / "two"
    assert _label(src, prompts, one) == 0
    assert _label(src, prompts, two, "--workers", "2") == 0
    assert _statuses(two) == _statuses(one)
    assert list(read_manifest(two)) == list(read_manifest(one))  # the case order, not the finishing order
    for cid in BOXES:
        assert np.array_equal(_mask(two, cid), _mask(one, cid))


def test_dataset_json_input_and_duplicate_ids(engine, cases, tmp_path, capsys):
    src, prompts = cases
    (src / "dataset.json").write_text(json.dumps({"cases": [{"id": "c0", "image": "c0.png"},
                                                            {"id": "c1", "image": "c1.png"},
                                                            {"id": "c1", "image": "c2.png"}]}))
    out = tmp_path / "out"
    assert _label(src / "dataset.json", prompts, out) == 0
    assert _statuses(out) == {"c0": "pre-labelled", "c1": "pre-labelled"}
    err = capsys.readouterr().err
    assert "duplicate case id 'c1'" in err and "--prompts names 1 case(s) not in the input: c2" in err


def test_manifest_edited_into_nonsense_is_refused_untouched(engine, cases, tmp_path, capsys):
    src, prompts = cases
    out = tmp_path / "out"
    assert _label(src, prompts, out) == 0
    path = out / "manifest.jsonl"
    broken = path.read_text() + "{not json\n"
    path.write_text(broken)
    assert _label(src, prompts, out) == 2
    assert "line 4 is not a manifest record" in capsys.readouterr().err
    assert path.read_text() == broken


def test_export_nifti_keeps_the_image_geometry_and_csv_has_the_columns(engine, cases, tmp_path):
    src, prompts = cases
    rng = np.random.default_rng(0)
    vol = sitk.GetImageFromArray(rng.integers(0, 1000, (6, 40, 50)).astype(np.int16))
    vol.SetSpacing((0.8, 0.7, 2.5))
    vol.SetOrigin((-10.0, 20.0, 5.0))
    vol.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(vol, str(src / "vol.nrrd"))
    with prompts.open("a") as fh:
        fh.write(json.dumps({"case": "vol", "box": [10, 10, 30, 25], "slice": 3}) + "\n")
    out = tmp_path / "out"
    assert _label(src, prompts, out) == 0
    rec = read_manifest(out)["vol"]
    assert rec["status"] == "pre-labelled" and rec["mode"] == "3d" and rec["slice"] == 3
    assert (out / rec["outputs"]["propagation"]).is_file()

    assert main(["export", str(out), "--format", "nifti"]) == 0
    lab = sitk.ReadImage(str(out / "export" / "nifti" / "vol.nii.gz"))
    assert lab.GetSize() == vol.GetSize()
    assert np.allclose(lab.GetSpacing(), vol.GetSpacing()) and np.allclose(lab.GetOrigin(), vol.GetOrigin(), atol=1e-4)
    assert np.allclose(lab.GetDirection(), vol.GetDirection(), atol=1e-6)
    arr = sitk.GetArrayFromImage(lab)
    assert set(np.unique(arr)) == {0, 1} and arr[3, 10:26, 10:31].all() and not arr[3, :10].any()
    flat = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "export" / "nifti" / "c0.nii.gz")))
    assert flat.shape == (48, 64) and np.array_equal(flat > 0, _mask(out, "c0"))

    assert main(["export", str(out), "--format", "seg.nrrd"]) == 0
    assert (out / "export" / "seg.nrrd" / "c1.seg.nrrd").read_bytes() == \
        (out / "cases" / "c1" / "original.seg.nrrd").read_bytes()

    assert main(["export", str(out), "--format", "dicom-seg"]) == 0  # no DICOM source here: each case left out
    assert not list((out / "export" / "dicom-seg").iterdir())

    assert main(["export", str(out), "--format", "csv"]) == 0
    with (out / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {"case_id", "status", "turns", "seconds"} <= set(rows[0])
    assert [(r["case_id"], r["status"]) for r in rows] == [(c, "pre-labelled") for c in (*BOXES, "vol")]


def test_a_second_label_on_the_same_folder_is_refused(engine, cases, tmp_path, capsys):
    src, prompts = cases
    out = tmp_path / "out"
    out.mkdir()
    held = batch._lock(out)  # another `label` running on this folder
    try:
        assert _label(src, prompts, out) == 2
        assert "another `medagentseg label` is writing" in capsys.readouterr().err
        assert not (out / "manifest.jsonl").exists() and engine.predicts == 0
    finally:
        held.close()
    assert _label(src, prompts, out) == 0


def test_dicom_series_folder_is_one_volume_case_and_exports_dicom_seg(engine, tmp_path):
    rng = np.random.default_rng(1)
    vol = sitk.GetImageFromArray(rng.integers(-1000, 1000, (5, 32, 40)).astype(np.int16))
    vol.SetSpacing((0.9, 0.9, 3.0))
    src = tmp_path / "in"
    folder = src / "patient1"
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(vol.GetDepth()):
        sl = vol[:, :, k]
        sl.SetMetaData("0008|0060", "CT")
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.7")
        sl.SetMetaData("0020|0032", "\\".join(map(str, vol.TransformIndexToPhysicalPoint((0, 0, k)))))
        sl.SetMetaData("0020|0013", str(k))
        sl.SetMetaData("0020|000d", "1.2.826.0.1.3680043.2.1125.8")  # one study and frame of reference, as
        sl.SetMetaData("0020|0052", "1.2.826.0.1.3680043.2.1125.9")  # a scanner writes them (DICOM SEG needs it)
        sl.SetMetaData("0018|0050", "3.0")
        sl.SetMetaData("0010|0020", "P1")
        writer.SetFileName(str(folder / f"{k}.dcm"))
        writer.Execute(sl)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"case": "patient1", "box": [5, 5, 20, 15], "slice": 2}) + "\n")
    out = tmp_path / "out"
    assert main(["label", str(src), "--target", "liver", "--prompts", str(prompts), "--out", str(out)]) == 0
    rec = read_manifest(out)["patient1"]
    assert rec["status"] == "pre-labelled" and rec["mode"] == "3d" and rec["image"] == str(folder.resolve())
    assert main(["export", str(out), "--format", "nifti"]) == 0
    lab = sitk.ReadImage(str(out / "export" / "nifti" / "patient1.nii.gz"))
    assert lab.GetSize() == vol.GetSize() and np.allclose(lab.GetSpacing(), vol.GetSpacing())
    assert sitk.GetArrayFromImage(lab)[2, 5:16, 5:21].all()

    hd = pytest.importorskip("highdicom", reason="DICOM SEG export needs highdicom: pip install -e '.[label]'")
    import pydicom

    assert main(["export", str(out), "--format", "dicom-seg"]) == 0
    seg = hd.seg.segread(str(out / "export" / "dicom-seg" / "patient1.dcm"))
    desc = seg.get_segment_description(1)
    assert (desc.segmented_property_category.value, desc.segmented_property_category.scheme_designator) == \
        ("123037004", "SCT")  # Anatomical Structure
    assert (desc.segmented_property_type.value, desc.segmented_property_type.meaning) == ("10200004", "Liver")
    assert desc.algorithm_identification[0].AlgorithmName == "MedAgentSeg agent"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.826.0.1.3680043.2.1125.7"
    sources = [pydicom.dcmread(folder / f"{k}.dcm") for k in range(vol.GetDepth())]
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    pixels = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in sources], segment_numbers=[1])
    assert np.array_equal(pixels[..., 0] > 0, sitk.GetArrayFromImage(lab) > 0)  # each slice on its source image


def test_another_target_in_the_same_folder_is_refused(engine, cases, tmp_path, capsys):
    src, prompts = cases
    out = tmp_path / "out"
    assert _label(src, prompts, out) == 0
    manifest = (out / "manifest.jsonl").read_text()
    assert main(["label", str(src), "--target", "liver", "--prompts", str(prompts), "--out", str(out)]) == 2
    assert "holds pre-labels of polyp, not liver" in capsys.readouterr().err
    assert (out / "manifest.jsonl").read_text() == manifest


KILLABLE = """
import sys, time
sys.path.insert(0, {testing!r})
from fakes import BoxEngine
import MedAgentSegLib.engines as engines
from MedAgentSegLib.labeling import batch

class Slow(BoxEngine):
    def predict(self, *a, **k):
        time.sleep(0.3)
        return super().predict(*a, **k)

engines.create_engine = lambda *a, **k: Slow()
real = batch.label_case

def logged(task):
    rec = real(task)
    with open({log!r}, "a") as fh:
        fh.write(task["case_id"] + "\\n")
    return rec

batch.label_case = logged
from MedAgentSegLib.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_at_random_points_then_resumed_matches_an_uninterrupted_run(engine, tmp_path):
    """kill -9 five times at random points, then the same command: every case once, the same masks, none redone."""
    import random
    import subprocess
    import sys
    import time

    src = tmp_path / "in"
    src.mkdir()
    boxes = {f"k{i}": [i, 2, 20 + 3 * i, 30] for i in range(8)}
    for i, cid in enumerate(boxes):
        Image.fromarray(gray_image(seed=10 + i)).save(src / f"{cid}.png")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"case": c, "box": b}) + "\n" for c, b in boxes.items()))
    ref = tmp_path / "ref"
    assert _label(src, prompts, ref) == 0
    script = tmp_path / "killable.py"
    log = tmp_path / "done.log"
    script.write_text(KILLABLE.format(testing=str(Path(__file__).resolve().parent), log=str(log)))
    out = tmp_path / "out"
    argv = [sys.executable, str(script), "label", str(src), "--target", "polyp", "--prompts", str(prompts),
            "--out", str(out)]
    rng = random.Random(0)
    kills = []
    for _ in range(5):  # each run is killed after 0 or 1 more cases finished, at a random moment of the next one
        done = len(log.read_text().split()) if log.exists() else 0
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wanted, waited = done + rng.randint(0, 1), 0.0
        while (len(log.read_text().split()) if log.exists() else 0) < wanted and waited < 60:
            time.sleep(0.02)
            waited += 0.02
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait()
        kills.append(len(log.read_text().split()) if log.exists() else 0)
    assert kills[-1] < len(boxes)  # the killed runs left work for the last one
    assert subprocess.run(argv, capture_output=True).returncode == 0
    records = read_manifest(out)
    assert list(records) == list(boxes) and set(_statuses(out).values()) == {"pre-labelled"}
    assert len((out / "manifest.jsonl").read_text().splitlines()) == len(boxes)
    for cid in boxes:
        assert np.array_equal(_mask(out, cid), _mask(ref, cid))
    finished = log.read_text().split()
    assert sorted(finished) == sorted(boxes)  # each case finished once: none was done again after it was done
    assert not [p for p in (out / "cases").iterdir() if p.name.startswith(".")]
