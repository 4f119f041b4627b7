"""`medagentseg` command line: segment, demo, replay (+ route, eval, train-engine, report when installed).

Bad input ends with one line `medagentseg: error: <what was wrong and what to do>` and exit code 2,
and leaves no partial output files; a crash inside the engine (a bug) keeps its traceback and exits 1.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "build_parser", "run_segment", "SAMPLE_IMAGE", "SAMPLE_LABELS"]

RESOURCES = Path(__file__).resolve().parent.parent / "Resources"
SAMPLE_IMAGE = RESOURCES / "Samples" / "lits117_liver_ct.nrrd"
SAMPLE_LABELS = RESOURCES / "Samples" / "lits117_liver_ct_labels.nrrd"
MIN_SIDE = 8  # pixels: below this a 2D image (or slice) holds nothing an engine can segment


class UsageError(ValueError):
    """Bad command-line input."""


class NeedsPrompt(UsageError):
    """The agent asks for a first prompt instead of guessing (the locator does not know the target, or is unsure):
    exit 2 for `segment`; `label` records the case as "needs prompt", not failed."""


def _floats(text: str, n: int, what: str) -> list[float]:
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
    x, y = _floats(",".join(parts[:2]), 2, "--click")
    return x, y, parts[2] in ("+", "pos")


def resolve_target(name: str) -> dict[str, Any]:
    """Standard segment name, colour and SNOMED CT codes for a target; UsageError with suggestions if unknown."""
    from .language import parse_request

    parsed = parse_request(f"segment {name}")
    if not parsed.targets:
        hint = f" Did you mean: {', '.join(parsed.suggestions)}?" if parsed.suggestions else ""
        raise UsageError(f"unknown target {name!r}.{hint} Use a structure name such as 'liver' or 'left kidney'")
    for warning in parsed.warnings:  # a typo read as another name must be said, not silently segmented
        print(f"medagentseg: warning: --target: {warning}", file=sys.stderr)
    t = parsed.targets[0]
    info = dict(t.segment)
    info["name"] = t.name
    return info


def _slicer_terminology(info: dict[str, Any]) -> dict[str, Any] | None:
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


def _check_out(out: Path) -> None:
    """The output folder must be creatable and writable: found before any model work, not after."""
    import os

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder (it is created if missing)")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--out {out}: {parent} is not writable; choose a folder you can write to")


def run_segment(args: argparse.Namespace) -> dict[str, Any]:
    """Do the work of `segment`; returns a summary dict. Raises on bad input before writing anything."""
    from . import images, rle
    from .engines import create_engine
    from .fileio import staged_folder
    from .metrics import dice
    from .policies import GT_FREE_POLICIES, OraclePolicy
    from .render import filmstrip
    from .session import Session

    if args.max_turns < 1:
        raise UsageError(f"--max-turns must be at least 1, got {args.max_turns}")
    info = resolve_target(args.target)
    _check_out(Path(args.out))
    img = images.load_image(args.image, modality=args.modality)
    if img.metadata.get("non_finite_voxels"):
        print(f"medagentseg: warning: {img.metadata['non_finite_voxels']} NaN/Inf voxel(s) in {args.image} were set to "
              "the image's lowest value", file=sys.stderr)
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
    box = _floats(args.box, 4, "--box") if args.box else None
    clicks = [parse_click(c) for c in args.click or []]
    from .engines.base import Prompts

    Prompts(tuple(box) if box else None, [(x, y) for x, y, _ in clicks],
            [1 if p else 0 for _, _, p in clicks]).validate(h, w)
    # no prompt and no reference: the locator places the first box, the learned agent goes on (issue #16)
    policy_name = args.policy or ("oracle" if gt is not None else "scripted" if box or clicks else "learned")
    if policy_name == "oracle" and gt is None:
        raise UsageError("--policy oracle needs a reference mask: add --gt MASK (or use --box/--click)")
    if policy_name == "scripted" and box is None and not clicks:
        raise UsageError("nothing to do: give --box X1,Y1,X2,Y2 and/or --click X,Y,+ (or --gt MASK for the oracle)")
    from .evaluation.cli import policy_options

    args.policy = policy_name
    options = policy_options(args)  # --policy-weights / --mllm-path with another policy is a mistake: say so
    agent = located = None
    if policy_name in GT_FREE_POLICIES:
        from .policies import create_policy

        agent = create_policy(policy_name, **options)  # before any model work: bad weights fail fast
    # issue #16, no prompt: an installed specialist's mask is the first turn, else the locator's box, else it asks
    on_its_own = agent is not None and box is None and not clicks
    if getattr(args, "first", "auto") != "auto" and not on_its_own:
        raise UsageError(f"--first {args.first} chooses who makes the first turn when a GT-free agent starts with no "
                         "--box/--click; leave --first out, or the prompts (and --policy oracle/scripted)")
    first = _specialist_first(args, info, img, index, gt3 is not None) if on_its_own else None
    locator = _asking_with_note(args, info, _load_locator, info) if on_its_own and first is None else None

    engine = create_engine(args.engine, checkpoint=args.checkpoint, device=args.device, encoder=args.encoder)
    if first is not None and first[1] != index:  # the specialist's mask chose the start slice
        index = first[1]
        plane = images.extract_slice(img.array, index, args.axis)
        rgb = images.to_engine_rgb(plane, img.modality, args.window)
        gt = images.extract_slice(gt3, index, args.axis) if gt3 is not None else None
    if locator is not None:  # issue #16: the agent's own first box (and start slice), or it asks
        located, index, rgb = _asking_with_note(args, info, _locate_first_box, args, locator, img, engine, index, rgb,
                                                gt3 is not None, info["name"])
    meta = {"image": str(Path(args.image).resolve()), "slice": index, "axis": args.axis if img.is_3d else None,
            "modality": img.modality, "window": args.window, "segment": info}
    if first is not None:
        meta["specialist"] = first[0].record
    session = Session(engine, rgb, info["name"], max_turns=args.max_turns, metadata=meta)
    if first is not None:  # the specialist's mask on the start slice is the agent's first turn; the agent refines it
        turn = session.add_mask(images.extract_slice(first[0].mask, index, args.axis), first[0].record)
        turn.action = {**turn.action, "reason": f"specialist {first[0].record['model']} (licence: "
                       f"{first[0].record['licence']}) segmented the {info['name']} in the whole image"}
    if located is not None:  # issue #16: the locator's box is the agent's first turn
        turn = session.add_box(*located.box, source="agent")
        turn.action = {**turn.action, "reason": f"locator: the {located.concept} is most likely here"
                       + (f" (slice {located.slice} of the scanned ones)" if located.slice is not None else ""),
                       "confidence": round(located.confidence, 4)}
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
    if img.is_3d and args.mode == "3d" and first is not None:  # the specialist's volume, the refined slice in it
        mask3 = first[0].mask.copy()
        images.insert_slice(mask3, index, args.axis, session.mask)
    elif img.is_3d and args.mode == "3d":
        prop = _propagate(args, engine, img, index, session, agent is not None and policy_name)
        mask3 = prop.mask
    elif img.is_3d:
        images.insert_slice(mask3, index, args.axis, session.mask)
    else:
        mask3[:] = session.mask
    out = Path(args.out)
    color = tuple(c / 255.0 for c in info.get("color", (0, 200, 50)))
    seg = {"name": info["name"], "mask": mask3, "color": color}
    term = _slicer_terminology(info)
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
               "first": "specialist" if first is not None else "locator" if located is not None else "prompt",
               "specialist": None if first is None else first[0].record,
               "reverted": [{"action": r["action"]["name"], "reason": r["action"].get("reason"),
                             **({"dice": round(dice(rle.decode(r["mask_rle"]), gt), 4)} if gt is not None else {})}
                            for r in session.reverted],
               "propagation": None if prop is None else {"slices": prop.slices, "voxels": int(prop.mask.sum()),
                                                         **({"dice_3d": round(dice(prop.mask, gt3), 4)}
                                                            if gt3 is not None else {})},
               "turns": [{"action": t.action["name"], "source": t.source, "score": t.score,
                          "reason": t.action.get("reason"), "confidence": t.action.get("confidence"),
                          **({"dice": round(dice(t.mask, gt), 4)} if gt is not None else {})}
                         for t in session.turns], "out": str(out)}
    return summary


def _specialist_first(args: argparse.Namespace, info: dict[str, Any], img: Any, index: int | None, has_gt: bool
                      ) -> tuple[Any, int] | None:
    """(FirstMask, start slice) when an installed specialist segments the target (--first auto|specialist), else None.

    auto: a 2D image, no installed specialist or a failing one (said in one line) leave it to the locator;
    --first specialist makes each of those an error. The start slice: --slice, else the reference's with --gt, else
    the one where the specialist's mask is largest."""
    from . import images
    from .engines.base import resolve_device
    from .routing.first_mask import NoSpecialist, SpecialistFailed, specialist_start

    choice, name = getattr(args, "first", "auto"), info["name"]
    if choice == "locator":
        return None
    if not img.is_3d:
        if choice == "specialist":
            raise UsageError(f"--first specialist needs a 3D image (specialists are volume models) and {args.image} "
                             "is 2D: use --first locator, or give --box/--click")
        return None

    def running(installed: Any) -> None:
        print(f"medagentseg: the specialist {' + '.join(installed.names)} segments the {name} in the whole image "
              "(its mask is the first turn)", file=sys.stderr)

    try:  # installed -> run -> on the image's grid -> start slice -> not empty there: routing/first_mask.py
        start = specialist_start(img.array, (img.spacing, img.origin, img.direction), name, img.modality,
                                 getattr(args, "library", None), resolve_device(args.device),
                                 axis=images.AXES[args.axis], index=None if args.slice is None and not has_gt
                                 else index, on_run=running)
    except NoSpecialist as exc:
        if choice == "specialist":
            raise NeedsPrompt(f"no installed specialist segments the {name} in {img.modality}"
                              + (f" ({exc.why})" if exc.why else "") + ": point --library DIR at entries whose "
                              "runner.path is a model folder, use --first locator, or give --box/--click") from None
        return None
    except SpecialistFailed as exc:
        if choice == "specialist":
            raise UsageError(f"the specialist {exc}: use --first locator, or give --box/--click") from None
        print(f"medagentseg: warning: the specialist {exc}; the locator places the first box instead",
              file=sys.stderr)
        return None
    return start.found, start.index


