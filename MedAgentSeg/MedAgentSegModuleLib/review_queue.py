"""Reviewing a labeling folder in the scene (issue #19): the Slicer side of MedAgentSegLib.labeling.review.

No Qt, no trame: the module's widget only wires buttons to `LabelingReviewLogic`, which raises `ReviewError` (a
sentence) for anything it cannot do. Leases, statuses and files are the library's `ReviewQueue`; this puts the open
case into MRML and reads the reviewed mask back:
- the image as a scalar volume on the grid its seg.nrrd was written on (as `segment` read it; RGB shown as grey),
- the mask (final if one was saved, else the agent's) as a segmentation node, the one edits go into,
- the pre-label's turns as a sequence (`TrajectoryRecorder`: mask and prompts per turn, scrubbed in Sequences), and
  a volume's propagation as another (`SliceReviewRecorder`: each propagated slice's mask and box).
Moving to another case removes these nodes and gives the lease back. The agent (`AgentSegLogic`, optional) edits
the case like any segmentation; its turns since the last save are recorded as the agent's (or the person's, for the
prompts they placed), and a change to the mask that no agent turn made as a human edit.
Threading: everything here is MRML work on the main thread; the agent's model work stays on its worker.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from MedAgentSegLib import images, rle
from MedAgentSegLib.engines.base import Prompts
from MedAgentSegLib.labeling.review import LeaseHeldElsewhere, LeaseTaken, ReviewCase, ReviewError, ReviewQueue

from .mrml_writer import (
    BINARY,
    PromptNodes,
    SliceReviewRecorder,
    TrajectoryRecorder,
    check_volume,
    ensure_scene_logics,
    segment_kji,
    slice_geometry,
    slice_image,
    vtk_matrix,
)

__all__ = ["LabelingReviewLogic", "ReviewError", "LeaseHeldElsewhere", "image_volume", "load_segmentation",
           "segment_kji", "trajectory_sequence", "propagation_sequence"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
COLOUR_IMAGE = "MedAgentSeg.ColourImage"  # attribute of a grey volume shown for a colour 2D image: its file
AXIS_IJK = {"axial": "K", "coronal": "J", "sagittal": "I", None: "K"}  # MedAgentSegLib.images.AXES


def image_volume(scene: Any, path: str, name: str) -> Any:
    """A scalar volume node of the image as MedAgentSegLib.images reads it (the grid of the case's seg.nrrd); a 2D
    image is one slice, an RGB one its luminance (the slice views and the agent's checks want one component)."""
    img = images.load_image(path)
    arr = img.array
    if not img.is_3d:
        if arr.ndim == 3:
            arr = np.tensordot(arr[..., :3].astype(np.float32), np.float32([0.299, 0.587, 0.114]), axes=1)
        arr = arr[None]
    data = vtk.vtkImageData()
    data.SetDimensions(arr.shape[2], arr.shape[1], arr.shape[0])
    data.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(arr).reshape(-1), deep=True))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    node.SetAndObserveImageData(data)
    node.SetIJKToRASMatrix(vtk_matrix(LPS_TO_RAS @ images.ijk_to_lps(img)))
    node.CreateDefaultDisplayNodes()
    check_volume(node)
    if not img.is_3d and img.array.ndim == 3:  # the agent reads the colour frame, as `label` did, not the grey view
        node.SetAttribute(COLOUR_IMAGE, str(path))
    return node


def load_segmentation(scene: Any, path: Any, volume: Any, name: str) -> Any:
    """A segmentation node read from a .seg.nrrd (Slicer's own reader), its reference geometry the volume's."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    ok = storage.ReadData(node)
    scene.RemoveNode(storage)  # the case's file is never written through the scene
    if not ok or node.GetSegmentation().GetNumberOfSegments() == 0:
        scene.RemoveNode(node)
        raise ReviewError(f"cannot read {path} as a segmentation; restore it, or delete the case's manifest line and "
                          "run `medagentseg label` again for it")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    return node


def empty_segmentation(scene: Any, volume: Any, name: str, target: str) -> Any:
    """A segmentation node on the volume's grid with one empty segment named `target` (a case with no pre-label)."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    node.GetSegmentation().AddEmptySegment(target, target)
    return node


