"""Small pieces every GT-free policy uses: boxes from masks, pixel -> grid actions, turn checks."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..actions import AddBBox, AddPoint, pixel_to_grid
from ..oracle import mask_box  # re-exported: every GT-free policy uses it

__all__ = ["mask_box", "box_iou", "box_action", "click_action", "near_clicks", "mask_iou", "last_agent_turn"]


def box_iou(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> float:
    """IoU of two (x1, y1, x2, y2) boxes; 0 when either is None."""
    if a is None or b is None:
        return 0.0
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def box_action(box: tuple[float, float, float, float], h: int, w: int) -> AddBBox:
    """A pixel box -> AddBBox on the 0..999 grid (kept at least one grid unit wide)."""
    x1, y1, x2, y2 = (pixel_to_grid(box[0], w), pixel_to_grid(box[1], h), pixel_to_grid(box[2], w),
                      pixel_to_grid(box[3], h))
    x2, y2 = max(x2, min(999, x1 + 1)), max(y2, min(999, y1 + 1))
    x1, y1 = min(x1, x2 - 1), min(y1, y2 - 1)
    return AddBBox((x1, y1, x2, y2))


def click_action(x: float, y: float, positive: bool, h: int, w: int) -> AddPoint:
    """A pixel click (x = column, y = row) -> AddPoint on the 0..999 grid."""
    return AddPoint((pixel_to_grid(x, w), pixel_to_grid(y, h)), "positive" if positive else "negative")


def near_clicks(obs: Any, x: float, y: float, radius: float) -> bool:
    """True if a click of the prompt state lies within `radius` pixels of (x, y)."""
    return any((px - x) ** 2 + (py - y) ** 2 <= radius ** 2 for px, py in obs.prompts.points)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def last_agent_turn(obs: Any) -> bool:
    """True if the last turn was a mask-producing turn the agent took (one it may take back)."""
    return bool(obs.history) and obs.sources[-1] == "agent" and obs.history[-1]["name"] != "stop_action"
