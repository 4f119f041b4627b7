"""The review queue in the browser (issue #19), plain MRML (no trame): the page's side of the Slicer module's
`LabelingReviewLogic` (MedAgentSeg/MedAgentSegModuleLib/review_queue.py), which loads each case into the scene and
records each decision in the manifest at once (leases, statuses and files: MedAgentSegLib.labeling.review).

What is the page's own: the labeling folder must be one the server serves (`files.within`), each action answers the
chat line to show, the app's volume and segmentation follow the open case (so the chat and the Box / click tools
edit its mask), and the case's turn slider shows the pre-label's turns over the case's mask.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from MedAgentSegModuleLib.mrml_writer import TAG_PREFIX, node_to_world, slice_geometry
from MedAgentSegModuleLib.review_queue import AXIS_IJK, LabelingReviewLogic

from MedAgentSegLib.labeling.manifest import ManifestError
from MedAgentSegLib.labeling.review import ReviewError

from .review import show_item

__all__ = ["LabelingPanel", "LabelingError", "EXPECTED"]


class LabelingError(ValueError):
    """The page asked for something the queue cannot do now; the message says what to do."""


EXPECTED = (LabelingError, ReviewError, ManifestError)  # a chat line, not a traceback


class LabelingPanel:
    """What the page's labeling panel does, on `app` (a MedAgentSegWeb.app.WebApp: its scene, agent logic, served
    folders and views). Each action returns the chat line to show, or raises one of EXPECTED / OutsideError."""

    def __init__(self, app: Any, lease_seconds: float = 1800.0):
        self.app = app
        self.lease_seconds = lease_seconds
        self.review: LabelingReviewLogic | None = None  # made at the first folder, then kept: it wraps the agent's
        # on_change once, not once per folder

    # -- folder and reviewer --------------------------------------------------------------------------------------
    def open_folder(self, path: str, reviewer: str) -> str:
        path = str(path or "").strip()
        if not path:
            raise LabelingError("Type the labeling folder (the --out folder of `medagentseg label`) first.")
        folder = self.app.within_served(path, "The labeling folder")
        if self.review is None:
            self.review = LabelingReviewLogic(self.app.scene, reviewer, agent=self.app.logic,
                                              lease_seconds=self.lease_seconds,
                                              sequences_logic=self.app.logic.sequences_logic)
        self._before_leaving()  # the logic refuses too; this names the page's buttons
        try:  # ReviewError (no manifest, no name...) before the open folder is closed
            rows = self.review.open_folder(str(folder), reviewer=reviewer)
        finally:
            self._follow()
        todo = sum(r["status"] in ("pre-labelled", "in review") for r in rows)
        return (f"Opened {folder}: {len(rows)} case(s), {todo} to review. Press Next unreviewed (or pick a case in "
                "the list).")

    def set_reviewer(self, name: str) -> None:
        """The name in the page: the logic's set_reviewer (the open case taken over under it); the app follows."""
        if self.review is None:
            return
        try:
            self.review.set_reviewer(name)
        finally:
            self._follow()

    def _require_review(self) -> LabelingReviewLogic:
        if self.review is None:
            raise LabelingError("Open a labeling folder first (its path, then 'Open folder').")
        return self.review

    def _before_leaving(self) -> None:
        """Unsaved edits are never dropped by moving on."""
        if self.review is not None and self.review.case is not None and self.review.dirty():
            raise LabelingError(f"You edited case {self.review.case.case_id} and it is not saved: press Save edit "
                                "to keep the edit, or Reload case to drop it, then try again.")

    @property
    def case_id(self) -> str | None:
        return None if self.review is None or self.review.case is None else self.review.case.case_id

    def rows(self) -> list[dict[str, Any]]:
        """The case list: the logic's rows, plus whether another reviewer holds the case and which one is open."""
        if self.review is None or self.review.queue is None:
            return []
        rows = self.review.rows()
        queue = self.review.queue  # a lease of this queue's own token is the page's; the same name elsewhere is not
        taken = {cid for cid, lease in queue.leases().items() if lease.token != queue.token}
        return [{**row, "taken": row["id"] in taken, "current": row["id"] == self.case_id} for row in rows]

    # -- moving -----------------------------------------------------------------------------------------------------
    def next(self, unreviewed_only: bool = False) -> str:
        case = self._move(lambda review: review.next(unreviewed_only))
        if case is None:
            raise LabelingError("Every case is reviewed or held by another reviewer." if unreviewed_only else
                                "No case after this one that nobody else holds; press Previous or Next unreviewed.")
        return self._opened(case)

    def previous(self) -> str:
        case = self._move(lambda review: review.previous())
        if case is None:
            raise LabelingError("No case before this one that nobody else holds; press Next.")
        return self._opened(case)

    def open_case(self, case_id: str) -> str:
        """The case picked in the list (LeaseTaken, with nothing changed, if another reviewer holds it)."""
        return self._opened(self._move(lambda review: review.open_case(case_id)))

    def reload(self) -> str:
        """The open case as last saved: its edits since then are dropped."""
        case_id = self.case_id
        if case_id is None:
            raise LabelingError("No case is open: press Next unreviewed (or pick one in the list).")
        return self._opened(self._move(lambda review: review.open_case(case_id, drop_edits=True), drop_edits=True))

    def _move(self, step: Any, drop_edits: bool = False) -> Any:
        review = self._require_review()
        if not drop_edits:  # the logic refuses too; this names the page's buttons
            self._before_leaving()
        try:
            return step(review)
        finally:
            self._follow()

    def _follow(self) -> None:
        """The app works on the open case's volume and mask (or on nothing once a case was closed)."""
        review, app = self.review, self.app
        volume = review.volume if review is not None and review.case is not None else None
        if volume is not None and volume is not app.volume_node:
            app.show_case(volume, review.segmentation)
            app.jump_to(self._centre(review))
        elif volume is None and app.volume_node is not None and app.volume_node.GetScene() is None:
            app.volume_node = app.segmentation_node = None

    @staticmethod
    def _centre(review: LabelingReviewLogic) -> Any:
        """The middle of the pre-label's slice (the views open there), else of the volume."""
        meta: dict[str, Any] = {}
        if review.case.trajectory is not None:
            try:
                meta = json.loads(Path(review.case.trajectory).read_text(encoding="utf-8")).get("metadata") or {}
            except (OSError, ValueError, AttributeError):
                meta = {}
        dims = review.volume.GetImageData().GetDimensions()
        axis = AXIS_IJK.get(meta.get("axis"), "K")
        index = meta.get("slice")
        geom = slice_geometry(review.volume, axis, int(index) if index is not None else dims["IJK".index(axis)] // 2)
        return node_to_world(review.volume, geom.pixel_to_ras((geom.width - 1) / 2.0, (geom.height - 1) / 2.0))

    def _opened(self, case: Any) -> str:
        if case.mask is None:  # the batch could not start on it: the reviewer gives the first prompt here
            target = case.record.get("target") or "the target"
            why = f" ({case.record['reason']})" if case.record.get("reason") else ""
            return (f"Case {case.case_id} needs a prompt{why}. Type 'segment the {target}' and draw the box (or "
                    "place a positive click), or paint it; then Save edit.")
        turns = self.turn_count()
        slider = f"; the case's turn slider shows its {turns} turn(s)" if turns > 1 else ""
        mask = "the edited mask" if case.final else "the pre-label"
        return (f"Case {case.case_id} ({case.record['status']}): {mask} is in the view{slider}. Accept it, Reject it "
                "with a note, or edit it with the chat and the Box / click tools, then Save edit.")

    # -- the pre-label's turns --------------------------------------------------------------------------------------
    def turn_count(self) -> int:
        review = self.review
        return 0 if review is None or review.trajectory is None else review.trajectory.count

    def show_turn(self, number: int) -> str:
        """Show the pre-label's turn `number` (the last: the case's own mask); returns what that turn did."""
        review = self.review
        if review is None or review.trajectory is None or not review.trajectory.count:
            return ""
        recorder = review.trajectory
        number = max(1, min(int(number), recorder.count))
        show_item(recorder, number, review.sequences_logic, review.segmentation)
        snap = recorder.sequences["mask"].GetNthDataNode(number - 1)
        try:
            turn = json.loads(snap.GetAttribute(TAG_PREFIX + "Turn") or "{}")
        except ValueError:
            turn = {}
        action = turn.get("action") or {}
        reason = f": {action['reason']}" if action.get("reason") else ""
        by = "the agent" if turn.get("source") == "agent" else "a person"
        return f"{action.get('name', '?')} by {by}{reason}"

    # -- deciding ---------------------------------------------------------------------------------------------------
    def accept(self, note: str = "") -> str:
        self._before_leaving()
        rec = self._require_review().accept(note)
        return f"Case {rec['case_id']} accepted; saved in the manifest."

    def reject(self, note: str = "") -> str:
        note = str(note or "").strip()
        if not note:  # the queue refuses too; this names the field
            raise LabelingError("Write in 'Note' why the case is rejected, then press Reject case again.")
        rec = self._require_review().reject(note)
        return f"Case {rec['case_id']} rejected ({note}); saved in the manifest."

    def save_edit(self, note: str = "") -> str:
        rec = self._require_review().save_edit(note)
        return (f"Case {rec['case_id']}: the edited mask is saved as its final mask ({rec['outputs']['final']}); "
                "manifest updated.")

    def tick(self, pages: int = 1) -> None:
        """From the app's poll loop: keep the open case's lease while a page is connected (`pages`: how many). With
        none the lease is not renewed, so a server left running with no page gives the case back when it runs out."""
        if self.review is not None and pages > 0:
            self.review.tick()
