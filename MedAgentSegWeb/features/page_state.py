"""What the page shows of the logic: the chat, the status line, which buttons are enabled, the turn slider and the
propagation's progress bar. `sync` runs on the server's event loop after every poll and every action."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from MedAgentSegModuleLib.agent_logic import POLICY_CHOICES, default_engine, default_policy, engine_choices

from ..review import show_turn
from .progress import is_progress_line, propagation_progress

__all__ = ["PageState", "PAGE_POLICIES", "NO_VOLUME"]

# The page has no reference segment (the oracle's) and no local multimodal model folder (mllm's): it offers only
# the agents it can run.
PAGE_POLICIES = [p for p in POLICY_CHOICES if p not in ("oracle", "mllm")]
NO_VOLUME = "No volume yet: open one (path or upload) or load the sample."


class PageState:
    """The page's state over `app` (a WebApp: state, logic, volume_node)."""

    def __init__(self, app: Any, out_dir: str | None):
        self.app = app
        self.logic = app.logic
        self._shown_turns = 0
        self._shown_messages = 0
        s = app.state
        s.trame__title = "MedAgentSeg"
        s.messages = []
        s.request = ""
        s.busy, s.busy_text, s.status = False, "", NO_VOLUME
        s.progress_value, s.progress_text, s.propagating = 0, "", False
        s.engines, s.engine = engine_choices(), default_engine()
        policy = default_policy()
        s.policies, s.policy = PAGE_POLICIES, policy if policy in PAGE_POLICIES else PAGE_POLICIES[0]
        s.checkpoint, s.max_turns = "", 5
        s.path = ""
        s.save_dir = str(Path(out_dir) if out_dir else Path.cwd() / "medagentseg-web")
        s.turn, s.turn_count = 0, 0
        s.has_volume = s.has_run = s.can_act = s.can_revert = s.can_undo = s.can_run = s.can_stop = s.can_edit = False
        s.volume_name = ""
        s.cases, s.case_id, s.review_note = [], "", ""
        s.case_turn, s.case_turn_count, s.case_turn_text = 0, 0, ""

    def sync(self) -> None:
        """Push what changed in the logic to the page."""
        logic, run = self.logic, self.logic.active
        with self.app.state as s:
            if self._shown_messages != len(logic.messages):
                self._shown_messages = len(logic.messages)
                s.messages = [{"role": m.role, "text": m.text} for m in logic.messages
                              if not (m.role == "info" and is_progress_line(m.text))]
            busy = logic.busy
            open_run = run is not None and run.status != "accepted"
            ready = open_run and run.session is not None
            values = {"busy": busy, "busy_text": self._busy_text(run) if busy else "",
                      "has_volume": self.app.volume_node is not None, "has_run": run is not None,
                      "can_act": ready and not busy, "can_revert": ready and not busy and bool(run.records),
                      # Undo also takes back a propagation or a stroke on another slice, with no turn written
                      "can_undo": ready and not busy and bool(run.records or run.propagations or run.slice_edits),
                      "can_run": ready and not busy, "can_stop": open_run, "can_edit": ready and not busy,
                      "status": self._status(run, busy), **self._progress()}
            for key, value in values.items():
                if s[key] != value:
                    s[key] = value
            count = len(run.records) if run is not None else 0
            if count != self._shown_turns:  # a new or reverted turn: the slider follows, the views show it live
                self._shown_turns = count
                s.turn_count, s.turn = count, count
                if run is not None:
                    show_turn(run, None, self.logic.sequences_logic)

    def _progress(self) -> dict[str, Any]:
        progress = propagation_progress(self.logic)
        if progress is None:
            return {"propagating": False, "progress_value": 0, "progress_text": ""}
        done, total = progress
        return {"propagating": True, "progress_value": round(100.0 * done / total) if total else 0,
                "progress_text": f"Propagating: {done} of at most {total} slices done. Stop keeps them."}

    @staticmethod
    def _busy_text(run: Any) -> str:
        if run is not None and run.session is None:
            return "Encoding the slice (the first time also loads the engine)..."
        return "The agent is working on a turn..."

    def _status(self, run: Any, busy: bool) -> str:
        if self.app.volume_node is None:
            return NO_VOLUME
        if run is None:
            return f"'{self.app.volume_node.GetName()}': type a request such as 'segment the liver'."
        return (f"'{run.target}' on slice {run.geom.axis}={run.geom.index}: {len(run.records)} turn(s), "
                f"{run.status}{', working...' if busy else ''}")
