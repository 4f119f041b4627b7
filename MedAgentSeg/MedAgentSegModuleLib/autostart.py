"""The agent's own first turn in the chat (issue #16): "segment the liver" with no box or click placed.

Runs on the worker thread and reads no MRML: the volume's voxels and geometry are copied on the main thread into a
`StartPlan`. In order: an installed specialist of the model library (a volume model: its mask on the slice where it
is largest), else the locator's box (on a volume, the slice where the target's heatmap mass is largest), else a
question in one short sentence (draw a box), with no list of targets or library settings (issue #24). The logic
writes the answer as a normal turn (or says the question) on the main thread. Qt-free, like the logic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = ["StartPlan", "FirstTurn", "find_first_turn", "lps_geometry"]

CHOICES = ("auto", "specialist", "locator")


@dataclass
class StartPlan:
    """What the worker needs, copied on the main thread. geometry: (spacing, origin, direction), SimpleITK order, LPS.
    pick_slice: let the specialist / locator choose the start slice along the session's axis."""

    volume: np.ndarray
    geometry: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]
    choice: str = "auto"
    library: str | None = None
    device: str = "cpu"
    pick_slice: bool = True


@dataclass
class FirstTurn:
    """kind: "specialist" (mask), "locator" (box) or "ask" (message). slice_index / image: the start slice and its
    engine image when they differ from the session's. notes: warnings for the chat (a specialist that failed)."""

    kind: str
    slice_index: int | None = None
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None
    record: dict[str, Any] | None = None
    confidence: float | None = None
    message: str = ""
    notes: list[str] = field(default_factory=list)


def lps_geometry(ijk_to_ras: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(spacing, origin, direction) of a volume in SimpleITK's order and LPS, from its 4x4 IJKToRAS."""
    m = np.asarray(ijk_to_ras, dtype=np.float64)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    flip = np.diag([-1.0, -1.0, 1.0])  # RAS -> LPS
    direction = flip @ (m[:3, :3] / spacing)
    return tuple(spacing.tolist()), tuple((flip @ m[:3, 3]).tolist()), tuple(direction.ravel().tolist())


def find_first_turn(engine: Any, plan: StartPlan, geom: Any, modality: str, window: Any, target: str,
                    to_rgb: Callable[[np.ndarray, str, Any], np.ndarray],
                    load_locator: Callable[[], Any] | None = None) -> FirstTurn:  # worker thread
    """The first turn for `target` on the session's axis (geom: the session's SliceGeometry). Never raises for the
    models' own failures: they become a note (specialist) or a question (locator)."""
    n = geom.dims_ijk[{"I": 0, "J": 1, "K": 2}[geom.axis]]

    def plane(k: int) -> np.ndarray:
        return to_rgb(np.ascontiguousarray(replace(geom, index=k).extract(plan.volume)), modality, window)

    notes: list[str] = []
    if plan.choice in ("auto", "specialist"):
        found, notes = _specialist(plan, geom, modality, target)
        if found is not None:
            k, mask, record = found
            return FirstTurn("specialist", k, plane(k) if k != geom.index else None, mask=mask, record=record,
                             notes=notes)
        if plan.choice == "specialist":
            return FirstTurn("ask", message=f"{notes[-1] if notes else 'No specialist ran.'} {_ask(target)}",
                             notes=[])
    try:
        locator = (load_locator or _shipped_locator)()
    except Exception as exc:  # noqa: BLE001 - no locator here: ask, saying why
        return FirstTurn("ask", message=f"I could not load the locator ({_short(exc)}): draw a box around the "
                         f"{target}.", notes=notes)
    if not locator.knows(target):
        return FirstTurn("ask", message=f"I cannot find the {target} on my own yet: draw a box around it.",
                         notes=notes)
    try:
        if plan.pick_slice and n > 1:
            loc = locator.locate_volume(engine, plane, n, target)
        else:
            loc = locator.locate(engine, plane(geom.index), target)
            loc.slice = geom.index
    except Exception as exc:  # noqa: BLE001 - a locator failure is a question, not a half-started session
        why = f"the engine {getattr(engine, 'name', engine)} gives no image embedding for the locator" \
            if not hasattr(engine, "embedding_state") else f"the locator could not run: {_short(exc)}"
        return FirstTurn("ask", message=f"I cannot find the {target} on my own here ({why}): draw a box around it.",
                         notes=notes)
    if locator.asks(loc):  # one sentence: the confidence is in FirstTurn.confidence, not in the question
        where = "on this slice" if n > 1 and not plan.pick_slice else "in this image"  # one slice looked at
        return FirstTurn("ask", confidence=loc.confidence, notes=notes,
                         message=f"I could not find the {target} {where}: draw a box around it.")
    k = geom.index if loc.slice is None else int(loc.slice)
    return FirstTurn("locator", k, plane(k) if k != geom.index else None, box=tuple(float(v) for v in loc.box),
                     confidence=float(loc.confidence), notes=notes)


def _specialist(plan: StartPlan, geom: Any, modality: str, target: str
                ) -> tuple[tuple[int, np.ndarray, dict[str, Any]] | None, list[str]]:
    """((start slice, (H, W) mask on the session's slice, record) or None, notes for the chat)."""
    from MedAgentSegLib.engines.base import resolve_device
    from MedAgentSegLib.routing.first_mask import (
        EmptyStartSlice,
        NoSpecialist,
        NotAVolume,
        SpecialistFailed,
        specialist_start,
    )
    from MedAgentSegLib.routing.library import LibraryError

    what = "the locator places the first box instead" if plan.choice == "auto" else "nothing was written"
    try:  # installed -> run -> on the volume's grid -> start slice -> not empty there: routing/first_mask.py
        start = specialist_start(plan.volume, plan.geometry, target, modality, plan.library,
                                 resolve_device(plan.device), axis="KJI".index(geom.axis),
                                 index=None if plan.pick_slice else geom.index)
    except (LibraryError, OSError) as exc:  # a broken library: said, and the locator goes on
        return None, [f"The model library could not be read ({_short(exc)}); {what}."]
    except NoSpecialist as exc:
        return None, ([f"No installed specialist segments the {target}{f' ({exc.why})' if exc.why else ''}."]
                      if plan.choice == "specialist" else [])
    except NotAVolume as exc:
        return None, [f"The specialist {' + '.join(exc.installed.names)} is a volume model and this is one slice; "
                      f"{what}."]
    except EmptyStartSlice as exc:
        return None, [f"The specialist {exc.model} found no {target} on slice {geom.axis}={exc.index}; {what}."]
    except SpecialistFailed as exc:
        return None, [f"The specialist {exc}; {what}."]
    k = start.index  # the session's slice of the KJI mask, as the engine sees it (geom orients it)
    return (k, np.ascontiguousarray(replace(geom, index=k).extract(start.found.mask)).astype(bool),
            start.found.record), []


def _shipped_locator() -> Any:
    from MedAgentSegLib.agent.locator import load_locator

    return load_locator()


def _ask(target: str) -> str:
    return f"Draw a box around the {target}."


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
