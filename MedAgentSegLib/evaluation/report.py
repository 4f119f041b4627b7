"""`medagentseg report`: the validation benchmark of original vs click-aware LiteMedSAM, as Markdown.

Writes docs/report.md, replaces the README section between `<!-- report:start -->` and `<!-- report:end -->`
(if README.md has those markers), keeps the raw JSON per engine and dataset under --json-dir, and can copy
the click-aware engine's validation numbers into its model card.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
from pathlib import Path
from typing import Any

__all__ = ["build_report", "render_markdown", "replace_section", "START", "END"]

START, END = "<!-- report:start -->", "<!-- report:end -->"
STEPS = (0, 1, 3, 5)


def replace_section(text: str, body: str, start: str = START, end: str = END) -> str | None:
    """Text with the part between the markers replaced by body; None if the markers are missing."""
    i, j = text.find(start), text.find(end)
    if i < 0 or j < 0 or j < i:
        return None
    return text[:i + len(start)] + "\n" + body.rstrip() + "\n" + text[j:]


def write_report(out: Path, title: str, body: str, readme: Path, start: str = START, end: str = END,
                 readme_body: str | None = None) -> None:
    """Write `out` (title + body) and replace the README section between the markers with readme_body (default:
    body)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# {title}\n\n" + body)
    print(f"wrote {out}")
    readme = Path(readme)
    if not readme.is_file():
        return
    new = replace_section(readme.read_text(), body if readme_body is None else readme_body, start, end)
    if new is None:
        print(f"{readme} has no {start} ... {end} markers; wrote {out} only", file=sys.stderr)
    else:
        readme.write_text(new)
        print(f"updated the section between {start} and {end} of {readme}")


def _row(name: str, s: dict[str, Any]) -> str:
    d = s.get("dice_by_step") or []

    def f(v: Any, p: int = 3) -> str:
        return "-" if v is None else f"{v:.{p}f}"

    cells = [f(d[k]) if k < len(d) else "-" for k in STEPS]
    gain = f"{d[5] - d[0]:+.3f}" if len(d) > 5 else "-"
    return (f"| {name} | {s['n']} | " + " | ".join(cells) + f" | {gain} | {f(s.get('dice_final'))} | "
            f"{f(s.get('noc85'), 2)} | "
            f"{f(s.get('noc90'), 2)} | {s.get('fail90', '-')} | {f(s.get('degraded_rate'), 2)} |")


def render_markdown(results: dict[str, dict[str, dict[str, Any]]], command: str, meta: dict[str, Any]) -> str:
    """results: {engine: {dataset: evaluate() result}} -> Markdown tables (one per dataset)."""
    lines = ["## Click-aware engine: validation benchmark", "",
             f"Generated {meta['date']} by:", "", "```", command, "```", "",
             f"Protocol: validation split (patient-level, `datasets.split_patients`, seed 2026), one "
             f"instance per (case, label present; targets >= {meta['min_area']} px), 3D cases on the slice where "
             f"the label is largest. Box with each edge jittered by up to {meta['jitter']:.0%} of the box size "
             f"(seed {meta['seed']}), then RITM oracle clicks (interior of the larger error region) with the whole "
             "prompt set and the previous logits fed back. Dice = mean over instances after the box and after "
             "1, 3, 5 clicks; NoC@85/90 = clicks after the box to reach that IoU (0 if the box does; 20 and a "
             "failure if never, at most 20). Each run goes on until IoU >= 0.90 *and* at least 5 clicks were given "
             "(or 20 clicks); final = Dice where it stopped; degraded = share of instances whose final Dice is "
             "more than 0.01 below their box-only Dice.", ""]
    datasets = sorted({d for r in results.values() for d in r}, key=lambda d: list(meta["datasets"]).index(d)
                      if d in meta["datasets"] else 99)
    head = "| engine | n | box | +1 | +3 | +5 | +5 − box | final | NoC@85 | NoC@90 | fail@90 | degraded |"
    sep = "|---|---|---|---|---|---|---|---|---|---|---|---|"
    for ds in datasets:
        lines += [f"### {ds}", "", head, sep]
        for eng, per in results.items():
            if ds in per:
                lines.append(_row(eng, per[ds]["summary"]))
        lines.append("")
        for eng, per in results.items():
            if ds in per:
                d = per[ds]["summary"].get("dice_by_step", [])[:6]
                rising = all(b > a for a, b in zip(d, d[1:]))
                lines.append(f"- {eng}, Dice at steps 0..5: " + ", ".join(f"{v:.3f}" for v in d)
                             + (" (rises with every click)" if rising else " (does not rise with every click)"))
        lines.append("")
    lines += ["Per-label numbers and every case's Dice per step are in the JSON files under "
              f"`{meta['json_dir']}` (one per engine and dataset).", ""]
    return "\n".join(lines)


