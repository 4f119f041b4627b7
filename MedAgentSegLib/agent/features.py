"""What the learned controller reads besides the engine's image embedding: the session state as maps on the
embedding's 64x64 grid (the engine's 256x256 input frame, pooled 4x4). Used alike at training and at run time.

Frame: the image is resized so its longer side is 256 and padded at the bottom and right (LiteMedSAM's input);
pixel (x, y) -> input frame (x * scale, y * scale) -> grid cell (row, col) = (y * scale / 4, x * scale / 4).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["GRID", "CELL", "STATE_CHANNELS", "TURN_SCALE", "frame", "state_maps", "pool_logits", "cell_to_pixel"]

GRID = 64
CELL = 4  # input-frame pixels per grid cell
STATE_CHANNELS = 10
TURN_SCALE = 5  # the turns channel is mask turns / 5 (MedSAM-Agent's budget), whatever a session allows


def frame(h: int, w: int) -> tuple[float, tuple[int, int]]:
    """(scale, (new_h, new_w)): the engine's resize of an (h, w) image into the 256 input frame."""
    scale = 256 / max(h, w)
    return scale, (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)))


def pool_logits(logits: np.ndarray) -> np.ndarray:
    """(1, 256, 256) or (256, 256) logits -> (64, 64) float32 means over 4x4 cells."""
    x = np.asarray(logits, dtype=np.float32).reshape(256, 256)
    return x.reshape(GRID, CELL, GRID, CELL).mean(axis=(1, 3))


def _gauss(points: list[tuple[float, float]], scale: float, sigma: float = 1.5) -> np.ndarray:
    out = np.zeros((GRID, GRID), np.float32)
    if not points:
        return out
    yy, xx = np.mgrid[:GRID, :GRID].astype(np.float32)
    for x, y in points:
        cx, cy = x * scale / CELL, y * scale / CELL
        out = np.maximum(out, np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2)))
    return out


def state_maps(pooled: np.ndarray, prompts: dict[str, Any], hw: tuple[int, int], score: float, mask_turns: int
               ) -> np.ndarray:
    """(STATE_CHANNELS, 64, 64) float32 maps of one state.

    pooled: (64, 64) pooled low-res logits of the current mask. prompts: Prompts.to_dict() in image pixels.
    hw: the image's (H, W). Channels: mask probability, clipped logits, uncertainty, box, positive clicks,
    negative clicks, valid (non-padding) cells, engine score, mask turns / TURN_SCALE (at most 1), has-box.
    """
    scale, (nh, nw) = frame(*hw)
    out = np.zeros((STATE_CHANNELS, GRID, GRID), np.float32)
    out[0] = 1.0 / (1.0 + np.exp(-np.clip(pooled, -30, 30)))
    out[1] = np.clip(pooled / 8.0, -1, 1)
    out[2] = 1.0 - np.abs(np.tanh(pooled / 2.0))
    box = prompts.get("box")
    if box is not None:
        x1, y1, x2, y2 = (v * scale / CELL for v in box)
        r0, r1 = int(np.floor(y1)), int(np.ceil(y2)) + 1
        c0, c1 = int(np.floor(x1)), int(np.ceil(x2)) + 1
        out[3, max(0, r0):min(GRID, r1), max(0, c0):min(GRID, c1)] = 1.0
        out[9] = 1.0
    pts, labs = prompts.get("points", []), prompts.get("labels", [])
    out[4] = _gauss([tuple(p) for p, lab in zip(pts, labs) if lab == 1], scale)
    out[5] = _gauss([tuple(p) for p, lab in zip(pts, labs) if lab == 0], scale)
    out[6, :int(np.ceil(nh / CELL)), :int(np.ceil(nw / CELL))] = 1.0
    out[7] = float(score)
    out[8] = min(1.0, mask_turns / TURN_SCALE)
    return out


def cell_to_pixel(row: int, col: int, hw: tuple[int, int]) -> tuple[float, float]:
    """Centre of grid cell (row, col) in image pixels (x, y), clipped to the image."""
    scale, _ = frame(*hw)
    x = (col * CELL + (CELL - 1) / 2) / scale
    y = (row * CELL + (CELL - 1) / 2) / scale
    return float(np.clip(x, 0, hw[1] - 1)), float(np.clip(y, 0, hw[0] - 1))
