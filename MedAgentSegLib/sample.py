"""The bundled sample case (LiTS 117, CC BY-NC-SA 4.0): what `demo`, `bench` and the front ends open with no data."""

from pathlib import Path

__all__ = ["RESOURCES", "SAMPLE_IMAGE", "SAMPLE_LABELS"]

RESOURCES = Path(__file__).resolve().parent.parent / "Resources"
SAMPLE_IMAGE = RESOURCES / "Samples" / "lits117_liver_ct.nrrd"
SAMPLE_LABELS = RESOURCES / "Samples" / "lits117_liver_ct_labels.nrrd"
