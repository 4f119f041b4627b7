"""The agent's own first turn in the chat (issue #16): "segment the liver" with no box or click placed.

Runs on the worker thread and reads no MRML: the volume's voxels and geometry are copied on the main thread into a
`StartPlan`. Who makes the first turn is the library's pipeline (`MedAgentSegLib.pipeline.first_turn`: a specialist,
else the locator, else a question), the same as the command line's; this module gives it the session's slices and
words its question in one short sentence for the chat (draw a box), with no list of targets or library settings
(issue #24). The logic writes the answer as a normal turn (or says the question) on the main thread. Qt-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from MedAgentSegLib.pipeline.start import FirstTurn, first_turn

__all__ = ["StartPlan", "FirstTurn", "find_first_turn", "chat_notes", "lps_geometry"]

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
    """The library's first turn for `target` on the session's axis (geom: the session's SliceGeometry), with the
    question and the notes in the chat's words (`message`, `chat_notes`). Never raises for the models' own
    failures: they become a note (specialist) or a question (locator)."""
    n = geom.dims_ijk[{"I": 0, "J": 1, "K": 2}[geom.axis]]

    def plane(k: int) -> np.ndarray:
        return to_rgb(np.ascontiguousarray(replace(geom, index=k).extract(plan.volume)), modality, window)

    def slice_of(mask: np.ndarray, k: int) -> np.ndarray:  # the session's slice of a KJI mask, as the engine sees it
        return np.ascontiguousarray(replace(geom, index=k).extract(mask))

    first = first_turn(engine, target, plane, n, geom.index, slice_of=slice_of, volume=plan.volume,
                       geometry=plan.geometry, axis="KJI".index(geom.axis), modality=modality, choice=plan.choice,
                       library=plan.library, device=plan.device, pick_slice=plan.pick_slice,
                       load_locator=load_locator, slice_name=lambda k: f"{geom.axis}={k}")
    first.message = _question(first, n > 1 and not plan.pick_slice)
    return first


def chat_notes(first: FirstTurn) -> list[str]:
    """The first turn's warnings as chat sentences (a specialist that failed, a library that could not be read)."""
    what = "nothing was written" if first.asks else "the locator places the first box instead"
    return [f"The specialist {text}; {what}." if kind == "specialist_failed" else
            f"{text[:1].upper()}{text[1:]}; {what}." for kind, text in first.notes]


def _question(first: FirstTurn, one_slice: bool) -> str:
    """One short sentence (issue #24): what to do, not the list of targets or library settings."""
    if not first.asks:
        return ""
    target = first.target
    if first.why == "unsure":  # the confidence is in FirstTurn.confidence, not in the question
        return f"I could not find the {target} {'on this slice' if one_slice else 'in this image'}: draw a box " \
            "around it."
    if first.why == "unknown":
        return f"I cannot find the {target} on my own yet: draw a box around it."
    if first.why == "no_locator":
        return f"I could not load the locator ({first.detail}): draw a box around the {target}."
    if first.why == "locator_failed":
        return f"I cannot find the {target} on my own here ({first.detail}): draw a box around it."
    if first.why == "no_specialist":
        return f"No installed specialist segments the {target}" + (f" ({first.detail})" if first.detail else "") \
            + f". Draw a box around the {target}."
    if first.why == "library":
        return f"The model library could not be read ({first.detail}). Draw a box around the {target}."
    return f"The specialist {first.detail}; nothing was written. Draw a box around the {target}."
