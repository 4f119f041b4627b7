"""`medagentseg eval` and `medagentseg report` sub-commands (argparse)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_eval_command", "add_report_command", "run_eval", "run_report", "REPORT_DATASETS"]

REPORT_DATASETS = ("kvasir-seg", "btcv-slices", "acdc", "lits-117")
REPO = Path(__file__).resolve().parents[2]


def add_eval_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add `eval DATASET_DIR... --protocol ... --json OUT` to an argparse subparsers object."""
    p = subparsers.add_parser("eval", help="evaluate an engine on datasets in the dataset.json format",
                              description="Evaluate an interactive engine with simulated users (seeded).")
    p.add_argument("datasets", nargs="+", metavar="DATASET_DIR", help="folder(s) holding a dataset.json")
    p.add_argument("--protocol", choices=["box", "clicks", "noc", "agent"], default="clicks")
    p.add_argument("--engine", default=None, help="engine name (default: the default engine)")
    p.add_argument("--policy", default="oracle", help="policy for --protocol agent (oracle | scripted)")
    p.add_argument("--clicks", type=int, default=5, help="clicks after the box (noc: at least this many)")
    p.add_argument("--jitter", type=float, default=0.1, help="box edge jitter, fraction of the box size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="first N instances in dataset order")
    p.add_argument("--labels", default=None, help="comma-separated label names or ids")
    p.add_argument("--min-area", type=int, default=0, help="skip targets smaller than this (pixels)")
    p.add_argument("--mode", choices=["2d", "3d"], default="2d")
    p.add_argument("--split", choices=["all", "train", "val"], default="all",
                   help="restrict to one side of the patient-level split (default: every case)")
    p.add_argument("--click-weights", default=None, metavar="PT",
                   help="with a litemedsam-click engine: evaluate this overlay from `train-engine --out` "
                        "(model card beside it) instead of the shipped weights")
    p.add_argument("--embedding-cache", default=None, help="folder of cached LiteMedSAM image embeddings")
    p.add_argument("--device", default="auto")
    p.add_argument("--plot", default=None, metavar="PNG")
    p.add_argument("--json", required=True, metavar="OUT")
    p.set_defaults(func=run_eval)
    return p


def run_eval(args: argparse.Namespace) -> int:
    from ..engines import EngineError, create_engine
    from .harness import evaluate, format_table, plot_dice, write_json

    if args.clicks < 0:
        print(f"error: --clicks must be >= 0, got {args.clicks}", file=sys.stderr)
        return 2
    try:
        engine = create_engine(args.engine, device=args.device, click_weights=args.click_weights)
    except (EngineError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    labels = [s for s in args.labels.split(",") if s.strip()] if args.labels else None
    try:
        result = evaluate(args.datasets, args.protocol, engine=engine, policy=args.policy, clicks=args.clicks,
                          jitter=args.jitter, seed=args.seed, limit=args.limit, labels=labels,
                          min_area=args.min_area, mode=args.mode, split=None if args.split == "all" else args.split,
                          embedding_cache=args.embedding_cache)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.click_weights:
        result["config"]["click_weights"] = str(Path(args.click_weights).resolve())
    print(format_table(result))
    write_json(result, args.json)
    print(f"wrote {args.json}")
    if args.plot:
        plot_dice({result["config"]["engine"]: result}, args.plot)
        print(f"wrote {args.plot}")
    return 0 if result["summary"]["n"] > 0 else 1


def add_report_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add `report`: the validation benchmark for both engines, written to docs/report.md and the README."""
    p = subparsers.add_parser("report", help="benchmark original vs click-aware LiteMedSAM on the validation split",
                              description="Runs the NoC protocol (box + at least 5 clicks, up to 20) on the "
                                          "validation split of each dataset for each engine and writes the tables.")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder of dataset folders")
    p.add_argument("--datasets", default=",".join(REPORT_DATASETS))
    p.add_argument("--engines", default="litemedsam,litemedsam-click")
    p.add_argument("--volumes", default="lits-117",
                   help="3D datasets also run on every labelled slice (eval --mode 3d, 5 clicks); '' for none")
    p.add_argument("--jitter", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-area", type=int, default=20)
    p.add_argument("--limit", type=int, default=None, help="per dataset (for a quick look; the report uses all)")
    p.add_argument("--embedding-cache", default=str(REPO / ".cache" / "litemedsam"))
    p.add_argument("--out", default=str(REPO / "docs" / "report.md"))
    p.add_argument("--readme", default=str(REPO / "README.md"))
    p.add_argument("--json-dir", default=str(REPO / "runs" / "report"))
    p.add_argument("--reuse", action="store_true",
                   help="reuse a JSON under --json-dir made with the same settings and weights")
    p.add_argument("--update-card", action="store_true", help="write the validation numbers into the model card")
    p.set_defaults(func=run_report)
    return p


def run_report(args: argparse.Namespace) -> int:
    from .report import build_report

    return build_report(args)
