"""Whole-structure 3D propagation from one prompted slice, slice by slice, both ways (the LiteMedSAM /
MedSAMSlicer recipe), along any slice axis of a KJI volume.

- The start slice's mask comes from a finished 2D session (the person's box, the agent's turns).
- Each next slice is prompted with the previous slice's mask box, grown by `margin` of its size (at least
  `min_grow` px), and, with `feed_logits`, the previous slice's low-res logits as the mask prompt.
- A direction ends at the structure's end, not the volume's edge: after `patience` slices in a row whose mask
  is smaller than `min_area` px or whose engine score is below `min_score`; those trailing slices are dropped.
- The result keeps the 3D connected component that overlaps the start slice's mask.
- Slices whose score is below `refine_below` can be handed to a GT-free policy for refinement turns (a 2D
  `Session` per slice, starting from the propagated box).
- One record per slice (box, prior slice, score, mask as RLE) so `replay_propagation` re-runs it bit for bit;
  `repropagate` re-propagates outward from a slice the person corrected, keeping the slices on the start's side.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import rle
from .engines.base import Engine, Prompts
from .images import AXES, extract_slice, insert_slice, to_engine_rgb
from .oracle import mask_box

__all__ = ["PropagationConfig", "SliceRecord", "Propagation", "propagate", "replay_propagation",
           "PropagationError", "PROPAGATION_FORMAT", "repropagate"]

PROPAGATION_FORMAT = "medagentseg-propagation/1"


class PropagationError(ValueError):
    """Propagation cannot run or found nothing; the message says why and what to do."""


@dataclass
class PropagationConfig:
    """How the next slice is prompted and when a direction ends (defaults: measured on LiTS / ACDC, see README)."""

    margin: float = 0.05
    min_grow: float = 2.0
    feed_logits: bool = False
    min_area: int = 10
    min_score: float = 0.5
    patience: int = 2
    refine_below: float | None = None
    refine_turns: int = 2
    # A slice whose mean brightness inside the mask (engine image, 0..255) differs from the last kept slice's by
    # more than this counts as past the structure's end: the box then holds other tissue. None: not checked.
    max_shift: float | None = None


@dataclass
class SliceRecord:
    """One slice of a propagation: where it came from and what it gave. box: pixels of the slice."""

    index: int
    prior: int | None
    box: list[float]
    score: float
    area: int
    mask_rle: dict[str, Any]
    refined: dict[str, Any] | None = None  # the refinement session's trajectory, if the agent refined this slice
    seconds: float = 0.0
    corrected: bool = False  # the person's mask, which a re-propagation started from
    brightness: float | None = None  # mean engine-image value inside the mask


@dataclass
class Propagation:
    """The result: `mask` (K, J, I) bool and one record per kept slice, in the order they were made."""

    axis: str
    start: int
    mask: np.ndarray
    records: list[SliceRecord] = field(default_factory=list)
    stopped: str = ""  # "" | "cancelled"
    config: dict[str, Any] = field(default_factory=dict)
    restarted_at: int | None = None  # a re-propagation: the corrected slice it started from

    @property
    def slices(self) -> list[int]:
        return sorted(r.index for r in self.records)

    def summary(self, kind: str = "propagate") -> dict[str, Any]:
        """What the session's timeline records of it (Session.add_propagation): kind ("propagate" /
        "repropagate"), axis, start (or the corrected slice it restarted at), the slices it made, voxels."""
        return {"kind": kind, "axis": self.axis, "start": self.start, "restarted_at": self.restarted_at,
                "stopped": self.stopped, "slices": self.slices, "voxels": int(self.mask.sum())}

    def to_dict(self) -> dict[str, Any]:
        return {"format": PROPAGATION_FORMAT, "axis": self.axis, "start": self.start, "stopped": self.stopped,
                "restarted_at": self.restarted_at, "config": self.config,
                "slices": [asdict(r) for r in self.records]}


def _grow(box: tuple[float, float, float, float], margin: float, min_grow: float, h: int, w: int):
    from .oracle import clip_box

    x1, y1, x2, y2 = box
    gx, gy = max(min_grow, margin * (x2 - x1)), max(min_grow, margin * (y2 - y1))
    return clip_box(x1 - gx, y1 - gy, x2 + gx, y2 + gy, h, w)


def propagate(engine: Engine, volume: np.ndarray, start: int, start_mask: np.ndarray,
              start_logits: np.ndarray | None, axis: str = "axial", modality: str = "CT", window: Any = None,
              config: PropagationConfig | None = None, policy_factory: Callable[[], Any] | None = None,
              on_slice: Callable[[SliceRecord, int], None] | None = None,
              should_stop: Callable[[], bool] | None = None, store: Any = None) -> Propagation:
    """Propagate a finished 2D mask on slice `start` through the volume (KJI) along `axis`.

    start_mask: (H, W) bool on that slice; start_logits: its (1, 256, 256) low-res logits (for feed_logits).
    policy_factory: builds a fresh GT-free policy for slices whose score is below config.refine_below.
    on_slice(record, done): called after each slice (progress). should_stop(): checked between slices; when it
    says True the run ends cleanly with the slices done so far (stopped = "cancelled").
    store: an EmbeddingCache that slice embeddings are taken from and kept in. Raises PropagationError if the start
    mask is empty.
    """
    cfg = config or PropagationConfig()
    if axis not in AXES:
        raise PropagationError(f"unknown slice axis {axis!r}; use one of {', '.join(AXES)}")
    n = volume.shape[AXES[axis]]
    if not 0 <= start < n:
        raise PropagationError(f"start slice {start} is outside the volume (0..{n - 1} along {axis})")
    start_mask = np.asarray(start_mask, bool)
    if start_mask.sum() < 1:
        raise PropagationError("the start slice's mask is empty: segment the structure on one slice first")
    out = np.zeros(volume.shape, bool)
    insert_slice(out, start, axis, start_mask)
    box0 = mask_box(start_mask, 0.0)
    result = Propagation(axis, start, out, [SliceRecord(start, None, list(box0), 1.0, int(start_mask.sum()),
                                                        rle.encode(start_mask))], config=asdict(cfg))
    run = _Run(engine, volume, axis, modality, window, cfg, policy_factory, on_slice, should_stop, store)
    for step in (1, -1):
        if not run.direction(result, step, start, start_mask, start_logits):
            break
    _keep_component(result, start, start_mask)
    return result


def repropagate(engine: Engine, volume: np.ndarray, previous: Propagation, index: int, mask: np.ndarray,
                logits: np.ndarray | None = None, modality: str = "CT", window: Any = None,
                config: PropagationConfig | None = None, policy_factory: Callable[[], Any] | None = None,
                on_slice: Callable[[SliceRecord, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None, store: Any = None) -> Propagation:
    """Re-propagate from slice `index`, which the person corrected to `mask`, outwards (away from the first start
    slice; both ways when `index` is that slice). Slices between the start and `index` are kept as they were; those
    beyond `index` are made again from the corrected mask. The result's `restarted_at` is `index`."""
    cfg = config or (PropagationConfig(**previous.config) if previous.config else PropagationConfig())
    axis = previous.axis
    n = volume.shape[AXES[axis]]
    if not 0 <= index < n:
        raise PropagationError(f"corrected slice {index} is outside the volume (0..{n - 1} along {axis})")
    mask = np.asarray(mask, bool)
    if mask.sum() < 1:
        raise PropagationError(f"the corrected mask on slice {index} is empty: nothing to propagate from; to remove "
                               "the structure beyond this slice, erase those slices instead")
    start = previous.start
    steps = (1, -1) if index == start else ((1,) if index > start else (-1,))
    kept = [r for r in previous.records if r.index != index
            and not any((r.index - index) * s > 0 for s in steps)]
    out = np.zeros(volume.shape, bool)
    for r in kept:
        insert_slice(out, r.index, axis, rle.decode(r.mask_rle))
    insert_slice(out, index, axis, mask)
    corrected = SliceRecord(index, None, list(mask_box(mask, 0.0)), 1.0, int(mask.sum()), rle.encode(mask),
                            corrected=True)
    result = Propagation(axis, start, out, kept + [corrected], config=asdict(cfg), restarted_at=index)
    run = _Run(engine, volume, axis, modality, window, cfg, policy_factory, on_slice, should_stop, store)
    run.done = len(result.records)
    for step in steps:
        if not run.direction(result, step, index, mask, logits):
            break
    _keep_component(result, index, mask)
    return result


