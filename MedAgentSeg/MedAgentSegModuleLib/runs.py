"""The sessions of a scene: one `TargetRun` per target segment and slice, its `TurnRecord`s, and the registry
that starts, resumes, moves and discards them (`Runs`). Writing turns is `turn_writer`'s; model work the facade's."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import slicer

from MedAgentSegLib.pipeline.start import CHOICES as FIRST_CHOICES
from MedAgentSegLib.propagation import Propagation
from MedAgentSegLib.session import Session, Turn

from .autostart import StartPlan, lps_geometry
from .context import AgentError, Context
from .factories import (
    BUILT_ON_WORKER,
    GT_FREE,
    POLICY_CHOICES,
    Factories,
    default_engine,
    default_policy,
    guess_modality,
    to_engine_rgb,
)
from .geometry import SliceGeometry
from .mrml_writer import (
    TAG_PREFIX,
    PromptNodes,
    SegmentSliceWriter,
    SliceReviewRecorder,
    TrajectoryRecorder,
    check_volume,
    is_segment_locked,
    node_to_world,
    segment_kji,
    slice_geometry,
    volume_array_kji,
)
from .words import Words

__all__ = ["turn_record", "TurnRecord", "PropagationStep", "SliceEditStep", "TargetRun", "last_entry", "see_volume",
           "undo_entry", "Runs", "AXIS_NAMES", "set_tags", "require_writable", "jump_slice_views", "box_tool",
           "largest_slice"]

AXIS_NAMES = {"K": "axial", "J": "coronal", "I": "sagittal"}  # the library's names for the KJI array's axes 0, 1, 2


def turn_record(number: int, turn: Turn) -> dict[str, Any]:
    """The JSON record of a written turn: the segment's LastTurn tag, the sequence item, the chat's review."""
    return {"turn": number, "session_index": turn.index, "source": turn.source, "action": turn.action,
            "prompts": turn.prompts.to_dict(),
            "score": None if turn.score is None else round(float(turn.score), 4),
            "timings": {k: round(float(v), 4) for k, v in turn.timings.items()},
            "area_px": int(turn.mask.sum()), "update": turn.update, "created": turn.created}


@dataclass
class TurnRecord:
    """What MRML needs to revert one mask-producing turn exactly; the turn itself is the library session's.

    number: the turn's number in the chat (mask-producing turns written into the scene). turn: the session's Turn
    (not a copy: the session is the one history). segments_before: segment ID -> (H, W) bool slice of every
    segment before the turn. The markups need no copy: they always show the session's prompt state, so reverting
    writes the session's prompts after its undo. masked_voxels: voxels the Segment Editor's masking kept.
    """

    number: int
    turn: Turn
    segments_before: dict[str, np.ndarray]
    masked_voxels: int = 0

    @property
    def session_index(self) -> int:
        return self.turn.index

    @property
    def record(self) -> dict[str, Any]:
        """The turn's JSON record, made from the session's turn when asked."""
        return {**turn_record(self.number, self.turn), "masked_voxels": self.masked_voxels}


@dataclass
class PropagationStep:
    """One propagation written into the segment: the library's result and what Undo needs to put back.

    slices_before: slice index -> segment ID -> (H, W) bool slice of every segment before it was written.
    entry: the session's timeline entry for it (Session.add_propagation): Undo takes it back when it is the last.
    written: the slices it changed: those it made (its mask added) and those where it took out what an earlier
    propagation had written (its mask there, possibly empty, is what it leaves of the propagations on that slice).
    """

    kind: str  # "propagate" | "repropagate"
    result: Propagation
    entry: Turn
    slices_before: dict[int, dict[str, np.ndarray]]
    written: list[int]
    masked_voxels: int = 0


@dataclass
class SliceEditStep:
    """A hand edit on other slices than the session's (Session.add_slice_edit) and what Undo puts back.

    entry: the session's timeline entry. slices_before: slice index -> segment ID -> (H, W) bool slice of every
    segment before the stroke."""

    entry: Turn
    slices_before: dict[int, dict[str, np.ndarray]]


@dataclass
class TargetRun:
    """One session: one target segment on one slice of one volume, and the MRML nodes it writes."""

    volume_node: Any
    segmentation_node: Any
    segment_id: str
    target: str
    geom: SliceGeometry
    image_rgb: np.ndarray
    engine_name: str
    policy: Any
    writer: SegmentSliceWriter
    prompts: PromptNodes
    recorder: TrajectoryRecorder
    max_turns: int = 5
    session: Session | None = None
    records: list[TurnRecord] = field(default_factory=list)
    observer_tags: list[tuple[Any, int]] = field(default_factory=list)
    auto_turns_left: int = 0
    policy_name: str = ""
    modality: str = "CT"
    window: Any = None
    propagations: list[PropagationStep] = field(default_factory=list)
    slice_edits: list[SliceEditStep] = field(default_factory=list)
    # while a hand tool is on: every segment (ID -> (K, J, I) bool) as the logic last left the volume, so a stroke on
    # another slice than the session's can be found and undone; None otherwise (no copy of the volume is kept)
    volume_seen: dict[str, np.ndarray] | None = None
    review: SliceReviewRecorder | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # read from MRML on the main thread, for the worker
    engine_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"checkpoint": PATH} for SAM
    start_plan: StartPlan | None = None  # the agent's own first turn (issue #16), for the worker; None: the person's
    # every segment on the session's slice as the logic last left it (after a write or a revert): what a person's
    # paint stroke is undone to
    shown: dict[str, np.ndarray] | None = None
    records_at_run: int = -1  # len(records) when Run / Step was pressed: a stop with none added says so
    start_mask: np.ndarray | None = None  # what the segment held on the slice at a request: the session's first turn
    opened: float = field(default_factory=time.monotonic)  # when the request came: the chat says how long it took

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.segmentation_node.GetID(), self.segment_id, self.geom.axis, self.geom.index)

    @property
    def status(self) -> str:
        return "loading" if self.session is None else self.session.status

    def segment(self) -> Any:
        return self.segmentation_node.GetSegmentation().GetSegment(self.segment_id)


def last_entry(run: TargetRun) -> Turn | None:
    """The session's last entry past a stop: what Undo / Reject take back first."""
    if run.session is None:
        return None
    return next((t for t in reversed(run.session.turns) if t.action["name"] != "stop_action"), None)


