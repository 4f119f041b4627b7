"""The session's prompts as the person edits them in the markups: observing the prompt nodes, a drag as one edit,
what an edit is (a click, the box, or new prompts), and arming the next placement in a slice view."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from MedAgentSegLib.engines.base import Prompts

from .context import AgentError, Context
from .runs import TargetRun
from .turn_writer import TurnWriter

__all__ = ["MarkupsSync", "same_prompts", "same_points", "MARKUP_EVENTS"]

MARKUP_EVENTS = ("PointRemovedEvent", "PointPositionDefinedEvent")  # a drag's end has its own observer


class MarkupsSync:
    """find_run(caller): the run whose prompt node fired (None: the active run). run_user_turn(run, kind, payload):
    the facade queues the person's turn ("click": (x, y, positive), "box": box, "prompts": Prompts)."""

    def __init__(self, ctx: Context, writer: TurnWriter, find_run: Callable[[Any], TargetRun | None],
                 run_user_turn: Callable[[TargetRun, str, Any], None]):
        self.ctx, self.writer = ctx, writer
        self.find_run, self.run_user_turn = find_run, run_user_turn
        self.dragging: set[Any] = set()  # markups nodes between PointStartInteraction and PointEndInteraction
        self.edit_pending = False  # the person edited the prompts while the worker was busy

    def observe(self, run: TargetRun) -> None:
        """Watch the run's prompt nodes: a placed / moved / removed point, and a drag's start and end."""
        for node in run.prompts.nodes:
            for ev in MARKUP_EVENTS:
                run.observer_tags.append((node, node.AddObserver(getattr(node, ev), self.on_markups_edited)))
            for ev, callback in (("PointStartInteractionEvent", self.on_interaction_start),
                                 ("PointEndInteractionEvent", self.on_interaction_end)):
                run.observer_tags.append((node, node.AddObserver(getattr(node, ev), callback)))

    def remove_observers(self, run: TargetRun) -> None:
        for node, tag in run.observer_tags:
            node.RemoveObserver(tag)
            self.dragging.discard(node)
        run.observer_tags.clear()

    def replay_pending(self) -> bool:
        """An edit made while the worker was busy runs now. True if there was one."""
        if not self.edit_pending:
            return False
        self.edit_pending = False
        self.on_markups_edited(None, None)
        return True

    def arm_placement(self, run: TargetRun, role: str) -> bool:
        """The next click in a slice view places the run's box ("box") or a "positive" / "negative" click."""
        nodes = {"box": run.prompts.roi, "positive": run.prompts.positive, "negative": run.prompts.negative}
        if role not in nodes:
            raise AgentError(f"Unknown prompt '{role}': place a box, a positive or a negative click.")
        return self.arm(nodes[role])

    def on_interaction_start(self, caller: Any, event: Any) -> None:
        self.dragging.add(caller)

    def on_interaction_end(self, caller: Any, event: Any) -> None:
        self.dragging.discard(caller)
        self.on_markups_edited(caller, event)

    def on_markups_edited(self, caller: Any, event: Any) -> None:
        if self.writer.writing or (caller is not None and caller in self.dragging):  # a drag runs one turn, at its end
            return
        run = self.find_run(caller)
        if run is None or run.session is None or run.status == "accepted":
            return
        if self.ctx.busy():
            self.edit_pending = True
            run.auto_turns_left = 0
            return
        new = run.prompts.read(run.geom)
        old = run.session.prompts
        if same_prompts(new, old):
            return
        if new.empty:
            self.ctx.say("error", "The edited prompt state is empty (no box and no click). Place a click or a box, "
                                  "or press Undo.")
            self.writer.restore_prompts_view(run)
            return
        kind, payload = "prompts", new
        same_box = (new.box is None and old.box is None) or (
            new.box is not None and old.box is not None and np.allclose(new.box, old.box, atol=1e-3))
        n_old = len(old.points)
        if same_box and len(new.points) == n_old + 1 and same_points(new.points[:n_old], old.points) \
                and new.labels[:n_old] == old.labels:
            x, y = new.points[-1]
            kind, payload = "click", (x, y, bool(new.labels[-1]))
        elif old.box is None and new.box is not None and same_points(new.points, old.points) \
                and new.labels == old.labels:
            kind, payload = "box", new.box
        run.auto_turns_left = 0
        self.run_user_turn(run, kind, payload)
        self.ctx.changed()

    def queue_unrun_prompts(self, run: TargetRun) -> bool:
        """A box or clicks in the markups that the engine has not run yet (e.g. an ROI placed without an end
        event): queue them as the person's turn first. True if a turn was queued."""
        shown = run.prompts.read(run.geom)
        if shown.empty or same_prompts(shown, run.session.prompts):
            return False
        self.on_markups_edited(None, None)
        return self.ctx.busy()

    def arm(self, node: Any) -> bool:
        """Make `node` the one the next placement in a slice view defines (Slicer's selection and interaction
        singletons; a scene without them is left alone). True if armed."""
        selection = self.ctx.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
        interaction = self.ctx.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        if selection is None or interaction is None or node.GetLocked():
            return False
        selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selection.SetActivePlaceNodeID(node.GetID())
        interaction.SetPlaceModePersistence(0)
        interaction.SetCurrentInteractionMode(interaction.Place)
        return True


def same_points(a: list[tuple[float, float]], b: list[tuple[float, float]], tol: float = 1e-3) -> bool:
    return len(a) == len(b) and all(abs(p[0] - q[0]) <= tol and abs(p[1] - q[1]) <= tol for p, q in zip(a, b))


def same_prompts(a: Prompts, b: Prompts) -> bool:
    box_same = (a.box is None and b.box is None) or (
        a.box is not None and b.box is not None and np.allclose(a.box, b.box, atol=1e-3))
    return box_same and same_points(a.points, b.points) and list(a.labels) == list(b.labels)
