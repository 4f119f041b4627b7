"""`medagentseg` command line: segment, demo, replay, and the subcommands of the subpackages (COMMANDS) and of the
browser app (entry point group `medagentseg.commands`).

Bad input ends with one line `medagentseg: error: <what was wrong and what to do>` and exit code 2,
and leaves no partial output files; a crash inside the engine (a bug) keeps its traceback and exits 1.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
import traceback
from importlib.metadata import entry_points
from typing import Any

from .engines.options import add_engine_arguments
from .pipeline.segment import UsageError
from .sample import SAMPLE_IMAGE, SAMPLE_LABELS

__all__ = ["main", "build_parser", "run_segment", "SAMPLE_IMAGE", "SAMPLE_LABELS"]



def run_segment(args: argparse.Namespace) -> dict[str, Any]:
    """`segment`'s work: the pipeline's, on the parsed options."""
    from .pipeline.segment import SegmentRequest, segment

    return segment(SegmentRequest.from_namespace(args))


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
    from .pipeline.segment import SegmentRequest, segment

    if not SAMPLE_IMAGE.is_file():
        raise UsageError(f"the bundled sample is missing ({SAMPLE_IMAGE}); reinstall from a full checkout")
    req = SegmentRequest(str(SAMPLE_IMAGE), "liver", args.out, gt=str(SAMPLE_LABELS), label=1, max_turns=5,
                         engine=args.engine, device=args.device, encoder=args.encoder)
    if args.policy == "oracle":
        req.jitter, req.seed, req.stop_iou = 0.1, 0, 0.92
        print("Demo: LiTS case 117 (CC BY-NC-SA 4.0), liver, oracle policy with a 10%-jittered box and RITM clicks")
    else:  # the person's box (here: the reference's, jittered 10%, seeded), then the GT-free agent on its own
        import numpy as np

        from . import images
        from .oracle import box_from_mask

        img = images.load_image(SAMPLE_IMAGE)
        ref = images.load_mask(SAMPLE_LABELS, img, 1)
        req.slice = images.largest_slice(ref)
        box = box_from_mask(images.extract_slice(ref, req.slice), 0.1, np.random.default_rng(0))
        req.box, req.policy = ",".join(f"{v:.1f}" for v in box), args.policy
        print(f"Demo: LiTS case 117 (CC BY-NC-SA 4.0), liver: a box as a person would draw it (the reference's, "
              f"jittered 10%), then the {args.policy} agent refines on its own (it never sees the reference; "
              "Dice is printed against it)")
    _print_summary(segment(req))
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
    add_engine_arguments(p)
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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is 2 too; keep one line
        self.exit(2, f"{self.prog}: error: {message}\n")


# subcommands in the package's own modules: (module, function adding the subparser)
COMMANDS = (("routing.cli", "add_route_command"), ("evaluation.cli", "add_eval_command"),
            ("training.cli", "add_train_command"), ("evaluation.cli", "add_report_command"),
            ("training.policy_cli", "add_trajectories_command"), ("training.policy_cli", "add_train_policy_command"),
            ("evaluation.agent_report", "add_agent_report_command"),
            ("evaluation.encoder_check", "add_check_encoder_command"), ("evaluation.bench", "add_bench_command"),
            ("training.locator", "add_train_locator_command"), ("labeling.cli", "add_label_command"),
            ("labeling.cli", "add_export_command"), ("labeling.bench", "add_bench_label_command"))


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
    for module, fn in COMMANDS:  # the package's own: a module that fails to import is a bug, said at once
        getattr(importlib.import_module(f"{__package__}.{module}"), fn)(sub)
    for entry in entry_points(group="medagentseg.commands"):  # commands above the library (the browser app)
        entry.load()(sub)
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
