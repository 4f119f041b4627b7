"""GT-free agents in the Slicer logic, on a real MRML scene (PyPI slicer-core) with the real LiteMedSAM engine.

The volume is the bundled LiTS 117 sample (Resources/Samples, 24 slices of 128 x 128), placed with an oblique,
anisotropic IJKToRAS. What is checked:
- with no reference segment the default policy is a GT-free agent (`learned` when its weights and card are
  installed, else `heuristic`), and Run after the person's box makes agent turns whose chat lines carry the
  policy's reason and confidence;
- an agent that takes back its own turn (`UndoTurn`) leaves the segment and the markups exactly as after the turn
  before, the chat says so, and the person can take over in the same session;
- Run before any box asks for one (the policy's own reason) and writes nothing;
- `learned` without its weights fails with a sentence, before anything is created.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mrml_scene import oblique

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed: pip install -e '.[test]'")
vtk = pytest.importorskip("vtk")
from vtk.util import numpy_support  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

from MedAgentSegModuleLib import agent_logic  # noqa: E402
from MedAgentSegModuleLib.agent_logic import AgentError, AgentSegLogic, default_policy  # noqa: E402
from MedAgentSegModuleLib.mrml_writer import ensure_scene_logics, markups_positions, vtk_matrix  # noqa: E402
from test_mrml_agent_flow import segment_array  # noqa: E402  (one independent segment reader for both)

from MedAgentSegLib.actions import AddPoint  # noqa: E402
from MedAgentSegLib.engines.base import Prompts  # noqa: E402
from MedAgentSegLib.observation import Decision, UndoTurn  # noqa: E402
from MedAgentSegLib.policies import GT_FREE_POLICIES  # noqa: E402

SAMPLE = REPO / "Resources" / "Samples"


# -- helpers ---------------------------------------------------------------------------------------------------
def oblique_ijk_to_ras() -> np.ndarray:
    return oblique(20.0, -10.0, (0.9, 0.8, 2.0), (-30.0, 12.5, 80.0))


def scene_state(ctx, run) -> dict:
    """The target segment's full array plus every prompt node's control points and the ROI geometry."""
    roi = run.prompts.roi
    return {"segment": segment_array(ctx["seg"], run.segment_id, ctx["shape"]),
            "roi": (roi.GetNumberOfControlPoints(), tuple(roi.GetCenter()), tuple(roi.GetSize())),
            "pos": markups_positions(run.prompts.positive), "neg": markups_positions(run.prompts.negative)}


def assert_same_state(a: dict, b: dict) -> None:
    assert np.array_equal(a["segment"], b["segment"]), "segment"
    assert a["roi"] == b["roi"], "roi"
    for key in ("pos", "neg"):
        assert a[key].shape == b[key].shape and np.array_equal(a[key], b[key]), key


def draw_box(ctx, run) -> None:
    """What the person does: draw the session's ROI around the liver (a few pixels of margin) on the slice."""
    ys, xs = np.nonzero(ctx["liver"][ctx["k"]])
    h, w = ctx["liver"].shape[1:]
    box = (max(0.0, xs.min() - 3.0), max(0.0, ys.min() - 3.0), min(w - 1.0, xs.max() + 3.0),
           min(h - 1.0, ys.max() + 3.0))
    run.prompts.write(Prompts(box=box), run.geom)
    ctx["logic"].sync_prompts_from_markups()
    ctx["logic"].wait()


def texts(ctx, role: str | None = None) -> list[str]:
    return [m.text for m in ctx["messages"] if role is None or m.role == role]


# -- fixtures ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample():
    sitk = pytest.importorskip("SimpleITK")
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / "lits117_liver_ct.nrrd"))).astype(np.int16)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / "lits117_liver_ct_labels.nrrd")))
    liver = labels == 1
    return image, liver, int(np.argmax(liver.sum(axis=(1, 2))))


@pytest.fixture
def engine(lite_engine):
    import torch

    torch.set_num_threads(1)
    return lite_engine


@pytest.fixture
def no_learned_weights(monkeypatch, tmp_path):
    """The learned agent's weights as if not installed (they are trained separately): the default is heuristic."""
    from MedAgentSegLib.agent import learned

    monkeypatch.setattr(learned, "POLICY_WEIGHTS", tmp_path / "missing" / "policy_controller.pt")


