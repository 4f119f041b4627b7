"""A specialist's mask as the agent's first turn (issue #16): which installed specialists cover a target, and their
mask on the image's grid, or a sentence saying why there is none.

The models run in `specialists.py`; the session records the mask (`Session.add_mask`). This module only decides
what runs and words what went wrong, for the command line and the Slicer chat alike. Specialists are volume models:
they run on 3D images only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .library import Entry, load_library
from .matching import Match

__all__ = ["FirstMask", "Installed", "SpecialistFailed", "NoSpecialist", "NotAVolume", "EmptyStartSlice",
           "SpecialistStart", "installed_specialists", "run_first_mask", "specialist_start", "sitk_volume",
           "ready_entries", "specialists_note"]


class SpecialistFailed(RuntimeError):
    """The installed specialists ran but gave no usable mask; the message names each model and why."""


class NoSpecialist(SpecialistFailed):
    """No installed specialist segments the target; `why`: the entries that cover it but cannot run here ("" if
    none)."""

    def __init__(self, installed: Installed):
        self.installed = installed
        self.why = "; ".join(f"{k}: {v}" for k, v in installed.not_ready.items())
        super().__init__(f"no installed specialist segments the {installed.target}"
                         + (f" ({self.why})" if self.why else ""))


class NotAVolume(SpecialistFailed):
    """The image is one slice; the specialists (`installed`) are volume models."""

    def __init__(self, installed: Installed):
        self.installed = installed
        super().__init__(f"{' + '.join(installed.names)} is a volume model and this image is one slice")


class EmptyStartSlice(SpecialistFailed):
    """The specialist's mask is empty on the start slice (`index`, given by the caller)."""

    def __init__(self, model: str, target: str, index: int):
        self.model, self.target, self.index = model, target, index
        super().__init__(f"{model} found no {target} on slice {index}")


@dataclass
class Installed:
    """Specialists for one target: the router's matches that can run here, and the entries that cover the target
    but cannot (entry name -> why not: a placeholder path, a missing package, weights not downloaded)."""

    target: str
    matches: list[Match]
    entries: list[Entry]
    not_ready: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [m.entry for m in self.matches]


@dataclass
class FirstMask:
    """The specialists' combined mask (bool, the image's KJI grid) and what the trajectory records about them."""

    mask: np.ndarray
    record: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)


def installed_specialists(target: str, modality: str | None = None, library: str | os.PathLike | None = None
                          ) -> Installed:
    """The library's specialists that segment `target` (a terminology name, e.g. 'liver') in an image of
    `modality` ('CT', 'MR'; None: any) and can run here. LibraryError (a ValueError) for a broken library."""
    from . import Router
    from .specialists import runner_ready

    entries = load_library(library)
    route = Router(entries).route(f"segment the {target}", modality if modality in ("CT", "MR", "PT") else None)
    by_name = {e.name: e for e in entries}
    ready, not_ready = [], {}
    for m in route.details:
        why = runner_ready(by_name.get(m.entry))
        if why is None:
            ready.append(m)
        else:
            not_ready[m.entry] = why
    return Installed(target, ready, entries, not_ready)


def sitk_volume(array_kji: np.ndarray, spacing: tuple[float, ...], origin: tuple[float, ...],
                direction: tuple[float, ...]):
    """A SimpleITK image of a KJI array with its geometry (SimpleITK order, LPS): what the runners read."""
    import SimpleITK as sitk

    arr = np.asarray(array_kji)
    img = sitk.GetImageFromArray(arr.astype(np.float32) if arr.dtype.kind == "f" or arr.dtype == bool else arr)
    img.SetSpacing(tuple(float(v) for v in spacing))
    img.SetOrigin(tuple(float(v) for v in origin))
    img.SetDirection(tuple(float(v) for v in direction))
    return img


