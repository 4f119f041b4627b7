"""`heuristic`: a GT-free policy made of fixed rules over the engine's own outputs. The baseline to beat.

Each turn, in this order:
1. No prompt yet: it cannot place the first one (the person, or a locator, does); it stops and says so.
2. Its own last turn lowered the engine's score by more than `drop`: it takes that turn back and stops. Scores
   are compared like with like: a corrective turn's score against the previous corrective turn's (the box turn
   is scored by another head in the click-aware engine, so the first click is not judged against it).
3. The mask has stopped changing (IoU with the mask before > `still`), or the score is above `confident`: stop.
4. Right after the first box, if the box is much larger than the mask in it (box IoU < `rebox_below`): re-box to
   the mask's extent plus a margin.
5. Otherwise click where the engine's alternative masks (its multimask candidates for the same prompts)
   disagree with the current mask, at the interior of the largest such region: positive where most candidates
   add tissue, negative where most remove it. Regions near an earlier click or smaller than `min_region` of
   the mask are ignored; with none left, it stops.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..actions import Action, StopAction
from ..observation import Decision, UndoTurn
from ..oracle import interior_point
from .common import box_action, box_iou, click_action, last_agent_turn, mask_box, mask_iou, near_clicks

__all__ = ["HeuristicPolicy"]


class HeuristicPolicy:
    """Rules over score, mask change and candidate disagreement; see the module docstring. No training, no GT."""

    def __init__(self, drop: float = 0.03, still: float = 0.98, confident: float = 0.97, rebox_below: float = 0.6,
                 min_region: float = 0.02, margin: float = 0.05):
        self.drop, self.still, self.confident = drop, still, confident
        self.rebox_below, self.min_region, self.margin = rebox_below, min_region, margin
        self.last_decision: Decision | None = None

    def _stop(self, reason: str, confidence: float | None = None) -> Action:
        self.last_decision = Decision(reason, confidence)
        return StopAction()

    def next_action(self, obs: Any) -> Action:
        conf = obs.score
        if obs.prompts.empty:
            return self._stop("no box yet: draw a box around the target, then let me refine")
        scores, masks = obs.scores, obs.masks
        if len(scores) >= 3 and last_agent_turn(obs) and scores[-1] < scores[-2] - self.drop:
            self.last_decision = Decision(f"took back my last turn: the engine's score fell from {scores[-2]:.2f} "
                                          f"to {scores[-1]:.2f}", scores[-2])
            return UndoTurn()
        if len(masks) >= 2 and last_agent_turn(obs) and mask_iou(masks[-1], masks[-2]) > self.still:
            return self._stop("stopped: my last turn barely changed the mask", conf)
        if conf is not None and conf >= self.confident:
            return self._stop(f"stopped: the engine is confident in this mask (score {conf:.2f})", conf)
        h, w = obs.height, obs.width
        mask = obs.mask
        if not mask.any():
            return self._stop("stopped: the mask is empty; move or redraw the box", conf)
        is_first = len(obs.history) == 1 and obs.history[0]["name"] == "add_bbox"
        if is_first and obs.prompts.box is not None:
            tight = mask_box(mask, self.margin)
            if box_iou(tight, obs.prompts.box) < self.rebox_below:
                self.last_decision = Decision("re-boxed to the mask's extent: the box was much larger than the mask",
                                              conf)
                return box_action(tight, h, w)
        cand = obs.candidates()
        if cand is None:
            return self._stop("stopped: this engine gives no alternative masks to compare", conf)
        votes = np.asarray(cand[0], dtype=np.float32).mean(axis=0)
        add, remove = (votes > 0.5) & ~mask, (votes < 0.5) & mask
        best = self._largest_region(obs, add, remove, max(16.0, self.min_region * mask.sum()))
        if best is None:
            return self._stop("stopped: the engine's alternative masks agree with this one", conf)
        region, positive = best
        _, r, c = interior_point(region)
        where = "where the mask misses tissue the alternatives include" if positive else \
            "where the mask leaks past what the alternatives include"
        self.last_decision = Decision(f"{'positive' if positive else 'negative'} click {where}", conf)
        return click_action(c, r, positive, h, w)

    @staticmethod
    def _largest_region(obs: Any, add: np.ndarray, remove: np.ndarray, min_px: float):
        from scipy import ndimage

        radius = 0.02 * max(obs.height, obs.width)
        best, best_size = None, min_px
        for region, positive in ((add, True), (remove, False)):
            labels, n = ndimage.label(region)
            if n == 0:
                continue
            sizes = np.bincount(labels.ravel())[1:]
            for k in np.argsort(sizes)[::-1][:3]:
                if sizes[k] <= best_size:
                    break
                comp = labels == k + 1
                _, r, c = interior_point(comp)
                if not near_clicks(obs, c, r, radius):
                    best, best_size = (comp, positive), sizes[k]
                    break
        return best
