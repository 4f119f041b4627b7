"""Other fields of view of a training image for the locator (issue #24): zoomed in, zoomed out, cut by the frame,
and one structure filling the frame.

The locator learned from whole BTCV slices and whole Kvasir frames, so it did not find the liver on a 128 x 128
crop that the liver fills (the bundled LiTS sample) nor a polyp on a cropped frame. Each view is a new image for
the frozen encoder (an embedding cannot be zoomed: the encoder sees the resized, padded pixels), so views are
encoded once and kept in the embedding cache like any image. Seeded: the same seed gives the same views (and the
same cache keys), so a second training run encodes nothing new.
"""

from __future__ import annotations

import numpy as np

__all__ = ["random_view", "views_of", "fill_views", "gray_view", "KINDS"]

KINDS = ("zoom_in", "zoom_out", "cut", "fill")
_DRAWN = ("zoom_in", "zoom_out", "cut")  # random_view's own draw (fill is asked for: `fill_views`)


def _crop(rgb: np.ndarray, lab: np.ndarray, y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(rgb[y0:y0 + h, x0:x0 + w]), np.ascontiguousarray(lab[y0:y0 + h, x0:x0 + w])


def _zoom_in(rgb: np.ndarray, lab: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A window of 25-70% of the side, most often around one labelled structure (so a large organ can fill the
    frame, as the liver does in the bundled sample), shifted so the structure is often cut by the frame."""
    H, W = lab.shape
    side = float(rng.uniform(0.25, 0.7)) * min(H, W)
    h = int(np.clip(side * rng.uniform(0.8, 1.25), 16, H))
    w = int(np.clip(side * rng.uniform(0.8, 1.25), 16, W))
    ids = [int(v) for v in np.unique(lab) if v != 0]
    if ids and rng.random() < 0.8:
        ys, xs = np.nonzero(lab == ids[int(rng.integers(len(ids)))])
        cy = float(ys.mean()) + rng.uniform(-0.3, 0.3) * h
        cx = float(xs.mean()) + rng.uniform(-0.3, 0.3) * w
    else:
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
    y0 = int(np.clip(round(cy - h / 2), 0, H - h))
    x0 = int(np.clip(round(cx - w / 2), 0, W - w))
    return _crop(rgb, lab, y0, x0, h, w)


def _zoom_out(rgb: np.ndarray, lab: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The image on a canvas 1.2-2.2 times its size, filled with its own border colour (black for most scans)."""
    H, W = lab.shape
    f = float(rng.uniform(1.2, 2.2))
    h, w = int(H * f), int(W * np.clip(f * rng.uniform(0.85, 1.15), 1.0, None))
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    fill = np.median(border, axis=0).astype(np.uint8)
    canvas = np.broadcast_to(fill, (h, w, 3)).copy()
    lab_out = np.zeros((h, w), lab.dtype)
    y0, x0 = int(rng.integers(0, h - H + 1)), int(rng.integers(0, w - W + 1))
    canvas[y0:y0 + H, x0:x0 + W] = rgb
    lab_out[y0:y0 + H, x0:x0 + W] = lab
    return canvas, lab_out


def _cut(rgb: np.ndarray, lab: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A rectangle keeping 50-90% of each side at a random place: other aspect ratios, structures cut at edges."""
    H, W = lab.shape
    h, w = int(H * rng.uniform(0.5, 0.9)), int(W * rng.uniform(0.5, 0.9))
    return _crop(rgb, lab, int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w)


def _fill(rgb: np.ndarray, lab: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One labelled structure, drawn by its area (large organs most often), filling the frame: its box grown by
    0-20% of its size on each side, or (a third of the time) one or two sides cut by up to 15% of it. The
    bundled sample is such a view: the liver fills its 128 x 128 crop."""
    H, W = lab.shape
    ids, areas = np.unique(lab[lab != 0], return_counts=True)
    if len(ids) == 0:
        return _cut(rgb, lab, rng)
    k = ids[int(rng.choice(len(ids), p=areas / areas.sum()))]
    ys, xs = np.nonzero(lab == k)
    y1, y2, x1, x2 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    h, w = y2 - y1, x2 - x1
    m = rng.uniform(0.0, 0.2, 4)  # top, bottom, left, right, as a share of the structure's size
    if rng.random() < 1 / 3:
        m[rng.choice(4, int(rng.integers(1, 3)), replace=False)] = -rng.uniform(0.0, 0.15)
    y0, y3 = int(np.clip(round(y1 - m[0] * h), 0, H)), int(np.clip(round(y2 + m[1] * h), 0, H))
    x0, x3 = int(np.clip(round(x1 - m[2] * w), 0, W)), int(np.clip(round(x2 + m[3] * w), 0, W))
    if y3 - y0 < 16 or x3 - x0 < 16:  # a tiny structure: at least 16 px around its centre
        cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
        y0, x0 = int(np.clip(cy - 8, 0, max(H - 16, 0))), int(np.clip(cx - 8, 0, max(W - 16, 0)))
        y3, x3 = min(H, max(y3, y0 + 16)), min(W, max(x3, x0 + 16))
    return _crop(rgb, lab, y0, x0, y3 - y0, x3 - x0)


def _contrast(rgb: np.ndarray, rng: np.random.Generator, wide: bool = False) -> np.ndarray:
    """Another intensity window: 8-bit windowed CT (BTCV) and a HU window (the sample) differ in contrast. wide
    (fill views): up to a narrow bright window, as BTCV's 8-bit liver is darker than the bundled sample's liver
    through the abdomen HU window."""
    lo, hi = (rng.uniform(0, 90), rng.uniform(150, 255)) if wide else (rng.uniform(0, 60), rng.uniform(170, 255))
    out = (rgb.astype(np.float32) - lo) / (hi - lo) * 255.0
    return np.clip(out, 0, 255).astype(np.uint8)


def random_view(rgb: np.ndarray, lab: np.ndarray, rng: np.random.Generator, kind: str | None = None
                ) -> tuple[np.ndarray, np.ndarray, str]:
    """(view (h, w, 3) uint8, its label map (h, w), kind). rgb: (H, W, 3) uint8; lab: (H, W) int label map.
    kind: one of KINDS, else drawn (zoom in 50%, zoom out 25%, cut 25%; fill only when asked for); half the views
    also get another contrast."""
    if rgb.ndim != 3 or rgb.shape[:2] != lab.shape:
        raise ValueError(f"a view needs an (H, W, 3) image and an (H, W) label map, got {rgb.shape} and {lab.shape}")
    if kind is None:
        kind = str(rng.choice(_DRAWN, p=[0.5, 0.25, 0.25]))
    if kind not in KINDS:
        raise ValueError(f"unknown view {kind!r}; use one of {', '.join(KINDS)}")
    view, vlab = {"zoom_in": _zoom_in, "zoom_out": _zoom_out, "cut": _cut, "fill": _fill}[kind](rgb, lab, rng)
    if rng.random() < 0.5:
        view = _contrast(view, rng, wide=kind == "fill")
    return view, vlab, kind


def gray_view(rgb: np.ndarray) -> np.ndarray:
    """An RGB frame as a viewer that keeps one component shows it to the engine: its luminance, stretched to its
    0.5-99.5 percentiles (the review queue loads a Kvasir JPEG this way, and the locator asked there on frames whose
    colour version it found)."""
    from ..images import to_engine_rgb

    lum = np.tensordot(rgb[..., :3].astype(np.float32), np.float32([0.299, 0.587, 0.114]), axes=1)
    return to_engine_rgb(lum, "MR")


def views_of(rgb: np.ndarray, lab: np.ndarray, per_image: float, rng: np.random.Generator
             ) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """floor(per_image) views, plus one more with probability per_image's fraction."""
    n = int(per_image) + int(rng.random() < per_image - int(per_image))
    return [random_view(rgb, lab, rng) for _ in range(n)]


def fill_views(rgb: np.ndarray, lab: np.ndarray, per_image: float, rng: np.random.Generator
               ) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """floor(per_image) "fill" views (one structure filling the frame), plus one more with probability per_image's
    fraction; none for an image without labels."""
    if not lab.any():
        return []
    n = int(per_image) + int(rng.random() < per_image - int(per_image))
    return [random_view(rgb, lab, rng, "fill") for _ in range(n)]
