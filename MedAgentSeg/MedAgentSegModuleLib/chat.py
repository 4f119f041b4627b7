"""From a parsed chat request to what the logic needs: one segment per structure, its colour and terminology.

No Qt, no MRML: the Slicer module and the browser app read requests through `AgentSegLogic.request`, which uses
these. A paired structure asked for in the plural ("the kidneys") becomes two segments, left and right; several
structures ("liver and spleen") become one segment each, never one segment named "liver + spleen".
"""

from __future__ import annotations

from typing import Any

__all__ = ["segment_targets", "terminology_entry", "request_modality", "SLICER_ANATOMY_CONTEXT"]

SLICER_ANATOMY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def segment_targets(parsed: Any, terminology: Any = None) -> list[dict[str, Any]]:
    """One segment description per structure of a parsed request: {"name", "color" (0..1 RGB), "terminology"
    (Slicer's terminology entry string or None), "concept"}."""
    out = []
    for target in parsed.targets:
        for info in _sides(target, terminology):
            out.append({"name": info["name"], "concept": info.get("concept"),
                        "color": tuple(c / 255.0 for c in info.get("color") or (128, 128, 128)),
                        "terminology": terminology_entry(info)})
    return out


def _sides(target: Any, terminology: Any) -> list[dict[str, Any]]:
    """The target's segment info, or left and right ones for a paired structure named in the plural."""
    info = dict(target.segment or {})
    info["name"] = target.name
    if target.laterality or not target.plural or target.site:
        return [info]
    if terminology is None:
        from MedAgentSegLib.language.terminology import default_terminology

        terminology = default_terminology()
    concept = terminology.concepts.get(target.concept)
    if concept is None or not concept.paired:
        return [info]
    return [concept.segment_info(side, terminology.modifiers) for side in ("L", "R")]


def _code(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "^^"
    return f"{entry.get('scheme', '')}^{entry.get('code', '')}^{entry.get('meaning', '')}"


def terminology_entry(info: dict[str, Any]) -> str | None:
    """Slicer's terminology entry string (vtkSegment.SetTerminology) for a segment info with SNOMED CT codes."""
    if not info.get("category") or not info.get("type"):
        return None
    return "~".join([SLICER_ANATOMY_CONTEXT, _code(info["category"]), _code(info["type"]), _code(info.get("modifier")),
                     _ANATOMIC_CONTEXT, "^^", "^^"])


def request_modality(parsed: Any) -> str | None:
    """"CT" or "MR" when the request names it ("on this CT", "T1 MRI"), else None (the logic guesses)."""
    label = (getattr(parsed, "modality", None) or "").upper()
    if label.startswith("CT"):
        return "CT"
    if label.startswith("MR"):
        return "MR"
    return None
