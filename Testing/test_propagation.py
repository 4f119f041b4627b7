"""3D propagation: both ways from the start slice, stops at the structure's ends, keeps the prompt's 3D component,
replays bit for bit, cancels cleanly, refuses what it cannot do; the CLI writes the whole structure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedAgentSegLib import rle
from MedAgentSegLib.engines.base import Engine, Prediction
from MedAgentSegLib.propagation import PropagationConfig, PropagationError, propagate, replay_propagation, repropagate


class ThresholdEngine(Engine):
    """Fake engine: bright pixels (> 128) inside the box; score 0.9 when it finds some, else 0.1."""

    name = "threshold-fake"

    def __init__(self):
        self.calls = 0

    def set_image(self, image):
        self.image = np.asarray(image)[..., 0]

    def predict(self, prompts, prev_logits=None):
        self.calls += 1
        x1, y1, x2, y2 = (int(round(v)) for v in prompts.box)
        m = np.zeros(self.image.shape, bool)
        m[y1:y2 + 1, x1:x2 + 1] = self.image[y1:y2 + 1, x1:x2 + 1] > 128
        return Prediction(m, np.full((1, 256, 256), 1.0 if m.any() else -1.0, np.float32), 0.9 if m.any() else 0.1)


def ball_volume() -> tuple[np.ndarray, np.ndarray]:
    """(K, J, I) uint8 volume with a ball over slices 5..15 (one voxel on 4 and 16) and, inside the ball's box on
    slices 9..11 but not touching it, a small separate bright blob."""
    k, j, i = np.mgrid[:22, :40, :40]
    ball = (k - 10) ** 2 / 36 + ((j - 20) ** 2 + (i - 18) ** 2) / 100 <= 1
    vol = np.full(ball.shape, 20, np.uint8)
    vol[ball] = 200
    vol[9:12, 6:9, 4:7] = 200
    return vol, ball


def test_propagates_both_ways_stops_at_the_ends_and_keeps_the_prompted_component():
    vol, ball = ball_volume()
    res = propagate(ThresholdEngine(), vol, 10, ball[10], None, "axial", "gray",
                    config=PropagationConfig(margin=0.2, min_grow=3, patience=2))
    assert res.slices == list(range(5, 16))  # single-voxel ends are below min_area: past the structure's end
    assert not res.mask[9:12, 6:9, 4:7].any()  # found in the boxes, but not connected to the prompted ball
    dice = 2 * (res.mask & ball).sum() / (res.mask.sum() + ball.sum())
    assert dice > 0.95
    assert res.records[0].index == 10 and res.records[0].prior is None
    assert all(r.prior is not None for r in res.records[1:])


def test_replay_is_bit_exact_and_detects_a_changed_slice():
    vol, ball = ball_volume()
    cfg = PropagationConfig(margin=0.2, min_grow=3)
    res = propagate(ThresholdEngine(), vol, 10, ball[10], None, config=cfg, modality="gray")
    record = json.loads(json.dumps(res.to_dict()))
    again = replay_propagation(record, ThresholdEngine(), vol, ball[10], None, modality="gray")
    assert np.array_equal(again.mask, res.mask)
    rec = next(s for s in record["slices"] if s["index"] == 12)
    m = rle.decode(rec["mask_rle"])
    m[0, 0] = True
    rec["mask_rle"] = rle.encode(m)
    with pytest.raises(ValueError, match="slice 12"):
        replay_propagation(record, ThresholdEngine(), vol, ball[10], None, modality="gray")


def test_stop_between_slices_keeps_the_slices_done_and_nothing_half_written():
    vol, ball = ball_volume()
    seen = []
    res = propagate(ThresholdEngine(), vol, 10, ball[10], None, modality="gray",
                    config=PropagationConfig(margin=0.2, min_grow=3),
                    on_slice=lambda rec, done: seen.append(rec.index), should_stop=lambda: len(seen) >= 3)
    assert res.stopped == "cancelled" and len(res.records) == 4  # the start and three propagated slices
    done = {r.index for r in res.records}
    for k in range(vol.shape[0]):
        assert res.mask[k].any() == (k in done)


def test_repropagation_from_a_corrected_slice_redoes_only_the_slices_beyond_it():
    vol, ball = ball_volume()
    cfg = PropagationConfig(margin=0.1, min_grow=1)
    first = propagate(ThresholdEngine(), vol, 10, ball[10], None, config=cfg, modality="gray")
    # The person trims slice 13 to the ball's left half; slices 14.. must follow the trimmed box.
    fixed = ball[13].copy()
    fixed[:, 18:] = False
    engine = ThresholdEngine()
    again = repropagate(engine, vol, first, 13, fixed, modality="gray")
    assert engine.calls == len([k for k in again.slices if k > 13]) + 2  # the slices past 13 and the 2 misses
    assert np.array_equal(again.mask[13], fixed)
    for k in range(0, 13):  # the start's side is kept as it was, not re-made
        assert np.array_equal(again.mask[k], first.mask[k])
    assert again.mask[14].any() and not again.mask[14][:, 20:].any() and first.mask[14][:, 20:].any()
    assert again.restarted_at == 13 and next(r for r in again.records if r.index == 13).corrected
    record = json.loads(json.dumps(again.to_dict()))
    replayed = replay_propagation(record, ThresholdEngine(), vol, ball[10], None, modality="gray")
    assert np.array_equal(replayed.mask, again.mask)
    # Corrected on the start slice itself: both directions are made again.
    both = repropagate(ThresholdEngine(), vol, first, 10, ball[10] & (np.arange(40)[None, :] < 18), modality="gray")
    assert not both.mask[8][:, 20:].any() and not both.mask[12][:, 20:].any()
    with pytest.raises(PropagationError, match="empty"):
        repropagate(ThresholdEngine(), vol, first, 13, np.zeros_like(fixed))
    with pytest.raises(PropagationError, match="outside the volume"):
        repropagate(ThresholdEngine(), vol, first, 30, fixed)


class PrefetchingEngine(ThresholdEngine):
    """ThresholdEngine with an `encode` (as LiteMedSAM has): records which slices were encoded ahead, and on which
    thread, and whether set_image found them already encoded."""

    def __init__(self):
        super().__init__()
        import threading

        self.encoded, self.threads, self.hits, self.lock = [], set(), 0, threading.Lock()

    def encode(self, image):
        import threading

        with self.lock:
            self.encoded.append(np.asarray(image).tobytes())
            self.threads.add(threading.current_thread().name)

    def set_image(self, image):
        with self.lock:
            self.hits += np.asarray(image).tobytes() in self.encoded
        super().set_image(image)


def test_prefetch_encodes_the_next_slice_on_another_thread_and_changes_nothing():
    vol, ball = ball_volume()
    cfg = PropagationConfig(margin=0.2, min_grow=3)
    plain = propagate(ThresholdEngine(), vol, 10, ball[10], None, config=cfg, modality="gray")
    engine = PrefetchingEngine()
    fast = propagate(engine, vol, 10, ball[10], None, config=cfg, modality="gray")
    assert np.array_equal(plain.mask, fast.mask) and plain.slices == fast.slices
    assert engine.threads and all(t.startswith("medagentseg-prefetch") for t in engine.threads)
    assert engine.hits == engine.calls  # every slice the propagation decoded had been encoded ahead
    assert len(engine.encoded) <= engine.calls + 2  # at most one slice ahead per direction is wasted


def test_max_shift_stops_where_the_box_holds_other_tissue():
    vol, ball = ball_volume()
    vol[16:21][ball[10][None].repeat(5, 0)] = 150  # dimmer tissue right after the ball's end, still found
    cfg = PropagationConfig(margin=0.2, min_grow=3)
    assert max(propagate(ThresholdEngine(), vol, 10, ball[10], None, config=cfg, modality="gray").slices) == 20
    cfg.max_shift = 30.0
    res = propagate(ThresholdEngine(), vol, 10, ball[10], None, config=cfg, modality="gray")
    assert max(res.slices) == 15 and all(r.brightness == 200.0 for r in res.records if r.prior is not None)


def test_bad_requests_say_what_to_do():
    vol, ball = ball_volume()
    with pytest.raises(PropagationError, match="empty"):
        propagate(ThresholdEngine(), vol, 10, np.zeros_like(ball[10]), None)
    with pytest.raises(PropagationError, match="outside the volume"):
        propagate(ThresholdEngine(), vol, 40, ball[10], None)
    with pytest.raises(PropagationError, match="axis"):
        propagate(ThresholdEngine(), vol, 10, ball[10], None, axis="oblique")


def test_other_axes_propagate_too():
    vol, ball = ball_volume()
    from MedAgentSegLib.images import extract_slice

    start = extract_slice(ball, 18, "sagittal")
    res = propagate(ThresholdEngine(), vol, 18, start, None, "sagittal", "gray",
                    config=PropagationConfig(margin=0.2, min_grow=3))
    dice = 2 * (res.mask & ball).sum() / (res.mask.sum() + ball.sum())
    assert dice > 0.9


def test_segment_mode_3d_writes_the_whole_structure_on_an_oblique_anisotropic_volume(tmp_path, lite_engine):
    import SimpleITK as sitk

    from MedAgentSegLib.cli import main

    vol, ball = ball_volume()
    img = sitk.GetImageFromArray(vol.astype(np.int16) * 5 - 100)  # HU-like
    img.SetSpacing((0.8, 0.8, 2.5))
    img.SetOrigin((10.0, -5.0, 3.0))
    c, s = np.cos(0.3), np.sin(0.3)
    img.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    path = tmp_path / "ball.nrrd"
    sitk.WriteImage(img, str(path))
    out = tmp_path / "o"
    rc = main(["segment", str(path), "--target", "liver", "--modality", "CT", "--slice", "10", "--box",
               "7,9,29,31", "--mode", "3d", "--device", "cpu", "--engine", "litemedsam", "--out", str(out)])
    assert rc == 0
    seg = sitk.ReadImage(str(out / "segmentation.seg.nrrd"))
    assert seg.GetSpacing() == pytest.approx(img.GetSpacing()) and seg.GetDirection() == pytest.approx(
        img.GetDirection())
    prop = json.loads((out / "propagation.json").read_text())
    assert prop["start"] == 10 and len(prop["slices"]) > 3
    assert {s["index"] for s in prop["slices"]} >= {9, 10, 11}
    assert main(["segment", str(path), "--target", "liver", "--box", "1,1,3,3", "--slice", "99", "--mode", "3d",
                 "--device", "cpu", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_eval_fix_slices_corrects_the_worst_slice_and_repropagates(tmp_path):
    """The bright ball runs over slices 5..15 but only 7..13 is labelled: propagation over-reaches, and each oracle
    correction erases the worst over-reached end, so Dice rises with every fix."""
    import SimpleITK as sitk

    from MedAgentSegLib.evaluation import evaluate

    vol, ball = ball_volume()
    label = ball.copy()
    label[:7] = label[14:] = False
    root = tmp_path / "balls"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(root / "images" / "b.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(label.astype(np.uint8)), str(root / "labels" / "b.nrrd"))
    (root / "dataset.json").write_text(json.dumps({
        "name": "balls", "modality": "MR", "dimension": "3D", "labels": {"0": "background", "1": "ball"},
        "cases": [{"id": "b", "image": "images/b.nrrd", "mask": "labels/b.nrrd", "patient": "p"}]}))
    res = evaluate([root], "propagate", engine=ThresholdEngine(), clicks=0, jitter=0.0, fix_slices=3, progress=False,
                   propagation=PropagationConfig(margin=0.2, min_grow=3))
    case = res["cases"][0]
    dices = case["dice_by_step"]
    assert len(dices) == 3 and dices[0] < dices[1] < dices[2] == 1.0  # two fixes erase both ends; then nothing is wrong
    assert sorted(case["fixed_slices"]) == [6, 14]  # the largest wrong slices first; each erase takes its end
    assert res["summary"]["dice_3d"] == 1.0 and res["config"]["fix_slices"] == 3
