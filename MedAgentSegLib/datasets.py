"""Reading datasets in the ../shared/data format and listing instances: shared by evaluation and training.

A dataset folder holds `dataset.json` (name, modality, dimension "2D" | "3D", labels {"id": "name"}, cases[]
with {id, image, mask, patient}, paths relative to the folder). An *instance* is one (case, label present in
the case's mask). A 3D case is evaluated on its axial slice (KJI index k) where that label is largest, unless
the caller asks for the whole volume.

Nothing here raises on one bad case: problems are collected as `Skip` records that name the case and say
why, and the caller reports them. Only an unusable dataset (no readable dataset.json) raises `DatasetError`.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["instance_seed", "DatasetError", "Dataset", "Case", "Instance", "Skip", "read_dataset", "list_instances",
           "load_instance", "split_patients", "SPLIT_SEED", "VAL_FRACTION"]

SPLIT_SEED = 2026
VAL_FRACTION = 0.2


class DatasetError(ValueError):
    """The dataset as a whole cannot be used; the message names the file and what to do."""


@dataclass
class Case:
    id: str
    image: Path
    mask: Path
    patient: str


@dataclass
class Dataset:
    """A dataset folder. labels: {int id: name}, background (0) excluded. dimension: "2D" or "3D"."""

    root: Path
    name: str
    key: str
    modality: str
    dimension: str
    labels: dict[int, str]
    cases: list[Case]
    license: str = ""
    source: str = ""
    skipped: list[Skip] = field(default_factory=list)

    @property
    def is_3d(self) -> bool:
        return self.dimension.upper() == "3D"


@dataclass
class Instance:
    """One (case, label). slice_index: axial KJI index k for 3D cases in 2D mode, None otherwise.

    area: target pixels on the evaluated slice (2D) or voxels in the volume (3D mode).
    """

    dataset: str
    case_id: str
    patient: str
    label: int
    label_name: str
    image: str
    mask: str
    is_3d: bool
    slice_index: int | None
    area: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Skip:
    """Something that was not evaluated, and why (one line, names the case)."""

    dataset: str
    case_id: str
    label: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lab = f", label {self.label}" if self.label is not None else ""
        return f"{self.dataset}/{self.case_id}{lab}: {self.reason}"


def read_dataset(root: str | Path) -> Dataset:
    """Parse `root/dataset.json`. Raises DatasetError if it is missing, not JSON or has no usable cases[].

    Cases with missing fields are skipped (recorded in `Dataset.skipped`), not fatal.
    """
    root = Path(root)
    path = root / "dataset.json"
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}; give a folder that holds a dataset.json")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist; a dataset folder needs a dataset.json "
                           "(see ../shared/data/README.md for the format)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not readable JSON ({exc}); fix or regenerate the file") from None
    except RecursionError:
        raise DatasetError(f"{path} is nested too deeply to be a dataset.json; fix or regenerate the file") from None
    except IsADirectoryError:
        raise DatasetError(f"{path} is a folder; a dataset folder needs a dataset.json file") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("cases"), list):
        raise DatasetError(f"{path} has no cases[] list; each case needs id, image, mask, patient")
    try:
        labels = {int(k): str(v) for k, v in (meta.get("labels") or {}).items() if int(k) != 0}
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: labels must map integer ids to names, e.g. {{\"1\": \"liver\"}}") from None
    ds = Dataset(root=root, name=str(meta.get("name", root.name)), key=root.name,
                 modality=str(meta.get("modality", "")), dimension=str(meta.get("dimension", "2D")),
                 labels=labels, cases=[], license=str(meta.get("license", "")), source=str(meta.get("source", "")))
    for i, c in enumerate(meta["cases"]):
        if not isinstance(c, dict) or not all(c.get(k) for k in ("image", "mask")):
            cid = c.get("id", f"#{i}") if isinstance(c, dict) else f"#{i}"
            ds.skipped.append(Skip(ds.key, str(cid), None, "case entry lacks 'image' or 'mask'; fix dataset.json"))
            continue
        cid = str(c.get("id", Path(c["image"]).stem))
        ds.cases.append(Case(cid, root / c["image"], root / c["mask"], str(c.get("patient", cid))))
    if not ds.cases:
        raise DatasetError(f"{path} lists no usable cases")
    return ds


def split_patients(ds: Dataset, seed: int = SPLIT_SEED, val_fraction: float = VAL_FRACTION) -> dict[str, str]:
    """Patient-level split: {patient: "train" | "val"}. Deterministic for a given seed and patient set.

    Patients are sorted, shuffled with numpy's default_rng(seed + crc of the dataset key), and the first
    round(val_fraction * n) (at least 1) go to validation. A dataset with one patient is validation only.
    """
    import zlib

    patients = sorted({c.patient for c in ds.cases})
    if len(patients) <= 1:
        return {p: "val" for p in patients}
    rng = np.random.default_rng(seed + zlib.crc32(ds.key.encode()))
    order = [patients[i] for i in rng.permutation(len(patients))]
    n_val = max(1, int(round(val_fraction * len(patients))))
    val = set(order[:n_val])
    return {p: ("val" if p in val else "train") for p in patients}


def _read_label_map(case: Case, is_3d: bool):
    """(LoadedImage of the image, int label map array on its grid). Raises ImageError/ValueError on problems."""
    from .images import ImageError, load_image

    img = load_image(case.image)
    ref = load_image(case.mask)
    arr = ref.array
    if arr.ndim == 3 and not ref.is_3d:
        arr = arr[..., 0]
    if arr.shape != img.grid_shape:
        raise ImageError(f"mask shape {arr.shape} differs from image grid {img.grid_shape}")
    return img, np.asarray(arr).astype(np.int64)


def list_instances(ds: Dataset, labels: list[str] | None = None, min_area: int = 0, mode: str = "2d",
                   split: str | None = None, limit: int | None = None, seed: int = SPLIT_SEED,
                   progress: Any = None) -> tuple[list[Instance], list[Skip]]:
    """Instances in dataset order (cases in order, labels ascending), and what was skipped with why.

    labels: label names or ids to keep (None = all). min_area: skip targets with fewer pixels (voxels in 3D
    mode). split: "train" | "val" | None (all) by `split_patients(ds, seed)`. limit: stop after N instances.
    """
    skipped = list(ds.skipped)
    wanted: set[int] | None = None
    if labels:
        wanted = set()
        by_name = {v.lower(): k for k, v in ds.labels.items()}
        for lab in labels:
            lab = lab.strip()
            if lab.isdigit() and int(lab) in ds.labels:
                wanted.add(int(lab))
            elif lab.lower() in by_name:
                wanted.add(by_name[lab.lower()])
            else:
                skipped.append(Skip(ds.key, "*", lab, f"label {lab!r} is not in dataset.json "
                                    f"(known: {', '.join(ds.labels.values())})"))
    assign = split_patients(ds, seed) if split else None
    out: list[Instance] = []
    seen: set[int] = set()
    for case in ds.cases:
        if limit is not None and len(out) >= limit:
            break
        if assign is not None and assign.get(case.patient) != split:
            continue
        missing = [str(p) for p in (case.image, case.mask) if not p.is_file()]
        if missing:
            skipped.append(Skip(ds.key, case.id, None, f"file not found: {missing[0]}"))
            continue
        try:
            _, lab = _read_label_map(case, ds.is_3d)
        except (ValueError, OSError, RuntimeError) as exc:
            skipped.append(Skip(ds.key, case.id, None, f"cannot read the case ({exc})"))
            continue
        present = [int(v) for v in np.unique(lab) if v != 0]
        if not present:
            skipped.append(Skip(ds.key, case.id, None, "the mask is empty (no labelled pixel)"))
            continue
        for k in present:
            if k not in ds.labels and ds.labels:
                continue
            if wanted is not None and k not in wanted:
                continue
            seen.add(k)
            m = lab == k
            if ds.is_3d and mode != "3d":
                counts = m.sum(axis=(1, 2))
                sl, area = int(np.argmax(counts)), int(counts.max())
            else:
                sl, area = None, int(m.sum())
            name = ds.labels.get(k, str(k))
            if area < max(min_area, 1):
                if min_area > 0:
                    skipped.append(Skip(ds.key, case.id, name, f"target has {area} px < --min-area {min_area}"))
                continue
            out.append(Instance(ds.key, case.id, case.patient, k, name, str(case.image), str(case.mask),
                                ds.is_3d, sl, area))
            if progress is not None:
                progress(len(out))
            if limit is not None and len(out) >= limit:
                break
    if wanted is not None and limit is None:
        for k in sorted(wanted - seen):
            skipped.append(Skip(ds.key, "*", ds.labels[k], "label is absent from every mask evaluated"))
    return out, skipped


def load_instance(inst: Instance) -> tuple[np.ndarray, np.ndarray]:
    """The engine's view of a 2D instance: ((H, W, 3) uint8 RGB, (H, W) bool reference mask).

    3D: the axial slice `inst.slice_index` (rows = J, cols = I), intensity by `images.to_engine_rgb` with the
    modality guessed from the voxels (HU -> CT abdomen window, else MR percentile stretch). 2D images pass
    through (8-bit gray is replicated to RGB).
    """
    from .images import extract_slice, to_engine_rgb

    case = Case(inst.case_id, Path(inst.image), Path(inst.mask), inst.patient)
    img, lab = _read_label_map(case, inst.is_3d)
    if inst.is_3d:
        if inst.slice_index is None:
            raise ValueError("load_instance gives one slice; use load_volume_instance for --mode 3d")
        plane = extract_slice(img.array, inst.slice_index)
        gt = extract_slice(lab, inst.slice_index) == inst.label
        return to_engine_rgb(plane, img.modality), gt
    return to_engine_rgb(img.array, img.modality), lab == inst.label


def load_volume_instance(inst: Instance):
    """(LoadedImage, (K, J, I) bool reference) for --mode 3d."""
    case = Case(inst.case_id, Path(inst.image), Path(inst.mask), inst.patient)
    img, lab = _read_label_map(case, True)
    return img, lab == inst.label


def instance_seed(seed: int, dataset: str, case_id: str, label: int, slice_index: int | None = None) -> int:
    """Per-instance seed: the same box jitter for every engine and every run with the same --seed."""
    return (seed * 1_000_003 + zlib.crc32(f"{dataset}/{case_id}/{label}/{slice_index}".encode())) % (2 ** 32)
