"""'Review a labeling folder' in the Slicer module: the Qt wiring of the review queue (its logic is
MedAgentSegModuleLib.review_queue, Qt-free and tested on real MRML). Kept apart from MedAgentSeg.py so the module's
file holds the module, its widget and its logic."""

from __future__ import annotations

import getpass
from typing import TYPE_CHECKING

import ctk
import qt
import slicer
from MedAgentSegModuleLib.agent_logic import AgentError
from MedAgentSegModuleLib.mrml_writer import MRMLInputError
from MedAgentSegModuleLib.review_queue import LabelingReviewLogic, ReviewError

from MedAgentSegLib.labeling.manifest import ManifestError

if TYPE_CHECKING:
    from MedAgentSeg import MedAgentSegWidget

__all__ = ["LabelingReviewPanel"]


class LabelingReviewPanel:
    """'Review a labeling folder': wires a few controls to `LabelingReviewLogic` (MedAgentSegModuleLib.review_queue),
    which does everything; the chat and the agent then work on the open case like on any segmentation."""

    def __init__(self, widget: MedAgentSegWidget) -> None:
        self.widget = widget
        self.review: LabelingReviewLogic | None = None
        self._tick_error = ""
        box = ctk.ctkCollapsibleButton()
        box.text = "Review a labeling folder"
        box.collapsed = True
        widget.layout.addWidget(box)
        form = qt.QFormLayout(box)
        self.folder = ctk.ctkPathLineEdit()
        self.folder.filters = ctk.ctkPathLineEdit.Dirs
        self.folder.toolTip = "The --out folder of `medagentseg label` (it holds manifest.jsonl)"
        self.reviewer = qt.QLineEdit(getpass.getuser())
        self.reviewer.toolTip = "Written into the manifest with each decision; holds the case you open"
        form.addRow("Folder:", self.folder)
        form.addRow("Reviewer:", self.reviewer)
        self.reviewer.connect("editingFinished()", self.onReviewerEdited)
        self.table = qt.QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Case", "Status", "Reviewer", "Note"])
        self.table.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        self.table.connect("cellDoubleClicked(int,int)", self.onPick)
        self.note = qt.QLineEdit()
        self.note.placeholderText = "Note (required to reject)"
        self.status = qt.QLabel("Open a labeling folder.")
        self.status.wordWrap = True
        rows = [[("Open folder", self.onOpenFolder)], self.table,
                [("Previous", self.onPrevious), ("Next", self.onNext), ("Next unreviewed", self.onNextUnreviewed)],
                self.note, [("Accept", self.onAccept), ("Reject", self.onReject), ("Save edit", self.onSaveEdit),
                            ("Reload case", self.onReload)],
                self.status]
        self.buttons: dict[str, qt.QPushButton] = {}
        for row in rows:
            if not isinstance(row, list):
                form.addRow(row)
                continue
            line = qt.QHBoxLayout()
            for text, slot in row:
                button = qt.QPushButton(text)
                button.connect("clicked(bool)", slot)
                line.addWidget(button)
                self.buttons[text] = button
            form.addRow(line)
        self.refresh()

    def call(self, fn, *args) -> bool:
        """A logic call; its ReviewError (a sentence) goes to the chat and the status line. True: it was done."""
        try:
            fn(*args)
            return True
        except (ReviewError, AgentError, MRMLInputError) as exc:
            self.widget.say("error", str(exc))
            self.status.text = str(exc)
        except Exception as exc:  # never a silent failure
            import traceback

            traceback.print_exc()
            self.widget.say("error", f"Unexpected error: {exc}. Details are in the Python console.")
        finally:
            self.refresh()
        return False

    def onOpenFolder(self) -> None:
        def open_folder():
            if self.review is None:  # one logic for every folder: it wraps the agent's on_change once
                self.review = LabelingReviewLogic(slicer.mrmlScene, self.reviewer.text, agent=self.widget.logic.agent,
                                                  sequences_logic=slicer.modules.sequences.logic(),
                                                  on_change=self.refresh)
            # refused while the open case has unsaved edits: they are not dropped
            self.review.open_folder(self.folder.currentPath, reviewer=self.reviewer.text)

        self.call(open_folder)

    def onReviewerEdited(self) -> None:
        """The name typed takes over the open case (as in the web page), so decisions carry the name shown."""
        if self.review is not None:
            self.call(self.review.set_reviewer, self.reviewer.text)

    def move(self, step) -> None:
        def go():
            case = step()
            if case is None:
                raise ReviewError("no other case to open here (the others are reviewed or held by someone else)")
            self.show()

        if self.review is None:
            self.status.text = "Open a labeling folder first."
            return
        self.call(go)

    def onNext(self) -> None:
        self.move(lambda: self.review.next())

    def onNextUnreviewed(self) -> None:
        self.move(lambda: self.review.next(unreviewed_only=True))

    def onPrevious(self) -> None:
        self.move(lambda: self.review.previous())

    def onPick(self, row: int, column: int) -> None:
        if self.review is None:
            self.status.text = "Open a labeling folder first."
            return
        case_id = self.table.item(row, 0).text()
        take_over = False
        try:  # held under this name in another window: taken over only when the reviewer says so (after a crash)
            take_over = self.review.held_elsewhere(case_id) and slicer.util.confirmYesNoDisplay(
                f"Case {case_id} is open under your name in another window (the web page, or a Slicer that crashed). "
                "Take it over? That window can then not save its edits to it.", windowTitle="Take the case over")
        except ReviewError as exc:
            self.status.text = str(exc)
            return
        self.move(lambda: self.review.open_case(case_id, take_over=take_over))

    def onReload(self) -> None:
        """The open case as last saved: its unsaved edits are dropped (the only way to drop them and move on)."""
        if self.review is None or self.review.case is None:
            self.status.text = "No case is open: press Next unreviewed, or double-click one in the list."
            return
        self.move(lambda: self.review.open_case(self.review.case.case_id, drop_edits=True))

    def show(self) -> None:
        """The case's volume in the views; the agent panel works on its segmentation and segment."""
        r = self.review
        p = self.widget._parameterNode
        if p is not None:
            p.inputVolume, p.outputSegmentation = r.volume, r.segmentation
            p.segmentName = r.segmentation.GetSegmentation().GetSegment(r.segment_id).GetName()
        slicer.util.setSliceViewerLayers(background=r.volume, fit=True)

    def decide(self, fn) -> None:
        if self.review is None:
            self.status.text = "Open a labeling folder first."
            return
        if self.call(fn, self.note.text):
            self.note.text = ""

    def onAccept(self) -> None:
        self.decide(lambda note: self.review.accept(note))

    def onReject(self) -> None:
        self.decide(lambda note: self.review.reject(note))

    def onSaveEdit(self) -> None:
        self.decide(lambda note: self.review.save_edit(note))

    def tick(self) -> None:
        """From the poll timer: keep the open case's lease (renewed a third of the way through it) and show other
        reviewers' leases and decisions (the logic reads the list every few seconds, None when unchanged)."""
        if self.review is None:
            return
        try:
            if self.review.case is not None:
                self.review.tick()
            if self.review.changed_rows() is not None:
                self.refresh()
        except (ReviewError, ManifestError) as exc:  # e.g. a lease deleted by hand: said, tried again later
            if str(exc) != self._tick_error:  # once, not every few seconds
                self._tick_error = str(exc)
                self.widget.say("error", str(exc))
        else:
            self._tick_error = ""

    def close(self) -> None:
        """Give the open case back (the module is closing)."""
        if self.review is not None:
            self.call(self.review.close)

    def refresh(self) -> None:
        r = self.review
        rows = r.rows() if r is not None else []
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, key in enumerate(("id", "status", "who", "note")):
                self.table.setItem(i, j, qt.QTableWidgetItem(row[key]))
        case = r.case if r is not None else None
        for name in ("Accept", "Reject", "Save edit", "Reload case"):
            self.buttons[name].enabled = case is not None
        if case is not None:
            status = next((row["status"] for row in rows if row["id"] == case.case_id), "")
            self.status.text = (f"Case {case.case_id} ({status}): accept it, reject it with a note, or edit it (the "
                                "chat, the agent, the Segment Editor) and Save edit.")


# -- logic --------------------------------------------------------------------------------------------------------