@pytest.fixture
def ctx(sample, engine):
    image, liver, k = sample
    scene = slicer.vtkMRMLScene()
    ensure_scene_logics(scene)
    vol = slicer.vtkMRMLScalarVolumeNode()
    vol.SetName("LiTS117 sample")
    scene.AddNode(vol)
    img = vtk.vtkImageData()
    img.SetDimensions(image.shape[2], image.shape[1], image.shape[0])
    img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(image.ravel()), deep=True))
    vol.SetAndObserveImageData(img)
    vol.SetIJKToRASMatrix(vtk_matrix(oblique_ijk_to_ras()))
    seg = slicer.vtkMRMLSegmentationNode()
    seg.SetName("Segmentation")
    scene.AddNode(seg)
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(vol)
    messages = []
    logic = AgentSegLogic(scene, engine_factory=lambda name: engine, on_message=messages.append)
    yield {"scene": scene, "vol": vol, "seg": seg, "k": k, "liver": liver, "shape": image.shape, "logic": logic,
           "messages": messages}
    logic.cleanup()


def start(ctx, **kw):
    """A session on the sample's largest liver slice, with no reference segment."""
    run = ctx["logic"].start(ctx["vol"], ctx["seg"], target="liver", axis="K", slice_index=ctx["k"],
                             engine="litemedsam", max_turns=4, **kw)
    ctx["logic"].wait()
    assert run.session is not None, texts(ctx)
    return run


class ClickThenTakeBack:
    """A stub GT-free agent: a positive click at the image centre, then it takes that click back."""

    def __init__(self):
        self.last_decision = None
        self.calls = 0

    def next_action(self, obs):
        self.calls += 1
        if self.calls == 1:
            self.last_decision = Decision("positive click at the centre (stub)", 0.61)
            return AddPoint((500, 500), "positive")
        self.last_decision = Decision("took back my last turn: the stub always regrets its click", 0.42)
        return UndoTurn()


# -- tests -------------------------------------------------------------------------------------------------------
def test_default_policy_is_gt_free_without_a_reference(monkeypatch, tmp_path):
    from MedAgentSegLib.agent import learned

    weights = tmp_path / "policy_controller.pt"
    monkeypatch.setattr(learned, "POLICY_WEIGHTS", weights)
    assert default_policy() == "heuristic"  # no weights installed
    weights.write_bytes(b"")
    assert default_policy() == "heuristic"  # weights without their card do not count
    weights.with_suffix(".json").write_text("{}")
    assert default_policy() == "learned"
    assert default_policy("reference-segment-id") == "oracle"  # with a reference, the oracle stays the choice
    assert set(GT_FREE_POLICIES) <= set(agent_logic.POLICY_CHOICES)
    assert {"oracle", "scripted"} <= set(agent_logic.POLICY_CHOICES)


def test_without_a_reference_run_after_the_box_makes_agent_turns_that_give_reason_and_confidence(
        ctx, no_learned_weights):
    logic = ctx["logic"]
    run = start(ctx)  # no policy, no reference segment: the default
    assert run.policy_name == "heuristic" and run.policy_name in GT_FREE_POLICIES
    assert type(run.policy).__name__ == "HeuristicPolicy"
    draw_box(ctx, run)
    assert [t.source for t in run.session.turns] == ["user"] and len(run.records) == 1
    n_messages = len(ctx["messages"])

    logic.run_agent(3)
    logic.wait()
    assert not texts(ctx, "error"), texts(ctx, "error")
    session = run.session
    agent_actions = [r["action"] for r in session.reverted] + [t.action for t in session.turns
                                                              if t.source == "agent"]
    mask_actions = [a for a in agent_actions if a["name"] != "stop_action"]
    assert mask_actions, f"the agent made no mask turn after the box: {agent_actions}"
    lines = [m for m in ctx["messages"][n_messages:] if m.role == "agent" and m.turn is not None]
    for action in mask_actions:
        assert action.get("reason") and action.get("confidence") is not None, action
        said = [m.text for m in lines if m.text.startswith("Turn ") and action["reason"] in m.text
                and f"\u2014 confidence {action['confidence']:.2f}" in m.text]  # one turn may repeat a reason
        assert said and all("(Agent)" in s for s in said), (action, [m.text for m in lines])
    # the segment holds the session's mask on the slice, nothing elsewhere
    target = segment_array(ctx["seg"], run.segment_id, ctx["shape"])
    assert np.array_equal(target[ctx["k"]], session.mask) and target.sum() == session.mask.sum() > 0
    assert len(run.records) == session.mask_turns


