"""Volume checks and geometry for MRML nodes: what MedAgentSeg accepts as input and where its slices lie.

- `check_volume`, `volume_array_kji`, `volume_ijk_to_ras`: input volume checks and access (KJI arrays).
- `slice_geometry`, `view_slice`, `world_to_node` / `node_to_world`: slices of a volume and the views showing them.
- `ensure_scene_logics`: the logics slicer-core needs in a scene without the application.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .geometry import SliceGeometry

__all__ = ["MRMLInputError", "ensure_scene_logics", "check_volume", "volume_array_kji", "volume_ijk_to_ras",
           "slice_geometry", "TAG_PREFIX", "BINARY", "is_segment_locked", "vtk_matrix", "view_slice", "world_to_node",
           "node_to_world", "check_same_transform", "nodes_by_class"]

TAG_PREFIX = "MedAgentSeg."
BINARY = "Binary labelmap"


class MRMLInputError(ValueError):
    """A node given to MedAgentSeg cannot be used; the message says what happened and what to do."""


# -- scene set-up -----------------------------------------------------------------------------------------
_KEEP_ALIVE: list[Any] = []


def ensure_scene_logics(scene: Any) -> Any:
    """Make segmentation converters available and return a sequences logic bound to `scene`.

    Inside Slicer the application already did this; with slicer-core a segmentations module logic must
    exist once so that the binary-labelmap representation can be constructed.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        seg_logic = slicer.vtkSlicerSegmentationsModuleLogic()
        seg_logic.SetMRMLScene(scene)
        _KEEP_ALIVE.append(seg_logic)
    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "sequences"):
        return modules.sequences.logic()
    seq_logic = slicer.vtkSlicerSequencesLogic()
    seq_logic.SetMRMLScene(scene)
    _KEEP_ALIVE.append(seq_logic)
    return seq_logic


# -- volumes ----------------------------------------------------------------------------------------------
def check_volume(volume_node: Any) -> None:
    """Raise MRMLInputError unless `volume_node` is a single-component 3D scalar volume with voxels."""
    if volume_node is None:
        raise MRMLInputError("No input volume selected: choose a volume in 'Input volume' (load one with "
                             "File > Add Data or Sample Data first).")
    name = volume_node.GetName()
    if volume_node.IsA("vtkMRMLMultiVolumeNode"):
        raise MRMLInputError(f"Volume '{name}' is a 4D multi-volume: MedAgentSeg segments one 3D frame. "
                             "Extract a frame (MultiVolumeExplorer or Sequences) and select it.")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise MRMLInputError(f"Volume '{name}' is a {volume_node.GetClassName()}, not a scalar volume. "
                             "Select a scalar (grey-level) volume.")
    image = volume_node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise MRMLInputError(f"Volume '{name}' has no voxels loaded; reload it or choose another volume.")
    comps = image.GetNumberOfScalarComponents()
    if comps != 1:
        kind = "an RGB colour" if comps in (3, 4) else f"a {comps}-component"
        raise MRMLInputError(f"Volume '{name}' is {kind} volume; MedAgentSeg needs one grey-level component. "
                             "Convert it with the 'Vector to Scalar Volume' module and select the result.")
    scene = volume_node.GetScene()
    if scene is not None:
        for browser in nodes_by_class(scene, "vtkMRMLSequenceBrowserNode"):
            if browser.IsProxyNodeID(volume_node.GetID()) and _is_time_sequence(browser, volume_node):
                raise MRMLInputError(f"Volume '{name}' is one frame of a 4D sequence; the frame shown changes as "
                                     "the sequence plays. Clone the frame (Data module > right-click > Clone) "
                                     "and select the clone.")
    dims = image.GetDimensions()
    if min(dims) < 1 or sorted(dims)[1] < 8:
        raise MRMLInputError(f"Volume '{name}' is too small ({dims[0]}x{dims[1]}x{dims[2]} voxels) to segment.")


def _is_time_sequence(browser: Any, volume_node: Any) -> bool:
    seq = browser.GetSequenceNode(volume_node)
    return seq is not None and seq.GetNumberOfDataNodes() > 1 and not seq.GetName().startswith("MedAgentSeg")


