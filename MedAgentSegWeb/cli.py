"""`medagentseg web [IMAGE] [--host 127.0.0.1] [--port P] [--labeling DIR]`: the agent in the browser.

The browser package owns its command: `medagentseg` finds it through the `medagentseg.commands` entry point
(pyproject.toml), so the library never imports the browser app. The app runs on trame-slicer, an optional extra:
it is imported only when the command runs, so the rest of the CLI works without it, and its absence is one sentence
saying how to install it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

__all__ = ["add_web_command", "cmd_web", "load_web_app"]



def add_web_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("web", help="the agent in the browser: slice views, chat, box and clicks (the 'web' extra)")
    p.add_argument("image", nargs="?", help="a volume to open at start (NRRD, NIfTI, MHA); or open one in the page")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--device", default="auto", help="engine device: auto (cuda, then mps, then cpu), cpu, cuda")
    p.add_argument("--data-dir", action="append", default=None, metavar="FOLDER",
                   help="a folder the page may open volumes from and save into (repeatable; default: the current "
                        "folder). No path the page sends leaves these, the bundled sample and IMAGE's folder")
    p.add_argument("--labeling", metavar="DIR", default=None,
                   help="a labeling folder (the --out of `medagentseg label`) to review in the page: its cases, accept "
                        "/ reject / edit, written to its manifest.jsonl (served like a --data-dir)")
    p.add_argument("--reviewer", default=None,
                   help="the name the review decisions are recorded under (default: your user name; editable in "
                        "the page)")
    p.set_defaults(func=cmd_web)


def load_web_app():
    """The MedAgentSegWeb.app module; ImportError saying what to install when the web extra or the source is missing."""
    if importlib.util.find_spec("MedAgentSegWeb") is None or importlib.util.find_spec("MedAgentSegModuleLib") is None:
        raise ImportError("the browser app is not installed (MedAgentSegWeb, MedAgentSegModuleLib): clone the "
                          "repository and install it with pip install -e '.[web]'")
    missing = [m for m in ("trame_slicer", "trame_vuetify", "slicer") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"the browser app needs the 'web' extra ({', '.join(missing)} not installed): run "
                          "pip install -e '.[web]' (or bash scripts/setup.sh)")
    from . import app

    return app


def cmd_web(args: argparse.Namespace) -> int:
    from MedAgentSegLib.pipeline.segment import UsageError

    if args.image and not Path(args.image).is_file():
        raise UsageError(f"there is no file {args.image}; give a volume file, or leave it out and open one in the page")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a port number (0..65535)")
    if args.labeling and not (Path(args.labeling) / "manifest.jsonl").is_file():
        raise UsageError(f"--labeling {args.labeling} has no manifest.jsonl; give the --out folder of "
                         "`medagentseg label`")
    app = load_web_app()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"medagentseg: warning: listening on {args.host}: anyone who can reach this machine can open the app "
              "and its files", file=sys.stderr)
    for folder in args.data_dir or []:
        if not Path(folder).is_dir():
            raise UsageError(f"--data-dir {folder} is not a folder; give an existing folder")
    app.main(image=args.image, host=args.host, port=args.port, device=args.device, data_dirs=args.data_dir,
             labeling=args.labeling, reviewer=args.reviewer)
    return 0
