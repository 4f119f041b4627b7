"""The review queue's handlers in the page (the work is MedAgentSegWeb/labeling.py's LabelingPanel): open a folder,
move between cases, decide, and the case's turn slider. Every action ends with the case list redrawn."""

from __future__ import annotations

from typing import Any

from ..labeling import EXPECTED as LABELING_ERRORS

__all__ = ["ReviewQueueActions", "CASES_EVERY"]

CASES_EVERY = 40  # polls (2 s): the case list shows other reviewers' decisions and leases


class ReviewQueueActions:
    """On `app` (a WebApp: state, logic, labeling panel, guarded)."""

    def __init__(self, app: Any):
        self.app = app
        self.panel = app.labeling
        self._tick_error = ""
        self._case_shown: tuple[Any, Any] = (None, None)
        app.state.change("case_turn")(self.on_case_turn)

    def _labeling(self, fn: Any, *args: Any) -> None:
        """A panel action: its line in the chat, then the list and the case's turn slider follow."""
        try:
            self.app.logic.say("info", fn(*args))
        finally:
            self.show_cases()

    def show_cases(self) -> None:
        panel = self.panel
        with self.app.state as s:
            s.cases = panel.rows()
            shown = (panel.case_id, self.app.volume_node)  # a case opened again has new nodes: its slider restarts
            if shown != self._case_shown:
                self._case_shown = shown
                s.case_id = panel.case_id or ""
                count = panel.turn_count()
                s.case_turn_count, s.case_turn = count, count
                s.case_turn_text = panel.show_turn(count)

    def tick(self, pages: int) -> None:
        """Renew the lease, refresh the list; a problem (a damaged manifest) is said once, not every 2 s."""
        try:
            self.panel.tick(pages)
            self.show_cases()
        except LABELING_ERRORS as exc:
            if str(exc) != self._tick_error:
                self._tick_error = str(exc)
                raise
        else:
            self._tick_error = ""

    def _navigate(self, fn: Any, *args: Any) -> None:
        self.panel.set_reviewer(self.app.state.reviewer)  # a name typed since applies from this case on
        self._labeling(fn, *args)

    def open(self) -> None:
        s = self.app.state
        self.app.guarded(self._labeling, self.panel.open_folder, s.labeling_dir, s.reviewer)

    def next(self) -> None:
        self.app.guarded(self._navigate, self.panel.next)

    def next_unreviewed(self) -> None:
        self.app.guarded(self._navigate, self.panel.next, True)

    def previous(self) -> None:
        self.app.guarded(self._navigate, self.panel.previous)

    def pick(self, case_id: str) -> None:
        self.app.guarded(self._navigate, self.panel.open_case, str(case_id))

    def reload(self) -> None:
        self.app.guarded(self._labeling, self.panel.reload)

    def accept(self) -> None:
        self.app.guarded(self._decide, self.panel.accept)

    def reject(self) -> None:
        self.app.guarded(self._decide, self.panel.reject)

    def save_edit(self) -> None:
        self.app.guarded(self._decide, self.panel.save_edit)

    def _decide(self, fn: Any) -> None:
        self.panel.set_reviewer(self.app.state.reviewer)  # the decision carries the name shown in the page
        self._labeling(fn, self.app.state.review_note)
        self.app.state.review_note = ""  # recorded with this case: never carried to the next one by mistake

    def on_case_turn(self, case_turn: Any = None, **_: Any) -> None:
        if case_turn:
            text = self.app.guarded(self.panel.show_turn, int(case_turn))
            self.app.state.case_turn_text = text or ""
