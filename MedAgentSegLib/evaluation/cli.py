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
    p.add_argument("--protocol", choices=["box", "clicks", "noc", "agent", "propagate", "auto", "lone"],
                   default="clicks",
                   help="propagate (3D datasets): box on the largest slice, --clicks refinement turns there, then "
                        "propagation through the volume; reports dice_3d and seconds_per_volume. auto: the request "
                        "only, the locator's first box then --policy (default learned); reports box_iou_median, "
                        "asked_rate (scored from the reference box when the agent asked) and dice_final. lone: a "
                        "positive click at the target's interior with no box (dice_lone), then the clicks protocol; "
                        "reports the share of clicks the network's own answer was kept")
    p.add_argument("--engine", default=None, help="engine name (default: the default engine)")
    p.add_argument("--policy", default=None, choices=["oracle", "heuristic", "learned", "mllm"],
                   help="policy for --protocol agent (default oracle: uses the reference) or auto (default learned)")
    p.add_argument("--locator-weights", default=None, metavar="PT",
                   help="with --protocol auto: a locator from train-locator (card beside it), not the shipped one")
    p.add_argument("--policy-weights", default=None, metavar="PT",
                   help="with --policy learned: a controller that train-policy wrote instead of the shipped one")
    p.add_argument("--mllm-path", default=None, help="with --policy mllm: a local Qwen2-VL / Qwen2.5-VL folder")
    p.add_argument("--drop", type=float, default=None,
                   help="with --policy learned: take back a turn whose predicted IoU fell by more than this "
                        "(default: the card's)")
    p.add_argument("--clicks", type=int, default=5, help="clicks after the box (noc: at least this many)")
    p.add_argument("--jitter", type=float, default=0.1, help="box edge jitter, fraction of the box size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="first N instances in dataset order")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="N instances per dataset drawn at random (seeded by --seed) from those listed")
    p.add_argument("--labels", default=None, help="comma-separated label names or ids")
    p.add_argument("--min-area", type=int, default=0, help="skip targets smaller than this (pixels)")
    p.add_argument("--mode", choices=["2d", "3d"], default="2d")
    p.add_argument("--split", choices=["all", "train", "val"], default="all",
                   help="restrict to one side of the patient-level split (default: every case)")
    p.add_argument("--click-weights", default=None, metavar="PT",
                   help="with a litemedsam-click engine: evaluate this overlay from `train-engine --out` "
                        "(model card beside it) instead of the shipped weights")
    p.add_argument("--embedding-cache", default=None,
                   help="folder of LiteMedSAM image embeddings: taken from it, and images not there are kept in it")
    add_propagation_args(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--encoder", default="torch",
                   help="LiteMedSAM image encoder path (default torch, the reference the reported numbers use; auto = "
                        "what `segment` uses, see check-encoder)")
    p.add_argument("--plot", default=None, metavar="PNG")
    p.add_argument("--json", required=True, metavar="OUT")
    p.set_defaults(func=run_eval)
    return p


def run_eval(args: argparse.Namespace) -> int:
    from ..engines import EngineError, create_engine
    from .harness import evaluate, format_table, plot_dice, write_json

    if args.clicks < 0:
        return _fail(f"--clicks must be >= 0, got {args.clicks}")
    args.policy = args.policy or ("learned" if args.protocol == "auto" else "oracle")
    try:
        _check_inputs(args)  # before any model work: a typo in a path must not cost an engine load
        engine = create_engine(args.engine, device=args.device, click_weights=args.click_weights,
                               encoder=args.encoder)
    except (EngineError, ImportError, ValueError) as exc:
        return _fail(str(exc))
    labels = [s for s in args.labels.split(",") if s.strip()] if args.labels else None
    try:
        from ..agent.registry import policy_options

        policy_kwargs = policy_options(args)
        result = evaluate(args.datasets, args.protocol, engine=engine, policy=args.policy, clicks=args.clicks,
                          jitter=args.jitter, seed=args.seed, limit=args.limit, labels=labels,
                          min_area=args.min_area, mode=args.mode, split=None if args.split == "all" else args.split,
                          embedding_cache=args.embedding_cache, policy_kwargs=policy_kwargs,
                          propagation=propagation_config(args), fix_slices=args.fix_slices,
                          locator_weights=args.locator_weights, sample=args.sample)
    except ValueError as exc:
        return _fail(str(exc))
    if args.click_weights:
        result["config"]["click_weights"] = str(Path(args.click_weights).resolve())
    if args.policy_weights:
        result["config"]["policy_weights"] = str(Path(args.policy_weights).resolve())
    if args.drop is not None:
        result["config"]["drop"] = args.drop
    if args.protocol == "auto":
        from ..agent.locator import DEFAULT_WEIGHTS

        result["config"]["locator_weights"] = str(Path(args.locator_weights or DEFAULT_WEIGHTS).resolve())
    if result["summary"]["n"] == 0:
        return _fail(f"no instance could be evaluated ({len(result['skipped'])} skipped, reasons above); nothing "
                     "written. Check the dataset folders, --labels, --min-area and --split")
    print(format_table(result))
    write_json(result, args.json)
    print(f"wrote {args.json}")
    if args.plot:
        plot_dice({result["config"]["engine"]: result}, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _fail(message: str) -> int:
    print(f"medagentseg: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _check_inputs(args: argparse.Namespace) -> None:
    """Every dataset folder readable, --json and --plot writable: ValueError (one line) otherwise."""
    import os

    from ..datasets import read_dataset

    for root in args.datasets:
        read_dataset(root)
    for flag, out in (("--json", args.json), ("--plot", args.plot)):
        if out is None:
            continue
        out = Path(out)
        if out.is_dir():
            raise ValueError(f"{flag} {out} is a folder; give a file name")
        parent = next((q for q in out.parents if q.exists()), Path("."))
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise ValueError(f"{flag} {out}: {parent} is not a writable folder; choose another path")


def add_propagation_args(p: argparse.ArgumentParser) -> None:
    """Options of propagation.PropagationConfig (defaults = the shipped ones)."""
    from ..propagation import PropagationConfig

    d = PropagationConfig()
    p.add_argument("--margin", type=float, default=d.margin, help="propagation: grow the previous slice's box by "
                                                                  "this fraction of its size")
    p.add_argument("--feed-logits", action="store_true", help="propagation: the previous slice's low-res logits "
                                                              "as the mask prompt")
    p.add_argument("--min-score", type=float, default=d.min_score, help="propagation: a slice below this score "
                                                                        "counts as past the structure's end")
    p.add_argument("--patience", type=int, default=d.patience, help="propagation: stop after this many weak "
                                                                    "slices in a row")
    p.add_argument("--refine-below", type=float, default=None, help="propagation: hand slices scoring below this "
                                                                    "to --policy for refinement turns")
    p.add_argument("--max-shift", type=float, default=d.max_shift, help="propagation: a slice whose brightness "
                   "inside the mask moved more than this (0..255) from the last kept slice counts as past the end")
    p.add_argument("--fix-slices", type=int, default=0, help="--protocol propagate: then K corrections, each on the "
                   "worst slice (oracle: most wrong pixels; GT-free --policy: lowest score), re-propagated from there")


def propagation_config(args: argparse.Namespace) -> Any:
    from ..propagation import PropagationConfig

    if getattr(args, "margin", None) is None:
        return None
    return PropagationConfig(margin=args.margin, feed_logits=args.feed_logits, min_score=args.min_score,
                             patience=args.patience, refine_below=args.refine_below, max_shift=args.max_shift)


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
