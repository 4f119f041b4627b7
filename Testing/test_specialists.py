"""Specialist runners and the ensemble rule."""

import importlib.util
import json

import numpy as np
import pytest

from MedAgentSegLib.routing.library import load_entry
from MedAgentSegLib.routing.matching import Match
from MedAgentSegLib.routing.specialists import ensemble_masks, run_specialists


def test_ensemble_weighted_majority_and_tie():
    a = np.array([1, 1, 0, 0], np.uint8)
    b = np.array([1, 0, 1, 0], np.uint8)
    c = np.array([0, 0, 1, 1], np.uint8)
    # weights 1, 1/2, 1/3 -> total 11/6, half 11/12
    out = ensemble_masks([a, b, c], [0, 1, 2])
    assert out.tolist() == [1, 1, 0, 0]  # voxel 2: 1/2 + 1/3 = 5/6 < 11/12
    # two models: weights 1 and 1/2 -> the best-ranked decides every disagreement
    assert ensemble_masks([b, a], [1, 0]).tolist() == a.tolist()
    # equal ranks, exact tie -> follows the first best-ranked
    assert ensemble_masks([a, b], [0, 0]).tolist() == [1, 1, 0, 0]
    assert ensemble_masks([b], [0]).dtype == np.uint8


def test_ensemble_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        ensemble_masks([])
    with pytest.raises(ValueError, match="shape"):
        ensemble_masks([np.zeros((2, 2)), np.zeros((3, 2))])


def test_missing_runner_is_skipped_with_reason(tmp_path):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    entry = load_entry({"name": "X", "input_modalities": {"0": "CT"}, "labels": {"liver": 1},
                        "runner": {"type": "monai_bundle", "path": str(tmp_path / "nope")}})
    res = run_specialists(img, [Match(entry="X", ids=[1], labels=["liver"])], [entry])
    assert res.mask is None and res.ran == [] and "does not exist" in res.skipped["X"]


@pytest.mark.skipif(importlib.util.find_spec("monai") is None or importlib.util.find_spec("torch") is None,
                    reason="MONAI bundle test needs torch and monai (pip install medagentseg[engine])")
def test_tiny_real_monai_bundle(tmp_path):
    import SimpleITK as sitk
    import torch
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    net_cfg = {"_target_": "monai.networks.nets.BasicUNet", "spatial_dims": 3, "in_channels": 1,
               "out_channels": 3, "features": [4, 4, 8, 8, 16, 4]}
    cfg = {
        "device": "cpu",
        "network_def": net_cfg,
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "ScaleIntensityd", "keys": "image"}]},
        "inferer": {"_target_": "SimpleInferer"},
    }
    (bundle / "configs" / "inference.json").write_text(json.dumps(cfg))
    net = BasicUNet(**{k: v for k, v in net_cfg.items() if k != "_target_"})
    torch.save(net.state_dict(), bundle / "models" / "model.pt")

    arr = np.random.default_rng(0).random((32, 32, 48)).astype(np.float32)  # KJI
    img = sitk.GetImageFromArray(arr)
    entry = load_entry({"name": "TinyBundle", "input_modalities": {"0": "CT"},
                        "labels": {"background": 0, "liver": 1, "spleen": 2},
                        "runner": {"type": "monai_bundle", "path": str(bundle)}})
    res = run_specialists(img, [Match(entry="TinyBundle", ids=[1], labels=["liver"])], [entry])
    assert res.ran == ["TinyBundle"], res.skipped
    assert res.mask.shape == arr.shape and res.mask.dtype == np.uint8

    # the same network applied directly to the (x, y, z) array must give the same labels
    x = np.transpose(arr, (2, 1, 0))
    x = (x - x.min()) / (x.max() - x.min())
    net.eval()
    with torch.no_grad():
        lab = net(torch.from_numpy(x)[None, None]).argmax(1)[0].numpy()
    expected = (np.transpose(lab, (2, 1, 0)) == 1).astype(np.uint8)
    assert np.array_equal(res.mask, expected)


@pytest.mark.skipif(importlib.util.find_spec("nnunetv2") is None,
                    reason="nnunetv2 is not installed (pip install nnunetv2); its runner is untested here")
def test_nnunetv2_runner_importable():
    from MedAgentSegLib.routing.specialists import run_nnunetv2

    with pytest.raises((FileNotFoundError, RuntimeError, OSError)):
        run_nnunetv2("/nonexistent/model", np.zeros((2, 2, 2)))


@pytest.mark.skipif(importlib.util.find_spec("totalsegmentator") is None,
                    reason="TotalSegmentator is not installed (pip install TotalSegmentator); runner untested here")
def test_totalsegmentator_present():
    from totalsegmentator.python_api import totalsegmentator  # noqa: F401
