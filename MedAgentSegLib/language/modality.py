"""Imaging modality and MR sequence from free text ("brain MRI using T2 FLAIR", "MR or CT", "non_contrast_CT")."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["ModalitySpec", "parse_modality", "modality_from_metadata"]

_BASE = [
    (r"\bpet\s*(?:/|-|and|\+)?\s*ct\b", ("PET", "CT")),
    (r"\bpet\s*(?:/|-|and|\+)?\s*mri?\b", ("PET", "MR")),
    (r"\b(?:ct|cta|ctpa|cect|ncct|hrct|cbct|computed tomography|ct\w*angiograph\w*|contrast[_ ]ct|"
     r"non[_ ]?contrast[_ ]ct)\b", ("CT",)),
    (r"\b(?:mri?|mr\w*|magnetic resonance|nmr|cine|cmr|t1\w*|t2\w*|flair|adc|dwi|diffusion|swi|dce)\b", ("MR",)),
    (r"\b(?:pet|fdg|psma)\b", ("PET",)),
    (r"\b(?:ultrasound|ultrasonography|sonography|echocardiograph\w*|abus)\b", ("US",)),
    (r"\b(?:x[- ]?ray|radiograph\w*|cxr)\b", ("XR",)),
    (r"\b(?:endoscop\w*|colonoscop\w*)\b", ("ENDOSCOPY",)),
]
# MR sequences, checked in this order (T2 FLAIR is FLAIR, T1 with gadolinium is T1CE)
_SEQ = [
    ("T1CE", r"\b(?:t1\s*ce|t1\s*c|t1\s*gd|t1\s*post|t1\s*contrast|ce\s*t1|t1[\w ]*(?:gadolinium|contrast)|"
             r"(?:gadolinium|contrast)[\w ]*t1)\b"),
    ("FLAIR", r"\b(?:t2\s*)?flair\b"),
    ("T1", r"\bt1\s*(?:w|weighted|wi)?\b"),
    ("T2", r"\bt2\s*(?:w|weighted|wi)?\b"),
    ("ADC", r"\badc\b"),
    ("DWI", r"\b(?:dwi|diffusion)\b"),
    ("CINE", r"\bcine\b"),
]


@dataclass
class ModalitySpec:
    """Modalities named in a text. ``alternatives``: one set of base modalities per alternative.

    A query "PET/CT" gives ``[{"PET", "CT"}]`` (both needed); an entry channel "MR or CT" gives
    ``[{"MR"}, {"CT"}]``. ``sequences``: MR sequences named (T1, T1CE, T2, FLAIR, ADC, DWI, CINE).
    """

    alternatives: list[set[str]] = field(default_factory=list)
    sequences: set[str] = field(default_factory=set)
    text: str = ""

    @property
    def bases(self) -> set[str]:
        """Every base modality named."""
        return set().union(*self.alternatives) if self.alternatives else set()

    def label(self) -> str | None:
        """Short display form: "CT", "MR (T1, FLAIR)", "PET+CT"; None when nothing was named."""
        if not self.alternatives:
            return None
        alt = " or ".join("+".join(sorted(a, key=lambda m: ("PET", "CT", "MR").index(m)
                                          if m in ("PET", "CT", "MR") else 9)) for a in self.alternatives)
        if self.sequences:
            alt += " (" + ", ".join(sorted(self.sequences)) + ")"
        return alt


def _clean(text: str) -> str:
    return re.sub(r"[_]", " ", text.lower())


def parse_modality(text: str, split_or: bool = False) -> ModalitySpec:
    """Modalities and MR sequences in ``text``.

    ``split_or=True`` (library entries) reads "MR or CT" as alternatives; for requests every named base
    modality is required together (a "PET/CT" request needs both channels).
    """
    t = _clean(text)
    if re.search(r"vertebra|thoracic|spine|\brib", t) and not re.search(r"weighted|\bmri?\b|flair|magnetic", t):
        t = re.sub(r"\bt\s*\d{1,2}\b", " ", t)  # T1..T12 are vertebra levels here, not MR sequences
    parts = re.split(r"\bor\b", t) if split_or else [t]
    spec = ModalitySpec(text=text)
    for part in parts:
        found: set[str] = set()
        rest = part
        for pat, mods in _BASE:
            if re.search(pat, rest):
                found.update(mods)
                rest = re.sub(pat, " ", rest)
        for name, pat in _SEQ:
            if re.search(pat, part):
                spec.sequences.add(name)
                part = re.sub(pat, " ", part)
        if found:
            spec.alternatives.append(found)
    if not split_or and spec.alternatives:
        spec.alternatives = [set().union(*spec.alternatives)]
    if spec.sequences and not spec.bases:
        spec.alternatives = [{"MR"}]
    return spec


_DICOM_MAP = {"CT": "CT", "MR": "MR", "PT": "PET", "US": "US", "CR": "XR", "DX": "XR", "ES": "ENDOSCOPY"}


def modality_from_metadata(meta: dict | str | None) -> str | None:
    """Base modality from image metadata: a DICOM Modality value ("CT", "MR", "PT"), or a dict holding one
    under ``Modality``/``modality``/``0008|0060``; None when it cannot be told."""
    if meta is None:
        return None
    if isinstance(meta, dict):
        for key in ("Modality", "modality", "0008|0060", "00080060"):
            if meta.get(key):
                meta = str(meta[key])
                break
        else:
            return None
    value = str(meta).strip().upper()
    if value in _DICOM_MAP:
        return _DICOM_MAP[value]
    spec = parse_modality(value)
    return next(iter(spec.bases)) if len(spec.bases) == 1 else None
