"""`learned`: the GT-free agent driven by the learned controller (`controller.py`), shipped in weights/.

Each turn it reads the engine's embedding and the state maps, then:
1. no prompt yet -> stops and asks for a box (the first prompt is the person's, or a locator's);
2. its own last turn lowered its predicted IoU by more than `drop` -> takes that turn back and stops;
3. otherwise the action head decides: stop, re-box to the mask's extent, or click at the heatmap's peak
   (positive or negative by the channel), away from earlier clicks, snapped to the side of the mask edge the
   click's sign asks for.
`sample=True` draws the action and the click cell from the network's distributions instead (RL rollouts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..actions import Action, StopAction
from ..observation import Decision, UndoTurn
from .common import box_action, click_action, last_agent_turn, mask_box
from .controller import ACTIONS, load_controller
from .features import CELL, GRID, cell_to_pixel, frame, pool_logits, state_maps

__all__ = ["LearnedPolicy", "POLICY_WEIGHTS", "controller_inputs", "choose"]

POLICY_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "policy_controller.pt"
_LOADED: dict[tuple, tuple] = {}


def controller_inputs(obs: Any):
    """(emb (1, 256, 64, 64), state (1, C, 64, 64)) float tensors for one observation."""
    import torch

    emb = obs.embedding()
    if emb is None:
        raise ValueError(f"the engine {getattr(obs.engine, 'name', '?')} exposes no image embedding; the learned "
                         "policy needs a LiteMedSAM engine")
    st = state_maps(pool_logits(obs.logits), obs.prompts.to_dict(), (obs.height, obs.width),
                    obs.score if obs.score is not None else 0.0, obs.mask_turns)
    return emb.float(), torch.from_numpy(st)[None]


def _blocked(obs: Any) -> np.ndarray:
    """(64, 64) bool: cells within 2 cells of an earlier click (clicking there again rarely helps)."""
    out = np.zeros((GRID, GRID), bool)
    scale, _ = frame(obs.height, obs.width)
    yy, xx = np.mgrid[:GRID, :GRID]
    for x, y in obs.prompts.points:
        out |= (yy - y * scale / CELL) ** 2 + (xx - x * scale / CELL) ** 2 <= 2.0 ** 2
    return out


def choose(obs: Any, heat, action_logits, sample: bool = False, rng: np.random.Generator | None = None
           ) -> tuple[str, tuple[int, int, int] | None, float]:
    """Pick (action name, (channel, row, col) for a click, log-probability) from the controller's outputs."""
    import torch

    blocked = torch.from_numpy(_blocked(obs))
    logits = action_logits[0].clone()
    if obs.prompts.box is None:
        logits[ACTIONS.index("rebox")] = -1e4
    logp_a = torch.log_softmax(logits, 0)
    heat = heat[0].masked_fill(blocked[None], -1e4).reshape(-1)
    logp_h = torch.log_softmax(heat, 0)
    rng = rng or np.random.default_rng()
    a = _draw(logp_a, rng) if sample else int(torch.argmax(logp_a))
    name = ACTIONS[a]
    if name != "click":
        return name, None, float(logp_a[a])
    idx = _draw(logp_h, rng) if sample else int(torch.argmax(logp_h))
    ch, rc = divmod(idx, GRID * GRID)
    r, c = divmod(rc, GRID)
    return name, (ch, r, c), float(logp_a[a] + logp_h[idx])


def _draw(logp, rng: np.random.Generator) -> int:
    """Sample an index from log-probabilities (renormalised in float64)."""
    p = np.exp(logp.detach().double().numpy())
    return int(rng.choice(p.size, p=p / p.sum()))


def snap(obs: Any, ch: int, r: int, c: int) -> tuple[float, float, bool]:
    """The click for grid cell (r, c): its centre, or, when the centre is on the wrong side of the mask edge for the
    click's sign (inside the mask for positive, outside for negative), the nearest pixel on the right side within
    one cell of the centre (if there is one)."""
    positive = ch == 0
    x, y = cell_to_pixel(r, c, (obs.height, obs.width))
    scale, _ = frame(obs.height, obs.width)
    half = max(1.0, CELL / scale)
    y0, y1 = int(max(0, y - half)), int(min(obs.height, y + half + 1))
    x0, x1 = int(max(0, x - half)), int(min(obs.width, x + half + 1))
    want = ~obs.mask[y0:y1, x0:x1] if positive else obs.mask[y0:y1, x0:x1]
    centre_ok = bool(obs.mask[int(round(y)), int(round(x))]) != positive
    if want.any() and not centre_ok:
        ys, xs = np.nonzero(want)
        k = int(np.argmin((ys + y0 - y) ** 2 + (xs + x0 - x) ** 2))
        x, y = float(xs[k] + x0), float(ys[k] + y0)
    return x, y, positive


