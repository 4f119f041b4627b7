"""`medagentseg check-encoder`: is a fast encoder path good enough to be used?

Each fast path this CPU supports (`engines.fast_encoder`) runs the same seeded protocols as torch fp32 on the
validation split, on the product's engine: in 2D a jittered box, then `--clicks` oracle clicks; on 3D datasets
also a jittered box on the largest slice, propagated through the volume (`dice_3d`). A path passes when every
judged row's mean Dice is within TOLERANCE of torch fp32's: the 2D rows pooled over all datasets, each dataset's
2D rows with at least MIN_N instances, and each 3D dataset's volume Dice. `--update` writes the result to the
package's encoder_check.json, which `--encoder auto` obeys.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_check_encoder_command", "run_check_encoder", "MIN_N"]

# Below this many instances a mean Dice moves by more than the tolerance when one clicked trajectory diverges
# (LiTS has 2 in 2D): such rows are reported, and judged through the pooled row and the volume rows instead.
MIN_N = 20


def add_check_encoder_command(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("check-encoder", help="check fast encoder paths against torch fp32 on validation data",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("datasets", nargs="+", metavar="DATASET_DIR")
    p.add_argument("--engine", default=None, help="engine (default: the default engine)")
    p.add_argument("--paths", default=None, help="comma-separated fast paths (default: every one this CPU supports)")
    p.add_argument("--split", choices=["all", "train", "val"], default="val")
    p.add_argument("--clicks", type=int, default=3)
    p.add_argument("--limit", type=int, default=None, help="at most this many instances per dataset")
    p.add_argument("--min-area", type=int, default=100)
    p.add_argument("--no-volumes", action="store_true", help="skip the 3D propagation rows")
    p.add_argument("--embedding-cache", default=None, help="torch fp32 embeddings folder (as for eval)")
    p.add_argument("--json", default="runs/encoder-check.json", metavar="OUT")
    p.add_argument("--update", action="store_true", help="write the result into the package's encoder_check.json")
    p.set_defaults(func=run_check_encoder)
    return p


def _rows(result: dict[str, Any], volumes: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    """{row: {"box", "final" | "dice_3d", "n"}}: each dataset's 2D rows, "all" pooled, "<dataset> 3d"."""
    summ = result["summary"]
    rows = {k: {"box": v["dice_by_step"][0], "final": v["dice_by_step"][-1], "n": v["n"]}
            for k, v in summ["per_dataset"].items() if v.get("n")}
    rows["all"] = {"box": summ["dice_by_step"][0], "final": summ["dice_by_step"][-1], "n": summ["n"]}
    for k, v in ((volumes or {}).get("summary", {}).get("per_dataset") or {}).items():
        if v.get("n"):
            rows[f"{k} 3d"] = {"dice_3d": v["dice_3d"], "n": v["n"]}
    return rows


def _judged(row: str, n: int) -> bool:
    return row == "all" or row.endswith(" 3d") or n >= MIN_N


def run_check_encoder(args: argparse.Namespace) -> int:
    from ..engines import create_engine
    from ..engines.fast_encoder import CHECK_FILE, TOLERANCE, supported_paths
    from .harness import evaluate

    paths = [p for p in supported_paths("cpu") if p != "torch"]
    if args.paths:
        asked = [p.strip() for p in args.paths.split(",") if p.strip()]
        missing = [p for p in asked if p not in paths]
        if missing:
            print(f"medagentseg check-encoder: error: {', '.join(missing)} cannot run here (supported: "
                  f"{', '.join(paths) or 'none; install openvino'})", file=sys.stderr)
            return 2
        paths = asked
    if not paths:
        print("medagentseg check-encoder: error: no fast encoder path runs here; install openvino "
              "(pip install 'medagentseg[fast]')", file=sys.stderr)
        return 2
    common = dict(protocol="clicks", clicks=args.clicks, split=None if args.split == "all" else args.split,
                  limit=args.limit, min_area=args.min_area)
    t0 = time.perf_counter()
    runs = {}
    for path in ["torch"] + paths:
        engine = create_engine(args.engine, device="cpu", encoder=path, reuse=False)
        cache = args.embedding_cache if path == "torch" else None
        res = evaluate(args.datasets, engine=engine, embedding_cache=cache, **common)
        vols = None
        if not args.no_volumes:
            vols = evaluate(args.datasets, "propagate", engine=engine, embedding_cache=cache, clicks=0,
                            split=common["split"], min_area=args.min_area, log=lambda m: None)
        runs[path] = _rows(res, vols)
        print(f"{path}: " + ", ".join(f"{k} " + " ".join(f"{m} {v[m]:.4f}" for m in v if m != "n") + f" (n={v['n']})"
                                      for k, v in runs[path].items()))
    ref = runs["torch"]
    record = {"reference": "torch fp32", "tolerance": TOLERANCE, "engine": engine.name, "split": args.split,
              "protocol": f"jittered box + {args.clicks} oracle clicks (seed 0)", "cpu": platform.processor()
              or platform.machine(), "command": "medagentseg " + " ".join(sys.argv[1:]),
              "elapsed_s": round(time.perf_counter() - t0, 1), "torch": ref, "paths": {}}
    record["min_n"] = MIN_N
    for path in paths:
        delta = {k: {m: round(runs[path][k][m] - ref[k][m], 4) for m in ref[k] if m != "n"} for k in ref}
        judged = {k: v for k, v in delta.items() if _judged(k, ref[k]["n"])}
        worst = max(abs(d) for v in judged.values() for d in v.values())
        record["paths"][path] = {"dice": runs[path], "delta": delta, "judged": sorted(judged),
                                 "worst_abs_delta": worst, "passed": worst <= TOLERANCE}
        print(f"{path}: worst judged |Dice change| {worst:.4f} -> {'passes' if worst <= TOLERANCE else 'NOT used'}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")
    if args.update:
        CHECK_FILE.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {CHECK_FILE}")
    return 0
