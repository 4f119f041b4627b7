"""Everything MedAgentSeg writes into MRML, with no Qt and no Slicer application: one import for the parts.

Each part imports only MRML / VTK classes (the ``slicer`` namespace as given by Slicer or by the PyPI package
``slicer-core``), numpy and MedAgentSegLib, so pytest can drive it against a real MRML scene.

- `mrml_volume`: input volume checks and access (KJI arrays), slice geometry, transforms, the view's slice.
- `slice_writer`: `SegmentSliceWriter`, one slice of a segment through the Segment Editor's own logic.
- `prompt_nodes`: `PromptNodes`, a session's box and clicks as markups.
- `sequence_recorders`: `TrajectoryRecorder` (one item per turn) and `SliceReviewRecorder` (one per propagated slice).
"""

from __future__ import annotations

from .mrml_volume import (
    BINARY,
    TAG_PREFIX,
    MRMLInputError,
    check_same_transform,
    check_volume,
    ensure_scene_logics,
    is_segment_locked,
    node_to_world,
    slice_geometry,
    view_slice,
    volume_array_kji,
    volume_ijk_to_ras,
    vtk_matrix,
    world_to_node,
)
from .prompt_nodes import BOX_COLOR, NEGATIVE_COLOR, POSITIVE_COLOR, PromptNodes, markups_positions, set_roi_box
from .sequence_recorders import SliceReviewRecorder, TrajectoryRecorder
from .slice_writer import EDITOR_NODE_TAG, SegmentSliceWriter, segment_kji, slice_image

__all__ = [
    "MRMLInputError", "ensure_scene_logics", "check_volume", "volume_array_kji", "volume_ijk_to_ras",
    "slice_geometry", "SegmentSliceWriter", "PromptNodes", "TrajectoryRecorder", "POSITIVE_COLOR",
    "NEGATIVE_COLOR", "BOX_COLOR", "TAG_PREFIX", "is_segment_locked", "vtk_matrix", "SliceReviewRecorder",
    "segment_kji", "slice_image", "view_slice", "set_roi_box", "world_to_node", "node_to_world", "check_same_transform",
    "markups_positions", "BINARY", "EDITOR_NODE_TAG",
]
