"""The browser app: trame-slicer slice views and a chat panel over the Slicer module's `AgentSegLogic`.

Everything the agent does goes through the same logic as in Slicer: sessions, turns, markups, segments, undo and
trajectories are MRML in trame-slicer's scene, and the box and clicks are placed and dragged with Slicer's markups
widgets in the slice view. Model work runs on the logic's worker thread; a task on the server's event loop hands
finished turns to MRML (`AgentSegLogic.poll`) every 50 ms and pushes the chat and buttons to the page, so the page
never waits for the engine. Only this module imports trame.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent
for _path in (_REPO / "MedAgentSeg", _REPO):  # the Slicer module's logic is not an installed package
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from MedAgentSegModuleLib.agent_logic import (  # noqa: E402
    POLICY_CHOICES,
    AgentError,
    AgentSegLogic,
    default_engine,
    default_policy,
    engine_choices,
)
from MedAgentSegModuleLib.mrml_writer import MRMLInputError, check_volume, view_slice  # noqa: E402
from trame.app import TrameApp  # noqa: E402
from trame.widgets import client, html  # noqa: E402
from trame_slicer.core import LayoutManager, SlicerApp  # noqa: E402
from trame_slicer.rca_view import register_rca_factories  # noqa: E402
from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout  # noqa: E402
from trame_vuetify.widgets import vuetify3 as v3  # noqa: E402
from wslink.websocket import LinkProtocol  # noqa: E402

from MedAgentSegLib.labeling.manifest import NAME as MANIFEST  # noqa: E402

from .files import OutsideError, SaveError, safe_upload_name, save_results, within  # noqa: E402
from .labeling import EXPECTED as LABELING_ERRORS  # noqa: E402
from .labeling import LabelingPanel  # noqa: E402
from .review import show_turn  # noqa: E402

__all__ = ["WebApp", "main", "SAMPLE"]

SAMPLE = _REPO / "Resources" / "Samples" / "lits117_liver_ct.nrrd"
VIEW = "Red"  # the one slice view; the session works on the slice it shows
POLL_S = 0.05
CASES_EVERY = 40  # polls (2 s): the case list shows other reviewers' decisions and leases
ROLE_COLORS = {"user": "#1f4e9e", "agent": "#1b7a2e", "info": "#555555", "warning": "#b36b00", "error": "#c00000"}
CSS = """
.mas-chat { height: 38vh; overflow-y: auto; border: 1px solid #ddd; padding: 4px; font-size: 13px;
            display: flex; flex-direction: column-reverse; }  /* stays scrolled to the newest line */
