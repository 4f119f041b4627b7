"""nnU-Net v2 specialist runner on a tiny real nnU-Net v2 trained-model folder that the test writes.

The folder (Testing/tiny_nnunet.py) holds dataset.json, a real plans.json and fold_0/checkpoint_final.pth with the
weights of the network nnU-Net builds from those plans (seeded random init). The runner's label image must equal
what nnU-Net's own file-based prediction (``nnUNetPredictor.predict_from_files_sequential``, the ``nnUNetv2_predict``
path) writes for the same image.
"""

import importlib.util

import numpy as np
import pytest
from tiny_nnunet import LABELS, make_model, tiny_image

from MedAgentSegLib.routing import Router
from MedAgentSegLib.routing.library import load_entry
from MedAgentSegLib.routing.specialists import run_nnunetv2, run_specialists

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("nnunetv2") is None or importlib.util.find_spec("torch") is None,
    reason="nnunetv2 is not installed (pip install nnunetv2==2.8.1); the nnU-Net v2 runner is untested here")


def _predictor(model):
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=torch.device("cpu"),
                        verbose=False, allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(model), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    return p


def _nnunet_own_prediction(model, img, tmp):
    """nnU-Net's own path: image file in, nnUNetv2_predict-style prediction, label file out."""
    import SimpleITK as sitk

    (tmp / "in").mkdir()
    (tmp / "out").mkdir()  # predict_from_files_sequential does not create it
    sitk.WriteImage(img, str(tmp / "in" / "case_0000.nii.gz"))
    _predictor(model).predict_from_files_sequential(str(tmp / "in"), str(tmp / "out"), save_probabilities=False,
                                                    overwrite=True)
    return sitk.ReadImage(str(tmp / "out" / "case.nii.gz"))


@pytest.mark.parametrize("reader", ["SimpleITKIO", "NibabelIOWithReorient"])
def test_tiny_real_nnunet_model_matches_nnunet_predictor(tmp_path, reader):
    import SimpleITK as sitk

    model = make_model(tmp_path / "results", reader)
    img = tiny_image()
    expected_img = _nnunet_own_prediction(model, img, tmp_path)
    expected = sitk.GetArrayFromImage(expected_img)
    assert expected.shape == sitk.GetArrayFromImage(img).shape
    assert set(np.unique(expected).tolist()) <= set(LABELS.values())
    assert len(np.unique(expected)) >= 2, "tiny model predicts a single class: the comparison would be weak"

    out = run_nnunetv2(model, img, fold=0)
    got = sitk.GetArrayFromImage(out)
    assert out.GetSize() == img.GetSize() and out.GetSpacing() == img.GetSpacing()
    assert out.GetOrigin() == img.GetOrigin() and out.GetDirection() == img.GetDirection()
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)

    if reader == "NibabelIOWithReorient":
        # the model sees the image reoriented to RAS: feeding SimpleITK's (z, y, x) array as is (LPS) gives other
        # labels, so this comparison does catch a runner that skips the model's reader
        naive = _predictor(model).predict_single_npy_array(
            sitk.GetArrayFromImage(img).astype(np.float32)[None], {"spacing": list(img.GetSpacing())[::-1]},
            None, None, False)
        assert not np.array_equal(naive, expected)


def test_nnunet_runner_through_router_maps_entry_label_ids(tmp_path):
    import SimpleITK as sitk

    model = make_model(tmp_path / "results", "SimpleITKIO")
    img = tiny_image()
    expected = sitk.GetArrayFromImage(_nnunet_own_prediction(model, img, tmp_path))
    entry = load_entry({"name": "TinyNnunet", "input_modalities": {"0": "CT"}, "labels": LABELS,
                        "runner": {"type": "nnunetv2", "path": str(model), "fold": 0}})
    route = Router([entry]).route("segment the liver tumor in this CT")
    assert [(m.entry, m.ids) for m in route.details] == [("TinyNnunet", [2])], route.message
    res = run_specialists(img, route.details, [entry])
    assert res.ran == ["TinyNnunet"], res.skipped
    assert res.mask.dtype == np.uint8 and res.mask.shape == expected.shape
    np.testing.assert_array_equal(res.mask, (expected == 2).astype(np.uint8))
    assert 0 < res.mask.sum() < res.mask.size


def test_nnunet_runner_missing_checkpoint_is_skipped_with_reason(tmp_path):
    import SimpleITK as sitk

    model = make_model(tmp_path / "results", "SimpleITKIO")
    entry = load_entry({"name": "TinyNnunet", "input_modalities": {"0": "CT"}, "labels": LABELS,
                        "runner": {"type": "nnunetv2", "path": str(model), "fold": 3}})
    route = Router([entry]).route("segment the liver in this CT")
    res = run_specialists(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32)), route.details, [entry])
    assert res.mask is None and res.ran == []
    assert "FileNotFoundError" in res.skipped["TinyNnunet"] and "fold_3/checkpoint_final.pth" in res.skipped[
        "TinyNnunet"]
