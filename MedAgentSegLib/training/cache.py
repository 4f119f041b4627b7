"""Image-embedding cache and training-sample cache for the click-aware engine.

The LiteMedSAM image encoder is frozen during fine-tuning and costs ~1.3 s per image on 2 CPU cores, so each
image is encoded once and its embedding stored on disk:

- `EmbeddingCache(dir)`: `{sha1}.npy` = (256, 64, 64) float32 embedding of the engine's exact input, keyed by
  the SHA-1 the engine itself uses for its in-memory cache (bytes + shape of the (H, W, 3) uint8 image), with
  `{sha1}.json` holding scale and the resized size. `prime(engine, image)` hands a stored embedding to a
  LiteMedSAM engine so `set_image` is free; the masks are the ones the engine computes from that embedding.
- Training samples `samples/{dataset}/{case}__{label}__{slice}.npz`: gt256 (256, 256) bool in the network's
  padded input frame, box256 (4,) float32 tight box (x1, y1, x2, y2) in that frame, the embedding key.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EmbeddingCache", "image_key", "build_cache", "DEFAULT_CACHE", "to_input_frame"]

DEFAULT_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "litemedsam"


def image_key(image: np.ndarray, engine: Any = None) -> str:
    """The key LiteMedSAMEngine.set_image caches an image's embedding under; with an engine on a fast encoder path,
    the path is added (its embeddings differ slightly from torch fp32's, which keep the plain key)."""
    from ..engines.base import as_rgb_uint8, image_digest

    tag = getattr(engine, "encoder_tag", "torch")
    return image_digest(as_rgb_uint8(image)) + ("" if tag == "torch" else f"-{tag}")


class EmbeddingCache:
    """Disk cache of LiteMedSAM image embeddings. Safe to share between engines: the encoder is never trained."""

    def __init__(self, root: str | Path = DEFAULT_CACHE):
        self.root = Path(root) / "embeddings"
        self.root.mkdir(parents=True, exist_ok=True)

    def has(self, key: str) -> bool:
        return (self.root / f"{key}.npy").is_file() and (self.root / f"{key}.json").is_file()

    def load(self, key: str) -> tuple[np.ndarray, dict[str, Any]]:
        """((256, 64, 64) float32 embedding, {"scale", "new_hw", "hw"})."""
        return np.load(self.root / f"{key}.npy"), json.loads((self.root / f"{key}.json").read_text())

    def encode(self, engine: Any, image: np.ndarray) -> str:
        """Encode `image` with the engine's image encoder (exact preprocessing) unless cached; returns the key."""
        from ..engines.base import as_rgb_uint8

        image = as_rgb_uint8(image)
        key = image_key(image, engine)
        if self.has(key):
            return key
        engine.set_image(image)
        emb, scale, new_hw, hw = engine.embedding_state()
        tmp = self.root / f"{key}.tmp.npy"
        np.save(tmp, emb[0].float().cpu().numpy().astype(np.float32))
        tmp.replace(self.root / f"{key}.npy")
        (self.root / f"{key}.json").write_text(json.dumps({"scale": scale, "new_hw": list(new_hw), "hw": list(hw)}))
        return key

    def keep(self, engine: Any, image: np.ndarray) -> bool:
        """Encode `image` into the cache unless it is there (LiteMedSAM engines), then prime the engine with it."""
        if hasattr(engine, "embedding_state"):
            self.encode(engine, image)
        return self.prime(engine, image)

    def prime(self, engine: Any, image: np.ndarray) -> bool:
        """Put a stored embedding into a LiteMedSAM engine's in-memory cache; True if it was there."""
        import torch

        from ..engines.base import as_rgb_uint8

        if not hasattr(engine, "add_embedding"):
            return False
        image = as_rgb_uint8(image)
        if engine.has_embedding(image):
            return True
        key = image_key(image, engine)
        if not self.has(key):
            return False
        emb, meta = self.load(key)
        engine.add_embedding(image, (torch.from_numpy(emb)[None], meta["scale"], meta["new_hw"], meta["hw"]))
        return True


def to_input_frame(gt: np.ndarray, scale: float, new_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask -> (256, 256) bool in the network's input frame (resized like the image, zero-padded)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(gt.astype(np.float32))[None, None]
    t = F.interpolate(t, size=tuple(new_hw), mode="bilinear", align_corners=False, antialias=True)
    out = np.zeros((256, 256), dtype=bool)
    out[:new_hw[0], :new_hw[1]] = t[0, 0].numpy() >= 0.5
    if not out.any():  # a tiny target must not vanish: keep its nearest pixel
        ys, xs = np.nonzero(gt)
        out[min(int(ys.mean() * scale), 255), min(int(xs.mean() * scale), 255)] = True
    return out


def _sample_path(root: Path, inst: Any, slice_index: int | None) -> Path:
    sl = "-" if slice_index is None else str(slice_index)
    return root / "samples" / inst.dataset / f"{inst.case_id}__{inst.label}__{sl}.npz"


def build_cache(data_root: str | Path, cache_root: str | Path = DEFAULT_CACHE,
                datasets: tuple[str, ...] = ("btcv-slices", "acdc", "kvasir-seg", "lits-117"),
                max_train_images: dict[str, int] | None = None, neighbours: int = 1, min_area: int = 20,
                seed: int = 0, encode_val: bool = True, log: Any = print) -> dict[str, int]:
    """Encode the training split (and, if encode_val, the validation split) of each dataset under data_root.

    Train: one sample per (case, label) on its 2D image or on the largest axial slice of a 3D label, plus up to
    `neighbours` slices either side where the label has >= min_area pixels. max_train_images: per dataset, a
    seeded subsample of training cases (e.g. {"kvasir-seg": 360}). lits-117 is validation only (one patient).
    Returns counts {"images", "samples", "val_images"}. Resumable: cached items are not recomputed.
    """
    from ..datasets import list_instances, load_instance, read_dataset
    from ..engines.litemedsam import LiteMedSAMEngine
    from ..images import extract_slice, to_engine_rgb
    from ..oracle import box_from_mask

    cache_root = Path(cache_root)
    store = EmbeddingCache(cache_root)
    engine = LiteMedSAMEngine(device="cpu", cache_mb=16)
    max_train_images = max_train_images or {}
    counts = {"images": 0, "samples": 0, "val_images": 0}
    t0 = time.perf_counter()
    for name in datasets:
        root = Path(data_root) / name
        if not (root / "dataset.json").is_file():
            log(f"[cache] {name}: no dataset.json under {root}, skipped")
            continue
        ds = read_dataset(root)
        for split in ("train", "val"):
            if split == "val" and not encode_val:
                continue
            insts, skipped = list_instances(ds, split=split, min_area=min_area)
            for s in skipped:
                log(f"[cache] skipped {s}")
            if split == "train" and name in max_train_images:
                cases = sorted({i.case_id for i in insts})
                rng = np.random.default_rng(seed)
                keep = set(rng.permutation(cases)[:max_train_images[name]].tolist())
                insts = [i for i in insts if i.case_id in keep]
            vol_cache: dict[str, Any] = {}
            for n, inst in enumerate(insts):
                slices: list[int | None] = [inst.slice_index]
                if split == "train" and inst.is_3d and neighbours > 0:
                    slices += [inst.slice_index + d for d in range(-neighbours, neighbours + 1) if d != 0]
                for sl in slices:
                    path = _sample_path(cache_root, inst, sl)
                    if split == "train" and path.is_file():
                        continue
                    try:
                        if inst.is_3d:
                            from ..datasets import load_volume_instance

                            if inst.case_id not in vol_cache:
                                vol_cache.clear()
                                vol_cache[inst.case_id] = load_volume_instance(inst)[0]
                            img = vol_cache[inst.case_id]
                            if not 0 <= sl < img.array.shape[0]:
                                continue
                            from ..datasets import Case, _read_label_map

                            lab = _read_label_map(Case(inst.case_id, Path(inst.image), Path(inst.mask),
                                                       inst.patient), True)[1]
                            gt = extract_slice(lab, sl) == inst.label
                            if gt.sum() < min_area:
                                continue
                            rgb = to_engine_rgb(extract_slice(img.array, sl), img.modality)
                        else:
                            rgb, gt = load_instance(inst)
                    except (ValueError, OSError, RuntimeError) as exc:
                        log(f"[cache] skipped {inst.dataset}/{inst.case_id} label {inst.label_name}: {exc}")
                        continue
                    new = not store.has(image_key(rgb))
                    key = store.encode(engine, rgb)
                    if split == "val":
                        counts["val_images"] += int(new)
                        continue
                    counts["images"] += int(new)
                    meta = store.load(key)[1]
                    gt256 = to_input_frame(gt, meta["scale"], meta["new_hw"])
                    box = np.asarray(box_from_mask(gt), dtype=np.float32) * meta["scale"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.savez_compressed(path, gt256=gt256, box256=box, key=np.array(key),
                                        area=np.array(int(gt.sum())), label=np.array(inst.label_name))
                    counts["samples"] += 1
                if n % 20 == 0:
                    log(f"[cache] {name} {split} {n + 1}/{len(insts)} images+{counts['images']} "
                        f"samples {counts['samples']} val_images {counts['val_images']} "
                        f"{time.perf_counter() - t0:.0f}s")
    log(f"[cache] done {counts} in {time.perf_counter() - t0:.0f}s")
    return counts
