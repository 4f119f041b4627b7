"""The MedAgentSeg logic: sessions on slices of a volume, every turn written into MRML.

No Qt, no dialogs: usable from Slicer's Python console, from the module widget, from the browser app and from pytest
with ``slicer-core``. It reports through two callbacks, ``on_message(ChatMessage)`` and ``on_change()``, and raises
`AgentError` (a sentence saying what happened and what to do) for bad input.

`AgentSegLogic` is the facade: it keeps every public verb and wires the parts, each given a small `Context` (say,
changed, submit, busy, scene, words) rather than the logic itself:

- `runs`: `TargetRun` / `TurnRecord` and starting, resuming, moving and discarding runs;
- `opening`: the engine, the policy and the agent's own first turn on the worker (issue #16, `autostart`);
- `agent_turns`: Run / Step / Stop and what a finished turn does next;
- `turn_writer`: a turn written into MRML (mask, markups, sequence item, tags) with rollback; revert, Accept;
- `hand_edits`: paint, erase, scissors as entries of the history, on the session's slice or any other;
- `markups_sync`: the person's edits of the box and clicks (a drag is one edit) and arming a placement;
- `propagation`: 3D propagation in the scene, one undo step, its review sequence;
- `factories`: engine and policy choices, defaults and checks; `wording`: chat sentences; `trajectory`: saving.

Threading: model work (engine creation, image encoding, the policy and the prediction of each turn, propagation) runs
on one persistent `SessionExecutor` thread; MRML is read and written only on the thread calling `poll()` / `wait()`
(Slicer's main thread, through a QTimer).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from MedAgentSegLib.propagation import PropagationConfig
from MedAgentSegLib.session import HAND_TOOLS, Session, Turn

from .agent_turns import AgentTurns
from .autostart import FirstTurn
from .chat import request_modality, segment_targets
from .context import AgentError, ChatMessage, Context
from .factories import (
    GT_FREE,
    POLICY_CHOICES,
    Factories,
    default_engine,
    default_policy,
    engine_choices,
    guess_modality,
    learned_weights_available,
)
from .hand_edits import HandEdits
from .markups_sync import MarkupsSync
from .mrml_writer import ensure_scene_logics, volume_array_kji
from .opening import SessionOpening, first_turn, open_session_job
from .propagation import ScenePropagation
from .runs import AXIS_NAMES, PropagationStep, Runs, TargetRun, TurnRecord, require_writable, set_tags
from .trajectory import SLICER_TRAJECTORY_FORMAT, TRAJECTORY_FILE, save_trajectory, trajectory_dict
from .turn_writer import TurnWriter
from .wording import chat_command, describe_decision, sentence
from .words import SLICER, Words
from .worker import JobResult, SessionExecutor

__all__ = ["AgentError", "ChatMessage", "TurnRecord", "TargetRun", "AgentSegLogic", "TRAJECTORY_FILE",
           "SLICER_TRAJECTORY_FORMAT", "guess_modality", "POLICY_CHOICES", "GT_FREE", "default_policy",
           "learned_weights_available", "describe_decision", "PropagationStep", "chat_command", "AXIS_NAMES",
           "engine_choices", "default_engine"]


def _part(part: str, name: str, doc: str) -> property:
    """An attribute of the facade that lives on one of its parts (read and set there)."""
    return property(lambda self: getattr(getattr(self, part), name),
                    lambda self, value: setattr(getattr(self, part), name, value), doc=doc)


class AgentSegLogic:
    """Drives agent sessions and writes every turn into the scene.

    scene: the MRML scene. executor: the worker (one is created if None). engine_factory(name) -> Engine,
    called on the worker thread (default: MedAgentSegLib.engines.create_engine). policy_factory(name, gt)
    -> Policy (default: MedAgentSegLib.agent.registry.create_policy). sequences_logic: Slicer's
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
        self.executor = executor or SessionExecutor()
        self.on_message = on_message
        self.on_change = on_change
        self.sequences_logic = sequences_logic or ensure_scene_logics(scene)
        self.messages: list[ChatMessage] = []
        self._ctx = Context(scene, words, self._say, self._changed, self._submit, lambda: self.busy, self._report_error)
        self._factories = Factories(engine_factory, policy_factory, device, locator_factory)
        self._writer = TurnWriter(self._ctx)
        self._hand = HandEdits(self._ctx)
        self._markups = MarkupsSync(self._ctx, self._writer, self._find_run,
                                    lambda run, kind, payload: self._turns.run_user_turn(run, kind, payload))
        self._runs = Runs(self._ctx, self._factories, self._markups, self.sequences_logic, self._open_session, library)
        self._propagation = ScenePropagation(self._ctx, self._factories.engine, self.sequences_logic,
                                             self._markups.replay_pending)
        self._turns = AgentTurns(self._ctx, self._writer, self._markups, self._propagation, lambda: self.active,
                                 lambda run, turn: self._apply_turn(run, turn),
                                 lambda *args: self._on_turn(*args))
        self._opening = SessionOpening(self._ctx, self._runs, self._turns,
                                       lambda run, result: self._on_turn(run, result))
        self._scene_tags = [scene.AddObserver(ev, self._on_scene_save)
                            for ev in (scene.StartSaveEvent, scene.EndSaveEvent)]
        self._scene_tags.append(scene.AddObserver(scene.StartCloseEvent, self._on_scene_close))

    # -- the parts' state, as the front ends and tests read it --------------------------------------------------------
    runs = _part("_runs", "runs", "(segmentation ID, segment ID, axis, slice) -> TargetRun")
    active = _part("_runs", "active", "the session the verbs act on, or None")
    queued = _part("_runs", "queued", "(segment info, start arguments) of the request's structures still to do")
    library = _part("_runs", "library", "model-library folder for specialists (default: $MEDAGENTSEG_LIBRARY)")
    words = _part("_ctx", "words", "the front end's names for its controls, in every message that points to one")
    engines = _part("_factories", "engines", "(name, options) -> engine (worker thread only)")
    engine_factory = _part("_factories", "engine_factory", "engine_factory(name, **options) -> Engine, or None")
    policy_factory = _part("_factories", "policy_factory", "policy_factory(name, gt, **options) -> Policy, or None")
    locator_factory = _part("_factories", "locator_factory", "locator_factory() -> Locator, or None")
    device = _part("_factories", "device", "where engines run: auto, cuda, mps or cpu")
    engine_device = _part("_opening", "engine_device", "the device the last engine opened on, or None")
    _propagating = _part("_propagation", "job", "the propagation in flight, or None (the web app's progress bar)")

    def _find_run(self, caller: Any) -> TargetRun | None:
        """The run whose prompt node `caller` is (None, or a node of no run: the active run)."""
        if caller is None:
            return self.active
        return next((r for r in self.runs.values() if caller in r.prompts.nodes), self.active)

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
        self._propagation.report_progress()
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
        if self._propagation.cancel():
            self._propagation.job = None
        had_runs = bool(self.runs)
        for run in list(self.runs.values()):
            run.auto_turns_left = 0
            self._markups.remove_observers(run)
        self.runs.clear()
        self.queued.clear()
        self.active = None
        self._markups.dragging.clear()
        self._markups.edit_pending = False
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
        return self._runs.start(volume_node, segmentation_node, target, segment_name=segment_name, axis=axis,
                                slice_index=slice_index, engine=engine, policy=policy,
                                reference_segment_id=reference_segment_id, modality=modality, window=window,
                                max_turns=max_turns, policy_options=policy_options, engine_options=engine_options,
                                segment_info=segment_info, first=first)

    def _open_session(self, run: TargetRun, deferred: Any) -> None:
        self._submit(run, "open session", self._open_session_job, run, deferred,
                     callback=lambda r: self._on_session_open(run, r))

    def _open_session_job(self, run: TargetRun, deferred: tuple[str, dict[str, Any]] | None = None
                          ) -> tuple[Session, Any, FirstTurn | None, Turn | None]:  # worker thread
        return open_session_job(self._factories, run, deferred)

    _first_turn = staticmethod(first_turn)

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
            self._say("warning", sentence(warning))
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

    # -- opening a session (main thread) -----------------------------------------------------------------------
    def _on_session_open(self, run: TargetRun, result: JobResult) -> None:
        self._opening.opened(run, result)

    def discard_runs(self, segmentation_node: Any) -> None:
        """Drop the sessions writing into `segmentation_node`, their nodes and the structures queued for it: a front
        end is removing it (the review queue moving to another case)."""
        self._require_idle("close the case")
        for run in [r for r in self.runs.values() if r.segmentation_node is segmentation_node]:
            self._runs.discard(run)
        self.queued = [(info, kw) for info, kw in self.queued if kw.get("segmentation_node") is not segmentation_node]
        self._changed()

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

    # -- turns (agent_turns, turn_writer) -----------------------------------------------------------------------
    def run_agent(self, max_turns: int | None = None) -> None:
        """Let the agent take turns, one after the other, until it stops, `max_turns` are done, or Stop."""
        self._turns.run_agent(max_turns)

    def step(self) -> None:
        """Take exactly one agent turn (after the person's box / clicks, if the engine has not run them yet)."""
        self._turns.step()

    def stop(self) -> None:
        """Stop after the turn in progress (if any); with none in progress, record the stop in the session. A
        propagation in progress ends after the slice it is on, keeping the slices done."""
        self._turns.stop()

    def _on_turn(self, run: TargetRun, result: JobResult, reverted_before: int | None = None) -> None:
        self._turns.on_turn(run, result, reverted_before)

    def _apply_turn(self, run: TargetRun, turn: Turn) -> TurnRecord:
        """Write one mask-producing turn (main thread): segment slice, markups, sequence item, tags."""
        return self._writer.apply_turn(run, turn)

    def arm_placement(self, role: str = "box") -> bool:
        """The next click in a slice view places the active session's box ("box") or a "positive" / "negative"
        click, through Slicer's markups widgets; the engine runs when it is placed. False if it cannot be armed."""
        run = self._require_run()
        if run.status == "accepted":
            raise AgentError(f"'{run.target}' was accepted and is frozen; start a new request to segment again.")
        return self._markups.arm_placement(run, role)

    # -- reverting -----------------------------------------------------------------------------------------
    def reject(self) -> bool:
        """Revert the last mask-producing turn: mask, markups and sequence item. False if there is none."""
        return self._revert("Reject turn")

    def undo(self) -> bool:
        """Revert the last turn of any kind (a stop is undone by resuming; a mask turn as in `reject`)."""
        run = self._require_run()
        self._require_idle("Undo")
        if run.session.status == "stopped" and run.session.turns and not run.session.turns[-1].produces_mask \
                and not self._propagation.on_top(run) and not self._hand.on_top(run):
            run.session.undo()
            set_tags(run)
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
        if self._propagation.on_top(run):
            return self._propagation.revert(run, what)
        if self._hand.on_top(run):
            return self._hand.revert(run, what)
        return self._writer.revert_last(run, what)

    def accept(self) -> None:
        """Freeze the segment: no more turns, markups locked, segment tagged Locked and status Completed."""
        run = self._require_run()
        self._require_idle("Accept")
        if not run.records:
            raise AgentError("Nothing to accept yet: run at least one turn first.")
        require_writable(run, "Accept")
        run.session.accept()
        run.auto_turns_left = 0
        self._markups.remove_observers(run)
        self._writer.freeze(run)
        self._changed()
        self._start_queued()

    # -- human control -------------------------------------------------------------------------------------
    def add_click(self, ras: tuple[float, float, float], positive: bool = True) -> None:
        """Add a click at RAS position `ras` (projected onto the session's slice) and re-run the engine."""
        run = self._require_run()
        node = run.prompts.positive if positive else run.prompts.negative
        node.AddControlPoint(float(ras[0]), float(ras[1]), float(ras[2]))  # fires PointAdded only
        self._markups.on_markups_edited(None, None)

    def record_hand_edit(self, tool: str = "editor") -> bool:
        """Record what the person drew (paint, erase, scissors; main thread, after the stroke) in the session's one
        history: on the session's slice as a turn (the box and clicks stay, the next click refines the drawn mask);
        with `watch_hand_edits` on, on any other slice as a slice-edit entry. Undo puts every segment on the slice
        back as it was before the stroke. False if nothing changed (nothing to record)."""
        run = self._require_run()
        self._require_idle("Recording your edit")
        require_writable(run, "Recording your edit")
        if run.session is None:
            raise AgentError("The slice is still being prepared; draw again once the chat says it is ready.")
        if tool not in HAND_TOOLS:
            raise AgentError(f"Unknown hand tool '{tool}': use one of {', '.join(HAND_TOOLS)}.")
        return self._hand.record(run, tool)

    def watch_hand_edits(self, on: bool = True, run: TargetRun | None = None) -> None:
        """A hand tool is on (off) for `run` (default: the active one): from now a stroke on any slice of the
        volume, not only the session's, becomes an entry of the history that Undo takes back (the logic keeps a copy
        of the segments while it is on)."""
        run = run or self._require_run()
        if on:
            self._hand.watch(run)
        else:
            self._hand.unwatch(run)

    def sync_prompts_from_markups(self) -> None:
        """Re-run the engine from the prompt state now shown in the markups (after edits by script)."""
        self._markups.on_markups_edited(None, None)

    # -- 3D propagation ------------------------------------------------------------------------------------
    def propagate(self, config: PropagationConfig | None = None) -> bool:
        """Propagate the session's finished 2D mask through the whole volume along the session's slice axis (on the
        worker). The slices it makes are written into the segment as one undo step. False, with a chat line saying
        what to do, when the session has no mask yet."""
        run = self._require_run()
        self._require_idle("Propagate")
        require_writable(run, "Propagate")
        return self._propagation.propagate(run, config)

    def repropagate(self, slice_index: int | None = None, view: str = "Red") -> bool:
        """Propagate again from a slice the person corrected in the segment (its mask is read from the segment),
        outwards from the first start slice; the slices on the start's side stay as they are. slice_index: the
        corrected slice (default: the one slice view `view` shows). False, with a chat line, before any Propagate."""
        run = self._require_run()
        self._require_idle("Re-propagate")
        require_writable(run, "Re-propagate")
        return self._propagation.repropagate(run, slice_index, view)

    # -- trajectory ----------------------------------------------------------------------------------------
    def trajectory_dict(self) -> dict[str, Any]:
        """Every session of this scene: MRML node IDs, slice geometry, and the session trajectory."""
        return trajectory_dict(self.runs.values())

    def save_trajectory(self, path: str | os.PathLike) -> Path:
        """Write `trajectory_dict()` as JSON (atomically)."""
        return save_trajectory(self.runs.values(), path)

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
        self._propagation.cancel()  # the worker ends it at the next slice
        for run in list(self.runs.values()):
            self._markups.remove_observers(run)
        for tag in self._scene_tags:
            self.scene.RemoveObserver(tag)
        self._scene_tags = []