def write_segmentation(scene: Any, segmentation: Any, path: Path) -> Path:
    """The segment as a .seg.nrrd on its reference grid (not cropped to the segment), through Slicer's writer."""
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    try:
        storage.SetFileName(str(path))
        storage.SetCropToMinimumExtent(False)
        if not storage.WriteData(segmentation):
            raise ReviewError(f"could not write the segment to {path}: is the disk full?")
    finally:
        scene.RemoveNode(storage)
    return path


def trajectory_sequence(scene: Any, volume: Any, segmentation: Any, segment_id: str, trajectory: dict[str, Any],
                        sequences_logic: Any, base_name: str) -> TrajectoryRecorder:
    """The pre-label's turns (a MedAgentSegLib trajectory) as one sequence item each: its mask on its slice and its
    prompts, as the module records a live session's turns."""
    meta = trajectory.get("metadata") or {}
    geom = slice_geometry(volume, AXIS_IJK.get(meta.get("axis"), "K"), int(meta.get("slice") or 0))
    recorder = TrajectoryRecorder(scene, base_name, sequences_logic)
    prompts = PromptNodes.create(scene, f"{base_name} turn")
    source = segmentation.GetSegmentation().GetSegment(segment_id)
    scratch = slicer.vtkMRMLSegmentationNode()  # not in the scene: only copied into the sequence
    scratch.GetSegmentation().SetSourceRepresentationName(BINARY)
    try:
        for n, turn in enumerate(trajectory.get("turns") or [], 1):
            segment = slicer.vtkSegment()
            segment.SetName(source.GetName())
            segment.SetColor(source.GetColor())
            segment.AddRepresentation(BINARY, slice_image(rle.decode(turn["mask_rle"]).astype(bool), geom))
            scratch.GetSegmentation().RemoveAllSegments()
            scratch.GetSegmentation().AddSegment(segment, segment_id)
            prompts.write(Prompts.from_dict(turn.get("prompts") or {}), geom)
            recorder.record(n, scratch, segment_id, prompts, {"turn": n, "source": turn.get("source"),
                                                               "action": turn.get("action")})
    finally:
        prompts.remove_from_scene(scene)
    return recorder


def propagation_sequence(scene: Any, volume: Any, segmentation: Any, segment_id: str, propagation: dict[str, Any],
                         sequences_logic: Any, base_name: str) -> SliceReviewRecorder:
    """A propagation.json (MedAgentSegLib.propagation) as one sequence item per propagated slice: its mask and box."""
    axis = AXIS_IJK.get(propagation.get("axis"), "K")
    items = []
    for rec in propagation.get("slices") or []:
        geom = slice_geometry(volume, axis, int(rec["index"]))
        box = tuple(float(v) for v in rec["box"]) if rec.get("box") else None
        items.append((geom, rle.decode(rec["mask_rle"]).astype(bool), box,
                      {k: v for k, v in rec.items() if k != "mask_rle"}))
    recorder = SliceReviewRecorder(scene, base_name, sequences_logic)
    recorder.show(items, segmentation.GetSegmentation().GetSegment(segment_id), segment_id)
    return recorder


def _in_scene(run: Any) -> list[Any]:
    """The session's timeline as the scene shows it: the turns written into it, its propagations and slice edits
    (a stop writes nothing; a turn the worker made is not in the scene until the main thread writes it)."""
    shown = {id(r.turn) for r in run.records} | {id(s.entry) for s in run.propagations} | \
        {id(s.entry) for s in run.slice_edits}
    return [t for t in run.session.turns if id(t) in shown]


