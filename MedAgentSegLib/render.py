"""Filmstrip of a session: one panel per turn with its prompts drawn and its mask overlaid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["filmstrip"]

_POS, _NEG, _BOX = (40, 220, 40), (235, 50, 50), (255, 200, 0)


def _panel(image: np.ndarray, turn, gt: np.ndarray | None, size: int, caption: str):
    from PIL import Image, ImageDraw

    from .observation import overlay_observation

    base = overlay_observation(image, turn.mask if turn is not None else np.zeros(image.shape[:2], bool))
    h, w = image.shape[:2]
    s = size / max(h, w)
    im = Image.fromarray(base).resize((max(1, round(w * s)), max(1, round(h * s))))
    draw = ImageDraw.Draw(im)
    if gt is not None:  # reference outline, thin, so the viewer can judge each turn
        from scipy import ndimage

        edge = gt & ~ndimage.binary_erosion(gt)
        ys, xs = np.nonzero(edge)
        for x, y in zip(xs[::3], ys[::3]):
            draw.point((x * s, y * s), fill=(80, 160, 255))
    if turn is not None:
        p = turn.prompts
        if p.box is not None:
            x1, y1, x2, y2 = (v * s for v in p.box)
            draw.rectangle((x1, y1, x2, y2), outline=_BOX, width=2)
        r = max(3, size // 60)
        for (x, y), lab in zip(p.points, p.labels):
            col = _POS if lab else _NEG
            draw.ellipse((x * s - r, y * s - r, x * s + r, y * s + r), fill=col, outline=(255, 255, 255))
            sign = "+" if lab else "-"
            draw.text((x * s + r + 1, y * s - r - 2), sign, fill=col)
    panel = Image.new("RGB", (size, size + 28), (20, 20, 20))
    panel.paste(im, ((size - im.width) // 2, 0))
    ImageDraw.Draw(panel).text((4, size + 2), caption, fill=(235, 235, 235))
    return panel


def filmstrip(session, path: str | Path, gt: np.ndarray | None = None, panel_size: int = 256) -> Path:
    """Write a PNG with one panel per mask-producing turn (caption: turn, action, score, Dice if gt)."""
    from PIL import Image

    from .metrics import dice

    turns = [t for t in session.turns if t.produces_mask]
    panels = []
    for t in turns:
        name = t.action["name"].replace("add_", "")
        if name == "point":
            name = "click " + ("+" if t.action["arguments"]["point_type"] == "positive" else "-")
        score = "" if t.score is None else f"  score {t.score:.2f}"  # a specialist's mask has no engine score
        cap = f"{t.index + 1}: {name}{score}"
        if gt is not None:
            cap += f"  Dice {dice(t.mask, gt):.3f}"
        panels.append(_panel(session.image, t, gt, panel_size, cap))
    if not panels:
        panels.append(_panel(session.image, None, gt, panel_size, "no turns"))
    strip = Image.new("RGB", (panel_size * len(panels), panels[0].height), (0, 0, 0))
    for i, p in enumerate(panels):
        strip.paste(p, (i * panel_size, 0))
    path = Path(path)
    strip.save(path)
    return path
