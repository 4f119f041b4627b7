"""`medagentseg make-trajectories` and `medagentseg train-policy` (argparse)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_trajectories_command", "add_train_policy_command"]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def add_trajectories_command(subparsers: Any) -> argparse.ArgumentParser:
    from ..agent.expert import ExpertConfig

    d = ExpertConfig()
    p = subparsers.add_parser("make-trajectories", help="expert trajectories (needs reference masks) for training",
                              description="Box-to-Point and Sequential-Click expert trajectories on the real engine; "
                                          "a step is kept only if it gains >= tau IoU.")
    p.add_argument("datasets", nargs="+", metavar="DATASET_DIR")
    p.add_argument("--out", required=True, help="folder for trajectories.jsonl and states.npz")
    p.add_argument("--split", choices=["train", "val", "all"], default="train")
    p.add_argument("--limit", type=int, default=None, help="instances per dataset (seeded subsample)")
    p.add_argument("--tau", type=float, default=d.tau)
    p.add_argument("--retries", type=int, default=d.retries)
    p.add_argument("--click-start", type=float, default=d.click_start_p, help="share of Sequential-Click starts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embedding-cache", default=str(REPO / ".cache" / "litemedsam"))
    p.set_defaults(func=run_trajectories)
    return p


def _setup(args: argparse.Namespace, cfg: Any) -> tuple[Any, Any]:
    import torch

    from ..engines import create_engine
    from .cache import EmbeddingCache

    torch.set_num_threads(getattr(args, "threads", 2))
    engine = create_engine(getattr(args, "engine", None), device="cpu")
    return engine, EmbeddingCache(args.embedding_cache)


def run_trajectories(args: argparse.Namespace) -> int:
    from ..agent.expert import ExpertConfig
    from .policy import PolicyTrainConfig, collect, train_instances

    roots = [Path(d) for d in args.datasets]
    missing = [str(r) for r in roots if not (r / "dataset.json").is_file()]
    if missing:
        raise ValueError(f"no dataset.json in {', '.join(missing)}; give dataset folders in the ../shared/data layout")
    cfg = PolicyTrainConfig(datasets=tuple(r.name for r in roots), seed=args.seed,
                            per_dataset={r.name: args.limit for r in roots} if args.limit else {},
                            expert=ExpertConfig(tau=args.tau, retries=args.retries, click_start_p=args.click_start))
    engine, store = _setup(args, cfg)
    insts = []
    for r in roots:
        sub = PolicyTrainConfig(datasets=(r.name,), per_dataset=cfg.per_dataset, seed=cfg.seed)
        insts += train_instances(r.parent, sub, store, engine, split=None if args.split == "all" else args.split)
    sset = collect(insts, engine, store, Path(args.out), cfg)
    kept = sum(1 for line in (Path(args.out) / "trajectories.jsonl").open() if json.loads(line)["kept"])
    print(f"wrote {args.out}/trajectories.jsonl ({len(insts)} trajectories, {kept} kept) and states.npz "
          f"({len(sset)} states)")
    return 0


def add_train_policy_command(subparsers: Any) -> argparse.ArgumentParser:
    from .policy import PolicyTrainConfig

    d = PolicyTrainConfig()
    p = subparsers.add_parser("train-policy", help="train the learned GT-free controller (SFT, then GRPO)",
                              description="Expert trajectories on the training split, behaviour cloning, then GRPO "
                                          "against the real engine. CPU is enough.")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder of dataset folders")
    p.add_argument("--out", default=str(REPO / "MedAgentSegLib" / "weights" / "policy_controller.pt"))
    p.add_argument("--work", default=str(REPO / "runs" / "policy"), help="folder for trajectories and logs")
    p.add_argument("--embedding-cache", default=str(REPO / ".cache" / "litemedsam"))
    p.add_argument("--datasets", default=",".join(d.datasets), help="dataset folders under --data to train on")
    p.add_argument("--sft-steps", type=int, default=d.sft_steps)
    p.add_argument("--rl-groups", type=int, default=d.rl_groups)
    p.add_argument("--rl-time-budget", type=float, default=None, help="stop GRPO after this many seconds")
    p.add_argument("--limit", type=int, default=None, help="instances per dataset (default: the recipe's)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.set_defaults(func=run_train_policy)
    return p


def run_train_policy(args: argparse.Namespace) -> int:
    import torch

    from ..agent.controller import CONTROLLER_ARCH, build_controller
    from ..engines.weights import sha256_file
    from .policy import PolicyTrainConfig, StateSet, collect, grpo, load_embeddings, sft, train_instances

    cfg = PolicyTrainConfig(sft_steps=args.sft_steps, rl_groups=args.rl_groups, seed=args.seed, threads=args.threads,
                            rl_time_budget_s=args.rl_time_budget,
                            datasets=tuple(d.strip() for d in args.datasets.split(",") if d.strip()))
    if args.limit:
        cfg.per_dataset = {k: args.limit for k in cfg.datasets}
    data = Path(args.data)
    missing = [d for d in cfg.datasets if not (data / d / "dataset.json").is_file()]
    if missing:
        raise ValueError(f"{', '.join(missing)} not found under {data}; pass --data DIR (../shared/data layout)")
    torch.manual_seed(cfg.seed)
    engine, store = _setup(args, cfg)
    work = Path(args.work)
    t0 = time.perf_counter()
    insts = train_instances(data, cfg, store, engine)
    states_path = work / "states.npz"
    digest = collection_digest(cfg, insts)
    stamp = work / "states.json"
    if states_path.is_file() and stamp.is_file() and json.loads(stamp.read_text()).get("digest") == digest:
        print(f"reusing {states_path}: made from the same expert settings and instances")
        sset = StateSet.load(states_path)
    else:
        sset = collect(insts, engine, store, work, cfg)
        stamp.write_text(json.dumps({"digest": digest, "instances": len(insts)}))
    collect_s = time.perf_counter() - t0
    embs, index = load_embeddings(store, sset.keys)
    net = build_controller(**CONTROLLER_ARCH)
    t1 = time.perf_counter()
    sft_log = sft(net, sset, embs, index, cfg)
    sft_s = time.perf_counter() - t1
    sft_path = work / "controller_sft.pt"
    work.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), sft_path)
    sft_card = {"name": "medagentseg-learned-controller (SFT stage only)", "sha256": sha256_file(sft_path),
                "stage": "behaviour cloning only, before GRPO: for comparison, not shipped"}
    sft_path.with_suffix(".json").write_text(json.dumps(sft_card, indent=1) + "\n")
    t2 = time.perf_counter()
    rl_log = grpo(net, insts, engine, store, cfg)
    rl_s = time.perf_counter() - t2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(net.state_dict(), tmp)
    tmp.replace(out)
    (work / "train_log.json").write_text(json.dumps({"sft": sft_log, "grpo": rl_log}, indent=1))
    command = "medagentseg train-policy " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    write_policy_card(out, cfg, command, {"collect_s": round(collect_s, 1), "sft_s": round(sft_s, 1),
                                          "grpo_s": round(rl_s, 1)}, sset, len(insts), sft_log, rl_log, engine.name)
    print(f"wrote {out} (sha256 {sha256_file(out)[:12]}...) in {time.perf_counter() - t0:.0f}s; "
          f"SFT-only weights at {sft_path}")
    return 0


def collection_digest(cfg: Any, insts: list[Any]) -> str:
    """What the expert's states depend on: its settings, the seed and the instances (so a stale set is not reused)."""
    import hashlib
    from dataclasses import asdict

    ids = [f"{i.dataset}/{i.case_id}/{i.label}/{i.slice_index}" for i in insts]
    text = json.dumps({"expert": asdict(cfg.expert), "seed": cfg.seed, "instances": ids}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def write_policy_card(out: Path, cfg: Any, command: str, times: dict[str, float], sset: Any, n_inst: int,
                      sft_log: list, rl_log: list, engine_name: str) -> Path:
    """`<out>.json`: SHA-256, data and licences, command, seed, times, last losses; validation added by report."""
    import numpy as np

    from ..agent.controller import ACTIONS, CONTROLLER_ARCH
    from ..engines.weights import read_card, write_card
    from .cli import DATASET_LICENCES

    old = read_card(out)

    card = {
        "name": "medagentseg-learned-controller",
        "description": "GT-free controller over the frozen engine's image embedding: click heatmap (positive / "
                       "negative), action (click / rebox / stop) and predicted IoU. The engine is not changed.",
        "dtype": "float32",
        "architecture": CONTROLLER_ARCH, "actions": list(ACTIONS), "engine_trained_with": engine_name,
        "drop": old.get("drop", 0.2),
        "licence": "trained on research-only / non-commercial data (see data): research use only",
        "data": {d: DATASET_LICENCES.get(d, "see dataset.json") for d in cfg.datasets},
        "split": "training side of datasets.split_patients (seed 2026, patient-level); validation side "
                 "never seen in training",
        "training": {"command": command, "seed": cfg.seed, "config": config_dict_safe(cfg), "instances": n_inst,
                     "states": len(sset), "state_actions": {a: int((np.asarray(sset.action) == i).sum())
                                                            for i, a in enumerate(ACTIONS)},
                     "times_s": times, "hardware": "CPU, 2 cores (shared)",
                     "sft_last": sft_log[-1] if sft_log else None,
                     "grpo_first": rl_log[:10] and {k: float(np.mean([r[k] for r in rl_log[:20]]))
                                                    for k in ("reward", "iou", "turns")},
                     "grpo_last": rl_log and {k: float(np.mean([r[k] for r in rl_log[-20:]]))
                                              for k in ("reward", "iou", "turns")},
                     "grpo_groups": len(rl_log)},
    }
    return write_card(out, card)


def config_dict_safe(cfg: Any) -> dict[str, Any]:
    from .policy import config_dict

    return config_dict(cfg)
