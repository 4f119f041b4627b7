"""Training and calibration of the locator (`medagentseg train-locator`): the samples (slices and their other fields
of view, encoded once into the embedding cache), the head's training loop, validation, the per-concept confidence
thresholds chosen on one half of the validation patients and reported on the other, and the model card. The
locator itself (what the agent runs) is `MedAgentSegLib.agent.locator`.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..agent.locator import (
    CONFIDENCE_MEASURES,
    DEFAULT_WEIGHTS,
    GRID,
    Locator,
    _torch_head,
    box_iou,
    concept_name,
    load_locator,
)
from ..engines.weights import sha256_file


def _down64(mask256: np.ndarray) -> np.ndarray:
    return mask256.reshape(GRID, 4, GRID, 4).mean(axis=(1, 3)).astype(np.float16)


def build_samples(data_root: str | Path, datasets: tuple[str, ...], split: str, cache: Any, engine: Any,
                  max_images: dict[str, int], new_budget: int, empty_slices: int = 1, seed: int = 0,
                  n_blank: int = 0, views: dict[str, float] | None = None, gray: float = 0.0, reverse: bool = False,
                  fill: dict[str, float] | None = None, log: Any = print) -> dict[str, Any]:
    """Images of `split` with every label's target map on the 64 grid; cached embeddings first, then at most
    `new_budget` new encodings in all. Returns {"keys", "targets" (N, C, 64, 64) f16, "known" (N, C) bool,
    "concepts", "dataset", "counts"}; 3D volumes give the largest slice of each label plus `empty_slices` random
    slices (often without some of the targets). views: {dataset: n} adds about n other fields of view per image
    (`locator_views`: zoomed in, zoomed out, cut), encoded into the cache too (they are not in `new_budget`); their
    dataset is "<dataset>:views". reverse: the same images, encoded last first (a second process filling the cache
    from the other end). gray: the share of colour (endoscopy) images also given as their grey luminance.
    fill: {dataset: n}, about n views per image of one structure (drawn by area) filling the frame."""
    from ..datasets import Case, _read_label_map, read_dataset, split_patients
    from ..images import extract_slice, to_engine_rgb
    from ..training.cache import image_key, to_input_frame
    from .locator_views import fill_views, gray_view, views_of

    rng = np.random.default_rng(seed)
    concepts: list[str] = []
    per_ds: dict[str, dict[int, str]] = {}
    kind: dict[str, str] = {}  # endoscopy vs radiology: a concept of the other kind is absent from the image
    for name in datasets:
        ds = read_dataset(Path(data_root) / name)
        kind[name] = "endoscopy" if "endoscop" in ds.modality.lower() else "radiology"
        per_ds[name] = {}
        for k, lab in sorted(ds.labels.items()):
            c = concept_name(lab)
            if c is None:
                log(f"[locator] {name}: label {lab!r} is not in the terminology; skipped")
                continue
            per_ds[name][k] = c
            if c not in concepts:
                concepts.append(c)
    keys, targets, known, dsname = [], [], [], []
    budget = new_budget
    counts: dict[str, int] = {}
    t0 = time.perf_counter()
    for name in datasets:
        ds = read_dataset(Path(data_root) / name)
        assign = split_patients(ds)
        cases = [c for c in ds.cases if assign.get(c.patient) == split]
        cases = [cases[i] for i in rng.permutation(len(cases))]
        items: list[tuple[np.ndarray, np.ndarray, str]] = []  # (rgb, label map slice, key)
        cached_items, fresh_items = [], []
        limit = max_images.get(name, 10 ** 9)
        for case in cases:
            if len(cached_items) >= limit:
                break
            try:
                img, lab = _read_label_map(Case(case.id, case.image, case.mask, case.patient), ds.is_3d)
            except (ValueError, OSError, RuntimeError) as exc:
                log(f"[locator] skipped {name}/{case.id}: {exc}")
                continue
            if ds.is_3d:
                sl = {int(np.argmax((lab == k).sum(axis=(1, 2)))) for k in per_ds[name] if (lab == k).any()}
                sl |= {int(v) for v in rng.integers(0, lab.shape[0], empty_slices)}
                planes = [(to_engine_rgb(extract_slice(img.array, s), img.modality), extract_slice(lab, s))
                          for s in sorted(sl)]
            else:
                planes = [(to_engine_rgb(img.array, img.modality), lab)]
            for rgb, lb in planes:
                key = image_key(rgb, engine)
                (cached_items if cache.has(key) else fresh_items).append((rgb, lb, key))
        items = cached_items[:limit]
        extra = fresh_items[:max(0, min(budget, limit - len(items)))]
        budget -= len(extra)
        items += extra

        def add(rgb: np.ndarray, lb: np.ndarray, key: str, name: str, source: str) -> None:
            if not cache.has(key):
                key = cache.encode(engine, rgb)
            meta = cache.load(key)[1]
            tgt = np.zeros((len(concepts), GRID, GRID), np.float16)
            kn = np.array([any(c in per_ds[d].values() for d in datasets if kind[d] != kind[name])
                           and c not in per_ds[name].values() for c in concepts])
            for k, c in per_ds[name].items():
                ci = concepts.index(c)
                kn[ci] = True
                m = lb == k
                if m.any():
                    tgt[ci] = np.maximum(tgt[ci], _down64(to_input_frame(m, meta["scale"], meta["new_hw"])))
            keys.append(key)
            targets.append(tgt)
            known.append(kn)
            dsname.append(source)

        n_views = 0
        for n, (rgb, lb, key) in enumerate(items[::-1] if reverse else items):
            add(rgb, lb, key, name, name)
            # seeded by the image itself, so the views (and their cache keys) do not depend on the cache's state
            vrng = np.random.default_rng([seed, int(key[:12], 16)])
            for view, vlab, _kind in views_of(rgb, lb, (views or {}).get(name, 0.0), vrng):
                add(view, vlab, image_key(view, engine), name, f"{name}:views")
                n_views += 1
            # a colour frame also as one grey component (its own draw, so the views above stay the same)
            if kind[name] == "endoscopy" and np.random.default_rng([seed, int(key[:12], 16), 1]).random() < gray:
                view = gray_view(rgb)
                add(view, lb, image_key(view, engine), name, f"{name}:views")
                n_views += 1
            frng = np.random.default_rng([seed, int(key[:12], 16), 2])  # its own draw: the views above stay the same
            for view, vlab, _kind in fill_views(rgb, lb, (fill or {}).get(name, 0.0), frng):
                add(view, vlab, image_key(view, engine), name, f"{name}:views")
                n_views += 1
            if n % 50 == 0:
                log(f"[locator] {name} {split} {n + 1}/{len(items)} ({len(extra)} newly encoded, {n_views} views) "
                    f"{time.perf_counter() - t0:.0f}s")
        counts[name] = len(items)
        if n_views:
            counts[f"{name}:views"] = n_views
        log(f"[locator] {name} {split}: {len(items)} images ({len(cached_items)} cached, {len(extra)} encoded), "
            f"{n_views} views")
    # images of nothing (flat, noise, gradients, colour fields): every concept absent
    for rgb in _blank_images(n_blank, seed):
        key = cache.encode(engine, rgb)
        keys.append(key)
        targets.append(np.zeros((len(concepts), GRID, GRID), np.float16))
        known.append(np.ones(len(concepts), bool))
        dsname.append("blank")
    counts["blank"] = n_blank
    return {"keys": keys, "targets": np.stack(targets), "known": np.stack(known), "concepts": concepts,
            "dataset": dsname, "counts": counts}


def _blank_images(n: int, seed: int) -> list[np.ndarray]:
    """`n` seeded (H, W, 3) uint8 images holding no anatomy: flat grey, noise, ramps, flat colour."""
    rng = np.random.default_rng(seed + 7)
    out = []
    for i in range(n):
        h, w = int(rng.integers(32, 400)), int(rng.integers(32, 400))
        k = i % 4
        if k == 0:
            img = np.full((h, w, 3), rng.integers(0, 256), np.uint8)
        elif k == 1:
            img = rng.integers(0, 256, (h, w, 1), dtype=np.uint8).repeat(3, 2)
        elif k == 2:
            img = np.linspace(0, 255, w, dtype=np.float32)[None, :, None].repeat(h, 0).repeat(3, 2).astype(np.uint8)
        else:
            img = np.broadcast_to(rng.integers(0, 256, 3).astype(np.uint8), (h, w, 3)).copy()
        out.append(img)
    return out


# -- training ------------------------------------------------------------------------------------------------

def train_locator(samples: dict[str, Any], cache: Any, epochs: int = 12, batch: int = 16, lr: float = 3e-3,
                  width: int = 32, seed: int = 0, repeat: dict[str, int] | None = None, shift: int = 0,
                  init: dict[str, Any] | None = None, log: Any = print) -> Any:
    """Train the head with BCE + soft Dice on the concepts known for each image; returns the head (eval mode).
    repeat: {dataset: k} shows that dataset's images k times per epoch (few images, many concepts: BTCV).
    shift: each batch moved by up to this many grid cells (embedding and targets together, zero-filled)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    embs = np.stack([cache.load(k)[0].astype(np.float16) for k in samples["keys"]])
    tgt = samples["targets"]
    known = samples["known"]
    head = _torch_head(len(samples["concepts"]), width)
    if init is not None:  # fine-tune a trained head (its outputs in the same order)
        head.load_state_dict(init)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    base = np.concatenate([np.full((repeat or {}).get(d, 1), i) for i, d in enumerate(samples["dataset"])])
    steps = epochs * int(np.ceil(len(base) / batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    # positives are rare on the grid: weigh them up in the BCE
    pos_weight = torch.tensor(4.0)
    t0 = time.perf_counter()
    for ep in range(epochs):
        order = rng.permutation(base)
        total = 0.0
        head.train()
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x = torch.from_numpy(embs[idx].astype(np.float32))
            y = torch.from_numpy(tgt[idx].astype(np.float32))
            k = torch.from_numpy(known[idx]).float()[:, :, None, None]
            if shift > 0:
                dy, dx = (int(v) for v in rng.integers(-shift, shift + 1, 2))
                x, y = _shifted(x, dy, dx), _shifted(y, dy, dx)
            logits = head(x)
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none",
                                                                       pos_weight=pos_weight)
            bce = (bce * k).sum() / (k.sum() * GRID * GRID).clamp(min=1)
            p = torch.sigmoid(logits) * k
            inter = (p * y).sum((2, 3))
            present = (y.sum((2, 3)) > 0).float()
            dice = 1 - (2 * inter + 1) / (p.sum((2, 3)) + y.sum((2, 3)) + 1)
            dice = (dice * present).sum() / present.sum().clamp(min=1)
            loss = bce + dice
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log(f"[locator] epoch {ep + 1}/{epochs} loss {total / len(order):.4f} {time.perf_counter() - t0:.0f}s")
    return head.eval()


def _shifted(t: Any, dy: int, dx: int) -> Any:
    """(B, C, H, W) tensor moved by (dy, dx) cells, the uncovered border zero."""
    import torch

    out = torch.zeros_like(t)
    h, w = t.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        t[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def validate(locator: Locator, data_root: str | Path, datasets: tuple[str, ...], cache: Any, engine: Any,
             min_area: int = 500, max_instances: dict[str, int] | None = None, log: Any = print
             ) -> list[dict[str, Any]]:
    """Per val instance (largest slice for 3D): the locator's box IoU with the reference box and confidence.
    max_instances: {dataset: n}, the first n of its validation instances (dataset order)."""
    from ..datasets import list_instances, load_instance, read_dataset
    from ..oracle import box_from_mask
    from ..training.cache import image_key

    rows = []
    for name in datasets:
        ds = read_dataset(Path(data_root) / name)
        insts, _ = list_instances(ds, split="val", min_area=min_area, limit=(max_instances or {}).get(name))
        for inst in insts:
            concept = concept_name(inst.label_name)
            if not locator.knows(concept):
                rows.append({"dataset": name, "concept": concept, "known": False, "case": inst.case_id,
                             "patient": inst.patient})
                continue
            rgb, gt = load_instance(inst)
            key = image_key(rgb, engine)
            key = key if cache.has(key) else cache.encode(engine, rgb)
            emb, meta = cache.load(key)
            loc = locator.from_embedding(emb, meta["scale"], tuple(meta["hw"]), concept)
            rows.append({"dataset": name, "concept": concept, "known": True, "case": inst.case_id,
                         "patient": inst.patient, "confidence": loc.confidence,
                         "box_iou": box_iou(loc.box, box_from_mask(gt))})
    return rows


THRESHOLD_RULE = ("per concept, the lowest confidence at which <= 10% of its accepted boxes have IoU < 0.5, capped at "
                  "its confidences' 20th percentile (so it asks on <= 20% of them), at least 0.4, on the 'threshold' "
                  "half of the validation patients only; min-area 500; 'threshold' = the same pooled, used for "
                  "concepts with < 5 instances there. The 'held-out' half (other patients) gives the reported rates")
MIN_THRESHOLD = 0.4  # below this the heatmap hardly reaches 0.5 anywhere: the target was not seen (wrong image kind)


PARTS = ("threshold", "held-out")


def calibration_parts(rows: list[dict[str, Any]], seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The validation rows in two parts split by patient, per dataset: "threshold" (the thresholds are chosen on
    it) and "held-out" (the asked and wrong-box rates are reported on it; the thresholds never saw it). Half of each
    dataset's validation patients (rounded up) are in "threshold"; a dataset with one validation patient (LiTS) is
    all "held-out"."""
    import zlib

    parts: dict[str, list[dict[str, Any]]] = {p: [] for p in PARTS}
    for name in sorted({r["dataset"] for r in rows}):
        rs = [r for r in rows if r["dataset"] == name]
        patients = sorted({str(r.get("patient", r.get("case"))) for r in rs})
        order = [patients[i] for i in np.random.default_rng(seed + zlib.crc32(name.encode())).permutation(
            len(patients))]
        first = set(order[:(len(order) + 1) // 2]) if len(order) > 1 else set()
        for r in rs:
            parts["threshold" if str(r.get("patient", r.get("case"))) in first else "held-out"].append(r)
    return parts


def choose_threshold(rows: list[dict[str, Any]], wrong_iou: float = 0.5, max_wrong: float = 0.1,
                     max_asked: float = 0.2) -> float:
    """The lowest confidence threshold at which at most `max_wrong` of the accepted boxes have IoU < wrong_iou,
    but never one that would ask on more than `max_asked` of these validation instances (the issue's target), and
    never below MIN_THRESHOLD (a concept whose validation boxes were all good must still ask on an image without
    it, e.g. an endoscopy frame asked for a kidney)."""
    known = [r for r in rows if r.get("known")]
    if not known:
        return 1.0
    cap = float(np.quantile([r["confidence"] for r in known], max_asked))
    for t in np.round(np.arange(0.0, 1.0, 0.01), 2):
        acc = [r for r in known if r["confidence"] >= t]
        if acc and np.mean([r["box_iou"] < wrong_iou for r in acc]) <= max_wrong:
            return round(max(MIN_THRESHOLD, min(float(t), cap)), 4)
    return round(max(MIN_THRESHOLD, cap), 4)


def choose_thresholds(rows: list[dict[str, Any]], min_n: int = 5) -> tuple[float, dict[str, float]]:
    """(pooled threshold, {concept: threshold}) by `choose_threshold`; a concept with fewer than `min_n`
    validation instances takes the pooled one."""
    pooled = choose_threshold(rows)
    per: dict[str, float] = {}
    for c in sorted({r["concept"] for r in rows if r.get("known")}):
        rs = [r for r in rows if r.get("known") and r["concept"] == c]
        per[c] = choose_threshold(rs) if len(rs) >= min_n else pooled
    return pooled, per


def summarize(rows: list[dict[str, Any]], threshold: float, per: dict[str, float] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sorted({r["dataset"] for r in rows}):
        rs = [r for r in rows if r["dataset"] == name and r.get("known")]
        if not rs:
            out[name] = {"n": 0, "unknown": sum(1 for r in rows if r["dataset"] == name)}
            continue
        out[name] = {"n": len(rs), "box_iou_median": round(float(np.median([r["box_iou"] for r in rs])), 3),
                     **_rates(rs, threshold, per),
                     "unknown": sum(1 for r in rows if r["dataset"] == name and not r.get("known"))}
    return out


def _rates(rs: list[dict[str, Any]], threshold: float, per: dict[str, float] | None) -> dict[str, Any]:
    """asked_rate: share of instances where it asks; wrong_box_rate: share of the boxes it gives with IoU < 0.5."""
    asked = [r["confidence"] < (per or {}).get(r["concept"], threshold) for r in rs]
    given = [r for r, a in zip(rs, asked) if not a]
    return {"asked_rate": round(float(np.mean(asked)), 3) if rs else None,
            "wrong_box_rate": round(float(np.mean([r["box_iou"] < 0.5 for r in given])), 3) if given else None}


def calibrate(rows: list[dict[str, Any]]) -> tuple[float, dict[str, float], dict[str, Any]]:
    """Thresholds chosen on the "threshold" part only; (pooled, per concept, the card's "validation" entry with
    both parts' numbers, per dataset and pooled)."""
    parts = calibration_parts(rows)
    threshold, per = choose_thresholds(parts["threshold"])
    val: dict[str, Any] = {"min_area": 500, "split": "the validation patients of each dataset in two halves "
                           "(calibration_parts): thresholds chosen on 'threshold', rates reported on 'held-out', "
                           "which the thresholds never saw"}
    for part, rs in parts.items():
        known = [r for r in rs if r.get("known")]
        val[part] = {"patients": len({(r["dataset"], r.get("patient")) for r in rs}),
                     "per_dataset": summarize(rs, threshold, per),
                     "pooled": {"n": len(known), **_rates(known, threshold, per)}}
    return threshold, per, val


def write_card(path: Path, head: Any, concepts: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in head.state_dict().items()}
    torch.save(state, path)
    card = {"model": "MedAgentSeg locator: heatmap head over the frozen LiteMedSAM image embedding",
            "concepts": concepts, "sha256": sha256_file(path),
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **extra}
    path.with_suffix(".json").write_text(json.dumps(card, indent=1))
    return card


# -- command ---------------------------------------------------------------------------------------------------

def add_train_locator_command(subparsers: Any) -> Any:
    repo = Path(__file__).resolve().parents[2]
    p = subparsers.add_parser("train-locator", help="train the locator (first box from the request) and its card",
                              description="Trains the locator head on the train split, picks its confidence "
                                          "threshold on the validation split, writes the weights and card.")
    p.add_argument("--data", default=str(repo.parent / "shared" / "data"), help="folder holding the datasets")
    p.add_argument("--datasets", default="kvasir-seg,btcv-slices,acdc,chaos-t2,lits-117")
    p.add_argument("--max-images", default="kvasir-seg=400,btcv-slices=700,acdc=400,chaos-t2=400",
                   help="per dataset, the most training images (cached embeddings are used first)")
    p.add_argument("--new-budget", type=int, default=250, help="the most training images to encode anew in all")
    p.add_argument("--blank", type=int, default=24, help="images of nothing (flat, noise, ramps) as negatives")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--shift", type=int, default=0, help="augmentation: move each batch by up to this many cells")
    p.add_argument("--views", default="kvasir-seg=0.25,btcv-slices=1.5,acdc=0.3",
                   help="per dataset, other fields of view per training image (zoomed in / out, cut; encoded too)")
    p.add_argument("--fill", default="btcv-slices=1,chaos-t2=2,acdc=0.3",
                   help="per dataset, views per training image of one structure (drawn by its area, so mostly the "
                        "large organs) filling the frame, as the liver fills the bundled sample")
    p.add_argument("--gray", type=float, default=0.3,
                   help="share of colour training images also shown as their grey luminance (as a one-component "
                        "viewer loads them)")
    p.add_argument("--max-val", default="kvasir-seg=80",
                   help="per dataset, the most validation instances (the first ones; each is encoded once)")
    p.add_argument("--encode-only", action="store_true",
                   help="only encode the training images and views into the cache, last first (run beside a "
                        "training run to share the encoding between two cores)")
    p.add_argument("--encoder", default="auto", help="LiteMedSAM encoder path for the embeddings: torch, auto, "
                   "openvino-f32 (auto: what segment and the chat use here)")
    p.add_argument("--repeat", default="btcv-slices=3,blank=4",
                   help="per dataset, times its images are shown per epoch")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--init", default=None, help="start from these locator weights (fine-tune) instead of at random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--embedding-cache", default=str(repo / ".cache" / "litemedsam"))
    p.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    p.add_argument("--confidence", default="mean", choices=["mean", "q75"],
                   help="the locator's confidence: the mean (default) or the upper quartile of the heatmap inside its "
                        "box (its card records which; with --calibrate-only the thresholds are chosen for it)")
    p.add_argument("--calibrate-only", action="store_true",
                   help="keep the weights at --out; re-run validation and the threshold choice into its card")
    p.set_defaults(func=run_train_locator)
    return p


def _per_dataset(text: str, kind: Any) -> dict[str, Any]:
    """'kvasir-seg=80,acdc=10' -> {'kvasir-seg': 80, 'acdc': 10}."""
    try:
        return {k.strip(): kind(v) for k, v in (kv.split("=") for kv in text.split(",") if kv.strip())}
    except ValueError:
        raise ValueError(f"{text!r} is not DATASET=N[,DATASET=N...]; e.g. kvasir-seg=80,acdc=10") from None


def _calibrate(args: Any, names: tuple[str, ...], cache: Any, engine: Any) -> int:
    """Validation and thresholds of the weights at --out, written into its card (the SHA-256 is checked)."""
    import shlex
    import sys

    path = Path(args.out)
    loc = load_locator(path)
    loc.thresholds, loc.threshold, loc.measure = {}, 0.0, args.confidence
    rows = validate(loc, args.data, names, cache, engine, max_instances=_per_dataset(args.max_val, int))
    threshold, per, val = calibrate(rows)
    val["max_instances"] = _per_dataset(args.max_val, int)
    print(f"[locator] thresholds {threshold:.2f} {per} (chosen on the 'threshold' half); {json.dumps(val)}")
    card = json.loads(path.with_suffix(".json").read_text())
    card.update({"threshold": threshold, "thresholds": per, "validation": val, "encoder": engine.encoder_tag,
                 "confidence": CONFIDENCE_MEASURES[args.confidence], "confidence_measure": args.confidence,
                 "calibrated_by": "medagentseg train-locator " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
                 "threshold_rule": THRESHOLD_RULE})
    path.with_suffix(".json").write_text(json.dumps(card, indent=1))
    print(f"[locator] calibrated {path.with_suffix('.json')}")
    return 0


def run_train_locator(args: Any) -> int:
    import shlex
    import sys

    import torch

    from ..engines import create_engine
    from ..training.cache import EmbeddingCache

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    names = tuple(d for d in args.datasets.split(",") if d)
    missing = [d for d in names if not (Path(args.data) / d / "dataset.json").is_file()]
    if missing:
        raise ValueError(f"no dataset.json for {', '.join(missing)} under {args.data}; give --data and --datasets")
    max_images = {k: int(v) for k, v in (kv.split("=") for kv in args.max_images.split(",") if kv)}
    cache = EmbeddingCache(args.embedding_cache)
    engine = create_engine(None, device="cpu", encoder=args.encoder)
    if args.calibrate_only:
        return _calibrate(args, names, cache, engine)
    views = _per_dataset(args.views, float)
    fill = _per_dataset(args.fill, float)
    samples = build_samples(args.data, names, "train", cache, engine, max_images, args.new_budget, seed=args.seed,
                            n_blank=args.blank, views=views, gray=args.gray, reverse=args.encode_only,
                            fill=fill)
    if args.encode_only:
        print(f"[locator] encoded {len(samples['keys'])} training images and views into {args.embedding_cache}")
        return 0
    t_data = time.perf_counter() - t0
    repeat = {k: int(v) for k, v in (kv.split("=") for kv in args.repeat.split(",") if kv)}
    init = None
    if args.init:
        init_card = json.loads(Path(args.init).with_suffix(".json").read_text())
        if init_card["outputs"] != samples["concepts"]:
            raise ValueError(f"{args.init} has other outputs ({init_card['outputs']}) than these datasets give "
                             f"({samples['concepts']}); train from scratch (leave out --init)")
        from ..engines.weights import load_verified_state

        init = load_verified_state(Path(args.init), init_card.get("sha256"))
    head = train_locator(samples, cache, epochs=args.epochs, lr=args.lr, width=args.width, seed=args.seed,
                         repeat=repeat, shift=args.shift, init=init)
    t_train = time.perf_counter() - t0 - t_data
    trained = sorted({c for row, kn in zip(samples["targets"], samples["known"])
                      for c, k, t in zip(samples["concepts"], kn, row) if k and t.any()})
    trained = [c for c in samples["concepts"] if c in trained]
    loc = Locator(head, samples["concepts"], known=trained)
    loc.measure = args.confidence
    rows = validate(loc, args.data, names, cache, engine, max_instances=_per_dataset(args.max_val, int))
    threshold, per, val = calibrate(rows)
    val["max_instances"] = _per_dataset(args.max_val, int)
    print(f"[locator] thresholds {threshold:.2f} {per} (chosen on the 'threshold' half); {json.dumps(val)}")
    card = write_card(Path(args.out), head, trained, {"outputs": samples["concepts"],
        "width": args.width, "threshold": threshold, "thresholds": per,
        "confidence": CONFIDENCE_MEASURES[args.confidence], "confidence_measure": args.confidence,
        "threshold_rule": THRESHOLD_RULE,
        "data": {"root": "../shared/data", "split": "train (split_patients, seed 0)", "images": samples["counts"],
                 "targets": "every label of the image; 3D: largest slice of each label + 1 random slice; "
                            "negatives: the other kind's concepts (endoscopy vs CT/MR) and images of nothing",
                 "views": views, "gray": args.gray, "fill": fill,
                 "views_kinds": "locator_views.py: zoom in (50%), zoom out (25%), cut (25%); fill: one structure "
                                "(drawn by area) filling the frame; half with another contrast; gray: colour frames "
                                "as their grey luminance"},
        "command": "medagentseg train-locator " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        "seed": args.seed, "epochs": args.epochs, "init": args.init, "lr": args.lr, "repeat": repeat,
        "shift": args.shift, "threads": args.threads,
        "time_s": {"data": round(t_data), "train": round(t_train), "total": round(time.perf_counter() - t0)},
        "validation": val, "encoder": engine.encoder_tag,
        "licence": "weights: trained on ../shared/data; follow each dataset's terms (research use)"})
    print(f"[locator] wrote {args.out} ({card['sha256'][:12]}) in {time.perf_counter() - t0:.0f}s")
    return 0
