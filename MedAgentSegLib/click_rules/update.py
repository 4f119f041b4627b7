"""How a corrective click changes the mask, over any engine's logits (issue #25: the rules apart from the models).

The engine wrapper (`engines.litemedsam`) hands its decoder's answer and the previous logits to `local_update`,
and the engine trainer (`training.trainer`) composes its simulated turns with the same function, so the rule the
network is trained under is the one it runs under. Works on (1, 1, 256, 256) logit tensors on the decoder grid.
"""

from __future__ import annotations

import numpy as np

from .region import clicked_tissue

__all__ = ["local_update", "MAX_CLICK_RADIUS", "FORCED_LOGIT", "LOCAL_RULE_VERSION"]


# Largest disk, in 256-grid cells, painted when the decoder ignores a click (about 4% of the image side).
MAX_CLICK_RADIUS = 10
FORCED_LOGIT = 8.0
# Bumped when local_update changes what it keeps, so `report --reuse` does not take results of an older rule.
# 2: a negative click removes only the clicked tissue.
LOCAL_RULE_VERSION = 2


def local_update(new, prev, points, labels, scale: float, valid_hw: tuple[int, int],
                 image_grid: np.ndarray | None = None):
    """Apply only the change that the newest click asked for; keep the previous logits everywhere else.
    Returns (logits, "model" | "local" | "disk"), the second saying which rule below applied.

    new, prev: (1, 1, 256, 256) logit tensors; points: [(x, y)] image pixels, newest last; labels: 1/0 each.
    image_grid: for negative clicks, the (C, 256, 256) image on the decoder grid, smoothed
    (`region.smooth_grid`); None skips the look at the image (the trainer's simulation).
    - The decoder gave the clicked cell the clicked label:
      - first click after the box: take its whole answer. The box mask came from LiteMedSAM's own decoder;
        this is the turn where the click-aware decoder re-reads the whole shape.
      - later clicks: take only the connected component (8-connected, on the 256 grid inside the image) of
        "new foreground not in prev" (positive) or "prev foreground not in new" (negative) holding the click.
      - a negative click, with image_grid, removes pixels only inside the clicked tissue
        (`region.clicked_tissue`); what the decoder removed elsewhere stays. A click whose removal has
        nothing in the clicked tissue (a click outside the mask) is taken as ignored (below). Out of its
        training domain the decoder can drop most of an organ for one click on a lesion inside it (LiTS liver).
    - The decoder ignored the click: a disk around it, as wide as its distance to the previous mask's edge
      (at most MAX_CLICK_RADIUS cells), gets the clicked label. A click is never ignored, and never changes
      the mask far from where the user pointed.
    """
    import torch
    from scipy import ndimage

    h, w = valid_hw
    new_fg = (new[0, 0, :h, :w] > 0).cpu().numpy()
    prev_fg = (prev[0, 0, :h, :w] > 0).cpu().numpy()
    x, y = points[-1]
    r, c = min(h - 1, max(0, int(y * scale))), min(w - 1, max(0, int(x * scale)))
    label = labels[-1]
    if new_fg[r, c] == bool(label):
        changed = (new_fg & ~prev_fg) if label == 1 else (prev_fg & ~new_fg)
        tissue = None
        if label == 0 and image_grid is not None:
            tissue = clicked_tissue(image_grid[:, :h, :w], r, c, prev_fg)
        if len(points) == 1:  # the first corrective click: the whole answer
            if tissue is None:
                return new, "model"
            if (changed & tissue).any():  # ... but removals only in the clicked tissue
                return torch.where(_on_grid(changed & ~tissue, new), prev, new), "model"
        else:
            comps, _ = ndimage.label(changed, structure=np.ones((3, 3), bool))
            keep = comps == comps[r, c] if comps[r, c] > 0 else np.zeros_like(changed)
            if tissue is None:
                return torch.where(_on_grid(keep, new), new, prev), "local"
            if (keep & tissue).any():
                return torch.where(_on_grid(keep & tissue, new), new, prev), "local"
    # The decoder ignored the click: paint a disk that reaches the previous mask's edge.
    side = prev_fg if label == 0 else ~prev_fg
    radius = min(MAX_CLICK_RADIUS, float(ndimage.distance_transform_edt(side)[r, c]))
    yy, xx = np.ogrid[:new.shape[-2], :new.shape[-1]]
    disk = torch.from_numpy((yy - r) ** 2 + (xx - c) ** 2 <= max(radius, 1.0) ** 2).to(new.device)
    disk[h:, :] = False
    disk[:, w:] = False
    painted = prev.clamp(min=FORCED_LOGIT) if label == 1 else prev.clamp(max=-FORCED_LOGIT)
    return torch.where(disk, painted, prev), "disk"


def _on_grid(cells: np.ndarray, like):
    """(h, w) bool on the valid part of the grid -> (256, 256) bool tensor on `like`'s device, False in padding."""
    import torch

    out = torch.zeros(like.shape[-2:], dtype=torch.bool, device=like.device)
    out[:cells.shape[0], :cells.shape[1]] = torch.from_numpy(cells).to(like.device)
    return out
