"""Does the agent start on its own where a person first meets it (issue #24)? Prints, for a locator's weights:

- the bundled sample (Resources/Samples, LiTS 117): "segment the liver" as the chat and `segment` do it (12 slices
  scanned, the start slice where the liver's heatmap mass is largest): slice, confidence against the threshold, and
  the box's IoU with the reference liver's box on that slice;
- the first N Kvasir-SEG images in file-name order (the README's `medagentseg label` run): the locator on the colour
  frame as `label` sees it (pre-labelled unless it asks), and on the frame as the review queue loads it (its grey
  luminance, percentile-stretched: `review_queue.image_volume` keeps one component), where "segment the polyp"
  must start too.

- the first N Kvasir-SEG validation cases cut around the polyp and zoomed out (inside a black frame twice its size):
  found (no question, box IoU >= 0.5) or not.

    python -m MedAgentSegLib.evaluation.locator_check [--weights PATH] [--kvasir N] [--views N] [--data DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["check_sample", "check_kvasir", "check_views", "crop_around", "zoomed_out", "kvasir_val", "main"]

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "Resources" / "Samples" / "lits117_liver_ct.nrrd"


def _box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    ys, xs = np.nonzero(mask)
    return None if len(xs) == 0 else (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


def check_sample(locator: Any, engine: Any, sample: Path = SAMPLE) -> dict[str, Any]:
    """The liver on the bundled sample, as the chat finds it: {slice, confidence, threshold, asks, box_iou,
    liver_px (reference liver pixels on the start slice)}."""
    from .. import images
    from ..agent.locator import box_iou

    img = images.load_image(sample)
    lab = images.load_image(sample.with_name(sample.name.replace(".nrrd", "_labels.nrrd"))).array

    def plane(k: int) -> np.ndarray:
        return images.to_engine_rgb(images.extract_slice(img.array, k), img.modality)

    loc = locator.locate_volume(engine, plane, img.array.shape[0], "liver")
    ref = images.extract_slice(lab, loc.slice) > 0  # the liver with the tumours inside it
    return {"slice": loc.slice, "confidence": round(loc.confidence, 3), "threshold": locator.threshold_for("liver"),
            "asks": locator.asks(loc), "box": loc.box, "box_iou": round(box_iou(loc.box, _box(ref)), 3),
            "liver_px": int(ref.sum())}


def kvasir_first(data: Path, n: int) -> list[Path]:
    """The first `n` Kvasir-SEG images in file-name order (`ls images | head -n`)."""
    return sorted((data / "kvasir-seg" / "images").iterdir())[:n]


def check_kvasir(locator: Any, engine: Any, paths: list[Path]) -> list[dict[str, Any]]:
    """Per image: confidence and asks on the colour frame (`label`) and on its grey luminance (the review queue)."""
    from .. import images
    from ..training.locator_views import gray_view

    rows = []
    for path in paths:
        img = images.load_image(path)
        rgb = images.to_engine_rgb(img.array, img.modality)
        row: dict[str, Any] = {"case": path.stem}
        for name, view in (("label", rgb), ("review", gray_view(rgb))):
            loc = locator.locate(engine, view, "polyp")
            row[name] = {"confidence": round(loc.confidence, 3), "asks": locator.asks(loc)}
        rows.append(row)
    return rows


def crop_around(rgb: np.ndarray, mask: np.ndarray, margin: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The frame cut to the target's box grown by `margin` of its size on each side (a zoomed-in view)."""
    x1, y1, x2, y2 = (int(v) for v in _box(mask))
    dx, dy = int((x2 - x1) * margin), int((y2 - y1) * margin)
    ys, xs = slice(max(0, y1 - dy), y2 + dy + 1), slice(max(0, x1 - dx), x2 + dx + 1)
    return np.ascontiguousarray(rgb[ys, xs]), np.ascontiguousarray(mask[ys, xs])


