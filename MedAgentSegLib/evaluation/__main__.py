"""`python -m MedAgentSegLib.evaluation eval|report ...` until the main CLI wires these sub-commands."""

from __future__ import annotations

import argparse
import sys

from .cli import add_eval_command, add_report_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m MedAgentSegLib.evaluation")
    sub = parser.add_subparsers(dest="command", required=True)
    add_eval_command(sub)
    add_report_command(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
