"""`medagentseg bench-label`: cases per minute of `medagentseg label` with `--workers 1`, `--workers 2` and on a local
Ray instance, in one run, on the same cases (issue #19's timing table).

The cases are the first N of a 2D dataset in the ../shared/data format (Kvasir-SEG by default), in its dataset.json
order. Prompts: `reference` (default) gives each case the bounding box of its reference mask in a prompts file (the
scripted policy, as a team that draws boxes would run it); `agent` gives none (the locator, then the learned agent).
Each configuration runs as its own `medagentseg label` command into a fresh folder; its wall time includes starting
Python and loading the models, as a user waits for it. The Ray head is started before its run (not timed: a cluster
is normally running already) and stopped after. The three manifests are compared (statuses and masks).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_bench_label_command", "run_bench_label"]

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kvasir-seg"


def add_bench_label_command(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("bench-label", help="cases per minute of `label` with 1 and 2 workers and on a local Ray "
                                           "instance, in one run", description=__doc__.split("\n\n")[1])
    p.add_argument("--data", default=str(DATA), help="a 2D dataset folder with dataset.json (default: Kvasir-SEG)")
    p.add_argument("--cases", type=int, default=200, help="the first N cases of dataset.json (default 200)")
    p.add_argument("--target", default="polyp")
    p.add_argument("--prompts", choices=["reference", "agent"], default="reference",
                   help="reference: the reference mask's box per case (default); agent: the autonomous agent")
    p.add_argument("--runs", default="workers1,workers2,ray", help="which, in this order (comma-separated)")
    p.add_argument("--out", default="runs/bench-label", help="work folder (each run's folder is made afresh)")
    p.set_defaults(func=run_bench_label)
    return p


def _inputs(data: Path, n: int, prompts: str, out: Path) -> tuple[Path, Path | None]:
    """OUT/input/dataset.json of the first n cases (absolute image paths) and, for `reference`, the prompts file."""
    from ..datasets import DatasetError, read_dataset
    from ..images import load_image, load_mask
    from ..pipeline.segment import UsageError

    try:
        ds = read_dataset(data)
    except DatasetError as exc:
        raise UsageError(f"{exc} (bench-label reads a dataset in the ../shared/data format; give --data)") from None
    cases = ds.cases[:n]
    if len(cases) < n:
        raise UsageError(f"{data} has {len(cases)} cases, fewer than --cases {n}")
    folder = out / "input"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps({"cases": [{"id": c.id, "image": str(c.image.resolve())}
                                                               for c in cases]}, indent=1))
    if prompts == "agent":
        return folder / "dataset.json", None
    lines = []
    for c in cases:
        mask = load_mask(c.mask, load_image(c.image))
        ys, xs = np.nonzero(mask)
        if xs.size:
            lines.append(json.dumps({"case": c.id, "box": [int(xs.min()), int(ys.min()), int(xs.max()),
                                                           int(ys.max())]}))
    (folder / "prompts.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder / "dataset.json", folder / "prompts.jsonl"


def _label(argv: list[str], log_path: Path) -> tuple[float, int]:
    """Run one `medagentseg label` command; (wall seconds, exit code). Its stderr goes to log_path."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        rc = subprocess.run([sys.executable, "-m", "MedAgentSegLib.cli", *argv], stdout=log, stderr=log).returncode
    return time.perf_counter() - t0, rc


def _masks(folder: Path) -> dict[str, bytes]:
    import slicerio

    found = {}
    for rec in _records(folder).values():
        if rec["outputs"]["original"]:
            seg = slicerio.read_segmentation(str(folder / rec["outputs"]["original"]))
            found[rec["case_id"]] = np.packbits(np.asarray(seg["voxels"]) > 0).tobytes()
    return found


def _records(folder: Path) -> dict[str, dict[str, Any]]:
    from .manifest import read_manifest

    return read_manifest(folder)


def run_bench_label(args: argparse.Namespace) -> int:
    from ..pipeline.segment import UsageError
    from .batch import _cores

    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not runs or set(runs) - {"workers1", "workers2", "ray"}:
        raise UsageError(f"--runs {args.runs!r}: give some of workers1, workers2, ray, comma-separated")
    out = Path(args.out)
    source, prompts = _inputs(Path(args.data), args.cases, args.prompts, out)
    base = ["label", str(source), "--target", args.target] + (["--prompts", str(prompts)] if prompts else [])
    print(f"bench-label: {args.cases} cases of {args.data}, prompts: {args.prompts}; {_cores()} cores "
          f"({platform.processor() or platform.machine()}), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"load average before {os.getloadavg()[0]:.2f}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for name in runs:
        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)
        extra = {"workers1": ["--workers", "1"], "workers2": ["--workers", "2"]}.get(name, [])
        load0 = os.getloadavg()[0]
        if name == "ray":
            from .ray_runner import local_head

            t0 = time.perf_counter()
            with local_head(cpus=_cores()) as address:
                started = time.perf_counter() - t0
                seconds, rc = _label(base + ["--out", str(folder), "--ray", address], out / f"{name}.log")
        else:
            started = None
            seconds, rc = _label(base + ["--out", str(folder), *extra], out / f"{name}.log")
        statuses: dict[str, int] = {}
        for rec in _records(folder).values():
            statuses[rec["status"]] = statuses.get(rec["status"], 0) + 1
        results[name] = {"seconds": round(seconds, 1), "cases_per_min": round(args.cases / seconds * 60, 1),
                         "exit": rc, "statuses": statuses, "load_before": round(load0, 2),
                         "load_after": round(os.getloadavg()[0], 2)}
        if started is not None:
            results[name]["ray_head_start_s"] = round(started, 1)
        print(f"{name}: {seconds:.1f} s, {args.cases / seconds * 60:.1f} cases/min (exit {rc}; "
              + ", ".join(f"{v} {k}" for k, v in sorted(statuses.items())) + f"; load {load0:.2f} -> "
              f"{os.getloadavg()[0]:.2f}; log {out / f'{name}.log'})", flush=True)
    first = runs[0]
    for name in runs[1:]:
        same_status = {c: r["status"] for c, r in _records(out / name).items()} == {
            c: r["status"] for c, r in _records(out / first).items()}
        same_masks = _masks(out / name) == _masks(out / first)
        results[name]["vs_" + first] = {"ratio": round(results[first]["seconds"] / results[name]["seconds"], 2),
                                        "same_statuses": same_status, "same_masks": same_masks}
        print(f"{name} / {first}: {results[first]['seconds'] / results[name]['seconds']:.2f}x cases/min; same "
              f"statuses: {same_status}, same masks: {same_masks}")
    (out / "bench.json").write_text(json.dumps({"cases": args.cases, "prompts": args.prompts, "data": args.data,
                                                "cores": _cores(), "runs": results}, indent=1))
    print(f"wrote {out / 'bench.json'}")
    return 0 if all(r["exit"] == 0 for r in results.values()) else 1
