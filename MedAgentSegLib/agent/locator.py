"""The locator: from the request's target to the agent's first box, or a question (issue #16).

A small convolutional head over the frozen LiteMedSAM image embedding (1, 256, 64, 64) gives one heatmap per
concept it knows (the terminology's names: "polyp", "liver", "right kidney", "left ventricle", ...). The first
box is the bounding box of the largest connected component of the thresholded heatmap, mapped back to image
pixels; its confidence is the heatmap's maximum probability. Below the card's threshold (chosen on the
validation split) or for a concept it does not know, the agent asks for a box or a click instead of guessing.

Training (`medagentseg train-locator`): every label of a training image is a target (BCE + Dice on the 64x64
grid); concepts of other datasets are not supervised on that image. 3D volumes add slices without the target.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Locator", "LocatorHead", "Location", "load_locator", "concept_name", "heatmap_box",
           "DEFAULT_WEIGHTS", "NotLocatable"]

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "locator.pt"
GRID = 64  # embedding cells per side; one cell = 4 px of the 256 x 256 network input
# dataset label names whose terminology reading is not the whole structure (the first of two targets)
_LABEL_ALIASES = {"portal_vein_and_splenic_vein": "portal vein"}


class NotLocatable(ValueError):
    """The locator cannot place the first prompt: the message asks for a box or a click."""


def concept_name(label: str) -> str | None:
    """The terminology's standard name for a dataset label or a request's target ('kidney_right' -> 'right
    kidney', 'liver tumor' -> 'tumor in liver'); None if the terminology does not know it."""
    from ..language import parse_request

    text = _LABEL_ALIASES.get(label, label).replace("_", " ")
    parsed = parse_request(f"segment {text}")
    return parsed.targets[0].name if parsed.targets else None


def _torch_head(n_out: int, width: int = 32):
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Conv2d(256 + 2, width, 1)
            self.body = nn.Sequential(nn.GELU(), nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
                                      nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.GELU(),
                                      nn.Conv2d(width, width, 3, padding=4, dilation=4), nn.GELU())
            self.out = nn.Conv2d(width, n_out, 1)
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, GRID), torch.linspace(-1, 1, GRID), indexing="ij")
            self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)

        def forward(self, emb):  # (B, 256, 64, 64) -> (B, n_out, 64, 64) logits
            x = torch.cat([emb, self.coords.expand(emb.shape[0], -1, -1, -1)], 1)
            return self.out(self.body(self.inp(x)))

    return Head()


LocatorHead = _torch_head


@dataclass
class Location:
    """The locator's answer: box (x1, y1, x2, y2) in image pixels, confidence 0..1, the concept; slice for 3D."""

    concept: str
    box: tuple[float, float, float, float] | None
    confidence: float
    slice: int | None = None
    mass: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"concept": self.concept, "box": None if self.box is None else [round(v, 1) for v in self.box],
                "confidence": round(self.confidence, 4), "slice": self.slice}


def heatmap_box(prob: np.ndarray, scale: float, hw: tuple[int, int], threshold: float = 0.5
                ) -> tuple[float, float, float, float] | None:
    """Box of the largest connected component of a (64, 64) probability map thresholded at `threshold` (or
    half the map's maximum when that is lower), in the pixels of the (h, w) image the embedding came from
    (network frame / scale). None when the map is empty."""
    from scipy import ndimage

    prob = np.asarray(prob, dtype=np.float32)
    peak = float(prob.max())
    if peak <= 0:
        return None
    # up-sample to the 256 x 256 network frame so box edges are not quantised to 4 px
    big = np.kron(prob, np.ones((4, 4), np.float32)) if prob.shape == (GRID, GRID) else prob
    big = ndimage.uniform_filter(big, 3) if prob.shape == (GRID, GRID) else big
    fg = big >= min(threshold, 0.5 * float(big.max()))
    lab, n = ndimage.label(fg)
    if n == 0:
        return None
    sizes = ndimage.sum(fg, lab, index=np.arange(1, n + 1))
    ys, xs = np.nonzero(lab == int(np.argmax(sizes)) + 1)
    f = big.shape[0] / 256.0
    h, w = hw
    x1, x2 = xs.min() / f / scale, (xs.max() + 1) / f / scale - 1
    y1, y2 = ys.min() / f / scale, (ys.max() + 1) / f / scale - 1
    x1, x2 = float(np.clip(x1, 0, w - 1)), float(np.clip(x2, 0, w - 1))
    y1, y2 = float(np.clip(y1, 0, h - 1)), float(np.clip(y2, 0, h - 1))
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2)


CONFIDENCE_MEASURES = {
    "mean": "mean probability inside the largest component of the thresholded heatmap",
    # a structure that fills the frame spreads middling probabilities over most of it: the mean then says "unsure"
    # of a right box (the bundled sample's liver), the upper quartile less so
    "q75": "75th percentile of the probabilities inside the largest component of the thresholded heatmap",
}


def heatmap_confidence(prob: np.ndarray, threshold: float = 0.5, measure: str = "mean") -> float:
    """Mean (or, measure "q75", upper-quartile) probability inside the largest component of the thresholded map
    (as in `heatmap_box`). On the validation split the mean separates good boxes (IoU >= 0.5) from bad ones better
    than the maximum (AUC 0.85 vs 0.81 pooled over Kvasir, BTCV and ACDC)."""
    if measure not in CONFIDENCE_MEASURES:
        raise ValueError(f"unknown confidence measure {measure!r}; use one of {', '.join(CONFIDENCE_MEASURES)}")
    from scipy import ndimage

    prob = np.asarray(prob, dtype=np.float32)
    if prob.max() <= 0:
        return 0.0
    fg = prob >= min(threshold, 0.5 * float(prob.max()))
    lab, n = ndimage.label(fg)
    sizes = ndimage.sum(fg, lab, index=np.arange(1, n + 1))
    inside = prob[lab == int(np.argmax(sizes)) + 1]
    return float(inside.mean() if measure == "mean" else np.quantile(inside, 0.75))


