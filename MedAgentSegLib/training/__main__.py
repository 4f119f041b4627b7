"""`python -m MedAgentSegLib.training train-engine ...` until the main CLI wires the sub-command."""

from __future__ import annotations

import argparse
import sys

from .cli import add_train_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m MedAgentSegLib.training")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_command(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