@dataclass
class _Run:
    """What every slice of one propagation run shares."""

    engine: Engine
    volume: np.ndarray
    axis: str
    modality: str
    window: Any
    cfg: PropagationConfig
    policy_factory: Callable[[], Any] | None
    on_slice: Callable[[SliceRecord, int], None] | None
    should_stop: Callable[[], bool] | None
    store: Any
    done: int = 1

    def rgb(self, k: int) -> np.ndarray:
        """Slice k as the engine sees it."""
        return to_engine_rgb(extract_slice(self.volume, k, self.axis), self.modality, self.window)

    def direction(self, result: Propagation, step: int, first: int, first_mask: np.ndarray,
                  first_logits: np.ndarray | None) -> bool:
        """Propagate from slice `first` in direction `step` until the structure ends; False if cancelled."""
        with _Prefetch(self) as ahead:
            return self._direction(result, step, first, first_mask, first_logits, ahead)

    def _direction(self, result, step, first, first_mask, first_logits, ahead) -> bool:
        cfg, n = self.cfg, self.volume.shape[AXES[self.axis]]
        prev_mask, prev_logits, prev_index, misses = first_mask, first_logits, first, []
        prev_bright = None if cfg.max_shift is None else _brightness(self.rgb(first), first_mask)
        k = first + step
        ahead.start(k)
        while 0 <= k < n:
            if self.should_stop is not None and self.should_stop():
                result.stopped = "cancelled"
                break
            rgb = ahead.wait(k)
            ahead.start(k + step)  # encoded on another thread while this slice is decoded
            rec, logits = _one_slice(self.engine, k, rgb if rgb is not None else self.rgb(k), prev_mask, prev_logits,
                                     prev_index, cfg, self.policy_factory, self.store)
            good = rec.area >= cfg.min_area and rec.score >= cfg.min_score and (
                cfg.max_shift is None or abs(rec.brightness - prev_bright) <= cfg.max_shift)
            misses = [] if good else misses + [rec]
            if not good and len(misses) >= cfg.patience:
                break
            result.records.append(rec)
            mask = rle.decode(rec.mask_rle)
            insert_slice(result.mask, k, self.axis, mask)
            self.done += 1
            if self.on_slice is not None:
                self.on_slice(rec, self.done)
            if rec.area >= cfg.min_area:
                prev_mask, prev_logits, prev_index = mask, logits, k
                if good and cfg.max_shift is not None:
                    prev_bright = rec.brightness
            k += step
        for rec in misses:  # trailing weak slices past the structure's end are not kept
            if rec in result.records:
                result.records.remove(rec)
                insert_slice(result.mask, rec.index, self.axis, np.zeros_like(first_mask))
        return not result.stopped


