"""The review queue of a labeling folder (issue #19): walk the cases, open one with its pre-label and trajectory,
accept it, reject it with a note or save an edited mask; each decision is in the manifest at once.

No Qt, no trame, no MRML: the Slicer module (MedAgentSegModuleLib/review_queue.py) and the web app both drive it.

Leases keep two reviewers off one case (as MONAI Label's strategies never hand one image to two users): opening a
case writes `DIR/leases/<id>.json` (who, until when); another reviewer's `open` raises `LeaseTaken` until it is
released or has expired, then takes it over. A lease belongs to one queue, not to a name: it carries the queue's
token (a new one per `ReviewQueue`), and a queue renews, releases and decides only on a lease with its own token. So
the same reviewer in two front ends (the Slicer panel and the web page) cannot give back or decide on each other's
case: the second one's `open` raises `LeaseHeldElsewhere` (a LeaseTaken naming that reviewer), and a queue whose case
was taken over that way is refused its decisions instead of having an unsaved edit land on a case it no longer
holds. After a crash the reviewer's new queue has a new token, so the crashed one's lease is not theirs any more: they
get the case back once it expires (a live front end renews it; a crashed one does not), or at once with
`open(case_id, take_over=True)`, a deliberate step, since the other queue may still be open. Leases and the
manifest change together under the manifest's lock, and the batch writes only the case it finished under the same
lock, so a running batch and any number of reviewers never undo one another's changes.

A reviewed case gets `cases/<id>/review.json`: `turns`, the provenance of the mask turn by turn ({turn, by: "agent"
| "human", action, reviewer, at, mask: "original" | "final"}: the pre-label's turns, then those of the review), and
`decisions`, every decision with who, when and the note. An edit is `cases/<id>/final.seg.nrrd`, on the original's
grid with its segment's name, colour and terminology.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write_text
from .manifest import NAME, ManifestError, manifest_lock, read_manifest, write_manifest

__all__ = ["ReviewError", "LeaseTaken", "LeaseHeldElsewhere", "Lease", "ReviewCase", "ReviewQueue", "REVIEWABLE",
           "UNREVIEWED"]

# the cases a reviewer may open: those with a pre-label, and those the batch could not start on ("needs prompt"),
# which the reviewer segments from nothing (a box or a click on the page, or paint) and keeps with Save edit
REVIEWABLE = ("pre-labelled", "in review", "accepted", "edited", "rejected", "needs prompt")
UNREVIEWED = ("pre-labelled", "in review", "needs prompt")  # what still waits for a person
BY = ("agent", "human")
_PLAIN_ID = re.compile(r"^[^/\\\x00]+$")


class ReviewError(ValueError):
    """A review step cannot be done; the message says what was wrong and what to do. Nothing was written."""


class LeaseTaken(ReviewError):
    """Another reviewer holds the case (`reviewer`, until `expires_at`, seconds since the epoch)."""

    def __init__(self, lease: Lease):
        self.reviewer, self.expires_at = lease.reviewer, lease.expires_at
        super().__init__(f"case {lease.case_id!r} is being reviewed by {lease.reviewer} until {_iso(lease.expires_at)}"
                         "; open another case (next unreviewed skips it), or this one after that time")


class LeaseHeldElsewhere(LeaseTaken):
    """The reviewer's own name holds the case in another queue (another front end, or one that crashed)."""

    def __init__(self, lease: Lease):
        ReviewError.__init__(self, f"case {lease.case_id!r} is open for {lease.reviewer} in another review window (the "
                             f"Slicer panel or the web page, or one that crashed) until {_iso(lease.expires_at)}: save "
                             "or close it there; if that window is gone, take the case over (in Slicer: double-click "
                             "it in the list and confirm; its unsaved edits there can then not be saved), or open it "
                             "after that time")
        self.reviewer, self.expires_at = lease.reviewer, lease.expires_at


@dataclass(frozen=True)
class Lease:
    case_id: str
    reviewer: str
    taken_at: float  # seconds since the epoch, of the queue's clock
    expires_at: float
    token: str = ""  # the holding queue's; "" in a lease file written before tokens (no queue's)

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