def zoomed_out(rgb: np.ndarray, mask: np.ndarray, factor: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """The frame in the middle of a black canvas `factor` times its size (a zoomed-out view)."""
    h, w = mask.shape
    H, W = int(h * factor), int(w * factor)
    y0, x0 = (H - h) // 2, (W - w) // 2
    out, m = np.zeros((H, W, 3), np.uint8), np.zeros((H, W), bool)
    out[y0:y0 + h, x0:x0 + w], m[y0:y0 + h, x0:x0 + w] = rgb, mask
    return out, m


def kvasir_val(data: Path, n: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(case id, RGB (H, W, 3) uint8, reference mask (H, W) bool) of the first `n` Kvasir-SEG validation cases
    (patients the locator is not trained on), in dataset order."""
    from ..datasets import read_dataset, split_patients
    from ..images import load_image, load_mask

    ds = read_dataset(data / "kvasir-seg")
    assign = split_patients(ds)
    out = []
    for case in [c for c in ds.cases if assign.get(c.patient) == "val"][:n]:
        img = load_image(case.image)
        out.append((case.id, img.array, load_mask(case.mask, img)))
    return out


def check_views(locator: Any, engine: Any, cases: list[tuple[str, np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    """Per case and view ("crop", "zoomed out"): found = does not ask and box IoU >= 0.5 with the view's reference."""
    from ..agent.locator import box_iou

    rows = []
    for case, rgb, mask in cases:
        for view, (v, m) in (("crop", crop_around(rgb, mask)), ("zoomed out", zoomed_out(rgb, mask))):
            loc = locator.locate(engine, v, "polyp")
            iou = box_iou(loc.box, _box(m))
            rows.append({"case": case, "view": view, "confidence": round(loc.confidence, 3), "box_iou": round(iou, 3),
                         "found": not locator.asks(loc) and iou >= 0.5})
    return rows


def main(argv: list[str] | None = None) -> int:
    import torch

    from ..agent.locator import load_locator
    from ..engines import create_engine

    p = argparse.ArgumentParser(prog="python -m MedAgentSegLib.evaluation.locator_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="locator weights (default: the shipped ones)")
    p.add_argument("--kvasir", type=int, default=20, help="how many Kvasir-SEG images (0: none)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--views", type=int, default=10,
                   help="how many Kvasir-SEG validation cases to check cut around the polyp and zoomed out (0: none)")
    p.add_argument("--encoder", default="auto", help="the chat's and label's: auto")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    locator = load_locator(args.weights)
    engine = create_engine(None, device="cpu", encoder=args.encoder)
    s = check_sample(locator, engine)
    print(f"sample liver: slice {s['slice']}, confidence {s['confidence']:.3f} (threshold {s['threshold']:.3f}, "
          f"{'asks' if s['asks'] else 'starts'}), box IoU {s['box_iou']:.3f}, reference liver {s['liver_px']} px "
          "on that slice")
    if args.kvasir:
        rows = check_kvasir(locator, engine, kvasir_first(Path(args.data), args.kvasir))
        for r in rows:
            print(f"{r['case']}: label {r['label']['confidence']:.3f} {'asks' if r['label']['asks'] else 'starts'}; "
                  f"review {r['review']['confidence']:.3f} {'asks' if r['review']['asks'] else 'starts'}")
        pre = [r for r in rows if not r["label"]["asks"]]
        both = [r for r in pre if not r["review"]["asks"]]
        print(f"kvasir first {len(rows)}: label pre-labels {len(pre)}; of those, the review queue starts on "
              f"{len(both)}; polyp threshold {locator.threshold_for('polyp'):.3f}")
    if args.views:
        rows = check_views(locator, engine, kvasir_val(Path(args.data), args.views))
        for r in rows:
            print(f"{r['case']} {r['view']}: confidence {r['confidence']:.3f}, box IoU {r['box_iou']:.3f}, "
                  f"{'found' if r['found'] else 'NOT found'}")
        for view in ("crop", "zoomed out"):
            vr = [r for r in rows if r["view"] == view]
            print(f"kvasir validation {view}: found {sum(r['found'] for r in vr)} of {len(vr)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
