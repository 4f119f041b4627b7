"""Specialist runners (TotalSegmentator, nnU-Net v2, MONAI bundle) and the rank-weighted ensemble.

``run_specialists(image, matches)`` runs every matched entry that has a usable ``runner`` and combines their
binary masks for the target. Heavy packages are imported inside the runners; a missing package or folder
skips that model with the reason in ``SpecialistResult.skipped``.

Ensemble rule (documented in docs/routing.md): model k (0 = best rank, ranks from the router: more training
cases first) gets weight ``w_k = 1 / (k + 1)``. A voxel is foreground when the weighted vote of the models that
ran is more than half their total weight; on an exact tie (vote == half) the best-ranked model's value decides.
One model: its mask as is.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .library import Entry
from .matching import Match

__all__ = ["SpecialistResult", "ensemble_masks", "run_monai_bundle", "run_nnunetv2", "run_specialists",
           "run_totalsegmentator", "runner_ready"]


@dataclass
class SpecialistResult:
    """Combined mask (uint8 0/1, KJI = SimpleITK array order, image grid), per-model masks, what ran/skipped."""

    mask: np.ndarray | None
    per_model: dict[str, np.ndarray] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)


def ensemble_masks(masks: list[np.ndarray], ranks: list[int] | None = None) -> np.ndarray:
    """Rank-weighted majority vote of binary masks (same shape). Returns uint8 0/1, same shape.

    ``ranks[i]``: 0 for the best model. Weight ``1/(rank+1)``; foreground where the vote > half the total
    weight; exact ties follow the best-ranked mask.
    """
    if not masks:
        raise ValueError("ensemble_masks needs at least one mask.")
    shape = masks[0].shape
    for i, m in enumerate(masks):
        if m.shape != shape:
            raise ValueError(f"mask {i} has shape {m.shape}, expected {shape}: resample to the image grid first.")
    ranks = list(range(len(masks))) if ranks is None else list(ranks)
    w = np.array([1.0 / (r + 1) for r in ranks])
    vote = np.zeros(shape, dtype=np.float64)
    for wi, m in zip(w, masks, strict=True):
        vote += wi * (m > 0)
    half = w.sum() / 2.0
    best = masks[int(np.argmin(ranks))] > 0
    out = (vote > half + 1e-12) | (np.isclose(vote, half) & best)
    return out.astype(np.uint8)


def _read_image(image):
    import SimpleITK as sitk

    if isinstance(image, (str, os.PathLike)):
        return sitk.ReadImage(str(image))
    return image


def _labels_to_mask(label_img, ids: list[int], reference) -> np.ndarray:
    import SimpleITK as sitk

    if (label_img.GetSize() != reference.GetSize() or label_img.GetSpacing() != reference.GetSpacing()
            or label_img.GetOrigin() != reference.GetOrigin()):
        label_img = sitk.Resample(label_img, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    arr = sitk.GetArrayFromImage(label_img)
    return np.isin(arr, ids).astype(np.uint8)


def run_monai_bundle(bundle_dir: str | os.PathLike, image, device: str = "cpu"):
    """Run a MONAI bundle folder (``configs/inference.json``, ``models/model.pt``) on one image.

    The bundle's inference config must define ``network_def``, ``preprocessing`` (dict transforms on key
    "image"; they receive a channel-first float32 array ``(1, X, Y, Z)``, MONAI's axis order, so no
    LoadImaged is needed) and ``inferer``; returns a label image (SimpleITK, the bundle's output grid:
    argmax over channels, or the single channel thresholded at 0.5).
    """
    import SimpleITK as sitk
    import torch
    from monai.bundle import ConfigParser

    bundle = Path(bundle_dir)
    cfg_file = bundle / "configs" / "inference.json"
    weights = bundle / "models" / "model.pt"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise FileNotFoundError(f"MONAI bundle {bundle}: {f.relative_to(bundle)} is missing.")
    ref = _read_image(image)
    with torch.no_grad():
        arr = np.transpose(sitk.GetArrayFromImage(ref).astype(np.float32), (2, 1, 0))[None]  # KJI -> (1, I, J, K)
        parser = ConfigParser()
        parser.read_config(str(cfg_file))
        parser["bundle_root"] = str(bundle)
        parser["device"] = device
        net = parser.get_parsed_content("network_def").to(device)
        net.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
        net.eval()
        pre = parser.get_parsed_content("preprocessing")
        inferer = parser.get_parsed_content("inferer")
        data = pre({"image": arr})
        x = torch.as_tensor(data["image"]).unsqueeze(0).to(device)
        with torch.no_grad():
            y = inferer(x, net)[0]
    lab = (y.argmax(0) if y.shape[0] > 1 else (torch.sigmoid(y[0]) > 0.5)).cpu().numpy().astype(np.uint8)
    # MONAI arrays are (x, y, z) after LoadImage; SimpleITK arrays are (z, y, x)
    out = sitk.GetImageFromArray(np.transpose(lab, (2, 1, 0)) if lab.ndim == 3 else lab.T)
    if out.GetSize() == ref.GetSize():
        out.CopyInformation(ref)
    return out


def run_nnunetv2(model_dir: str | os.PathLike, image, fold: int | str = 0, checkpoint: str = "checkpoint_final.pth",
                 device: str = "cpu"):
    """Run an nnU-Net v2 trained-model folder (plans.json, dataset.json, fold_X/checkpoint) on one image.

    The image goes through the model's own reader (plans.json ``image_reader_writer``, e.g. SimpleITKIO or
    NibabelIOWithReorient) via a temporary file with the dataset's ``file_ending``, exactly as
    ``nnUNetv2_predict`` would read it, and the segmentation is written back with that reader's ``write_seg``.
    Returns a label image (SimpleITK) on the image's grid, label values as in dataset.json. Single-channel
    models only. Test-time mirroring is off. Needs ``pip install nnunetv2``.
    """
    try:
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    except ImportError as e:
        raise ImportError("nnU-Net v2 is not installed: pip install nnunetv2") from e
    import SimpleITK as sitk

    model = Path(model_dir)
    for f in (model / "dataset.json", model / "plans.json", model / f"fold_{fold}" / checkpoint):
        if not f.is_file():
            raise FileNotFoundError(f"nnU-Net model {model}: {f.relative_to(model)} is missing.")
    ref = _read_image(image)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                device=torch.device(device), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=(fold,), checkpoint_name=checkpoint)
    ds = predictor.dataset_json
    n_ch = len(ds.get("channel_names", ds.get("modality", {"0": ""})))
    if n_ch != 1:
        raise ValueError(f"nnU-Net model {model} needs {n_ch} input channels; this runner passes one image.")
    rw = predictor.plans_manager.image_reader_writer_class()
    ending = ds.get("file_ending", ".nii.gz")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / f"case_0000{ending}", Path(tmp) / f"seg{ending}"
        sitk.WriteImage(ref, str(src))
        arr, props = rw.read_images([str(src)])
        seg = predictor.predict_single_npy_array(arr, props, None, None, False)
        rw.write_seg(seg, str(dst), props)
        out = sitk.ReadImage(str(dst))
    if out.GetSize() == ref.GetSize():
        out.CopyInformation(ref)  # the temporary file may hold the geometry in lower precision
    return out


def run_totalsegmentator(image, task: str = "total", device: str = "cpu"):
    """Run TotalSegmentator's Python API (``totalsegmentator.python_api.totalsegmentator``); label image out."""
    try:
        from totalsegmentator.python_api import totalsegmentator
    except ImportError as e:
        raise ImportError("TotalSegmentator is not installed: pip install TotalSegmentator") from e
    import SimpleITK as sitk

    ref = _read_image(image)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.nii.gz", Path(tmp) / "seg.nii.gz"
        sitk.WriteImage(ref, str(src))
        totalsegmentator(str(src), str(dst), ml=True, task=task, device=device, quiet=True)
        return sitk.ReadImage(str(dst))


