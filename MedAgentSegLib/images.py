"""Reading images, choosing a 2D slice, intensity handling, and writing masks back on the source grid.

Frames: a 3D array is KJI (slice, row, column) as SimpleITK's GetArrayFromImage gives. An axial slice k is
`array[k]` with rows = J and columns = I, so a pixel (x, y) of the slice is voxel (i, j, k) = (x, y, k).
2D images are (H, W) or (H, W, 3) with pixel (x, y) = (column, row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LoadedImage", "ImageError", "load_image", "load_mask", "to_engine_rgb", "extract_slice",
           "insert_slice", "largest_slice", "ijk_to_lps", "label_values", "write_segmentation", "CT_WINDOWS", "AXES"]

# (level, width) in HU; "abdomen" is the default soft-tissue window.
CT_WINDOWS = {"abdomen": (40.0, 400.0), "liver": (60.0, 200.0), "lung": (-600.0, 1500.0),
              "bone": (400.0, 1800.0), "brain": (40.0, 80.0), "mediastinum": (50.0, 350.0)}
AXES = {"axial": 0, "coronal": 1, "sagittal": 2}
_2D_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


class ImageError(ValueError):
    """An image could not be read or used; the message names the file and what to do."""


@dataclass
class LoadedImage:
    """array: 2D (H, W) / (H, W, 3), or 3D KJI. spacing/origin/direction: SimpleITK (x, y, z) order, LPS."""

    path: str
    array: np.ndarray
    is_3d: bool
    modality: str
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)
    origin: tuple[float, ...] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """Spatial shape of a mask on this image: (H, W) for 2D, (K, J, I) for 3D."""
        return self.array.shape if self.is_3d else self.array.shape[:2]


def _guess_modality(array: np.ndarray, is_3d: bool, rgb: bool) -> str:
    if rgb:
        return "RGB"
    if is_3d and array.size and float(np.percentile(array, 1)) < -500:
        return "CT"  # air in Hounsfield units
    if is_3d:
        return "MR"
    return "gray"


def load_image(path: str | Path, modality: str | None = None) -> LoadedImage:
    """Read a 2D PNG/JPEG (gray or RGB), or a 3D NIfTI/NRRD/MHA file or DICOM series folder via SimpleITK.

    modality: "CT", "MR", ... to override the guess (DICOM's Modality tag, else HU range).
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image not found: {path}; check the path")
    if path.is_file() and path.suffix.lower() in _2D_SUFFIXES:
        arr, rgb = _read_2d(path)
        return LoadedImage(str(path), arr, False, modality or _guess_modality(arr, False, rgb),
                           spacing=(1.0, 1.0, 1.0))
    import SimpleITK as sitk

    meta: dict[str, Any] = {}
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise ImageError(f"no DICOM series found in folder {path}; point at a folder of .dcm files")
            files = reader.GetGDCMSeriesFileNames(str(path), series[0])
            _check_fits(path, files[0], len(files))
            reader.SetFileNames(files)
            reader.MetaDataDictionaryArrayUpdateOn()
            img = reader.Execute()
            if reader.HasMetaDataKey(0, "0008|0060"):
                meta["Modality"] = reader.GetMetaData(0, "0008|0060").strip()
            meta["series"] = series[0]
        else:
            _check_complete(path)
            _check_fits(path, path)
            img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise ImageError(f"cannot read {path} ({first}); is it a complete NIfTI/NRRD/DICOM image?") from None
    if img.GetNumberOfComponentsPerPixel() > 1:
        raise ImageError(f"{path} has {img.GetNumberOfComponentsPerPixel()} components per voxel (RGB or vector "
                         "volume); convert it to a scalar volume first")
    if img.GetDimension() == 4:
        raise ImageError(f"{path} is 4D; extract one frame (time point) first")
    arr = _finite(_real_valued(sitk.GetArrayFromImage(img), path), path, meta)
    if img.GetDimension() == 2:  # origin and direction kept: the .seg.nrrd must overlay the image
        mod = modality or meta.get("Modality") or _guess_modality(arr, False, False)
        return LoadedImage(str(path), arr, False, mod, spacing=tuple(img.GetSpacing()) + (1.0,),
                           origin=tuple(img.GetOrigin()), direction=tuple(img.GetDirection()), metadata=meta)
    return LoadedImage(str(path), arr, True, modality or meta.get("Modality") or _guess_modality(arr, True, False),
                       spacing=tuple(img.GetSpacing()), origin=tuple(img.GetOrigin()),
                       direction=tuple(img.GetDirection()), metadata=meta)


def available_memory() -> int | None:
    """Bytes of memory free for new allocations (Linux MemAvailable), None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# Reading holds ITK's image and numpy's copy; a float copy for the NaN check or the intensity window may follow.
READ_COPIES = 3


def _check_fits(path: Path, first_file: Path | str, n_files: int = 1) -> None:
    """Refuse, before reading, an image whose voxels would not fit in the memory that is free."""
    import SimpleITK as sitk

    info = sitk.ImageFileReader()
    info.SetFileName(str(first_file))
    try:
        info.ReadImageInformation()
    except RuntimeError:
        return  # not readable as a header: the read that follows says why
    size = list(info.GetSize()) + ([n_files] if n_files > 1 else [])
    item = sitk.GetArrayViewFromImage(sitk.Image([1] * info.GetDimension(), info.GetPixelID())).itemsize
    _check_memory(path, tuple(size[::-1]), item * info.GetNumberOfComponents())


def _read_2d(path: Path) -> tuple[np.ndarray, bool]:
    """(array, is RGB) of a PNG/JPEG/...; ImageError for a broken, mislabelled or too large file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            _check_memory(path, im.size[::-1], len(im.getbands()))
            im.load()
            rgb = im.mode not in ("L", "I", "I;16", "F", "1", "LA")
            arr = np.asarray(im.convert("RGB" if rgb else ("L" if im.mode in ("L", "1", "LA") else "I")))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"cannot read {path}: {exc}; is the file damaged? Crop or downscale the image first") from None
    except (UnidentifiedImageError, OSError) as exc:
        kind = _sniff(path)
        if kind and kind not in ("PNG", "JPEG", "BMP", "TIFF"):
            raise ImageError(f"{path} is a {kind} file named {path.suffix}; give it its real extension") from None
        raise ImageError(f"cannot read {path} as an image ({exc}); is the file complete and a PNG/JPEG?") from None
    if rgb and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        arr, rgb = arr[..., 0], False
    return arr, rgb


