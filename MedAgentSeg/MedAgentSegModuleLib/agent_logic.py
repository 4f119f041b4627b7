"""The MedAgentSeg logic: sessions on slices of a volume, every turn written into MRML.

No Qt, no dialogs: usable from Slicer's Python console, from the module widget and from pytest with
``slicer-core``. It reports through two callbacks, ``on_message(ChatMessage)`` and ``on_change()``, and
raises `AgentError` (a sentence saying what happened and what to do) for bad input.

Threading: model work (engine creation, image encoding, the policy and the prediction of each turn) runs
on one persistent `SessionExecutor` thread; MRML is read and written only on the thread calling
`poll()` / `wait()` (Slicer's main thread, through a QTimer). A turn's mask, markups, sequence item and
segment tags are written together after the engine returns; if any write fails, everything is put back
and the turn is removed from the session, so nothing is left half-written. Policies that load weights or a
model (`learned`, `mllm`) are built on the worker thread too; the main thread only checks that their files exist.

Policies: without a reference segment the default is a GT-free agent (`learned` when its weights are
installed, else `heuristic`). It refines from the person's first box: with no box yet it stops and its own
reason asks for one. Each agent turn's chat line gives the policy's reason and confidence (from the turn's
action "reason" / "confidence"). When the agent takes back its own last turn (`UndoTurn`), the scene goes back
to the turn before, exactly as Reject does, and the chat says so. `oracle` (needs a reference segment) and
`scripted` (the person drives) stay available.

The agent starts on its own (issue #16): a chat request ("segment the liver") with no box or click placed makes the
first turn itself, on the worker (`autostart.py`): an installed specialist's mask, else the locator's box (an ROI the
person can drag), on the slice it picks in a volume (the slice views jump there). It is written as any turn (Undo /
Reject take it back) and the agent continues. When the locator does not know the target or is unsure, the chat says
so and what it can find on its own, asks for a box or a click, and nothing is written.

3D: `propagate()` carries the session's finished 2D mask slice by slice through the volume along the session's
slice axis (MedAgentSegLib.propagation, on the worker; progress in the chat; Stop ends it between slices and keeps
the slices done). `repropagate()` starts again from a slice the person corrected in the segment. Each writes only
the slices it made, as one undo step (Undo / Reject put every segment back bit-exactly), and shows its slices in a
review sequence; `trajectory_dict()` holds each propagation's record. A propagation only adds to what the segment
holds on a slice: what the person painted there stays; a later propagation takes out only the voxels an earlier
one wrote on the slices it makes again.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import slicer

from MedAgentSegLib.engines.base import Prompts
from MedAgentSegLib.images import extract_slice
from MedAgentSegLib.propagation import Propagation, PropagationConfig, PropagationError, propagate, repropagate
from MedAgentSegLib.session import HAND_TOOLS, SCENE_TRAJECTORY_FORMAT, Session, Turn

from .autostart import CHOICES as FIRST_CHOICES
from .autostart import FirstTurn, StartPlan, find_first_turn, lps_geometry
from .chat import request_modality, segment_targets
from .geometry import GeometryError, SliceGeometry
from .mrml_writer import (
    TAG_PREFIX,
    MRMLInputError,
    PromptNodes,
    SegmentSliceWriter,
    SliceReviewRecorder,
    TrajectoryRecorder,
    check_volume,
    ensure_scene_logics,
    is_segment_locked,
    node_to_world,
    segment_kji,
    slice_geometry,
    view_slice,
    volume_array_kji,
)
from .words import SLICER, Words
from .worker import JobResult, SessionExecutor

__all__ = ["AgentError", "ChatMessage", "TurnRecord", "TargetRun", "AgentSegLogic", "TRAJECTORY_FILE",
           "SLICER_TRAJECTORY_FORMAT", "guess_modality", "POLICY_CHOICES", "GT_FREE", "default_policy",
           "learned_weights_available", "describe_decision", "PropagationStep", "chat_command", "AXIS_NAMES",
           "engine_choices", "default_engine"]

#: the policies the module offers: the GT-free agents first, then the reference-driven oracle and the person
POLICY_CHOICES = ("learned", "heuristic", "oracle", "scripted", "mllm")
GT_FREE = ("heuristic", "learned", "mllm")  # as MedAgentSegLib.policies.GT_FREE_POLICIES
_BUILT_ON_WORKER = ("learned", "mllm")  # they load weights or a model: built on the worker thread
TRAJECTORY_FILE = "trajectory.json"
SLICER_TRAJECTORY_FORMAT = SCENE_TRAJECTORY_FORMAT  # the library reads it too (`medagentseg replay`)
MARKUP_EVENTS = ("PointRemovedEvent", "PointPositionDefinedEvent")  # a drag's end has its own observer
AXIS_NAMES = {"K": "axial", "J": "coronal", "I": "sagittal"}  # the library's names for the KJI array's axes 0, 1, 2
_NOUN = {"propagate": "propagation", "repropagate": "re-propagation"}
PROGRESS_EVERY_S = 1.0  # at most one "propagating: n slices done" line per second
_REPROPAGATE = re.compile(r"\b(?:re-?propagate|propagate (?:again|from (?:here|this slice)))\b")
_PROPAGATE = re.compile(r"\b(?:propagate|whole volume|entire volume|full volume|all slices|every slice|in 3d|3d|"
                        r"whole scan)\b")


class AgentError(RuntimeError):
    """A request cannot be carried out; the message says what happened and what to do."""


@dataclass
class ChatMessage:
    """One line of the chat. role: "user", "agent", "info", "warning" or "error"."""

    role: str
    text: str
    turn: int | None = None


@dataclass
class TurnRecord:
    """What MRML needs to revert one mask-producing turn exactly.

    segments_before: segment ID -> (H, W) bool slice of every segment before the turn. The markups need no copy:
    they always show the session's prompt state, so reverting writes the session's prompts after its undo.
    """

    number: int
    session_index: int
    segments_before: dict[str, np.ndarray]
    record: dict[str, Any]


@dataclass
class PropagationStep:
    """One propagation written into the segment: the library's result and what Undo needs to put back.

    slices_before: slice index -> segment ID -> (H, W) bool slice of every segment before it was written.
    after_turns / after_session_turns: len(run.records) / len(session.turns) when it was written (undo order).
    written: the slices it changed: those it made (its mask added) and those where it took out what an earlier
    propagation had written (its mask there, possibly empty, is what it leaves of the propagations on that slice).
    """

    kind: str  # "propagate" | "repropagate"
    result: Propagation
    after_turns: int
    after_session_turns: int
    slices_before: dict[int, dict[str, np.ndarray]]
    written: list[int]
    masked_voxels: int = 0


class _PropagationJob:
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


def guess_modality(volume_array: np.ndarray) -> str:
    """"CT" when the intensities look like Hounsfield units, else "MR" (percentile stretch)."""
    lo, hi = float(np.min(volume_array)), float(np.max(volume_array))
    return "CT" if lo <= -500.0 and hi >= 200.0 else "MR"


def learned_weights_available() -> bool:
    """True when the shipped controller of the `learned` policy and its card (.json) are installed."""
    try:
        from MedAgentSegLib.agent import learned
    except ImportError:
        return False
    weights = Path(learned.POLICY_WEIGHTS)
    return weights.is_file() and weights.with_suffix(".json").is_file()


def default_policy(reference_segment_id: str | None = None) -> str:
    """The policy to use when none is chosen: "oracle" with a reference segment, else a GT-free agent
    ("learned" when its weights are installed, else "heuristic")."""
    if reference_segment_id:
        return "oracle"
    return "learned" if learned_weights_available() else "heuristic"


def engine_choices() -> list[str]:
    """Every engine the library can build here (the click-aware one first when its weights are shipped)."""
    from MedAgentSegLib.engines import engine_names

    return engine_names()


def default_engine() -> str:
    """The library's default: the click-aware LiteMedSAM when shipped (plain LiteMedSAM gets worse with clicks)."""
    from MedAgentSegLib.engines import DEFAULT_ENGINE

    return DEFAULT_ENGINE


def describe_decision(action: dict[str, Any]) -> str | None:
    """The policy's reason for a turn and its confidence, from the turn's action dict; None if it gave none."""
    reason = str(action.get("reason") or "").strip()
    if not reason:
        return None
    conf = action.get("confidence")
    return reason if conf is None else f"{reason} \u2014 confidence {float(conf):.2f}"


def chat_command(text: str) -> str | None:
    """"repropagate" or "propagate" when a chat line asks for 3D propagation ("whole volume", "propagate", "3d",
    "re-propagate"), else None: the request parser reads it. "segment the liver in 3d" stays a segment request."""
    low = (text or "").lower()
    if _REPROPAGATE.search(low):
        return "repropagate"
    if _PROPAGATE.search(low) and not re.search(r"\bsegment\b", low):
        return "propagate"
    return None


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "." if text else text