def undo_entry(run: TargetRun, entry: Turn) -> None:
    """Take a propagation or slice-edit `entry` off the session's timeline (a stop after it stays)."""
    run.session.remove_entry(entry)


def see_volume(run: TargetRun, start: bool = False) -> None:
    """Take every segment's volume as the logic leaves it (start: begin watching; else only while watching)."""
    if run.volume_seen is None and not start:
        return
    seg = run.segmentation_node
    run.volume_seen = {sid: segment_kji(seg, sid, run.volume_node) for sid in seg.GetSegmentation().GetSegmentIDs()}


def set_tags(run: TargetRun) -> None:
    """The segment's tags from the run: its number of turns, the last turn's record, the session's status."""
    segment = run.segment()
    if segment is None:
        return
    segment.SetTag(TAG_PREFIX + "Turns", str(len(run.records)))
    if run.records:
        segment.SetTag(TAG_PREFIX + "LastTurn", json.dumps(run.records[-1].record))
    else:
        segment.RemoveTag(TAG_PREFIX + "LastTurn")
    if run.session is not None:
        segment.SetTag(TAG_PREFIX + "Status", run.session.status)


def require_writable(run: TargetRun, what: str) -> None:
    if run.segment() is None:
        raise AgentError(f"Segment '{run.segment_id}' was deleted, so '{what}' has nothing to write into. Start a "
                         "new request.")
    if run.status == "accepted" or is_segment_locked(run.segment()):
        raise AgentError(f"'{run.target}' was accepted and is frozen, so '{what}' cannot change it. Start a new "
                         "request to segment again.")


def colour_frame(volume_node: Any, geom: Any) -> np.ndarray | None:
    """The (H, W, 3) uint8 colour frame behind a one-slice grey volume made for a 2D colour image (an endoscopy
    frame in the review queue; attribute MedAgentSeg.ColourImage), or None. The engine must see the colours `label`
    saw: on the grey luminance it found the polyp far less often."""
    path = volume_node.GetAttribute("MedAgentSeg.ColourImage")
    if not path:
        return None
    from MedAgentSegLib.images import ImageError, load_image

    try:
        img = load_image(path)
    except (ImageError, OSError, ValueError):
        return None
    arr = np.asarray(img.array)
    if arr.ndim != 3 or arr.shape[:2] != (geom.height, geom.width):
        return None
    return to_engine_rgb(arr, "RGB", None)


def box_tool(words: Words, run: TargetRun) -> str:
    """Where the person finds the box: Slicer names the markups node, the page its Box button."""
    if words.names_nodes:
        return f"'{run.prompts.roi.GetName()}'"
    return words.place_box