class _Prefetch:
    """Encodes the next slice on a background thread (engines with `encode`, i.e. LiteMedSAM); the slice is then
    taken from the engine's embedding cache. At most one slice ahead: past the structure's end it is wasted."""

    def __init__(self, run: _Run):
        self.run = run
        self.pool = None
        self.pending: dict[int, Any] = {}

    def __enter__(self) -> _Prefetch:
        if hasattr(self.run.engine, "encode"):
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(1, thread_name_prefix="medagentseg-prefetch")
        return self

    def start(self, k: int) -> None:
        r = self.run
        if self.pool is not None and 0 <= k < r.volume.shape[AXES[r.axis]] and k not in self.pending:
            def job() -> np.ndarray:
                rgb = r.rgb(k)
                r.engine.encode(rgb)
                return rgb

            self.pending[k] = self.pool.submit(job)

    def wait(self, k: int) -> np.ndarray | None:
        """Slice k's engine image once its encoding is done (None if it was not prefetched)."""
        fut = self.pending.pop(k, None)
        return None if fut is None else fut.result()  # an encoder error surfaces here, on this thread

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)  # nothing runs on the engine once we return


def _brightness(rgb: np.ndarray, mask: np.ndarray) -> float:
    return round(float(rgb[..., 0][mask].mean()), 3) if mask.any() else 0.0