def _to_engine_rgb(plane: np.ndarray, modality: str, window: Any) -> np.ndarray:
    from MedAgentSegLib.images import to_engine_rgb

    return to_engine_rgb(np.ascontiguousarray(plane), modality=modality, window=window)


def describe_action(action: dict[str, Any], prompts: dict[str, Any] | None = None) -> str:
    """A chat-friendly rendering of a turn in the slice's image pixels (x = column, y = row, as the person's box and
    clicks are placed). prompts: the turn's prompt state after it (`Prompts.to_dict()`), where the agent's grid
    action gives no pixels."""
    name, args = action.get("name"), action.get("arguments", {})
    prompts = prompts or {}

    def xy(v: Any) -> str:
        return f"({float(v[0]):.0f}, {float(v[1]):.0f})"

    if name == "add_bbox":
        box = action.get("pixels") or prompts.get("box")
        return f"box {xy(box[:2])}-{xy(box[2:])} px" if box else "box"
    if name == "add_point":
        point = action.get("pixels") or (prompts.get("points") or [None])[-1]
        sign = "positive" if args.get("point_type") == "positive" else "negative"
        return f"{sign} click at {xy(point)} px" if point else f"{sign} click"
    if name == "edit_prompts":
        return f"re-ran from your edited prompts ({len(args.get('points', []))} clicks, " \
               f"{'a box' if args.get('box') else 'no box'})"
    if name == "stop_action":
        return "stop"
    if name == "specialist":
        return f"the specialist {args.get('model')}'s mask (licence: {args.get('licence')})"
    if name == "hand_edit":
        return {"paint": "your painting", "erase": "your erasing", "scissors": "your scissors cut",
                "existing": "the mask the segment already held, to go on from"}.get(args.get("tool"),
                                                                                    "your edit by hand")
    return str(name)


