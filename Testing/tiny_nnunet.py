"""A tiny real nnU-Net v2 trained-model folder, written by the tests that need one (test_specialists_nnunet.py,
the specialist-first tests of test_specialist_first.py).

The folder holds dataset.json, a real plans.json (one small 3d_fullres configuration: 2 stages, 4/8 features,
patch 8x16x16, CT normalisation, a target spacing unlike the image's so nnU-Net resamples) and
fold_0/checkpoint_final.pth with the weights of the network nnU-Net builds from those plans (seeded random init).
"""

import json

import numpy as np

__all__ = ["LABELS", "make_model", "tiny_image"]

LABELS = {"background": 0, "liver": 1, "liver tumor": 2}


def plans_json(reader: str) -> dict:
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


def make_model(root, reader: str):
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model = root / "Dataset999_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    dataset = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 2, "file_ending": ".nii.gz"}
    plans = plans_json(reader)
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


def tiny_image():
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    kk, jj, ii = np.meshgrid(np.arange(12), np.arange(18), np.arange(22), indexing="ij")
    arr = 150.0 * np.sin(ii / 3.0) * np.cos(jj / 4.0) + 20.0 * kk + rng.normal(0, 20, kk.shape)
    img = sitk.GetImageFromArray(arr.astype(np.float32))  # size (x, y, z) = (22, 18, 12), not symmetric
    img.SetSpacing((1.2, 1.4, 2.5))
    img.SetOrigin((-10.0, 5.0, 30.0))
    return img
