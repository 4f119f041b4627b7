"""3D propagation in the scene: the session's 2D mask carried slice by slice through the volume on the worker
(MedAgentSegLib.propagation), its progress in the chat, the slices it made written into the segment as one undo
step, a review sequence of them, and re-propagation from a slice the person corrected."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from MedAgentSegLib.images import extract_slice
from MedAgentSegLib.propagation import Propagation, PropagationConfig, PropagationError, propagate, repropagate

from .context import AgentError, Context
from .geometry import GeometryError
from .mrml_writer import TAG_PREFIX, MRMLInputError, SliceReviewRecorder, slice_geometry, view_slice, volume_array_kji
from .runs import AXIS_NAMES, PropagationStep, TargetRun, last_entry, see_volume, undo_entry
from .wording import NOUN, sentence
from .worker import JobResult

__all__ = ["ScenePropagation", "PropagationJob", "PROGRESS_EVERY_S"]

PROGRESS_EVERY_S = 1.0  # at most one "propagating: n slices done" line per second


class PropagationJob:
    """A propagation in flight: its run, Stop's flag and the progress the worker reports (thread-safe)."""

    def __init__(self, run: TargetRun, kind: str):
        self.run, self.kind = run, kind
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        self._done = 0
        self.reported, self.reported_at = 0, 0.0  # main thread only

    def slice_done(self, record: Any, done: int) -> None:  # worker thread (on_slice)
        with self._lock:
            self._done = done

    @property
    def done(self) -> int:
        with self._lock:
            return self._done


