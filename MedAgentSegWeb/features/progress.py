"""An adapter over the shared logic for the page's propagation progress bar.

The logic reports a propagation's progress as chat lines ("propagating: N slices done", at most one a second); the
page shows one progress bar instead and leaves those lines out of its chat. The logic keeps no public progress
value yet, so this reads its job in flight (`AgentSegLogic._propagating`, `.done`) in one place; when the logic gains
a public `progress` (done, total), only this file changes.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["propagation_progress", "is_progress_line"]

_PROGRESS_LINE = re.compile(r"^propagating: \d+ slices? done$")


def propagation_progress(logic: Any) -> tuple[int, int] | None:
    """(slices done, slices along the propagation's axis) while a propagation runs, else None."""
    job = getattr(logic, "_propagating", None)
    if job is None:
        return None
    run = job.run
    image = run.volume_node.GetImageData() if run.volume_node.GetScene() is not None else None
    total = image.GetDimensions()["IJK".index(run.geom.axis)] if image is not None else 0
    return int(job.done), int(total)


def is_progress_line(text: str) -> bool:
    """A per-slice progress line of the logic, shown as the progress bar rather than in the chat."""
    return bool(_PROGRESS_LINE.match(text))
