"""Interactive-simulation fine-tuning of LiteMedSAM's prompt encoder and mask decoder (image encoder frozen).

Each training sample is one target on one cached image embedding. One iteration simulates a session for a
batch of targets, exactly as `LiteMedSAMEngine.predict` runs it at inference:

- step 0: a box (tight box in the 256x256 input frame, each edge jittered by U(-j, j) of the box size,
  j ~ U(0, max_jitter)), no mask input, single-mask output;
- steps 1..T: one more click per step, placed in the current error (false negatives -> positive click,
  false positives -> negative click; which region by the RITM rule or by area, where in it by the distance
  transform maximum or a point sampled in its interior), the whole prompt set re-sent (box + all clicks), the
  previous step's 256x256 low-res logits fed back as `masks=` (detached), single-mask output.

The loss (BCE + soft Dice on the 256x256 logits, plus MSE of the IoU head against the real IoU, plus
`click_weight` x BCE at the newest click's cell) is taken at every trained step and averaged.

click_update="local" simulates sessions as the engine runs them with its local rule
(`click_rules.update.local_update`): the mask fed to the next step is the previous one with only the change at
the newest click applied, or a disk where the decoder ignored it. The loss stays on the decoder's raw answer.
The rule's look at the image (a negative click removes only the clicked tissue) is not simulated: the cache
holds embeddings, not images.

first_turn="base" (the shipped recipe): step 0 is LiteMedSAM's own, frozen prompt encoder + mask decoder, as
the engine runs it with `base_first_turn`; only the corrective steps are trained. Box-only quality is then the
original's on any data, including data unlike the training set, and the fine-tuned modules learn to correct
the original's box masks. first_turn="trained" also trains step 0, with an optional distillation term towards
the frozen original decoder.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TrainConfig", "load_samples", "train", "save_overlay", "simulate_click"]


@dataclass
class TrainConfig:
    """Hyper-parameters of the interactive fine-tune (defaults = the shipped recipe)."""

    steps: int = 700
    batch: int = 4
    clicks: int = 5
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup: int = 20
    max_jitter: float = 0.2
    exact_box_p: float = 0.15
    teacher_weight: float = 0.25
    iou_weight: float = 0.5
    seed: int = 0
    threads: int = 2
    time_budget_s: float | None = None
    datasets: tuple[str, ...] = ("kvasir-seg", "btcv-slices", "acdc")
    log_every: int = 10
    first_turn: str = "base"  # "base": step 0 by the frozen original modules; "trained": step 0 trained too
    click_update: str = "global"  # how a step's answer becomes the next step's mask input, as the engine's rule
    click_weight: float = 0.0  # extra BCE at the newest click's cell: the decoder must not ignore a click
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    dataset: str
    name: str
    emb_index: int
    gt: np.ndarray  # (256, 256) bool, network input frame
    box: np.ndarray  # (4,) float32 tight box x1, y1, x2, y2 in that frame
    valid_hw: tuple[int, int]


def load_samples(cache_root: str | Path, datasets: tuple[str, ...]) -> tuple[list[Sample], Any]:
    """Read training samples and their embeddings: (samples, (N_images, 256, 64, 64) float16 tensor)."""
    import torch

    from .cache import EmbeddingCache

    cache_root = Path(cache_root)
    store = EmbeddingCache(cache_root)
    samples: list[Sample] = []
    keys: dict[str, int] = {}
    sizes: dict[str, tuple[int, int]] = {}
    embs: list[Any] = []
    for name in datasets:
        folder = cache_root / "samples" / name
        if not folder.is_dir():
            raise FileNotFoundError(f"no cached training samples for {name} under {folder}; "
                                    "run `medagentseg train-engine` (it builds the cache first)")
        for path in sorted(folder.glob("*.npz")):
            z = np.load(path)
            key = str(z["key"])
            if key not in keys:
                emb, meta = store.load(key)
                keys[key] = len(embs)
                sizes[key] = (int(meta["new_hw"][0]), int(meta["new_hw"][1]))
                embs.append(torch.from_numpy(emb).half())
            samples.append(Sample(name, path.stem, keys[key], z["gt256"].astype(bool),
                                  z["box256"].astype(np.float32), sizes[key]))
    if not samples:
        raise FileNotFoundError(f"no training samples under {cache_root}/samples")
    return samples, torch.stack(embs)


def _interior_point(region: np.ndarray, rng: np.random.Generator, sample: bool) -> tuple[float, int, int]:
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    dmax = float(dist.max())
    if not sample or dmax <= 1.0:
        r, c = divmod(int(np.argmax(dist)), region.shape[1])
        return dmax, r, c
    ys, xs = np.nonzero(dist >= 0.5 * dmax)
    i = int(rng.integers(len(ys)))
    return dmax, int(ys[i]), int(xs[i])


def simulate_click(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> tuple[float, float, int] | None:
    """A corrective click (x, y, label) for pred vs gt, both (256, 256) bool; None if they agree.

    Region: RITM rule (deeper of FN/FP) 70% of the time, else the larger by area. Position: the distance
    transform maximum half of the time, else a random interior point (distance >= half the maximum).
    """
    fn, fp = gt & ~pred, pred & ~gt
    if not fn.any() and not fp.any():
        return None
    sample = bool(rng.random() < 0.5)
    if not fp.any():
        positive = True
    elif not fn.any():
        positive = False
    elif rng.random() < 0.7:
        from scipy import ndimage

        d_fn = ndimage.distance_transform_edt(np.pad(fn, 1)).max()
        d_fp = ndimage.distance_transform_edt(np.pad(fp, 1)).max()
        positive = bool(d_fn >= d_fp)
    else:
        positive = bool(fn.sum() >= fp.sum())
    _, r, c = _interior_point(fn if positive else fp, rng, sample)
    return float(c), float(r), int(positive)


def _jitter_box(box: np.ndarray, rng: np.random.Generator, cfg: TrainConfig, hw: tuple[int, int]) -> np.ndarray:
    x1, y1, x2, y2 = (float(v) for v in box)
    if rng.random() >= cfg.exact_box_p:
        j = rng.uniform(0, cfg.max_jitter)
        bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        dx = rng.uniform(-j, j, 2) * bw
        dy = rng.uniform(-j, j, 2) * bh
        x1, x2, y1, y2 = x1 + dx[0], x2 + dx[1], y1 + dy[0], y2 + dy[1]
    from ..oracle import clip_box

    return np.array(clip_box(x1, y1, x2, y2, *hw), dtype=np.float32)


def _hard_scores(logits, gt):
    """(IoU, Dice) per sample of the thresholded logits against gt, both (B, 1, 256, 256); no gradient."""
    import torch

    with torch.no_grad():
        hard = (logits > 0).float()
        i = (hard * gt).sum(dim=(1, 2, 3))
        u = ((hard + gt) > 0).float().sum(dim=(1, 2, 3))
        return i / u.clamp(min=1), 2 * i / (hard.sum(dim=(1, 2, 3)) + gt.sum(dim=(1, 2, 3))).clamp(min=1)


def _loss(logits, iou_pred, gt, teacher=None, cfg: TrainConfig | None = None):
    """logits (B, 1, 256, 256), iou_pred (B, 1), gt (B, 1, 256, 256) float. Returns (loss, dice per sample)."""
    import torch
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, gt)
    p = torch.sigmoid(logits)
    inter = (p * gt).sum(dim=(1, 2, 3))
    soft_dice = 1 - (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + gt.sum(dim=(1, 2, 3)) + 1)
    real_iou, dice = _hard_scores(logits, gt)
    loss = bce + soft_dice.mean() + cfg.iou_weight * F.mse_loss(iou_pred[:, 0], real_iou)
    if teacher is not None and cfg.teacher_weight > 0:
        loss = loss + cfg.teacher_weight * F.binary_cross_entropy_with_logits(logits, torch.sigmoid(teacher))
    return loss, dice


def _click_loss(logits, coords, labels):
    """Mean BCE of the logit at each sample's newest click against its label (coords in the 256 frame)."""
    import torch
    import torch.nn.functional as F

    size = logits.shape[-1]
    cells = [logits[b, 0, min(size - 1, int(pts[-1][1])), min(size - 1, int(pts[-1][0]))]
             for b, pts in enumerate(coords)]
    target = torch.tensor([float(lab[-1]) for lab in labels], dtype=logits.dtype)
    return F.binary_cross_entropy_with_logits(torch.stack(cells), target)


