"""Who makes the first turn when a person asks for a target and places nothing (issues #16, #25): an installed
specialist of the model library (a volume model: its mask on the slice where it is largest), else the locator's box
(on a volume, the slice where the target's heatmap mass is largest), else a question.

One function for every front end: the command line, the Slicer chat and the browser. It never raises for the
models' own failures: they become a note (a specialist that failed) or a question, and each front end words the
question in its own terms (`--box` on the command line, the box tool in the chat).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FirstTurn", "first_turn", "CHOICES"]

CHOICES = ("auto", "specialist", "locator")


@dataclass
class FirstTurn:
    """kind: "specialist" (mask), "locator" (box) or "ask".

    slice_index: the start slice (None for a 2D image); image: the engine's image of it when it is not the session's
    `index` (the session opens there). mask: the specialist's (H, W) mask on that slice, volume_mask
    its whole (KJI) mask, record: what the trajectory says of the model. box / confidence: the locator's.
    why (for "ask"): "unknown" (not a concept the locator knows), "unsure" (confidence below the card's threshold),
    "no_locator" (it could not be loaded), "locator_failed" (it could not run here); with choice "specialist" (the
    specialist was required): "no_specialist", "specialist_failed", "library" (the model library could not be
    read). detail: the failure's own words.
    notes: (kind, text) warnings for the person, e.g. ("specialist_failed", "...") when the locator went on.
    """

    kind: str
    target: str
    slice_index: int | None = None
    mask: np.ndarray | None = None
    volume_mask: np.ndarray | None = None
    record: dict[str, Any] | None = None
    image: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None
    confidence: float | None = None
    threshold: float | None = None
    why: str = ""
    detail: str = ""
    notes: list[tuple[str, str]] = field(default_factory=list)
    message: str = ""  # the question in the front end's words, where the front end keeps it here

    @property
    def asks(self) -> bool:
        return self.kind == "ask"


def first_turn(engine: Any, target: str, plane: Callable[[int], np.ndarray], n_slices: int, index: int | None,
               *, slice_of: Callable[[np.ndarray, int], np.ndarray] | None = None, volume: np.ndarray | None = None,
               geometry: Any = None, axis: int = 0, modality: str | None = None, choice: str = "auto",
               library: Any = None, device: str = "cpu", pick_slice: bool = True,
               load_locator: Callable[[], Any] | None = None, on_specialist: Callable[[Any], None] | None = None,
               slice_name: Callable[[int], str] = str) -> FirstTurn:
    """The first turn for `target`.

    plane(k): the engine's (H, W, 3) uint8 image of slice k (of the 2D image when n_slices is 1); index: the
    session's slice (None for 2D); pick_slice: let the specialist / locator choose the start slice. For the
    specialist (volumes only): volume (KJI array), geometry (spacing, origin, direction; SimpleITK order, LPS), the
    array `axis` the slices run along and slice_of(mask3d, k) -> the (H, W) plane as the engine sees it.
    on_specialist(installed): called just before a specialist runs (a progress line); slice_name(k): how the front
    end names slice k in a note ("3" on the command line, "K=3" in Slicer)."""
    if choice not in CHOICES:
        raise ValueError(f"unknown first-turn choice {choice!r}; use one of {', '.join(CHOICES)}")
    notes: list[tuple[str, str]] = []
    if choice in ("auto", "specialist") and volume is not None and volume.ndim == 3:
        found = _specialist(volume, geometry, target, modality, library, device, axis,
                            None if pick_slice else index, choice, notes, on_specialist, slice_name)
        if isinstance(found, FirstTurn):
            return found
        if found is not None:
            start, k = found
            return FirstTurn("specialist", target, k, (slice_of or _take(axis))(start.mask, k).astype(bool),
                             start.mask, start.record, plane(k) if k != index else None, notes=notes)
    elif choice == "specialist":
        return FirstTurn("ask", target, why="specialist_failed",
                         detail="specialists are volume models and this is one 2D image", notes=notes)
    return _locator_turn(engine, target, plane, n_slices, index, pick_slice, load_locator, notes)


def _take(axis: int) -> Callable[[np.ndarray, int], np.ndarray]:
    return lambda a, k: np.take(a, k, axis=axis)


def _specialist(volume: np.ndarray, geometry: Any, target: str, modality: str | None, library: Any, device: str,
                axis: int, index: int | None, choice: str, notes: list[tuple[str, str]],
                on_specialist: Callable[[Any], None] | None, slice_name: Callable[[int], str]) -> Any:
    """(FirstMask, start slice), None to go on with the locator (a note says why where a person should know), or a
    FirstTurn asking when --first specialist cannot be met."""
    from ..engines.base import resolve_device
    from ..routing.first_mask import EmptyStartSlice, NoSpecialist, NotAVolume, SpecialistFailed, specialist_start
    from ..routing.library import LibraryError

    try:  # installed -> run -> on the volume's grid -> start slice -> not empty there: routing/first_mask.py
        start = specialist_start(volume, geometry, target, modality, library, resolve_device(device), axis=axis,
                                 index=index, on_run=on_specialist)
    except (LibraryError, OSError) as exc:  # a broken library: said, and the locator goes on (auto)
        if choice == "specialist":
            return FirstTurn("ask", target, why="library", detail=_short(exc), notes=notes)
        notes.append(("library", f"the model library could not be read ({_short(exc)})"))
        return None
    except NoSpecialist as exc:
        if choice == "specialist":
            return FirstTurn("ask", target, why="no_specialist", detail=exc.why or "", notes=notes)
        return None
    except (NotAVolume, EmptyStartSlice, SpecialistFailed) as exc:
        if isinstance(exc, NotAVolume):
            detail = f"{' + '.join(exc.installed.names)} is a volume model and this is one slice"
        elif isinstance(exc, EmptyStartSlice):
            detail = f"{exc.model} found no {target} on slice {slice_name(exc.index)}"
        else:
            detail = str(exc)
        if choice == "specialist":
            return FirstTurn("ask", target, why="specialist_failed", detail=detail, notes=notes)
        notes.append(("specialist_failed", detail))
        return None
    return start.found, start.index


def _locator_turn(engine: Any, target: str, plane: Callable[[int], np.ndarray], n_slices: int, index: int | None,
                  pick_slice: bool, load_locator: Callable[[], Any] | None, notes: list[tuple[str, str]]
                  ) -> FirstTurn:
    try:
        locator = (load_locator or _shipped_locator)()
    except Exception as exc:  # noqa: BLE001 - no locator here: ask, saying why
        return FirstTurn("ask", target, why="no_locator", detail=_short(exc), notes=notes)
    if not locator.knows(target):
        return FirstTurn("ask", target, why="unknown", notes=notes)
    try:
        if pick_slice and n_slices > 1:
            loc = locator.locate_volume(engine, plane, n_slices, target)
        else:
            loc = locator.locate(engine, plane(0 if index is None else index), target)
            loc.slice = index
    except Exception as exc:  # noqa: BLE001 - a locator failure is a question, not a half-started session
        detail = f"the engine {getattr(engine, 'name', engine)} gives no image embedding for the locator" \
            if not hasattr(engine, "embedding_state") else f"the locator could not run: {_short(exc)}"
        return FirstTurn("ask", target, why="locator_failed", detail=detail, notes=notes)
    threshold = locator.threshold_for(loc.concept)
    k = index if loc.slice is None else int(loc.slice)
    if locator.asks(loc):
        return FirstTurn("ask", target, k, confidence=float(loc.confidence), threshold=threshold, why="unsure",
                         notes=notes)
    return FirstTurn("locator", target, k, image=plane(k) if k != index else None, box=tuple(float(v) for v in loc.box),
                     confidence=float(loc.confidence), threshold=threshold, notes=notes)


def _shipped_locator() -> Any:
    from ..agent.locator import load_locator

    return load_locator()


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