class LearnedPolicy:
    """The learned GT-free agent. weights: a controller .pt with its card (.json, SHA-256) beside it."""

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", drop: float | None = None,
                 sample: bool = False, seed: int = 0):
        path = Path(weights) if weights is not None else POLICY_WEIGHTS
        card_path = path.with_suffix(".json")
        if not path.is_file() or not card_path.is_file():
            raise ValueError(f"the learned policy's weights {path} or their card {card_path.name} are missing; "
                             "reinstall MedAgentSeg, give --policy-weights PT from `medagentseg train-policy`, or use "
                             "--policy heuristic")
        try:
            self.card = json.loads(card_path.read_text())
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError: not a JSON card
            raise ValueError(f"the policy card {card_path} is not valid JSON ({type(exc).__name__}); re-run "
                             "train-policy") from None
        if not isinstance(self.card, dict):
            raise ValueError(f"the policy card {card_path} is not a JSON object; re-run train-policy")
        from ..engines.base import resolve_device

        device = resolve_device(device)
        key = (str(path.resolve()), path.stat().st_mtime_ns, device)
        if key not in _LOADED:
            _LOADED[key] = load_controller(path, self.card.get("sha256"), device=device)
        self.net, _ = _LOADED[key]
        self.drop = float(self.card.get("drop", 0.2) if drop is None else drop)
        self.sample = sample
        self.rng = np.random.default_rng(seed)
        self.last_decision: Decision | None = None
        self._value: tuple[int, float] | None = None  # (turns seen, predicted IoU) after the previous turn

    def evaluate(self, obs: Any):
        """Controller outputs for one observation: (heat, action logits, predicted IoU 0..1)."""
        import torch

        emb, st = controller_inputs(obs)
        dev = next(self.net.parameters()).device  # the engine's embedding may live on another device
        with torch.inference_mode():
            heat, act, val = self.net(emb.to(dev), st.to(dev))
            heat, act, val = heat.cpu(), act.cpu(), val.cpu()
        return heat, act, float(torch.sigmoid(val[0]))

    def next_action(self, obs: Any) -> Action:
        if obs.prompts.empty or obs.logits is None:
            self.last_decision = Decision("no box yet: draw a box around the target, then let me refine", None)
            return StopAction()
        heat, act, value = self.evaluate(obs)
        prev = self._value
        self._value = (len(obs.history), value)
        if (prev is not None and prev[0] == len(obs.history) - 1 and last_agent_turn(obs)
                and value < prev[1] - self.drop):
            self.last_decision = Decision(f"took back my last turn: I expect it made the mask worse "
                                          f"(IoU {prev[1]:.2f} -> {value:.2f})", prev[1])
            return UndoTurn()
        name, cell, _ = choose(obs, heat, act, self.sample, self.rng)
        if name == "stop":
            self.last_decision = Decision(f"stopped: I expect this mask to be right (IoU about {value:.2f})"
                                          if value >= 0.85 else
                                          f"stopped: I do not expect another click to help (IoU about {value:.2f})",
                                          value)
            return StopAction()
        if name == "rebox":
            box = mask_box(obs.mask)
            if box is None:
                self.last_decision = Decision("stopped: the mask is empty; move or redraw the box", value)
                return StopAction()
            self.last_decision = Decision("re-boxed to the mask's extent", value)
            return box_action(box, obs.height, obs.width)
        x, y, positive = snap(obs, *cell)
        inside = bool(obs.mask[int(round(y)), int(round(x))])
        if positive:
            words = "positive click where the mask stops short of the target" if not inside else \
                "positive click to hold the target's core"
        else:
            words = "negative click where the mask leaks past the target's edge" if inside else \
                "negative click to keep the mask out of this tissue"
        self.last_decision = Decision(words, value)
        return click_action(x, y, positive, obs.height, obs.width)