def _check_memory(path: Path, shape: tuple[int, ...], item: int) -> None:
    """Refuse an image whose declared size would not fit in the memory that is free (before reading it)."""
    nbytes = int(np.prod(shape, dtype=np.float64)) * item
    free = available_memory()
    if free is not None and nbytes * READ_COPIES > free:
        dims = "x".join(str(v) for v in shape[::-1])
        raise ImageError(f"{path} is {dims} voxels ({nbytes / 2 ** 30:.1f} GiB as stored); reading it needs about "
                         f"{nbytes * READ_COPIES / 2 ** 30:.1f} GiB but {free / 2 ** 30:.1f} GiB of memory is free. "
                         "Crop it to the region of interest or resample it to a coarser grid first (Slicer's Crop "
                         "Volume, or SimpleITK), or free memory")


_MAGIC = [(0, b"\x89PNG", "PNG"), (0, b"\xff\xd8\xff", "JPEG"), (0, b"NRRD", "NRRD"), (0, b"\x1f\x8b", "gzip"),
          (0, b"BM", "BMP"), (0, b"II*\0", "TIFF"), (0, b"MM\0*", "TIFF"), (344, b"n+1\0", "NIfTI"),
          (128, b"DICM", "DICOM"), (0, b"PK\x03\x04", "zip")] + [(0, bytes([0x80, v]), "Python pickle")
                                                                 for v in range(2, 6)]


def _sniff(path: Path) -> str | None:
    """The file's real format from its first bytes (for messages about mislabelled files), or None."""
    try:
        with path.open("rb") as fh:
            head = fh.read(352)
    except OSError:
        return None
    return next((name for at, magic, name in _MAGIC if head[at:at + len(magic)] == magic), None)


def _check_complete(path: Path) -> None:
    """A truncated file must not be read: ITK fills the missing voxels with zeros and says nothing. Checked: .gz
    streams (read through once) and NIfTI payloads (the header's size against the bytes there)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        head, size = _read_gzip(path)
    elif name.endswith(".nii"):
        with path.open("rb") as fh:
            head = fh.read(540)
        size = path.stat().st_size
    else:
        return
    if name.endswith((".nii", ".nii.gz")):
        need = _nifti_bytes(head)
        if need is not None and size < need:
            raise ImageError(f"cannot read {path}: it is truncated ({size} of the {need} bytes its header declares); "
                             "copy or export the file again")


def _read_gzip(path: Path) -> tuple[bytes, int]:
    """(first 540 bytes, length) of a .gz file's content; ImageError if the stream is short, corrupt or not gzip."""
    import gzip
    import zlib

    head, size = b"", 0
    try:
        with gzip.open(path, "rb") as fh:
            while block := fh.read(1 << 22):
                head, size = head or block[:540], size + len(block)
    except (EOFError, OSError, zlib.error) as exc:
        kind = _sniff(path)
        if kind and kind != "gzip":
            raise ImageError(f"{path} is a {kind} file, not gzip-compressed as its name says; give it its real "
                             "extension") from None
        raise ImageError(f"cannot read {path}: it is truncated or corrupt ({exc}); copy or export the file "
                         "again") from None
    return head, size


