"""`medagentseg agent-report`: box-only vs the GT-free agents vs the oracle, per dataset, as Markdown.

Every run starts from the same jittered box (seeded per instance). Rows: `heuristic` and `learned` (GT-free,
up to 5 mask-producing turns after the box), `oracle` (5 RITM clicks; it reads the reference), and `learned` on
the original LiteMedSAM (`--engine litemedsam`: does the policy keep its gain on another engine?) and on the
original LiteMedSAM with the click-local rule (`litemedsam-local`, an engine whose clicks do help). Writes
docs/agent_report.md and the README section between the agent-report markers; JSONs under --json-dir.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_agent_report_command", "run_agent_report", "render_agent_report"]

START, END = "<!-- agent-report:start -->", "<!-- agent-report:end -->"
REPO = Path(__file__).resolve().parents[2]
# (row name, engine (None = default), protocol, policy)
RUNS = (("heuristic", None, "agent", "heuristic"), ("learned", None, "agent", "learned"),
        ("oracle, 5 clicks", None, "clicks", "oracle"), ("learned on litemedsam", "litemedsam", "agent", "learned"),
        ("learned on litemedsam-local", "litemedsam-local", "agent", "learned"))


def add_agent_report_command(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("agent-report", help="box-only vs heuristic vs learned vs oracle on the validation split",
                              description="Runs the GT-free agents and the oracle from the same jittered boxes on "
                                          "the validation split and writes the tables.")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder of dataset folders")
    p.add_argument("--datasets", default="kvasir-seg,btcv-slices,acdc,lits-117")
    p.add_argument("--split", choices=["val", "train"], default="val")
    p.add_argument("--jitter", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-area", type=int, default=20)
    p.add_argument("--limit", type=int, default=None, help="per dataset (a quick look; the report uses all)")
    p.add_argument("--policy-weights", default=None, metavar="PT", help="a controller other than the shipped one")
    p.add_argument("--embedding-cache", default=str(REPO / ".cache" / "litemedsam"))
    p.add_argument("--out", default=str(REPO / "docs" / "agent_report.md"))
    p.add_argument("--readme", default=str(REPO / "README.md"))
    p.add_argument("--json-dir", default=str(REPO / "runs" / "agent-report"))
    p.add_argument("--reuse", action="store_true", help="reuse JSONs made with the same settings and weights")
    p.add_argument("--update-card", action="store_true", help="write the validation numbers into the policy card")
    p.set_defaults(func=run_agent_report)
    return p


def _ids(engine: Any, policy: str, weights: str | None) -> str:
    from ..engines.weights import sha256_file
    from .report import _weights_id

    ident = _weights_id(engine)
    if policy == "learned":
        from ..agent.learned import POLICY_WEIGHTS

        path = Path(weights) if weights else POLICY_WEIGHTS
        drop = json.loads(path.with_suffix(".json").read_text()).get("drop")
        ident += f":policy-{sha256_file(path)[:16]}:drop-{drop}"
    return ident


def run_agent_report(args: argparse.Namespace) -> int:
    from ..engines import create_engine
    from .harness import evaluate, format_table, write_json

    data = Path(args.data)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    present = [d for d in datasets if (data / d / "dataset.json").is_file()]
    for d in sorted(set(datasets) - set(present)):
        print(f"skipped dataset {d}: no {data / d / 'dataset.json'}", file=sys.stderr)
    if not present:
        print(f"error: none of {datasets} found under {data}; pass --data DIR", file=sys.stderr)
        return 2
    json_dir = Path(args.json_dir)
    results: dict[str, dict[str, Any]] = {}
    for row, engine_name, protocol, policy in RUNS:
        engine = create_engine(engine_name)
        ident = _ids(engine, policy, args.policy_weights)
        kwargs = {"weights": args.policy_weights} if policy == "learned" and args.policy_weights else {}
        results[row] = {}
        for ds in present:
            path = json_dir / f"{row.replace(' ', '_').replace(',', '')}__{ds}.json"
            res = _reuse(args, path, ident)
            if res is None:
                # GT-free agents: 5 mask-producing turns with the box (MedSAM-Agent's budget); the oracle: 5 clicks
                res = evaluate([data / ds], protocol, engine=engine, policy=policy,
                               clicks=5 if policy == "oracle" else 4, jitter=args.jitter,
                               seed=args.seed, limit=args.limit, min_area=args.min_area, split=args.split,
                               embedding_cache=args.embedding_cache or None, policy_kwargs=kwargs)
                res["config"]["weights"] = ident
                write_json(res, path)
            print(f"{row}:\n{format_table(res)}")
            results[row][ds] = res
    argv = ["medagentseg", "agent-report"] + sys.argv[2:]
    command = " ".join(shlex.quote(a) for a in argv)
    body = render_agent_report(results, present, command, args)
    from .report import write_report

    write_report(Path(args.out), "MedAgentSeg: GT-free agents, validation report", body, Path(args.readme), START, END)
    if args.update_card:
        _update_card(results, command, args.policy_weights)
    return 0


def _reuse(args: argparse.Namespace, path: Path, ident: str) -> dict[str, Any] | None:
    if not (args.reuse and path.is_file()):
        return None
    res = json.loads(path.read_text())
    c = res.get("config", {})
    same = (c.get("jitter"), c.get("seed"), c.get("min_area"), c.get("limit"), c.get("split"), c.get("weights")) == (
        args.jitter, args.seed, args.min_area, args.limit, args.split, ident)
    if same:
        print(f"reused {path}", file=sys.stderr)
    return res if same else None


def _f(v: Any, p: int = 3, sign: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.{p}f}" if sign else f"{v:.{p}f}"


def render_agent_report(results: dict[str, dict[str, Any]], datasets: list[str], command: str,
                        args: argparse.Namespace) -> str:
    lines = ["## GT-free agents: validation report", "", f"Generated {_dt.date.today().isoformat()} by:", "",
             "```", command, "```", "",
             f"Protocol: {args.split} split (patient-level), one instance per (case, label; targets >= "
             f"{args.min_area} px), 3D cases on the label's largest slice. Every row starts from the same box, each "
             f"edge jittered by up to {args.jitter:.0%} of the box size (seed {args.seed}). GT-free agents then act "
             "alone (at most 5 mask-producing turns, the box counted: 4 of their own); the oracle gives 5 RITM "
             "clicks from the reference. final = Dice of the mask the run ended with; gain = final − box; "
             "degraded = share of instances whose final Dice is more than 0.01 below the box's; "
             "turns = mask-producing turns with the box counted, turns the agent took back included; "
             "policy / engine = median ms per corrective turn "
             "(the policy's own decision vs the engine's prediction, embeddings cached); taken back = share of "
             "runs where the agent undid its own last turn.", "",
             "| dataset | row | n | box | final | gain | degraded | turns | policy ms | engine ms | taken back |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for ds in datasets:
        for row, per in results.items():
            if ds not in per:
                continue
            s = per[ds]["summary"]
            d = s.get("dice_by_step") or [None]
            lines.append(f"| {ds} | {row} | {s['n']} | {_f(d[0])} | {_f(s.get('dice_final'))} | "
                         f"{_f(s.get('gain_final'), sign=True)} | {_f(s.get('degraded_rate'), 2)} | "
                         f"{_f(s.get('turns_mean'), 2)} | {_f(s.get('policy_ms_median'), 1)} | "
                         f"{_f(s.get('engine_turn_ms_median'), 1)} | {_f(s.get('reverted_rate'), 2)} |")
    lines += ["", "Targets of issue #14 for `learned` (on this split):", ""]
    for ds in datasets:
        lines.append(f"- {ds}: " + "; ".join(_checks(results, ds)))
    lines += ["", f"Every case's Dice per step is in the JSON files under `{_rel(Path(args.json_dir))}`.", ""]
    return "\n".join(lines)


def _checks(results: dict[str, dict[str, Any]], ds: str) -> list[str]:
    def summ(row: str) -> dict[str, Any] | None:
        r = results.get(row, {}).get(ds)
        return None if r is None else r["summary"]

    lrn, heu, tra = summ("learned"), summ("heuristic"), summ("learned on litemedsam")
    if lrn is None or not lrn["n"]:
        return ["no result"]
    out = []
    g = lrn["gain_final"]
    out.append(f"gain {g:+.3f} {'met' if g >= 0.03 else 'missed'} (>= +0.03)")
    out.append(f"degraded {lrn['degraded_rate']:.2f} {'met' if lrn['degraded_rate'] <= 0.10 else 'missed'} (<= 0.10)")
    out.append(f"turns {lrn['turns_mean']:.2f} {'met' if lrn['turns_mean'] <= 4 else 'missed'} (<= 4)")
    if heu is not None and heu["n"]:
        better = lrn["dice_final"] > heu["dice_final"]
        out.append(f"beats heuristic {'met' if better else 'missed'} ({lrn['dice_final']:.3f} vs "
                   f"{heu['dice_final']:.3f})")
    pm, em = lrn.get("policy_ms_median"), lrn.get("engine_turn_ms_median")
    if pm is not None and em:
        out.append(f"policy time {pm / em:.0%} of the engine's {'met' if pm <= 0.15 * em else 'missed'} (<= 15%)")
    if tra is not None and tra["n"] and g > 0:
        kept = tra["gain_final"] / g
        out.append(f"on litemedsam keeps {kept:.0%} of the gain {'met' if kept >= 0.5 else 'missed'} (>= 50%)")
    loc = summ("learned on litemedsam-local")
    if loc is not None and loc["n"] and g > 0:
        out.append(f"on litemedsam-local it keeps {loc['gain_final'] / g:.0%} (not a target)")
    return out


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _update_card(results: dict[str, dict[str, Any]], command: str, weights: str | None) -> None:
    from ..agent.learned import POLICY_WEIGHTS

    card_path = (Path(weights) if weights else POLICY_WEIGHTS).with_suffix(".json")
    if not card_path.is_file():
        print(f"no policy card at {card_path}; not updated", file=sys.stderr)
        return
    card = json.loads(card_path.read_text())
    keys = ("n", "dice_final", "gain_final", "degraded_rate", "turns_mean", "policy_ms_median",
            "engine_turn_ms_median", "reverted_rate")
    card["validation"] = {"command": command, "rows": {row: {ds: {k: r["summary"].get(k) for k in keys}
                                                             for ds, r in per.items()} for row, per in results.items()}}
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    print(f"updated {card_path}")