def _package_version(runner: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    dist = {"nnunetv2": "nnunetv2", "monai_bundle": "monai", "totalsegmentator": "TotalSegmentator"}.get(runner)
    try:
        return f"{dist} {version(dist)}" if dist else None
    except PackageNotFoundError:
        return None


def _model_record(entry: Entry, match: Match) -> dict[str, Any]:
    r = entry.runner or {}
    out = {"name": entry.name, "licence": str(entry.raw.get("license") or "not stated in the library entry"),
           "runner": r.get("type"), "labels": list(match.ids), "package": _package_version(r.get("type"))}
    if r.get("path"):
        out["path"] = str(r["path"])
    for key in ("task", "fold", "checkpoint"):
        if key in r:
            out[key] = r[key]
    return out


def run_first_mask(image: Any, installed: Installed, device: str = "cpu") -> FirstMask:
    """Run the installed specialists on a 3D SimpleITK image (their rank-weighted ensemble when several) and return
    the mask with its record; SpecialistFailed (naming each model and why) when none gives a non-empty mask."""
    from .specialists import run_specialists

    if not installed.matches:
        raise SpecialistFailed(f"no installed specialist segments the {installed.target}")
    try:
        res = run_specialists(image, installed.matches, installed.entries, device=device)
    except Exception as exc:  # noqa: BLE001 - any model crash is a failed specialist, said in one line, never a half
        raise SpecialistFailed(f"{' + '.join(installed.names)} failed: {type(exc).__name__}: {exc}") from exc
    if res.mask is None:
        why = "; ".join(f"{k}: {v}" for k, v in res.skipped.items()) or "no model ran"
        raise SpecialistFailed(f"{' + '.join(installed.names)} failed ({why})")
    mask = np.asarray(res.mask).astype(bool)
    if not mask.any():
        raise SpecialistFailed(f"{' + '.join(res.ran)} found no {installed.target} in this image")
    by_name = {e.name: e for e in installed.entries}
    models = [_model_record(by_name[m.entry], m) for m in installed.matches if m.entry in res.ran]
    record = {"model": " + ".join(m["name"] for m in models),
              "licence": "; ".join(dict.fromkeys(m["licence"] for m in models)), "models": models}
    if len(models) > 1:
        record["ensemble"] = "rank-weighted majority vote (routing/specialists.py)"
    return FirstMask(mask, record, dict(res.skipped))


@dataclass
class SpecialistStart:
    """The specialists' mask (found.mask: the volume's KJI grid) and the slice the session starts on."""

    found: FirstMask
    index: int
    installed: Installed


def specialist_start(volume: np.ndarray, geometry: tuple[tuple[float, ...], ...], target: str,
                     modality: str | None = None, library: str | os.PathLike | None = None, device: str = "cpu",
                     axis: int = 0, index: int | None = None, on_run: Any = None) -> SpecialistStart:
    """The specialists' first mask for the command line and the Slicer chat alike: the installed ones for `target`
    run on the KJI `volume` (geometry: spacing, origin, direction in SimpleITK's order, LPS), the mask is checked to
    be on the volume's grid, the start slice along array `axis` is `index` or else the one where the mask is largest,
    and the mask must not be empty there. on_run(installed): called just before the models run (a progress line).

    Raises a SpecialistFailed naming what went wrong (NoSpecialist, NotAVolume, EmptyStartSlice, or a failed or
    misshapen run), which each front end words as its own message; LibraryError for a broken library."""
    installed = installed_specialists(target, modality, library)
    if not installed.matches:
        raise NoSpecialist(installed)
    volume = np.asarray(volume)
    if volume.ndim != 3 or min(volume.shape) < 2:
        raise NotAVolume(installed)
    if on_run is not None:
        on_run(installed)
    found = run_first_mask(sitk_volume(volume, *geometry), installed, device)
    if found.mask.shape != volume.shape:
        raise SpecialistFailed(f"{found.record['model']} gave a {found.mask.shape} mask for a {volume.shape} volume")
    if index is None:
        index = int(np.argmax(found.mask.sum(axis=tuple(i for i in range(3) if i != axis))))
    if not np.take(found.mask, index, axis=axis).any():
        raise EmptyStartSlice(found.record["model"], target, index)
    return SpecialistStart(found, index, installed)


def ready_entries(library: str | os.PathLike | None = None) -> list[Entry]:
    """The library's entries whose specialist can run here (see `specialists.runner_ready`)."""
    from .specialists import runner_ready

    return [e for e in load_library(library) if runner_ready(e) is None]


def specialists_note(entries: list[Entry], flag: str = "--library DIR") -> str:
    """The installed specialists and what they segment, for a message that asks for a prompt."""
    if not entries:
        return f"No specialist model is installed ({flag})"
    parts = [f"{e.name} ({', '.join(lb.name for lb in e.labels if lb.ids != [0])})" for e in entries]
    return f"Installed specialist models: {'; '.join(parts)}"