def _asking_with_note(args: argparse.Namespace, info: dict[str, Any], fn: Any, *fn_args: Any) -> Any:
    """fn(*fn_args), with the installed specialists named when it asks for a prompt (NeedsPrompt)."""
    try:
        return fn(*fn_args)
    except NeedsPrompt as exc:
        from .routing.first_mask import ready_entries, specialists_note

        if getattr(args, "first", "auto") == "locator":
            raise
        try:
            note = specialists_note(ready_entries(getattr(args, "library", None)))
        except ValueError as lib_exc:  # a broken library: the question still stands, said with why
            note = f"The specialist library could not be read ({lib_exc})"
        raise NeedsPrompt(f"{str(exc).rstrip('.')}. {note}") from None


def _load_locator(info: dict[str, Any]) -> Any:
    """The shipped locator if it knows the target (issue #16); else ask for a prompt, naming what it can find."""
    from .agent.locator import load_locator

    locator = load_locator()
    if not locator.knows(info["name"]):
        raise NeedsPrompt(locator.unknown_message(info["name"]))
    return locator


def _locate_first_box(args: argparse.Namespace, locator: Any, img: Any, engine: Any, index: int | None,
                      rgb: np.ndarray, has_gt: bool, concept: str) -> tuple[Any, int | None, np.ndarray]:
    """(Location, slice, engine RGB of that slice): in 3D with neither --slice nor --gt, the locator also picks the
    slice (issue #16). A confidence below the card's threshold asks for a box or a click (UsageError, exit 2)."""
    from . import images

    if img.is_3d and args.slice is None and not has_gt:
        def plane(k: int) -> np.ndarray:
            return images.to_engine_rgb(images.extract_slice(img.array, k, args.axis), img.modality, args.window)

        loc = locator.locate_volume(engine, plane, img.array.shape[images.AXES[args.axis]], concept)
        index, rgb = loc.slice, plane(loc.slice)
    else:
        loc = locator.locate(engine, rgb, concept)
    if locator.asks(loc):
        raise NeedsPrompt(locator.low_confidence_message(loc))
    return loc, index, rgb


