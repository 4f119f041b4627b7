"""`medagentseg label` and `medagentseg export` (issue #19)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_label_command", "add_export_command"]


def cmd_label(args: argparse.Namespace) -> int:
    from ..pipeline.segment import UsageError, resolve_target
    from .batch import LabelError, read_prompts, run_batch
    from .manifest import ManifestError

    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    workers = args.workers or (0 if args.ray else 1)  # on Ray, by default one actor per CPU of the cluster
    resolve_target(args.target)  # an unknown target is said once, not once per case
    try:
        prompts = read_prompts(args.prompts) if args.prompts else None
        options = {"engine": args.engine, "device": args.device, "encoder": args.encoder, "policy": args.policy,
                   "max_turns": args.max_turns, "window": args.window, "modality": args.modality}
        records = run_batch(args.input, args.target, args.out, prompts, workers, options, args.retry_failed,
                            ray=args.ray)
    except (LabelError, ManifestError) as exc:
        raise UsageError(str(exc)) from None
    counts: dict[str, int] = {}
    for rec in records.values():
        counts[rec["status"]] = counts.get(rec["status"], 0) + 1
    print(f"{len(records)} cases in {args.out}/manifest.jsonl: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..pipeline.segment import UsageError
    from .export import export
    from .manifest import ManifestError

    try:
        written, left = export(args.folder, args.format, args.out)
    except ManifestError as exc:
        raise UsageError(str(exc)) from None
    for line in left:
        print(f"medagentseg export: left out {line}", file=sys.stderr)
    where = written[0] if args.format == "csv" else (args.out or f"{args.folder}/export/{args.format}")
    print(f"exported {len(written)} file(s) to {where}" + (f"; {len(left)} case(s) left out" if left else ""))
    return 0


def add_label_command(sub: argparse._SubParsersAction) -> None:
    from ..engines.options import add_engine_arguments

    p = sub.add_parser("label", help="pre-label a folder of cases or a dataset.json with the agent (a manifest, "
                                     "resumable)")
    p.add_argument("input", help="a folder of cases (NIfTI, NRRD, MHA, PNG/JPEG files, DICOM series folders) or a "
                                 "dataset.json")
    p.add_argument("--target", required=True, help="the structure to pre-label, e.g. polyp, liver")
    p.add_argument("--prompts", help='JSON lines {"case": ID, "box": [x1,y1,x2,y2], "clicks": [[x,y,1|0]], '
                                     '"slice": k}; cases without one get the autonomous agent (locator first)')
    p.add_argument("--workers", type=int, default=None,
                   help="processes on this machine, one engine each (default 1); with --ray: Ray actors (default "
                        "one per CPU of the cluster)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run the cases on a Ray cluster: HOST:PORT of its head, or auto (the running cluster, else a "
                        "local one); pip install -e '.[ray]'. Input and --out on a file system every node sees")
    p.add_argument("--policy", choices=["scripted", "heuristic", "learned", "mllm"], default=None,
                   help="default: scripted (the prompt only) with a prompt, else learned after the locator's box")
    p.add_argument("--max-turns", type=int, default=5)
    p.add_argument("--window", default=None, help="CT window name (see segment)")
    p.add_argument("--modality", default=None, help="override the modality guess (CT, MR, ...)")
    p.add_argument("--retry-failed", action="store_true", help="pre-label the cases recorded as failed again")
    add_engine_arguments(p)
    p.add_argument("--out", required=True, help="the labeling folder: manifest.jsonl and cases/<id>/")
    p.set_defaults(func=cmd_label)


def add_export_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a labeling folder's masks (final, else the agent's): seg.nrrd, NIfTI, "
                                      "or a CSV summary")
    p.add_argument("folder", help="the --out folder of `medagentseg label`")
    p.add_argument("--format", required=True, choices=["seg.nrrd", "nifti", "dicom-seg", "csv"],
                   help="seg.nrrd / nifti / dicom-seg (DICOM series cases only): OUT/<case>.seg.nrrd / .nii.gz / .dcm; "
                        "csv: FOLDER/summary.csv")
    p.add_argument("--out", default=None, help="folder for seg.nrrd / nifti (default FOLDER/export/FORMAT)")
    p.set_defaults(func=cmd_export)