def train(cache_root: str | Path, out: str | Path, cfg: TrainConfig, log: Any = print) -> dict[str, Any]:
    """Fine-tune and write the overlay to `out` (.pt); returns a summary (loss curve, timings, counts)."""
    import copy

    import torch

    from ..click_rules.update import local_update
    from ..engines.litemedsam import LiteMedSAMEngine

    if cfg.click_update not in ("global", "local"):
        raise ValueError(f"click_update must be 'global' or 'local', got {cfg.click_update!r}")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    t_start = time.perf_counter()
    samples, embs = load_samples(cache_root, cfg.datasets)
    by_ds: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_ds.setdefault(s.dataset, []).append(i)
    log(f"[train] {len(samples)} samples on {len(embs)} images: "
        + ", ".join(f"{k} {len(v)}" for k, v in by_ds.items()))
    net = LiteMedSAMEngine(device="cpu").net
    pe, md = net.prompt_encoder, net.mask_decoder
    teacher_pe, teacher_md = copy.deepcopy(pe).eval(), copy.deepcopy(md).eval()
    for p in net.image_encoder.parameters():
        p.requires_grad_(False)
    params = [p for p in list(pe.parameters()) + list(md.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        """Linear warm-up, then cosine to 5% over the run; with a time budget, progress is the larger of the
        step fraction and the time fraction, so a slow machine still ends its schedule inside the budget."""
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        if cfg.time_budget_s:
            frac = max(frac, (time.perf_counter() - t_start) / cfg.time_budget_s)
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(frac, 1.0))))

    pe.train()
    md.train()
    dense_pe = None
    names = sorted(by_ds)
    history: list[dict[str, float]] = []
    run_loss, run_d0, run_dT = [], [], []
    done = 0
    for step in range(cfg.steps):
        if cfg.time_budget_s is not None and time.perf_counter() - t_start > cfg.time_budget_s:
            log(f"[train] time budget {cfg.time_budget_s:.0f}s reached at step {step}")
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = [int(rng.choice(by_ds[names[int(rng.integers(len(names)))]])) for _ in range(cfg.batch)]
        batch = [samples[i] for i in idx]
        emb = embs[[s.emb_index for s in batch]].float()
        gt = torch.from_numpy(np.stack([s.gt for s in batch]))[:, None].float()
        gt_np = np.stack([s.gt for s in batch])
        boxes = torch.from_numpy(np.stack([_jitter_box(s.box, rng, cfg, s.valid_hw) for s in batch]))[:, None]
        if dense_pe is None:
            dense_pe = pe.get_dense_pe().detach()
        coords: list[list[tuple[float, float]]] = [[] for _ in batch]
        labels: list[list[int]] = [[] for _ in batch]
        prev = None
        total = 0.0
        opt.zero_grad(set_to_none=True)
        n_steps = cfg.clicks + 1
        n_trained = cfg.clicks if cfg.first_turn == "base" else n_steps
        for t in range(n_steps):
            points = None
            if t > 0:
                points = (torch.tensor(coords, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64))
            teacher = None  # the frozen original's box-turn logits: the base turn itself, or a distillation target
            if t == 0 and (cfg.first_turn == "base" or cfg.teacher_weight > 0):
                with torch.no_grad():
                    ts, td = teacher_pe(points=None, boxes=boxes, masks=None)
                    teacher, _ = teacher_md(image_embeddings=emb, image_pe=dense_pe, sparse_prompt_embeddings=ts,
                                            dense_prompt_embeddings=td, multimask_output=False)
            if t == 0 and cfg.first_turn == "base":
                logits = teacher
                dice = _hard_scores(logits, gt)[1]
            else:
                sparse, dense = pe(points=points, boxes=boxes, masks=prev)
                logits, iou_pred = md(image_embeddings=emb, image_pe=dense_pe, sparse_prompt_embeddings=sparse,
                                      dense_prompt_embeddings=dense, multimask_output=False)
                loss, dice = _loss(logits, iou_pred, gt, teacher, cfg)
                if t > 0 and cfg.click_weight > 0:
                    loss = loss + cfg.click_weight * _click_loss(logits, coords, labels)
                if t > 0 and cfg.click_update == "local":
                    composed = [local_update(logits[b:b + 1].detach(), prev[b:b + 1], coords[b], labels[b], 1.0,
                                             batch[b].valid_hw)[0] for b in range(len(batch))]
                    logits = torch.cat(composed)
                    dice = _hard_scores(logits, gt)[1]
                (loss / n_trained).backward()
                total += float(loss.detach()) / n_trained
            if t == 0:
                run_d0.append(float(dice.mean()))
            if t == n_steps - 1:
                run_dT.append(float(dice.mean()))
                break
            prev = logits.detach()
            pred = (prev[:, 0] > 0).numpy()
            for b in range(len(batch)):
                click = simulate_click(pred[b], gt_np[b], rng)
                if click is None:  # perfect already: repeat the last click (or a positive one at the centre)
                    if coords[b]:
                        click = (*coords[b][-1], labels[b][-1])
                    else:
                        _, r, c = _interior_point(gt_np[b], rng, False)
                        click = (float(c), float(r), 1)
                coords[b].append((click[0], click[1]))
                labels[b].append(click[2])
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        run_loss.append(total)
        done = step + 1
        if (step + 1) % cfg.log_every == 0:
            rec = {"step": step + 1, "loss": float(np.mean(run_loss)), "dice_box": float(np.mean(run_d0)),
                   "dice_last": float(np.mean(run_dT)), "lr": lr_at(step),
                   "elapsed_s": time.perf_counter() - t_start}
            history.append(rec)
            log(f"[train] step {rec['step']}/{cfg.steps} loss {rec['loss']:.4f} box {rec['dice_box']:.3f} "
                f"+{cfg.clicks} clicks {rec['dice_last']:.3f} lr {rec['lr']:.2e} {rec['elapsed_s']:.0f}s")
            run_loss, run_d0, run_dT = [], [], []
        if (step + 1) % 100 == 0:  # a partial overlay, so a killed run still leaves something to evaluate
            save_overlay(net, Path(out).with_suffix(".partial.pt"))
    out = Path(out)
    save_overlay(net, out)
    summary = {"config": asdict(cfg), "steps_done": done, "samples": len(samples), "images": int(len(embs)),
               "per_dataset": {k: len(v) for k, v in by_ds.items()}, "history": history,
               "train_s": round(time.perf_counter() - t_start, 1)}
    out.with_suffix(".train.json").write_text(json.dumps(summary, indent=1))
    return summary


def save_overlay(net: Any, out: str | Path, half: bool = False) -> Path:
    """Write only the prompt_encoder.* and mask_decoder.* tensors (fp32, or fp16 if half) to `out`."""
    import torch

    state = {k: (v.half() if half and v.is_floating_point() else v).detach().clone().contiguous()
             for k, v in net.state_dict().items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out)
    return out
