"""The agent's turns and the person's: Run / Step / Stop, each turn queued on the worker, and what happens when it
comes back (written by the facade's `_apply_turn`, the policy's stop said, the next turn queued)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from MedAgentSegLib.session import Turn

from .context import AgentError, Context
from .factories import GT_FREE
from .markups_sync import MarkupsSync
from .propagation import ScenePropagation
from .runs import TargetRun, TurnRecord, box_tool, set_tags
from .turn_writer import TurnWriter
from .wording import describe_decision, last_score, sentence
from .worker import JobResult

__all__ = ["AgentTurns"]


class AgentTurns:
    """active(): the active run. apply_turn(run, turn): write a mask turn into the scene (raises if it cannot).
    on_turn_hook(run, result, reverted_before=None): where a finished turn goes (the facade's `_on_turn`, which
    calls `on_turn`)."""

    def __init__(self, ctx: Context, writer: TurnWriter, markups: MarkupsSync, propagation: ScenePropagation,
                 active: Callable[[], TargetRun | None], apply_turn: Callable[[TargetRun, Turn], Any],
                 on_turn_hook: Callable[..., None]):
        self.ctx, self.writer, self.markups, self.propagation = ctx, writer, markups, propagation
        self.active, self.apply_turn, self.on_turn_hook = active, apply_turn, on_turn_hook
        self.stop_requested = False

    def run_user_turn(self, run: TargetRun, kind: str, payload: Any) -> None:
        """Queue the person's turn ("click": (x, y, positive), "box": box, "prompts": Prompts) on the worker."""
        self.ctx.submit(run, "user turn", self._user_turn_job, run, kind, payload,
                        callback=lambda r: self.on_turn_hook(run, r))

    def run_agent(self, max_turns: int | None = None) -> None:
        """Let the agent take turns, one after the other, until it stops, `max_turns` are done, or Stop."""
        run = self.active()
        if run is None:
            raise AgentError("No segmentation session yet: type a request such as 'segment the liver' and press Run.")
        if run.status == "accepted":
            raise AgentError(f"'{run.target}' was accepted and is frozen; start a new request to segment again.")
        if self.propagation.job is not None:
            raise AgentError("The propagation is still running: wait for it, or press Stop, then Run again.")
        self.stop_requested = False
        turns = int(max_turns if max_turns is not None else run.max_turns)
        if run.session is not None and not self.ctx.busy() and self.markups.queue_unrun_prompts(run):
            run.auto_turns_left = turns  # the agent continues once the person's box / clicks have run
            return
        run.auto_turns_left = turns
        if run.session is None or self.ctx.busy():
            return  # starts when the engine is ready / the turn in flight continues with these turns
        if run.session.status == "stopped":
            run.session.undo()  # continue after a stop: the stop turn wrote nothing
        run.records_at_run = len(run.records)
        self.submit_agent_turn(run)

    def step(self) -> None:
        """Take exactly one agent turn (after the person's box / clicks, if the engine has not run them yet)."""
        self.run_agent(max_turns=1)

    def stop(self) -> None:
        """Stop after the turn in progress (if any); with none in progress, record the stop in the session. A
        propagation in progress ends after the slice it is on, keeping the slices done."""
        if self.propagation.cancel():
            self.ctx.say("info", "Stopping the propagation after the slice in progress; the slices done so far are "
                                 "kept.")
            self.ctx.changed()
            return
        self.stop_requested = True
        run = self.active()
        if run is None:
            return
        run.auto_turns_left = 0
        if not self.ctx.busy() and run.session is not None and run.session.status == "open" and run.session.turns:
            run.session.stop()
            set_tags(run)
        self.ctx.say("info", "Stopped. Edit the clicks or box, press Run to continue, or Accept.")
        self.ctx.changed()

    def submit_agent_turn(self, run: TargetRun) -> None:
        if run.session is None or run.session.status != "open":
            run.auto_turns_left = 0
            return
        run.auto_turns_left -= 1
        reverted_before = len(getattr(run.session, "reverted", ()))  # grows when the agent takes a turn back
        self.ctx.submit(run, "agent turn", self._agent_turn_job, run,
                        callback=lambda r: self.on_turn_hook(run, r, reverted_before))

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

    def on_turn(self, run: TargetRun, result: JobResult, reverted_before: int | None = None) -> None:
        if result.error is not None:
            run.auto_turns_left = 0
            self.ctx.report_error("The turn failed", result)
            self.writer.restore_prompts_view(run)
            return
        turn: Turn = result.value
        if not turn.produces_mask:
            run.auto_turns_left = 0
            taken_back = None
            if reverted_before is not None and len(getattr(run.session, "reverted", ())) > reverted_before:
                taken_back = self.writer.take_back_in_scene(run)
            set_tags(run)
            self._say_stop(run, turn, taken_back)
            self.markups.replay_pending()  # the person edited the prompts while the agent was deciding
            self.ctx.changed()
            return
        try:
            self.apply_turn(run, turn)
        except Exception as exc:  # the MRML write failed: _apply_turn already put everything back
            run.auto_turns_left = 0
            self.ctx.say("error", f"Turn could not be written into the scene: {exc}. The segment and markups are "
                                  "unchanged; check that the segmentation and volume still exist and try again.")
            self.ctx.changed()
            return
        if turn.source == "user" and run.policy_name in GT_FREE and run.auto_turns_left <= 0 \
                and len(run.records) == 1:
            self.ctx.say("info", f"Press Run (or Step) and the {run.policy_name} agent refines from your prompts.")
        if self.markups.replay_pending():
            pass  # the person's edit made while the turn ran goes first
        elif run.auto_turns_left > 0 and not self.stop_requested:
            self.submit_agent_turn(run)
        elif run.auto_turns_left > 0:
            run.auto_turns_left = 0
        self.ctx.changed()

    def _say_stop(self, run: TargetRun, turn: Turn, taken_back: TurnRecord | None) -> None:
        """The chat lines for a stop turn: the policy's reason, a box request, or the turn it took back."""
        decision = describe_decision(turn.action) if turn.source == "agent" else None
        if turn.source == "agent" and run.session.prompts.empty and not run.records:
            self.ask_for_box(run, sentence(decision or "I need a first prompt to refine from"))
            return
        if taken_back is not None:
            kept = f"as after turn {taken_back.number - 1}" if taken_back.number > 1 else "as before turn 1"
            why = decision or "it expected that turn made the mask worse"
            if why.lower().startswith("took back") and ":" in why:  # "took back my last turn: <why>"
                why = why.split(":", 1)[1].strip()
            self.ctx.say("agent", f"The agent took back turn {taken_back.number}: {why}. The segment, box and clicks "
                                  f"are {kept}.", taken_back.number)
        why = f": {decision}" if decision and taken_back is None else ""
        if taken_back is None and run.records and len(run.records) == run.records_at_run:
            # Run added nothing: telling the person to press Run again would send them round in circles
            self.ctx.say("agent", f"The agent has nothing to add to turn {len(run.records)}{why}. Accept it, or "
                                  f"correct it with a click, the box or {self.ctx.words.edit_by_hand}.")
            return
        self.ctx.say("agent", f"The agent stopped after {len(run.records)} turn(s) "
                              f"(predicted IoU {last_score(run)}){why}. Accept, Reject the last turn, add a click, "
                              "or press Run to let it continue.")

    def ask_for_box(self, run: TargetRun, question: str) -> None:
        """The agent does not guess: it says why, and the next placement in a slice view draws the session's box."""
        self.ctx.say("agent", question)
        armed = self.markups.arm(run.prompts.roi)
        name = f" ({box_tool(self.ctx.words, run)})" if self.ctx.words.names_nodes else ""
        where = f"on slice {run.geom.axis}={run.geom.index}"
        # how, in one line: the question already said what (issue #24: no repeated "draw the box")
        self.ctx.say("info", (f"The box tool{name} is ready {where}: click two opposite corners, or place a positive "
                              "click" if armed else f"Place the box{name} with {self.ctx.words.place_box} {where}, "
                              "or a positive click") + "; then Run lets the agent refine.")
