"""Everything MedAgentSeg writes into MRML, with no Qt and no Slicer application.

Imports only MRML / VTK classes (the ``slicer`` namespace as given by Slicer or by the PyPI package
``slicer-core``), numpy and MedAgentSegLib, so pytest can drive it against a real MRML scene.

- `check_volume`, `volume_array_kji`, `volume_ijk_to_ras`: input volume checks and access (KJI arrays).
- `SegmentSliceWriter`: reads and writes one slice of a segment through the Segment Editor's own logic
  (``vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap``), so the editor's masking and overwrite settings
  apply exactly as for a paint stroke, and restores a slice of every segment bit-exactly for undo.
- `PromptNodes`: the box (``vtkMRMLMarkupsROINode``) and the clicks (two ``vtkMRMLMarkupsFiducialNode``:
  positive green "+n", negative red "-n") of one session, to and from `Prompts` in slice pixels.
- `TrajectoryRecorder`: one ``vtkMRMLSequenceNode`` per recorded node (mask, box, positive and negative
  clicks) synchronised by a ``vtkMRMLSequenceBrowserNode``: one item per turn, scrubbed in Sequences.
- `SliceReviewRecorder`: the same for a 3D propagation: one item per propagated slice (its mask and box).
- `view_slice`: the IJK axis and slice index a slice view shows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from MedAgentSegLib.engines.base import Prompts

from .geometry import SliceGeometry

__all__ = [
    "MRMLInputError", "ensure_scene_logics", "check_volume", "volume_array_kji", "volume_ijk_to_ras",
    "slice_geometry", "SegmentSliceWriter", "PromptNodes", "TrajectoryRecorder", "POSITIVE_COLOR",
    "NEGATIVE_COLOR", "BOX_COLOR", "TAG_PREFIX", "is_segment_locked", "vtk_matrix", "SliceReviewRecorder",
    "segment_kji", "slice_image", "view_slice", "set_roi_box", "world_to_node", "node_to_world", "check_same_transform",
]

POSITIVE_COLOR = (0.10, 0.85, 0.20)
NEGATIVE_COLOR = (0.95, 0.15, 0.15)
BOX_COLOR = (1.00, 0.80, 0.10)
TAG_PREFIX = "MedAgentSeg."
EDITOR_NODE_TAG = "MedAgentSegPrivate"
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
        for browser in _nodes_by_class(scene, "vtkMRMLSequenceBrowserNode"):
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


def _nodes_by_class(scene: Any, class_name: str) -> list[Any]:
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


# -- segment slices ---------------------------------------------------------------------------------------
def slice_image(mask_hw: np.ndarray, geom: SliceGeometry) -> Any:
    """(H, W) mask -> a one-slice vtkOrientedImageData (uint8 0/1) on the volume grid at the slice of `geom`."""
    img = slicer.vtkOrientedImageData()
    img.SetExtent(*geom.extent)
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    slab = np.ascontiguousarray(geom.slab_kji(np.asarray(mask_hw).astype(np.uint8)))
    img.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(slab.ravel(), deep=True))
    img.SetImageToWorldMatrix(vtk_matrix(geom.ijk_to_ras))
    img.Modified()
    return img


class SegmentSliceWriter:
    """Reads and writes one slice of segments of `segmentation_node`, on the geometry of `volume_node`.

    Writes go through a private ``vtkMRMLSegmentEditorNode`` (hidden, never saved) whose masking and
    overwrite settings are copied from the Segment Editor's node in the scene before every write, so the
    agent obeys exactly what the user set there. With no Segment Editor node in the scene the defaults are
    "edit everywhere" and "overwrite none" (never change another segment).
    """

    def __init__(self, scene: Any, segmentation_node: Any, volume_node: Any):
        self.scene = scene
        self.segmentation_node = segmentation_node
        self.volume_node = volume_node
        check_same_transform(segmentation_node, volume_node)
        self.editor_node = self._private_editor_node(scene)
        self.editor_logic = slicer.vtkSlicerSegmentEditorLogic()
        self.editor_logic.SetMRMLScene(scene)
        self.editor_logic.SetSegmentEditorNode(self.editor_node)
        self.ensure_geometry()
        self.editor_logic.SetSegmentationNode(segmentation_node)
        self.editor_logic.SetSourceVolumeNode(volume_node)
        if not self.editor_logic.UpdateReferenceGeometryImage():
            raise MRMLInputError(f"Segmentation '{segmentation_node.GetName()}' has no usable geometry; "
                                 "create a new segmentation node and try again.")

    @staticmethod
    def _private_editor_node(scene: Any) -> Any:
        for node in _nodes_by_class(scene, "vtkMRMLSegmentEditorNode"):
            if node.GetSingletonTag() == EDITOR_NODE_TAG:
                return node
        node = slicer.vtkMRMLSegmentEditorNode()
        node.SetSingletonTag(EDITOR_NODE_TAG)
        node.SetName("MedAgentSeg private editor settings")
        node.SetHideFromEditors(True)
        node.SetSaveWithScene(False)
        node.SetOverwriteMode(node.OverwriteNone)
        node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
        scene.AddNode(node)
        return node

    def user_editor_node(self) -> Any | None:
        """The Segment Editor's parameter node the user sees (not our private one), if any."""
        for node in _nodes_by_class(self.scene, "vtkMRMLSegmentEditorNode"):
            if node.GetSingletonTag() != EDITOR_NODE_TAG:
                return node
        return None

    def sync_editor_settings(self) -> dict[str, Any]:
        """Copy mask mode, mask segment, overwrite mode and intensity range from the user's editor node."""
        src, dst = self.user_editor_node(), self.editor_node
        if src is None:
            dst.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
            dst.SetOverwriteMode(dst.OverwriteNone)
            dst.SetSourceVolumeIntensityMask(False)
        else:
            dst.SetMaskMode(src.GetMaskMode())
            dst.SetMaskSegmentID(src.GetMaskSegmentID())
            dst.SetOverwriteMode(src.GetOverwriteMode())
            dst.SetSourceVolumeIntensityMask(src.GetSourceVolumeIntensityMask())
            dst.SetSourceVolumeIntensityMaskRange(*src.GetSourceVolumeIntensityMaskRange())
        return {"mask_mode": dst.GetMaskMode(), "overwrite_mode": dst.GetOverwriteMode(),
                "intensity_mask": bool(dst.GetSourceVolumeIntensityMask())}

    def ensure_geometry(self) -> None:
        """Make the segmentation's labelmap geometry the volume's, or refuse if existing voxels disagree."""
        seg_node, vol = self.segmentation_node, self.volume_node
        ijk_to_ras = volume_ijk_to_ras(vol)
        segmentation = seg_node.GetSegmentation()
        for sid in segmentation.GetSegmentIDs():
            img = slicer.vtkOrientedImageData()
            seg_node.GetBinaryLabelmapRepresentation(sid, img)
            e = img.GetExtent()
            if e[0] > e[1] or e[2] > e[3] or e[4] > e[5]:
                continue
            m = vtk.vtkMatrix4x4()
            img.GetImageToWorldMatrix(m)
            seg_m = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
            if not np.allclose(seg_m, ijk_to_ras, atol=1e-5):
                raise MRMLInputError(
                    f"Segmentation '{seg_node.GetName()}' was drawn on a different voxel grid than volume "
                    f"'{vol.GetName()}'. Choose (or create) a segmentation made on this volume, or resample it "
                    "with Segmentations > 'Specify geometry'.")
        seg_node.SetReferenceImageGeometryParameterFromVolumeNode(vol)
        if not segmentation.GetSourceRepresentationName() == BINARY:
            if segmentation.GetNumberOfSegments() == 0:
                segmentation.SetSourceRepresentationName(BINARY)
            else:
                raise MRMLInputError(f"Segmentation '{seg_node.GetName()}' stores closed surfaces; convert its "
                                     "source representation to binary labelmap (Segmentations module) first.")

    # -- reading ---------------------------------------------------------------------------------------
    def read_slice(self, segment_id: str, geom: SliceGeometry) -> np.ndarray:
        """(H, W) bool: the segment on the slice of `geom` (volume grid)."""
        img = slicer.vtkOrientedImageData()
        self.segmentation_node.GetBinaryLabelmapRepresentation(segment_id, img)
        out = np.zeros((geom.height, geom.width), dtype=bool)
        e = img.GetExtent()
        if e[0] > e[1] or e[2] > e[3] or e[4] > e[5] or img.GetPointData().GetScalars() is None:
            return out
        full = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(
            e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
        se = geom.extent
        lo = [max(e[2 * a], se[2 * a]) for a in range(3)]
        hi = [min(e[2 * a + 1], se[2 * a + 1]) for a in range(3)]
        if any(lo[a] > hi[a] for a in range(3)):
            return out
        block = full[lo[2] - e[4]:hi[2] - e[4] + 1, lo[1] - e[2]:hi[1] - e[2] + 1, lo[0] - e[0]:hi[0] - e[0] + 1] > 0
        slab = np.zeros((se[5] - se[4] + 1, se[3] - se[2] + 1, se[1] - se[0] + 1), dtype=bool)  # KJI of the slice
        slab[lo[2] - se[4]:hi[2] - se[4] + 1, lo[1] - se[2]:hi[1] - se[2] + 1, lo[0] - se[0]:hi[0] - se[0] + 1] = block
        if geom.axis == "K":
            return slab[0, :, :].copy()
        if geom.axis == "J":
            return slab[:, 0, :].copy()
        return slab[:, :, 0].copy()

    def read_all(self, geom: SliceGeometry) -> dict[str, np.ndarray]:
        """Every segment's (H, W) bool slice, keyed by segment ID."""
        return {sid: self.read_slice(sid, geom) for sid in self.segmentation_node.GetSegmentation().GetSegmentIDs()}

    # -- writing ---------------------------------------------------------------------------------------
    def _modify(self, segment_id: str, mask_hw: np.ndarray, geom: SliceGeometry, mode: int, bypass: bool) -> None:
        if not mask_hw.any():
            return
        self.editor_logic.SetCurrentSegmentID(segment_id)
        self.editor_logic.ModifySegmentByLabelmap(self.segmentation_node, segment_id, slice_image(mask_hw, geom),
                                                  mode, geom.extent, False, bypass)

    def write_slice(self, segment_id: str, mask_hw: np.ndarray, geom: SliceGeometry) -> np.ndarray:
        """Make the segment's slice equal `mask_hw` where the Segment Editor's mask allows it.

        Returns the (H, W) bool slice actually stored (masked voxels keep their previous value).
        """
        self.sync_editor_settings()
        self.editor_logic.UpdateReferenceGeometryImage()
        current = self.read_slice(segment_id, geom)
        mask = np.asarray(mask_hw, dtype=bool)
        self._modify(segment_id, mask & ~current, geom, self.editor_logic.ModificationModeAdd, False)
        self._modify(segment_id, current & ~mask, geom, self.editor_logic.ModificationModeRemove, False)
        return self.read_slice(segment_id, geom)

    def add_to_slice(self, segment_id: str, add_hw: np.ndarray, remove_hw: np.ndarray | None, geom: SliceGeometry,
                     current: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Add `add_hw` to the segment's slice and take `remove_hw` (outside `add_hw`) out of it, where the Segment
        Editor's mask allows; every other voxel the segment holds on the slice stays (a 3D propagation never erases
        what the person painted). Other segments change only as the Segment Editor's overwrite setting says.

        current: the segment's slice now, if the caller has just read it. Returns (the slice it aimed for, the
        (H, W) bool slice actually stored).
        """
        self.sync_editor_settings()
        self.editor_logic.UpdateReferenceGeometryImage()
        if current is None:
            current = self.read_slice(segment_id, geom)
        add = np.asarray(add_hw, dtype=bool)
        remove = np.zeros_like(add) if remove_hw is None else np.asarray(remove_hw, dtype=bool)
        target = (current & ~remove) | add
        self._modify(segment_id, target & ~current, geom, self.editor_logic.ModificationModeAdd, False)
        self._modify(segment_id, current & ~target, geom, self.editor_logic.ModificationModeRemove, False)
        return target, self.read_slice(segment_id, geom)

    def restore(self, snapshot: dict[str, np.ndarray], geom: SliceGeometry) -> None:
        """Put every segment in `snapshot` back to its saved slice, bypassing masks and overwriting nothing."""
        saved_overwrite = self.editor_node.GetOverwriteMode()
        self.editor_node.SetOverwriteMode(self.editor_node.OverwriteNone)
        try:
            present = set(self.segmentation_node.GetSegmentation().GetSegmentIDs())
            current = {sid: self.read_slice(sid, geom) for sid in snapshot if sid in present}
            for sid, cur in current.items():  # removals first, so no add ever meets a stale overlap
                self._modify(sid, cur & ~snapshot[sid], geom, self.editor_logic.ModificationModeRemove, True)
            for sid, cur in current.items():
                self._modify(sid, snapshot[sid] & ~cur, geom, self.editor_logic.ModificationModeAdd, True)
        finally:
            self.editor_node.SetOverwriteMode(saved_overwrite)


# -- markups ----------------------------------------------------------------------------------------------
def segment_kji(segmentation: Any, segment_id: str, volume: Any) -> np.ndarray:
    """The segment as a (K, J, I) bool array on the volume's voxel grid (resampled if the editor changed its
    geometry). Both nodes must be under the same transform."""
    check_same_transform(segmentation, volume)
    ni, nj, nk = volume.GetImageData().GetDimensions()
    labelmap = slicer.vtkOrientedImageData()
    segmentation.GetBinaryLabelmapRepresentation(segment_id, labelmap)
    e = labelmap.GetExtent()
    if e[0] > e[1] or e[2] > e[3] or e[4] > e[5] or labelmap.GetPointData().GetScalars() is None:
        return np.zeros((nk, nj, ni), bool)
    ref = slicer.vtkOrientedImageData()
    ref.SetExtent(0, ni - 1, 0, nj - 1, 0, nk - 1)
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    ref.SetImageToWorldMatrix(m)
    out = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(labelmap, ref, out, False, True)
    arr = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars())
    return arr.reshape(nk, nj, ni) > 0


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


# -- trajectory as sequences ------------------------------------------------------------------------------
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
