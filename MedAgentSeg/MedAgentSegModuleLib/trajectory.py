"""The scene's sessions as one JSON file, in the library's vocabulary (`medagentseg replay` reads it): MRML node
IDs, slice geometry, each session's turns and propagations."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from MedAgentSegLib.session import SCENE_TRAJECTORY_FORMAT

__all__ = ["TRAJECTORY_FILE", "SLICER_TRAJECTORY_FORMAT", "trajectory_dict", "save_trajectory", "propagation_dict"]

TRAJECTORY_FILE = "trajectory.json"
SLICER_TRAJECTORY_FORMAT = SCENE_TRAJECTORY_FORMAT  # the library reads it too (`medagentseg replay`)


def propagation_dict(run: Any, step: Any) -> dict[str, Any]:
    """The library's record (replay_propagation reads it as it is) plus what the Slicer side did with it."""
    window = list(run.window) if isinstance(run.window, tuple) else run.window
    return {**step.result.to_dict(), "slicer": {
        "kind": step.kind, "ijk_axis": run.geom.axis, "session_index": step.entry.index,
        "written_slices": step.written, "masked_voxels": step.masked_voxels, "modality": run.modality,
        "window": window}}



def trajectory_dict(runs: Iterable[Any]) -> dict[str, Any]:
    """Every session in `runs` (the scene's): MRML node IDs, slice geometry, and the session trajectory."""
    out = []
    for run in runs:
        if run.session is None:
            continue
        out.append({
            "volume": {"id": run.volume_node.GetID(), "name": run.volume_node.GetName()},
            "segmentation": {"id": run.segmentation_node.GetID(), "name": run.segmentation_node.GetName()},
            "segment_id": run.segment_id,
            "slice": {"axis": run.geom.axis, "index": run.geom.index,
                      "ijk_to_ras": run.geom.ijk_to_ras.round(9).tolist(),
                      "pixel_to_ijk": "K: (x, y, k); J: (x, j, y); I: (i, x, y)"},
            "markups": {"box": run.prompts.roi.GetID(), "positive": run.prompts.positive.GetID(),
                        "negative": run.prompts.negative.GetID()},
            "sequence_browser": run.recorder.browser.GetID(),
            "policy": run.policy_name,
            "session": run.session.to_dict(),
            "propagations": [propagation_dict(run, step) for step in run.propagations],
            "propagation_browser": None if run.review is None else run.review.browser.GetID(),
        })
    return {"format": SLICER_TRAJECTORY_FORMAT, "runs": out}


def save_trajectory(runs: Iterable[Any], path: str | os.PathLike) -> Path:
    """Write `trajectory_dict(runs)` as JSON at `path` (atomically)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(trajectory_dict(runs), indent=1))
    tmp.replace(path)
    return path
