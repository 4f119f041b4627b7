"""Segmentation metrics: Dice, IoU, normalised surface Dice (NSD), per-step curves and NoC."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["dice", "iou", "nsd", "noc", "area_under_curve"]


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {gt.shape}")
    return pred, gt


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two binary masks of the same shape; 1.0 when both are empty."""
    pred, gt = _pair(pred, gt)
    denom = pred.sum() + gt.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(pred, gt).sum() / denom)


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union; 1.0 when both are empty."""
    pred, gt = _pair(pred, gt)
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def nsd(pred: np.ndarray, gt: np.ndarray, tolerance_mm: float = 2.0,
        spacing: Sequence[float] | None = None) -> float:
    """Normalised surface Dice: share of both surfaces lying within `tolerance_mm` of the other.

    spacing: voxel size per array axis (same order as the array's axes, e.g. (row, col) or KJI (z, y, x)).
    """
    from scipy import ndimage

    pred, gt = _pair(pred, gt)
    spacing = tuple(spacing) if spacing is not None else (1.0,) * pred.ndim
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing has {len(spacing)} values for a {pred.ndim}D mask")
    if not pred.any() and not gt.any():
        return 1.0
    if not pred.any() or not gt.any():
        return 0.0
    sp, sg = _surface(pred), _surface(gt)
    dist_to_gt = ndimage.distance_transform_edt(~sg, sampling=spacing)
    dist_to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    close = (dist_to_gt[sp] <= tolerance_mm).sum() + (dist_to_pred[sg] <= tolerance_mm).sum()
    return float(close / (sp.sum() + sg.sum()))


def noc(iou_by_click: Sequence[float], threshold: float, max_clicks: int = 20) -> int:
    """Number of clicks to reach `threshold` IoU (RITM protocol); max_clicks if never reached.

    iou_by_click[i] is the IoU after click i + 1.
    """
    for i, v in enumerate(iou_by_click[:max_clicks]):
        if v >= threshold:
            return i + 1
    return max_clicks


def area_under_curve(values: Sequence[float]) -> float:
    """Trapezoidal area under a per-step curve, normalised by its length (CVPR25 challenge style)."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return float(v.sum())
    return float(np.trapezoid(v) / (v.size - 1)) if hasattr(np, "trapezoid") else float(np.trapz(v) / (v.size - 1))
