"""`medagentseg export DIR --format seg.nrrd|nifti|csv`: each case's final mask (else the agent's original).

- seg.nrrd: the case's Slicer segmentation (terminology as `segment` wrote it), copied to `OUT/<id>.seg.nrrd`.
- nifti: a label map (target = 1) on the image's grid and geometry, `OUT/<id>.nii.gz` (SimpleITK).
- dicom-seg: for cases whose image is a DICOM series folder, a DICOM Segmentation (highdicom, the `label` extra)
  referencing that series, with the SNOMED CT category / type codes of the terminology and the agent as the
  algorithm, `OUT/<id>.dcm`.
- csv: `DIR/summary.csv`, one row per manifest record.
OUT defaults to `DIR/export/<format>`. Files are written atomically; cases without a mask are listed, not fatal.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write_text
from .manifest import read_manifest

__all__ = ["FORMATS", "CSV_COLUMNS", "export", "mask_path", "label_map"]

FORMATS = ("seg.nrrd", "nifti", "dicom-seg", "csv")
CSV_COLUMNS = ("case_id", "status", "reason", "turns", "seconds", "prompt", "engine", "encoder", "policy", "mode",
               "slice", "image", "mask", "reviewer", "reviewed_at", "labelled_at")


def mask_path(folder: Path, rec: dict[str, Any]) -> Path | None:
    """The case's final mask if reviewed, else the agent's original; None when it has neither."""
    outs = rec.get("outputs") or {}
    for key in ("final", "original"):
        if isinstance(outs.get(key), str) and (folder / outs[key]).is_file():
            return folder / outs[key]
    return None


def label_map(seg_path: Path, image_path: str):
    """A SimpleITK label map (uint8, target = 1) of a .seg.nrrd on its image's grid, origin, spacing, direction."""
    import SimpleITK as sitk
    import slicerio

    from .. import images

    seg = slicerio.read_segmentation(str(seg_path))
    vox = np.asarray(seg["voxels"])
    if vox.ndim == 4:  # overlapping segments as layers: any layer
        vox = vox.max(axis=-1) if vox.shape[-1] < vox.shape[0] else vox.max(axis=0)
    mask = (vox > 0).astype(np.uint8)
    img = images.load_image(image_path)
    if img.is_3d:
        out = sitk.GetImageFromArray(mask.transpose(2, 1, 0))  # IJK -> KJI
        out.SetSpacing(img.spacing)
        out.SetOrigin(img.origin)
        out.SetDirection(img.direction)
    else:
        out = sitk.GetImageFromArray(mask[:, :, 0].T)
        out.SetSpacing(tuple(img.spacing[:2]))
        out.SetOrigin(tuple(img.origin[:2]) if len(img.origin) >= 2 else (0.0, 0.0))
        d = img.direction
        out.SetDirection((d[0], d[1], d[3], d[4]) if len(d) == 9 else tuple(d[:4]))
    return out


