"""Clicks read through boxes: what LiteMedSAM's own, box-trained decoder makes of a click.

LiteMedSAM was trained on boxes only, and the click-aware overlay on clicks after a box (with the previous mask
fed back). Neither reads a click alone: a lone click gave an empty mask, and on data unlike the overlay's
training set (LiTS CT) the overlay often ignored a corrective click, so a painted disk was all the person got.
Here a click is turned into boxes and the box decoder answers them:

- `object_at`: boxes of growing size centred on the click (SCALES, fractions of the image's longer side) are
  answered; each answer's part at the click is asked again with its own bounding box (grown by MARGIN), as a
  person would draw it. The object is the answer that stays the same when asked with its own box (agreement
  times the decoder's predicted IoU, the best over the scales).
- A lone positive click (no box, no mask yet) is answered with `object_at`.
- A corrective click the overlay ignored: a positive click adds the part of the object at the click that the
  mask lacks (connected to the click); a negative click removes the object at the click from the mask. Only
  objects whose change is at most MAX_CHANGE of the mask count (a larger one is the target itself, or a leak).
  If no box gives one, the caller's painted disk stays.

All work is on the decoder's 256 grid (the image resized so its longer side is 256): boxes in grid cells.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["SCALES", "MARGIN", "MAX_CHANGE", "object_at", "corrective"]

SCALES = (0.04, 0.06, 0.09, 0.13, 0.18, 0.25, 0.35, 0.5, 0.7, 1.0)
MARGIN = 0.05  # the final box: the object's bounding box grown by this share of its size on each side
# A corrective click may change at most this share of the mask: larger object-level answers made the +1..+3
# click Dice worse than the painted disk (eval --protocol lone, 0.5 removal and no cap on additions).
MAX_CHANGE = 0.1
_EIGHT = np.ones((3, 3), bool)

# decode(box) -> (logits, score): box (x1, y1, x2, y2) in grid cells; logits (h, w) float on the valid grid.
Decode = Callable[[tuple[float, float, float, float]], tuple[np.ndarray, float]]


def _part(fg: np.ndarray, r: int, c: int) -> np.ndarray:
    """The 8-connected part of `fg` that holds cell (r, c); empty if (r, c) is background."""
    from scipy import ndimage

    if not fg[r, c]:
        return np.zeros_like(fg)
    comps, _ = ndimage.label(fg, structure=_EIGHT)
    return comps == comps[r, c]


def _around(r: int, c: int, side: float, h: int, w: int) -> tuple[float, float, float, float]:
    half = side / 2
    return (max(0.0, c - half), max(0.0, r - half), min(w - 1.0, c + half), min(h - 1.0, r + half))


def _grown_box(part: np.ndarray) -> tuple[float, float, float, float]:
    h, w = part.shape
    ys, xs = np.nonzero(part)
    dy, dx = (ys.max() - ys.min() + 1) * MARGIN, (xs.max() - xs.min() + 1) * MARGIN
    return (max(0.0, xs.min() - dx), max(0.0, ys.min() - dy), min(w - 1.0, xs.max() + dx),
            min(h - 1.0, ys.max() + dy))


def object_at(decode: Decode, r: int, c: int, hw: tuple[int, int],
              allowed: Callable[[np.ndarray], bool] | None = None) -> tuple[np.ndarray, np.ndarray, float] | None:
    """The object at grid cell (r, c) as the box decoder sees it: ((h, w) bool part holding the cell, (h, w)
    logits of the answer it came from, score), or None if no box around the cell gives it the foreground label.

    Each box centred on the cell (SCALES) is answered, and the answer's part at the cell asked again with its
    own bounding box grown by MARGIN (the box a person would draw around it). The pair that agrees best,
    weighted by the decoder's predicted IoU (agreement x score), wins; its second answer is the object. An answer
    that only fills the box it was given changes when asked with its own box; an object stays.
    allowed(part) -> bool: only objects it accepts are candidates (a negative click: not most of the mask).
    """
    h, w = hw
    best, best_rank = None, -1.0
    for s in SCALES:
        logits, score = decode(_around(r, c, s * max(h, w), h, w))
        part = _part(logits > 0, r, c)
        if not part.any():
            continue
        logits2, score2 = decode(_grown_box(part))
        part2 = _part(logits2 > 0, r, c)
        if allowed is not None and not allowed(part2 if part2.any() else part):
            continue
        agree = float((part & part2).sum() / (part | part2).sum())
        if agree * score > best_rank:
            best, best_rank = ((part2, logits2, score2) if part2.any() else (part, logits, score)), agree * score
    return best


def corrective(decode: Decode, prev: np.ndarray, r: int, c: int, label: int) -> np.ndarray | None:
    """(h, w) bool: the mask after a corrective click at (r, c) read through boxes, or None if the box decoder
    gives nothing to apply (the caller then paints its disk). prev: (h, w) bool mask before the click."""
    if bool(prev[r, c]) == bool(label):  # nothing to correct where the click is
        return None
    limit = MAX_CHANGE * max(1, int(prev.sum()))

    def change(part: np.ndarray) -> np.ndarray:
        return _part(part & ~prev, r, c) if label == 1 else _part(part & prev, r, c)

    found = object_at(decode, r, c, prev.shape, lambda part: change(part).sum() <= limit)
    if found is None:
        return None
    return prev | change(found[0]) if label == 1 else prev & ~change(found[0])
