"""Simulated user for evaluation and expert trajectories: needs the reference mask.

- `box_from_mask`: tight box with seeded jitter of the edges (SAM-Med2D style: each edge moves by up to
  `jitter` of the box size).
- `next_click`: RITM rule (interior point, by distance transform, of the larger of the false-negative and
  false-positive regions) or the CVPR25 rule (EDT maximum of the largest connected error component).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["box_from_mask", "clip_box", "mask_box", "next_click", "interior_point", "Click", "CLICK_RULES"]

CLICK_RULES = ("ritm", "cvpr25")


@dataclass(frozen=True)
class Click:
    """x = column, y = row (pixels); positive = inside the target."""

    x: int
    y: int
    positive: bool


def box_from_mask(mask: np.ndarray, jitter: float = 0.0, rng: np.random.Generator | None = None
                  ) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) pixels around a (H, W) mask, each edge shifted by U(-jitter, jitter) * box size.

    Raises ValueError on an empty mask.
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"box_from_mask needs a 2D mask, got shape {mask.shape}")
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise ValueError("the reference mask is empty: there is no target to draw a box around")
    h, w = mask.shape
    x1, x2, y1, y2 = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
    if jitter > 0:
        rng = rng if rng is not None else np.random.default_rng(0)
        bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        dx1, dx2 = rng.uniform(-jitter, jitter, 2) * bw
        dy1, dy2 = rng.uniform(-jitter, jitter, 2) * bh
        x1, x2, y1, y2 = x1 + dx1, x2 + dx2, y1 + dy1, y2 + dy2
    return clip_box(x1, y1, x2, y2, h, w)


def clip_box(x1: float, y1: float, x2: float, y2: float, h: int, w: int) -> tuple[float, float, float, float]:
    """Clip a (x1, y1, x2, y2) pixel box to an (h, w) image, keeping it at least one pixel wide and tall."""
    x1, x2 = np.clip([x1, x2], 0, w - 1)
    y1, y2 = np.clip([y1, y2], 0, h - 1)
    if x2 - x1 < 1:
        x1, x2 = max(0.0, x1 - 1), min(w - 1.0, x2 + 1)
    if y2 - y1 < 1:
        y1, y2 = max(0.0, y1 - 1), min(h - 1.0, y2 + 1)
    return float(x1), float(y1), float(x2), float(y2)


def interior_point(region: np.ndarray) -> tuple[float, int, int]:
    """(distance, row, col) of the point deepest inside `region` (distance to its border, image edge = border)."""
    from scipy import ndimage

    padded = np.pad(region, 1)
    dist = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    idx = int(np.argmax(dist))
    r, c = divmod(idx, region.shape[1])
    return float(dist[r, c]), r, c


def next_click(pred: np.ndarray, gt: np.ndarray, rule: str = "ritm") -> Click | None:
    """The next corrective click for prediction `pred` against reference `gt` (both (H, W)); None if perfect."""
    from scipy import ndimage

    if rule not in CLICK_RULES:
        raise ValueError(f"unknown click rule {rule!r}; use one of {', '.join(CLICK_RULES)}")
    pred, gt = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    fn, fp = gt & ~pred, pred & ~gt
    if not fn.any() and not fp.any():
        return None
    if rule == "ritm":
        d_fn, r_fn, c_fn = interior_point(fn) if fn.any() else (0.0, 0, 0)
        d_fp, r_fp, c_fp = interior_point(fp) if fp.any() else (0.0, 0, 0)
        if d_fn >= d_fp:
            return Click(c_fn, r_fn, True)
        return Click(c_fp, r_fp, False)
    # cvpr25: largest connected component among all FN and FP components
    best = None
    for region, positive in ((fn, True), (fp, False)):
        if not region.any():
            continue
        labels, n = ndimage.label(region)
        sizes = np.bincount(labels.ravel())[1:]
        k = int(np.argmax(sizes)) + 1
        if best is None or sizes[k - 1] > best[0]:
            best = (int(sizes[k - 1]), labels == k, positive)
    _, r, c = interior_point(best[1])
    return Click(c, r, best[2])


def mask_box(mask: np.ndarray, margin: float = 0.05) -> tuple[float, float, float, float] | None:
    """(x1, y1, x2, y2) pixels around a (H, W) bool mask, each side grown by `margin` of the box size; None if empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    x1, x2, y1, y2 = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
    mx, my = margin * max(x2 - x1, 1.0), margin * max(y2 - y1, 1.0)
    return clip_box(x1 - mx, y1 - my, x2 + mx, y2 + my, *mask.shape)