def _propagate(args: argparse.Namespace, engine: Any, img: Any, index: int, session: Any, refine_policy: Any):
    """--mode 3d: propagate the finished slice through the volume (PropagationError if it finds nothing)."""
    from .evaluation.cli import policy_options
    from .policies import create_policy
    from .propagation import PropagationConfig, PropagationError, propagate

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
                     on_slice=lambda rec, done: print(f"  slice {rec.index}: score {rec.score:.2f}, {rec.area} px",
                                                      file=sys.stderr))


def _print_summary(s: dict[str, Any]) -> None:
    where = f" (slice {s['slice']})" if s["slice"] is not None else ""
    print(f"{s['target']}{where} with {s['engine']} on {s['device']}")
    for i, t in enumerate(s["turns"], 1):
        extra = f"  Dice {t['dice']:.3f}" if "dice" in t else ""
        score = f"  score {t['score']:.3f}" if t["score"] is not None else ""
        why = f"  - {t['reason']}" if t.get("reason") else ""
        conf = f" (confidence {t['confidence']:.2f})" if t.get("confidence") is not None else ""
        print(f"  turn {i}: {t['action']:<12} by {t['source']:<5}{score}{extra}{why}{conf}")
    if s.get("propagation"):
        p = s["propagation"]
        sl = p["slices"]
        extra = f", Dice {p['dice_3d']:.3f} against --gt" if "dice_3d" in p else ""
        print(f"  propagated to {len(sl)} slices ({sl[0]}..{sl[-1]}), {p['voxels']} voxels{extra}")
    for r in s.get("reverted") or []:
        extra = f" (Dice {r['dice']:.3f})" if "dice" in r else ""
        print(f"  taken back by the agent: {r['action']}{extra} - {r['reason'] or 'no reason given'}; the trajectory "
              "keeps it under 'reverted'")
    print(f"wrote {s['out']}/segmentation.seg.nrrd, trajectory.json, turns.png")


