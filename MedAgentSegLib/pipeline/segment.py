"""A whole segmentation request, from the image to the written outputs (issue #25): the command line's `segment`,
`demo` and the labeling batch all call `segment(SegmentRequest(...))`.

Bad input raises UsageError (exit 2 on the command line) before any model work or any file is written; NeedsPrompt
when the agent asks for a first prompt instead of guessing (`label` records such a case as "needs prompt").
Outputs are written into a scratch folder and moved into place whole (fileio.staged_folder).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .start import FirstTurn, first_turn

__all__ = ["SegmentRequest", "segment", "UsageError", "NeedsPrompt", "resolve_target", "parse_click",
           "parse_floats", "check_out", "MIN_SIDE"]

MIN_SIDE = 8  # pixels: below this a 2D image (or slice) holds nothing an engine can segment


class UsageError(ValueError):
    """Bad input to a request (on the command line: one line and exit 2)."""


class NeedsPrompt(UsageError):
    """The agent asks for a first prompt instead of guessing (the locator does not know the target, or is unsure):
    exit 2 for `segment`; `label` records the case as "needs prompt", not failed."""


def _warn(text: str) -> None:
    print(f"medagentseg: warning: {text}", file=sys.stderr)


def _progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr)


@dataclass
class SegmentRequest:
    """What to segment and how; the fields are `medagentseg segment`'s options (see its --help). box: "X1,Y1,X2,Y2";
    click: ["X,Y,+", ...] (pixels). warn / progress: where warnings and per-slice progress go (stderr by default)."""

    image: str
    target: str
    out: str
    box: str | None = None
    click: list[str] | None = None
    slice: int | None = None
    axis: str = "axial"
    gt: str | None = None
    label: int | None = None
    modality: str | None = None
    window: Any = None
    engine: str | None = None
    checkpoint: str | None = None
    device: str = "auto"
    encoder: str = "auto"
    policy: str | None = None
    policy_weights: str | None = None
    mllm_path: str | None = None
    click_rule: str = "ritm"
    jitter: float = 0.0
    seed: int = 0
    stop_iou: float | None = None
    max_turns: int = 5
    mode: str = "2d"
    refine_below: float | None = None
    first: str = "auto"
    library: str | None = None
    warn: Callable[[str], None] = field(default=_warn, repr=False)
    progress: Callable[[str], None] = field(default=_progress, repr=False)

    @classmethod
    def from_namespace(cls, ns: Any) -> SegmentRequest:
        """From argparse's namespace (the options it has; defaults for the rest)."""
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)})


def parse_floats(text: str, n: int, what: str) -> list[float]:
    parts = [p for p in text.replace(" ", "").split(",") if p != ""]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) != n:
        raise UsageError(f"{what} {text!r} must be {n} comma-separated numbers")
    if not all(np.isfinite(vals)):
        raise UsageError(f"{what} {text!r} holds a value that is not a finite number (nan or inf); give pixel "
                         "coordinates")
    return vals


def parse_click(text: str) -> tuple[float, float, bool]:
    """'X,Y,+' or 'X,Y,-' (pixels) -> (x, y, positive)."""
    parts = text.replace(" ", "").split(",")
    if len(parts) != 3 or parts[2] not in ("+", "-", "pos", "neg"):
        raise UsageError(f"--click {text!r} must be X,Y,+ or X,Y,- (pixels; + inside the target, - outside)")
    x, y = parse_floats(",".join(parts[:2]), 2, "--click")
    return x, y, parts[2] in ("+", "pos")


