"""`medagentseg bench`: how fast the product is, in one run, on the bundled sample and a synthetic 512x512x300 CT.

Numbers are medians over repeated calls in this one process (the machines are noisy); ratios are of medians
taken in the same run. SAM ViT-B (segment-anything) runs with randomly initialised weights: for timing only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_bench_command", "run_bench", "synthetic_ct"]


def add_bench_command(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="time the encoder, a turn and a 3D propagation (and SAM ViT-B)",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("--engine", default=None, help="engine (default: the default engine)")
    p.add_argument("--encoder", default="auto", help="encoder path of the product engine (default: auto)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--repeats", type=int, default=9, help="calls per median (encoder: distinct slices)")
    p.add_argument("--depth", type=int, default=300, help="slices of the synthetic CT (512x512 each)")
    p.add_argument("--no-sam", action="store_true", help="skip the SAM ViT-B comparison (about a minute)")
    p.add_argument("--json", default=None, metavar="OUT")
    p.set_defaults(func=run_bench)
    return p


def synthetic_ct(depth: int = 300, size: int = 512, organ_slices: int = 100, seed: int = 0):
    """(K, J, I) int16 HU volume: a body ellipse with noise and an ellipsoid 'organ' ~organ_slices long in the middle;
    returns (volume, organ mask). Built slice by slice: no float copy of the whole volume."""
    rng = np.random.default_rng(seed)
    vol = np.full((depth, size, size), -1000, np.int16)
    organ = np.zeros((depth, size, size), bool)
    yy, xx = np.ogrid[:size, :size]
    body = ((yy - size / 2) / (0.38 * size)) ** 2 + ((xx - size / 2) / (0.45 * size)) ** 2 <= 1
    mid, half = depth // 2, organ_slices / 2
    for k in range(depth):
        plane = np.where(body, 40 + rng.normal(0, 12, (size, size)), -1000)
        t = (k - mid) / half
        if abs(t) < 1:
            r = 0.16 * size * np.sqrt(1 - t * t)
            o = ((yy - 0.45 * size) / (0.8 * r)) ** 2 + ((xx - 0.4 * size) / r) ** 2 <= 1
            plane[o] = 130 + rng.normal(0, 12, int(o.sum()))
            organ[k] = o
        vol[k] = plane.astype(np.int16)
    return vol, organ


def _median_ms(fn: Any, inputs: list) -> float:
    times = []
    for x in inputs:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(times)), 1)


def _turns(engine: Any, rgb: np.ndarray, box: tuple, click: tuple, repeats: int) -> dict[str, float]:
    """Median ms of a box turn and of a click turn (box + click + previous logits) on an encoded image."""
    from ..engines.base import Prompts

    engine.set_image(rgb)
    first = engine.predict(Prompts(box))
    box_ms = _median_ms(lambda _: engine.predict(Prompts(box)), range(repeats))
    with_click = Prompts(box, [click], [1])
    click_ms = _median_ms(lambda _: engine.predict(with_click, prev_logits=first.logits), range(repeats))
    return {"box_turn_ms_median": box_ms, "click_turn_ms_median": click_ms,
            "turn_ms_median": round(float(np.median([box_ms, click_ms])), 1)}


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def _volume(engine: Any, ct: np.ndarray, organ: np.ndarray) -> dict[str, Any]:
    """3D end to end from a box on the organ's middle slice: encode, box turn, propagate (nothing cached)."""
    from ..images import to_engine_rgb
    from ..metrics import dice
    from ..propagation import propagate
    from ..session import Session

    if hasattr(engine, "clear_cache"):
        engine.clear_cache()
    start = int(np.argmax(organ.sum(axis=(1, 2))))
    t0 = time.perf_counter()
    session = Session(engine, to_engine_rgb(ct[start], "CT"), "organ")
    session.add_box(*_box(organ[start]))
    prop = propagate(engine, ct, start, session.mask, session.turns[-1].logits, "axial", "CT")
    seconds = time.perf_counter() - t0
    return {"volume_s": round(seconds, 2), "volume_slices": len(prop.slices),
            "volume_100_slices_s": round(seconds * 100 / max(1, len(prop.slices)), 2),
            "volume_dice_3d": round(float(dice(prop.mask, organ)), 4)}