def _one_slice(engine, k, rgb, prev_mask, prev_logits, prev_index, cfg, policy_factory,
               store) -> tuple[SliceRecord, np.ndarray]:
    t0 = time.perf_counter()
    h, w = rgb.shape[:2]
    box = _grow(mask_box(prev_mask, 0.0), cfg.margin, cfg.min_grow, h, w)
    if store is not None:
        store.keep(engine, rgb)  # kept on disk: a second run over this volume encodes nothing
    engine.set_image(rgb)
    feed = prev_logits if cfg.feed_logits else None
    pred = engine.predict(Prompts(box), prev_logits=feed)
    mask, logits, score = pred.mask.astype(bool), pred.logits, float(pred.score)
    refined = None
    if policy_factory is not None and cfg.refine_below is not None and score < cfg.refine_below and mask.any():
        from .session import Session

        session = Session(engine, rgb, "target", max_turns=1 + cfg.refine_turns)
        session.add_box(*box, source="agent")
        session.run(policy_factory())
        mask, logits = session.mask, session.turns[-1].logits
        refined = session.to_dict()
    rec = SliceRecord(k, prev_index, [float(v) for v in box], round(score, 6), int(mask.sum()), rle.encode(mask),
                      refined, round(time.perf_counter() - t0, 4), brightness=_brightness(rgb, mask))
    return rec, logits


def _keep_component(result: Propagation, start: int, start_mask: np.ndarray) -> None:
    """Keep the 3D connected component(s) that overlap `start_mask` on slice `start`; drop the rest from the
    records."""
    from scipy import ndimage

    labels, n = ndimage.label(result.mask)
    if n <= 1:
        return
    seed = np.zeros_like(result.mask)
    insert_slice(seed, start, result.axis, start_mask)
    keep = np.isin(labels, np.unique(labels[seed & result.mask]))
    keep &= labels > 0
    result.mask = keep
    kept = []
    for rec in result.records:
        plane = extract_slice(keep, rec.index, result.axis)
        if rec.prior is not None and not plane.any():
            continue
        if int(plane.sum()) != rec.area:  # pieces outside the component removed: record what is kept
            rec.mask_rle, rec.area = rle.encode(plane), int(plane.sum())
        kept.append(rec)
    result.records = kept


def replay_propagation(record: dict[str, Any], engine: Engine, volume: np.ndarray, start_mask: np.ndarray,
                       start_logits: np.ndarray | None, modality: str = "CT", window: Any = None,
                       policy_factory: Callable[[], Any] | None = None) -> Propagation:
    """Re-run a recorded propagation and check that every slice's mask is the same; ValueError names the first
    slice that differs."""
    if record.get("format") != PROPAGATION_FORMAT:
        raise ValueError(f"not a MedAgentSeg propagation record (format {PROPAGATION_FORMAT!r} expected)")
    cfg = PropagationConfig(**record["config"])
    if record.get("restarted_at") is not None:  # a re-propagation: the kept slices and the person's mask as recorded
        index = record["restarted_at"]
        slices = [SliceRecord(**s) for s in record["slices"]]
        fix = next((s for s in slices if s.index == index and s.corrected), None)
        if fix is None:
            raise ValueError(f"the record restarts at slice {index} but holds no corrected mask for it")
        previous = Propagation(record["axis"], record["start"], np.zeros(volume.shape, bool),
                               [s for s in slices if s is not fix], config=record["config"])
        again = repropagate(engine, volume, previous, index, rle.decode(fix.mask_rle), None, modality, window, cfg,
                            policy_factory)
    else:
        again = propagate(engine, volume, record["start"], start_mask, start_logits, record["axis"], modality,
                          window, cfg, policy_factory)
    want = {s["index"]: s["mask_rle"] for s in record["slices"]}
    got = {r.index: r.mask_rle for r in again.records}
    if sorted(want) != sorted(got):
        raise ValueError(f"replay covers slices {sorted(got)[:3]}... but the record {sorted(want)[:3]}...")
    for k in sorted(want):
        if not np.array_equal(rle.decode(want[k]), rle.decode(got[k])):
            raise ValueError(f"replayed slice {k} gives a different mask than recorded")
    return again