def _nifti_bytes(head: bytes) -> int | None:
    """Bytes a NIfTI-1/2 file must hold (voxel offset + voxels), from its header; None if it is not one."""
    import struct

    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            dims, bitpix = struct.unpack(order + "8h", head[40:56]), struct.unpack(order + "h", head[72:74])[0]
            offset = struct.unpack(order + "f", head[108:112])[0]
            offset = int(offset) if np.isfinite(offset) else 0
            break
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            dims, bitpix = struct.unpack(order + "8q", head[16:80]), struct.unpack(order + "h", head[14:16])[0]
            offset = struct.unpack(order + "q", head[168:176])[0]
            break
    else:
        return None
    n = dims[0]
    if not 1 <= n <= 7 or bitpix <= 0 or any(d < 1 for d in dims[1:n + 1]):
        return None  # a broken header: the reader says why
    return max(offset, 348) + int(np.prod(dims[1:n + 1], dtype=np.float64)) * bitpix // 8


def _real_valued(arr: np.ndarray, path: Path) -> np.ndarray:
    """Complex voxels (k-space, phase data) cannot be windowed or segmented: refused with what to do."""
    if np.iscomplexobj(arr):
        raise ImageError(f"{path} holds complex values; save the magnitude image (a real-valued volume) and give "
                         "that")
    return arr


def _finite(arr: np.ndarray, path: Path, meta: dict[str, Any]) -> np.ndarray:
    """NaN / Inf policy: an image with no finite voxel is refused; otherwise non-finite voxels take the lowest
    finite value (background) and their count is kept in metadata["non_finite_voxels"] for a warning. One NaN
    must not blank the intensity stretch of a whole slice."""
    if not np.issubdtype(arr.dtype, np.floating):
        return arr
    bad = ~np.isfinite(arr)
    n = int(bad.sum())
    if n == 0:
        return arr
    if n == arr.size:
        raise ImageError(f"{path} has no finite voxel (all NaN or Inf); the file is broken: re-export it")
    arr = arr.copy()
    arr[bad] = arr[~bad].min()
    meta["non_finite_voxels"] = n
    return arr


def load_mask(path: str | Path, image: LoadedImage, label: int | None = None) -> np.ndarray:
    """Read a label map on the same grid as `image`; returns bool (label == `label`, or > 0)."""
    ref = load_image(path)
    arr = ref.array[..., 0] if not ref.is_3d and ref.array.ndim == 3 else ref.array  # an RGB mask image
    if arr.shape != image.grid_shape:
        raise ImageError(f"mask {path} has shape {arr.shape} but the image has {image.grid_shape}; "
                         "give the mask made on this image")
    return arr == label if label is not None else arr > 0


def extract_slice(volume: np.ndarray, index: int, axis: str = "axial") -> np.ndarray:
    """2D slice of a KJI volume. axial -> (J, I); coronal -> (K, I); sagittal -> (K, J)."""
    if axis not in AXES:
        raise ImageError(f"unknown slice axis {axis!r}; use one of {', '.join(AXES)}")
    a = AXES[axis]
    if not 0 <= index < volume.shape[a]:
        raise ImageError(f"slice {index} is outside the volume (0..{volume.shape[a] - 1} along {axis})")
    return np.take(volume, index, axis=a)


def insert_slice(volume: np.ndarray, index: int, axis: str, plane: np.ndarray) -> None:
    """Write a 2D plane (as from extract_slice) into a KJI volume in place."""
    sl: list[Any] = [slice(None)] * 3
    sl[AXES[axis]] = index
    volume[tuple(sl)] = plane


def largest_slice(mask: np.ndarray, axis: str = "axial") -> int:
    """Index of the slice where a KJI mask has the most voxels."""
    a = AXES[axis]
    other = tuple(i for i in range(3) if i != a)
    counts = mask.sum(axis=other)
    if counts.max() == 0:
        raise ImageError("the reference mask is empty: no slice holds the target")
    return int(np.argmax(counts))


