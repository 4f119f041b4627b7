"""What a negative click points at in the image: the tissue around the clicked spot that looks like it.

Used by `click_rules.update.local_update`: when the decoder obeys a negative click, it may remove only pixels of the
clicked tissue. Out of its training domain the decoder can answer one negative click by dropping most of the
target (on LiTS CT, a click on a tumour inside the liver took the liver with it); a click on a tumour says
that this tumour is not the target, nothing about the liver around it. Works on the 256-cell grid the decoder
sees, smoothed a little so CT noise does not decide which pixels look alike.
"""
from __future__ import annotations

import numpy as np

SMOOTH_SIGMA = 1.0  # cells; the grid is the image resized so its longest side is 256
WINDOW = 2  # the clicked spot's intensity is the mean over a (2*WINDOW+1)^2 window around the click
TOL_SPREAD = 3.0  # pixels within this many local standard deviations of that mean look like the click
TOL_MIN = 0.04  # ... and at least this far (images are min-max normalised to 0..1)
TOL_MAX = 0.15  # ... and at most this far, so a click on texture does not match everything
# Cells the clicked tissue is grown by: its edge (partial volume, MR shading) looks like neither side, and the
# removal must reach it (without it a false ring stayed around the ACDC blood pool).
GROW = 2


def smooth_grid(grid: np.ndarray) -> np.ndarray:
    """(C, h, w) float image on the decoder grid -> the same, Gaussian-smoothed in the plane."""
    from scipy import ndimage

    return ndimage.gaussian_filter(np.asarray(grid, dtype=np.float32), sigma=(0, SMOOTH_SIGMA, SMOOTH_SIGMA))


def like_click(smoothed: np.ndarray, r: int, c: int) -> np.ndarray:
    """(h, w) bool: the pixels whose smoothed intensity, in every channel, is close to the clicked spot's."""
    _, h, w = smoothed.shape
    win = smoothed[:, max(0, r - WINDOW):min(h, r + WINDOW + 1), max(0, c - WINDOW):min(w, c + WINDOW + 1)]
    mean = win.mean(axis=(1, 2))
    tol = float(np.clip(TOL_SPREAD * win.std(axis=(1, 2)).max(), TOL_MIN, TOL_MAX))
    return np.abs(smoothed - mean[:, None, None]).max(axis=0) <= tol


def clicked_tissue(smoothed: np.ndarray, r: int, c: int, prev_fg: np.ndarray, grow: int = GROW) -> np.ndarray:
    """(h, w) bool: the part of the previous mask that a negative click at (r, c) may remove.

    The connected (8-neighbour) region of previous-mask pixels that look like the clicked spot and hold it,
    grown by `grow` cells. Empty if the clicked pixel itself is not in the previous mask.
    """
    from scipy import ndimage

    like = like_click(smoothed, r, c) & prev_fg
    comps, _ = ndimage.label(like, structure=np.ones((3, 3), bool))
    if comps[r, c] == 0:
        return np.zeros_like(like)
    region = comps == comps[r, c]
    return ndimage.binary_dilation(region, np.ones((3, 3), bool), iterations=grow) if grow else region
