"""One case of a labeling batch, in the process (or Ray actor) that runs it: `label_case` pre-labels it and returns its
manifest record. Used by `batch` (its process pool) and `ray_runner` (its actors); neither imports the other for it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text
from .manifest import new_record

__all__ = ["LabelError", "label_case", "init_worker", "cores", "RASTER", "VOLUME", "file_suffix", "file_stem",
           "is_dicom_folder"]

RASTER = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


class LabelError(ValueError):
    """The batch as a whole cannot start (input, prompts file or output folder); the message says what to do."""


def file_suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def file_stem(path: Path) -> str:
    suf = file_suffix(path)
    return path.name[:-len(suf)] if suf and path.name.lower().endswith(suf) else path.name


def is_dicom_folder(path: Path) -> bool:
    files = [p for p in path.iterdir() if p.is_file()]
    return any(p.suffix.lower() == ".dcm" for p in files) or any(
        p.suffix == "" and _dicm(p) for p in files[:3])


def _dicm(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _is_volume(image: str) -> bool:
    p = Path(image)
    if p.is_dir():
        return True
    if file_suffix(p) in RASTER:
        return False
    try:
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
        return reader.GetDimension() >= 3 and reader.GetSize()[2] > 1
    except Exception:  # unreadable: segment says why
        return False


def _card_sha(name: str) -> str | None:
    from ..engines.weights import card_sha256

    return card_sha256(WEIGHTS / name)


def _request(task: dict[str, Any], work: Path, volume: bool) -> Any:
    """The pipeline's request for one case: its options, and its prompt from the prompts file if it has one."""
    from ..pipeline import SegmentRequest

    o = task["options"]
    req = SegmentRequest(task["image"], task["target"], str(work), max_turns=int(o.get("max_turns", 5)),
                         device=o.get("device", "auto"), encoder=o.get("encoder", "auto"),
                         mode="3d" if volume else "2d")
    for key in ("engine", "policy", "window", "modality"):
        if o.get(key):
            setattr(req, key, str(o[key]))
    prompt = task.get("prompt") or {}
    if prompt.get("box") is not None:
        req.box = ",".join(str(float(v)) for v in prompt["box"])
    req.click = [f"{float(x)},{float(y)},{'+' if positive in (1, True, '+') else '-'}"
                 for x, y, positive in prompt.get("clicks") or []]
    if prompt.get("slice") is not None:
        req.slice = int(prompt["slice"])
    return req


def label_case(task: dict[str, Any]) -> dict[str, Any]:
    """Pre-label one case (in this process) and return its manifest record; never raises for the case's own
    problems (they become status "failed" with the reason, or "needs prompt"). KeyboardInterrupt passes."""
    from ..pipeline import NeedsPrompt, segment

    cid = task["case_id"]
    cases = Path(task["out"]) / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    work = cases / f".{cid}.work-{uuid.uuid4().hex[:8]}"
    rec = new_record(cid, task["image"], task["target"])
    rec["prompt"] = "prompts file" if task.get("prompt") else "agent"
    t0 = time.perf_counter()
    try:
        volume = _is_volume(task["image"])
        summary = segment(_request(task, work, volume))
        rec.update(status="pre-labelled", turns=len(summary["turns"]), engine=summary["engine"],
                   policy=summary["policy"], mode="3d" if volume else "2d", slice=summary["slice"])
        traj = json.loads((work / "trajectory.json").read_text())
        rec["encoder"] = traj.get("encoder")
        rec["versions"] = {"engine_weights": _card_sha("litemedsam_click.json")
                           if str(summary["engine"]).startswith("litemedsam-click") else None,
                           "policy": _card_sha("policy_controller.json") if summary["policy"] == "learned" else None,
                           "locator": _card_sha("locator.json") if rec["prompt"] == "agent" else None}
        os.replace(work / "segmentation.seg.nrrd", work / "original.seg.nrrd")
        rel = f"cases/{cid}/"
        rec["outputs"].update(original=rel + "original.seg.nrrd", trajectory=rel + "trajectory.json",
                              propagation=rel + "propagation.json" if (work / "propagation.json").exists() else None)
    except NeedsPrompt as exc:
        rec.update(status="needs prompt", reason=" ".join(str(exc).split()))
    except Exception as exc:  # the case's problem (or an engine bug on it): recorded, the batch goes on
        rec.update(status="failed", reason=" ".join(str(exc).split()) or type(exc).__name__)
        if not isinstance(exc, (ValueError, OSError, ImportError, MemoryError)):
            rec["reason"] = f"internal error {type(exc).__name__}: {rec['reason']}"
            traceback.print_exc()
    finally:
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        rec["labelled_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        if rec["status"] == "pre-labelled":
            atomic_write_text(work / "record.json", json.dumps(rec, indent=1))
            final = cases / cid
            if final.exists():  # from an earlier, unrecorded try: replaced whole
                shutil.rmtree(final)
            os.replace(work, final)
    except OSError as exc:
        rec.update(status="failed", reason=f"writing the outputs: {exc}", outputs=new_record(cid, "")["outputs"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rec


def init_worker(threads: int) -> None:
    """One engine per worker process (create_engine caches it); its threads share the machine's cores."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