def to_engine_rgb(plane: np.ndarray, modality: str = "gray", window: str | tuple[float, float] | None = None
                  ) -> np.ndarray:
    """Intensity handling for the engine: returns (H, W, 3) uint8.

    CT: a HU window (name from CT_WINDOWS or (level, width); default abdomen). MR and other scalar data:
    0.5-99.5 percentile stretch. RGB / 8-bit data: unchanged.
    """
    plane = np.asarray(plane)
    if plane.ndim == 3 and plane.shape[2] in (3, 4):
        return np.ascontiguousarray(plane[..., :3].astype(np.uint8))
    if plane.ndim != 2 or plane.size == 0:
        raise ImageError(f"expected a 2D slice with pixels, got shape {plane.shape}")
    if np.iscomplexobj(plane):
        raise ImageError("the slice holds complex values; give the magnitude image (real values)")
    if plane.dtype == bool:  # a binary image: black and white, not an arithmetic error
        plane = plane.astype(np.uint8) * 255
    if np.issubdtype(plane.dtype, np.floating) and not np.isfinite(plane).all():  # as load_image's NaN policy
        finite = np.isfinite(plane)
        plane = np.where(finite, plane, plane[finite].min() if finite.any() else 0.0)
    mod = (modality or "").upper()
    if isinstance(window, str) and window not in CT_WINDOWS:
        raise ImageError(f"unknown CT window {window!r}; use one of {', '.join(CT_WINDOWS)} (or leave it out)")
    if mod == "CT":
        level, width = CT_WINDOWS[window] if isinstance(window, str) else (window or CT_WINDOWS["abdomen"])
        lo, hi = level - width / 2, level + width / 2
    elif plane.dtype == np.uint8:
        lo, hi = 0.0, 255.0
    else:
        lo, hi = (float(v) for v in np.percentile(plane, [0.5, 99.5]))
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((plane.astype(np.float64) - lo) / (hi - lo), 0, 1) * 255.0
    gray = np.round(out).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def label_values(array: np.ndarray, most: int = 16) -> list[int] | None:
    """The values of a scalar 2D / 3D image that looks like a label map (integers, background 0, 2..`most` distinct
    values, read on a subsample of at most ~1M voxels), else None. A label map given as the image would be segmented
    as if it were one, without a word."""
    if not np.issubdtype(array.dtype, np.integer) or array.ndim not in (2, 3) or array.size == 0:
        return None
    step = max(1, int(round((array.size / 1e6) ** (1 / array.ndim))))
    values = np.unique(array[(slice(None, None, step),) * array.ndim])
    if 2 <= values.size <= most and values[0] == 0 and values[-1] <= 255:  # label ids and 0/255 masks
        return [int(v) for v in values]
    return None


def ijk_to_lps(image: LoadedImage) -> np.ndarray:
    """4x4 matrix from voxel index (i, j, k) to physical LPS millimetres."""
    d = np.asarray(image.direction, dtype=float)
    n = int(round(np.sqrt(d.size)))
    direction = np.eye(3)
    direction[:n, :n] = d.reshape(n, n)
    spacing = np.ones(3)
    spacing[:len(image.spacing)] = image.spacing[:3]
    origin = np.zeros(3)
    origin[:len(image.origin)] = image.origin[:3]
    m = np.eye(4)
    m[:3, :3] = direction * spacing[None, :]
    m[:3, 3] = origin
    return m


def write_segmentation(path: str | Path, image: LoadedImage, segments: list[dict[str, Any]]) -> Path:
    """Write a Slicer .seg.nrrd on the image's grid.

    segments: [{"name": str, "mask": bool array of image.grid_shape, "color": (r, g, b) 0..1, optional
    "terminology": slicerio terminology dict}]. Overlapping segments go to separate layers, as Slicer does.
    """
    import slicerio

    shape = image.grid_shape
    ijk_shape = (shape[1], shape[0], 1) if not image.is_3d else (shape[2], shape[1], shape[0])
    seg = slicerio.create_segmentation(ijk_shape, ijk_to_lps(image))
    for s in segments:
        mask = np.asarray(s["mask"]).astype(bool)
        if mask.shape != shape:
            raise ImageError(f"segment {s['name']!r} mask {mask.shape} does not match the image grid {shape}")
        ijk = mask.T[:, :, None] if not image.is_3d else mask.transpose(2, 1, 0)
        fields = {"id": s.get("id", s["name"].replace(" ", "_")), "name": s["name"],
                  "color": list(s.get("color", (0.0, 0.8, 0.2)))}
        if "terminology" in s:
            fields["terminology"] = s["terminology"]
        slicerio.add_segment(seg, ijk, fields)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.seg.nrrd")
    try:
        slicerio.write_segmentation(str(tmp), seg)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves no half file behind
    return path