class ScenePropagation:
    """engine(name, options): the run's engine (on the worker). sequences_logic: for the review sequence.
    replay_pending(): an edit of the prompts made while it ran runs when it ends. `job`: the propagation in flight."""

    def __init__(self, ctx: Context, engine: Callable[..., Any], sequences_logic: Any,
                 replay_pending: Callable[[], bool]):
        self.ctx, self.engine, self.sequences_logic = ctx, engine, sequences_logic
        self.replay_pending = replay_pending
        self.job: PropagationJob | None = None

    def cancel(self) -> bool:
        """Stop's flag for the propagation in flight (it ends after the slice in progress). False if none runs."""
        if self.job is None:
            return False
        self.job.cancel.set()
        return True

    def propagate(self, run: TargetRun, config: PropagationConfig | None = None) -> bool:
        """Propagate the run's finished 2D mask through the volume along its slice axis (the facade checked the run).
        False, with a chat line saying what to do, when the session has no mask yet."""
        turn = next((t for t in reversed(run.session.turns) if t.produces_mask), None)
        if turn is None or not run.session.mask.any():
            self.ctx.say("error", f"Nothing to propagate yet: '{run.target}' has no mask on slice {run.geom.axis}="
                                  f"{run.geom.index}. Draw the box (and let the agent refine it) until this slice "
                                  "looks right, then press Propagate.")
            return False
        volume, mask = self._volume_copy(run), run.session.mask
        self._submit_propagation(run, "propagate", self._propagate_job, volume, mask, turn.logits, config)
        return True

    def repropagate(self, run: TargetRun, slice_index: int | None, view: str) -> bool:
        """Propagate again from a slice the person corrected in the segment (slice_index; None: the one slice view
        `view` shows). False, with a chat line, before any Propagate."""
        if not run.propagations:
            self.ctx.say("error", "Nothing to re-propagate yet: press Propagate first, then correct a slice with "
                                  f"{self.ctx.words.edit_by_hand} and re-propagate from it.")
            return False
        index = self._view_slice_index(run, view) if slice_index is None else int(slice_index)
        try:
            geom = slice_geometry(run.volume_node, run.geom.axis, index)
        except GeometryError as exc:
            raise AgentError(f"Cannot re-propagate from slice {run.geom.axis}={index}: {exc}.") from None
        mask = run.writer.read_slice(run.segment_id, geom)
        previous = run.propagations[-1].result
        self._submit_propagation(run, "repropagate", self._repropagate_job, self._volume_copy(run), previous, index,
                                 mask)
        return True

    def _view_slice_index(self, run: TargetRun, view: str) -> int:
        node = self.ctx.scene.GetNodeByID(f"vtkMRMLSliceNode{view}")
        if node is None:
            raise AgentError(f"There is no {view} slice view to read the corrected slice from: give the slice, e.g. "
                             "logic.repropagate(slice_index=12).")
        axis, index = view_slice(node, run.volume_node, view)
        if axis != run.geom.axis:
            raise AgentError(f"The {view} view shows a slice normal to {axis}, but '{run.target}' was propagated "
                             f"along {run.geom.axis}: show the corrected {run.geom.axis} slice in that view and try "
                             "again.")
        return index

    @staticmethod
    def _volume_copy(run: TargetRun) -> np.ndarray:
        """The volume's voxels, copied on the main thread: the worker never reads VTK memory MRML may change."""
        if run.volume_node.GetScene() is None or run.volume_node.GetImageData() is None:
            raise AgentError(f"The volume '{run.volume_node.GetName()}' was removed; start a new request.")
        return np.array(volume_array_kji(run.volume_node), copy=True)

    def _submit_propagation(self, run: TargetRun, kind: str, fn: Callable[..., Propagation], *args: Any) -> None:
        job = PropagationJob(run, kind)
        self.job = job
        run.auto_turns_left = 0
        self.ctx.submit(run, kind, fn, job, *args, callback=lambda r: self._on_propagated(job, r))
        what = "Propagating" if kind == "propagate" else "Re-propagating"
        self.ctx.say("info", f"{what} '{run.target}' slice by slice along {run.geom.axis} ({AXIS_NAMES[run.geom.axis]} "
                             "slices of the volume); Stop ends it after the slice in progress.")
        self.ctx.changed()

    def _propagate_job(self, job: PropagationJob, volume: np.ndarray, mask: np.ndarray, logits: Any,
                       config: PropagationConfig | None) -> Propagation:  # worker thread
        run = job.run
        return propagate(self.engine(run.engine_name, run.engine_options), volume, run.geom.index, mask, logits,
                         AXIS_NAMES[run.geom.axis], run.modality, run.window, config, on_slice=job.slice_done,
                         should_stop=job.cancel.is_set)

    def _repropagate_job(self, job: PropagationJob, volume: np.ndarray, previous: Propagation, index: int,
                         mask: np.ndarray) -> Propagation:  # worker thread
        run = job.run
        return repropagate(self.engine(run.engine_name, run.engine_options), volume, previous, index, mask, None,
                           run.modality, run.window, on_slice=job.slice_done, should_stop=job.cancel.is_set)

    def report_progress(self) -> None:
        """The worker's progress as a chat line (main thread): the first at once, then at most one a second."""
        job = self.job
        if job is None:
            return
        done, now = job.done, time.monotonic()
        if done > job.reported and (not job.reported or now - job.reported_at >= PROGRESS_EVERY_S):
            job.reported, job.reported_at = done, now
            self.ctx.say("info", f"propagating: {done} slices done")

    def _on_propagated(self, job: PropagationJob, result: JobResult) -> None:
        self.job = None
        if result.error is None:
            self._apply_propagation(job, result.value)
        elif isinstance(result.error, PropagationError):
            self.ctx.say("error", sentence(f"the {NOUN[job.kind]} cannot run: {result.error}"))
        else:
            self.ctx.report_error(f"The {NOUN[job.kind]} failed", result)
        self.replay_pending()  # the person edited the prompts while it ran
        self.ctx.changed()

    def _apply_propagation(self, job: PropagationJob, prop: Propagation) -> None:
        """Write the slices a finished propagation made (main thread) as one undo step, and say what happened."""
        run = job.run
        masks = _slices_to_write(prop, _propagated_voxels(run))
        if not masks:
            self.ctx.say("agent", self._nothing_found(run, prop))
            return
        try:
            before, masked = self._write_slices(run, masks)
        except Exception as exc:  # _write_slices put back what it wrote
            self.ctx.say("error", f"The propagation could not be written into the scene: {exc}. The segment is "
                                  "unchanged; check that the segmentation and volume still exist and try again.")
            return
        try:
            entry = run.session.add_propagation(prop.summary(job.kind))
        except Exception:  # e.g. accepted meanwhile: nothing of it stays in the scene either
            self._restore_slices(run, before)
            raise
        step = PropagationStep(job.kind, prop, entry, before, sorted(masks), masked)
        run.propagations.append(step)
        see_volume(run)
        self._show_review(run)
        self._set_propagation_tag(run)
        self.ctx.say("agent", self._describe_propagation(run, step))

    def _write_slices(self, run: TargetRun, masks: dict[int, tuple[np.ndarray, np.ndarray]]) -> tuple[dict, int]:
        """On each slice, add the (H, W) mask to the segment and take out the earlier propagations' voxels (the
        second mask) outside it; what else the segment holds there stays. Returns (every segment's slices before,
        voxels the Segment Editor's masking kept). On failure, everything written is put back and the error
        re-raised."""
        for node, what in ((run.segmentation_node, "segmentation"), (run.volume_node, "volume")):
            if node.GetScene() is None:
                raise MRMLInputError(f"the {what} node '{node.GetName()}' was removed from the scene")
        if run.segment() is None:
            raise MRMLInputError(f"segment '{run.segment_id}' was deleted")
        before: dict[int, dict[str, np.ndarray]] = {}
        masked = 0
        try:
            for k, (add, remove) in sorted(masks.items()):
                geom = slice_geometry(run.volume_node, run.geom.axis, k)
                before[k] = run.writer.read_all(geom)
                aimed, stored = run.writer.add_to_slice(run.segment_id, add, remove, geom,
                                                        current=before[k][run.segment_id])
                masked += int((stored != aimed).sum())
        except Exception:
            self._restore_slices(run, before)
            raise
        return before, masked

    @staticmethod
    def _restore_slices(run: TargetRun, before: dict[int, dict[str, np.ndarray]]) -> None:
        for k, snapshot in before.items():
            run.writer.restore(snapshot, slice_geometry(run.volume_node, run.geom.axis, k))

    @staticmethod
    def on_top(run: TargetRun) -> bool:
        """True when the session's last entry (past a stop) is the last propagation: Undo / Reject revert it first."""
        return bool(run.propagations) and last_entry(run) is run.propagations[-1].entry

    def revert(self, run: TargetRun, what: str) -> bool:
        step = run.propagations.pop()
        undo_entry(run, step.entry)
        self._restore_slices(run, step.slices_before)
        see_volume(run)
        self._show_review(run)
        self._set_propagation_tag(run)
        self.ctx.say("info", f"{what}: the {NOUN[step.kind]} was reverted; the {len(step.written)} slice(s) it "
                             "wrote are as before it.")
        self.ctx.changed()
        return True

    def _show_review(self, run: TargetRun) -> None:
        """The review sequence shows the propagation now in the segment: one item per slice, mask and box."""
        if run.review is None:
            if not run.propagations:
                return
            run.review = SliceReviewRecorder(self.ctx.scene, f"MedAgentSeg {run.segment().GetName()}",
                                             self.sequences_logic)
        prop = run.propagations[-1].result if run.propagations else None
        items = [] if prop is None else [
            (slice_geometry(run.volume_node, run.geom.axis, r.index), extract_slice(prop.mask, r.index, prop.axis),
             r.box, {k: v for k, v in asdict(r).items() if k not in ("mask_rle", "refined")})
            for r in sorted(prop.records, key=lambda r: r.index)]
        run.review.show(items, run.segment(), run.segment_id)

    def _set_propagation_tag(self, run: TargetRun) -> None:
        segment = run.segment()
        if segment is None:
            return
        if not run.propagations:
            segment.RemoveTag(TAG_PREFIX + "Propagation")
            return
        prop = run.propagations[-1].result
        segment.SetTag(TAG_PREFIX + "Propagation", json.dumps({
            "axis": run.geom.axis, "start": prop.start, "slices": prop.slices, "stopped": prop.stopped,
            "restarted_at": prop.restarted_at}))

    @staticmethod
    def _nothing_found(run: TargetRun, prop: Propagation) -> str:
        where = f"{run.geom.axis}={prop.start if prop.restarted_at is None else prop.restarted_at}"
        if prop.stopped:
            return f"The propagation was stopped before it found anything beyond slice {where}; the segment is " \
                   "unchanged. Press Propagate to run it again."
        return f"The propagation found nothing beyond slice {where}: on the next slices the engine's masks were " \
               "empty or too unsure, so the structure seems to end there. The segment is unchanged; check this " \
               "slice's mask, or start from a slice nearer the structure's middle."

    def _describe_propagation(self, run: TargetRun, step: PropagationStep) -> str:
        prop, axis = step.result, run.geom.axis
        made = [k for k in step.written if extract_slice(prop.mask, k, prop.axis).any()]
        span = f"{axis}={made[0]}..{made[-1]}" if made else "none"
        cleared = len(step.written) - len(made)
        extra = f"; the earlier propagation's voxels were removed from {cleared} slice(s) where it found nothing " \
                "(your own painting there stays)" if cleared else ""
        if step.masked_voxels:
            extra += f"; the editor's masking kept {step.masked_voxels} voxel(s) unchanged"
        if prop.stopped:
            head = f"The {NOUN[step.kind]} was stopped after {len(made)} slice(s) ({span}){extra}. The slices " \
                   "done so far are kept; Propagate runs it again."
        elif step.kind == "repropagate":
            head = f"Re-propagated '{run.target}' from your corrected slice {axis}={prop.restarted_at}: " \
                   f"{len(made)} slice(s) beyond it made again ({span}){extra}."
        else:
            head = f"Propagated '{run.target}' from slice {axis}={prop.start} to {len(made)} more slice(s) " \
                   f"({span}){extra}."
        return f"{head} Undo reverts it in one step; to fix a slice, correct it with {self.ctx.words.edit_by_hand} " \
               "and say 're-propagate' with the view on that slice."