def test_an_agent_that_takes_back_its_click_leaves_the_scene_as_before_it(ctx):
    logic = ctx["logic"]
    stub = ClickThenTakeBack()
    run = start(ctx, policy=stub)
    draw_box(ctx, run)
    before_click = scene_state(ctx, run)
    assert before_click["segment"].any() and before_click["pos"].shape == (0, 3)

    logic.step()  # the agent's click
    logic.wait()
    after_click = scene_state(ctx, run)
    assert after_click["pos"].shape == (1, 3) and len(run.records) == 2
    assert run.records[-1].record["action"]["reason"] == "positive click at the centre (stub)"

    logic.step()  # the agent takes it back
    logic.wait()
    assert not texts(ctx, "error"), texts(ctx, "error")
    assert len(run.session.reverted) == 1 and run.session.reverted[0]["action"]["name"] == "add_point"
    assert run.session.status == "stopped" and run.session.mask_turns == 1
    assert_same_state(scene_state(ctx, run), before_click)
    assert np.array_equal(before_click["segment"][ctx["k"]], run.session.mask)
    assert len(run.records) == 1 and run.recorder.count == 1
    tag = vtk.reference("")
    assert run.segment().GetTag("MedAgentSeg.Turns", tag) and str(tag) == "1"
    taken = [m for m in ctx["messages"] if "took back turn 2" in m.text]
    assert len(taken) == 1 and taken[0].role == "agent" and taken[0].turn == 2, texts(ctx)
    assert "the stub always regrets its click" in taken[0].text and "as after turn 1" in taken[0].text

    # the person takes over: a click continues the same session, numbered after the kept turn
    ys, xs = np.nonzero(ctx["liver"][ctx["k"]])
    logic.add_click(run.geom.pixel_to_ras(float(np.median(xs)), float(np.median(ys))), positive=True)
    logic.wait()
    assert len(run.records) == 2 and run.session.turns[-1].source == "user"
    assert [t.action["name"] for t in run.session.turns] == ["add_bbox", "add_point"]
    assert np.array_equal(segment_array(ctx["seg"], run.segment_id, ctx["shape"])[ctx["k"]], run.session.mask)
    assert logic.trajectory_dict()["runs"][0]["session"]["reverted"][0]["action"]["name"] == "add_point"


def test_run_before_any_box_asks_for_one_and_writes_nothing(ctx, no_learned_weights):
    logic, scene = ctx["logic"], ctx["scene"]
    for cls in ("vtkMRMLSelectionNode", "vtkMRMLInteractionNode"):  # what the Slicer application has
        node = getattr(slicer, cls)()
        node.SetSingletonTag("Singleton")
        scene.AddNode(node)
    interaction = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    run = start(ctx)
    n_messages = len(ctx["messages"])
    logic.run_agent()
    logic.wait()
    assert not texts(ctx, "error"), texts(ctx, "error")
    assert run.session.mask_turns == 0 and not run.records and run.recorder.count == 0
    assert not segment_array(ctx["seg"], run.segment_id, ctx["shape"]).any()
    assert run.prompts.roi.GetNumberOfControlPoints() == 0
    new = [m.text for m in ctx["messages"][n_messages:]]
    assert any(m.role == "agent" and "no box yet: draw a box" in m.text.lower()
               for m in ctx["messages"][n_messages:]), new
    assert any(run.prompts.roi.GetName() in t and "then Run lets the agent refine" in t for t in new), new
    # the next placement in a slice view draws the session's box
    assert scene.GetNodeByID("vtkMRMLSelectionNodeSingleton").GetActivePlaceNodeID() == run.prompts.roi.GetID()
    assert interaction.GetCurrentInteractionMode() == interaction.Place

    # then the box, and Run continues from it in the same session
    draw_box(ctx, run)
    logic.step()
    logic.wait()
    assert not texts(ctx, "error"), texts(ctx, "error")
    assert run.session.turns[0].source == "user" and run.session.turns[0].action["name"] == "add_bbox"
    assert any(t.source == "agent" for t in run.session.turns) or run.session.reverted


def test_a_policy_that_loads_weights_is_built_on_the_worker_thread(ctx):
    import threading

    from MedAgentSegLib.agent.heuristic import HeuristicPolicy

    built = []

    def factory(name, ref, **kw):
        built.append((name, ref, threading.get_ident()))
        return HeuristicPolicy()

    ctx["logic"].policy_factory = factory
    run = start(ctx, policy="learned")
    assert built == [("learned", None, ctx["logic"].executor.thread_ident)]
    assert built[0][2] != threading.get_ident() and isinstance(run.policy, HeuristicPolicy)
    draw_box(ctx, run)
    ctx["logic"].step()
    ctx["logic"].wait()
    assert not texts(ctx, "error"), texts(ctx, "error")
    assert any(t.source == "agent" for t in run.session.turns) or run.session.reverted