class Locator:
    """Heatmaps over a LiteMedSAM embedding; `locate(engine, rgb, concept)` -> Location."""

    def __init__(self, head: Any, outputs: list[str], threshold: float = 0.0, card: dict | None = None,
                 known: list[str] | None = None):
        self.head = head.eval()
        self.outputs = list(outputs)  # one heatmap each, in the head's order
        self.concepts = [c for c in self.outputs if known is None or c in known]  # the ones it was trained for
        self.threshold = float(threshold)
        self.card = card or {}
        self.thresholds = {k: float(v) for k, v in self.card.get("thresholds", {}).items()}
        self.measure = str(self.card.get("confidence_measure", "mean"))  # how its thresholds were chosen

    def threshold_for(self, concept: str | None) -> float:
        """The confidence below which the agent asks for a prompt (the card's, per concept where it has one)."""
        return self.thresholds.get(concept, self.threshold)

    def asks(self, loc: Location) -> bool:
        return loc.box is None or loc.confidence < self.threshold_for(loc.concept)

    def knows(self, concept: str | None) -> bool:
        return concept in self.concepts

    def probabilities(self, emb: Any) -> np.ndarray:
        """(1, 256, 64, 64) tensor or (256, 64, 64) array -> (n_concepts, 64, 64) probabilities."""
        import torch

        t = torch.as_tensor(np.asarray(emb, dtype=np.float32) if isinstance(emb, np.ndarray) else emb).float()
        if t.ndim == 3:
            t = t[None]
        with torch.no_grad():
            return torch.sigmoid(self.head(t))[0].numpy()

    def from_embedding(self, emb: Any, scale: float, hw: tuple[int, int], concept: str) -> Location:
        if not self.knows(concept):
            raise NotLocatable(self.unknown_message(concept))
        prob = self.probabilities(emb)[self.outputs.index(concept)]
        box = heatmap_box(prob, scale, hw)
        confidence = heatmap_confidence(prob, measure=self.measure) if box is not None else 0.0
        return Location(concept, box, confidence, mass=float(prob.sum()))

    def locate(self, engine: Any, rgb: np.ndarray, concept: str) -> Location:
        """Set `rgb` on a LiteMedSAM engine (its embedding is reused by the session) and locate `concept`."""
        if not hasattr(engine, "embedding_state"):
            raise NotLocatable(f"the engine {getattr(engine, 'name', engine)!r} gives no LiteMedSAM embedding for the "
                               "locator; give --box X1,Y1,X2,Y2 or --click X,Y,+ around the target")
        if not self.knows(concept):
            raise NotLocatable(self.unknown_message(concept))
        engine.set_image(rgb)
        emb, scale, _new_hw, hw = engine.embedding_state()
        return self.from_embedding(emb, scale, tuple(hw), concept)

    def locate_volume(self, engine: Any, planes: Any, n_slices: int, concept: str, samples: int = 12) -> Location:
        """Scan `samples` evenly spaced slices (planes(k) -> (H, W, 3) uint8) and locate `concept` on the one
        where its heatmap mass is largest."""
        if not self.knows(concept):
            raise NotLocatable(self.unknown_message(concept))
        ks = sorted({int(round(v)) for v in np.linspace(0, n_slices - 1, min(samples, n_slices) + 2)[1:-1]}) \
            if n_slices > 2 else list(range(n_slices))
        best: Location | None = None
        for k in ks:
            loc = self.locate(engine, planes(k), concept)
            loc.slice = k
            if loc.box is not None and (best is None or loc.mass > best.mass):
                best = loc
        return best or Location(concept, None, 0.0, slice=ks[len(ks) // 2])

    # one sentence each (issue #24): what to give, not the list of every concept it knows
    def unknown_message(self, concept: str | None) -> str:
        return (f"I cannot find {concept or 'this target'} on my own yet: give --box X1,Y1,X2,Y2 or --click X,Y,+ "
                "around it.")

    def low_confidence_message(self, loc: Location) -> str:
        return (f"I am not sure where the {loc.concept} is (locator confidence {loc.confidence:.2f} < "
                f"{self.threshold_for(loc.concept):.2f}): give --box X1,Y1,X2,Y2 or --click X,Y,+ around it.")


def load_locator(path: str | Path | None = None) -> Locator:
    """The shipped locator (weights checked against the SHA-256 in the model card beside them)."""
    from ..engines.base import EngineError
    from ..engines.weights import load_verified_state

    path = Path(path or DEFAULT_WEIGHTS)
    card_path = path.with_suffix(".json")
    if not path.is_file() or not card_path.is_file():
        raise NotLocatable(f"no locator weights at {path} (and its card {card_path.name}); give --box or --click, "
                           "or re-create them with `medagentseg train-locator`")
    card = json.loads(card_path.read_text())
    state = load_verified_state(path, card.get("sha256"))
    head = _torch_head(len(card["outputs"]), card.get("width", 32))
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        raise EngineError(f"{path} does not fit the locator of its card ({str(exc).splitlines()[0]})") from None
    return Locator(head, card["outputs"], card.get("threshold", 0.0), card, known=card["concepts"])


# -- training data ---------------------------------------------------------------------------------------------

def box_iou(a: Any, b: Any) -> float:
    """IoU of two (x1, y1, x2, y2) pixel boxes (inclusive pixel edges)."""
    if a is None or b is None:
        return 0.0
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    area = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return float(inter / area) if area > 0 else 0.0