def _propagated_voxels(run: TargetRun) -> dict[int, np.ndarray]:
    """Slice index -> (H, W) mask the propagations now in the segment wrote there (the latest one to write a slice
    replaced what the ones before wrote on it). Voxels the person painted that a propagation also wrote count as
    the propagation's: a later propagation may take them out if it does not make them again."""
    out: dict[int, np.ndarray] = {}
    for step in run.propagations:
        for k in step.written:
            out[k] = extract_slice(step.result.mask, k, step.result.axis)
    return out


def _slices_to_write(prop: Propagation, propagated: dict[int, np.ndarray]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Slice index -> ((H, W) mask to add, (H, W) voxels to take out) for the slices a propagation made: those
    beyond its start (both ways) or, for a re-propagation, beyond the corrected slice, away from the first start.

    `propagated` holds what earlier propagations wrote (`_propagated_voxels`): on the slices beyond, only those
    voxels are taken out, so whatever else the segment holds there (the person's painting) stays and the mask is
    added to it. Slices beyond where it found nothing are written only to take out what an earlier propagation
    wrote there (a re-propagation clears the previous one's slices beyond the corrected slice)."""
    index = prop.start if prop.restarted_at is None else prop.restarted_at

    def beyond(k: int) -> bool:
        return k != index and (index == prop.start or (k - index) * (index - prop.start) > 0)

    out = {}
    for r in prop.records:
        mask = extract_slice(prop.mask, r.index, prop.axis)
        if beyond(r.index) and mask.any():
            out[r.index] = (mask.copy(), propagated.get(r.index, np.zeros_like(mask)))
    for k, old in sorted(propagated.items()):
        if beyond(k) and k not in out and old.any():
            out[k] = (np.zeros_like(old), old)
    return out
