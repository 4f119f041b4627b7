"""The prompt nodes of one session: the box (``vtkMRMLMarkupsROINode``) and the clicks (two
``vtkMRMLMarkupsFiducialNode``: positive green "+n", negative red "-n"), to and from `Prompts` in slice pixels."""

from __future__ import annotations

from typing import Any

import numpy as np
import slicer

from MedAgentSegLib.engines.base import Prompts

from .geometry import SliceGeometry
from .mrml_volume import TAG_PREFIX, vtk_matrix

__all__ = ["PromptNodes", "set_roi_box", "markups_positions", "POSITIVE_COLOR", "NEGATIVE_COLOR", "BOX_COLOR"]

POSITIVE_COLOR = (0.10, 0.85, 0.20)
NEGATIVE_COLOR = (0.95, 0.15, 0.15)
BOX_COLOR = (1.00, 0.80, 0.10)


def set_roi_box(roi: Any, box: tuple[float, float, float, float], geom: SliceGeometry) -> None:
    """Place `roi` on the pixel box (x1, y1, x2, y2) of the slice of `geom`, oriented with the volume axes."""
    centre, size, axes = geom.box_to_roi(box)
    m = np.eye(4)
    m[:3, :3] = axes
    roi.GetObjectToNodeMatrix().DeepCopy(vtk_matrix(m))
    roi.SetCenter(*centre)
    roi.SetSize(*size)


class PromptNodes:
    """The prompt state of one session in markups nodes, positions on the session's slice.

    roi: box, oriented with the volume axes, one voxel thick. positive / negative: clicks, labelled "+n" /
    "-n" and coloured green / red; each control point's description is "prompt <i>", its index in
    `Prompts.points`, so edits keep the click order.
    """

    def __init__(self, roi: Any, positive: Any, negative: Any):
        self.roi, self.positive, self.negative = roi, positive, negative

    @classmethod
    def create(cls, scene: Any, base_name: str, parent_transform_id: str | None = None) -> PromptNodes:
        roi = slicer.vtkMRMLMarkupsROINode()
        roi.SetName(scene.GenerateUniqueName(f"{base_name} box"))
        pos = slicer.vtkMRMLMarkupsFiducialNode()
        pos.SetName(scene.GenerateUniqueName(f"{base_name} positive clicks"))
        neg = slicer.vtkMRMLMarkupsFiducialNode()
        neg.SetName(scene.GenerateUniqueName(f"{base_name} negative clicks"))
        for node, color in ((roi, BOX_COLOR), (pos, POSITIVE_COLOR), (neg, NEGATIVE_COLOR)):
            scene.AddNode(node)
            node.CreateDefaultDisplayNodes()
            node.SetAttribute(TAG_PREFIX + "Role", {id(roi): "box", id(pos): "positive", id(neg): "negative"}[id(node)])
            disp = node.GetDisplayNode()
            if disp is not None:
                disp.SetSelectedColor(*color)
                disp.SetColor(*color)
                disp.SetActiveColor(*color)
                if hasattr(disp, "SetPropertiesLabelVisibility"):
                    disp.SetPropertiesLabelVisibility(False)  # the node's internal name, drawn on the image
                if node is not roi:
                    disp.SetTextScale(3.0)
                    disp.SetGlyphScale(2.5)
                elif hasattr(disp, "SetFillVisibility"):
                    disp.SetFillVisibility(False)  # the box as an outline: the mask inside it must stay visible
            if parent_transform_id:
                node.SetAndObserveTransformNodeID(parent_transform_id)
        pos.SetMarkupLabelFormat("+%d")
        neg.SetMarkupLabelFormat("-%d")
        return cls(roi, pos, neg)

    @property
    def nodes(self) -> tuple[Any, Any, Any]:
        return self.roi, self.positive, self.negative

    def write(self, prompts: Prompts, geom: SliceGeometry) -> None:
        """Show `prompts` (pixels of the slice of `geom`) as markups in RAS on that slice.

        StartModify / EndModify, not DisableModifiedEvent: the events fire once at the end (views refresh) instead
        of staying pending until the next modification, a drag, which would then run a turn mid-drag."""
        was = [node.StartModify() for node in self.nodes]
        try:
            if prompts.box is None:  # as a new ROI node: no point, no placement left from an earlier box
                self.roi.GetObjectToNodeMatrix().Identity()
                self.roi.RemoveAllControlPoints()
            else:
                set_roi_box(self.roi, prompts.box, geom)
            for node, label in ((self.positive, 1), (self.negative, 0)):
                node.RemoveAllControlPoints()
                n = 0
                for i, ((x, y), lab) in enumerate(zip(prompts.points, prompts.labels)):
                    if lab != label:
                        continue
                    n += 1
                    ras = geom.pixel_to_ras(x, y)
                    idx = node.AddControlPoint(float(ras[0]), float(ras[1]), float(ras[2]),
                                               f"{'+' if label else '-'}{n}")
                    node.SetNthControlPointDescription(idx, f"prompt {i}")
        finally:
            for node, w in zip(self.nodes, was):
                node.EndModify(w)

    def read(self, geom: SliceGeometry) -> Prompts:
        """Prompts (pixels) from the markups: points projected onto the slice and clamped to the image."""
        box = None
        if self.roi.GetNumberOfControlPoints() > 0:
            m = self.roi.GetObjectToNodeMatrix()
            axes = np.array([[m.GetElement(r, c) for c in range(3)] for r in range(3)])
            box = geom.roi_to_box(np.array(self.roi.GetCenter()), np.array(self.roi.GetSize()), axes)
            if box[2] - box[0] < 1.0 or box[3] - box[1] < 1.0:
                box = None
        entries: list[tuple[float, int, tuple[float, float], int]] = []
        for node, label in ((self.positive, 1), (self.negative, 0)):
            for i in range(node.GetNumberOfControlPoints()):
                if not node.GetNthControlPointPositionVisibility(i):
                    continue
                x, y, _ = geom.ras_to_pixel(np.array(node.GetNthControlPointPosition(i)))
                desc = node.GetNthControlPointDescription(i) or ""
                order = float(desc.split()[-1]) if desc.startswith("prompt ") else 1e9 + len(entries)
                entries.append((order, len(entries), geom.clamp_pixel(x, y), label))
        entries.sort()
        return Prompts(box=box, points=[e[2] for e in entries], labels=[e[3] for e in entries])

    def set_locked(self, locked: bool) -> None:
        for node in self.nodes:
            node.SetLocked(bool(locked))

    def remove_from_scene(self, scene: Any) -> None:
        for node in self.nodes:
            if node.GetScene() is not None:
                scene.RemoveNode(node)


def markups_positions(node: Any) -> np.ndarray:
    """(N, 3) float RAS positions of a markups node's control points."""
    return np.array([node.GetNthControlPointPosition(i) for i in range(node.GetNumberOfControlPoints())],
                    dtype=np.float64).reshape(-1, 3)
