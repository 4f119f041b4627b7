"""A person's hand edits (paint, erase, scissors) as entries of the session's one history (issues #24, #25).

On the session's slice a stroke becomes a turn (`Session.add_edit`): the next click refines the drawn mask. On any
other slice of the volume it becomes a slice-edit entry (`Session.add_slice_edit`), found by comparing every
segment with the volume as the logic last left it (`runs.see_volume`, taken while a hand tool is on), so Undo puts
every segment on that slice back as it was, and a re-propagation from that slice starts from it. Main thread.
"""

from __future__ import annotations

import numpy as np

from .context import Context
from .mrml_volume import slice_geometry
from .runs import SliceEditStep, TargetRun, TurnRecord, last_entry, see_volume, set_tags, turn_record, undo_entry

__all__ = ["HandEdits", "VERBS"]

VERBS = {"paint": "painted", "erase": "erased", "scissors": "cut with scissors"}


class HandEdits:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def watch(self, run: TargetRun) -> None:
        """A hand tool is on for `run`: from now a stroke on any slice can be found and undone."""
        see_volume(run, start=True)

    def unwatch(self, run: TargetRun) -> None:
        run.volume_seen = None

    def record(self, run: TargetRun, tool: str) -> bool:
        """Record what the person drew since the logic last wrote (the facade checked the run and the tool): other
        slices first, as one slice-edit entry, then the session's slice, as one turn. False if nothing changed."""
        others = self._other_slices(run)
        recorded = False
        if others:
            self._record_slices(run, tool, others)
            recorded = True
        if self._record_session_slice(run, tool):
            recorded = True
        if recorded:  # _other_slices already took the volume as the stroke left it: no second read
            run.auto_turns_left = 0
            self.ctx.changed()
        return recorded

    def on_top(self, run: TargetRun) -> bool:
        return bool(run.slice_edits) and last_entry(run) is run.slice_edits[-1].entry

    def revert(self, run: TargetRun, what: str) -> bool:
        """Undo / Reject of the last slice edit: every segment on its slices as before the stroke."""
        step = run.slice_edits.pop()
        undo_entry(run, step.entry)
        for k, snapshot in step.slices_before.items():
            run.writer.restore(snapshot, slice_geometry(run.volume_node, run.geom.axis, k))
        see_volume(run)
        where = ", ".join(f"{run.geom.axis}={k}" for k in sorted(step.slices_before))
        self.ctx.say("info", f"{what}: your edit on slice {where} was reverted; the slice is as before it.")
        self.ctx.changed()
        return True

    # -- the two kinds ---------------------------------------------------------------------------------------------
    def _other_slices(self, run: TargetRun) -> dict[int, dict[str, np.ndarray]]:
        """Slice index -> every segment's slice before the stroke, for the slices (not the session's) that changed."""
        if run.volume_seen is None:
            return {}
        axis = "KJI".index(run.geom.axis)  # KJI arrays
        before = run.volume_seen
        see_volume(run)
        now = run.volume_seen
        changed: set[int] = set()
        for sid in set(before) | set(now):
            a, b = before.get(sid), now.get(sid)
            if a is None or b is None or a.shape != b.shape:
                continue
            diff = a != b
            changed |= {int(k) for k in np.nonzero(diff.any(axis=tuple(i for i in range(3) if i != axis)))[0]}
        changed.discard(run.geom.index)
        out: dict[int, dict[str, np.ndarray]] = {}
        for k in sorted(changed):
            geom = slice_geometry(run.volume_node, run.geom.axis, k)
            out[k] = {sid: np.ascontiguousarray(geom.extract(vol)) for sid, vol in before.items() if sid in now}
        return out

    def _record_slices(self, run: TargetRun, tool: str, before: dict[int, dict[str, np.ndarray]]) -> None:
        entry = run.session.add_slice_edit(tool, sorted(before), run.geom.axis)
        run.slice_edits.append(SliceEditStep(entry, before))
        where = ", ".join(f"{run.geom.axis}={k}" for k in sorted(before))
        self.ctx.say("agent", f"You {VERBS.get(tool, 'edited by hand')} on slice {where} (not this session's slice "
                              f"{run.geom.axis}={run.geom.index}). Undo takes it back; {self.ctx.words.repropagate} "
                              "carries it through the volume.")

    def _record_session_slice(self, run: TargetRun, tool: str) -> bool:
        mask = run.writer.read_slice(run.segment_id, run.geom)
        if np.array_equal(mask, run.session.mask):
            return False
        before = run.shown
        if before is None:  # nothing written yet: the segments as they are, with this segment as the session had it
            before = run.writer.read_all(run.geom)
            before[run.segment_id] = run.session.mask
        if run.session.status == "stopped":
            run.session.undo()
        turn = run.session.add_edit(mask, tool, source="user")
        number = len(run.records) + 1
        rec = TurnRecord(number, turn, before)
        run.records.append(rec)
        try:
            set_tags(run)
            run.recorder.record(number, run.segmentation_node, run.segment_id, run.prompts, turn_record(number, turn))
        except Exception:
            run.records.pop()
            run.session.undo()
            while run.recorder.count > len(run.records):
                run.recorder.remove_last()
            set_tags(run)
            raise
        run.shown = run.writer.read_all(run.geom)
        self.ctx.say("agent", f"Turn {number} (You): {VERBS.get(tool, 'edited by hand')} on slice {run.geom.axis}="
                              f"{run.geom.index} - {int(mask.sum())} px. Undo takes it back; a click or Run refines "
                              "from it.", number)
        return True