def cmd_segment(args: argparse.Namespace) -> int:
    _print_summary(run_segment(args))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if not SAMPLE_IMAGE.is_file():
        raise UsageError(f"the bundled sample is missing ({SAMPLE_IMAGE}); reinstall from a full checkout")
    argv = ["segment", str(SAMPLE_IMAGE), "--target", "liver", "--gt", str(SAMPLE_LABELS), "--label", "1",
            "--max-turns", "5", "--out", args.out, "--device", args.device, "--encoder", args.encoder]
    argv += ["--engine", args.engine] if args.engine else []
    if args.policy == "oracle":
        argv += ["--jitter", "0.1", "--seed", "0", "--stop-iou", "0.92"]
        print("Demo: LiTS case 117 (CC BY-NC-SA 4.0), liver, oracle policy with a 10%-jittered box and RITM clicks")
    else:  # the person's box (here: the reference's, jittered 10%, seeded), then the GT-free agent on its own
        from . import images
        from .oracle import box_from_mask

        img = images.load_image(SAMPLE_IMAGE)
        ref = images.load_mask(SAMPLE_LABELS, img, 1)
        k = images.largest_slice(ref)
        box = box_from_mask(images.extract_slice(ref, k), 0.1, np.random.default_rng(0))
        argv += ["--slice", str(k), "--box", ",".join(f"{v:.1f}" for v in box), "--policy", args.policy]
        print(f"Demo: LiTS case 117 (CC BY-NC-SA 4.0), liver: a box as a person would draw it (the reference's, "
              f"jittered 10%), then the {args.policy} agent refines on its own (it never sees the reference; "
              "Dice is printed against it)")
    _print_summary(run_segment(build_parser().parse_args(argv)))
    return 0


def _meta_str(meta: dict[str, Any], key: str) -> str | None:
    value = meta.get(key)
    return value if isinstance(value, str) else None


def cmd_replay(args: argparse.Namespace) -> int:
    from .session import trajectory_sessions

    sessions = trajectory_sessions(args.trajectory)
    if not sessions:
        raise UsageError(f"{args.trajectory} holds no session (nothing was segmented before it was saved)")
    for data in sessions:
        _replay_one(data, args)
    return 0