def build_report(args: argparse.Namespace) -> int:
    from ..datasets import read_dataset
    from ..engines import EngineError, create_engine
    from .harness import plot_dice

    data = Path(args.data)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    present = [d for d in datasets if (data / d / "dataset.json").is_file()]
    for d in datasets:
        if d not in present:
            print(f"skipped dataset {d}: no {data / d / 'dataset.json'}", file=sys.stderr)
    if not present:
        print(f"error: none of {datasets} found under {data}; pass --data DIR", file=sys.stderr)
        return 2
    volumes = [d.strip() for d in (getattr(args, "volumes", "") or "").split(",") if d.strip()]
    volumes = [d for d in volumes if d in present and read_dataset(data / d).is_3d]
    json_dir = Path(args.json_dir)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    volume_results: dict[str, dict[str, dict[str, Any]]] = {}
    for name in engines:
        try:
            engine = create_engine(name)
        except (EngineError, ImportError) as exc:
            print(f"skipped engine {name}: {exc}", file=sys.stderr)
            continue
        results[name] = {}
        weights = _weights_id(engine)
        for ds in present:
            results[name][ds] = _run_or_reuse(args, json_dir / f"{name}__{ds}.json", weights, engine, data / ds,
                                              "noc", "2d")
        for ds in volumes:
            volume_results.setdefault(name, {})[ds] = _run_or_reuse(
                args, json_dir / f"{name}__{ds}__3d.json", weights, engine, data / ds, "clicks", "3d")
    if not results:
        print("error: no engine could be built", file=sys.stderr)
        return 2
    argv = ["medagentseg", "report"] + [a for a in sys.argv[2:]] if len(sys.argv) > 2 else ["medagentseg", "report"]
    command = " ".join(shlex.quote(a) for a in argv)
    meta = {"date": _dt.date.today().isoformat(), "jitter": args.jitter, "seed": args.seed, "min_area": args.min_area,
            "datasets": datasets, "json_dir": _rel(json_dir)}
    body = render_markdown(results, command, meta)
    if volume_results:
        body += "\n" + render_volumes(volume_results)
    plot_path = Path(args.out).with_suffix(".png")
    flat = {f"{e}": {"summary": {"per_dataset": {d: r["summary"] for d, r in per.items()}}}
            for e, per in results.items()}
    plot_dice(flat, plot_path, title="Validation Dice per step (0 = box)")
    body += f"\n![Dice per step]({plot_path.name})\n"
    write_report(Path(args.out), "MedAgentSeg benchmark report", body, Path(args.readme),
                 readme_body=body.replace(f"]({plot_path.name})", f"]({_rel(plot_path)})"))
    if args.update_card:
        _update_card(results, command)
    return 0


def _run_or_reuse(args: argparse.Namespace, path: Path, weights: str, engine: Any, root: Path, protocol: str,
                  mode: str) -> dict[str, Any]:
    """The result stored at `path` if --reuse and it was made with these settings and weights; else evaluate
    (validation split, 5 clicks; "noc" goes on to IoU 0.90 or 20 clicks) and store it there."""
    from .harness import evaluate, format_table, write_json

    if getattr(args, "reuse", False) and path.is_file():
        res = json.loads(path.read_text())
        c = res.get("config", {})
        if (c.get("jitter"), c.get("seed"), c.get("min_area"), c.get("limit"), c.get("split")) == (
                args.jitter, args.seed, args.min_area, args.limit, "val") and c.get("weights") == weights:
            print(f"reused {path}", file=sys.stderr)
            print(format_table(res))
            return res
    res = evaluate([root], protocol, engine=engine, clicks=5, jitter=args.jitter, seed=args.seed, limit=args.limit,
                   min_area=args.min_area, mode=mode, split="val", embedding_cache=args.embedding_cache or None)
    res["config"]["weights"] = weights
    write_json(res, path)
    print(format_table(res))
    return res


def render_volumes(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """results: {engine: {dataset: evaluate(mode="3d") result}} -> one Markdown table per dataset, per label."""
    lines = []
    for ds in sorted({d for r in results.values() for d in r}):
        lines += [f"### {ds}: every slice (volume Dice)", "",
                  "The same box and 5-click protocol on every axial slice that holds the label (not only the "
                  "largest one); Dice of the whole volume after each step (`eval --mode 3d`).", "",
                  "| engine | label | slices | box | +1 | +3 | +5 | +5 − box |", "|---|---|---|---|---|---|---|---|"]
        for eng, per in results.items():
            for case in per.get(ds, {}).get("cases", []):
                d = case["dice_by_step"]
                cells = " | ".join(f"{d[k]:.3f}" if k < len(d) else "-" for k in STEPS)
                gain = f"{d[5] - d[0]:+.3f}" if len(d) > 5 else "-"
                lines.append(f"| {eng} | {case['label_name']} | {case['slices']} | {cells} | {gain} |")
        lines.append("")
    return "\n".join(lines)


def _weights_id(engine: Any) -> str:
    """Which weights produced a result: the engine name, the click overlay's SHA-256 and its update rule (with
    the local rule's version, so --reuse does not take results of an older rule)."""
    from ..click_rules.update import LOCAL_RULE_VERSION

    name = getattr(engine, "name", "?")
    sha = getattr(engine, "overlay_sha256", None)
    rule = getattr(engine, "click_update", "global")
    if rule == "local":
        rule = f"local-v{LOCAL_RULE_VERSION}"
    if sha:
        return f"{name}:{sha[:16]}:{rule}"
    return name if rule == "global" else f"{name}:{rule}"


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(__file__).resolve().parents[2]))
    except ValueError:
        return str(path)


def _update_card(results: dict[str, dict[str, dict[str, Any]]], command: str) -> None:
    from ..engines import CLICK_WEIGHTS

    card_path = CLICK_WEIGHTS.with_suffix(".json")
    if not card_path.is_file():
        print(f"no model card at {card_path}; not updated", file=sys.stderr)
        return
    card = json.loads(card_path.read_text())
    val: dict[str, Any] = {"command": command, "protocol": "noc (box jitter 0.1, >= 5 RITM clicks, <= 20)"}
    for eng, per in results.items():
        val[eng] = {ds: {k: r["summary"][k] for k in ("n", "dice_by_step", "noc85", "noc90", "fail90",
                                                       "degraded_rate")} for ds, r in per.items()}
        for ds in val[eng]:
            val[eng][ds]["dice_by_step"] = val[eng][ds]["dice_by_step"][:6]
    card["validation"] = val
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    print(f"updated {card_path}")
