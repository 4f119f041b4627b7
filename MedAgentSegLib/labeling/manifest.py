"""The labeling manifest: `DIR/manifest.jsonl`, one JSON record per case, rewritten whole (atomically) on each change.

A record (all keys always present; null until known):
case_id, image, target, status, reason, prompt ("prompts file" | "agent"), turns, seconds, engine, encoder, policy,
mode, slice, versions {engine_weights, policy, locator: SHA-256 from the cards}, outputs {original, final, trajectory,
propagation, review: paths relative to DIR}, labelled_at, reviewer, reviewed_at, review_note, review_seconds,
provenance {agent, human: turns behind the final mask, each listed in outputs.review}.

Two writers share the file (a batch and the reviewers, see review.py): each change is a read-modify-write under
`manifest_lock` (`update_manifest`), so one never writes back a stale copy over the other's change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text

__all__ = ["STATUSES", "DONE", "ManifestError", "new_record", "read_manifest", "write_manifest", "manifest_lock",
           "update_manifest"]

STATUSES = ("pending", "pre-labelled", "needs prompt", "in review", "accepted", "edited", "rejected", "failed")
DONE = frozenset(STATUSES) - {"pending", "needs prompt"}  # never pre-labelled again by a re-run
NAME = "manifest.jsonl"
LOCK = ".manifest.lock"


class ManifestError(ValueError):
    """The manifest cannot be read as records; the message names the line and what to do."""


def new_record(case_id: str, image: str, target: str | None = None) -> dict[str, Any]:
    return {"case_id": case_id, "image": image, "target": target, "status": "pending", "reason": None, "prompt": None,
            "turns": None, "seconds": None, "engine": None, "encoder": None, "policy": None, "mode": None,
            "slice": None, "versions": {},
            "outputs": {"original": None, "final": None, "trajectory": None, "propagation": None, "review": None},
            "labelled_at": None, "reviewer": None, "reviewed_at": None, "review_note": None, "review_seconds": None,
            "provenance": None}


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
        outputs = rec.get("outputs")
        base.update(rec)
        if isinstance(outputs, dict):  # a manifest from before a field was added gets it as null
            base["outputs"] = {**new_record("", "")["outputs"], **outputs}
        records[rec["case_id"]] = base
    return records


def write_manifest(folder: str | Path, records: dict[str, dict[str, Any]]) -> Path:
    """Rewrite the whole manifest in one rename: readers (and a kill) only ever see a complete file."""
    text = "".join(json.dumps(r, sort_keys=False) + "\n" for r in records.values())
    return atomic_write_text(Path(folder) / NAME, text)


@contextmanager
def manifest_lock(folder: str | Path) -> Iterator[None]:
    """Exclusive use of the folder's manifest (and review leases) between processes: flock on DIR/.manifest.lock,
    released by a kill too. Not re-entrant: do not call `update_manifest` while holding it."""
    try:
        fh = open(Path(folder) / LOCK, "a")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ManifestError(f"cannot lock {Path(folder) / LOCK} ({exc.strerror}); the labeling folder must be "
                            "writable") from None
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            fcntl = None
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        fh.close()


def update_manifest(folder: str | Path, change: Callable[[dict[str, dict[str, Any]]], Any]
                    ) -> dict[str, dict[str, Any]]:
    """Read the manifest, `change(records)` in place, write it, all under the lock; returns the records written.
    A manifest that cannot be read raises ManifestError before anything is written."""
    with manifest_lock(folder):
        records = read_manifest(folder)
        change(records)
        write_manifest(folder, records)
        return records
