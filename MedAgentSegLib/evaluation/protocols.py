"""Evaluation protocols on one instance: box, clicks, noc, agent. Seeded, engine-agnostic.

All protocols run through `Session` (whole prompt state + previous logits fed back, as the product does) and
the `OraclePolicy` simulated user (RITM click rule). Step 0 is the box; step i is the mask after click i.

- box: one box prompt, each edge jittered by U(-jitter, jitter) of the box size (seeded per instance).
- clicks: box, then K oracle clicks, one per step (K + 1 steps recorded unless the mask becomes perfect,
  in which case the last value is carried forward).
- noc: box, then clicks until IoU >= 0.90 and at least K clicks were given, at most 20 clicks. NoC@t =
  clicks after the box needed to reach IoU >= t (0 if the box already does; 20 if never: a failure).
- agent: box, then the given policy acts until it stops (at most K mask-producing turns after the box). The
  steps are the masks the session kept (a turn the agent took back is not a step, but counts in "turns").
- lone: a lone positive click at the target's interior (the maximum of its distance transform), no box: its
  Dice is "dice_lone" and how the engine applied it "update_lone". Then the clicks protocol from the box.
- auto: the request only (issue #16): the locator places the first box (no prompt from the reference), then the
  policy acts as in `agent`. Where the locator does not know the target or is below its threshold, the agent
  asks; it is then scored as if the person drew the reference box (the agent runs from that box).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PROTOCOLS", "run_instance", "run_auto", "noc_from_ious", "interior_point",
           "MAX_NOC_CLICKS"]

PROTOCOLS = ("box", "clicks", "noc", "agent", "propagate", "auto", "lone")
MAX_NOC_CLICKS = 20


def noc_from_ious(ious: list[float], threshold: float, max_clicks: int = MAX_NOC_CLICKS) -> tuple[int, bool]:
    """(clicks after the box to reach `threshold`, reached?) from IoU per step (step 0 = box)."""
    from ..metrics import noc

    if ious and ious[0] >= threshold:
        return 0, True
    n = noc(list(ious[1:]), threshold, max_clicks)
    reached = any(v >= threshold for v in ious[1:max_clicks + 1])
    return n, reached


def run_instance(engine: Any, image: np.ndarray, gt: np.ndarray, protocol: str, clicks: int = 5,
                 jitter: float = 0.1, seed: int = 0, policy: str = "oracle", rule: str = "ritm",
                 target: str = "target", policy_kwargs: dict[str, Any] | None = None,
                 box: tuple[float, float, float, float] | None = None) -> dict[str, Any]:
    """Run one protocol on one 2D instance.

    image: (H, W, 3) uint8 engine input; gt: (H, W) bool reference (non-empty). seed: the instance seed.
    Returns {"dice_by_step", "iou_by_step" (lists, step 0 = box), "turns" (mask-producing turns),
    "box" (x1, y1, x2, y2 pixels), "clicks" [[x, y, positive]], "updates" (Prediction.update of each turn
    after the box), "noc85", "noc90", "reached90"} where the
    NoC fields are None unless protocol == "noc". box: the first box (pixels) instead of the reference's jittered one.
    """
    from ..metrics import dice, iou
    from ..oracle import box_from_mask
    from ..policies import OraclePolicy
    from ..session import Session

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    gt = np.asarray(gt).astype(bool)
    if not gt.any():
        raise ValueError("the reference mask is empty: nothing to segment")
    lone = _lone_click(engine, image, gt, target) if protocol == "lone" else {}
    rng = np.random.default_rng(seed)
    box = box_from_mask(gt, jitter, rng) if box is None else box
    session = Session(engine, image, target, max_turns=MAX_NOC_CLICKS + 1)
    session.add_box(*box, source="agent")
    dices, ious = [dice(session.mask, gt)], [iou(session.mask, gt)]
    out: dict[str, Any] = {"box": [round(float(v), 2) for v in box], "noc85": None, "noc90": None,
                           "reached90": None}
    if protocol in ("clicks", "noc", "lone"):
        oracle = OraclePolicy(gt, first="box", rule=rule, seed=seed)
        limit = MAX_NOC_CLICKS if protocol == "noc" else clicks
        while len(dices) - 1 < limit:
            if protocol == "noc" and ious[-1] >= 0.90 and len(dices) - 1 >= clicks:
                break
            action = oracle.next_action(session.observe())
            if action.to_dict()["name"] == "stop_action":  # mask is perfect
                break
            session.act(action)
            dices.append(dice(session.mask, gt))
            ious.append(iou(session.mask, gt))
    elif protocol in ("agent", "auto"):
        from ..agent.registry import create_policy

        kwargs: dict[str, Any] = dict(policy_kwargs or {})
        if policy == "oracle":
            kwargs.update({"rule": rule, "seed": seed, "stop_iou": 0.90})
            pol = create_policy(policy, gt=gt, **kwargs)
        else:  # GT-free: the policy never sees gt
            pol = create_policy(policy, **kwargs)
        session.max_turns = clicks + 1  # what the policy is told it may use (the box counted)
        session.run(pol, max_turns=clicks + 1)
        made = [t for t in session.turns if t.produces_mask]
        dices = [dice(t.mask, gt) for t in made]
        ious = [iou(t.mask, gt) for t in made]
        # turns the policy chose (not the stop the turn limit forces), the ones it took back included
        asked = [(t.action, t.timings) for t in session.turns if t.source == "agent" and "policy_s" in t.timings]
        asked += [(r["action"], r["timings"]) for r in session.reverted]
        out["reverted"] = len(session.reverted)
        out["policy_s"] = [round(timings["policy_s"], 6) for _, timings in asked]
        out["engine_s"] = [round(t.timings["engine_s"], 6) for t in made]
        out["actions"] = [action["name"] for action, _ in asked]
    out["turns"] = session.mask_turns + len(session.reverted)
    out["updates"] = [t.update for t in session.turns if t.produces_mask][1:]
    out["clicks"] = [[round(float(p[0]), 1), round(float(p[1]), 1), int(lab)]
                     for p, lab in zip(session.prompts.points, session.prompts.labels)]
    if protocol == "noc":
        out["noc85"], _ = noc_from_ious(ious, 0.85)
        out["noc90"], out["reached90"] = noc_from_ious(ious, 0.90)
    out["dice_by_step"] = [round(v, 6) for v in dices]
    out["iou_by_step"] = [round(v, 6) for v in ious]
    out.update(lone)
    return out


def interior_point(gt: np.ndarray) -> tuple[float, float]:
    """(x, y) pixel of a non-empty (H, W) bool mask farthest from its edge (the distance transform's maximum)."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(gt, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), gt.shape)
    return float(c), float(r)


def _lone_click(engine: Any, image: np.ndarray, gt: np.ndarray, target: str) -> dict[str, Any]:
    """--protocol lone's first part: one positive click at the target's interior in a new session, no box."""
    from ..metrics import dice
    from ..session import Session

    x, y = interior_point(gt)
    turn = Session(engine, image, target).add_click(x, y, positive=True, source="agent")
    return {"dice_lone": round(dice(turn.mask, gt), 6), "update_lone": turn.update, "lone_click": [x, y]}


def run_auto(engine: Any, image: np.ndarray, gt: np.ndarray, locator: Any, concept: str | None, clicks: int = 4,
             seed: int = 0, policy: str = "learned", target: str = "target",
             policy_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """--protocol auto on one 2D instance: the locator's box (from the image and the concept only), then the policy.

    Adds to the agent protocol's record: "box_iou" (locator box vs the reference's tight box; None when the
    target is unknown), "confidence", "asked" (unknown, no box, or confidence below the locator's threshold; the
    run then starts from the reference box), and "dice_ref_final" (the same policy from the reference box).
    """
    from ..agent.locator import box_iou
    from ..oracle import box_from_mask

    gt = np.asarray(gt).astype(bool)
    ref = box_from_mask(gt)
    loc = locator.locate(engine, image, concept) if locator.knows(concept) else None
    asked = loc is None or locator.asks(loc)
    first = ref if asked else loc.box
    out = run_instance(engine, image, gt, "auto", clicks, 0.0, seed, policy=policy, target=target,
                       policy_kwargs=policy_kwargs, box=first)
    from_ref = out if asked else run_instance(engine, image, gt, "auto", clicks, 0.0, seed, policy=policy,
                                              target=target, policy_kwargs=policy_kwargs, box=ref)
    out.update({"concept": concept, "asked": bool(asked),
                "confidence": None if loc is None else round(loc.confidence, 4),
                "box_iou": None if loc is None else round(box_iou(loc.box, ref), 4),
                "locator_box": None if loc is None or loc.box is None else [round(v, 1) for v in loc.box],
                "dice_ref_final": from_ref["dice_by_step"][-1]})
    return out
