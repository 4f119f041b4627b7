"""segment-anything SAM engine (vit_b / vit_l / vit_h) from a checkpoint file the user gives.

Nothing is downloaded: the user passes the path of Meta's released checkpoint (Apache-2.0). The state
dict is loaded with weights_only=True; if `sha256` is given it is checked first.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .base import Engine, EngineError, Prediction, Prompts, as_rgb_uint8, image_digest, resolve_device
from .weights import load_verified_state

__all__ = ["SAMEngine", "SAM_VARIANTS"]

SAM_VARIANTS = ("vit_b", "vit_l", "vit_h")


class SAMEngine(Engine):
    """Meta's Segment Anything through its SamPredictor (1024x1024 input, coordinate transforms inside)."""

    licence = "Apache-2.0 (segment-anything weights by Meta AI)"

    def __init__(self, variant: str, checkpoint: str | Path | None, device: str = "auto",
                 sha256: str | None = None, use_prev_logits: bool = True):
        if variant not in SAM_VARIANTS:
            raise EngineError(f"unknown SAM variant {variant!r}; use one of {', '.join(SAM_VARIANTS)}")
        if checkpoint is None:
            raise EngineError(f"engine sam_{variant} needs a checkpoint: pass --checkpoint PATH to Meta's "
                              f"sam_{variant}_*.pth (nothing is downloaded)")
        try:
            from segment_anything import SamPredictor, sam_model_registry
        except ImportError:
            raise ImportError("the SAM engine needs segment-anything: pip install 'medagentseg[engine]'") from None
        state = load_verified_state(checkpoint, sha256)
        model = sam_model_registry[variant](checkpoint=None)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise EngineError(f"{checkpoint} is not a SAM {variant} checkpoint ({str(exc).splitlines()[0]}); "
                              "check the variant matches the file") from None
        self.name = f"sam_{variant}"
        self.device = resolve_device(device)
        self.use_prev_logits = use_prev_logits
        self.predictor = SamPredictor(model.to(self.device).eval())
        self._shape: tuple[int, int] | None = None
        self._key: str | None = None
        self.last_timings: dict[str, float] = {}

    def set_image(self, image: np.ndarray) -> None:
        image = as_rgb_uint8(image)
        key = image_digest(image)
        if key == self._key:
            return
        t0 = time.perf_counter()
        self.predictor.set_image(image, image_format="RGB")
        self._shape, self._key = image.shape[:2], key
        self.last_timings = {"encode_s": time.perf_counter() - t0}

    def reset(self) -> None:
        self.predictor.reset_image()
        self._shape = self._key = None

    def predict(self, prompts: Prompts, prev_logits: np.ndarray | None = None) -> Prediction:
        if self._shape is None:
            raise EngineError("no image set: call set_image(image) before predict")
        prompts.validate(*self._shape)
        if prompts.empty:
            raise EngineError("no prompt: give a box or at least one click")
        t0 = time.perf_counter()
        coords = np.asarray(prompts.points, dtype=np.float32) if prompts.points else None
        labels = np.asarray(prompts.labels, dtype=np.int64) if prompts.points else None
        box = np.asarray(prompts.box, dtype=np.float32) if prompts.box is not None else None
        mask_in = None
        if prev_logits is not None and self.use_prev_logits:
            mask_in = np.asarray(prev_logits, dtype=np.float32).reshape(1, 256, 256)
        multimask = box is None and len(prompts.points) == 1 and mask_in is None
        masks, scores, low_res = self.predictor.predict(point_coords=coords, point_labels=labels, box=box,
                                                        mask_input=mask_in, multimask_output=multimask)
        best = int(np.argmax(scores)) if multimask else 0
        self.last_timings = {"decode_s": time.perf_counter() - t0}
        return Prediction(mask=masks[best].astype(bool), logits=low_res[best:best + 1].astype(np.float32),
                          score=float(scores[best]))
