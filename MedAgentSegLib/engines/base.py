"""Promptable segmentation engine interface, after segment-anything's SamPredictor.

`set_image` once per 2D image (expensive, cached), then `predict` many times (cheap). All prompt
coordinates are pixels of the 2D image given to `set_image`: x = column, y = row. Coordinate
transforms to the network's input frame live inside each engine.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Prompts", "Prediction", "Engine", "EngineError", "resolve_device", "as_rgb_uint8", "image_digest",
           "mask_logits", "LOGIT_FRAME"]


class EngineError(RuntimeError):
    """The engine could not run; the message says why and what to do."""


@dataclass
class Prompts:
    """The whole prompt state of one 2D image.

    box: (x1, y1, x2, y2) float pixels, or None. points: list of (x, y) float pixels.
    labels: one per point, 1 = positive (inside the target), 0 = negative.
    """

    box: tuple[float, float, float, float] | None = None
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def copy(self) -> Prompts:
        return Prompts(self.box, list(self.points), list(self.labels))

    @property
    def empty(self) -> bool:
        return self.box is None and not self.points

    def to_dict(self) -> dict:
        return {"box": None if self.box is None else [float(v) for v in self.box],
                "points": [[float(x), float(y)] for x, y in self.points], "labels": [int(v) for v in self.labels]}

    @classmethod
    def from_dict(cls, d: dict) -> Prompts:
        box = d.get("box")
        return cls(None if box is None else tuple(float(v) for v in box),
                   [(float(x), float(y)) for x, y in d.get("points", [])], [int(v) for v in d.get("labels", [])])

    def validate(self, height: int, width: int) -> None:
        """Raise ValueError if a prompt lies outside a (height, width) image or is malformed."""
        if len(self.points) != len(self.labels):
            raise ValueError(f"{len(self.points)} points but {len(self.labels)} labels; give one label per point")
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            if not (0 <= x1 < x2 <= width - 1 and 0 <= y1 < y2 <= height - 1):
                raise ValueError(f"box {tuple(round(v, 1) for v in self.box)} is outside the {width}x{height} image "
                                 f"or empty; use 0 <= x1 < x2 <= {width - 1} and 0 <= y1 < y2 <= {height - 1}")
        for (x, y), lab in zip(self.points, self.labels):
            if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
                raise ValueError(f"click ({x:.1f}, {y:.1f}) is outside the {width}x{height} image; "
                                 f"use 0 <= x <= {width - 1} and 0 <= y <= {height - 1}")
            if lab not in (0, 1):
                raise ValueError(f"click label must be 1 (positive) or 0 (negative), got {lab!r}")


@dataclass
class Prediction:
    """mask: (H, W) bool on the image grid. logits: (1, 256, 256) float32 low-res logits, to feed back.
    score: the engine's own quality estimate (predicted IoU), 0..1.
    update: how the mask came from the network: "model" (its whole answer; after a negative click, what it
    removed outside the clicked tissue stays), "local" (only the part of its change connected to the newest
    click), "disk" (it ignored the click; a disk at the click was painted)."""

    mask: np.ndarray
    logits: np.ndarray
    score: float
    update: str = "model"


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' if available, then 'mps', then 'cpu'; other names pass through."""
    import torch

    if device != "auto":
        try:
            torch.device(device)
        except (RuntimeError, ValueError, TypeError):
            raise EngineError(f"--device {device!r} is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError(f"--device {device}: no CUDA GPU is available here; use --device auto or cpu")
        if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise EngineError("--device mps: Apple's MPS is not available here; use --device auto or cpu")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class Engine(ABC):
    """A promptable 2D segmentation model."""

    name: str = "engine"
    device: str = "cpu"
    licence: str = ""

    @abstractmethod
    def set_image(self, image: np.ndarray) -> None:
        """image: (H, W, 3) uint8 RGB (or (H, W) uint8 gray). Computes and caches the image embedding."""

    @abstractmethod
    def predict(self, prompts: Prompts, prev_logits: np.ndarray | None = None) -> Prediction:
        """Segment the current image from the whole prompt state (and the previous turn's logits)."""

    def reset(self) -> None:
        """Forget the current image (cached embeddings may be kept)."""


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1|3|4) array -> (H, W, 3) uint8. Float input must already be in 0..255 or 0..1."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"engine input must be a 2D image (H, W) or (H, W, 3), got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    image = image[:, :, :3]
    if image.dtype != np.uint8:
        image = image.astype(np.float64)
        if image.max() <= 1.0:
            image = image * 255.0
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def image_digest(image: np.ndarray) -> str:
    """SHA-1 of an image's pixels and shape: the key engines cache embeddings under and trajectories record."""
    image = np.ascontiguousarray(image)
    return hashlib.sha1(image.tobytes() + str(image.shape).encode()).hexdigest()


LOGIT_FRAME = 256  # side of the low-res logits every engine returns and takes back (SAM's mask input)


def mask_logits(mask: np.ndarray, value: float = 8.0) -> np.ndarray:
    """A (H, W) bool mask as (1, 256, 256) float32 low-res logits in the engines' frame (the image resized so its
    longer side is 256, padded at the bottom and right): +value inside, -value outside and in the padding.

    For a mask that no engine made (a specialist model's): the next click turn feeds it back as the previous
    logits, so the engine refines that mask instead of starting over. Nearest-pixel sampling, deterministic."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    scale = LOGIT_FRAME / max(h, w)
    new_h, new_w = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    rows = np.minimum(h - 1, ((np.arange(new_h) + 0.5) / scale).astype(int))
    cols = np.minimum(w - 1, ((np.arange(new_w) + 0.5) / scale).astype(int))
    out = np.full((1, LOGIT_FRAME, LOGIT_FRAME), -value, dtype=np.float32)
    out[0, :new_h, :new_w] = np.where(mask[np.ix_(rows, cols)], value, -value)
    return out
