"""Slice geometry: 2D engine pixels <-> volume IJK <-> RAS, for any orientation and spacing.

Frames
- KJI: numpy arrays from Slicer volumes are indexed [k, j, i] (slowest axis first).
- IJK: continuous voxel index, voxel centres at integers (Slicer's convention).
- RAS: patient/world millimetres; ``ras = IJKToRAS @ [i, j, k, 1]``.
- pixel: the 2D image given to the engine, x = column, y = row, pixel centres at integers.

A session works on one slice of the volume, normal to one IJK axis ("K" = the usual axial stack of an
axial acquisition). The 2D image of that slice is a plain numpy view of the KJI array:

=====  =================  ===================
axis   2D image           pixel (x, y) -> IJK
=====  =================  ===================
K      ``arr[k, :, :]``   (x, y, k)
J      ``arr[:, j, :]``   (x, j, y)
I      ``arr[:, :, i]``   (i, x, y)
=====  =================  ===================

This module needs only numpy, so the mapping is testable without Slicer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SLICE_AXES", "SliceGeometry", "GeometryError"]

#: slice normal axis name -> (IJK index of pixel x, IJK index of pixel y, IJK index of the normal)
SLICE_AXES: dict[str, tuple[int, int, int]] = {"K": (0, 1, 2), "J": (0, 2, 1), "I": (1, 2, 0)}


class GeometryError(ValueError):
    """A slice or coordinate does not fit the volume; the message says what to do."""


@dataclass(frozen=True)
class SliceGeometry:
    """One slice of a volume and the transforms between its pixels, IJK and RAS.

    axis: "I", "J" or "K", the IJK axis normal to the slice. index: slice index along that axis.
    dims_ijk: (ni, nj, nk) voxel counts. ijk_to_ras: (4, 4) float64 homogeneous matrix (any direction
    cosines, anisotropic spacing, origin), exactly the volume's IJKToRAS.
    """

    axis: str
    index: int
    dims_ijk: tuple[int, int, int]
    ijk_to_ras: np.ndarray

    def __post_init__(self) -> None:
        if self.axis not in SLICE_AXES:
            raise GeometryError(f"slice axis must be one of I, J, K; got {self.axis!r}")
        m = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if m.shape != (4, 4):
            raise GeometryError(f"IJKToRAS must be a 4x4 matrix, got shape {m.shape}")
        if abs(np.linalg.det(m[:3, :3])) < 1e-12:
            raise GeometryError("the volume's IJKToRAS matrix is singular (zero spacing?); fix the volume geometry")
        object.__setattr__(self, "ijk_to_ras", m)
        n = self.dims_ijk[SLICE_AXES[self.axis][2]]
        if not 0 <= int(self.index) < n:
            raise GeometryError(f"slice {self.index} is outside the volume (0..{n - 1} along {self.axis}); "
                                "move the slice view inside the volume")

    # -- shape ---------------------------------------------------------------------------------------
    @property
    def x_axis(self) -> int:
        return SLICE_AXES[self.axis][0]

    @property
    def y_axis(self) -> int:
        return SLICE_AXES[self.axis][1]

    @property
    def normal_axis(self) -> int:
        return SLICE_AXES[self.axis][2]

    @property
    def width(self) -> int:
        return int(self.dims_ijk[self.x_axis])

    @property
    def height(self) -> int:
        return int(self.dims_ijk[self.y_axis])

    @property
    def extent(self) -> tuple[int, int, int, int, int, int]:
        """VTK extent (i0, i1, j0, j1, k0, k1) of the slice in IJK."""
        ext = [0, self.dims_ijk[0] - 1, 0, self.dims_ijk[1] - 1, 0, self.dims_ijk[2] - 1]
        ext[2 * self.normal_axis] = ext[2 * self.normal_axis + 1] = int(self.index)
        return tuple(ext)  # type: ignore[return-value]

    @property
    def ras_to_ijk(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_ras)

    # -- arrays --------------------------------------------------------------------------------------
    def extract(self, array_kji: np.ndarray) -> np.ndarray:
        """The (H, W) slice of a (K, J, I) array (a view, not a copy)."""
        if self.axis == "K":
            return array_kji[self.index, :, :]
        if self.axis == "J":
            return array_kji[:, self.index, :]
        return array_kji[:, :, self.index]

    def slab_kji(self, mask_hw: np.ndarray) -> np.ndarray:
        """(H, W) slice -> the matching one-voxel-thick KJI block, in VTK scalar order for `extent`."""
        m = np.asarray(mask_hw)
        if m.shape != (self.height, self.width):
            raise GeometryError(f"mask shape {m.shape} does not match the slice ({self.height}, {self.width})")
        if self.axis == "K":
            return m[None, :, :]
        if self.axis == "J":
            return m[:, None, :]
        return m[:, :, None]

    # -- points --------------------------------------------------------------------------------------
    def pixel_to_ijk(self, x: float, y: float, offset: float = 0.0) -> np.ndarray:
        """Pixel (x, y) on this slice (plus `offset` voxels along the normal) -> (3,) float IJK."""
        ijk = np.zeros(3)
        ijk[self.x_axis], ijk[self.y_axis], ijk[self.normal_axis] = x, y, self.index + offset
        return ijk

    def ijk_to_ras_point(self, ijk: np.ndarray) -> np.ndarray:
        return (self.ijk_to_ras @ np.append(np.asarray(ijk, dtype=np.float64), 1.0))[:3]

    def pixel_to_ras(self, x: float, y: float, offset: float = 0.0) -> np.ndarray:
        """Pixel (x, y) -> (3,) RAS millimetres."""
        return self.ijk_to_ras_point(self.pixel_to_ijk(x, y, offset))

    def ras_to_ijk_point(self, ras: np.ndarray) -> np.ndarray:
        return (self.ras_to_ijk @ np.append(np.asarray(ras, dtype=np.float64), 1.0))[:3]

    def ras_to_pixel(self, ras: np.ndarray) -> tuple[float, float, float]:
        """RAS -> (x, y, distance from the slice in voxels along the normal)."""
        ijk = self.ras_to_ijk_point(ras)
        return float(ijk[self.x_axis]), float(ijk[self.y_axis]), float(ijk[self.normal_axis] - self.index)

    def clamp_pixel(self, x: float, y: float) -> tuple[float, float]:
        return float(min(max(x, 0.0), self.width - 1)), float(min(max(y, 0.0), self.height - 1))

    # -- box -----------------------------------------------------------------------------------------
    def axes_ras(self) -> np.ndarray:
        """(3, 3) columns: unit RAS directions of pixel x, pixel y and the slice normal (right-handed)."""
        cols = []
        for ax in (self.x_axis, self.y_axis, self.normal_axis):
            v = self.ijk_to_ras[:3, ax]
            cols.append(v / np.linalg.norm(v))
        r = np.stack(cols, axis=1)
        if np.linalg.det(r) < 0:  # a reflection (e.g. LPS-stored data): flip the normal, the box is symmetric
            r[:, 2] = -r[:, 2]
        return r

    def spacing(self) -> np.ndarray:
        """(3,) mm per voxel along pixel x, pixel y and the normal."""
        return np.array([np.linalg.norm(self.ijk_to_ras[:3, ax]) for ax in (self.x_axis, self.y_axis,
                                                                                  self.normal_axis)])

    def box_to_roi(self, box: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel box (x1, y1, x2, y2) -> ROI (centre RAS (3,), size mm (3,), axes (3, 3) RAS columns).

        The ROI spans the box between pixel centres in-plane and one voxel along the normal.
        """
        x1, y1, x2, y2 = (float(v) for v in box)
        centre = self.pixel_to_ras((x1 + x2) / 2.0, (y1 + y2) / 2.0)
        sp = self.spacing()
        size = np.array([abs(x2 - x1) * sp[0], abs(y2 - y1) * sp[1], sp[2]])
        return centre, size, self.axes_ras()

    def roi_to_box(self, centre_ras: np.ndarray, size_mm: np.ndarray, axes_ras: np.ndarray
                   ) -> tuple[float, float, float, float]:
        """Inverse of `box_to_roi` for an ROI of any orientation: the pixel bounding box of its corners,
        projected onto the slice and clamped to the image."""
        centre = np.asarray(centre_ras, dtype=np.float64)
        half = np.asarray(size_mm, dtype=np.float64) / 2.0
        axes = np.asarray(axes_ras, dtype=np.float64)
        xs, ys = [], []
        for sx in (-1, 1):
            for sy in (-1, 1):
                for sz in (-1, 1):
                    corner = centre + axes @ (half * np.array([sx, sy, sz]))
                    x, y, _ = self.ras_to_pixel(corner)
                    xs.append(x)
                    ys.append(y)
        x1, y1 = self.clamp_pixel(min(xs), min(ys))
        x2, y2 = self.clamp_pixel(max(xs), max(ys))
        return x1, y1, x2, y2
