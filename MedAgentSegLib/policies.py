"""Policies choose the next action from the session state.

- `OraclePolicy`: simulated expert (needs the reference mask): jittered box, then RITM/CVPR25 clicks.
- `ScriptedPolicy`: plays a fixed list of actions (the user's own prompts from the command line).
- `TextPolicy`: wraps any text generator (a local multimodal LLM) that answers in MedSAM-Agent's
  tool-call form; the observation and the tool schemas are built here, the reply is parsed strictly.

Building a policy by name (the GT-free agents included) is `MedAgentSegLib.agent.registry.create_policy`: the agents
sit above this module, so it names none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

from .actions import Action, AddBBox, AddPoint, StopAction, parse_tool_call, pixel_to_grid, tool_schemas
from .metrics import iou
from .observation import overlay_observation  # kept here too: the factory's callers import it from policies
from .oracle import box_from_mask, next_click

__all__ = ["Policy", "OraclePolicy", "ScriptedPolicy", "TextPolicy", "POLICY_NAMES", "overlay_observation",
           "GT_FREE_POLICIES"]

POLICY_NAMES = ("oracle", "scripted", "heuristic", "learned", "mllm")
GT_FREE_POLICIES = ("heuristic", "learned", "mllm")


class Policy(Protocol):
    """next_action gets the session's `observation.Observation` (GT-free), never the session."""

    def next_action(self, observation: Any) -> Action: ...


class OraclePolicy:
    """Simulated expert. gt: (H, W) reference mask of the session's image.

    first: "box" (Box-to-Point) or "click" (Sequential-Click: a positive click at the target's interior).
    rule: click rule, "ritm" or "cvpr25". jitter: box edge jitter as a fraction of box size (seeded).
    stop_iou: stop once IoU reaches this (None: keep clicking until the turn limit).
    """

    def __init__(self, gt: np.ndarray, first: str = "box", rule: str = "ritm", jitter: float = 0.0,
                 seed: int = 0, stop_iou: float | None = None):
        self.gt = np.asarray(gt).astype(bool)
        if not self.gt.any():
            raise ValueError("the reference mask is empty: the oracle has no target to aim for")
        if first not in ("box", "click"):
            raise ValueError(f"first must be 'box' or 'click', got {first!r}")
        self.first, self.rule, self.jitter, self.stop_iou = first, rule, jitter, stop_iou
        self.rng = np.random.default_rng(seed)

    def next_action(self, obs: Any) -> Action:
        h, w = self.gt.shape
        if self.gt.shape != (obs.height, obs.width):
            raise ValueError(f"reference mask {self.gt.shape} does not match the image "
                             f"{(obs.height, obs.width)}")
        if not obs.history:
            if self.first == "box":
                x1, y1, x2, y2 = box_from_mask(self.gt, self.jitter, self.rng)
                return AddBBox((pixel_to_grid(x1, w), pixel_to_grid(y1, h), pixel_to_grid(x2, w), pixel_to_grid(y2, h)))
            click = next_click(np.zeros_like(self.gt), self.gt, self.rule)
        else:
            mask = obs.mask
            if self.stop_iou is not None and iou(mask, self.gt) >= self.stop_iou:
                return StopAction()
            click = next_click(mask, self.gt, self.rule)
        if click is None:
            return StopAction()
        return AddPoint((pixel_to_grid(click.x, w), pixel_to_grid(click.y, h)),
                        "positive" if click.positive else "negative")


class ScriptedPolicy:
    """Plays `actions` in order, then stops."""

    def __init__(self, actions: Iterable[Action]):
        self._actions = list(actions)
        self._i = 0

    def next_action(self, obs: Any) -> Action:
        if self._i >= len(self._actions):
            return StopAction()
        self._i += 1
        return self._actions[self._i - 1]


class TextPolicy:
    """A policy driven by a text generator: generate(messages, image) -> reply text with one tool call.

    The generator is any local callable (e.g. a multimodal LLM loaded from a path the user gives); nothing
    here downloads a model. A malformed reply raises actions.ToolCallError, which the caller reports.
    """

    SYSTEM = ("You segment '{target}' in a medical image by calling one tool per turn. The image shows the "
              "current mask in green. Coordinates are integers on a 0..999 grid, x first. Start with add_bbox, "
              "refine with add_point (positive inside the target, negative on wrongly included tissue), and "
              "call stop_action when the mask is right. At most {max_turns} mask-producing turns.")

    def __init__(self, generate: Callable[[list[dict[str, Any]], np.ndarray], str]):
        self.generate = generate

    def messages(self, obs: Any) -> list[dict[str, Any]]:
        history = [{"name": a["name"], "arguments": a["arguments"]} for a in obs.history]
        return [
            {"role": "system", "content": self.SYSTEM.format(target=obs.target, max_turns=obs.max_turns),
             "tools": tool_schemas()},
            {"role": "user", "content": f"Target: {obs.target}. Actions so far: {history}. "
                                        f"Turns used: {obs.mask_turns}/{obs.max_turns}."},
        ]

    def next_action(self, obs: Any) -> Action:
        observation = overlay_observation(obs.image, obs.mask)
        return parse_tool_call(self.generate(self.messages(obs), observation))