def resolve_target(name: str, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Standard segment name, colour and SNOMED CT codes for a target; UsageError with suggestions if unknown."""
    from ..language import parse_request

    warn = warn or _warn

    parsed = parse_request(f"segment {name}")
    if not parsed.targets:
        hint = f" Did you mean: {', '.join(parsed.suggestions)}?" if parsed.suggestions else ""
        raise UsageError(f"unknown target {name!r}.{hint} Use a structure name such as 'liver' or 'left kidney'")
    for warning in parsed.warnings:  # a typo read as another name must be said, not silently segmented
        warn(f"--target: {warning}")
    t = parsed.targets[0]
    info = dict(t.segment)
    info["name"] = t.name
    return info


def slicer_terminology(info: dict[str, Any]) -> dict[str, Any] | None:
    cat, typ = info.get("category"), info.get("type")
    if not cat or not typ:
        return None
    term = {"contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
            "category": [cat["scheme"], cat["code"], cat["meaning"]],
            "type": [typ["scheme"], typ["code"], typ["meaning"]]}
    mod = info.get("modifier")
    if mod:
        term["typeModifier"] = [mod["scheme"], mod["code"], mod["meaning"]]
    return term


def check_out(out: Path) -> None:
    """The output folder must be creatable and writable: found before any model work, not after."""
    import os

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder (it is created if missing)")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--out {out}: {parent} is not writable; choose a folder you can write to")


def segment(args: SegmentRequest) -> dict[str, Any]:
    """Segment one target and write segmentation.seg.nrrd, trajectory.json, turns.png (and propagation.json) into
    args.out; returns a summary dict. Raises on bad input (UsageError, NeedsPrompt) before writing anything."""
    from .. import images, rle
    from ..agent.registry import create_policy, policy_options
    from ..engines import create_engine
    from ..fileio import staged_folder
    from ..metrics import dice
    from ..policies import GT_FREE_POLICIES, OraclePolicy
    from ..render import filmstrip
    from ..session import PROPAGATE, Session

    if args.max_turns < 1:
        raise UsageError(f"--max-turns must be at least 1, got {args.max_turns}")
    info = resolve_target(args.target, args.warn)
    check_out(Path(args.out))
    img = images.load_image(args.image, modality=args.modality)
    if img.metadata.get("non_finite_voxels"):
        args.warn(f"{img.metadata['non_finite_voxels']} NaN/Inf voxel(s) in {args.image} were set to the image's "
                  "lowest value")
    scalar = img.is_3d or img.array.ndim == 2
    values = images.label_values(img.array) if scalar and not args.modality else None  # --modality: it is an image
    if values is not None:
        shown = ", ".join(map(str, values[:6])) + (", ..." if len(values) > 6 else "")
        raise UsageError(f"{args.image} looks like a label map (only the values {shown}), not an image to segment; "
                         "give the image, and the label map as --gt (if it is the image, say so with --modality)")
    if getattr(args, "mode", "2d") == "3d" and not img.is_3d:
        raise UsageError(f"--mode 3d needs a 3D image (NIfTI, NRRD, MHA or a DICOM series); {args.image} is 2D")
    gt3 = images.load_mask(args.gt, img, args.label) if args.gt else None
    if gt3 is not None and not gt3.any():
        raise UsageError(f"the reference mask {args.gt} has no voxel with label {args.label}: the mask is empty; "
                         "pick the right --label")
    index = None
    if img.is_3d:
        n = img.array.shape[images.AXES[args.axis]]
        if args.slice is not None:
            index = args.slice
        elif gt3 is not None:
            index = images.largest_slice(gt3, args.axis)
        else:
            index = n // 2
        plane = images.extract_slice(img.array, index, args.axis)
        gt = images.extract_slice(gt3, index, args.axis) if gt3 is not None else None
        if gt is not None and not gt.any():
            raise UsageError(f"the reference mask is empty on slice {index}; choose another --slice")
    else:
        if args.slice not in (None, 0):
            raise UsageError(f"--slice {args.slice} given for a 2D image; leave it out")
        plane, gt = img.array, gt3
    rgb = images.to_engine_rgb(plane, img.modality, args.window)
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        where = f"slice {index} ({args.axis}) of {args.image}" if img.is_3d else str(args.image)
        raise UsageError(f"{where} is {w}x{h} pixels; at least {MIN_SIDE} on each side are needed to segment "
                         "anything: check the file" + (" and --axis" if img.is_3d else ""))
    box = parse_floats(args.box, 4, "--box") if args.box else None
    clicks = [parse_click(c) for c in args.click or []]
    from ..engines.base import Prompts

    Prompts(tuple(box) if box else None, [(x, y) for x, y, _ in clicks],
            [1 if p else 0 for _, _, p in clicks]).validate(h, w)
    # no prompt and no reference: the locator places the first box, the learned agent goes on (issue #16)
    policy_name = args.policy or ("oracle" if gt is not None else "scripted" if box or clicks else "learned")
    if policy_name == "oracle" and gt is None:
        raise UsageError("--policy oracle needs a reference mask: add --gt MASK (or use --box/--click)")
    if policy_name == "scripted" and box is None and not clicks:
        raise UsageError("nothing to do: give --box X1,Y1,X2,Y2 and/or --click X,Y,+ (or --gt MASK for the oracle)")
    args.policy = policy_name
    options = policy_options(args)  # --policy-weights / --mllm-path with another policy is a mistake: say so
    agent = None
    if policy_name in GT_FREE_POLICIES:
        agent = create_policy(policy_name, **options)  # before any model work: bad weights fail fast
    # issue #16, no prompt: an installed specialist's mask is the first turn, else the locator's box, else it asks
    on_its_own = agent is not None and box is None and not clicks
    if getattr(args, "first", "auto") != "auto" and not on_its_own:
        raise UsageError(f"--first {args.first} chooses who makes the first turn when a GT-free agent starts with no "
                         "--box/--click; leave --first out, or the prompts (and --policy oracle/scripted)")
    engine = create_engine(args.engine, checkpoint=args.checkpoint, device=args.device, encoder=args.encoder)
    first = None
    if on_its_own:  # issue #16: an installed specialist's mask, else the locator's box (and start slice), else ask
        first = _first_turn(args, info, img, engine, index, gt3 is not None)
        if first.slice_index is not None and first.slice_index != index:
            index = first.slice_index
            plane = images.extract_slice(img.array, index, args.axis)
            rgb = images.to_engine_rgb(plane, img.modality, args.window)
            gt = images.extract_slice(gt3, index, args.axis) if gt3 is not None else None
    specialist = first if first is not None and first.kind == "specialist" else None
    meta = {"image": str(Path(args.image).resolve()), "slice": index, "axis": args.axis if img.is_3d else None,
            "modality": img.modality, "window": args.window, "segment": info}
    if specialist is not None:
        meta["specialist"] = specialist.record
    session = Session(engine, rgb, info["name"], max_turns=args.max_turns, metadata=meta)
    if specialist is not None:  # the specialist's mask on the start slice is the agent's first turn; it refines it
        turn = session.add_mask(specialist.mask, specialist.record)
        turn.action = {**turn.action, "reason": f"specialist {specialist.record['model']} (licence: "
                       f"{specialist.record['licence']}) segmented the {info['name']} in the whole image"}
    elif first is not None:  # issue #16: the locator's box is the agent's first turn
        turn = session.add_box(*first.box, source="agent")
        turn.action = {**turn.action, "reason": f"locator: the {info['name']} is most likely here"
                       + (f" (slice {first.slice_index} of the scanned ones)" if img.is_3d and args.slice is None
                          and gt3 is None else ""),
                       "confidence": round(first.confidence, 4)}
    if box is not None:
        session.add_box(*box)
    for x, y, positive in clicks:
        session.add_click(x, y, positive)
    if policy_name == "oracle":
        session.run(OraclePolicy(gt, rule=args.click_rule, jitter=args.jitter, seed=args.seed,
                                 stop_iou=args.stop_iou))
    elif agent is not None:
        session.run(agent)
    elif session.status == "open":
        session.stop()

    mask3 = np.zeros(img.grid_shape, dtype=bool)
    prop = None
    if img.is_3d and args.mode == "3d" and specialist is not None:  # its volume, the refined slice in it
        mask3 = specialist.volume_mask.copy()
        images.insert_slice(mask3, index, args.axis, session.mask)
    elif img.is_3d and args.mode == "3d":
        prop = _propagate(args, engine, img, index, session, agent is not None and policy_name)
        session.add_propagation(prop.summary(), source="agent")  # --mode 3d: the machine's step, as in review
        mask3 = prop.mask
    elif img.is_3d:
        images.insert_slice(mask3, index, args.axis, session.mask)
    else:
        mask3[:] = session.mask
    out = Path(args.out)
    color = tuple(c / 255.0 for c in info.get("color", (0, 200, 50)))
    seg = {"name": info["name"], "mask": mask3, "color": color}
    term = slicer_terminology(info)
    if term:
        seg["terminology"] = term
    # Written into a scratch folder, then moved in: a failure or a kill leaves no partial output (fileio).
    with staged_folder(out) as tmp:
        images.write_segmentation(tmp / "segmentation.seg.nrrd", img, [seg])
        session.save(tmp / "trajectory.json")
        filmstrip(session, tmp / "turns.png", gt=gt)
        if prop is not None:
            (tmp / "propagation.json").write_text(json.dumps(prop.to_dict(), indent=1))
    summary = {"target": info["name"], "engine": engine.name, "device": engine.device, "slice": index,
               "policy": policy_name, "first": "prompt" if first is None else first.kind,
               "specialist": None if specialist is None else specialist.record,
               "reverted": [{"action": r["action"]["name"], "reason": r["action"].get("reason"),
                             **({"dice": round(dice(rle.decode(r["mask_rle"]), gt), 4)} if gt is not None else {})}
                            for r in session.reverted],
               "propagation": None if prop is None else {"slices": prop.slices, "voxels": int(prop.mask.sum()),
                                                         **({"dice_3d": round(dice(prop.mask, gt3), 4)}
                                                            if gt3 is not None else {})},
               "turns": [{"action": t.action["name"], "source": t.source, "score": t.score,
                          "reason": t.action.get("reason"), "confidence": t.action.get("confidence"),
                          **({"dice": round(dice(t.mask, gt), 4)} if gt is not None else {})}
                         for t in session.turns if t.action["name"] != PROPAGATE], "out": str(out)}
    return summary


def _first_turn(args: SegmentRequest, info: dict[str, Any], img: Any, engine: Any, index: int | None,
                has_gt: bool) -> FirstTurn:
    """The first turn (a specialist's mask or the locator's box), or NeedsPrompt / UsageError worded for the
    command line. In 3D with neither --slice nor --gt, the specialist or the locator picks the start slice."""
    from .. import images

    name, choice = info["name"], args.first
    if choice == "specialist" and not img.is_3d:
        raise UsageError(f"--first specialist needs a 3D image (specialists are volume models) and {args.image} "
                         "is 2D: use --first locator, or give --box/--click")
    n = img.array.shape[images.AXES[args.axis]] if img.is_3d else 1

    def plane(k: int) -> np.ndarray:
        if not img.is_3d:
            return images.to_engine_rgb(img.array, img.modality, args.window)
        return images.to_engine_rgb(images.extract_slice(img.array, k, args.axis), img.modality, args.window)

    def running(installed: Any) -> None:
        print(f"medagentseg: the specialist {' + '.join(installed.names)} segments the {name} in the whole image "
              "(its mask is the first turn)", file=sys.stderr)

    first = first_turn(engine, name, plane, n, index, volume=img.array if img.is_3d else None,
                       geometry=(img.spacing, img.origin, img.direction), axis=images.AXES[args.axis],
                       slice_of=lambda a, k: images.extract_slice(a, k, args.axis), modality=img.modality,
                       choice=choice, library=args.library, device=args.device,
                       pick_slice=args.slice is None and not has_gt, on_specialist=running)
    for kind, text in first.notes:
        if kind == "specialist_failed":
            args.warn(f"the specialist {text}; the locator places the first box instead")
        else:
            args.warn(f"{text}; the locator places the first box instead")
    if not first.asks:
        return first
    if first.why == "no_specialist":
        raise NeedsPrompt(f"no installed specialist segments the {name} in {img.modality}"
                          + (f" ({first.detail})" if first.detail else "") + ": point --library DIR at entries "
                          "whose runner.path is a model folder, use --first locator, or give --box/--click")
    if first.why in ("specialist_failed", "library"):
        raise UsageError(f"the specialist {first.detail}: use --first locator, or give --box/--click")
    how = "give --box X1,Y1,X2,Y2 or --click X,Y,+ around it"
    question = {
        "unknown": f"I cannot find {name} on my own yet: {how}.",
        "unsure": f"I am not sure where the {name} is (locator confidence {first.confidence or 0:.2f} < "
                  f"{first.threshold or 0:.2f}): {how}.",
        "no_locator": f"I cannot find the {name} on my own: the locator could not be loaded ({first.detail}); {how}.",
    }.get(first.why, f"I cannot find the {name} on my own here ({first.detail}): {how}.")
    if choice != "locator":  # a person may have a specialist for it: say which are installed
        from ..routing.first_mask import ready_entries, specialists_note

        try:
            note = specialists_note(ready_entries(args.library))
        except ValueError as exc:  # a broken library: the question still stands, said with why
            note = f"The specialist library could not be read ({exc})"
        question = f"{question.rstrip('.')}. {note}"
    raise NeedsPrompt(question)

def _propagate(args: SegmentRequest, engine: Any, img: Any, index: int, session: Any, refine_policy: Any):
    """--mode 3d: propagate the finished slice through the volume (PropagationError if it finds nothing)."""
    from ..agent.registry import create_policy, policy_options
    from ..propagation import PropagationConfig, PropagationError, propagate

    if not session.mask.any():
        raise PropagationError("the mask on the start slice is empty: nothing to propagate; move or redraw the box")
    factory = None
    if refine_policy:
        options = policy_options(args)
        factory = lambda: create_policy(refine_policy, **options)  # noqa: E731
    cfg = PropagationConfig(refine_below=args.refine_below)
    last = session.turns[-1] if session.turns else None
    return propagate(engine, img.array, index, session.mask, None if last is None else last.logits, args.axis,
                     img.modality, args.window, cfg, policy_factory=factory,
                     on_slice=lambda rec, done: args.progress(f"slice {rec.index}: score {rec.score:.2f}, "
                                                              f"{rec.area} px"))


