"""The browser app: trame-slicer views and a chat panel over the Slicer module's `AgentSegLogic`.

Everything the agent does goes through the same logic as in Slicer: sessions, turns, markups, segments, undo and
trajectories are MRML in trame-slicer's scene, and the box and clicks are placed and dragged with Slicer's markups
widgets in the axial view. Model work runs on the logic's worker thread; a task on the server's event loop hands
finished turns to MRML (`AgentSegLogic.poll`) every 50 ms and pushes the chat and buttons to the page, so the page
never waits for the engine.

This file only assembles: each feature's handlers are in MedAgentSegWeb/features (one file each), the page's layout
in MedAgentSegWeb/ui. Only this package imports trame.
"""

from __future__ import annotations

import asyncio
import getpass
import traceback
from pathlib import Path
from typing import Any

from MedAgentSegModuleLib.agent_logic import AgentError, AgentSegLogic
from MedAgentSegModuleLib.mrml_writer import MRMLInputError
from MedAgentSegModuleLib.words import WEB
from trame.app import TrameApp
from trame.widgets import client, html
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout
from trame_vuetify.widgets import vuetify3 as v3
from wslink.websocket import LinkProtocol

from .features.display import DisplayFeature
from .features.hand_edit import HandEditFeature
from .features.page_state import PageState
from .features.review_queue import CASES_EVERY, ReviewQueueActions
from .features.session import SAMPLE, VIEW, SessionActions
from .features.shortcuts import Shortcuts
from .features.views import ViewsFeature
from .files import OutsideError, SaveError, within
from .labeling import EXPECTED as LABELING_ERRORS
from .labeling import LabelingPanel
from .ui.panel import session_panel
from .ui.review_queue import review_queue_panel
from .ui.shortcuts import key_list, key_listener
from .ui.style import CSS
from .ui.toolbar import toolbar
from .ui.view_overlay import slice_view_ui, threed_view_ui
from .ui.view_tools import view_tools

__all__ = ["WebApp", "main", "SAMPLE", "VIEW"]

POLL_S = 0.05


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
        self.views = ViewsFeature(self)
        register_rca_factories(self.slicer_app.view_manager, self.server, slice_view_ui_f=slice_view_ui,
                               three_d_view_ui_f=threed_view_ui)
        self.layout_manager = LayoutManager(self.scene, self.slicer_app.view_manager, self.server)
        self.views.install(self.layout_manager)
        self.logic = AgentSegLogic(self.scene, engine_factory=engine_factory, policy_factory=policy_factory,
                                   device=device, words=WEB)
        self.volume_node: Any = None
        self.segmentation_node: Any = None
        self._clients = self._polls = 0
        self.page = PageState(self, out_dir)
        self.labeling = LabelingPanel(self, lease_seconds=lease_seconds)
        self.session = SessionActions(self)
        self.queue = ReviewQueueActions(self)
        self.display = DisplayFeature(self)
        self.editor = HandEditFeature(self)
        self.shortcuts = Shortcuts(self)
        self.state.reviewer = reviewer or _os_user()
        self.state.labeling_dir = str(labeling or "")
        self._build_ui()
        self.server.controller.on_server_ready.add(self._start_polling)
        self.server.add_protocol_to_configure(lambda protocol: protocol.registerLinkProtocol(_Connections(self)))
        if image:
            self.guarded(self.session._load, Path(image))
        if labeling:
            self.queue.open()

    # -- what every feature shares -----------------------------------------------------------------------------------
    def guarded(self, fn: Any, *args: Any) -> Any:
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
            self.sync()
        return None

    def sync(self) -> None:
        """Push what changed to the page, and draw what appeared in the scene as the page draws it."""
        self.display.tick()
        run = self.logic.active
        if run is not None and run.segmentation_node is not self.segmentation_node and run.volume_node is \
                self.volume_node:
            self.segmentation_node = run.segmentation_node
        if self.segmentation_node is not None:
            self.views.show_segments_in_3d(self.segmentation_node)
        self.page.sync()

    def show_volume(self, volume: Any) -> None:
        """`volume` becomes the one the chat and the tools work on, shown in every view."""
        self.volume_node = volume
        self.views.show_volume(volume)
        self.display.apply_preset(self.state.wl_preset)
        self.state.volume_name = volume.GetName()

    # -- what the labeling panel calls (MedAgentSegWeb/labeling.py) --------------------------------------------------
    def within_served(self, path: str, what: str) -> Path:
        """A labeling folder the page may open: inside a data folder or the --labeling one."""
        return within(path, self.labeling_roots, what)

    def show_case(self, volume: Any, segmentation: Any) -> None:
        """The case the panel loaded becomes the volume and segmentation the chat and the tools work on."""
        self.show_volume(volume)
        self.segmentation_node = segmentation

    def jump_to(self, ras: Any) -> None:
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            self.scene.GetNthNodeByClass(i, "vtkMRMLSliceNode").JumpSliceByOffsetting(*ras)

    # -- the poll loop and the pages ---------------------------------------------------------------------------------
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
                self.guarded(self.queue.tick, self._clients)
            self.editor.tick()
            self.sync()
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

    # -- the page ----------------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        with SinglePageWithDrawerLayout(self.server, width=400) as self.ui:
            client.Style(CSS)
            key_listener(self)
            self.ui.title.set_text("MedAgentSeg")
            with self.ui.toolbar:
                toolbar(self)
            with self.ui.drawer, html.Div(classes="pa-2"):
                session_panel(self)
                with v3.VExpansionPanels(v_model=("side_panels", ["queue", "keys"]), multiple=True, variant="accordion",
                                         classes="mt-3"):
                    with v3.VExpansionPanel(value="queue", id="review-queue"):
                        v3.VExpansionPanelTitle("Review queue (a labeling folder)")
                        with v3.VExpansionPanelText():
                            review_queue_panel(self)
                    with v3.VExpansionPanel(value="keys", id="keys-panel"):
                        v3.VExpansionPanelTitle("Keyboard shortcuts")
                        with v3.VExpansionPanelText():
                            key_list()
            with self.ui.content, html.Div(style="display: flex; flex-direction: column; height: 100%"):
                view_tools(self)
                with html.Div(style="flex: 1; min-height: 0; display: flex; flex-direction: column"):
                    self.layout_manager.initialize_layout_grid(self.ui)


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