class LabelingReviewLogic:
    """One reviewer going through a labeling folder in `scene`.

    agent: the module's AgentSegLogic, if the reviewer may run the agent on a case; its on_change is chained so each
    agent change is seen (once per logic: a front end makes one and opens each folder with it). on_change(): called
    when the case or its status changed. clock: for the leases and the list refresh (tests).
    """

    def __init__(self, scene: Any, reviewer: str, agent: Any = None, lease_seconds: float = 1800.0,
                 clock: Callable[[], float] = time.time, sequences_logic: Any = None,
                 on_change: Callable[[], None] | None = None):
        self.scene = scene
        self.reviewer = self._name(reviewer) if reviewer else ""  # checked when a folder is opened
        self.agent = agent
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.on_change = on_change
        self.sequences_logic = sequences_logic or (agent.sequences_logic if agent is not None
                                                   else ensure_scene_logics(scene))
        self.queue: ReviewQueue | None = None
        self.case: ReviewCase | None = None
        self.volume = self.segmentation = self.trajectory = self.propagation = None
        self.segment_id: str | None = None
        self._nodes: list[Any] = []
        self._pending: list[dict[str, Any]] = []  # provenance since the last save
        self._explained: np.ndarray | None = None  # the mask as the last save or agent change left it
        self._seen: dict[Any, list[Any]] = {}  # agent run key -> its session's timeline (Turns) as accounted for
        self._renewed = 0.0
        self._rows_read, self._rows_seen = float("-inf"), None  # the list as a front end's timer last saw it
        if agent is not None:
            chained = agent.on_change

            def changed() -> None:
                self.agent_changed()
                if chained is not None:
                    chained()

            agent.on_change = changed

    # -- folder and cases -----------------------------------------------------------------------------------------
    def open_folder(self, folder: str, reviewer: str | None = None) -> list[dict[str, Any]]:
        """Open the --out folder of `medagentseg label` (as `reviewer`, default the name so far); returns its rows
        (see `rows`). Refused while the open case has unsaved edits (they are never dropped by opening a folder)."""
        name = self._name(reviewer if reviewer is not None else self.reviewer)
        queue = ReviewQueue(folder, name, lease_seconds=self.lease_seconds, clock=self.clock)
        self.close(drop_edits=False)
        self.queue, self.reviewer = queue, name
        return self.rows()

    @staticmethod
    def _name(name: Any) -> str:
        name = " ".join(str(name or "").split())
        if not name:
            raise ReviewError("Type your name in 'Reviewer' first: the manifest records who decided each case.")
        return name

    def set_reviewer(self, name: str) -> None:
        """A name typed in the front end since the folder was opened takes over: the open case is given back and
        opened again under it (refused first while it has unsaved edits), so decisions and leases carry the name
        shown. Without an open folder it is the name the next folder opens with."""
        name = self._name(name)
        if name == self.reviewer:
            return
        if self.queue is None:
            self.reviewer = name
            return
        if self.case is not None and self.dirty():
            raise ReviewError(f"Case {self.case.case_id} was edited as {self.reviewer} and is not saved: put "
                              f"'{self.reviewer}' back in 'Reviewer' and press Save edit (or Reload case to drop the "
                              "edit), then change the name.")
        here = self.case.case_id if self.case is not None else None
        self.open_folder(str(self.queue.folder), reviewer=name)  # gives the case back under the old name
        if here is not None:  # the same case under the new name: Next / Previous go on from where it was
            try:
                self.open_case(here)
            except ReviewError:  # taken meanwhile: they start from the top
                pass

    def changed_rows(self, every: float = 3.0) -> list[dict[str, Any]] | None:
        """From a front end's timer: the rows read again at most every `every` seconds (other reviewers' leases and
        decisions); None when not due or nothing changed, so the list is redrawn only then."""
        now = self.clock()
        if self.queue is None or now - self._rows_read < every:
            return None
        self._rows_read = now
        rows = self.rows()
        if rows == self._rows_seen:
            return None
        self._rows_seen = rows
        return rows

    def rows(self) -> list[dict[str, Any]]:
        """One row per case: id, status, who (holds it now, or decided it), note."""
        if self.queue is None:
            return []
        leases = self.queue.leases()
        rows = []
        for rec in self.queue.cases():
            lease = leases.get(rec["case_id"])
            held = lease is not None and lease.token != self.queue.token  # this reviewer's other window too
            rows.append({"id": rec["case_id"], "status": rec["status"], "note": rec.get("review_note") or "",
                         "who": f"{lease.reviewer} (reviewing)" if held else (rec.get("reviewer") or "")})
        return rows

    def next(self, unreviewed_only: bool = False) -> ReviewCase | None:
        """Open the next case (another reviewer's skipped); None, with nothing changed, when there is none."""
        queue = self._queue()
        self._before_leaving()
        here = cid = self.case.case_id if self.case else None
        while (cid := queue.next_case(cid, unreviewed_only)) not in (None, here):
            try:
                return self.open_case(cid)
            except LeaseTaken:  # taken between the two calls: the one after it
                continue
        return None

    def previous(self) -> ReviewCase | None:
        queue = self._queue()
        self._before_leaving()
        cid = queue.previous_case(self.case.case_id if self.case else None)
        return None if cid is None else self.open_case(cid)

    def held_elsewhere(self, case_id: str) -> bool:
        """This reviewer holds the case in another window (or one that crashed); open_case(take_over=True) takes it."""
        lease = self._queue().leases().get(case_id)
        return lease is not None and lease.reviewer == self.reviewer and lease.token != self.queue.token

    def open_case(self, case_id: str, drop_edits: bool = False, take_over: bool = False) -> ReviewCase:
        """Take the case's lease (LeaseTaken if another reviewer holds it: nothing changes) and show it; the case
        before is given back and its nodes removed. Refused while the open case has unsaved edits, unless
        `drop_edits` (e.g. the open case again, as last saved). take_over: the case held by this reviewer in
        another window is taken from it (after a crash; LeaseHeldElsewhere without it)."""
        queue = self._queue()
        if drop_edits:
            if self.agent is not None and self.agent.busy:
                raise ReviewError("the agent is still working on a turn: wait for it or press Stop first")
        else:
            self._before_leaving()
        case = queue.open(case_id, take_over=take_over)  # releases the case before
        self._clear()
        try:
            self._load(case)
        except Exception:
            self._clear()
            queue.release(case_id)
            raise
        self.case = case
        self._renewed = self.clock()
        self._changed()
        return case

    def _load(self, case: ReviewCase) -> None:
        try:
            self.volume = image_volume(self.scene, case.image, case.case_id)
        except (images.ImageError, ValueError) as exc:
            raise ReviewError(f"case {case.case_id}: cannot show its image ({exc})") from None
        self._nodes.append(self.volume)
        if case.mask is None:  # "needs prompt": an empty segment of the target, which the reviewer segments
            self.segmentation = empty_segmentation(self.scene, self.volume, f"{case.case_id} to segment",
                                                   str(case.record.get("target") or "target"))
        else:
            name = f"{case.case_id} {'final' if case.final else 'pre-label'}"
            self.segmentation = load_segmentation(self.scene, case.mask, self.volume, name)
        self._nodes.append(self.segmentation)
        self.segment_id = self.segmentation.GetSegmentation().GetNthSegmentID(0)
        self._explained = segment_kji(self.segmentation, self.segment_id, self.volume)
        self._pending, self._seen = [], self._agent_counts()
        if case.trajectory is not None:
            from MedAgentSegLib.session import load_trajectory

            try:
                trajectory = load_trajectory(case.trajectory)
            except ValueError as exc:
                raise ReviewError(f"case {case.case_id}: {exc}") from None
            self.trajectory = trajectory_sequence(self.scene, self.volume, self.segmentation, self.segment_id,
                                                  trajectory, self.sequences_logic, f"{case.case_id} pre-label")
            self._keep(self.trajectory)
        if case.propagation is not None:
            try:
                propagation = json.loads(case.propagation.read_text(encoding="utf-8"))
                self.propagation = propagation_sequence(self.scene, self.volume, self.segmentation, self.segment_id,
                                                        propagation, self.sequences_logic, f"{case.case_id} pre-label")
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                raise ReviewError(f"{case.propagation} is not a propagation record ({exc}); restore it from the "
                                  "batch's outputs") from None
            self._keep(self.propagation)

    def _keep(self, recorder: Any) -> None:
        """The recorder's sequences, browser and proxy nodes go with the case."""
        proxies = [recorder.browser.GetProxyNode(seq) for seq in recorder.sequences.values()]
        self._nodes += [*recorder.nodes(), *(p for p in proxies if p is not None)]

    def _clear(self) -> None:
        """Remove the open case's nodes (the agent's runs on them go with them). While the agent works on a turn it
        raises (AgentError) with nothing changed."""
        segmentation, case = self.segmentation, self.case
        if self.agent is not None and segmentation is not None:
            self.segmentation, self.case = None, None  # no agent change counted while its runs are dropped
            try:
                self.agent.discard_runs(segmentation)
            except Exception:
                self.segmentation, self.case = segmentation, case
                raise
        self.segmentation, self.case = None, None
        for node in self._nodes:
            if node.GetScene() is not None:
                self.scene.RemoveNode(node)
        self._nodes, self.volume, self.trajectory, self.propagation = [], None, None, None
        self.segment_id, self._pending, self._explained = None, [], None

    def close(self, drop_edits: bool = True) -> None:
        """Remove the open case's nodes and give it back (the folder stays open); nothing changes while the agent
        works on a turn. drop_edits=False: refused (ReviewError) while the case has unsaved edits."""
        if not drop_edits and self.case is not None:
            self._before_leaving()
        self._clear()  # first: it refuses while the agent is busy, and the lease must not go before the nodes
        if self.queue is not None:
            self.queue.close()
        self._changed()

    # -- deciding ---------------------------------------------------------------------------------------------------
    def accept(self, note: str | None = None) -> dict[str, Any]:
        self._require_saved("accept it")
        return self._done(self._queue().accept(self._case_id(), note=(note or "").strip() or None))

    def reject(self, note: str) -> dict[str, Any]:
        # as accept: a rejection recorded over an unsaved edit could not be moved on from, and Save edit afterwards
        # turned "rejected" into "edited"
        self._require_saved("reject it")
        return self._done(self._queue().reject(self._case_id(), (note or "").strip()))

    def save_edit(self, note: str | None = None) -> dict[str, Any]:
        """Write the segment as it is now as the case's final mask, with the turns that made it."""
        cid = self._case_id()
        if self.agent is not None and self.agent.busy:
            raise ReviewError("the agent is still working on a turn: wait for it or press Stop, then save")
        self.agent_changed()
        mask = segment_kji(self.segmentation, self.segment_id, self.volume)
        provenance = self._provenance(mask)
        if not provenance:
            raise ReviewError(f"case {cid} has not been edited since it was opened or saved: edit the mask first, "
                              "or accept it as it is")
        note = (note or "").strip() or None
        if self.case.original is None and self.case.final is None:  # no grid to write on but the scene's own
            with tempfile.TemporaryDirectory(prefix="medagentseg-review-") as tmp:
                path = write_segmentation(self.scene, self.segmentation, Path(tmp) / "edit.seg.nrrd")
                rec = self._queue().save_edit(cid, str(path), provenance, note=note)
        else:
            rec = self._queue().save_edit(cid, mask, provenance, note=note)
        self._pending, self._explained = [], mask
        return self._done(rec)

    def dirty(self) -> bool:
        """The mask changed since the case was opened or saved."""
        if self.case is None:
            return False
        self.agent_changed()
        return bool(self._provenance(segment_kji(self.segmentation, self.segment_id, self.volume)))

    def _provenance(self, mask: np.ndarray) -> list[dict[str, Any]]:
        extra = [{"by": "human", "action": "segment editor"}] if not np.array_equal(mask, self._explained) else []
        return self._pending + extra

    def agent_changed(self) -> None:
        """Account for the agent's turns on the open case since last seen (called through the agent's on_change):
        a change to the mask made before them and not by them is a human edit, the turns are the agent's (or the
        person's, for prompts they placed), an undo is the person's."""
        if self.case is None or self.agent is None or self.segmentation is None:
            return
        counts = self._agent_counts()
        mask = segment_kji(self.segmentation, self.segment_id, self.volume)
        touched = np.zeros(mask.shape, bool)  # where the new turns and propagations may have written
        painted, entries = False, []
        for key, timeline in counts.items():  # the session's timeline is the history: what changed since last seen
            run = self.agent.runs[key]
            seen = self._seen.get(key, [])
            kept = next((i for i, (a, b) in enumerate(zip(seen, timeline)) if a is not b),
                        min(len(seen), len(timeline)))
            if kept < len(seen):  # entries seen before are gone: undone
                entries.append({"by": "human", "action": "undo"})
                touched[...] = True  # what an undo put back is not known here
            written = {id(r.turn): r for r in run.records}
            steps = {id(s.entry): s for s in run.propagations}
            edits = {id(s.entry): s for s in run.slice_edits}
            first = True
            for turn in timeline[kept:]:
                if id(turn) in written:
                    painted |= first and self._painted_before(run, written[id(turn)])  # later ones follow the first
                    first = False
                    run.geom.extract(touched)[...] = True
                    entries.append({"by": "agent" if turn.source == "agent" else "human",
                                    "action": turn.action["name"]})
                elif id(turn) in steps:
                    axis = "KJI".index(run.geom.axis)  # KJI arrays: K is axis 0
                    touched[(slice(None),) * axis + (list(steps[id(turn)].written),)] = True
                    entries.append({"by": "agent", "action": steps[id(turn)].kind})
                elif id(turn) in edits:  # the person's stroke on another slice
                    axis = "KJI".index(run.geom.axis)
                    touched[(slice(None),) * axis + (sorted(edits[id(turn)].slices_before),)] = True
                    entries.append({"by": "human", "action": turn.action["name"]})
        painted |= bool(((mask != self._explained) & ~touched).any())  # no turn wrote there: a person did
        self._pending += [{"by": "human", "action": "segment editor"}] * painted + entries
        self._seen = counts
        self._explained = mask

    def _painted_before(self, run: Any, rec: Any) -> bool:
        """The turn's slice before it differs from the mask last accounted for: someone painted it meanwhile."""
        before = rec.segments_before.get(self.segment_id)
        return before is not None and not np.array_equal(before, run.geom.extract(self._explained))

    def _agent_counts(self) -> dict[Any, list[Any]]:
        if self.agent is None or self.segmentation is None:
            return {}
        return {key: _in_scene(run) for key, run in self.agent.runs.items()
                if run.session is not None and run.segmentation_node is self.segmentation
                and run.segment_id == self.segment_id}

    # -- the lease ---------------------------------------------------------------------------------------------------
    def tick(self) -> None:
        """From the widget's timer: renew the open case's lease a third of the way through it."""
        if self.case is not None and self.clock() - self._renewed >= self.lease_seconds / 3:
            self._renewed = self.clock()
            self._queue().renew(self.case.case_id)

    # -- helpers -----------------------------------------------------------------------------------------------------
    def _queue(self) -> ReviewQueue:
        if self.queue is None:
            raise ReviewError("open a labeling folder first (the --out folder of `medagentseg label`)")
        return self.queue

    def _case_id(self) -> str:
        if self.case is None:
            raise ReviewError("no case is open: press Next unreviewed, or pick one in the list")
        return self.case.case_id

    def _require_saved(self, what: str) -> None:
        if self.dirty():
            raise ReviewError(f"case {self.case.case_id} was edited and not saved: Save edit first, or Reload case "
                              f"to drop the edit, then {what}")

    def _before_leaving(self) -> None:
        if self.agent is not None and self.agent.busy:
            raise ReviewError("the agent is still working on a turn: wait for it or press Stop first")
        self._require_saved("move on")

    def _done(self, rec: dict[str, Any]) -> dict[str, Any]:
        self._changed()
        return rec

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