_RUNNERS: dict[str, Callable] = {
    "monai_bundle": lambda r, img, dev: run_monai_bundle(r["path"], img, dev),
    "nnunetv2": lambda r, img, dev: run_nnunetv2(r["path"], img, r.get("fold", 0),
                                                 r.get("checkpoint", "checkpoint_final.pth"), dev),
    "totalsegmentator": lambda r, img, dev: run_totalsegmentator(img, r.get("task", "total"), dev),
}


_PACKAGES = {"nnunetv2": ("nnunetv2", "pip install nnunetv2"), "monai_bundle": ("monai", "pip install monai"),
             "totalsegmentator": ("totalsegmentator", "pip install TotalSegmentator")}


def runner_ready(entry: Entry | None) -> str | None:
    """None when the entry's specialist can run here with nothing downloaded; else why not, in words.

    Installed means: a runner the library knows, its package importable, and its model on disk (the folder in
    ``runner.path``; TotalSegmentator's weights under ``$TOTALSEG_HOME_DIR`` or ``~/.totalsegmentator``, because it
    would otherwise download them at run time)."""
    import importlib.util

    r = (entry.runner if entry else None) or {}
    kind = r.get("type")
    if kind not in _RUNNERS:
        return "no runner in the library entry"
    if kind != "totalsegmentator":
        if not r.get("path"):
            return "runner.path is not set (a placeholder entry: point it at a model folder)"
        if not Path(r["path"]).exists():
            return f"runner.path '{r['path']}' does not exist"
    module, how = _PACKAGES[kind]
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed ({how})"
    if kind == "totalsegmentator":
        home = Path(os.environ.get("TOTALSEG_HOME_DIR") or Path.home() / ".totalsegmentator")
        results = home / "nnunet" / "results"
        if not results.is_dir() or not any(results.iterdir()):
            return (f"TotalSegmentator's weights are not in {results}; run TotalSegmentator once where it may "
                    "download them (MedAgentSeg downloads nothing)")
    return None


