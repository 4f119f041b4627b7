"""Model files, in one place (issue #25): SHA-256 of a weights file, checked before any load; torch state dicts
loaded with weights_only=True; and the model card (`<weights>.json`) every trainer writes beside its weights.

A card always holds the file's name, SHA-256, size and date; each trainer adds its own fields (data and licences,
command, seed, times). The validation numbers of the weights a card replaces are kept as
`validation_previous_weights`, so a retrain never loses what the old weights measured.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

from .base import EngineError

__all__ = ["sha256_file", "verify_sha256", "load_verified_state", "write_card", "read_card", "card_sha256"]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected_sha256: str | None) -> None:
    """EngineError unless the file exists and (when a hash is expected) has that SHA-256: checked before any load."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"weights file not found: {path}; reinstall the package that ships it or give a valid path")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise EngineError(f"weights file {path} has SHA-256 {actual[:12]}..., expected {expected_sha256[:12]}...; "
                              "the file is corrupt or not the expected release: reinstall it")


def load_verified_state(path: str | Path, expected_sha256: str | None):
    """torch.load a state dict with weights_only=True after checking its SHA-256 (when one is expected)."""
    import torch

    path = Path(path)
    verify_sha256(path, expected_sha256)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or one holding more than tensors (weights_only refuses it)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise EngineError(f"cannot read {path} as PyTorch weights ({first}); give a state dict saved with "
                          "torch.save") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


def read_card(weights: str | Path) -> dict[str, Any]:
    """The card beside `weights` ({} when there is none or it is not JSON)."""
    try:
        card = json.loads(Path(weights).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def card_sha256(weights: str | Path) -> str | None:
    """The SHA-256 the card beside `weights` records (None without a card)."""
    value = read_card(weights).get("sha256")
    return value if isinstance(value, str) else None


def write_card(weights: str | Path, fields: dict[str, Any]) -> Path:
    """Write `<weights>.json`: name, SHA-256, size and date of the file, then `fields`; the replaced card's
    validation is kept as validation_previous_weights. Returns the card's path."""
    weights = Path(weights)
    card_path = weights.with_suffix(".json")
    old = read_card(weights)
    card = {"file": weights.name, "sha256": sha256_file(weights), "size_bytes": weights.stat().st_size,
            "created": _dt.date.today().isoformat(), **fields}
    if "validation" in old and "validation" not in fields:
        card["validation_previous_weights"] = old["validation"]
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    return card_path
