"""What a policy sees each turn: an `Observation`, built by the session, with no reference mask in it.

A policy never gets the `Session` itself (its metadata may hold anything a caller put there), only this frozen
record of what a person at the screen would also see: the image, the current mask and the engine's own outputs,
the prompts so far and the target's name. The oracle keeps its reference mask itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .engines.base import Prompts

__all__ = ["Observation", "Decision", "UndoTurn", "overlay_observation"]


@dataclass(frozen=True)
class Observation:
    """One turn's view of the session, GT-free.

    image: (H, W, 3) uint8, the engine's input. mask: (H, W) bool current mask (all False before the first turn).
    logits: (1, 256, 256) float32 low-res logits of the current mask (None before the first turn).
    score: the engine's predicted IoU of the current mask (None before the first turn).
    scores: the engine's score after each mask-producing turn so far, oldest first (nan where it gave none).
    masks: the mask after each mask-producing turn so far (read-only views), oldest first.
    prompts: the pixel prompt state (box, clicks) that made the current mask.
    history: the action dict of every turn so far ({"name", "arguments", ...}), oldest first.
    sources: who took each turn ("agent" or "user"), aligned with history.
    mask_turns / max_turns: mask-producing turns used and allowed.
    engine: the engine, for policies that read its features (`embedding()`) or candidates (`candidates()`);
    it holds the current image and nothing else about the case.
    """

    image: np.ndarray
    target: str
    mask: np.ndarray
    logits: np.ndarray | None
    score: float | None
    scores: tuple[float, ...]
    masks: tuple[np.ndarray, ...]
    prompts: Prompts
    history: tuple[dict[str, Any], ...]
    sources: tuple[str, ...]
    mask_turns: int
    max_turns: int
    engine: Any = field(default=None, repr=False, compare=False)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def turns_left(self) -> int:
        return max(0, self.max_turns - self.mask_turns)

    def embedding(self):
        """The engine's (1, C, h, w) image embedding tensor of this image, or None if the engine has none."""
        return None if self.engine is None else self.engine.embedding()

    def candidates(self):
        """The engine's alternative masks for the current prompts: ((K, H, W) bool, (K,) scores), or None."""
        if self.engine is None or self.prompts.empty:
            return None
        return self.engine.candidates(self.prompts)


@dataclass(frozen=True)
class Decision:
    """Why a policy chose its action, for the chat and the trajectory: `reason` in words, `confidence` 0..1."""

    reason: str
    confidence: float | None = None


@dataclass(frozen=True)
class UndoTurn:
    """Take back the agent's own last turn (its mask got worse by the policy's own reading); the agent then stops.

    Not a tool of the LLM action space: GT-free policies return it when their check of a turn fails.
    """

    name = "undo_turn"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": {}}


def overlay_observation(image: np.ndarray, mask: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """MedSAM-Agent's observation: the image with the current mask as a semi-transparent green overlay.

    image: (H, W, 3) uint8; mask: (H, W) bool. Returns (H, W, 3) uint8.
    """
    out = image.astype(np.float32).copy()
    green = np.array([0, 255, 0], dtype=np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * green
    return np.clip(out, 0, 255).astype(np.uint8)
