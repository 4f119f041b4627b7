"""nnU-Net v2 specialist runner on a tiny real nnU-Net v2 trained-model folder that the test writes.

The folder holds dataset.json, a real plans.json (one small 3d_fullres configuration: 2 stages, 4/8 features,
patch 8x16x16, CT normalisation, a target spacing unlike the image's so nnU-Net resamples) and
fold_0/checkpoint_final.pth with the weights of the network nnU-Net builds from those plans (seeded random
init). The runner's label image must equal what nnU-Net's own file-based prediction
(``nnUNetPredictor.predict_from_files_sequential``, the ``nnUNetv2_predict`` path) writes for the same image.
"""

import importlib.util
import json

import numpy as np
import pytest

from MedAgentSegLib.routing import Router
from MedAgentSegLib.routing.library import load_entry
from MedAgentSegLib.routing.specialists import run_nnunetv2, run_specialists

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("nnunetv2") is None or importlib.util.find_spec("torch") is None,
    reason="nnunetv2 is not installed (pip install nnunetv2==2.8.1); the nnU-Net v2 runner is untested here")

LABELS = {"background": 0, "liver": 1, "liver tumor": 2}


def _plans(reader: str) -> dict:
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 2, "features_per_stage": [4, 8], "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[1, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [1, 2, 2]],
            "n_conv_per_stage": [1, 1], "n_conv_per_stage_decoder": [1], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    cfg = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [8, 16, 16], "median_image_size_in_voxels": [10, 22, 26], "spacing": [3.0, 1.0, 1.0],
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": arch, "batch_dice": False,
    }
    return {
        "dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [3.0, 1.0, 1.0], "original_median_shape_after_transp": [10, 22, 26],
        "image_reader_writer": reader, "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": cfg}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 400.0, "mean": 60.0, "median": 55.0, "min": -200.0, "percentile_00_5": -100.0,
            "percentile_99_5": 300.0, "std": 80.0}},
    }


def _make_model(root, reader: str):
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model = root / "Dataset999_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    dataset = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 2, "file_ending": ".nii.gz"}
    plans = _plans(reader)
    (model / "dataset.json").write_text(json.dumps(dataset))
    (model / "plans.json").write_text(json.dumps(plans))
    pm = PlansManager(plans)
    torch.manual_seed(0)
    net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, len(LABELS),
                                                   enable_deep_supervision=False)
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               model / "fold_0" / "checkpoint_final.pth")
    return model


def _image():
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    kk, jj, ii = np.meshgrid(np.arange(12), np.arange(18), np.arange(22), indexing="ij")
    arr = 150.0 * np.sin(ii / 3.0) * np.cos(jj / 4.0) + 20.0 * kk + rng.normal(0, 20, kk.shape)
    img = sitk.GetImageFromArray(arr.astype(np.float32))  # size (x, y, z) = (22, 18, 12), not symmetric
    img.SetSpacing((1.2, 1.4, 2.5))
    img.SetOrigin((-10.0, 5.0, 30.0))
    return img


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

    model = _make_model(tmp_path / "results", reader)
    img = _image()
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

    model = _make_model(tmp_path / "results", "SimpleITKIO")
    img = _image()
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

    model = _make_model(tmp_path / "results", "SimpleITKIO")
    entry = load_entry({"name": "TinyNnunet", "input_modalities": {"0": "CT"}, "labels": LABELS,
                        "runner": {"type": "nnunetv2", "path": str(model), "fold": 3}})
    route = Router([entry]).route("segment the liver in this CT")
    res = run_specialists(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32)), route.details, [entry])
    assert res.mask is None and res.ran == []
    assert "FileNotFoundError" in res.skipped["TinyNnunet"] and "fold_3/checkpoint_final.pth" in res.skipped[
        "TinyNnunet"]
