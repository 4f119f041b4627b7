"""A session's turns and a propagation's slices as Slicer sequences, scrubbed in the Sequences module.

- `TrajectoryRecorder`: one ``vtkMRMLSequenceNode`` per recorded node (mask, box, positive and negative clicks)
  synchronised by a ``vtkMRMLSequenceBrowserNode``: one item per turn.
- `SliceReviewRecorder`: the same for a 3D propagation: one item per propagated slice (its mask and box).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import slicer

from .geometry import SliceGeometry
from .mrml_volume import BINARY, TAG_PREFIX
from .prompt_nodes import PromptNodes, set_roi_box
from .slice_writer import slice_image

__all__ = ["TrajectoryRecorder", "SliceReviewRecorder"]


class TrajectoryRecorder:
    """One sequence item per turn for the target's mask and the three prompt nodes, browsed together.

    Index values are the 1-based turn numbers ("1", "2", ...), index name "turn". Proxy nodes are separate
    review nodes (the live segmentation and markups are never overwritten by scrubbing).
    """

    def __init__(self, scene: Any, base_name: str, sequences_logic: Any):
        self.scene = scene
        self.sequences_logic = sequences_logic
        self.sequences, self.browser = _browsed_sequences(
            scene, f"{base_name} trajectory", "turn", {"mask": f"{base_name} mask", "box": f"{base_name} box",
                                                        "positive": f"{base_name} positive clicks",
                                                        "negative": f"{base_name} negative clicks"})

    @property
    def count(self) -> int:
        return self.sequences["mask"].GetNumberOfDataNodes()

    def record(self, turn_number: int, segmentation_node: Any, segment_id: str, prompt_nodes: PromptNodes,
               record: dict[str, Any]) -> None:
        """Add item `turn_number`: a one-segment copy of the target and copies of the prompt nodes."""
        value = str(int(turn_number))
        snap = slicer.vtkMRMLSegmentationNode()
        img = slicer.vtkOrientedImageData()
        segmentation_node.GetBinaryLabelmapRepresentation(segment_id, img)
        src = segmentation_node.GetSegmentation().GetSegment(segment_id)
        segment = slicer.vtkSegment()
        segment.SetName(src.GetName())
        segment.SetColor(src.GetColor())
        segment.AddRepresentation(BINARY, img)
        snap.GetSegmentation().SetSourceRepresentationName(BINARY)
        snap.GetSegmentation().AddSegment(segment, segment_id)
        snap.SetAttribute(TAG_PREFIX + "Turn", json.dumps(record))
        snap.SetName(f"turn {value}")
        self.sequences["mask"].SetDataNodeAtValue(snap, value)
        for key, node in (("box", prompt_nodes.roi), ("positive", prompt_nodes.positive),
                          ("negative", prompt_nodes.negative)):
            self.sequences[key].SetDataNodeAtValue(node, value)
        self._refresh(select_last=True)

    def remove_last(self) -> None:
        n = self.count
        if n == 0:
            return
        value = self.sequences["mask"].GetNthIndexValue(n - 1)
        for seq in self.sequences.values():
            seq.RemoveDataNodeAtValue(value)
        self._refresh(select_last=True)

    def index_values(self) -> list[str]:
        seq = self.sequences["mask"]
        return [seq.GetNthIndexValue(i) for i in range(seq.GetNumberOfDataNodes())]

    def _refresh(self, select_last: bool) -> None:
        if self.count:
            _show_item(self.browser, self.sequences, self.sequences_logic, self.count - 1 if select_last else None)

    def nodes(self) -> Iterable[Any]:
        yield from self.sequences.values()
        yield self.browser


class SliceReviewRecorder:
    """One sequence item per slice of a 3D propagation, for review: the slice's mask (a one-segment segmentation
    holding only that slice, the slice record as its attribute) and the box it was prompted with, browsed together.

    Index values are the slice indices along the propagation's axis (index name "slice"). It shows the propagation
    now in the segment, so after an Undo it shows the one before (or nothing).
    """

    def __init__(self, scene: Any, base_name: str, sequences_logic: Any):
        self.scene = scene
        self.sequences_logic = sequences_logic
        self.sequences, self.browser = _browsed_sequences(
            scene, f"{base_name} propagation", "slice", {"mask": f"{base_name} propagated slices",
                                                         "box": f"{base_name} propagation boxes"})

    @property
    def count(self) -> int:
        return self.sequences["mask"].GetNumberOfDataNodes()

    def index_values(self) -> list[str]:
        seq = self.sequences["mask"]
        return [seq.GetNthIndexValue(i) for i in range(seq.GetNumberOfDataNodes())]

    def show(self, items: Iterable[tuple[SliceGeometry, np.ndarray, Any, dict[str, Any]]], segment: Any,
             segment_id: str) -> None:
        """Replace the items with (slice geometry, (H, W) mask, pixel box or None, record) per slice."""
        for seq in self.sequences.values():
            seq.RemoveAllDataNodes()
        for geom, mask, box, record in items:
            value = str(int(geom.index))
            self.sequences["mask"].SetDataNodeAtValue(_slice_segmentation(geom, mask, segment, segment_id, record),
                                                      value)
            roi = slicer.vtkMRMLMarkupsROINode()
            if box is not None:
                set_roi_box(roi, box, geom)
            self.sequences["box"].SetDataNodeAtValue(roi, value)
        if self.count:
            _show_item(self.browser, self.sequences, self.sequences_logic, 0)

    def nodes(self) -> Iterable[Any]:
        yield from self.sequences.values()
        yield self.browser


def _browsed_sequences(scene: Any, browser_name: str, index_name: str, names: dict[str, str]
                       ) -> tuple[dict[str, Any], Any]:
    """Sequence nodes (key -> node, the first key the master) and a browser synchronising them."""
    sequences = {}
    for key, name in names.items():
        seq = slicer.vtkMRMLSequenceNode()
        seq.SetName(scene.GenerateUniqueName(f"{name} sequence"))
        seq.SetIndexName(index_name)
        seq.SetIndexUnit("")
        seq.SetIndexType(seq.NumericIndex)
        seq.SetAttribute(TAG_PREFIX + "Role", key)
        scene.AddNode(seq)
        sequences[key] = seq
    browser = slicer.vtkMRMLSequenceBrowserNode()
    browser.SetName(scene.GenerateUniqueName(browser_name))
    scene.AddNode(browser)
    master, *others = sequences.values()
    browser.SetAndObserveMasterSequenceNodeID(master.GetID())
    for seq in others:
        browser.AddSynchronizedSequenceNodeID(seq.GetID())
    return sequences, browser


def _show_item(browser: Any, sequences: dict[str, Any], sequences_logic: Any, item: int | None) -> None:
    """Select `item` (None: keep the selection) and update the proxies: the mask as an outline over the live
    segment, the markups locked (scrubbing must never edit them)."""
    if item is not None:
        browser.SetSelectedItemNumber(item)
    sequences_logic.UpdateProxyNodesFromSequences(browser)
    for key, seq in sequences.items():
        proxy = browser.GetProxyNode(seq)
        if proxy is None:
            continue
        if key == "mask" and proxy.GetDisplayNode() is not None:
            proxy.GetDisplayNode().SetOpacity2DFill(0.0)
        elif key != "mask":
            proxy.SetLocked(True)


def _slice_segmentation(geom: SliceGeometry, mask: np.ndarray, segment: Any, segment_id: str,
                        record: dict[str, Any]) -> Any:
    """A segmentation node (not in a scene) holding only `mask` on the slice of `geom`, named like `segment`."""
    node = slicer.vtkMRMLSegmentationNode()
    copy = slicer.vtkSegment()
    copy.SetName(segment.GetName())
    copy.SetColor(segment.GetColor())
    copy.AddRepresentation(BINARY, slice_image(mask, geom))
    node.GetSegmentation().SetSourceRepresentationName(BINARY)
    node.GetSegmentation().AddSegment(copy, segment_id)
    node.SetAttribute(TAG_PREFIX + "Slice", json.dumps(record))
    node.SetName(f"slice {geom.axis}={geom.index}")
    return node