def dicom_seg(seg_path: Path, series: str | Path, rec: dict[str, Any]):
    """A highdicom Segmentation of a .seg.nrrd made on the DICOM series folder `series`."""
    import highdicom as hd
    import pydicom
    import SimpleITK as sitk
    import slicerio
    from pydicom.sr.codedict import codes

    from .. import __version__ as version

    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(series))
    if not ids:
        raise ValueError(f"no DICOM series in {series}")
    files = reader.GetGDCMSeriesFileNames(str(series), ids[0])  # the slice order `segment` read the volume in
    sources = [pydicom.dcmread(f) for f in files]
    seg = slicerio.read_segmentation(str(seg_path))
    vox = np.asarray(seg["voxels"])
    if vox.ndim == 4:
        vox = vox.max(axis=-1) if vox.shape[-1] < vox.shape[0] else vox.max(axis=0)
    mask = (vox > 0).transpose(2, 1, 0)  # IJK -> (frames, rows, columns)
    if mask.shape[0] != len(sources):
        raise ValueError(f"the mask has {mask.shape[0]} slices but {series} holds {len(sources)} images")
    info = seg["segments"][0]
    term = info.get("terminology") or {}
    if not term.get("category") or not term.get("type"):
        raise ValueError(f"{seg_path} has no terminology codes for {info.get('name')!r}")
    cat, typ = (hd.sr.CodedConcept(value=t[1], scheme_designator=t[0], meaning=t[2])
                for t in (term["category"], term["type"]))
    algorithm = hd.AlgorithmIdentificationSequence(name="MedAgentSeg agent", version=str(version),
                                                   family=codes.cid7162.ArtificialIntelligence)
    kind = "SEMIAUTOMATIC" if rec.get("prompt") == "prompts file" else "AUTOMATIC"
    desc = hd.seg.SegmentDescription(segment_number=1, segment_label=str(info.get("name") or "target")[:64],
                                     segmented_property_category=cat, segmented_property_type=typ,
                                     algorithm_type=hd.seg.SegmentAlgorithmTypeValues[kind],
                                     algorithm_identification=algorithm)
    return hd.seg.Segmentation(source_images=sources, pixel_array=mask.astype(np.uint8),
                               segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[desc],
                               series_instance_uid=hd.UID(), series_number=300, sop_instance_uid=hd.UID(),
                               instance_number=1, manufacturer="MedAgentSeg", manufacturer_model_name="MedAgentSeg",
                               software_versions=str(version), device_serial_number="none",
                               series_description=f"MedAgentSeg {rec.get('status')}"[:64])


def _write_csv(folder: Path, records: dict[str, dict[str, Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for rec in records.values():
        m = mask_path(folder, rec)
        row = {**rec, "mask": str(m.relative_to(folder)) if m else None}
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in CSV_COLUMNS])
    return atomic_write_text(folder / "summary.csv", buf.getvalue())


def export(folder: str | Path, fmt: str, out: str | Path | None = None) -> tuple[list[Path], list[str]]:
    """(files written, cases left out with why)."""
    import SimpleITK as sitk

    folder = Path(folder)
    if fmt not in FORMATS:
        raise ValueError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not (folder / "manifest.jsonl").is_file():
        raise ValueError(f"{folder} has no manifest.jsonl; give the --out folder of `medagentseg label`")
    records = read_manifest(folder)
    if fmt == "csv":
        return [_write_csv(folder, records)], []
    dest = Path(out) if out else folder / "export" / fmt
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    left: list[str] = []
    for cid, rec in records.items():
        src = mask_path(folder, rec)
        if src is None or rec.get("status") == "rejected":
            left.append(f"{cid}: {rec.get('status')}, no mask to export")
            continue
        if fmt == "dicom-seg" and not Path(rec["image"]).is_dir():
            left.append(f"{cid}: its image is not a DICOM series folder, so a DICOM SEG has no series to reference")
            continue
        target = dest / (cid + {"seg.nrrd": ".seg.nrrd", "nifti": ".nii.gz", "dicom-seg": ".dcm"}[fmt])
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp" + (".nii.gz" if fmt == "nifti" else ""))
        try:
            if fmt == "seg.nrrd":
                shutil.copyfile(src, tmp)
            elif fmt == "dicom-seg":
                dicom_seg(src, rec["image"], rec).save_as(str(tmp))
            else:
                sitk.WriteImage(label_map(src, rec["image"]), str(tmp), True)
            os.replace(tmp, target)
            written.append(target)
        except ImportError:
            raise ValueError("--format dicom-seg needs highdicom: pip install -e '.[label]'") from None
        except (OSError, ValueError, RuntimeError, AttributeError, TypeError) as exc:
            left.append(f"{cid}: {' '.join(str(exc).split())}")
        finally:
            tmp.unlink(missing_ok=True)
    return written, left
