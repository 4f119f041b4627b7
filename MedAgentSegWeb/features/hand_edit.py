"""Paint, erase and scissors in the axial view: trame-slicer's segment editor effects on the session's segment.

Each finished stroke becomes an entry of the session's history (`AgentSegLogic.record_hand_edit`), so Undo takes it
back: on the session's slice a human turn that the next click or Run refines; on any other slice (the person scrolled)
a slice edit, which a re-propagation from that slice carries (the logic watches the volume while a tool is on:
`watch_hand_edits`). The effects apply a stroke when the mouse button is released, and the editor then signals that
the segmentation changed; the poll loop records it once the logic is idle (the logic compares with what it last
wrote, so a signal from a turn the agent wrote records nothing). Scissors cut the slice in view only.
"""

from __future__ import annotations

from typing import Any

from MedAgentSegModuleLib.agent_logic import AgentError
from trame_slicer.segmentation import (
    BrushDiameterMode,
    ScissorsEffectFillMode,
    ScissorsEffectRangeMode,
    SegmentationEffectErase,
    SegmentationEffectPaint,
    SegmentationEffectScissors,
)

__all__ = ["HandEditFeature", "TOOLS"]

TOOLS = {"paint": SegmentationEffectPaint, "erase": SegmentationEffectErase, "scissors": SegmentationEffectScissors}
HINTS = {"paint": "Paint in the axial view: hold the left button and drag.",
         "erase": "Erase in the axial view: hold the left button and drag.",
         "scissors": "Cut in the axial view: hold the left button and draw around what to remove."}


class HandEditFeature:
    """On `app` (a WebApp: state, logic, scene, slicer_app, guarded)."""

    def __init__(self, app: Any):
        self.app = app
        self.editor = app.slicer_app.segmentation_editor
        self.editor.set_surface_representation_enabled(True)  # else the editor drops the 3D view's surface
        self.editor.segmentation_modified.connect(self._on_modified)
        self._pending = False
        self._run: Any = None  # the session the tool edits
        app.state.tool, app.state.brush_mm = "", 10.0
        app.state.change("brush_mm")(lambda brush_mm, **_: self._configure())

    @property
    def tool(self) -> str:
        return str(self.app.state.tool or "")

    def toggle(self, tool: str) -> None:
        """The tool's button: start it, or stop it when it is the one in use."""
        if self.tool == tool:
            self.stop()
            self.app.sync()
        else:
            self.app.guarded(self._start, tool)

    def _start(self, tool: str) -> None:
        if tool not in TOOLS:
            raise AgentError(f"Unknown tool '{tool}': use paint, erase or scissors.")
        logic = self.app.logic
        run = logic.active
        if run is None or run.session is None:
            raise AgentError("Ask for a structure first (e.g. 'segment the liver'); the tools edit its mask.")
        if run.status == "accepted":
            raise AgentError(f"'{run.target}' is accepted and frozen; ask for it again to edit it.")
        if logic.busy:
            raise AgentError("The agent is working on a turn; paint once it is done (or press Stop).")
        if not hasattr(logic, "record_hand_edit"):
            raise AgentError("This version of the logic cannot record a hand edit as a turn; update MedAgentSeg.")
        self._disarm_markups()
        editor = self.editor
        if editor.active_segmentation_node is not run.segmentation_node:
            editor.set_active_segmentation(run.segmentation_node, run.volume_node)
        editor.set_active_segment_id(run.segment_id)
        editor.set_active_effect_type(TOOLS[tool])
        logic.watch_hand_edits()  # from now a stroke on any slice can be found and undone
        self.app.state.tool, self._run = tool, run
        self._configure()
        logic.say("info", HINTS[tool])

    def stop(self) -> None:
        if self.tool:
            self.editor.deactivate_effect()
            self.app.state.tool = ""
            if self._run is not None:
                self.app.logic.watch_hand_edits(False, self._run)  # no copy of the segments kept without a tool

    def _configure(self) -> None:
        effect = self.editor.active_effect
        if isinstance(effect, (SegmentationEffectPaint, SegmentationEffectErase)):
            effect.set_use_sphere_brush(False)  # a disc on the slice in view
            effect.set_brush_diameter(float(self.app.state.brush_mm), BrushDiameterMode.Absolute)
        elif isinstance(effect, SegmentationEffectScissors):
            effect.set_range_mode(ScissorsEffectRangeMode.SYMMETRIC)
            effect.set_symmetric_distance(0.0)  # half a slice each side: the slice in view only
            effect.set_fill_mode(ScissorsEffectFillMode.ERASE_INSIDE)

    def _disarm_markups(self) -> None:
        """A click in the view paints now; it no longer places the box or a click."""
        node = self.app.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        if node is not None:
            node.SetPlaceModePersistence(0)
            node.SetCurrentInteractionMode(node.ViewTransform)

    def _on_modified(self, *_: Any) -> None:
        if self.tool:
            self._pending = True

    def tick(self) -> None:
        """After each poll: a finished stroke becomes a turn once the logic is idle."""
        logic = self.app.logic
        if self.tool and (logic.active is not self._run or logic.active.status == "accepted"):
            self.stop()  # the session the tool edited is gone or frozen
        if not self._pending or logic.busy:
            return
        self._pending = False
        run = logic.active
        if not self.tool or run is None or run.session is None or run.status == "accepted":
            return
        if run is not self._run:  # another session started: the tool was for the previous one
            self.stop()
            return
        self.app.guarded(logic.record_hand_edit, self.tool)
