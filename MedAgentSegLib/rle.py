"""Run-length encoding of binary masks for JSON trajectories (COCO-style counts, row-major)."""

from __future__ import annotations

import numpy as np

__all__ = ["encode", "decode", "check"]


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


def check(rle: object) -> tuple[tuple[int, ...], list[int]]:
    """(size, counts) of a well-formed RLE dict; ValueError saying what is wrong otherwise (nothing is allocated,
    so a corrupt file cannot ask for a huge mask)."""
    if not isinstance(rle, dict) or not isinstance(rle.get("size"), list) or not isinstance(rle.get("counts"), list):
        raise ValueError("a mask RLE must be {\"size\": [H, W], \"counts\": [...]}: corrupt trajectory")
    size, counts = rle["size"], rle["counts"]
    if not all(_count(v) for v in size) or not all(_count(v) for v in counts):
        raise ValueError(f"mask RLE size {size!r:.60} and counts must be non-negative integers: corrupt trajectory")
    total = int(np.prod(size, dtype=object)) if size else 1
    if sum(counts) != total:
        raise ValueError(f"mask RLE counts sum to {sum(counts)}, expected {total} for size {tuple(size)}: corrupt "
                         "trajectory")
    return tuple(size), counts


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def decode(rle: dict) -> np.ndarray:
    """Inverse of `encode`. Raises ValueError if the RLE is malformed or the counts do not fill the size."""
    size, counts = check(rle)
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    return np.repeat(values, np.asarray(counts, dtype=np.int64)).reshape(size)