def _replay_one(data: dict[str, Any], args: argparse.Namespace) -> None:
    from . import images
    from .engines import create_engine
    from .engines.base import as_rgb_uint8, image_digest
    from .session import replay

    meta = data.get("metadata", {})
    image_path = args.image or meta.get("image")
    if not image_path or not isinstance(image_path, str):
        raise UsageError("the trajectory does not name its image; pass --image PATH")
    img = images.load_image(image_path, modality=_meta_str(meta, "modality"))
    if img.is_3d and (not isinstance(meta.get("slice"), int) or meta.get("axis") not in images.AXES):
        raise UsageError(f"{image_path} is 3D but the trajectory does not say which slice it was recorded on "
                         "(metadata slice and axis); pass the 2D image it was recorded on with --image")
    plane = images.extract_slice(img.array, meta["slice"], meta["axis"]) if img.is_3d else img.array
    window = meta.get("window")
    if isinstance(window, list) and len(window) == 2:
        window = tuple(window)
    rgb = images.to_engine_rgb(plane, img.modality, window if isinstance(window, (str, tuple)) else None)
    if image_digest(as_rgb_uint8(rgb)) != data["image"]["sha1"]:  # found before any model work
        raise UsageError(f"{image_path} is not the image the trajectory was recorded on (its pixels differ); pass "
                         "the original with --image")
    # The encoder path the recording used: a fast path's embeddings differ slightly from torch fp32's.
    engine = create_engine(args.engine or data.get("engine"), device=args.device,
                           encoder=_meta_str(data, "encoder") or "torch")
    session = replay(data, engine, rgb)
    where = f" on {meta['axis']} slice {meta['slice']}" if img.is_3d else ""
    print(f"replayed {len(session.turns)} turns of {data['target']!r}{where}: every mask identical to the recording")