def run_specialists(image, matches: list[Match], entries: list[Entry], device: str = "cpu",
                    max_parallel: int | None = None, memory_gb: float | None = None) -> SpecialistResult:
    """Run matched specialists and ensemble their masks for the routed label ids.

    ``image``: SimpleITK image or path. ``matches``: ``RouteResult.details`` (rank order). ``memory_gb``:
    budget for models run at once (each entry's ``runner.memory_gb``, default 4); ``max_parallel`` caps the
    thread count. Models without a runner, path or package are skipped with the reason.
    """
    ref = _read_image(image)
    by_name = {e.name: e for e in entries}
    jobs = []
    res = SpecialistResult(mask=None)
    for m in matches:
        e = by_name.get(m.entry)
        why = runner_ready(e)
        if why is not None:
            res.skipped[m.entry] = why
            continue
        jobs.append((m, e.runner))
    budget = memory_gb if memory_gb is not None else float(os.environ.get("MEDAGENTSEG_SPECIALIST_MEM_GB", 8))
    need = max((float(r.get("memory_gb", 4)) for _, r in jobs), default=1.0)
    workers = max(1, min(len(jobs) or 1, int(budget // max(need, 1e-6)) or 1, max_parallel or len(jobs) or 1))

    def one(job):
        m, r = job
        try:
            lab = _RUNNERS[r["type"]](r, ref, device)
            return m, _labels_to_mask(lab, m.ids, ref), None
        except (ImportError, FileNotFoundError, RuntimeError, ValueError, KeyError) as ex:
            return m, None, f"{type(ex).__name__}: {ex}"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        outs = list(pool.map(one, jobs))
    masks, ranks = [], []
    for m, mask, err in outs:
        if err:
            res.skipped[m.entry] = err
            continue
        res.per_model[m.entry] = mask
        res.ran.append(m.entry)
        res.weights[m.entry] = 1.0 / (m.rank + 1)
        masks.append(mask)
        ranks.append(m.rank)
    if masks:
        res.mask = ensemble_masks(masks, ranks)
    return res