class AgentSegLogic:
    """Drives agent sessions and writes every turn into the scene.

    scene: the MRML scene. executor: the worker (one is created if None). engine_factory(name) -> Engine,
    called on the worker thread (default: MedAgentSegLib.engines.create_engine). policy_factory(name, gt)
    -> Policy (default: MedAgentSegLib.policies.create_policy). sequences_logic: Slicer's
    (``slicer.modules.sequences.logic()``; created for slicer-core if None).
    """

    def __init__(self, scene: Any, executor: SessionExecutor | None = None,
                 on_message: Callable[[ChatMessage], None] | None = None,
                 on_change: Callable[[], None] | None = None,
                 engine_factory: Callable[[str], Any] | None = None,
                 policy_factory: Callable[[str, np.ndarray | None], Any] | None = None,
                 sequences_logic: Any = None, device: str = "auto",
                 locator_factory: Callable[[], Any] | None = None, library: str | None = None,
                 words: Words = SLICER):
        self.scene = scene
        self.words = words  # the front end's names for its controls, in every message that points to one
        self.locator_factory = locator_factory  # () -> Locator, called on the worker (default: the shipped one)
        self.library = library  # model-library folder for specialists (default: $MEDAGENTSEG_LIBRARY, Resources/Models)
        self._locator: Any = None  # loaded once, on the worker
        self.executor = executor or SessionExecutor()
        self.on_message = on_message
        self.on_change = on_change
        self.engine_factory = engine_factory
        self.policy_factory = policy_factory
        self.device = device
        self.sequences_logic = sequences_logic or ensure_scene_logics(scene)
        self.engines: dict[tuple, Any] = {}  # (name, options) -> engine; touched only on the worker thread
        self.runs: dict[tuple[str, str, str, int], TargetRun] = {}
        self.active: TargetRun | None = None
        self.messages: list[ChatMessage] = []
        self.engine_device: str | None = None
        self._writing = False
        self._dragging: set[Any] = set()  # markups nodes between PointStartInteraction and PointEndInteraction
        self._edit_pending = False
        self._stop_requested = False
        self._propagating: _PropagationJob | None = None
        self.queued: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (segment info, start arguments) to do next
        self._scene_tags = [scene.AddObserver(ev, self._on_scene_save)
                            for ev in (scene.StartSaveEvent, scene.EndSaveEvent)]
        self._scene_tags.append(scene.AddObserver(scene.StartCloseEvent, self._on_scene_close))

    # -- messages --------------------------------------------------------------------------------------
    def say(self, role: str, text: str) -> ChatMessage:
        """A chat line from a front end (e.g. an error it caught), kept with the logic's own."""
        return self._say(role, text)

    def _say(self, role: str, text: str, turn: int | None = None) -> ChatMessage:
        msg = ChatMessage(role, text, turn)
        self.messages.append(msg)
        if self.on_message is not None:
            self.on_message(msg)
        return msg

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    @property
    def busy(self) -> bool:
        return self.executor.busy

    def poll(self) -> None:
        """Hand finished worker jobs to the main thread (call from a QTimer); say how far a propagation is."""
        self._report_progress()
        self.executor.poll()

    def wait(self, timeout: float = 600.0) -> None:
        """Block until every queued turn is done and written (console and tests)."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if not self.busy:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker was still busy after {timeout:.0f} s")
            time.sleep(0.02)

    def _require_idle(self, what: str) -> None:
        if self.busy:
            raise AgentError(f"The agent is still working on a turn, so '{what}' cannot run now. "
                             "Press Stop (or wait for the turn to finish) and try again.")

    def _require_run(self) -> TargetRun:
        run = self.active
        if run is None:
            raise AgentError("No segmentation session yet: type a request such as 'segment the liver' and press Run.")
        if run.session is None:
            raise AgentError("The engine is still loading for this session; wait for the 'Engine ready' message.")
        return run

    def _submit(self, run: TargetRun, name: str, fn: Callable[..., Any], *args: Any,
                callback: Callable[[JobResult], None]) -> None:
        """Queue model work; its callback runs only while `run` is still open (the scene may have been closed) and
        any exception in it becomes a chat line: it runs in the poll timer, where it would otherwise vanish."""
        def done(result: JobResult) -> None:
            if not any(r is run for r in self.runs.values()):
                return
            try:
                callback(result)
            except Exception as exc:  # noqa: BLE001 - reported in the chat, never raised into the timer
                self._callback_failed(run, exc)

        self.executor.submit(name, fn, *args, callback=done)

    def _callback_failed(self, run: TargetRun, exc: Exception) -> None:
        import traceback

        traceback.print_exc()  # the details belong in the Python console
        run.auto_turns_left = 0
        if run.segment() is None:
            self._say("error", f"Segment '{run.target}' was deleted while the agent worked on it, so the result was "
                               "not written. Start the request again to make a new segment.")
        else:
            self._say("error", f"Writing the agent's result into the scene failed: {exc}. Check that the volume, "
                               "segmentation and markups still exist, then try again.")
        self._changed()

    def _on_scene_close(self, caller: Any, event: Any) -> None:
        """File > Close Scene: every run's nodes go, so the runs go too; results still in flight are dropped."""
        if self._propagating is not None:
            self._propagating.cancel.set()
            self._propagating = None
        had_runs = bool(self.runs)
        for run in list(self.runs.values()):
            run.auto_turns_left = 0
            self._remove_observers(run)
        self.runs.clear()
        self.queued.clear()
        self.active = None
        self._dragging.clear()
        self._edit_pending = False
        if had_runs:
            self._say("info", "The scene was closed, and the agent's sessions with it. Load a volume and type a "
                              "request to start again.")
        self._changed()

    # -- starting ----------------------------------------------------------------------------------------
    def start(self, volume_node: Any, segmentation_node: Any, target: str, segment_name: str | None = None,
              axis: str = "K", slice_index: int | None = None, engine: str | None = None,
              policy: Any = None, reference_segment_id: str | None = None, modality: str | None = None,
              window: Any = None, max_turns: int = 5, policy_options: dict[str, Any] | None = None,
              engine_options: dict[str, Any] | None = None, segment_info: dict[str, Any] | None = None,
              first: str | None = None) -> TargetRun:
        """Open (or resume) the session for `target` on slice `slice_index` along IJK `axis`.

        segmentation_node: None creates one. segment_name: the segment to write (default: `target`; created
        if missing). policy: a name for the policy factory (one of POLICY_CHOICES) or a policy object; None
        picks `default_policy(reference_segment_id)`: "oracle" with a reference, else the GT-free agent.
        reference_segment_id: for the "oracle" policy, the segment holding the reference mask on this slice.
        policy_options: keyword arguments for the policy factory, e.g. {"mllm_path": DIR} for "mllm" or
        {"weights": PT} for "learned". engine: None picks `default_engine()`. engine_options: keyword arguments for
        the engine, {"checkpoint": PATH} for the SAM engines (Meta's checkpoint file, required). segment_info:
        {"color": (r, g, b) 0..1, "terminology": Slicer's entry string} for a segment this call creates.
        first: with a GT-free policy, the agent makes the first turn itself (issue #16): "auto" (an installed
        specialist, else the locator), "specialist" or "locator"; it picks the start slice of a volume. None: the
        person places the first box (a chat request passes "auto").
        """
        check_volume(volume_node)
        if first is not None and str(first).strip().lower() not in FIRST_CHOICES:
            raise AgentError(f"Unknown first turn '{first}': choose one of {', '.join(FIRST_CHOICES)}.")
        engine = engine or default_engine()
        engine_options = {k: v for k, v in (engine_options or {}).items() if v not in (None, "")}
        self._check_engine(engine, engine_options)
        if not target or not str(target).strip():
            raise AgentError("No target given: say what to segment, e.g. 'segment the liver'.")
        target = str(target).strip()
        if policy is None:
            policy = default_policy(reference_segment_id)
        if isinstance(policy, str):
            policy = policy.strip().lower()
            if self.policy_factory is None and policy not in POLICY_CHOICES:
                raise AgentError(f"Unknown policy '{policy}': choose one of {', '.join(POLICY_CHOICES)}.")
        policy_options = dict(policy_options or {})
        if isinstance(policy, str) and policy in _BUILT_ON_WORKER:
            self._check_policy_files(policy, policy_options)  # fail fast, before anything is created
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
                             f"{self.words.unlock_segment}.")
        start_mask = None
        if segment_id and first is not None:  # a request on a segment that already holds a mask: go on from it
            found = _largest_slice(segment_kji(segmentation_node, segment_id, volume_node), axis)
            if found is not None:
                slice_index, first = found, None
                geom = slice_geometry(volume_node, axis, int(slice_index))
                start_mask = True
        key = (segmentation_node.GetID(), segment_id, axis, int(slice_index))
        existing = self.runs.get(key) if segment_id else None
        if existing is not None and existing.status != "accepted":
            self.active = existing
            self._say("info", f"Resuming '{existing.target}' on slice {axis}={slice_index}: "
                              f"{len(existing.records)} turn(s) so far.")
            self._changed()
            return existing
        writer = SegmentSliceWriter(self.scene, segmentation_node, volume_node)  # checks geometry, may raise
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
        if isinstance(policy, str) and policy in _BUILT_ON_WORKER:
            policy_obj, deferred = None, (policy, policy_options)  # weights / model load on the worker
        else:
            policy_obj = self._make_policy(policy, gt, policy_options)
        policy_name = policy if isinstance(policy, str) else type(policy).__name__
        arr = volume_array_kji(volume_node)
        modality = modality or guess_modality(arr)
        image = _to_engine_rgb(geom.extract(arr), modality, window)
        base = f"MedAgentSeg {name}"
        prompts = PromptNodes.create(self.scene, base, volume_node.GetTransformNodeID())
        recorder = TrajectoryRecorder(self.scene, base, self.sequences_logic)
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
        if start_mask:
            run.start_mask = writer.read_slice(segment_id, geom)
        if first is not None and policy_name in GT_FREE:  # the worker gets copies: it never reads MRML
            run.start_plan = StartPlan(np.array(arr, copy=True), lps_geometry(geom.ijk_to_ras),
                                       str(first).strip().lower(), self.library, self.device)
        for node in prompts.nodes:
            node.SetAttribute(TAG_PREFIX + "Segment", segment_id)
            node.SetAttribute(TAG_PREFIX + "Slice", f"{axis}={slice_index}")
            for ev in MARKUP_EVENTS:
                run.observer_tags.append((node, node.AddObserver(getattr(node, ev), self._on_markups_edited)))
            for ev, callback in (("PointStartInteractionEvent", self._on_interaction_start),
                                 ("PointEndInteractionEvent", self._on_interaction_end)):
                run.observer_tags.append((node, node.AddObserver(getattr(node, ev), callback)))
        segment.SetTag(TAG_PREFIX + "Target", target)
        segment.SetTag(TAG_PREFIX + "Engine", engine)
        segment.SetTag(TAG_PREFIX + "Status", "loading")
        if existing is not None:  # accepted, then unlocked by the person: its nodes go, its mask stays the segment's
            self._discard_run(existing)
        self.runs[(segmentation_node.GetID(), segment_id, axis, int(slice_index))] = run
        self.active = run
        self._jump_slice_views(run)
        # the CT window is worth saying; "MR intensities" on a photo (an endoscopy frame) is only noise
        seen = " (CT intensities, abdomen window)" if modality == "CT" and window is None else ""
        self._say("info", f"Preparing '{target}' on slice {axis}={slice_index} of '{volume_node.GetName()}' "
                          f"with {engine}{seen}...")
        if isinstance(policy, str) and policy == "scripted":
            self._say("info", f"You drive this one: place the box ({self._box_tool(run)}) around the {target} or a "
                              "click; the engine runs on every prompt you place.")
        elif run.start_plan is not None:
            self._say("info", f"Agent: {policy} (GT-free, no reference needed). It starts on its own: "
                              + ("an installed specialist model, else " if run.start_plan.choice != "locator" else "")
                              + f"the locator finds the {target} and places the first turn, then it refines. Undo "
                              "takes any turn back; edit the box or the clicks at any turn to take over.")
        elif isinstance(policy, str) and policy in GT_FREE:
            self._say("info", f"Agent: {policy} (GT-free, no reference needed). It refines from your box: place "
                              f"the box ({self._box_tool(run)}) around the {target}, then press Run. Edit the "
                              "box or the clicks at any turn to take over.")
        self._submit(run, "open session", self._open_session_job, run, deferred,
                     callback=lambda r: self._on_session_open(run, r))
        self._changed()
        return run

    # -- chat requests -----------------------------------------------------------------------------------------
    def request(self, text: str, volume_node: Any = None, segmentation_node: Any = None, view: str = "Red",
                **start_kwargs: Any) -> str:
        """One line the person typed: shown in the chat, then done. "segment the liver" starts a session and runs
        the agent (one segment per structure; the others are queued and start after Accept); accept / reject / undo
        / stop / refine / "whole volume" / "re-propagate" act on the active session. The parser's warnings ("Read
        'livr' as 'liver'") are said, and a modality named in the request is used. start_kwargs go to `start`.
        Returns the command. Raises AgentError / MRMLInputError (a sentence) as the calls it makes do."""
        text = (text or "").strip()
        if not text:
            return "empty"
        self._say("user", text)
        command = chat_command(text)
        if command == "propagate":
            self.propagate()
            return command
        if command == "repropagate":
            self.repropagate(None, view)
            return command
        from MedAgentSegLib.language.parser import parse_request

        parsed = parse_request(text)
        for warning in parsed.warnings:
            self._say("warning", _sentence(warning))
        if parsed.targets and (parsed.command == "segment" or self.active is None):
            self._start_targets(parsed, volume_node, segmentation_node, dict(start_kwargs))
            return "segment"
        handlers = {"accept": self.accept, "reject": self.reject, "undo": self.undo, "stop": self.stop,
                    "refine": self.run_agent, "whole_volume": self.propagate}
        if parsed.command in handlers:
            handlers[parsed.command]()
        elif parsed.command in ("next_slice", "previous_slice"):
            self._say("error", f"'{text}' is not available yet: the agent segments one slice at a time. Move the "
                               "slice view to the slice you want and type the request again.")
        else:
            self._say("error", parsed.message or f"I did not understand '{text}'. Try 'segment the liver'.")
        return parsed.command

    def _start_targets(self, parsed: Any, volume_node: Any, segmentation_node: Any, kwargs: dict[str, Any]) -> None:
        targets = segment_targets(parsed)
        if len(targets) == 1 and kwargs.get("segment_name"):
            targets[0]["name"] = kwargs["segment_name"]
        kwargs.pop("segment_name", None)
        kwargs.setdefault("first", "auto")  # no prompt placed yet: the agent makes the first turn (issue #16)
        said = request_modality(parsed)
        kwargs["modality"] = kwargs.get("modality") or said
        if said and volume_node is not None and volume_node.GetImageData() is not None:
            seen = guess_modality(volume_array_kji(volume_node))
            if seen != said:
                self._say("warning", f"You said {said}, but the intensities look like {seen}; using {said} as you "
                                     "said. If that is wrong, type the request again without it.")
        first, *rest = targets
        run = self.start(volume_node, segmentation_node, first["name"], segment_name=first["name"],
                         segment_info=first, **kwargs)
        self.queued = [(t, {**kwargs, "segmentation_node": run.segmentation_node, "volume_node": volume_node})
                       for t in rest]
        if rest:
            names = ", ".join(f"'{t['name']}'" for t in rest)
            self._say("info", f"One segment per structure: '{first['name']}' now, then {names}, each in its own "
                              f"segment; the next starts when you Accept '{first['name']}'.")
        self.run_agent(kwargs.get("max_turns"))

    def _start_queued(self) -> None:
        """After Accept: the next structure of the request, on the same slice, in its own segment."""
        if not self.queued:
            return
        info, kwargs = self.queued.pop(0)
        kwargs = dict(kwargs)
        volume_node, segmentation_node = kwargs.pop("volume_node"), kwargs.pop("segmentation_node")
        self.start(volume_node, segmentation_node, info["name"], segment_name=info["name"], segment_info=info,
                   **kwargs)
        self.run_agent(kwargs.get("max_turns"))

    def _new_segmentation(self, volume_node: Any) -> Any:
        """A segmentation for `volume_node`, under the volume's parent transform so the two stay together."""
        node = slicer.vtkMRMLSegmentationNode()
        node.SetName(self.scene.GenerateUniqueName(f"{volume_node.GetName()} MedAgentSeg"))
        self.scene.AddNode(node)
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

    def _make_policy(self, policy: Any, gt: np.ndarray | None, options: dict[str, Any] | None = None,
                     device: str | None = None) -> Any:
        """A policy object from a name (main thread, or the worker thread for `_BUILT_ON_WORKER` names)."""
        if not isinstance(policy, str):
            if not hasattr(policy, "next_action"):
                raise AgentError(f"{policy!r} is not a policy (it has no next_action method).")
            return policy
        options = dict(options or {})
        factory = self.policy_factory
        if factory is None:
            from MedAgentSegLib.policies import create_policy

            if policy in _BUILT_ON_WORKER and device is not None:
                options.setdefault("device", device)  # the policy's tensors live where the engine's do

            def factory(name, ref, **kw):
                return create_policy(name, gt=ref if name == "oracle" else None, **kw)
        try:
            return factory(policy, gt, **options) if options else factory(policy, gt)
        except ValueError as exc:
            raise AgentError(f"Policy '{policy}' cannot be used: {exc}") from None
        except ImportError as exc:
            raise AgentError(f"Policy '{policy}' cannot be used: {exc}. Install the missing package into "
                             "Slicer's Python (Python console: slicer.util.pip_install(...)), or choose another "
                             "policy.") from None

    def _check_policy_files(self, policy: str, options: dict[str, Any]) -> None:
        """Main thread, before anything is created: the files a `learned` / `mllm` policy loads exist."""
        if self.policy_factory is not None:
            return
        if policy == "learned":
            from MedAgentSegLib.agent.learned import POLICY_WEIGHTS

            weights = Path(options.get("weights") or POLICY_WEIGHTS)
            if not weights.is_file() or not weights.with_suffix(".json").is_file():
                raise AgentError(f"Policy 'learned' cannot be used: its weights {weights.name} or their card "
                                 f"{weights.with_suffix('.json').name} are not installed in {weights.parent}. "
                                 "Choose the 'heuristic' policy (GT-free, no weights), or reinstall MedAgentSeg.")
        elif policy == "mllm":
            path = str(options.get("mllm_path") or "").strip()
            if not path:
                raise AgentError("Policy 'mllm' needs a local model folder: fill in 'MLLM folder' with a Qwen2-VL / "
                                 "Qwen2.5-VL folder saved with save_pretrained (nothing is downloaded), or choose "
                                 "another policy.")
            from MedAgentSegLib.agent.mllm import check_model_folder

            try:
                check_model_folder(path)
            except ValueError as exc:
                raise AgentError(f"Policy 'mllm' cannot be used: {exc}") from None

    def _check_engine(self, engine: str, options: dict[str, Any]) -> None:
        """Main thread, before anything is created: a known engine, and SAM's checkpoint file given and there."""
        if self.engine_factory is not None:
            return
        if engine not in engine_choices():
            raise AgentError(f"Unknown engine '{engine}': choose one of {', '.join(engine_choices())}.")
        checkpoint = options.get("checkpoint")
        if engine.startswith("sam_") and not checkpoint:
            raise AgentError(f"Engine '{engine}' needs Meta's SAM checkpoint file (e.g. sam_vit_b_01ec64.pth, "
                             "downloaded once by you): give its path in 'SAM checkpoint', or choose "
                             f"'{default_engine()}'.")
        if checkpoint and not Path(checkpoint).is_file():
            raise AgentError(f"The checkpoint file {checkpoint} does not exist: give the path of the downloaded "
                             "file in 'SAM checkpoint'.")

    def _engine(self, name: str, options: dict[str, Any] | None = None) -> Any:  # worker thread
        options = dict(options or {})
        key = (name, tuple(sorted((k, str(v)) for k, v in options.items())))
        eng = self.engines.get(key)
        if eng is None:
            if self.engine_factory is not None:
                eng = self.engine_factory(name, **options) if options else self.engine_factory(name)
            else:
                from MedAgentSegLib.engines import create_engine

                eng = create_engine(name, device=self.device, encoder="auto", **options)  # the checked fast path
            self.engines[key] = eng
        return eng

    def _open_session_job(self, run: TargetRun, deferred: tuple[str, dict[str, Any]] | None = None
                          ) -> tuple[Session, Any, FirstTurn | None, Turn | None]:  # worker thread
        """The engine, the policy when it loads weights (`deferred` = (name, options)), and the encoded session; with a
        start plan also the agent's own first turn (None when it asks), on the start slice it chose."""
        engine = self._engine(run.engine_name, run.engine_options)
        policy = None
        if deferred is not None:
            name, options = deferred
            policy = self._make_policy(name, None, options, device=str(getattr(engine, "device", "cpu")))
        first = None
        image, metadata = run.image_rgb, dict(run.metadata)
        if run.start_plan is not None:
            first = find_first_turn(engine, run.start_plan, run.geom, run.modality, run.window, run.target,
                                    _to_engine_rgb, self._load_locator)
            if first.image is not None:  # the start slice moved: the session is opened there
                image, metadata["slice"] = first.image, int(first.slice_index)
        session = Session(engine, image, run.target, max_turns=run.max_turns, metadata=metadata)
        if run.start_mask is not None:  # the mask already there (a pre-label, a finished slice) is the first turn
            return session, policy, None, session.add_edit(run.start_mask, "existing", box=True)
        return session, policy, first, self._first_turn(session, first)

    def _load_locator(self) -> Any:  # worker thread
        if self._locator is None:
            if self.locator_factory is not None:
                self._locator = self.locator_factory()
            else:
                from MedAgentSegLib.agent.locator import load_locator

                self._locator = load_locator()
        return self._locator

    @staticmethod
    def _first_turn(session: Session, first: FirstTurn | None) -> Turn | None:  # worker thread
        """The agent's own first turn in the session (the scene is written on the main thread), or None (it asks)."""
        if first is None or first.kind == "ask":
            return None
        if first.kind == "specialist":
            turn = session.add_mask(first.mask, first.record)
            turn.action = {**turn.action, "reason": f"the specialist {first.record['model']} segmented the "
                           f"{session.target} in the whole volume; I refine its mask from here"}
            return turn
        turn = session.add_box(*first.box, source="agent")
        turn.action = {**turn.action, "reason": f"the locator: the {session.target} is most likely here",
                       "confidence": round(float(first.confidence), 4)}
        return turn

    def _on_session_open(self, run: TargetRun, result: JobResult) -> None:
        if result.error is not None:
            self._discard_run(run)
            self._report_error("Could not start the engine", result)
            return
        if run.segment() is None:
            self._discard_run(run)
            self._say("error", f"Segment '{run.target}' was deleted while the engine was loading; nothing was "
                               "written. Type the request again to start over.")
            self._changed()
            return
        session, policy, first, first_turn = result.value
        if first is None and first_turn is not None:  # the segment's own mask: written as a turn, then the agent
            first = FirstTurn("existing", message="")
        if policy is not None:
            run.policy = policy
        if first is not None and first.image is not None:
            other = self.runs.get((*run.key[:3], int(first.slice_index)))
            if other is not None and other is not run and other.status != "accepted":
                self._resume_instead(run, other, first.kind)
                return
            self._move_run(run, int(first.slice_index), first.image, first.kind)
        run.session = session
        run.segment().SetTag(TAG_PREFIX + "Status", "open")
        device = str(getattr(session.engine, "device", "cpu"))
        self.engine_device = device
        # the whole wait the person saw (engine load, the locator's look at the slices, encoding), not the last step
        self._say("info", f"Engine ready: {session.engine.name} on {device}, in {time.monotonic() - run.opened:.1f} s.")
        if device == "cpu":
            self._say("warning", "Running on CPU: each turn takes about 0.1-2 s and the first one longer. "
                                 "A CUDA GPU makes it interactive.")
        if first is not None:
            self._start_on_its_own(run, first, first_turn)
        elif run.auto_turns_left > 0:
            self._submit_agent_turn(run)
        self._changed()

    def _start_on_its_own(self, run: TargetRun, first: FirstTurn, turn: Turn | None) -> None:
        """Main thread: write the agent's own first turn as any turn (then the agent continues), or ask."""
        run.start_plan = None  # done: the volume copy is not kept
        for note in first.notes:
            self._say("warning", note)
        if turn is None:
            run.auto_turns_left = 0
            self._ask_for_box(run, first.message)
            return
        run.auto_turns_left = max(0, run.auto_turns_left - 1)  # the first turn is one of the agent's turns
        self._on_turn(run, JobResult("first turn", value=turn))

    def _resume_instead(self, run: TargetRun, other: TargetRun, who: str) -> None:
        """Main thread: the start slice chosen for `run` already has a session of the same segment (`other`): that
        one goes on, with its turns and Undo, and `run` is dropped before it writes anything."""
        self._discard_run(run)
        self.active = other
        self._set_tags(other)
        self._jump_slice_views(other)
        self._say("info", f"The {'specialist' if who == 'specialist' else 'locator'} starts on slice "
                          f"{other.geom.axis}={other.geom.index}, where '{other.target}' already has a session: "
                          "resuming it "
                          f"({len(other.records)} turn(s) so far).")
        self._changed()

    def _move_run(self, run: TargetRun, index: int, image: np.ndarray, who: str) -> None:
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
            self._discard_run(replaced)  # its box, clicks and sequences go; the mask it wrote stays in the segment
        self.runs[run.key] = run
        self._jump_slice_views(run)
        what = "the specialist's mask is largest" if who == "specialist" else \
            f"the locator finds the {run.target} most clearly"
        self._say("info", f"Starting on slice {run.geom.axis}={index}, where {what}; the slice views show it.")

    def _discard_run(self, run: TargetRun) -> None:
        """Main thread: drop `run` and its markups / sequence nodes; the segment is never touched (what it wrote, an
        accepted mask above all, is the person's)."""
        self._remove_observers(run)
        run.prompts.remove_from_scene(self.scene)
        for node in [*run.recorder.nodes(), *(run.review.nodes() if run.review is not None else ())]:
            if node.GetScene() is not None:
                self.scene.RemoveNode(node)
        self.runs.pop(run.key, None)
        if self.active is run:
            self.active = None

    def discard_runs(self, segmentation_node: Any) -> None:
        """Drop the sessions writing into `segmentation_node`, their nodes and the structures queued for it: a front
        end is removing it (the review queue moving to another case)."""
        self._require_idle("close the case")
        for run in [r for r in self.runs.values() if r.segmentation_node is segmentation_node]:
            self._discard_run(run)
        self.queued = [(info, kw) for info, kw in self.queued if kw.get("segmentation_node") is not segmentation_node]
        self._changed()

    def _remove_observers(self, run: TargetRun) -> None:
        for node, tag in run.observer_tags:
            node.RemoveObserver(tag)
            self._dragging.discard(node)
        run.observer_tags.clear()

    def _report_error(self, what: str, result: JobResult) -> None:
        err = result.error
        if isinstance(err, AgentError):  # already says what happened and what to do
            self._say("error", str(err))
        elif isinstance(err, ImportError):
            self._say("error", f"{what}: {err}. Install the missing packages ({self.words.install}), then try "
                               "again.")
        else:
            self._say("error", f"{what}: {err}. Nothing was changed; fix the cause and try again "
                               f"(details in {self.words.details}).")
        print(result.trace)  # noqa: T201 - the full traceback belongs in Slicer's Python console
        self._changed()

    # -- agent turns -------------------------------------------------------------------------------------
    def run_agent(self, max_turns: int | None = None) -> None:
        """Let the agent take turns, one after the other, until it stops, `max_turns` are done, or Stop."""
        run = self.active
        if run is None:
            raise AgentError("No segmentation session yet: type a request such as 'segment the liver' and press Run.")
        if run.status == "accepted":
            raise AgentError(f"'{run.target}' was accepted and is frozen; start a new request to segment again.")
        if self._propagating is not None:
            raise AgentError("The propagation is still running: wait for it, or press Stop, then Run again.")
        self._stop_requested = False
        turns = int(max_turns if max_turns is not None else run.max_turns)
        if run.session is not None and not self.busy and self._queue_unrun_prompts(run):
            run.auto_turns_left = turns  # the agent continues once the person's box / clicks have run
            return
        run.auto_turns_left = turns
        if run.session is None or self.busy:
            return  # starts when the engine is ready / the turn in flight continues with these turns
        if run.session.status == "stopped":
            run.session.undo()  # continue after a stop: the stop turn wrote nothing
        run.records_at_run = len(run.records)
        self._submit_agent_turn(run)

    def _queue_unrun_prompts(self, run: TargetRun) -> bool:
        """A box or clicks in the markups that the engine has not run yet (e.g. an ROI placed without an end
        event): queue them as the person's turn first. True if a turn was queued."""
        shown = run.prompts.read(run.geom)
        if shown.empty or _same_prompts(shown, run.session.prompts):
            return False
        self._on_markups_edited(None, None)
        return self.busy

    def step(self) -> None:
        """Take exactly one agent turn (after the person's box / clicks, if the engine has not run them yet)."""
        self.run_agent(max_turns=1)

    def stop(self) -> None:
        """Stop after the turn in progress (if any); with none in progress, record the stop in the session. A
        propagation in progress ends after the slice it is on, keeping the slices done."""
        if self._propagating is not None:
            self._propagating.cancel.set()
            self._say("info", "Stopping the propagation after the slice in progress; the slices done so far are kept.")
            self._changed()
            return
        self._stop_requested = True
        run = self.active
        if run is None:
            return
        run.auto_turns_left = 0
        if not self.busy and run.session is not None and run.session.status == "open" and run.session.turns:
            run.session.stop()
            self._set_tags(run)
        self._say("info", "Stopped. Edit the clicks or box, press Run to continue, or Accept.")
        self._changed()

    def _submit_agent_turn(self, run: TargetRun) -> None:
        if run.session is None or run.session.status != "open":
            run.auto_turns_left = 0
            return
        run.auto_turns_left -= 1
        reverted_before = len(getattr(run.session, "reverted", ()))  # grows when the agent takes a turn back
        self._submit(run, "agent turn", self._agent_turn_job, run,
                     callback=lambda r: self._on_turn(run, r, reverted_before))

    @staticmethod
    def _agent_turn_job(run: TargetRun) -> Turn:  # worker thread
        session = run.session  # the number of turns per Run is counted by run.auto_turns_left
        return session.agent_turn(run.policy)

    def _user_turn_job(self, run: TargetRun, kind: str, payload: Any) -> Turn:  # worker thread
        session = run.session
        if session.status == "stopped":
            session.undo()
        if kind == "click":
            x, y, positive = payload
            return session.add_click(x, y, positive, source="user")
        if kind == "box":
            return session.add_box(*payload, source="user")
        return session.set_prompts(payload, source="user")

    def _on_turn(self, run: TargetRun, result: JobResult, reverted_before: int | None = None) -> None:
        if result.error is not None:
            run.auto_turns_left = 0
            self._report_error("The turn failed", result)
            self._restore_prompts_view(run)
            return
        turn: Turn = result.value
        if not turn.produces_mask:
            run.auto_turns_left = 0
            taken_back = None
            if reverted_before is not None and len(getattr(run.session, "reverted", ())) > reverted_before:
                taken_back = self._take_back_in_scene(run)
            self._set_tags(run)
            self._say_stop(run, turn, taken_back)
            if self._edit_pending:  # the person edited the prompts while the agent was deciding
                self._edit_pending = False
                self._on_markups_edited(None, None)
            self._changed()
            return
        try:
            self._apply_turn(run, turn)
        except Exception as exc:  # the MRML write failed: _apply_turn already put everything back
            run.auto_turns_left = 0
            self._say("error", f"Turn could not be written into the scene: {exc}. The segment and markups are "
                               "unchanged; check that the segmentation and volume still exist and try again.")
            self._changed()
            return
        if turn.source == "user" and run.policy_name in GT_FREE and run.auto_turns_left <= 0 \
                and len(run.records) == 1:
            self._say("info", f"Press Run (or Step) and the {run.policy_name} agent refines from your prompts.")
        if self._edit_pending:
            self._edit_pending = False
            self._on_markups_edited(None, None)
        elif run.auto_turns_left > 0 and not self._stop_requested:
            self._submit_agent_turn(run)
        elif run.auto_turns_left > 0:
            run.auto_turns_left = 0
        self._changed()

    def _say_stop(self, run: TargetRun, turn: Turn, taken_back: TurnRecord | None) -> None:
        """The chat lines for a stop turn: the policy's reason, a box request, or the turn it took back."""
        decision = describe_decision(turn.action) if turn.source == "agent" else None
        if turn.source == "agent" and run.session.prompts.empty and not run.records:
            self._ask_for_box(run, _sentence(decision or "I need a first prompt to refine from"))
            return
        if taken_back is not None:
            kept = f"as after turn {taken_back.number - 1}" if taken_back.number > 1 else "as before turn 1"
            why = decision or "it expected that turn made the mask worse"
            if why.lower().startswith("took back") and ":" in why:  # "took back my last turn: <why>"
                why = why.split(":", 1)[1].strip()
            self._say("agent", f"The agent took back turn {taken_back.number}: {why}. The segment, box and clicks "
                               f"are {kept}.", taken_back.number)
        why = f": {decision}" if decision and taken_back is None else ""
        if taken_back is None and run.records and len(run.records) == run.records_at_run:
            # Run added nothing: telling the person to press Run again would send them round in circles
            self._say("agent", f"The agent has nothing to add to turn {len(run.records)}{why}. Accept it, or correct "
                               f"it with a click, the box or {self.words.edit_by_hand}.")
            return
        self._say("agent", f"The agent stopped after {len(run.records)} turn(s) "
                           f"(predicted IoU {self._last_score(run)}){why}. Accept, Reject the last turn, add a click, "
                           "or press Run to let it continue.")

    def _ask_for_box(self, run: TargetRun, question: str) -> None:
        """The agent does not guess: it says why, and the next placement in a slice view draws the session's box."""
        self._say("agent", question)
        armed = self._arm_box_placement(run)
        how = "the view is ready: click two opposite corners" if armed else self.words.place_box
        self._say("info", f"Draw the box ({how}) around the {run.target} on slice {run.geom.axis}={run.geom.index}, "
                          "or place a positive click on it.")

    def _box_tool(self, run: TargetRun) -> str:
        """Where the person finds the box: Slicer names the markups node, the page its Box button."""
        if self.words.front == "slicer":
            return f"'{run.prompts.roi.GetName()}'"
        return self.words.place_box

    def arm_placement(self, role: str = "box") -> bool:
        """The next click in a slice view places the active session's box ("box") or a "positive" / "negative"
        click, through Slicer's markups widgets; the engine runs when it is placed. False if it cannot be armed."""
        run = self._require_run()
        if run.status == "accepted":
            raise AgentError(f"'{run.target}' was accepted and is frozen; start a new request to segment again.")
        nodes = {"box": run.prompts.roi, "positive": run.prompts.positive, "negative": run.prompts.negative}
        if role not in nodes:
            raise AgentError(f"Unknown prompt '{role}': place a box, a positive or a negative click.")
        return self._arm(nodes[role])

    def _arm_box_placement(self, run: TargetRun) -> bool:
        return self._arm(run.prompts.roi)

    def _arm(self, node: Any) -> bool:
        """Make `node` the one the next placement in a slice view defines (Slicer's selection and interaction
        singletons; a scene without them is left alone). True if armed."""
        selection = self.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
        interaction = self.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        if selection is None or interaction is None or node.GetLocked():
            return False
        selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selection.SetActivePlaceNodeID(node.GetID())
        interaction.SetPlaceModePersistence(0)
        interaction.SetCurrentInteractionMode(interaction.Place)
        return True

    def _take_back_in_scene(self, run: TargetRun) -> TurnRecord | None:
        """The agent took back its own last turn (session.reverted grew): show the turn before in the scene."""
        popped = run.session.reverted[-1]
        rec = run.records[-1] if run.records else None
        if rec is None or rec.session_index != popped.get("index"):  # the scene does not show that turn
            self._say("warning", "The agent took back a turn the scene does not show; the scene is left as it is.")
            return None
        self._unwrite_last(run)
        return rec

    def _unwrite_last(self, run: TargetRun) -> TurnRecord:
        """Put the segment slices, markups and sequence back as before the last written turn (main thread)."""
        rec = run.records[-1]
        self._writing = True
        try:
            run.writer.restore(rec.segments_before, run.geom)
            # The markups show the session's prompts, never a copy taken when the turn was written: for a person's
            # click that copy already held the new click, so Undo left it in view and the next edit re-ran with it.
            run.prompts.write(run.session.prompts, run.geom)
            run.recorder.remove_last()
            run.records.pop()
            self._set_tags(run)
            run.shown = run.writer.read_all(run.geom)
        finally:
            self._writing = False
        return rec

    @staticmethod
    def _last_score(run: TargetRun) -> str:
        return f"{run.records[-1].record['score']:.2f}" if run.records and run.records[-1].record["score"] is not None \
            else "n/a"

    def _apply_turn(self, run: TargetRun, turn: Turn) -> TurnRecord:
        """Write one mask-producing turn (main thread): segment slice, markups, sequence item, tags."""
        for node, what in ((run.segmentation_node, "segmentation"), (run.volume_node, "volume")):
            if node.GetScene() is None:
                run.session.undo()
                raise MRMLInputError(f"the {what} node '{node.GetName()}' was removed from the scene")
        if run.segment() is None:
            run.session.undo()
            raise MRMLInputError(f"segment '{run.segment_id}' was deleted")
        number = len(run.records) + 1
        rec = TurnRecord(number, turn.index, run.writer.read_all(run.geom), self._turn_record(number, turn))
        self._writing = True
        try:
            stored = run.writer.write_slice(run.segment_id, turn.mask, run.geom)
            run.prompts.write(turn.prompts, run.geom)
            rec.record["masked_voxels"] = int((stored != turn.mask).sum())
            run.records.append(rec)
            self._set_tags(run)
            run.recorder.record(number, run.segmentation_node, run.segment_id, run.prompts, rec.record)
            run.shown = run.writer.read_all(run.geom)
        except Exception:
            if run.records and run.records[-1] is rec:
                run.records.pop()
            run.session.undo()
            run.writer.restore(rec.segments_before, run.geom)
            run.prompts.write(run.session.prompts, run.geom)
            while run.recorder.count > len(run.records):
                run.recorder.remove_last()
            self._set_tags(run)
            raise
        finally:
            self._writing = False
        extra = f"; the editor's masking kept {rec.record['masked_voxels']} voxel(s) unchanged" \
            if rec.record["masked_voxels"] else ""
        if turn.update == "disk":  # tell the user the model did not follow the click
            extra += "; the model ignored this click, so only a small disk around it was changed"
        score = "n/a" if turn.score is None else f"{turn.score:.2f}"
        who = "You" if turn.source == "user" else "Agent"
        decision = describe_decision(turn.action) if turn.source == "agent" else None
        # "predicted IoU": the engine's own estimate of its mask; the agent's confidence is said beside its reason
        stats = f"predicted IoU {score}, {turn.timings.get('engine_s', 0.0):.2f} s, {int(turn.mask.sum())} px{extra}"
        if decision:
            what = describe_action(turn.action, turn.prompts.to_dict())
            self._say("agent", f"Turn {number} ({who}): {decision} ({what}; {stats}).",
                      number)
        else:
            what = describe_action(turn.action, turn.prompts.to_dict())
            self._say("agent", f"Turn {number} ({who}): {what} - {stats}.", number)
        return rec

    @staticmethod
    def _turn_record(number: int, turn: Turn) -> dict[str, Any]:
        return {"turn": number, "session_index": turn.index, "source": turn.source, "action": turn.action,
                "prompts": turn.prompts.to_dict(),
                "score": None if turn.score is None else round(float(turn.score), 4),
                "timings": {k: round(float(v), 4) for k, v in turn.timings.items()},
                "area_px": int(turn.mask.sum()), "update": turn.update, "created": turn.created}

    def _set_tags(self, run: TargetRun) -> None:
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

    # -- reverting -----------------------------------------------------------------------------------------
    def reject(self) -> bool:
        """Revert the last mask-producing turn: mask, markups and sequence item. False if there is none."""
        return self._revert("Reject turn")

    def undo(self) -> bool:
        """Revert the last turn of any kind (a stop is undone by resuming; a mask turn as in `reject`)."""
        run = self._require_run()
        self._require_idle("Undo")
        if run.session.status == "stopped" and run.session.turns and not run.session.turns[-1].produces_mask \
                and not self._propagation_on_top(run):
            run.session.undo()
            self._set_tags(run)
            self._say("info", "Undid the stop; press Run or Step to continue.")
            self._changed()
            return True
        return self._revert("Undo")

    def _revert(self, what: str) -> bool:
        run = self._require_run()
        self._require_idle(what)
        if run.session.status == "accepted":
            raise AgentError(f"'{run.target}' was accepted and is frozen; {what} is not possible. Start a new "
                             "request to change it.")
        run.auto_turns_left = 0
        if self._propagation_on_top(run):
            return self._revert_propagation(run, what)
        if not run.records:
            self._say("info", f"Nothing to {what.lower()}: no turn has been written yet.")
            return False
        rec = run.records[-1]
        while run.session.turns and len(run.session.turns) - 1 > rec.session_index:
            run.session.undo()  # a stop after the mask turn
        run.session.undo()
        self._unwrite_last(run)
        undone = describe_action(rec.record["action"], rec.record.get("prompts"))
        self._say("info", f"{what}: turn {rec.number} reverted ({undone}).",
                  rec.number)
        self._changed()
        return True

    def accept(self) -> None:
        """Freeze the segment: no more turns, markups locked, segment tagged Locked and status Completed."""
        run = self._require_run()
        self._require_idle("Accept")
        if not run.records:
            raise AgentError("Nothing to accept yet: run at least one turn first.")
        self._require_writable(run, "Accept")
        run.session.accept()
        run.auto_turns_left = 0
        self._remove_observers(run)
        run.prompts.set_locked(True)
        segment = run.segment()
        segment.SetTag(TAG_PREFIX + "Locked", "true")
        try:
            slicer.vtkSlicerSegmentationsModuleLogic.SetSegmentStatus(
                segment, slicer.vtkSlicerSegmentationsModuleLogic.Completed)
        except (AttributeError, TypeError):
            segment.SetTag("Segmentation.Status", "completed")
        self._set_tags(run)
        self._say("info", f"Accepted '{run.target}' after {len(run.records)} turn(s); the segment is now frozen.")
        self._changed()
        self._start_queued()

    # -- human control -------------------------------------------------------------------------------------
    def add_click(self, ras: tuple[float, float, float], positive: bool = True) -> None:
        """Add a click at RAS position `ras` (projected onto the session's slice) and re-run the engine."""
        run = self._require_run()
        node = run.prompts.positive if positive else run.prompts.negative
        node.AddControlPoint(float(ras[0]), float(ras[1]), float(ras[2]))  # fires PointAdded only
        self._on_markups_edited(None, None)

    def record_hand_edit(self, tool: str = "editor") -> bool:
        """Record what the person drew on the session's slice (paint, erase, scissors; main thread, after the stroke)
        as one turn of the session: the segment's slice is read from MRML, the box and clicks stay, the next click
        refines the drawn mask, and Undo puts every segment on the slice back as it was before the stroke. False if
        the segment's slice is what the session already holds (nothing to record)."""
        run = self._require_run()
        self._require_idle("Recording your edit")
        self._require_writable(run, "Recording your edit")
        if run.session is None:
            raise AgentError("The slice is still being prepared; draw again once the chat says it is ready.")
        if tool not in HAND_TOOLS:
            raise AgentError(f"Unknown hand tool '{tool}': use one of {', '.join(HAND_TOOLS)}.")
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
        rec = TurnRecord(number, turn.index, before, self._turn_record(number, turn))
        run.records.append(rec)
        try:
            self._set_tags(run)
            run.recorder.record(number, run.segmentation_node, run.segment_id, run.prompts, rec.record)
        except Exception:
            run.records.pop()
            run.session.undo()
            while run.recorder.count > len(run.records):
                run.recorder.remove_last()
            self._set_tags(run)
            raise
        run.shown = run.writer.read_all(run.geom)
        run.auto_turns_left = 0
        verb = {"paint": "painted", "erase": "erased", "scissors": "cut with scissors"}.get(tool, "edited by hand")
        self._say("agent", f"Turn {number} (You): {verb} on slice {run.geom.axis}={run.geom.index} - "
                           f"{int(mask.sum())} px. Undo takes it back; a click or Run refines from it.", number)
        self._changed()
        return True

    def sync_prompts_from_markups(self) -> None:
        """Re-run the engine from the prompt state now shown in the markups (after edits by script)."""
        self._on_markups_edited(None, None)

    def _on_interaction_start(self, caller: Any, event: Any) -> None:
        self._dragging.add(caller)

    def _on_interaction_end(self, caller: Any, event: Any) -> None:
        self._dragging.discard(caller)
        self._on_markups_edited(caller, event)

    def _on_markups_edited(self, caller: Any, event: Any) -> None:
        if self._writing or (caller is not None and caller in self._dragging):  # a drag runs one turn, at its end
            return
        run = self.active
        if caller is not None:
            run = next((r for r in self.runs.values() if caller in r.prompts.nodes), run)
        if run is None or run.session is None or run.status == "accepted":
            return
        if self.busy:
            self._edit_pending = True
            run.auto_turns_left = 0
            return
        new = run.prompts.read(run.geom)
        old = run.session.prompts
        if _same_prompts(new, old):
            return
        if new.empty:
            self._say("error", "The edited prompt state is empty (no box and no click). Place a click or a box, "
                               "or press Undo.")
            self._restore_prompts_view(run)
            return
        kind, payload = "prompts", new
        same_box = (new.box is None and old.box is None) or (
            new.box is not None and old.box is not None and np.allclose(new.box, old.box, atol=1e-3))
        n_old = len(old.points)
        if same_box and len(new.points) == n_old + 1 and _same_points(new.points[:n_old], old.points) \
                and new.labels[:n_old] == old.labels:
            x, y = new.points[-1]
            kind, payload = "click", (x, y, bool(new.labels[-1]))
        elif old.box is None and new.box is not None and _same_points(new.points, old.points) \
                and new.labels == old.labels:
            kind, payload = "box", new.box
        run.auto_turns_left = 0
        self._submit(run, "user turn", self._user_turn_job, run, kind, payload,
                     callback=lambda r: self._on_turn(run, r))
        self._changed()

    def _restore_prompts_view(self, run: TargetRun) -> None:
        if run.session is None:
            return
        self._writing = True
        try:
            run.prompts.write(run.session.prompts, run.geom)
        finally:
            self._writing = False

    # -- slice views (Slicer only) -------------------------------------------------------------------------
    def _jump_slice_views(self, run: TargetRun) -> None:
        """Show the session's slice: rotate slice views to the volume and centre them on the slice."""
        centre = node_to_world(run.volume_node, run.geom.pixel_to_ras((run.geom.width - 1) / 2.0,
                                                                       (run.geom.height - 1) / 2.0))
        for node in [self.scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
                     for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode"))]:
            try:
                node.RotateToVolumePlane(run.volume_node)
            except (AttributeError, TypeError):
                pass
            node.JumpSliceByOffsetting(*centre)

    # -- 3D propagation ------------------------------------------------------------------------------------
    def propagate(self, config: PropagationConfig | None = None) -> bool:
        """Propagate the session's finished 2D mask through the whole volume along the session's slice axis (on the
        worker). The slices it makes are written into the segment as one undo step. False, with a chat line saying
        what to do, when the session has no mask yet."""
        run = self._require_run()
        self._require_idle("Propagate")
        self._require_writable(run, "Propagate")
        turn = next((t for t in reversed(run.session.turns) if t.produces_mask), None)
        if turn is None or not run.session.mask.any():
            self._say("error", f"Nothing to propagate yet: '{run.target}' has no mask on slice {run.geom.axis}="
                               f"{run.geom.index}. Draw the box (and let the agent refine it) until this slice looks "
                               "right, then press Propagate.")
            return False
        volume, mask = self._volume_copy(run), run.session.mask
        self._submit_propagation(run, "propagate", self._propagate_job, volume, mask, turn.logits, config)
        return True

    def repropagate(self, slice_index: int | None = None, view: str = "Red") -> bool:
        """Propagate again from a slice the person corrected in the segment (its mask is read from the segment),
        outwards from the first start slice; the slices on the start's side stay as they are. slice_index: the
        corrected slice (default: the one slice view `view` shows). False, with a chat line, before any Propagate."""
        run = self._require_run()
        self._require_idle("Re-propagate")
        self._require_writable(run, "Re-propagate")
        if not run.propagations:
            self._say("error", "Nothing to re-propagate yet: press Propagate first, then correct a slice with "
                               f"{self.words.edit_by_hand} and re-propagate from it.")
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

    def _require_writable(self, run: TargetRun, what: str) -> None:
        if run.segment() is None:
            raise AgentError(f"Segment '{run.segment_id}' was deleted, so '{what}' has nothing to write into. Start a "
                             "new request.")
        if run.status == "accepted" or is_segment_locked(run.segment()):
            raise AgentError(f"'{run.target}' was accepted and is frozen, so '{what}' cannot change it. Start a new "
                             "request to segment again.")

    def _view_slice_index(self, run: TargetRun, view: str) -> int:
        node = self.scene.GetNodeByID(f"vtkMRMLSliceNode{view}")
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
        job = _PropagationJob(run, kind)
        self._propagating = job
        run.auto_turns_left = 0
        self._submit(run, kind, fn, job, *args, callback=lambda r: self._on_propagated(job, r))
        what = "Propagating" if kind == "propagate" else "Re-propagating"
        self._say("info", f"{what} '{run.target}' slice by slice along {run.geom.axis} ({AXIS_NAMES[run.geom.axis]} "
                          "slices of the volume); Stop ends it after the slice in progress.")
        self._changed()

    def _propagate_job(self, job: _PropagationJob, volume: np.ndarray, mask: np.ndarray, logits: Any,
                       config: PropagationConfig | None) -> Propagation:  # worker thread
        run = job.run
        return propagate(self._engine(run.engine_name, run.engine_options), volume, run.geom.index, mask, logits,
                         AXIS_NAMES[run.geom.axis], run.modality, run.window, config, on_slice=job.slice_done,
                         should_stop=job.cancel.is_set)

    def _repropagate_job(self, job: _PropagationJob, volume: np.ndarray, previous: Propagation, index: int,
                         mask: np.ndarray) -> Propagation:  # worker thread
        run = job.run
        return repropagate(self._engine(run.engine_name, run.engine_options), volume, previous, index, mask, None,
                           run.modality, run.window, on_slice=job.slice_done, should_stop=job.cancel.is_set)

    def _report_progress(self) -> None:
        """The worker's progress as a chat line (main thread): the first at once, then at most one a second."""
        job = self._propagating
        if job is None:
            return
        done, now = job.done, time.monotonic()
        if done > job.reported and (not job.reported or now - job.reported_at >= PROGRESS_EVERY_S):
            job.reported, job.reported_at = done, now
            self._say("info", f"propagating: {done} slices done")

    def _on_propagated(self, job: _PropagationJob, result: JobResult) -> None:
        self._propagating = None
        if result.error is None:
            self._apply_propagation(job, result.value)
        elif isinstance(result.error, PropagationError):
            self._say("error", _sentence(f"the {_NOUN[job.kind]} cannot run: {result.error}"))
        else:
            self._report_error(f"The {_NOUN[job.kind]} failed", result)
        if self._edit_pending:  # the person edited the prompts while it ran
            self._edit_pending = False
            self._on_markups_edited(None, None)
        self._changed()

    def _apply_propagation(self, job: _PropagationJob, prop: Propagation) -> None:
        """Write the slices a finished propagation made (main thread) as one undo step, and say what happened."""
        run = job.run
        masks = _slices_to_write(prop, _propagated_voxels(run))
        if not masks:
            self._say("agent", self._nothing_found(run, prop))
            return
        try:
            before, masked = self._write_slices(run, masks)
        except Exception as exc:  # _write_slices put back what it wrote
            self._say("error", f"The propagation could not be written into the scene: {exc}. The segment is "
                               "unchanged; check that the segmentation and volume still exist and try again.")
            return
        step = PropagationStep(job.kind, prop, len(run.records), len(run.session.turns), before, sorted(masks),
                               masked)
        run.propagations.append(step)
        self._show_review(run)
        self._set_propagation_tag(run)
        self._say("agent", self._describe_propagation(run, step))

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
    def _propagation_on_top(run: TargetRun) -> bool:
        """True when the last thing written for this run is a propagation (Undo / Reject revert it first)."""
        if not run.propagations or run.session is None:
            return False
        step = run.propagations[-1]
        return step.after_turns >= len(run.records) and step.after_session_turns >= len(run.session.turns)

    def _revert_propagation(self, run: TargetRun, what: str) -> bool:
        step = run.propagations.pop()
        self._restore_slices(run, step.slices_before)
        self._show_review(run)
        self._set_propagation_tag(run)
        self._say("info", f"{what}: the {_NOUN[step.kind]} was reverted; the {len(step.written)} slice(s) it "
                          "wrote are as before it.")
        self._changed()
        return True

    def _show_review(self, run: TargetRun) -> None:
        """The review sequence shows the propagation now in the segment: one item per slice, mask and box."""
        if run.review is None:
            if not run.propagations:
                return
            run.review = SliceReviewRecorder(self.scene, f"MedAgentSeg {run.segment().GetName()}",
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
    def _propagation_dict(run: TargetRun, step: PropagationStep) -> dict[str, Any]:
        """The library's record (replay_propagation reads it as it is) plus what the Slicer side did with it."""
        window = list(run.window) if isinstance(run.window, tuple) else run.window
        return {**step.result.to_dict(), "slicer": {
            "kind": step.kind, "ijk_axis": run.geom.axis, "after_turn": step.after_turns,
            "written_slices": step.written, "masked_voxels": step.masked_voxels, "modality": run.modality,
            "window": window}}

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
            head = f"The {_NOUN[step.kind]} was stopped after {len(made)} slice(s) ({span}){extra}. The slices " \
                   "done so far are kept; Propagate runs it again."
        elif step.kind == "repropagate":
            head = f"Re-propagated '{run.target}' from your corrected slice {axis}={prop.restarted_at}: " \
                   f"{len(made)} slice(s) beyond it made again ({span}){extra}."
        else:
            head = f"Propagated '{run.target}' from slice {axis}={prop.start} to {len(made)} more slice(s) " \
                   f"({span}){extra}."
        return f"{head} Undo reverts it in one step; to fix a slice, correct it with {self.words.edit_by_hand} " \
               "and say 're-propagate' with the view on that slice."

    # -- trajectory ----------------------------------------------------------------------------------------
    def trajectory_dict(self) -> dict[str, Any]:
        """Every session of this scene: MRML node IDs, slice geometry, and the session trajectory."""
        runs = []
        for run in self.runs.values():
            if run.session is None:
                continue
            runs.append({
                "volume": {"id": run.volume_node.GetID(), "name": run.volume_node.GetName()},
                "segmentation": {"id": run.segmentation_node.GetID(), "name": run.segmentation_node.GetName()},
                "segment_id": run.segment_id,
                "slice": {"axis": run.geom.axis, "index": run.geom.index,
                          "ijk_to_ras": run.geom.ijk_to_ras.round(9).tolist(),
                          "pixel_to_ijk": "K: (x, y, k); J: (x, j, y); I: (i, x, y)"},
                "markups": {"box": run.prompts.roi.GetID(), "positive": run.prompts.positive.GetID(),
                            "negative": run.prompts.negative.GetID()},
                "sequence_browser": run.recorder.browser.GetID(),
                "policy": run.policy_name,
                "turn_records": [r.record for r in run.records],
                "session": run.session.to_dict(),
                "propagations": [self._propagation_dict(run, step) for step in run.propagations],
                "propagation_browser": None if run.review is None else run.review.browser.GetID(),
            })
        return {"format": SLICER_TRAJECTORY_FORMAT, "runs": runs}

    def save_trajectory(self, path: str | os.PathLike) -> Path:
        """Write `trajectory_dict()` as JSON (atomically)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.trajectory_dict(), indent=1))
        tmp.replace(path)
        return path

    def _on_scene_save(self, caller: Any, event: Any) -> None:
        if not any(r.session is not None for r in self.runs.values()):
            return
        url = self.scene.GetURL() or ""
        folder = os.path.dirname(url) if url else self.scene.GetRootDirectory()
        if folder and os.path.isdir(folder):
            try:
                self.save_trajectory(os.path.join(folder, TRAJECTORY_FILE))
            except OSError as exc:
                self._say("error", f"Could not write {TRAJECTORY_FILE} next to the scene ({exc}); save it from the "
                                   "Python console with logic.save_trajectory(path).")

    def cleanup(self) -> None:
        if self._propagating is not None:
            self._propagating.cancel.set()  # the worker ends it at the next slice
        for run in list(self.runs.values()):
            self._remove_observers(run)
        for tag in self._scene_tags:
            self.scene.RemoveObserver(tag)
        self._scene_tags = []


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


def _largest_slice(mask_kji: np.ndarray, axis: str) -> int | None:
    """The index along IJK `axis` of the slice where the (K, J, I) mask is largest; None if it is empty."""
    area = mask_kji.sum(axis={"K": (1, 2), "J": (0, 2), "I": (0, 1)}[axis])
    return int(np.argmax(area)) if area.any() else None


def _same_points(a: list[tuple[float, float]], b: list[tuple[float, float]], tol: float = 1e-3) -> bool:
    return len(a) == len(b) and all(abs(p[0] - q[0]) <= tol and abs(p[1] - q[1]) <= tol for p, q in zip(a, b))


def _same_prompts(a: Prompts, b: Prompts) -> bool:
    box_same = (a.box is None and b.box is None) or (
        a.box is not None and b.box is not None and np.allclose(a.box, b.box, atol=1e-3))
    return box_same and _same_points(a.points, b.points) and list(a.labels) == list(b.labels)