def _add_segment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="2D PNG/JPEG, or 3D NIfTI/NRRD file or DICOM folder")
    p.add_argument("--target", required=True, help="structure to segment, e.g. liver, 'left kidney', polyp")
    p.add_argument("--box", help="X1,Y1,X2,Y2 in pixels (x = column, y = row of the 2D image or slice)")
    p.add_argument("--click", action="append", metavar="X,Y,+|-", help="a click in pixels; repeat for more")
    p.add_argument("--slice", type=int, help="slice index of a 3D image (default: largest in --gt; with no prompt, "
                                             "the locator's; else the middle one)")
    p.add_argument("--axis", default="axial", choices=["axial", "coronal", "sagittal"])
    p.add_argument("--gt", help="reference label map on the same grid (enables the oracle policy)")
    p.add_argument("--label", type=int, default=None, help="label value of the target in --gt (default: any > 0)")
    p.add_argument("--modality", help="override the modality guess (CT, MR, ...)")
    p.add_argument("--window", default=None, help="CT window name: abdomen, liver, lung, bone, brain, mediastinum")
    _add_engine_args(p)
    p.add_argument("--policy", choices=["oracle", "scripted", "heuristic", "learned", "mllm"],
                   help="default: oracle with --gt; scripted (your prompts only) with --box/--click; else learned "
                        "from the locator's first box. heuristic, learned and mllm are GT-free agents that refine "
                        "after your --box, or after the locator's (which asks for a box when unsure)")
    p.add_argument("--policy-weights", default=None, metavar="PT",
                   help="with --policy learned: a controller that train-policy wrote instead of the shipped one")
    p.add_argument("--mllm-path", default=None, help="with --policy mllm: a local Qwen2-VL / Qwen2.5-VL folder")
    p.add_argument("--click-rule", default="ritm", choices=["ritm", "cvpr25"])
    p.add_argument("--jitter", type=float, default=0.0, help="oracle box jitter, fraction of box size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-iou", type=float, default=None, help="oracle stops once IoU reaches this")
    p.add_argument("--max-turns", type=int, default=5)
    p.add_argument("--mode", choices=["2d", "3d"], default="2d",
                   help="3d: after the start slice, propagate the structure through the volume (3D images; with a "
                        "specialist first: its volume, see --first)")
    p.add_argument("--refine-below", type=float, default=None,
                   help="--mode 3d with a GT-free --policy: slices scoring below this get agent refinement turns")
    p.add_argument("--first", choices=["auto", "specialist", "locator"], default="auto",
                   help="with no --box/--click, who makes the first turn before the GT-free agent refines: "
                        "specialist = an installed specialist model of the library (nnU-Net v2 folder, MONAI bundle, "
                        "TotalSegmentator; 3D images) segments the whole volume, its mask on the start slice is turn "
                        "1 (start slice: --slice, else where its mask is largest); locator = the locator's box; "
                        "auto (default) = the specialist when one is installed for the target, else the locator "
                        "(also when the specialist fails: said in one line). With --mode 3d and a specialist, the "
                        "output is the specialist's volume with the refined start slice in it (no propagation)")
    p.add_argument("--library", default=None, metavar="DIR",
                   help="folder of model-library JSON entries (default $MEDAGENTSEG_LIBRARY, else Resources/Models); "
                        "an entry's runner.path names your nnU-Net v2 model folder or MONAI bundle")
    p.add_argument("--out", required=True, help="output folder")


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    from .engines import DEFAULT_ENGINE

    p.add_argument("--engine", default=None, help=f"litemedsam-click, litemedsam, sam_vit_b|l|h (default "
                                                  f"{DEFAULT_ENGINE})")
    p.add_argument("--checkpoint", default=None, help="weights path (required for SAM engines)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, ...")
    p.add_argument("--encoder", default="auto", help="LiteMedSAM image encoder: auto (the fastest path checked on "
                   "validation data; see check-encoder), torch, openvino-f32, openvino-bf16")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is 2 too; keep one line
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="medagentseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("segment", help="segment one target on a 2D image or a slice of a 3D image")
    _add_segment_args(p)
    p.set_defaults(func=cmd_segment)
    p = sub.add_parser("demo", help="run the agent on the bundled sample case (no data, no GPU needed)")
    p.add_argument("--out", default="medagentseg-demo")
    p.add_argument("--policy", choices=["learned", "heuristic", "oracle"], default="learned",
                   help="learned (default) / heuristic: GT-free agent after a box; oracle: the simulated expert")
    p.add_argument("--engine", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--encoder", default="auto", help="auto (the checked fast path), torch, openvino-f32, openvino-bf16")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("replay", help="re-run a trajectory.json and check every mask is reproduced exactly")
    p.add_argument("trajectory")
    p.add_argument("--image", help="image path if it moved since recording")
    p.add_argument("--engine", default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_replay)
    for module, fn in (("routing.cli", "add_route_command"), ("evaluation.cli", "add_eval_command"),
                       ("training.cli", "add_train_command"), ("evaluation.cli", "add_report_command"),
                       ("agent.cli", "add_trajectories_command"), ("agent.cli", "add_train_policy_command"),
                       ("evaluation.agent_report", "add_agent_report_command"),
                       ("evaluation.encoder_check", "add_check_encoder_command"),
                       ("web_cli", "add_web_command"),
                       ("evaluation.bench", "add_bench_command"),
                       ("training.locator", "add_train_locator_command"),
                       ("labeling.cli", "add_label_command"), ("labeling.cli", "add_export_command"),
                       ("labeling.bench", "add_bench_label_command")):
        try:
            mod = __import__(f"{__package__}.{module}", fromlist=[fn])
        except ImportError:
            continue
        if hasattr(mod, fn):
            getattr(mod, fn)(sub)
    return parser


def _negative_values(argv: list[str]) -> list[str]:
    """`--box -5,3,...`: argparse takes a value starting with '-' for an option; join it as `--box=-5,3,...`."""
    out: list[str] = []
    for a in argv:
        if out and out[-1] in ("--box", "--click") and a[:1] == "-" and a[1:2].isdigit():
            out[-1] = f"{out[-1]}={a}"
        else:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    from .actions import ToolCallError
    from .engines.base import EngineError
    from .images import ImageError
    from .session import SessionError

    args = build_parser().parse_args(_negative_values(sys.argv[1:] if argv is None else list(argv)))
    try:
        return int(args.func(args) or 0)
    except (UsageError, ImageError, EngineError, SessionError, ToolCallError, ValueError, ImportError) as exc:
        _error(str(exc))
    except OSError as exc:  # permissions, a full disk, a path that is a file: what and where, not a traceback
        where = exc.filename or "file"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            _error(f"the disk is full ({exc.strerror}) while writing {where}; free some space or write elsewhere. "
                   "Outputs are moved into place only when complete, so none were left half-written")
        else:
            _error(f"{exc.strerror or exc} ({where}); check the path and its permissions")
    except MemoryError:
        _error("out of memory; close other programs, crop the image to the region of interest, or use a machine "
               "with more memory")
    except KeyboardInterrupt:
        print("medagentseg: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug, not the user's input: keep the traceback for the report
        traceback.print_exc()
        print("medagentseg: internal error (traceback above): please report it; outputs are moved into place only "
              "when complete, so none were left half-written", file=sys.stderr)
        return 1
    return 2


def _error(message: str) -> None:
    """One line on stderr: what was wrong and what to do (the exit code is 2)."""
    print(f"medagentseg: error: {' '.join(message.split())}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
