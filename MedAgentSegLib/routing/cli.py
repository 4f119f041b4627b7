"""``medagentseg route``: print the models a request is routed to, or route a JSONL file of queries.

    medagentseg route "segment both kidneys on this CT" --library DIR
    medagentseg route --library DIR --queries FILE.jsonl --json OUT.jsonl [--expected]

Without the main CLI: ``python -m MedAgentSegLib.routing.cli route ...``.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_route_command", "main", "run_route"]


def add_route_command(subparsers) -> argparse.ArgumentParser:
    """Add the ``route`` sub-command to an argparse ``subparsers`` object; sets ``func``."""
    p = subparsers.add_parser("route", help="route a free-text request to library models",
                              description="Parse a request (target, side, modality) and list the library "
                                          "entries and label ids that segment it.")
    p.add_argument("query", nargs="?", help="free-text request, e.g. 'segment the left kidney on CT'")
    p.add_argument("--library", help="folder of MedSegAgent-form JSON entries (default: Resources/Models)")
    p.add_argument("--queries", help="JSONL file with one {\"query\": ...} per line")
    p.add_argument("--json", dest="json_out", help="write one JSON line per query here ('-' = stdout)")
    p.add_argument("--modality", help="image modality from metadata (CT, MR, PT), used when the text names none")
    p.add_argument("--explain", action="store_true", help="print why each entry matched")
    p.add_argument("--expected", action="store_true",
                   help="with --queries: compare to each line's 'expected' / 'expected_datasets' and print accuracy")
    p.set_defaults(func=run_route)
    return p


def run_route(args: argparse.Namespace) -> int:
    """Run the sub-command; returns the exit code (0 ok, 2 bad input)."""
    from .library import LibraryError

    try:
        from . import Router

        router = Router(args.library)
    except (LibraryError, FileNotFoundError) as e:
        print(f"medagentseg: error: {e}", file=sys.stderr)
        return 2
    if args.queries:
        return _run_file(router, args)
    if not args.query:
        print("medagentseg: error: give a QUERY or --queries FILE.jsonl", file=sys.stderr)
        return 2
    res = router.route(args.query, args.modality)
    if args.json_out:
        _write([res.to_json()], args.json_out)
        return 0
    p = res.parsed
    print(f"query:    {res.query}")
    print(f"command:  {p.command}")
    print(f"target:   {res.target or '-'}")
    print(f"modality: {res.modality or '-'}" + (f" (from {p.modality_source})" if p.modality_source else ""))
    for t in p.targets:
        seg = t.segment
        code = (seg.get("type") or {}).get("code")
        print(f"segment:  {seg.get('name')}  SNOMED CT {code or '-'}  colour {seg.get('color')}")
    for w in p.warnings:
        print(f"warning:  {w}")
    if res.matches:
        for m in res.details:
            print(f"match:    {m.entry}: {m.ids}  ({', '.join(m.labels)})")
            if args.explain:
                for r in m.reasons:
                    print(f"          - {r}")
    else:
        print(f"no match: {res.message}")
    return 0


def _run_file(router, args) -> int:
    out, n, ok = [], 0, 0
    try:
        with open(args.queries, encoding="utf-8") as f:
            lines = [ln for ln in f if ln.strip()]
    except OSError as e:
        print(f"medagentseg: error: {args.queries}: {e.strerror}", file=sys.stderr)
        return 2
    except UnicodeDecodeError:
        print(f"medagentseg: error: {args.queries} is not a text file; give JSON lines", file=sys.stderr)
        return 2
    for i, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            query = rec["query"]
            if not isinstance(query, str):
                raise TypeError(query)
        except (json.JSONDecodeError, KeyError, TypeError, RecursionError):
            print(f"medagentseg: error: {args.queries} line {i}: needs a JSON object with a 'query' field (text)",
                  file=sys.stderr)
            return 2
        res = router.route(query, rec.get("modality_metadata") or args.modality)
        out.append(res.to_json())
        if args.expected:
            exp = rec.get("expected", rec.get("expected_datasets"))
            if exp is None:
                continue
            exp_matches = exp.get("matches", exp) if isinstance(exp, dict) else {}
            good = _same(res.matches, exp_matches)
            if isinstance(exp, dict) and "command" in exp:
                good = good and res.parsed.command == exp["command"]
            n += 1
            ok += good
            if not good:
                print(f"MISS line {i}: {query}\n     got {res.matches} ({res.parsed.command})\n     "
                      f"expected {exp}", file=sys.stderr)
    if args.json_out:
        _write(out, args.json_out)
    if args.expected:
        print(f"exact match: {ok}/{n} = {ok / max(n, 1):.3f}")
    elif not args.json_out:
        _write(out, "-")
    return 0


def _same(got: dict, exp: dict) -> bool:
    return set(got) == set(exp) and all(sorted(set(got[k])) == sorted(set(exp[k])) for k in exp)


def _write(records: list[dict], path: str) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if path == "-":
        sys.stdout.write(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m MedAgentSegLib.routing.cli route ...``."""
    parser = argparse.ArgumentParser(prog="medagentseg")
    sub = parser.add_subparsers(dest="command", required=True)
    add_route_command(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
