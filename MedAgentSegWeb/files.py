"""Files of the browser app, plain MRML (no trame): uploads in, results out.

`save_results` writes segmentation.seg.nrrd and trajectory.json into a folder; each is written under a temporary
name and moved into place only when complete, so a failure leaves the previous files (or none), never half of one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import slicer

__all__ = ["SEGMENTATION_FILE", "save_results", "safe_upload_name", "SaveError", "OutsideError", "within"]

SEGMENTATION_FILE = "segmentation.seg.nrrd"


class SaveError(RuntimeError):
    """The results cannot be written; the message says where and what to do."""


class OutsideError(ValueError):
    """A path the page sent lies outside the folders this server serves."""


def within(path: str | os.PathLike, roots: list[Path], what: str) -> Path:
    """`path` (from the page) resolved, symlinks and '..' included, if it lies inside one of `roots`; else
    OutsideError. The page is a client: it reads and writes only where the person who started the server said."""
    resolved = Path(path).expanduser().resolve()
    for root in roots:
        if resolved == root.resolve() or root.resolve() in resolved.parents:
            return resolved
    shown = ", ".join(str(r) for r in roots)
    raise OutsideError(f"{what} {path} is outside the folders this server serves ({shown}); choose a path inside "
                       "them, or restart it with --data-dir FOLDER")


def safe_upload_name(name: str) -> str:
    """The browser's file name without any folder part (an upload never writes outside its folder)."""
    base = Path(str(name).replace("\\", "/")).name.strip()
    return base if base and base not in (".", "..") else "upload.nrrd"


def save_results(folder: str | os.PathLike, segmentation_node: Any, logic: Any) -> list[Path]:
    """Write the segmentation (every segment, its colours and terminology) and the trajectory into `folder`."""
    if segmentation_node is None or segmentation_node.GetScene() is None:
        raise SaveError("Nothing to save yet: segment something first (type a request such as 'segment the liver').")
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SaveError(f"Cannot create the folder {folder} ({exc.strerror or exc}); choose a folder you can write "
                        "to.") from None
    seg_path = folder / SEGMENTATION_FILE
    _write_segmentation(segmentation_node, seg_path)
    traj_path = logic.save_trajectory(folder / "trajectory.json")
    return [seg_path, Path(traj_path)]


def _write_segmentation(node: Any, path: Path) -> None:
    tmp = path.with_name("partial-" + path.name)  # keeps the .seg.nrrd ending the writer needs
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(tmp))
    storage.SetUseCompression(True)
    try:
        ok = storage.WriteData(node)
    except Exception as exc:  # noqa: BLE001 - VTK raises little; any failure is reported the same way
        ok, detail = 0, str(exc)
    else:
        detail = "the writer reported a failure"
    if not ok or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise SaveError(f"Could not write {path} ({detail}); check the free space and permissions of {path.parent}.")
    os.replace(tmp, path)
