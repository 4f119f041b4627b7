"""Writing a session's turns into MRML: the segment slice, the markups, the sequence item and the tags together,
all put back if any write fails; revert (Undo / Reject), Accept's freeze. A person's hand edits are hand_edits.py."""

from __future__ import annotations

import slicer

from MedAgentSegLib.session import Turn

from .context import Context
from .mrml_writer import TAG_PREFIX, MRMLInputError
from .runs import TargetRun, TurnRecord, see_volume, set_tags
from .wording import describe_action, describe_decision

__all__ = ["TurnWriter"]


class TurnWriter:
    """Writes and reverts turns on the main thread. `writing` is True while it changes the markups, so the markups'
    own events are not taken for the person's edits."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.writing = False

    def apply_turn(self, run: TargetRun, turn: Turn) -> TurnRecord:
        """Write one mask-producing turn (main thread): segment slice, markups, sequence item, tags."""
        for node, what in ((run.segmentation_node, "segmentation"), (run.volume_node, "volume")):
            if node.GetScene() is None:
                run.session.undo()
                raise MRMLInputError(f"the {what} node '{node.GetName()}' was removed from the scene")
        if run.segment() is None:
            run.session.undo()
            raise MRMLInputError(f"segment '{run.segment_id}' was deleted")
        number = len(run.records) + 1
        rec = TurnRecord(number, turn, run.writer.read_all(run.geom))
        self.writing = True
        try:
            stored = run.writer.write_slice(run.segment_id, turn.mask, run.geom)
            run.prompts.write(turn.prompts, run.geom)
            rec.masked_voxels = int((stored != turn.mask).sum())
            run.records.append(rec)
            set_tags(run)
            run.recorder.record(number, run.segmentation_node, run.segment_id, run.prompts, rec.record)
            run.shown = run.writer.read_all(run.geom)
            see_volume(run)
        except Exception:
            if run.records and run.records[-1] is rec:
                run.records.pop()
            run.session.undo()
            run.writer.restore(rec.segments_before, run.geom)
            run.prompts.write(run.session.prompts, run.geom)
            while run.recorder.count > len(run.records):
                run.recorder.remove_last()
            set_tags(run)
            raise
        finally:
            self.writing = False
        extra = f"; the editor's masking kept {rec.masked_voxels} voxel(s) unchanged" if rec.masked_voxels else ""
        if turn.update == "disk":  # tell the user the model did not follow the click
            extra += "; the model ignored this click, so only a small disk around it was changed"
        score = "n/a" if turn.score is None else f"{turn.score:.2f}"
        who = "You" if turn.source == "user" else "Agent"
        decision = describe_decision(turn.action) if turn.source == "agent" else None
        # "predicted IoU": the engine's own estimate of its mask; the agent's confidence is said beside its reason
        stats = f"predicted IoU {score}, {turn.timings.get('engine_s', 0.0):.2f} s, {int(turn.mask.sum())} px{extra}"
        if decision:
            what = describe_action(turn.action, turn.prompts.to_dict())
            self.ctx.say("agent", f"Turn {number} ({who}): {decision} ({what}; {stats}).",
                         number)
        else:
            what = describe_action(turn.action, turn.prompts.to_dict())
            self.ctx.say("agent", f"Turn {number} ({who}): {what} - {stats}.", number)
        return rec

    def unwrite_last(self, run: TargetRun) -> TurnRecord:
        """Put the segment slices, markups and sequence back as before the last written turn (main thread)."""
        rec = run.records[-1]
        self.writing = True
        try:
            run.writer.restore(rec.segments_before, run.geom)
            # The markups show the session's prompts, never a copy taken when the turn was written: for a person's
            # click that copy already held the new click, so Undo left it in view and the next edit re-ran with it.
            run.prompts.write(run.session.prompts, run.geom)
            run.recorder.remove_last()
            run.records.pop()
            set_tags(run)
            run.shown = run.writer.read_all(run.geom)
            see_volume(run)
        finally:
            self.writing = False
        return rec

    def take_back_in_scene(self, run: TargetRun) -> TurnRecord | None:
        """The agent took back its own last turn (session.reverted grew): show the turn before in the scene."""
        popped = run.session.reverted[-1]
        rec = run.records[-1] if run.records else None
        if rec is None or rec.session_index != popped.get("index"):  # the scene does not show that turn
            self.ctx.say("warning", "The agent took back a turn the scene does not show; the scene is left as it is.")
            return None
        self.unwrite_last(run)
        return rec

    def restore_prompts_view(self, run: TargetRun) -> None:
        if run.session is None:
            return
        self.writing = True
        try:
            run.prompts.write(run.session.prompts, run.geom)
        finally:
            self.writing = False

    def revert_last(self, run: TargetRun, what: str) -> bool:
        """Revert the last mask-producing turn (what: "Undo" / "Reject turn", for the chat). False if there is none."""
        if not run.records:
            self.ctx.say("info", f"Nothing to {what.lower()}: no turn has been written yet.")
            return False
        rec = run.records[-1]
        undone = describe_action(rec.turn.action, rec.turn.prompts.to_dict())
        while run.session.turns and len(run.session.turns) - 1 > rec.session_index:
            run.session.undo()  # a stop after the mask turn
        run.session.undo()
        self.unwrite_last(run)
        self.ctx.say("info", f"{what}: turn {rec.number} reverted ({undone}).",
                     rec.number)
        self.ctx.changed()
        return True

    def freeze(self, run: TargetRun) -> None:
        """Accept's scene part: markups locked, segment tagged Locked and status Completed, the chat told."""
        run.prompts.set_locked(True)
        segment = run.segment()
        segment.SetTag(TAG_PREFIX + "Locked", "true")
        try:
            slicer.vtkSlicerSegmentationsModuleLogic.SetSegmentStatus(
                segment, slicer.vtkSlicerSegmentationsModuleLogic.Completed)
        except (AttributeError, TypeError):
            segment.SetTag("Segmentation.Status", "completed")
        set_tags(run)
        self.ctx.say("info", f"Accepted '{run.target}' after {len(run.records)} turn(s); the segment is now frozen.")
