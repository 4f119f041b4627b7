"""Run-length encoding of binary masks for JSON trajectories (COCO-style counts, row-major)."""

from __future__ import annotations

import numpy as np

__all__ = ["encode", "decode"]


def encode(mask: np.ndarray) -> dict:
    """(H, W) bool -> {"size": [H, W], "counts": [n0, n1, ...]} alternating runs, starting with background."""
    mask = np.asarray(mask).astype(bool)
    flat = mask.ravel(order="C").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def decode(rle: dict) -> np.ndarray:
    """Inverse of `encode`. Raises ValueError if the counts do not fill the size."""
    size = tuple(int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    total = int(np.prod(size))
    if counts.sum() != total or (counts < 0).any():
        raise ValueError(f"mask RLE counts sum to {counts.sum()}, expected {total} for size {size}: corrupt trajectory")
    values = np.zeros(counts.size, dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape(size)