def nodes_by_class(scene: Any, class_name: str) -> list[Any]:
    col = scene.GetNodesByClass(class_name)
    return [col.GetItemAsObject(i) for i in range(col.GetNumberOfItems())]


def volume_ijk_to_ras(volume_node: Any) -> np.ndarray:
    """(4, 4) float64 IJKToRAS of the volume (node coordinates, before any parent transform)."""
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def volume_array_kji(volume_node: Any) -> np.ndarray:
    """The volume's voxels as a (K, J, I) numpy view (like ``slicer.util.arrayFromVolume``)."""
    image = volume_node.GetImageData()
    dims = image.GetDimensions()
    arr = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return arr.reshape(dims[2], dims[1], dims[0])


def slice_geometry(volume_node: Any, axis: str, index: int) -> SliceGeometry:
    dims = volume_node.GetImageData().GetDimensions()
    return SliceGeometry(axis, int(index), (int(dims[0]), int(dims[1]), int(dims[2])), volume_ijk_to_ras(volume_node))


def _transform_between(source: Any, target: Any) -> vtk.vtkGeneralTransform:
    t = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(source, target, t)
    return t


def world_to_node(node: Any, ras: Any) -> np.ndarray:
    """A world RAS point in `node`'s own RAS (before its parent transforms): what IJKToRAS maps to."""
    return np.array(_transform_between(None, node.GetParentTransformNode()).TransformPoint(*map(float, ras[:3])))


def node_to_world(node: Any, ras: Any) -> np.ndarray:
    """A point of `node`'s own RAS in world RAS (after its parent transforms): where the views show it."""
    return np.array(_transform_between(node.GetParentTransformNode(), None).TransformPoint(*map(float, ras[:3])))


def check_same_transform(segmentation_node: Any, volume_node: Any) -> None:
    """Slices are written in the volume's own RAS: the segmentation must sit under the same parent transform."""
    if (segmentation_node.GetTransformNodeID() or "") != (volume_node.GetTransformNodeID() or ""):
        raise MRMLInputError(f"Segmentation '{segmentation_node.GetName()}' is under a different transform than "
                             f"volume '{volume_node.GetName()}', so its voxels would land elsewhere. Put both under "
                             "the same transform (Data module, Transform column), or let MedAgentSeg create a new "
                             "segmentation.")


def view_slice(slice_node: Any, volume_node: Any, view_name: str = "") -> tuple[str, int]:
    """(IJK axis normal to the slice view, slice index) of the slice `slice_node` shows through `volume_node`.

    The view is in world RAS; the volume's IJKToRAS is in its own RAS, so its parent transforms are undone first."""
    slice_to_ras = slice_node.GetSliceToRAS()
    world_centre = np.array([slice_to_ras.GetElement(r, 3) for r in range(3)])
    world_normal = np.array([slice_to_ras.GetElement(r, 2) for r in range(3)])
    centre = world_to_node(volume_node, world_centre)
    normal = world_to_node(volume_node, world_centre + world_normal) - centre
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    n_ijk = [sum(ras_to_ijk.GetElement(r, c) * normal[c] for c in range(3)) for r in range(3)]
    axis_index = max(range(3), key=lambda a: abs(n_ijk[a]))
    ijk = ras_to_ijk.MultiplyPoint([*centre, 1.0])
    dims = volume_node.GetImageData().GetDimensions()
    index = int(round(ijk[axis_index]))
    if not 0 <= index < dims[axis_index]:
        raise MRMLInputError(f"The {view_name or 'chosen'} slice view is outside the volume; scroll it into the "
                             "volume.")
    return "IJK"[axis_index], index


def vtk_matrix(m: np.ndarray) -> vtk.vtkMatrix4x4:
    """4x4 numpy array -> vtkMatrix4x4."""
    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(m[r, c]))
    return out


def is_segment_locked(segment: Any) -> bool:
    """True when MedAgentSeg must not write into `segment`: accepted here, or marked Completed in Slicer."""
    value = vtk.reference("")
    if segment.GetTag(TAG_PREFIX + "Locked", value) and str(value) == "true":
        return True
    status = vtk.reference("")
    if segment.GetTag("Segmentation.Status", status) and str(status).lower() == "completed":
        return True
    return False
