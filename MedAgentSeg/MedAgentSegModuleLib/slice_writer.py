"""Reads and writes one slice of a segment through the Segment Editor's own logic
(``vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap``), so the editor's masking and overwrite settings apply
exactly as for a paint stroke, and restores a slice of every segment bit-exactly for undo."""

from __future__ import annotations

from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .geometry import SliceGeometry
from .mrml_volume import BINARY, MRMLInputError, check_same_transform, nodes_by_class, volume_ijk_to_ras, vtk_matrix

__all__ = ["SegmentSliceWriter", "slice_image", "segment_kji", "EDITOR_NODE_TAG"]

EDITOR_NODE_TAG = "MedAgentSegPrivate"


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
        for node in nodes_by_class(scene, "vtkMRMLSegmentEditorNode"):
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
        for node in nodes_by_class(self.scene, "vtkMRMLSegmentEditorNode"):
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