def test_the_learned_agent_runs_from_given_weights_and_says_why(ctx, tmp_path, no_learned_weights):
    """The real LearnedPolicy (a seeded, untrained controller written here), built on the worker, on CPU."""
    import json

    import torch

    from MedAgentSegLib.agent.controller import CONTROLLER_ARCH, build_controller

    torch.manual_seed(0)
    weights = tmp_path / "controller.pt"
    torch.save(build_controller(**CONTROLLER_ARCH).state_dict(), weights)
    weights.with_suffix(".json").write_text(json.dumps({"sha256": None}))
    run = start(ctx, policy="learned", policy_options={"weights": str(weights)})
    assert type(run.policy).__name__ == "LearnedPolicy"
    draw_box(ctx, run)
    ctx["logic"].run_agent(2)
    ctx["logic"].wait()
    assert_agent_said_why(ctx, run)
    assert np.array_equal(segment_array(ctx["seg"], run.segment_id, ctx["shape"])[ctx["k"]], run.session.mask)


def assert_agent_said_why(ctx, run) -> None:
    """No error; every agent turn (taken back ones too) has a reason, and the chat gave it with a confidence."""
    assert not texts(ctx, "error"), texts(ctx, "error")
    actions = [r["action"] for r in run.session.reverted] + [t.action for t in run.session.turns
                                                             if t.source == "agent"]
    assert actions and all(a.get("reason") for a in actions), actions
    for action in actions:
        if action["name"] != "stop_action":
            assert any(action["reason"] in m and "confidence" in m for m in texts(ctx, "agent")), action


def test_the_shipped_learned_agent_refines_from_the_box(ctx):
    # The weights ship in the repository: their absence is a packaging bug, not a reason to skip.
    assert agent_logic.learned_weights_available(), "MedAgentSegLib/weights/policy_controller.pt + .json missing"
    assert default_policy() == "learned"
    run = start(ctx)
    assert run.policy_name == "learned" and type(run.policy).__name__ == "LearnedPolicy"
    draw_box(ctx, run)
    ctx["logic"].run_agent(3)
    ctx["logic"].wait()
    assert_agent_said_why(ctx, run)
    target = segment_array(ctx["seg"], run.segment_id, ctx["shape"])
    assert np.array_equal(target[ctx["k"]], run.session.mask)


def test_run_after_a_box_the_engine_has_not_run_yet_runs_the_box_first_then_the_agent(ctx, no_learned_weights):
    logic = ctx["logic"]
    run = start(ctx)
    ys, xs = np.nonzero(ctx["liver"][ctx["k"]])
    box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
    run.prompts.write(Prompts(box=box), run.geom)  # placed, but no markups event reached the logic
    logic.run_agent(2)
    logic.wait()
    assert not texts(ctx, "error"), texts(ctx, "error")
    first = run.session.turns[0]
    assert first.source == "user" and first.action["name"] == "add_bbox"
    assert np.allclose(first.prompts.box, box, atol=1e-6)
    assert any(t.source == "agent" for t in run.session.turns) or run.session.reverted
    assert not any("no box yet" in t.lower() for t in texts(ctx))


def test_learned_without_its_weights_says_so_before_anything_is_created(ctx, no_learned_weights):
    n_nodes = ctx["scene"].GetNumberOfNodes()
    n_segments = ctx["seg"].GetSegmentation().GetNumberOfSegments()
    with pytest.raises(AgentError, match="Policy 'learned' cannot be used.*heuristic"):
        ctx["logic"].start(ctx["vol"], ctx["seg"], target="liver", axis="K", slice_index=ctx["k"], policy="learned")
    assert ctx["scene"].GetNumberOfNodes() == n_nodes and ctx["logic"].active is None
    assert ctx["seg"].GetSegmentation().GetNumberOfSegments() == n_segments
    with pytest.raises(AgentError, match="Policy 'mllm' needs a local model folder"):
        ctx["logic"].start(ctx["vol"], ctx["seg"], target="liver", axis="K", slice_index=ctx["k"], policy="mllm")
    assert ctx["scene"].GetNumberOfNodes() == n_nodes and ctx["logic"].active is None