@dataclass(frozen=True)
class ReviewCase:
    """An opened case: absolute paths (None: the case has no such file) and its manifest record when opened."""

    case_id: str
    record: dict[str, Any]
    lease: Lease
    image: str
    original: Path | None  # None: the batch could not start on it ("needs prompt")
    final: Path | None
    trajectory: Path | None
    propagation: Path | None
    review: Path | None

    @property
    def mask(self) -> Path | None:
        """The mask to show: the final one once edited, else the agent's (None: neither yet)."""
        return self.final or self.original


def _extent(ijk: np.ndarray) -> list[int]:
    """[i0, i1, j0, j1, k0, k1] of the voxels set ([0, -1, ...] when none), as Slicer writes a segment's extent."""
    if not ijk.any():
        return [0, -1, 0, -1, 0, -1]
    out = []
    for axis in range(3):
        hit = np.flatnonzero(ijk.any(axis=tuple(a for a in range(3) if a != axis)))
        out += [int(hit[0]), int(hit[-1])]
    return out


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class ReviewQueue:
    """One reviewer's view of a labeling folder (the --out of `medagentseg label`). Holds at most one case: opening
    another releases the one before."""

    def __init__(self, folder: str | Path, reviewer: str, lease_seconds: float = 1800,
                 clock: Callable[[], float] = time.time):
        self.folder = Path(folder)
        if not (self.folder / NAME).is_file():
            raise ReviewError(f"{folder} has no {NAME}; open the --out folder of `medagentseg label`")
        self.reviewer = str(reviewer or "").strip()
        if not self.reviewer:
            raise ReviewError("no reviewer name: give one, it is written into the manifest with each decision")
        if not lease_seconds > 0:
            raise ReviewError(f"lease_seconds must be positive, got {lease_seconds}")
        self.lease_seconds = float(lease_seconds)
        self.clock = clock
        self.token = uuid.uuid4().hex  # whose lease is whose: the same name may have a queue in each front end
        self.current: str | None = None

    # -- reading --------------------------------------------------------------------------------------------------
    def cases(self) -> list[dict[str, Any]]:
        """The manifest's records, read now, in its order."""
        return list(self._records().values())

    def leases(self) -> dict[str, Lease]:
        """{case_id: lease} of the cases someone holds now (expired leases left out)."""
        folder = self.folder / "leases"
        now = self.clock()
        found = {}
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            lease = self._read_lease(path.stem)
            if lease is not None and not lease.expired(now):
                found[lease.case_id] = lease
        return found

    def next_case(self, after: str | None = None, unreviewed_only: bool = False) -> str | None:
        """The next case after `after` (from the top when None) that has a pre-label and no other reviewer holds;
        with `unreviewed_only`, only pre-labelled / in review ones, wrapping round to the top. None: no such case."""
        return self._step(after, unreviewed_only, forward=True)

    def previous_case(self, before: str | None = None, unreviewed_only: bool = False) -> str | None:
        """As `next_case`, going up (from the bottom when None)."""
        return self._step(before, unreviewed_only, forward=False)

    def _step(self, start: str | None, unreviewed_only: bool, forward: bool) -> str | None:
        records = self._records()
        ids = list(records) if forward else list(reversed(records))
        if start is not None and start not in records:
            raise ReviewError(f"no case {start!r} in {self.folder / NAME}")
        i = ids.index(start) + 1 if start is not None else 0
        order = ids[i:] + (ids[:i] if unreviewed_only else [])
        now = self.clock()
        for cid in order:
            if cid == start or records[cid]["status"] not in (UNREVIEWED if unreviewed_only else REVIEWABLE):
                continue
            lease = self._read_lease(cid)
            if lease is None or self._ours(lease) or lease.expired(now):
                return cid
        return None

    def open_next(self, after: str | None = None, unreviewed_only: bool = False) -> ReviewCase | None:
        """`open(next_case(...))`, going on past a case another reviewer took in between. None: no case left."""
        cid = after
        while (cid := self.next_case(cid, unreviewed_only)) is not None:
            try:
                return self.open(cid)
            except LeaseTaken:
                continue
        return None

    # -- the lease --------------------------------------------------------------------------------------------------
    def open(self, case_id: str, take_over: bool = False) -> ReviewCase:
        """Take the case's lease (LeaseTaken if another reviewer holds it and it has not expired; LeaseHeldElsewhere
        if this reviewer does in another queue, unless `take_over`) and return its files; a pre-labelled case becomes
        "in review"."""
        with self._locked() as records:
            rec = self._record(records, case_id)
            if rec["status"] not in REVIEWABLE:
                why = f" ({rec['reason']})" if rec.get("reason") else ""
                raise ReviewError(f"case {case_id!r} is {rec['status']}{why}: it has no pre-label to review. Give "
                                  "it a prompt (--prompts) or --retry-failed and run `medagentseg label` again")
            paths = self._paths(rec)
            now = self.clock()
            held = self._read_lease(case_id)
            if held is not None and not self._ours(held) and not held.expired(now):
                if held.reviewer != self.reviewer:
                    raise LeaseTaken(held)
                if not take_over:
                    raise LeaseHeldElsewhere(held)
            lease = Lease(case_id, self.reviewer, now, now + self.lease_seconds, self.token)
            self._write_lease(lease, fresh=held is None)
            if rec["status"] == "pre-labelled":
                rec["status"] = "in review"
                write_manifest(self.folder, records)
        previous, self.current = self.current, case_id
        if previous not in (None, case_id):
            self.release(previous)
        return ReviewCase(case_id=case_id, record=dict(rec), lease=lease, **paths)

    def renew(self, case_id: str) -> Lease:
        """Hold the case for another lease_seconds from now."""
        with self._locked() as records:
            self._record(records, case_id)
            lease = self._held(case_id)
            lease = Lease(case_id, self.reviewer, lease.taken_at, self.clock() + self.lease_seconds, self.token)
            self._write_lease(lease, fresh=False)
        return lease

    def release(self, case_id: str) -> bool:
        """Give the case back; "in review" goes back to "pre-labelled" (a decision stays). False: not held by this
        queue (another reviewer's, or the same reviewer's in another queue, is left alone)."""
        with self._locked() as records:
            lease = self._read_lease(case_id)
            if lease is None or not self._ours(lease):
                if self.current == case_id:  # taken over meanwhile: no longer this queue's case
                    self.current = None
                return False
            rec = records.get(case_id)
            if rec is not None and rec["status"] == "in review":
                rec["status"] = "pre-labelled"
                write_manifest(self.folder, records)
            self._lease_path(case_id).unlink(missing_ok=True)
        if self.current == case_id:
            self.current = None
        return True

    def close(self) -> None:
        """Release the case this queue holds, if any."""
        if self.current is not None:
            self.release(self.current)

    # -- decisions ------------------------------------------------------------------------------------------------
    def accept(self, case_id: str, note: str | None = None) -> dict[str, Any]:
        """The mask as it stands (final if edited, else the agent's) is right. Returns the new record."""
        return self._decide(case_id, "accepted", note)

    def reject(self, case_id: str, note: str) -> dict[str, Any]:
        """The case cannot be labelled as it is (bad image, wrong target...); `note` says why (required)."""
        if not isinstance(note, str) or not note.strip():
            raise ReviewError(f"rejecting case {case_id!r} needs a note saying what is wrong with it")
        return self._decide(case_id, "rejected", note)

    def save_edit(self, case_id: str, mask: Any, provenance: list[dict[str, Any]],
                  note: str | None = None) -> dict[str, Any]:
        """Write the reviewed mask as `cases/<id>/final.seg.nrrd` and the case becomes "edited".

        mask: a bool / 0-1 array on the original's grid in KJI order (as `slicer.util.arrayFromVolume` gives; a 2D
        case may give (rows, columns)), or a .seg.nrrd path on the same grid (its segment of the original's name,
        or its only one). provenance: the turns since the last save, in order, each {"by": "agent" | "human",
        "action": what was done (a tool name, "paint"...)}, optional "at" (ISO time); the reviewer is added."""
        turns = self._check_provenance(provenance)
        import slicerio

        with self._locked() as records:
            rec = self._record(records, case_id)
            self._held(case_id)
            paths = self._paths(rec)
            self._read_review(rec)  # a broken review.json refuses here, before final.seg.nrrd is replaced
            template = paths["original"]
            if template is None:  # no pre-label ("needs prompt"): the reviewed .seg.nrrd is its own grid
                if not isinstance(mask, (str, os.PathLike)):
                    raise ReviewError(f"case {case_id!r} has no pre-label, so its grid comes from the reviewed mask: "
                                      "give it as a .seg.nrrd written on the case's image")
                template = mask
            try:
                seg = slicerio.read_segmentation(str(template))
            except Exception as exc:  # pynrrd raises its own kinds
                raise ReviewError(f"cannot read {template} as a .seg.nrrd ({exc})") from None
            segment = dict(seg["segments"][0])
            grid = slicerio.segment_mask(seg, segment).shape
            ijk = self._mask_ijk(mask, grid, seg, segment["name"])
            seg["voxels"] = ijk.astype(np.uint8) * np.uint8(segment.get("labelValue", 1))
            segment["layer"] = 0
            segment["extent"] = _extent(ijk)  # Slicer crops the segment to it when reading the file
            seg["segments"] = [segment]
            final = self.folder / "cases" / case_id / "final.seg.nrrd"
            final.parent.mkdir(parents=True, exist_ok=True)  # a "needs prompt" case has no folder yet
            tmp = final.with_name(f".final.{uuid.uuid4().hex[:8]}.tmp.seg.nrrd")
            try:
                slicerio.write_segmentation(str(tmp), seg)
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
            rec["outputs"]["final"] = f"cases/{case_id}/final.seg.nrrd"
            return self._decision(records, rec, "edited", note, turns)

    def _decide(self, case_id: str, status: str, note: str | None) -> dict[str, Any]:
        with self._locked() as records:
            rec = self._record(records, case_id)
            self._held(case_id)
            paths = self._paths(rec)
            if status == "accepted" and paths["original"] is None and paths["final"] is None:
                raise ReviewError(f"case {case_id!r} has no mask yet: segment it (a box or a click, or paint) and "
                                  "press Save edit, or reject it with a note")
            return self._decision(records, rec, status, note, [])

    def _decision(self, records: dict[str, dict[str, Any]], rec: dict[str, Any], status: str, note: str | None,
                  turns: list[dict[str, Any]]) -> dict[str, Any]:
        """Under the lock: review.json first (the manifest never names a file not yet there), then the manifest."""
        cid = rec["case_id"]
        now = self.clock()
        review = self._read_review(rec)
        for t in turns:
            review["turns"].append({"turn": len(review["turns"]) + 1, "by": t["by"], "action": t["action"],
                                    "reviewer": self.reviewer, "at": t.get("at") or _iso(now), "mask": "final"})
        review["decisions"].append({"status": status, "reviewer": self.reviewer, "at": _iso(now), "note": note})
        (self.folder / "cases" / cid).mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / "cases" / cid / "review.json", json.dumps(review, indent=1))
        lease = self._read_lease(cid)
        rec.update(status=status, reviewer=self.reviewer, reviewed_at=_iso(now), review_note=note,
                   review_seconds=round(now - lease.taken_at, 1) if lease else None,
                   provenance={by: sum(t["by"] == by for t in review["turns"]) for by in BY})
        rec["outputs"]["review"] = f"cases/{cid}/review.json"
        write_manifest(self.folder, records)
        return dict(rec)

    # -- files ----------------------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, Any]]]:
        try:
            with manifest_lock(self.folder):
                yield self._records()
        except ManifestError as exc:
            raise ReviewError(str(exc)) from None

    def _records(self) -> dict[str, dict[str, Any]]:
        try:
            return read_manifest(self.folder)
        except ManifestError as exc:
            raise ReviewError(str(exc)) from None

    def _record(self, records: dict[str, dict[str, Any]], case_id: str) -> dict[str, Any]:
        if not isinstance(case_id, str) or not _PLAIN_ID.match(case_id) or case_id.startswith("."):
            raise ReviewError(f"{case_id!r} is not a case id (a file name, as listed in {NAME})")
        if case_id not in records:
            raise ReviewError(f"no case {case_id!r} in {self.folder / NAME}")
        return records[case_id]

    def _paths(self, rec: dict[str, Any]) -> dict[str, Any]:
        """The record's files as absolute paths inside the folder; ReviewError for a hand-broken record."""
        cid, outs = rec["case_id"], rec.get("outputs")
        where = f"{self.folder / NAME}, case {cid!r}"
        if not isinstance(outs, dict) or not isinstance(rec.get("image"), str):
            raise ReviewError(f"{where}: 'outputs' must be an object and 'image' a path; fix the line (or run "
                              "`medagentseg label` again for that case after deleting it)")
        paths: dict[str, Any] = {"image": rec["image"]}
        root = self.folder.resolve()
        for key in ("original", "final", "trajectory", "propagation", "review"):
            rel = outs.get(key)
            if rel is None:
                paths[key] = None
                continue
            path = (self.folder / rel).resolve() if isinstance(rel, str) else None
            if path is None or not path.is_relative_to(root):
                raise ReviewError(f"{where}: outputs.{key} = {rel!r} is not a path inside the folder; fix the line")
            paths[key] = path if path.is_file() else None
        if paths["original"] is None and outs.get("original") is not None:  # recorded, but the file is gone
            raise ReviewError(f"{where}: its pre-label {outs.get('original')} is missing; run `medagentseg label` "
                              "again for it (delete its line first) or restore the file")
        return paths

    def _read_review(self, rec: dict[str, Any]) -> dict[str, Any]:
        path = self.folder / "cases" / rec["case_id"] / "review.json"
        if path.is_file():
            try:
                review = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError, RecursionError):
                review = None
            if not (isinstance(review, dict) and isinstance(review.get("turns"), list)
                    and isinstance(review.get("decisions"), list)):
                raise ReviewError(f"{path} is not a review record (JSON with turns[] and decisions[]); restore it or "
                                  "delete it (the provenance of the review is then lost), nothing was changed")
            return review
        return {"case_id": rec["case_id"], "turns": self._original_turns(rec), "decisions": []}

    def _original_turns(self, rec: dict[str, Any]) -> list[dict[str, Any]]:
        """The pre-label's turns from its trajectory.json: the agent's, or a person's prompt (a prompts file)."""
        rel = (rec.get("outputs") or {}).get("trajectory")
        if not rel or not (self.folder / rel).is_file():
            return []
        try:
            turns = json.loads((self.folder / rel).read_text(encoding="utf-8")).get("turns")
            return [{"turn": i + 1, "by": "agent" if t["source"] == "agent" else "human",
                     "action": t["action"]["name"], "reviewer": None, "at": rec.get("labelled_at"),
                     "mask": "original"} for i, t in enumerate(turns)]
        except (ValueError, UnicodeDecodeError, RecursionError, AttributeError, KeyError, TypeError):
            raise ReviewError(f"{self.folder / rel} is not a trajectory (turns[] with action and source); restore it "
                              "from the batch's outputs, nothing was changed") from None

    @staticmethod
    def _check_provenance(provenance: Any) -> list[dict[str, Any]]:
        ok = isinstance(provenance, list) and provenance and all(
            isinstance(t, dict) and t.get("by") in BY and isinstance(t.get("action"), str) and t["action"].strip()
            for t in provenance)
        if not ok:
            raise ReviewError("provenance must list the turns behind the edit, each {'by': 'agent' or 'human', "
                              "'action': what was done}; e.g. [{'by': 'human', 'action': 'paint'}]")
        return provenance

    @staticmethod
    def _mask_ijk(mask: Any, grid: tuple[int, ...], original: dict[str, Any], name: str) -> np.ndarray:
        """(I, J, K) bool on the original's grid from a KJI array, a 2D (rows, columns) array or a .seg.nrrd."""
        if isinstance(mask, (str, os.PathLike)):
            import slicerio

            try:
                seg = slicerio.read_segmentation(str(mask))
            except Exception as exc:  # pynrrd raises its own kinds
                raise ReviewError(f"cannot read {mask} as a .seg.nrrd ({exc})") from None
            if not np.allclose(np.asarray(seg["ijkToLPS"]), np.asarray(original["ijkToLPS"]), atol=1e-4):
                raise ReviewError(f"{mask} is not on the original's grid (another origin, spacing or direction); "
                                  "resample it onto the case's image first")
            names = [s.get("name") for s in seg["segments"]]
            if name not in names and len(names) != 1:
                raise ReviewError(f"{mask} has segments {names} and none is {name!r}; keep only the reviewed one")
            arr = slicerio.segment_mask(seg, name if name in names else seg["segments"][0])
            if arr.shape != grid:
                raise ReviewError(f"{mask} has {arr.shape} voxels, the original {grid}; resample it onto the image")
            return arr
        arr = np.asarray(mask)
        if arr.dtype == object or not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
            raise ReviewError(f"the mask must be a numeric or bool array, got {arr.dtype}")
        if arr.shape == grid[::-1]:
            return arr.transpose(2, 1, 0) > 0
        if grid[2] == 1 and arr.shape == (grid[1], grid[0]):
            return arr.T[:, :, None] > 0
        raise ReviewError(f"the mask is {arr.shape} but the case's grid is {grid[::-1]} (K, J, I)"
                          + (f" or {(grid[1], grid[0])} (rows, columns)" if grid[2] == 1 else "")
                          + "; give the mask on the case's image")

    def _lease_path(self, case_id: str) -> Path:
        return self.folder / "leases" / f"{case_id}.json"

    def _read_lease(self, case_id: str) -> Lease | None:
        path = self._lease_path(case_id)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            data = None
        num = (int, float)
        if not (isinstance(data, dict) and isinstance(data.get("reviewer"), str) and
                isinstance(data.get("taken_at"), num) and isinstance(data.get("expires_at"), num)):
            raise ReviewError(f"{path} is not a lease (JSON with reviewer, taken_at and expires_at); if no one is "
                              f"reviewing case {case_id!r} now, delete the file")
        token = data.get("token") if isinstance(data.get("token"), str) else ""
        return Lease(case_id, data["reviewer"], float(data["taken_at"]), float(data["expires_at"]), token)

    def _write_lease(self, lease: Lease, fresh: bool) -> None:
        """A fresh lease is linked into place (fails if one appeared meanwhile); a renewal or take-over replaces the
        file in one rename. Either way readers see a whole file."""
        path = self._lease_path(lease.case_id)
        path.parent.mkdir(exist_ok=True)
        text = json.dumps({"case_id": lease.case_id, "reviewer": lease.reviewer, "taken_at": lease.taken_at,
                           "expires_at": lease.expires_at, "until": _iso(lease.expires_at),
                           "token": lease.token})
        if not fresh:
            atomic_write_text(path, text)
            return
        tmp = atomic_write_text(path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.new"), text)
        try:
            os.link(tmp, path)
        except FileExistsError:  # only without flock (not POSIX): someone else was quicker
            other = self._read_lease(lease.case_id)
            if other is None:
                raise ReviewError(f"case {lease.case_id!r} was taken and given back meanwhile; open it again") from None
            raise LeaseTaken(other) from None
        finally:
            tmp.unlink(missing_ok=True)

    def _ours(self, lease: Lease) -> bool:
        return lease.reviewer == self.reviewer and lease.token == self.token

    def _held(self, case_id: str) -> Lease:
        """This queue's lease on the case (still its own after expiry if no one took it over), else ReviewError."""
        lease = self._read_lease(case_id)
        if lease is None:
            raise ReviewError(f"{self.reviewer} does not hold case {case_id!r} (not opened, or released); open it "
                              "first")
        if lease.reviewer != self.reviewer:
            raise LeaseTaken(lease)
        if lease.token != self.token:
            raise LeaseHeldElsewhere(lease)
        return lease
