"""A deterministic engine without a model, for tests of everything around the engine (input checks, faults).

The mask is the box, plus a disk at each positive click, minus a disk at each negative click. `fail_at=n` makes the
n-th `predict` (or `encode`) call raise `error`, so a failure can be injected at a chosen point of a session or a
propagation.
"""

from __future__ import annotations

import numpy as np

from MedAgentSegLib.engines.base import Engine, Prediction, Prompts, as_rgb_uint8

RADIUS = 3


class BoxEngine(Engine):
    name = "fake-box"
    device = "cpu"

    def __init__(self, fail_at: int | None = None, error: BaseException | None = None,
                 encode_fails_at: int | None = None, radius: int = RADIUS):
        self.radius = radius
        self.fail_at = fail_at
        self.encode_fails_at = encode_fails_at
        self.error = error or RuntimeError("the engine crashed (injected)")
        self.image: np.ndarray | None = None
        self.predicts = 0
        self.encodes = 0

    def set_image(self, image: np.ndarray) -> None:
        self.image = as_rgb_uint8(image)

    def predict(self, prompts: Prompts, prev_logits: np.ndarray | None = None) -> Prediction:
        self.predicts += 1
        if self.fail_at is not None and self.predicts >= self.fail_at:
            raise self.error
        h, w = self.image.shape[:2]
        mask = np.zeros((h, w), bool)
        if prompts.box is not None:
            x1, y1, x2, y2 = (int(round(v)) for v in prompts.box)
            mask[y1:y2 + 1, x1:x2 + 1] = True
        yy, xx = np.mgrid[:h, :w]
        for (x, y), label in zip(prompts.points, prompts.labels):
            mask[(xx - x) ** 2 + (yy - y) ** 2 <= self.radius ** 2] = bool(label)
        return Prediction(mask, np.zeros((1, 256, 256), np.float32), 0.9)


class PrefetchBoxEngine(BoxEngine):
    """With `encode`, so propagation encodes the next slice on its background thread (as LiteMedSAM does)."""

    def encode(self, image: np.ndarray, key: str | None = None) -> tuple:
        self.encodes += 1
        if self.encode_fails_at is not None and self.encodes >= self.encode_fails_at:
            raise self.error
        return (as_rgb_uint8(image).shape,)


def gray_image(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A textured uint8 gray image (many distinct values: not mistaken for a label map)."""
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


BOXES = {"c0": [5, 6, 30, 40], "c1": [10, 4, 50, 20], "c2": [0, 0, 20, 20]}  # one box per labeling test case


def box_cases(folder):
    """(folder of 3 PNG cases c0..c2, prompts file with BOXES): the small dataset the labeling tests label."""
    import json

    from PIL import Image

    src = folder / "in"
    src.mkdir()
    for i, cid in enumerate(BOXES):
        Image.fromarray(gray_image(seed=i)).save(src / f"{cid}.png")
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"case": cid, "box": box}) + "\n" for cid, box in BOXES.items()))
    return src, prompts
