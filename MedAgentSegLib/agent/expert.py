"""Expert trajectories for training GT-free policies (MedSAM-Agent's "hybrid prompting"). Needs the reference mask.

Two ways to start, both then corrected turn by turn on the real engine:
- Box-to-Point: the target's box with each edge jittered by U(-j, j) of the box size (j drawn up to `max_jitter`).
- Sequential-Click: a positive click at the target's interior point (near its centroid).

Each later step tries candidate actions in order: a click at the interior of each error region (false negatives
-> positive, false positives -> negative), deepest region first (the RITM rule's choice first), then the re-box
to the mask's extent, which a GT-free policy can compute too. The first candidate that gains at least `tau` IoU is
kept; up to `retries` others are tried after it fails; with none kept the expert stops. A trajectory whose final
IoU is not above its first mask's by `tau` is dropped, unless that first mask was already good (IoU >=
`good_iou`: a lesson in stopping).

Every state the expert acted from is recorded (`State`) for behaviour cloning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..metrics import iou
from ..oracle import box_from_mask, interior_point
from .common import box_iou, mask_box

__all__ = ["ExpertConfig", "State", "expert_trajectory", "error_clicks"]


@dataclass
class ExpertConfig:
    """Parameters of the expert (recorded with the trajectories)."""

    tau: float = 0.01
    retries: int = 3
    max_turns: int = 5
    max_jitter: float = 0.15
    click_start_p: float = 0.25  # share of Sequential-Click starts
    good_iou: float = 0.9
    rebox_margin: float = 0.05


@dataclass
class State:
    """A state the expert acted from and what it did. Pixels of the 2D image; logits (1, 256, 256) float32.

    action: "click" | "rebox" | "stop"; click: (x, y, positive) when action == "click".
    """

    logits: np.ndarray
    mask: np.ndarray
    score: float
    prompts: dict[str, Any]
    mask_turns: int
    iou: float
    action: str
    click: tuple[float, float, bool] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def error_clicks(mask: np.ndarray, gt: np.ndarray, n: int) -> list[tuple[float, float, bool, float]]:
    """Up to n clicks (x, y, positive, depth), one per error region (8-connected), deepest interior first."""
    from scipy import ndimage

    out = []
    for region, positive in ((gt & ~mask, True), (mask & ~gt, False)):
        labels, k = ndimage.label(region, structure=np.ones((3, 3), bool))
        if k == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        for comp in np.argsort(sizes)[::-1][:n]:
            depth, r, c = interior_point(labels == comp + 1)
            out.append((float(c), float(r), positive, depth))
    out.sort(key=lambda t: -t[3])
    return out[:n]


def expert_trajectory(session: Any, gt: np.ndarray, cfg: ExpertConfig, rng: np.random.Generator
                      ) -> tuple[dict[str, Any], list[State]]:
    """Run the expert on a fresh `Session`. Returns (record, states); record["kept"] says if it is used."""
    gt = np.asarray(gt).astype(bool)
    start = "click" if rng.random() < cfg.click_start_p else "box"
    if start == "box":
        jitter = float(rng.uniform(0, cfg.max_jitter))
        session.add_box(*box_from_mask(gt, jitter, rng), source="agent")
    else:
        jitter = 0.0
        _, r, c = interior_point(gt)
        session.add_click(float(c), float(r), True, source="agent")
    ious = [iou(session.mask, gt)]
    states: list[State] = []
    tried = 0
    while session.mask_turns < cfg.max_turns:
        state = _state(session, ious[-1])
        kept = None
        candidates: list[tuple[str, Any]] = [("click", c) for c in error_clicks(session.mask, gt, cfg.retries + 1)]
        tight = mask_box(session.mask, cfg.rebox_margin)
        if tight is not None and box_iou(tight, session.prompts.box) < 0.9:
            candidates.insert(min(1, len(candidates)), ("rebox", tight))
        for kind, arg in candidates[:cfg.retries + 1]:
            tried += 1
            if kind == "click":
                session.add_click(arg[0], arg[1], arg[2], source="agent")
            else:
                session.add_box(*arg, source="agent")
            gain = iou(session.mask, gt) - ious[-1]
            if gain >= cfg.tau:
                kept = (kind, arg)
                ious.append(ious[-1] + gain)
                break
            session.undo()
        if kept is None:
            state.action = "stop"
            states.append(state)
            break
        state.action = kept[0]
        if kept[0] == "click":
            state.click = (float(kept[1][0]), float(kept[1][1]), bool(kept[1][2]))
        states.append(state)
    else:
        states.append(_state(session, ious[-1], action="stop"))
    use = ious[-1] >= ious[0] + cfg.tau or ious[0] >= cfg.good_iou
    record = {"start": start, "jitter": round(jitter, 4), "ious": [round(v, 5) for v in ious], "kept": bool(use),
              "candidates_tried": tried, "actions": [s.action for s in states], "config": asdict(cfg)}
    return record, states if use else []


def _state(session: Any, current_iou: float, action: str = "") -> State:
    t = session.turns[-1]
    return State(logits=t.logits, mask=t.mask, score=float(t.score), prompts=session.prompts.to_dict(),
                 mask_turns=session.mask_turns, iou=float(current_iou), action=action)