.mas-chat .m-user { color: #1f4e9e; } .mas-chat .m-agent { color: #1b7a2e; } .mas-chat .m-info { color: #555; }
.mas-chat .m-warning { color: #b36b00; } .mas-chat .m-error { color: #c00000; font-weight: bold; }
.mas-cases { max-height: 20vh; overflow-y: auto; border: 1px solid #ddd; font-size: 13px; }
.mas-cases .case { padding: 1px 4px; cursor: pointer; } .mas-cases .current { background: #e3ecfa; }
.mas-cases .taken { color: #888; cursor: not-allowed; }
"""


def preload_model_libraries() -> None:
    """Import torch (and through torchvision, triton) before VTK makes its first OpenGL context. Mesa's software
    EGL (llvmpipe) and triton each bring their own LLVM; triton loaded after the context crashes the process
    (segmentation fault, seen with torch 2.14 and Mesa 22.3)."""
    for name in ("torch", "torchvision.ops"):
        try:
            __import__(name)
        except ImportError:  # the engine then says what is missing when it is built
            return


class _Connections(LinkProtocol):
    """Counts the pages by their WebSocket: its close is seen however the page went (closed tab, killed browser,
    lost network), unlike trame's on_client_exited, which needs the page's beforeunload."""

    def __init__(self, app: WebApp):
        super().__init__()
        self.app = app

    def onConnect(self, request: Any, client_id: str) -> None:  # noqa: N802 - wslink's name
        self.app._on_client_connected()

    def onClose(self, client_id: str) -> None:  # noqa: N802 - wslink's name
        self.app._on_client_exited()


class WebApp(TrameApp):
    """The app for one trame server. engine_factory / policy_factory / device: as AgentSegLogic's (tests give a
    fake engine). image: a volume to open at start. out_dir: the default folder Save writes into.
    data_dirs: the folders the page may open volumes from and save into (default: the current folder); the bundled
    sample and the start image's folder can always be opened. labeling: a labeling folder (`medagentseg label
    --out`) to review, served too; reviewer: the name its decisions are recorded under (default: the OS user)."""

    def __init__(self, server: Any = None, image: str | None = None, engine_factory: Any = None,
                 policy_factory: Any = None, device: str = "auto", out_dir: str | None = None,
                 data_dirs: list[str] | None = None, labeling: str | None = None, reviewer: str | None = None,
                 lease_seconds: float = 1800.0):
        super().__init__(server)
        self.write_roots = [Path(d).expanduser().resolve() for d in (data_dirs or [Path.cwd()])]
        if out_dir:
            self.write_roots.append(Path(out_dir).expanduser().resolve())
        # --labeling is served for review (its decisions are written by the queue), never as a Save folder: Save
        # into cases/<id> would replace the pre-label's trajectory.json
        self.labeling_roots = self.write_roots + ([Path(labeling).expanduser().resolve()] if labeling else [])
        self.read_roots = self.labeling_roots + [SAMPLE.parent] + ([Path(image).resolve().parent] if image else [])
        if engine_factory is None:
            preload_model_libraries()
        self.slicer_app = SlicerApp()
        self.scene = self.slicer_app.scene
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout("Axial Only")
        self.logic = AgentSegLogic(self.scene, engine_factory=engine_factory, policy_factory=policy_factory,
                                   device=device)
        self.volume_node: Any = None
        self.segmentation_node: Any = None
        self._shown_turns = 0
        self._clients = 0
        self.labeling = LabelingPanel(self, lease_seconds=lease_seconds)
        self._polls, self._tick_error, self._case_shown = 0, "", (None, None)
        self._init_state(out_dir)
        self.state.reviewer = reviewer or _os_user()
        self.state.labeling_dir = str(labeling or "")
        self._build_ui()
        self.server.controller.on_server_ready.add(self._start_polling)
        self.server.add_protocol_to_configure(lambda protocol: protocol.registerLinkProtocol(_Connections(self)))
        if image:
            self._guarded(self._load, Path(image))
        if labeling:
            self.labeling_open()

    # -- state ---------------------------------------------------------------------------------------------------
    def _init_state(self, out_dir: str | None) -> None:
        s = self.state
        s.trame__title = "MedAgentSeg"
        s.messages = []
        s.request = ""
        s.busy, s.busy_text, s.status = False, "", "No volume yet: open one (path or upload) or load the sample."
        s.engines, s.engine = engine_choices(), default_engine()
        s.policies, s.policy = list(POLICY_CHOICES), default_policy()
        s.checkpoint, s.max_turns = "", 5
        s.path = ""
        s.save_dir = str(Path(out_dir) if out_dir else Path.cwd() / "medagentseg-web")
        s.turn, s.turn_count = 0, 0
        s.has_volume = s.has_run = s.can_act = s.can_revert = False
        s.volume_name = ""
        s.cases, s.case_id, s.review_note = [], "", ""
        s.case_turn, s.case_turn_count, s.case_turn_text = 0, 0, ""
        self.state.change("turn")(self._on_turn_slider)
        self.state.change("case_turn")(self._on_case_turn)

    def _sync(self) -> None:
        """Push what changed in the logic to the page (event-loop thread, after each poll)."""
        logic, run = self.logic, self.logic.active
        with self.state as s:
            if len(s.messages) != len(logic.messages):
                s.messages = [{"role": m.role, "text": m.text} for m in logic.messages]
            busy = logic.busy
            ready = run is not None and run.session is not None and run.status != "accepted"
            values = {"busy": busy, "busy_text": self._busy_text(run) if busy else "",
                      "has_volume": self.volume_node is not None, "has_run": run is not None,
                      "can_act": ready and not busy, "can_revert": ready and not busy and bool(run.records),
                      "status": self._status(run, busy)}
            for key, value in values.items():
                if s[key] != value:
                    s[key] = value
            count = len(run.records) if run is not None else 0
            if count != self._shown_turns:  # a new or reverted turn: the slider follows, the views show it live
                self._shown_turns = count
                s.turn_count, s.turn = count, count
                if run is not None:
                    show_turn(run, None, self.logic.sequences_logic)

    @staticmethod
    def _busy_text(run: Any) -> str:
        if run is not None and run.session is None:
            return "Encoding the slice (the first time also loads the engine)..."
        return "The agent is working on a turn..."

    def _status(self, run: Any, busy: bool) -> str:
        if self.volume_node is None:
            return "No volume yet: open one (path or upload) or load the sample."
        if run is None:
            return f"'{self.volume_node.GetName()}': type a request such as 'segment the liver'."
        return (f"'{run.target}' on slice {run.geom.axis}={run.geom.index}: {len(run.records)} turn(s), "
                f"{run.status}{', working...' if busy else ''}")

    # -- the poll loop -------------------------------------------------------------------------------------------
    def _start_polling(self, **_: Any) -> None:
        self._poll_task = asyncio.get_event_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            try:
                self.logic.poll()
            except Exception as exc:  # noqa: BLE001 - the loop must survive; the chat says what happened
                traceback.print_exc()
                self.logic.say("error", f"Unexpected error while writing a result: {exc}. Details are in the "
                                        "server's console.")
            self._polls += 1
            if self._polls % CASES_EVERY == 0 and self.labeling.review is not None:
                self._guarded(self._labeling_tick)
            self._sync()
            await asyncio.sleep(POLL_S)

    def _on_client_connected(self) -> None:
        self._clients += 1
        if self._clients > 1:
            self.logic.say("warning", "Another browser tab is connected to this server: all tabs show and drive the "
                                      "same session. Close the other tabs to avoid pressing buttons twice.")
        elif self.logic.active is not None:  # a page opened again on a session in progress: where it stands
            run = self.logic.active
            working = "; the agent is still working on a turn" if self.logic.busy else ""
            self.logic.say("info", f"Page opened again: '{run.target}' has {len(run.records)} turn(s) in the scene"
                                   f"{working}. Continue with Step, Run, Undo, Accept or Save.")

    def _on_client_exited(self) -> None:
        self._clients = max(0, self._clients - 1)
        if self._clients == 0 and self.logic.busy:
            self.logic.say("info", "The page was closed while the agent worked on a turn. The server finishes it and "
                                   "writes it whole into the scene (or, if it fails, writes nothing); open the page "
                                   "again to see it and continue.")

    # -- actions -------------------------------------------------------------------------------------------------
    def _guarded(self, fn: Any, *args: Any) -> Any:
        """Run an action; every failure becomes a chat line saying what to do (never a dead button)."""
        try:
            return fn(*args)
        except (AgentError, MRMLInputError, SaveError, OutsideError, *LABELING_ERRORS) as exc:
            text = str(exc)
            self.logic.say("error", text[:1].upper() + text[1:])
        except Exception as exc:  # noqa: BLE001 - a bug: keep the details in the console, tell the person
            traceback.print_exc()
            self.logic.say("error", f"Unexpected error: {exc}. Details are in the server's console.")
        finally:
            self._sync()
        return None

    def load_sample(self) -> None:
        self._guarded(self._load, SAMPLE)

    def load_path(self) -> None:
        path = str(self.state.path or "").strip()
        if not path:
            self.logic.say("error", "Type the path of a volume file on the server (NRRD, NIfTI, MHA) first.")
            self._sync()
            return
        self._guarded(lambda: self._load(within(path, self.read_roots, "The volume path")))

    def upload(self, files: list[dict[str, Any]] | None) -> None:
        self._guarded(self._upload, files or [])

    def _upload(self, files: list[dict[str, Any]]) -> None:
        if not files:
            return
        with tempfile.TemporaryDirectory(prefix="medagentseg-upload-") as tmp:
            target = Path(tmp) / safe_upload_name(files[0].get("name", ""))
            content = files[0].get("content") or b""
            target.write_bytes(content if isinstance(content, bytes) else bytes(content))
            self._load(target, shown_name=target.name)

    def _load(self, path: Path, shown_name: str | None = None) -> None:
        name = shown_name or path.name
        if not path.is_file():
            raise MRMLInputError(f"There is no file {path} on the server; check the path.")
        try:
            nodes = self.slicer_app.io_manager.load_volumes([str(path)])
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
                self.scene.RemoveNode(extra)
            raise
        self.volume_node, self.segmentation_node = node, None
        self.slicer_app.display_manager.show_volume(node, do_reset_views=True)
        dims = node.GetImageData().GetDimensions()
        self.state.volume_name = node.GetName()
        self.logic.say("info", f"Loaded '{name}' ({dims[0]} x {dims[1]} x {dims[2]}). Scroll to a slice, then type "
                               "a request such as 'segment the liver'.")

    def send(self) -> None:
        text = str(self.state.request or "").strip()
        self.state.request = ""
        if text:
            self._guarded(self._request, text)

    def _request(self, text: str) -> None:
        kwargs = self._start_kwargs() if self.volume_node is not None else {}
        self.logic.request(text, self.volume_node, self.segmentation_node, view=VIEW, **kwargs)
        if self.logic.active is not None:
            self.segmentation_node = self.logic.active.segmentation_node

    def _start_kwargs(self) -> dict[str, Any]:
        s = self.state
        slice_node = self.scene.GetNodeByID(f"vtkMRMLSliceNode{VIEW}")
        axis, index = view_slice(slice_node, self.volume_node, VIEW) if slice_node is not None else ("K", None)
        engine = str(s.engine)
        checkpoint = str(s.checkpoint or "").strip()
        return {"axis": axis, "slice_index": index, "engine": engine, "policy": str(s.policy),
                "max_turns": int(s.max_turns or 5),
                "engine_options": {"checkpoint": checkpoint} if engine.startswith("sam_") and checkpoint else None}

    def run(self) -> None:
        self._guarded(self.logic.run_agent, int(self.state.max_turns or 5))

    def step(self) -> None:
        self._guarded(self.logic.step)

    def stop(self) -> None:
        self._guarded(self.logic.stop)

    def accept(self) -> None:
        self._guarded(self.logic.accept)

    def reject(self) -> None:
        self._guarded(self.logic.reject)

    def undo(self) -> None:
        self._guarded(self.logic.undo)

    def propagate(self) -> None:
        self._guarded(self.logic.propagate)

    def place(self, role: str) -> None:
        self._guarded(self._place, role)

    def _place(self, role: str) -> None:
        if not self.logic.arm_placement(role):
            raise AgentError("The slice view cannot place markups right now; reload the page and try again.")
        what = {"box": "two opposite corners of the box", "positive": "a point inside the structure",
                "negative": "a point outside the structure"}[role]
        self.logic.say("info", f"Click {what} in the slice view.")

    def save(self) -> None:
        self._guarded(self._save)

    def _save(self) -> None:
        seg = self.segmentation_node
        run = self.logic.active
        if run is not None:
            show_turn(run, None, self.logic.sequences_logic)  # save what the scene holds, not a reviewed turn
        folder = within(self.state.save_dir, self.write_roots, "The save folder")
        labeling = next((p for p in (folder, *folder.parents) if (p / MANIFEST).is_file()), None)
        if labeling is not None:  # a data folder may hold one too
            raise OutsideError(f"The save folder {folder} is inside the labeling folder {labeling}; Save there would "
                               "overwrite the pre-labels' files. Keep a reviewed case with Save edit in the labeling "
                               "panel, or choose a save folder outside it.")
        paths = save_results(folder, seg, self.logic)
        self.logic.say("info", "Saved " + " and ".join(str(p) for p in paths) + ".")

    def _on_turn_slider(self, turn: Any = None, **_: Any) -> None:
        run = self.logic.active
        if run is None or not run.records or turn is None:
            return
        shown = show_turn(run, int(turn), self.logic.sequences_logic)
        if shown is not None:
            self.logic.say("info", f"Showing turn {shown} of {len(run.records)} (mask and prompts as they were). "
                                   "Move the slider to the end to edit again.")

    # -- the labeling folder's review queue (MedAgentSegWeb/labeling.py does the work) ----------------------------
    def within_served(self, path: str, what: str) -> Path:
        """A labeling folder the page may open: inside a data folder or the --labeling one."""
        return within(path, self.labeling_roots, what)

    def show_case(self, volume: Any, segmentation: Any) -> None:
        """The case the panel loaded becomes the volume and segmentation the chat and the tools work on."""
        self.volume_node, self.segmentation_node = volume, segmentation
        self.slicer_app.display_manager.show_volume(volume, do_reset_views=True)
        self.state.volume_name = volume.GetName()

    def jump_to(self, ras: Any) -> None:
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            self.scene.GetNthNodeByClass(i, "vtkMRMLSliceNode").JumpSliceByOffsetting(*ras)

    def _labeling(self, fn: Any, *args: Any) -> None:
        """A panel action: its line in the chat, then the list and the case's turn slider follow."""
        try:
            self.logic.say("info", fn(*args))
        finally:
            self._show_cases()

    def _show_cases(self) -> None:
        panel = self.labeling
        with self.state as s:
            s.cases = panel.rows()
            shown = (panel.case_id, self.volume_node)  # a case opened again has new nodes: its slider starts again
            if shown != self._case_shown:
                self._case_shown = shown
                s.case_id = panel.case_id or ""
                count = panel.turn_count()
                s.case_turn_count, s.case_turn = count, count
                s.case_turn_text = panel.show_turn(count)

    def _labeling_tick(self) -> None:
        """Renew the lease, refresh the list; a problem (a damaged manifest) is said once, not every 2 s."""
        try:
            self.labeling.tick(self._clients)
            self._show_cases()
        except LABELING_ERRORS as exc:
            if str(exc) != self._tick_error:
                self._tick_error = str(exc)
                raise
        else:
            self._tick_error = ""

    def _navigate(self, fn: Any, *args: Any) -> None:
        self.labeling.set_reviewer(self.state.reviewer)  # a name typed since applies from this case on
        self._labeling(fn, *args)

    def labeling_open(self) -> None:
        self._guarded(self._labeling, self.labeling.open_folder, self.state.labeling_dir, self.state.reviewer)

    def case_next(self) -> None:
        self._guarded(self._navigate, self.labeling.next)

    def case_next_unreviewed(self) -> None:
        self._guarded(self._navigate, self.labeling.next, True)

    def case_previous(self) -> None:
        self._guarded(self._navigate, self.labeling.previous)

    def case_pick(self, case_id: str) -> None:
        self._guarded(self._navigate, self.labeling.open_case, str(case_id))

    def case_reload(self) -> None:
        self._guarded(self._labeling, self.labeling.reload)

    def case_accept(self) -> None:
        self._guarded(self._decide, self.labeling.accept)

    def case_reject(self) -> None:
        self._guarded(self._decide, self.labeling.reject)

    def case_save_edit(self) -> None:
        self._guarded(self._decide, self.labeling.save_edit)

    def _decide(self, fn: Any) -> None:
        self.labeling.set_reviewer(self.state.reviewer)  # the decision carries the name shown in the page
        self._labeling(fn, self.state.review_note)
        self.state.review_note = ""  # recorded with this case: never carried to the next one by mistake

    def _on_case_turn(self, case_turn: Any = None, **_: Any) -> None:
        if case_turn:
            text = self._guarded(self.labeling.show_turn, int(case_turn))
            self.state.case_turn_text = text or ""

    # -- the page --------------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        with SinglePageWithDrawerLayout(self.server, width=400) as self.ui:
            client.Style(CSS)
            self.ui.title.set_text("MedAgentSeg")
            with self.ui.toolbar:
                self._toolbar()
            with self.ui.drawer:
                self._panel()
            with self.ui.content:
                self.layout_manager.initialize_layout_grid(self.ui)

    def _toolbar(self) -> None:
        v3.VSpacer()
        v3.VBtn("Load sample", id="load-sample", click=self.load_sample, variant="tonal", classes="mx-1")
        v3.VTextField(v_model=("path",), label="Volume path on the server", id="path", density="compact",
                      hide_details=True, style="max-width: 320px", classes="mx-1")
        v3.VBtn("Open", id="open-path", click=self.load_path, variant="tonal", classes="mx-1")
        v3.VFileInput(id="upload", label="Upload", density="compact", hide_details=True, style="max-width: 200px",
                      change=f"trigger('{self.server.controller.trigger_name(self.upload)}', "
                             "[$event.target.files])")

    def _panel(self) -> None:
        with html.Div(classes="pa-2"):
            html.Div("{{ status }}", id="status", classes="text-caption mb-1")
            with html.Div(classes="d-flex"):
                v3.VSelect(v_model=("engine",), items=("engines",), label="Engine", id="engine", density="compact",
                           hide_details=True, classes="mr-1")
                v3.VSelect(v_model=("policy",), items=("policies",), label="Agent", id="policy", density="compact",
                           hide_details=True)
            v3.VTextField(v_model=("checkpoint",), label="SAM checkpoint (.pth on the server)", id="checkpoint",
                          density="compact", hide_details=True, v_show="engine.startsWith('sam_')", classes="mt-1")
            with html.Div(classes="mas-chat mt-2", id="chat"), html.Div():
                html.Div("{{ m.text }}", v_for="(m, i) in messages", key="i", classes=("'m-' + m.role",))
            v3.VProgressLinear(indeterminate=True, v_show="busy", id="progress", classes="mt-1")
            html.Div("{{ busy_text }}", v_show="busy", classes="text-caption")
            with html.Div(classes="d-flex mt-2"):
                v3.VTextField(v_model=("request",), label="Request, e.g. segment the liver", id="request",
                              density="compact", hide_details=True, v_on_keyup_enter=self.send)
                v3.VBtn("Send", id="send", click=self.send, classes="ml-1")
            self._buttons()
            self._review_and_save()
            self._review_queue()

    def _buttons(self) -> None:
        rows = ((("Run", "run", self.run, "!has_run || busy"), ("Step", "step", self.step, "!can_act"),
                 ("Stop", "stop", self.stop, "!has_run")),
                (("Accept", "accept", self.accept, "!can_revert"), ("Reject", "reject", self.reject, "!can_revert"),
                 ("Undo", "undo", self.undo, "!can_revert")))
        for row in rows:
            with html.Div(classes="d-flex mt-2"):
                for text, key, fn, disabled in row:
                    v3.VBtn(text, id=key, click=fn, disabled=(disabled,), size="small", classes="mr-1")
        with html.Div(classes="d-flex mt-2"):
            for text, role in (("Box", "box"), ("+ click", "positive"), ("- click", "negative")):
                v3.VBtn(text, id=f"place-{role}", click=(self.place, f"['{role}']"), disabled=("!can_act",),
                        size="small", variant="outlined", classes="mr-1")
            v3.VBtn("Propagate", id="propagate", click=self.propagate, disabled=("!can_revert",), size="small",
                    variant="outlined")

    def _review_and_save(self) -> None:
        with html.Div(v_show="turn_count > 0", classes="mt-3", id="turn-slider"):
            html.Div("Turn {{ turn }} / {{ turn_count }}", classes="text-caption", id="turn-label")
            v3.VSlider(v_model_number=("turn",), min=1, max=("turn_count",), step=1, id="turn", hide_details=True,
                       density="compact")
        with html.Div(classes="d-flex mt-2"):
            v3.VTextField(v_model=("save_dir",), label="Save into folder (on the server)", id="save-dir",
                          density="compact", hide_details=True)
            v3.VBtn("Save", id="save", click=self.save, disabled=("!has_run",), classes="ml-1")

    def _review_queue(self) -> None:
        with html.Div(classes="mt-4 pt-2", style="border-top: 1px solid #ccc"):
            html.Div("Review queue (a labeling folder)", classes="text-subtitle-2")
            with html.Div(classes="d-flex mt-1"):
                v3.VTextField(v_model=("labeling_dir",), label="Labeling folder (on the server)", id="labeling-dir",
                              density="compact", hide_details=True)
                v3.VBtn("Open folder", id="labeling-open", click=self.labeling_open, classes="ml-1")
            v3.VTextField(v_model=("reviewer",), label="Reviewer", id="reviewer", density="compact",
                          hide_details=True, classes="mt-1")
            with html.Div(classes="mas-cases mt-1", id="cases", v_show="cases.length"):
                html.Div("{{ c.id }} · {{ c.status }}{{ c.who ? ' · ' + c.who : '' }}"
                         "{{ c.note ? ' · ' + c.note : '' }}",
                         v_for="c in cases", key="c.id", data_case=("c.id",), data_status=("c.status",),
                         __properties=[("data_case", "data-case"), ("data_status", "data-status")],
                         classes=("['case', c.current ? 'current' : '', c.taken ? 'taken' : '']",),
                         click=(self.case_pick, "[c.id]"))
            with html.Div(classes="d-flex mt-1"):
                for text, key, fn in (("Previous", "case-previous", self.case_previous),
                                      ("Next", "case-next", self.case_next),
                                      ("Next unreviewed", "case-next-unreviewed", self.case_next_unreviewed)):
                    v3.VBtn(text, id=key, click=fn, disabled=("!cases.length",), size="small", classes="mr-1")
            with html.Div(v_show="case_turn_count > 1", classes="mt-1", id="case-turn-slider"):
                html.Div("Pre-label turn {{ case_turn }} / {{ case_turn_count }} {{ case_turn_text }}",
                         classes="text-caption", id="case-turn-label")
                v3.VSlider(v_model_number=("case_turn",), min=1, max=("case_turn_count",), step=1, id="case-turn",
                           hide_details=True, density="compact")
            v3.VTextField(v_model=("review_note",), label="Note (required to reject)", id="review-note",
                          density="compact", hide_details=True, classes="mt-1")
            with html.Div(classes="d-flex flex-wrap mt-1"):
                for text, key, fn in (("Accept case", "case-accept", self.case_accept),
                                      ("Reject case", "case-reject", self.case_reject),
                                      ("Save edit", "case-save-edit", self.case_save_edit),
                                      ("Reload case", "case-reload", self.case_reload)):
                    v3.VBtn(text, id=key, click=fn, disabled=("!case_id",), size="small", classes="mr-1 mb-1")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container): the page asks for a name
        return ""


def main(image: str | None = None, host: str = "127.0.0.1", port: int = 8080, device: str = "auto",
         data_dirs: list[str] | None = None, labeling: str | None = None, reviewer: str | None = None) -> None:
    """Start the app and serve it until interrupted (the CLI's `medagentseg web`)."""
    import os

    os.environ.setdefault("TRAME_ARGS", "")  # our CLI's options are the only ones; trame must not re-read argv
    app = WebApp(image=image, device=device, data_dirs=data_dirs, labeling=labeling, reviewer=reviewer)
    try:
        app.server.start(host=host, port=port, open_browser=False, timeout=0)
    finally:  # Ctrl+C: the open case goes back to the queue now, not when its lease times out (its lease only:
        review = app.labeling.review  # the scene goes with the process, even while the agent works on a turn)
        if review is not None and review.queue is not None:
            review.queue.close()