def _sam_vit_b(rgb: np.ndarray, box: tuple, click: tuple, repeats: int, device: str) -> dict[str, Any]:
    import torch
    from segment_anything import SamPredictor, sam_model_registry

    torch.manual_seed(0)
    predictor = SamPredictor(sam_model_registry["vit_b"](checkpoint=None).to(device).eval())
    enc = _median_ms(lambda _: predictor.set_image(rgb), range(max(3, repeats // 3)))
    kw = {"box": np.array(box), "point_coords": np.array([click]), "point_labels": np.array([1]),
          "multimask_output": False}
    turn = _median_ms(lambda _: predictor.predict(**kw), range(repeats))
    return {"sam_vit_b_encoder_ms_median": enc, "sam_vit_b_turn_ms_median": turn,
            "sam_vit_b_weights": "randomly initialised (timing only)"}


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from ..engines import create_engine
    from ..images import load_image, to_engine_rgb

    if args.repeats < 3 or args.depth < 120:
        print("medagentseg bench: error: use --repeats >= 3 and --depth >= 120 (the organ is 100 slices long)",
              file=sys.stderr)
        return 2
    if args.json:
        from ..pipeline.segment import check_out

        check_out(Path(args.json).parent)
    out: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "torch_threads": torch.get_num_threads(), "device": args.device,
                           "command": "medagentseg " + " ".join(sys.argv[1:])}
    engine = create_engine(args.engine, device=args.device, encoder=args.encoder, reuse=False)
    plain = create_engine(args.engine, device=args.device, encoder="torch", reuse=False)
    out.update(engine=engine.name, encoder_path=getattr(engine, "encoder_path", "torch"))
    ct, organ = synthetic_ct(args.depth)
    ks = np.linspace(10, args.depth - 10, args.repeats).astype(int)
    slices = [to_engine_rgb(ct[k], "CT") for k in ks]
    out["encoder_ms_median"] = _median_ms(engine.encode, slices)
    out["plain_encoder_ms_median"] = _median_ms(plain.encode, slices[: max(3, args.repeats // 2)])
    out["fast_vs_plain_encoder_ratio"] = round(out["plain_encoder_ms_median"] / out["encoder_ms_median"], 2)
    mid = int(np.argmax(organ.sum(axis=(1, 2))))
    rgb, box = to_engine_rgb(ct[mid], "CT"), _box(organ[mid])
    click = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    out.update(_turns(engine, rgb, box, click, args.repeats * 2))
    out.update(_volume(engine, ct, organ))
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    from ..sample import SAMPLE_IMAGE, SAMPLE_LABELS

    sample = load_image(SAMPLE_IMAGE)
    labels = load_image(SAMPLE_LABELS).array
    k = int(np.argmax((labels == 1).sum(axis=(1, 2))))
    s_rgb = to_engine_rgb(sample.array[k], "CT")
    s_box = _box(labels[k] == 1)
    s_click = ((s_box[0] + s_box[2]) / 2, (s_box[1] + s_box[3]) / 2)
    engine.clear_cache()
    out["sample"] = {"image": SAMPLE_IMAGE.name, "slice": k, "shape": list(s_rgb.shape[:2]),
                     "encoder_ms": _median_ms(engine.encode, [s_rgb]),
                     **_turns(engine, s_rgb, s_box, s_click, args.repeats * 2)}
    if not args.no_sam:
        out.update(_sam_vit_b(rgb, box, click, args.repeats, args.device))
        out["sam_vit_b_vs_encoder_ratio"] = round(out["sam_vit_b_encoder_ms_median"] / out["encoder_ms_median"], 1)
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    for key, value in out.items():
        print(f"{key}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0
