"""Opening a session. On the worker thread (`open_session_job`): the engine, a policy that loads weights, the encoded
image, and the agent's own first turn (issue #16: an installed specialist, else the locator, on the slice it picks);
it reads no MRML: the run carries copies made on the main thread. On the main thread (`SessionOpening`): the run
moves to that slice (or resumes the session already there), the chat says the engine is ready, and the first turn
is written as any turn, or the agent asks for a box."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from MedAgentSegLib.session import Session, Turn

from .agent_turns import AgentTurns
from .autostart import FirstTurn, chat_notes, find_first_turn
from .context import Context
from .factories import Factories, to_engine_rgb
from .mrml_writer import TAG_PREFIX
from .runs import Runs, TargetRun
from .worker import JobResult

__all__ = ["open_session_job", "first_turn", "SessionOpening"]


def open_session_job(factories: Factories, run: TargetRun, deferred: tuple[str, dict[str, Any]] | None = None
                     ) -> tuple[Session, Any, FirstTurn | None, Turn | None]:  # worker thread
    """The engine, the policy when it loads weights (`deferred` = (name, options)), and the encoded session; with a
    start plan also the agent's own first turn (None when it asks), on the start slice it chose."""
    engine = factories.engine(run.engine_name, run.engine_options)
    policy = None
    if deferred is not None:
        name, options = deferred
        policy = factories.make_policy(name, None, options, device=str(getattr(engine, "device", "cpu")))
    first = None
    image, metadata = run.image_rgb, dict(run.metadata)
    if run.start_plan is not None:
        first = find_first_turn(engine, run.start_plan, run.geom, run.modality, run.window, run.target,
                                to_engine_rgb, factories.load_locator)
        if first.image is not None:  # the start slice moved: the session is opened there
            image, metadata["slice"] = first.image, int(first.slice_index)
    session = Session(engine, image, run.target, max_turns=run.max_turns, metadata=metadata)
    if run.start_mask is not None:  # the mask already there (a pre-label, a finished slice) is the first turn
        return session, policy, None, session.add_edit(run.start_mask, "existing", box=True)
    return session, policy, first, first_turn(session, first)

def first_turn(session: Session, first: FirstTurn | None) -> Turn | None:  # worker thread
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


class SessionOpening:
    """The main thread's half of opening a session. runs: the registry (`Runs`); turns: the agent's (`AgentTurns`);
    on_turn(run, result): where the agent's own first turn goes, as any finished turn. engine_device: the device
    the last engine opened on ("cpu", "cuda", ...)."""

    def __init__(self, ctx: Context, runs: Runs, turns: AgentTurns, on_turn: Callable[[TargetRun, JobResult], None]):
        self.ctx, self.runs, self.turns, self.on_turn = ctx, runs, turns, on_turn
        self.engine_device: str | None = None

    def opened(self, run: TargetRun, result: JobResult) -> None:
        """The worker opened the session (`open_session_job`): the run goes on there, or says why it cannot."""
        if result.error is not None:
            self.runs.discard(run)
            self.ctx.report_error("Could not start the engine", result)
            return
        if run.segment() is None:
            self.runs.discard(run)
            self.ctx.say("error", f"Segment '{run.target}' was deleted while the engine was loading; nothing was "
                                  "written. Type the request again to start over.")
            self.ctx.changed()
            return
        session, policy, first, first_turn = result.value
        if first is None and first_turn is not None:  # the segment's own mask: written as a turn, then the agent
            first = FirstTurn("existing", run.target)
        if policy is not None:
            run.policy = policy
        if first is not None and first.image is not None:
            other = self.runs.runs.get((*run.key[:3], int(first.slice_index)))
            if other is not None and other is not run and other.status != "accepted":
                self.runs.resume_instead(run, other, first.kind)
                return
            self.runs.move_run(run, int(first.slice_index), first.image, first.kind)
        run.session = session
        run.segment().SetTag(TAG_PREFIX + "Status", "open")
        device = str(getattr(session.engine, "device", "cpu"))
        self.engine_device = device
        # the whole wait the person saw (engine load, the locator's look at the slices, encoding), not the last step
        waited = time.monotonic() - run.opened
        self.ctx.say("info", f"Engine ready: {session.engine.name} on {device}, in {waited:.1f} s.")
        if device == "cpu":
            self.ctx.say("warning", "Running on CPU: each turn takes about 0.1-2 s and the first one longer. "
                                    "A CUDA GPU makes it interactive.")
        if first is not None:
            self._start_on_its_own(run, first, first_turn)
        elif run.auto_turns_left > 0:
            self.turns.submit_agent_turn(run)
        self.ctx.changed()

    def _start_on_its_own(self, run: TargetRun, first: FirstTurn, turn: Turn | None) -> None:
        """Main thread: write the agent's own first turn as any turn (then the agent continues), or ask."""
        run.start_plan = None  # done: the volume copy is not kept
        for note in chat_notes(first):
            self.ctx.say("warning", note)
        if turn is None:
            run.auto_turns_left = 0
            self.turns.ask_for_box(run, first.message)
            return
        run.auto_turns_left = max(0, run.auto_turns_left - 1)  # the first turn is one of the agent's turns
        self.on_turn(run, JobResult("first turn", value=turn))
