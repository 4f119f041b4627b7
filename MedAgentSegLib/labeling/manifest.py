"""The labeling manifest: `DIR/manifest.jsonl`, one JSON record per case, rewritten whole (atomically) on each change.

A record (all keys always present; null until known):
case_id, image, target, status, reason, prompt ("prompts file" | "agent"), turns, seconds, engine, encoder, policy,
mode, slice, versions {engine_weights, policy, locator: SHA-256 from the cards}, outputs {original, final, trajectory,
propagation: paths relative to DIR}, labelled_at, reviewer, reviewed_at, review_note.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text

__all__ = ["STATUSES", "DONE", "ManifestError", "new_record", "read_manifest", "write_manifest"]

STATUSES = ("pending", "pre-labelled", "needs prompt", "in review", "accepted", "edited", "rejected", "failed")
DONE = frozenset(STATUSES) - {"pending", "needs prompt"}  # never pre-labelled again by a re-run
NAME = "manifest.jsonl"


class ManifestError(ValueError):
    """The manifest cannot be read as records; the message names the line and what to do."""


def new_record(case_id: str, image: str, target: str | None = None) -> dict[str, Any]:
    return {"case_id": case_id, "image": image, "target": target, "status": "pending", "reason": None, "prompt": None,
            "turns": None, "seconds": None, "engine": None, "encoder": None, "policy": None, "mode": None,
            "slice": None, "versions": {},
            "outputs": {"original": None, "final": None, "trajectory": None, "propagation": None},
            "labelled_at": None, "reviewer": None, "reviewed_at": None, "review_note": None}


def json_lines(lines: list[str]):
    """(line number, parsed JSON or None when it is not JSON) for each non-blank line."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            yield n, None


def read_manifest(folder: str | Path) -> dict[str, dict[str, Any]]:
    """{case_id: record} in file order; {} when there is none. ManifestError on a line that is not a record."""
    path = Path(folder) / NAME
    if not path.is_file():
        return {}
    records: dict[str, dict[str, Any]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ManifestError(f"{path} is not UTF-8 text; restore it or move it away to start the batch again") from None
    for n, rec in json_lines(lines):
        if not isinstance(rec, dict) or not isinstance(rec.get("case_id"), str) or rec.get("status") not in STATUSES:
            raise ManifestError(f"{path} line {n} is not a manifest record (a JSON object with case_id and a status "
                                f"among {', '.join(STATUSES)}); fix or delete that line (the case is then done "
                                "again), nothing was changed")
        if rec["case_id"] in records:
            raise ManifestError(f"{path} line {n}: case {rec['case_id']!r} appears twice; delete one of the lines")
        base = new_record(rec["case_id"], str(rec.get("image") or ""))
        base.update(rec)
        records[rec["case_id"]] = base
    return records


def write_manifest(folder: str | Path, records: dict[str, dict[str, Any]]) -> Path:
    """Rewrite the whole manifest in one rename: readers (and a kill) only ever see a complete file."""
    text = "".join(json.dumps(r, sort_keys=False) + "\n" for r in records.values())
    return atomic_write_text(Path(folder) / NAME, text)
