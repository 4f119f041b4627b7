"""The agent session's actions in the page: open a volume, ask, Run / Step / Stop, Accept / Reject / Undo, place the
box and clicks, propagate, save, and the turn slider. Each action goes through the shared `AgentSegLogic`; a failure
becomes a chat line (`app.guarded`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from MedAgentSegModuleLib.agent_logic import AgentError
from MedAgentSegModuleLib.mrml_writer import MRMLInputError, check_volume, view_slice

from MedAgentSegLib.labeling.manifest import NAME as MANIFEST

from ..files import OutsideError, safe_upload_name, save_results, within
from ..review import show_turn

__all__ = ["SessionActions", "SAMPLE", "VIEW"]

SAMPLE = Path(__file__).resolve().parents[2] / "Resources" / "Samples" / "lits117_liver_ct.nrrd"
VIEW = "Red"  # the session works on the slice the axial view shows
PLACE_HINTS = {"box": "two opposite corners of the box", "positive": "a point inside the structure",
               "negative": "a point outside the structure"}


class SessionActions:
    """The handlers behind the page's session controls, on `app` (a WebApp: state, logic, scene, guarded)."""

    def __init__(self, app: Any):
        self.app = app
        self.logic = app.logic
        app.state.change("turn")(self.on_turn_slider)

    # -- opening a volume ------------------------------------------------------------------------------------------
    def load_sample(self) -> None:
        self.app.guarded(self._load, SAMPLE)

    def load_path(self) -> None:
        path = str(self.app.state.path or "").strip()
        if not path:
            self.logic.say("error", "Type the path of a volume file on the server (NRRD, NIfTI, MHA) first.")
            self.app.sync()
            return
        self.app.guarded(lambda: self._load(within(path, self.app.read_roots, "The volume path")))

    def upload(self, files: list[dict[str, Any]] | None) -> None:
        self.app.guarded(self._upload, files or [])

    def _upload(self, files: list[dict[str, Any]]) -> None:
        if not files:
            return
        with tempfile.TemporaryDirectory(prefix="medagentseg-upload-") as tmp:
            target = Path(tmp) / safe_upload_name(files[0].get("name", ""))
            content = files[0].get("content") or b""
            target.write_bytes(content if isinstance(content, bytes) else bytes(content))
            self._load(target, shown_name=target.name)

    def _load(self, path: Path, shown_name: str | None = None) -> None:
        app, name = self.app, shown_name or path.name
        if not path.is_file():
            raise MRMLInputError(f"There is no file {path} on the server; check the path.")
        try:
            nodes = app.slicer_app.io_manager.load_volumes([str(path)])
        except Exception as exc:  # noqa: BLE001 - readers raise many kinds; all mean "not a volume we can read"
            nodes, detail = [], f" ({exc})"
        else:
            detail = ""
        if not nodes:
            raise MRMLInputError(f"Could not read '{name}' as a volume{detail}. Give a 3D image file: NRRD, NIfTI "
                                 "(.nii/.nii.gz) or MHA.")
        node = nodes[0]
        try:
            check_volume(node)
        except MRMLInputError:
            for extra in nodes:
                app.scene.RemoveNode(extra)
            raise
        app.segmentation_node = None
        app.show_volume(node)
        dims = node.GetImageData().GetDimensions()
        self.logic.say("info", f"Loaded '{name}' ({dims[0]} x {dims[1]} x {dims[2]}). Scroll the axial view to a "
                               "slice, then type a request such as 'segment the liver'.")

    # -- asking and the agent's controls ------------------------------------------------------------------------------
    def send(self) -> None:
        text = str(self.app.state.request or "").strip()
        self.app.state.request = ""
        if text:
            self.app.guarded(self._request, text)

    def _request(self, text: str) -> None:
        app = self.app
        kwargs = self._start_kwargs() if app.volume_node is not None else {}
        self.logic.request(text, app.volume_node, app.segmentation_node, view=VIEW, **kwargs)
        if self.logic.active is not None:
            app.segmentation_node = self.logic.active.segmentation_node

    def _start_kwargs(self) -> dict[str, Any]:
        s, app = self.app.state, self.app
        slice_node = app.scene.GetNodeByID(f"vtkMRMLSliceNode{VIEW}")
        axis, index = view_slice(slice_node, app.volume_node, VIEW) if slice_node is not None else ("K", None)
        engine = str(s.engine)
        checkpoint = str(s.checkpoint or "").strip()
        return {"axis": axis, "slice_index": index, "engine": engine, "policy": str(s.policy),
                "max_turns": int(s.max_turns or 5),
                "engine_options": {"checkpoint": checkpoint} if engine.startswith("sam_") and checkpoint else None}

    def run(self) -> None:
        self.app.guarded(self.logic.run_agent, int(self.app.state.max_turns or 5))

    def step(self) -> None:
        self.app.guarded(self.logic.step)

    def stop(self) -> None:
        self.app.guarded(self.logic.stop)

    def accept(self) -> None:
        self.app.guarded(self.logic.accept)

    def reject(self) -> None:
        self.app.guarded(self.logic.reject)

    def undo(self) -> None:
        self.app.guarded(self.logic.undo)

    def propagate(self) -> None:
        self.app.guarded(self.logic.propagate)

    def place(self, role: str) -> None:
        self.app.guarded(self._place, role)

    def _place(self, role: str) -> None:
        self.app.editor.stop()  # a click in the view places the markup, it does not paint
        if not self.logic.arm_placement(role):
            raise AgentError("The slice view cannot place markups right now; reload the page and try again.")
        self.logic.say("info", f"Click {PLACE_HINTS[role]} in the axial view.")

    # -- saving and reviewing ------------------------------------------------------------------------------------------
    def save(self) -> None:
        self.app.guarded(self._save)

    def _save(self) -> None:
        app = self.app
        run = self.logic.active
        if run is not None:
            show_turn(run, None, self.logic.sequences_logic)  # save what the scene holds, not a reviewed turn
        folder = within(app.state.save_dir, app.write_roots, "The save folder")
        labeling = next((p for p in (folder, *folder.parents) if (p / MANIFEST).is_file()), None)
        if labeling is not None:  # a data folder may hold one too
            raise OutsideError(f"The save folder {folder} is inside the labeling folder {labeling}; Save there would "
                               "overwrite the pre-labels' files. Keep a reviewed case with Save edit in the labeling "
                               "panel, or choose a save folder outside it.")
        paths = save_results(folder, app.segmentation_node, self.logic)
        self.logic.say("info", "Saved " + " and ".join(str(p) for p in paths) + ".")

    def on_turn_slider(self, turn: Any = None, **_: Any) -> None:
        run = self.logic.active
        if run is None or not run.records or turn is None:
            return
        shown = show_turn(run, int(turn), self.logic.sequences_logic)
        if shown is not None:
            self.logic.say("info", f"Showing turn {shown} of {len(run.records)} (mask and prompts as they were). "
                                   "Move the slider to the end to edit again.")