def jump_slice_views(scene: Any, run: TargetRun) -> None:
    """Show the session's slice: rotate slice views to the volume and centre them on the slice."""
    centre = node_to_world(run.volume_node, run.geom.pixel_to_ras((run.geom.width - 1) / 2.0,
                                                                   (run.geom.height - 1) / 2.0))
    for node in [scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
                 for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode"))]:
        try:
            node.RotateToVolumePlane(run.volume_node)
        except (AttributeError, TypeError):
            pass
        node.JumpSliceByOffsetting(*centre)


def largest_slice(mask_kji: np.ndarray, axis: str) -> int | None:
    """The index along IJK `axis` of the slice where the (K, J, I) mask is largest; None if it is empty."""
    area = mask_kji.sum(axis={"K": (1, 2), "J": (0, 2), "I": (0, 1)}[axis])
    return int(np.argmax(area)) if area.any() else None



class Runs:
    """The runs of a scene by (segmentation ID, segment ID, axis, slice), the active one, and the structures of a
    request still to do. open_session(run, deferred): the facade queues the engine and the session on the worker.
    markups: observe(run) / remove_observers(run) for a run's prompt nodes."""

    def __init__(self, ctx: Context, factories: Factories, markups: Any, sequences_logic: Any,
                 open_session: Callable[[TargetRun, Any], None], library: str | None = None):
        self.ctx, self.factories, self.markups = ctx, factories, markups
        self.sequences_logic = sequences_logic
        self.open_session = open_session
        self.library = library  # model-library folder for specialists (default: $MEDAGENTSEG_LIBRARY, Resources/Models)
        self.runs: dict[tuple[str, str, str, int], TargetRun] = {}
        self.active: TargetRun | None = None
        self.queued: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (segment info, start arguments) to do next

    def start(self, volume_node: Any, segmentation_node: Any, target: str, segment_name: str | None = None,
              axis: str = "K", slice_index: int | None = None, engine: str | None = None,
              policy: Any = None, reference_segment_id: str | None = None, modality: str | None = None,
              window: Any = None, max_turns: int = 5, policy_options: dict[str, Any] | None = None,
              engine_options: dict[str, Any] | None = None, segment_info: dict[str, Any] | None = None,
              first: str | None = None) -> TargetRun:
        """Open (or resume) a session: the arguments are `AgentSegLogic.start`'s (the facade documents them)."""
        check_volume(volume_node)
        if first is not None and str(first).strip().lower() not in FIRST_CHOICES:
            raise AgentError(f"Unknown first turn '{first}': choose one of {', '.join(FIRST_CHOICES)}.")
        engine = engine or default_engine()
        engine_options = {k: v for k, v in (engine_options or {}).items() if v not in (None, "")}
        self.factories.check_engine(engine, engine_options)
        if not target or not str(target).strip():
            raise AgentError("No target given: say what to segment, e.g. 'segment the liver'.")
        target = str(target).strip()
        if policy is None:
            policy = default_policy(reference_segment_id)
        if isinstance(policy, str):
            policy = policy.strip().lower()
            if self.factories.policy_factory is None and policy not in POLICY_CHOICES:
                raise AgentError(f"Unknown policy '{policy}': choose one of {', '.join(POLICY_CHOICES)}.")
        policy_options = dict(policy_options or {})
        if isinstance(policy, str) and policy in BUILT_ON_WORKER:
            self.factories.check_policy_files(policy, policy_options)  # fail fast, before anything is created
        if segmentation_node is None:
            segmentation_node = self._new_segmentation(volume_node)
        dims = volume_node.GetImageData().GetDimensions()
        axis = str(axis).upper()
        if slice_index is None:
            slice_index = dims[{"I": 0, "J": 1, "K": 2}.get(axis, 2)] // 2
        geom = slice_geometry(volume_node, axis, int(slice_index))
        segmentation = segmentation_node.GetSegmentation()
        name = segment_name or target
        segment_id = segmentation.GetSegmentIdBySegmentName(name) or (name if segmentation.GetSegment(name) else "")
        if segment_id and is_segment_locked(segmentation.GetSegment(segment_id)):
            raise AgentError(f"Segment '{name}' is locked (accepted or marked Completed), so the agent will not change "
                             "it. Choose another segment name, or clear the lock: "
                             f"{self.ctx.words.unlock_segment}.")
        start_mask = None
        if segment_id and first is not None:  # a request on a segment that already holds a mask: go on from it
            held = segment_kji(segmentation_node, segment_id, volume_node)
            found = largest_slice(held, axis)
            if found is not None:
                slice_index, first = found, None
                geom = slice_geometry(volume_node, axis, int(slice_index))
                start_mask = np.array(geom.extract(held), dtype=bool)
        key = (segmentation_node.GetID(), segment_id, axis, int(slice_index))
        existing = self.runs.get(key) if segment_id else None
        if existing is not None and existing.status != "accepted":
            self.active = existing
            self.ctx.say("info", f"Resuming '{existing.target}' on slice {axis}={slice_index}: "
                                 f"{len(existing.records)} turn(s) so far.")
            self.ctx.changed()
            return existing
        writer = SegmentSliceWriter(self.ctx.scene, segmentation_node, volume_node)  # checks geometry, may raise
        if not segment_id:
            segment_id = self._new_segment(segmentation, name, segment_info)
        segment = segmentation.GetSegment(segment_id)
        gt = None
        if isinstance(policy, str) and policy == "oracle":
            if not reference_segment_id or segmentation.GetSegment(reference_segment_id) is None:
                raise AgentError("The 'oracle' policy needs a reference segment (the expected answer) in the same "
                                 "segmentation: pick one in 'Reference segment', or choose another policy.")
            gt = writer.read_slice(reference_segment_id, geom)
            if not gt.any():
                raise AgentError(f"The reference segment is empty on slice {axis}={slice_index}; move to a slice "
                                 "where it is drawn.")
        deferred = None
        if isinstance(policy, str) and policy in BUILT_ON_WORKER:
            policy_obj, deferred = None, (policy, policy_options)  # weights / model load on the worker
        else:
            policy_obj = self.factories.make_policy(policy, gt, policy_options)
        policy_name = policy if isinstance(policy, str) else type(policy).__name__
        arr = volume_array_kji(volume_node)
        modality = modality or guess_modality(arr)
        image = colour_frame(volume_node, geom) if geom.axis == "K" and arr.shape[0] == 1 else None
        if image is None:
            image = to_engine_rgb(geom.extract(arr), modality, window)
        base = f"MedAgentSeg {name}"
        prompts = PromptNodes.create(self.ctx.scene, base, volume_node.GetTransformNodeID())
        recorder = TrajectoryRecorder(self.ctx.scene, base, self.sequences_logic)
        run = TargetRun(volume_node, segmentation_node, segment_id, target, geom, image, engine, policy_obj,
                        writer, prompts, recorder, max_turns=int(max_turns), policy_name=policy_name,
                        modality=modality, window=window)
        # in the library's vocabulary, so `medagentseg replay VOLUME` finds the slice and its pixels
        run.metadata = {"volume": volume_node.GetName(), "axis": AXIS_NAMES[axis], "slice": int(slice_index),
                        "modality": modality, "policy": policy_name}
        if window is not None:
            run.metadata["window"] = list(window) if isinstance(window, tuple) else window
        storage = volume_node.GetStorageNode()
        if storage is not None and storage.GetFileName():
            run.metadata["image"] = storage.GetFileName()
        run.engine_options = engine_options
        run.start_mask = start_mask
        if first is not None and policy_name in GT_FREE:  # the worker gets copies: it never reads MRML
            run.start_plan = StartPlan(np.array(arr, copy=True), lps_geometry(geom.ijk_to_ras),
                                       str(first).strip().lower(), self.library, self.factories.device)
        for node in prompts.nodes:
            node.SetAttribute(TAG_PREFIX + "Segment", segment_id)
            node.SetAttribute(TAG_PREFIX + "Slice", f"{axis}={slice_index}")
        self.markups.observe(run)
        segment.SetTag(TAG_PREFIX + "Target", target)
        segment.SetTag(TAG_PREFIX + "Engine", engine)
        segment.SetTag(TAG_PREFIX + "Status", "loading")
        if existing is not None:  # accepted, then unlocked by the person: its nodes go, its mask stays the segment's
            self.discard(existing)
        self.runs[(segmentation_node.GetID(), segment_id, axis, int(slice_index))] = run
        self.active = run
        jump_slice_views(self.ctx.scene, run)
        # the CT window is worth saying; "MR intensities" on a photo (an endoscopy frame) is only noise
        seen = " (CT intensities, abdomen window)" if modality == "CT" and window is None else ""
        self.ctx.say("info", f"Preparing '{target}' on slice {axis}={slice_index} of '{volume_node.GetName()}' "
                             f"with {engine}{seen}...")
        tool = box_tool(self.ctx.words, run)
        if isinstance(policy, str) and policy == "scripted":
            self.ctx.say("info", f"You drive this one: place the box ({tool}) around the {target} or a "
                                 "click; the engine runs on every prompt you place.")
        elif run.start_plan is not None:
            specialist = "an installed specialist model, else " if run.start_plan.choice != "locator" else ""
            self.ctx.say("info", f"Agent: {policy} (GT-free, no reference needed). It starts on its own: "
                                 + specialist
                                 + f"the locator finds the {target} and places the first turn, then it refines. Undo "
                                 "takes any turn back; edit the box or the clicks at any turn to take over.")
        elif isinstance(policy, str) and policy in GT_FREE:
            self.ctx.say("info", f"Agent: {policy} (GT-free, no reference needed). It refines from your box: place "
                                 f"the box ({tool}) around the {target}, then press Run. Edit the "
                                 "box or the clicks at any turn to take over.")
        self.open_session(run, deferred)
        self.ctx.changed()
        return run

    def _new_segmentation(self, volume_node: Any) -> Any:
        """A segmentation for `volume_node`, under the volume's parent transform so the two stay together."""
        node = slicer.vtkMRMLSegmentationNode()
        node.SetName(self.ctx.scene.GenerateUniqueName(f"{volume_node.GetName()} MedAgentSeg"))
        self.ctx.scene.AddNode(node)
        node.CreateDefaultDisplayNodes()
        node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        return node

    @staticmethod
    def _new_segment(segmentation: Any, name: str, info: dict[str, Any] | None) -> str:
        """An empty segment with the structure's standard colour and terminology code when known."""
        info = info or {}
        color = info.get("color")
        segment_id = segmentation.AddEmptySegment("", name, list(color)) if color else \
            segmentation.AddEmptySegment("", name)
        if info.get("terminology"):
            segmentation.GetSegment(segment_id).SetTerminology(info["terminology"])
        return segment_id

    def resume_instead(self, run: TargetRun, other: TargetRun, who: str) -> None:
        """Main thread: the start slice chosen for `run` already has a session of the same segment (`other`): that
        one goes on, with its turns and Undo, and `run` is dropped before it writes anything."""
        self.discard(run)
        self.active = other
        set_tags(other)
        jump_slice_views(self.ctx.scene, other)
        self.ctx.say("info", f"The {'specialist' if who == 'specialist' else 'locator'} starts on slice "
                             f"{other.geom.axis}={other.geom.index}, where '{other.target}' already has a session: "
                             "resuming it "
                             f"({len(other.records)} turn(s) so far).")
        self.ctx.changed()

    def move_run(self, run: TargetRun, index: int, image: np.ndarray, who: str) -> None:
        """Main thread, before the first turn: the session starts on slice `index`, chosen by the specialist or the
        locator; the run, its markups and the slice views follow it there."""
        old = run.key
        run.geom = slice_geometry(run.volume_node, run.geom.axis, index)
        run.image_rgb = image
        run.metadata["slice"] = int(index)
        for node in run.prompts.nodes:
            node.SetAttribute(TAG_PREFIX + "Slice", f"{run.geom.axis}={index}")
        if self.runs.get(old) is run:
            del self.runs[old]
        replaced = self.runs.get(run.key)
        if replaced is not None and replaced is not run:  # an accepted one (others are resumed): as start() does,
            self.discard(replaced)  # its box, clicks and sequences go; the mask it wrote stays in the segment
        self.runs[run.key] = run
        jump_slice_views(self.ctx.scene, run)
        what = "the specialist's mask is largest" if who == "specialist" else \
            f"the locator finds the {run.target} most clearly"
        self.ctx.say("info", f"Starting on slice {run.geom.axis}={index}, where {what}; the slice views show it.")

    def discard(self, run: TargetRun) -> None:
        """Main thread: drop `run` and its markups / sequence nodes; the segment is never touched (what it wrote, an
        accepted mask above all, is the person's)."""
        self.markups.remove_observers(run)
        run.prompts.remove_from_scene(self.ctx.scene)
        for node in [*run.recorder.nodes(), *(run.review.nodes() if run.review is not None else ())]:
            if node.GetScene() is not None:
                self.ctx.scene.RemoveNode(node)
        self.runs.pop(run.key, None)
        if self.active is run:
            self.active = None
