"""The engine options every command that runs an engine takes (--engine, --checkpoint, --device, --encoder)."""

from __future__ import annotations

import argparse

__all__ = ["add_engine_arguments"]


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    from . import DEFAULT_ENGINE

    p.add_argument("--engine", default=None, help=f"litemedsam-click, litemedsam, sam_vit_b|l|h (default "
                                                  f"{DEFAULT_ENGINE})")
    p.add_argument("--checkpoint", default=None, help="weights path (required for SAM engines)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, ...")
    p.add_argument("--encoder", default="auto", help="LiteMedSAM image encoder: auto (the fastest path checked on "
                   "validation data; see check-encoder), torch, openvino-f32, openvino-bf16")
