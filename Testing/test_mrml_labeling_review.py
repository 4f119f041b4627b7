"""Reviewing a labeling folder in a real MRML scene (PyPI slicer-core): MedAgentSegModuleLib.review_queue (issue #19).

The folder is made once by `medagentseg label` with the model-free `fakes.BoxEngine`: three 2D PNG cases and a small
volume with a permuted direction and an offset origin (propagated in 3D), then copied for each test. What is checked:
- a case loads on its own grid: the volume and the segment give back the seg.nrrd's voxels, 2D and 3D;
- its turns are a sequence (one item per turn, its mask and prompts);
- next / previous / next unreviewed give the lease back and remove the case's nodes;
- accept / reject / save edit are in the manifest at once; unsaved edits block moving on;
- provenance: the agent's turns are the agent's, prompts the person placed and Segment-Editor paint are human.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import slicerio
from fakes import BoxEngine, gray_image
from PIL import Image

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed: pip install -e '.[test]'")
vtk = pytest.importorskip("vtk")
sitk = pytest.importorskip("SimpleITK")
from vtk.util import numpy_support  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

from MedAgentSegModuleLib.agent_logic import AgentError, AgentSegLogic  # noqa: E402
from MedAgentSegModuleLib.mrml_writer import ensure_scene_logics  # noqa: E402
from MedAgentSegModuleLib.review_queue import LabelingReviewLogic, ReviewError, segment_kji  # noqa: E402

import MedAgentSegLib.engines as engines  # noqa: E402
from MedAgentSegLib.actions import AddPoint, StopAction  # noqa: E402
from MedAgentSegLib.cli import main  # noqa: E402
from MedAgentSegLib.engines.base import Prompts  # noqa: E402
from MedAgentSegLib.labeling.manifest import read_manifest  # noqa: E402
from MedAgentSegLib.labeling.review import LeaseTaken, ReviewQueue  # noqa: E402

BOXES = {"c0": [5, 6, 30, 40], "c1": [10, 4, 50, 20], "c2": [0, 0, 20, 20], "vol": [10, 10, 30, 25]}


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mrml_review")
    src = root / "in"
    src.mkdir()
    for i, cid in enumerate(("c0", "c1", "c2")):
        Image.fromarray(gray_image(seed=i)).save(src / f"{cid}.png")
    vol = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 1000, (6, 40, 50)).astype(np.int16))
    vol.SetSpacing((0.8, 0.7, 2.5))
    vol.SetOrigin((-10.0, 20.0, 5.0))
    vol.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(vol, str(src / "vol.nrrd"))
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"case": c, "box": b, **({"slice": 3} if c == "vol" else {})}) + "\n"
                               for c, b in BOXES.items()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engines, "create_engine", lambda *a, **k: BoxEngine())
        argv = ["label", str(src), "--target", "polyp", "--prompts", str(prompts), "--out", str(root / "out")]
        assert main(argv) == 0
    return root / "out"


@pytest.fixture
def out(labelled, tmp_path) -> Path:
    shutil.copytree(labelled, tmp_path / "out")
    return tmp_path / "out"


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    ensure_scene_logics(scene)
    return scene


def seg_kji(path: Path) -> np.ndarray:
    seg = slicerio.read_segmentation(str(path))
    return slicerio.segment_mask(seg, seg["segments"][0]).transpose(2, 1, 0)


def status(out: Path) -> dict[str, str]:
    return {cid: r["status"] for cid, r in read_manifest(out).items()}


def paint(segmentation, segment_id, volume, kji: np.ndarray) -> None:
    """What a Segment Editor stroke does: voxels added to the segment (max with what it holds)."""
    img = slicer.vtkOrientedImageData()
    img.SetDimensions(kji.shape[2], kji.shape[1], kji.shape[0])
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    img.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(kji.astype(np.uint8).ravel(), deep=True))
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    img.SetImageToWorldMatrix(m)
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        img, segmentation, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_MERGE_MAX)


def test_a_case_loads_on_its_own_grid_with_its_turns_as_a_sequence(out, scene):
    logic = LabelingReviewLogic(scene, "alice")
    rows = logic.open_folder(str(out))
    assert [r["id"] for r in rows] == ["c0", "c1", "c2", "vol"] and {r["status"] for r in rows} == {"pre-labelled"}
    case = logic.next(unreviewed_only=True)
    assert case.case_id == "c0" and status(out)["c0"] == "in review"
    assert logic.volume.GetImageData().GetDimensions() == (64, 48, 1)
    expected = seg_kji(out / "cases" / "c0" / "original.seg.nrrd")
    assert expected.sum() > 0 and np.array_equal(segment_kji(logic.segmentation, logic.segment_id, logic.volume),
                                                 expected)
    recorder = logic.trajectory
    assert recorder.index_values() == ["1", "2"]  # the box, then the stop
    first = recorder.sequences["mask"].GetNthDataNode(0)
    assert json.loads(first.GetAttribute("MedAgentSeg.Turn"))["action"]["name"] == "add_bbox"
    assert np.array_equal(segment_kji(first, logic.segment_id, logic.volume), expected)
    box = recorder.sequences["box"].GetNthDataNode(0)
    assert box.GetNumberOfControlPoints() == 1  # the turn's box is in the sequence

    logic.open_case("vol")  # 3D: a permuted direction and an offset origin
    img = sitk.ReadImage(read_manifest(out)["vol"]["image"])
    m = vtk.vtkMatrix4x4()
    logic.volume.GetIJKToRASMatrix(m)
    ras = np.array(m.MultiplyPoint((4, 7, 2, 1)))[:3]
    lps = np.array(img.TransformIndexToPhysicalPoint((4, 7, 2)))
    assert np.allclose(ras, lps * [-1, -1, 1], atol=1e-4)
    got = segment_kji(logic.segmentation, logic.segment_id, logic.volume)
    assert np.array_equal(got, seg_kji(out / "cases" / "vol" / "original.seg.nrrd")) and got[3].any()
    slices = logic.propagation  # the propagation, slice by slice
    propagated = [r["index"] for r in json.loads((out / "cases" / "vol" / "propagation.json").read_text())["slices"]]
    assert sorted(int(v) for v in slices.index_values()) == sorted(propagated) and 3 in propagated
    item = slices.sequences["mask"].GetNthDataNode(slices.index_values().index("3"))
    assert np.array_equal(segment_kji(item, logic.segment_id, logic.volume)[3], got[3])


def test_moving_on_gives_the_lease_back_and_removes_the_case_nodes(out, scene):
    clock = Clock()
    logic = LabelingReviewLogic(scene, "alice", clock=clock)
    logic.open_folder(str(out))
    logic.next()
    c0_volume = logic.volume
    assert logic.next().case_id == "c1"
    assert c0_volume.GetScene() is None and status(out)["c0"] == "pre-labelled"
    assert not (out / "leases" / "c0.json").exists() and (out / "leases" / "c1.json").is_file()
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 1
    assert scene.GetNodesByClass("vtkMRMLSequenceBrowserNode").GetNumberOfItems() == 1

    bob = ReviewQueue(out, "bob", clock=clock)
    bob.open("c2")
    assert logic.next().case_id == "vol"  # bob's case is skipped
    assert [r["who"] for r in logic.rows()][2] == "bob (reviewing)"
    with pytest.raises(LeaseTaken):
        logic.open_case("c2")
    assert logic.case.case_id == "vol" and logic.volume.GetScene() is scene  # nothing changed
    assert logic.previous().case_id == "c1"
    logic.close()
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    assert status(out) == {"c0": "pre-labelled", "c1": "pre-labelled", "c2": "in review", "vol": "pre-labelled"}


def test_the_same_reviewer_in_another_window_sees_the_case_held_and_takes_it_over_only_when_asked(out, scene):
    clock = Clock()
    web_page = ReviewQueue(out, "alice", clock=clock)  # the web page, under the same name
    web_page.open("c0")
    logic = LabelingReviewLogic(scene, "alice", clock=clock)
    logic.open_folder(str(out))
    assert logic.rows()[0]["who"] == "alice (reviewing)" and logic.held_elsewhere("c0")
    assert logic.next().case_id == "c1"  # skipped as another reviewer's
    with pytest.raises(LeaseTaken, match="open for alice in another review window"):
        logic.open_case("c0")
    assert logic.case.case_id == "c1"  # nothing changed
    assert logic.open_case("c0", take_over=True).case_id == "c0"  # deliberately (the page crashed)
    assert not logic.held_elsewhere("c0") and web_page.release("c0") is False  # the page cannot give it back
    assert (out / "leases" / "c0.json").is_file()
    logic.close()


def test_decisions_and_an_edit_are_in_the_manifest_at_once(out, scene):
    logic = LabelingReviewLogic(scene, "alice")
    logic.open_folder(str(out))
    logic.open_case("c0")
    logic.accept("looks right")
    assert read_manifest(out)["c0"]["status"] == "accepted"
    logic.open_case("c1")
    with pytest.raises(ReviewError, match="needs a note"):
        logic.reject("  ")
    logic.reject("two polyps, only one outlined")
    assert read_manifest(out)["c1"]["review_note"] == "two polyps, only one outlined"

    logic.open_case("c2")
    with pytest.raises(ReviewError, match="has not been edited"):
        logic.save_edit()
    stroke = np.zeros((1, 48, 64), bool)
    stroke[0, 30:40, 40:60] = True
    paint(logic.segmentation, logic.segment_id, logic.volume, stroke)
    assert logic.dirty()
    for move in (logic.next, lambda: logic.open_case("c0"), logic.accept, lambda: logic.open_folder(str(out)),
                 lambda: logic.close(drop_edits=False), lambda: logic.reject("wrong organ")):
        with pytest.raises(ReviewError, match="edited and not saved: Save edit first, or Reload case to drop the "
                                              "edit, then"):
            move()
    assert logic.case.case_id == "c2" and logic.dirty() and status(out)["c2"] == "in review"  # the edit is kept
    assert not (out / "cases" / "c2" / "review.json").exists()  # no rejection recorded either
    logic.open_case("c2", drop_edits=True)  # Reload case: the edit is dropped, the case stays held
    assert not logic.dirty() and status(out)["c2"] == "in review" and (out / "leases" / "c2.json").is_file()
    assert np.array_equal(segment_kji(logic.segmentation, logic.segment_id, logic.volume),
                          seg_kji(out / "cases" / "c2" / "original.seg.nrrd"))
    paint(logic.segmentation, logic.segment_id, logic.volume, stroke)
    rec = logic.save_edit("added the second lobe")
    expected = seg_kji(out / "cases" / "c2" / "original.seg.nrrd") | stroke
    assert np.array_equal(seg_kji(out / "cases" / "c2" / "final.seg.nrrd"), expected)
    assert read_manifest(out)["c2"]["status"] == "edited" == rec["status"] and not logic.dirty()
    review = json.loads((out / "cases" / "c2" / "review.json").read_text())
    assert [(t["by"], t["action"], t["mask"]) for t in review["turns"][-1:]] == [("human", "segment editor", "final")]

    logic.open_case("c1")
    reopened = logic.open_case("c2")  # the edited case shows its final mask
    assert reopened.final is not None
    assert np.array_equal(segment_kji(logic.segmentation, logic.segment_id, logic.volume), expected)


def test_a_reviewer_typed_later_takes_over_the_open_case_in_the_logic(out, scene):
    logic = LabelingReviewLogic(scene, "alice")
    logic.open_folder(str(out))
    logic.open_case("c0")
    logic.set_reviewer("  carol ")
    assert logic.reviewer == "carol" and logic.case.case_id == "c0"  # the same case, under the new name
    assert json.loads((out / "leases" / "c0.json").read_text())["reviewer"] == "carol"
    assert logic.accept()["reviewer"] == "carol"
    logic.open_case("c1")
    stroke = np.zeros((1, 48, 64), bool)
    stroke[0, 30:40, 40:60] = True
    paint(logic.segmentation, logic.segment_id, logic.volume, stroke)
    with pytest.raises(ReviewError, match="was edited as carol and is not saved: put 'carol' back"):
        logic.set_reviewer("dave")
    assert logic.reviewer == "carol" and logic.dirty()  # nothing changed, the edit kept
    with pytest.raises(ReviewError, match="Type your name in 'Reviewer' first"):
        logic.set_reviewer(" ")
    logic.close()


def test_the_list_shows_other_reviewers_changes_from_the_timer(out, scene):
    clock = Clock()
    logic = LabelingReviewLogic(scene, "alice", clock=clock)
    logic.open_folder(str(out))
    assert logic.changed_rows() is not None  # the first read
    assert logic.changed_rows() is None  # not due yet: the manifest is not read 20 times a second
    bob = ReviewQueue(out, "bob", clock=clock)
    bob.open("c1")
    assert logic.changed_rows() is None
    clock.now += 3
    rows = logic.changed_rows()
    assert rows is not None and rows[1]["who"] == "bob (reviewing)"
    clock.now += 3
    assert logic.changed_rows() is None  # nothing changed: the list is not redrawn
    bob.accept("c1")
    clock.now += 3
    assert logic.changed_rows()[1]["status"] == "accepted"


def _web_panel(scene):
    """(agent logic, the web app's labeling panel) over `scene`, with the app's view calls as no-ops."""
    from types import SimpleNamespace

    from MedAgentSegWeb.labeling import LabelingPanel

    agent = AgentSegLogic(scene, engine_factory=lambda name, **kw: BoxEngine())
    app = SimpleNamespace(scene=scene, logic=agent, volume_node=None, segmentation_node=None,
                          within_served=lambda path, what: Path(path), show_case=lambda volume, seg: None,
                          jump_to=lambda ras: None)
    return agent, LabelingPanel(app)


def test_each_folder_opened_in_the_web_panel_keeps_one_wrapper_on_the_agent(out, scene):
    agent, panel = _web_panel(scene)
    panel.open_folder(str(out), "alice")
    wrapped = agent.on_change
    for name in ("alice", "carol"):
        panel.open_folder(str(out), name)
    assert agent.on_change is wrapped and panel.review.reviewer == "carol"
    panel.open_case("c0")
    panel.set_reviewer("dave")  # the logic's: the open case under the new name
    assert json.loads((out / "leases" / "c0.json").read_text())["reviewer"] == "dave"
    panel.review.close()
    agent.cleanup()


def test_closing_while_the_agent_works_changes_nothing(out, scene, monkeypatch):
    agent = AgentSegLogic(scene, engine_factory=lambda name, **kw: BoxEngine())
    logic = LabelingReviewLogic(scene, "alice", agent=agent)
    logic.open_folder(str(out))
    logic.open_case("c0")
    with monkeypatch.context() as m:
        m.setattr(AgentSegLogic, "busy", property(lambda self: True))
        with pytest.raises(AgentError, match="still working"):
            logic.close()
        assert logic.case.case_id == "c0" and logic.volume.GetScene() is scene and logic.segmentation.GetScene()
        assert (out / "leases" / "c0.json").is_file() and status(out)["c0"] == "in review"  # still held
    logic.close()
    assert logic.case is None and not (out / "leases" / "c0.json").exists() and status(out)["c0"] == "pre-labelled"
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    agent.cleanup()


def test_the_web_panel_renews_the_lease_only_while_a_page_is_connected(out, scene):
    agent, panel = _web_panel(scene)
    panel.open_folder(str(out), "alice")
    panel.open_case("c0")
    lease = out / "leases" / "c0.json"
    before = json.loads(lease.read_text())["expires_at"]
    panel.review._renewed = float("-inf")  # a renewal is due
    panel.tick(pages=0)  # no page: the case is not held on for no one
    assert json.loads(lease.read_text())["expires_at"] == before
    panel.tick(pages=1)
    assert json.loads(lease.read_text())["expires_at"] > before
    agent.cleanup()


class ClickThenStop:
    """An agent: one positive click at the middle of the image, then stop."""

    def __init__(self):
        self.calls = 0

    def next_action(self, obs):
        self.calls += 1
        return AddPoint((500, 500)) if self.calls == 1 else StopAction()


def test_the_agents_turns_are_the_agents_and_paint_and_placed_prompts_are_human(out, scene):
    agent = AgentSegLogic(scene, engine_factory=lambda name, **kw: BoxEngine())
    logic = LabelingReviewLogic(scene, "alice", agent=agent)
    logic.open_folder(str(out))
    logic.open_case("c0")
    stroke = np.zeros((1, 48, 64), bool)
    stroke[0, 44:47, 0:5] = True
    paint(logic.segmentation, logic.segment_id, logic.volume, stroke)  # before the agent's session
    run = agent.start(logic.volume, logic.segmentation, "polyp", segment_name="polyp", axis="K", slice_index=0,
                      engine="fake", policy=ClickThenStop())
    agent.wait()
    run.prompts.write(Prompts(box=(20.0, 10.0, 40.0, 30.0)), run.geom)  # the person places a box
    agent.sync_prompts_from_markups()
    agent.wait()
    agent.run_agent(2)
    agent.wait()
    assert [r.record["source"] for r in run.records] == ["user", "agent"]
    rec = logic.save_edit()
    review = json.loads((out / "cases" / "c0" / "review.json").read_text())
    assert [(t["by"], t["action"], t["reviewer"]) for t in review["turns"] if t["mask"] == "final"] == [
        ("human", "segment editor", "alice"), ("human", "add_bbox", "alice"), ("agent", "add_point", "alice")]
    assert rec["provenance"] == {"agent": 1, "human": 4}  # + the batch's box and stop, from the prompts file
    assert np.array_equal(seg_kji(out / "cases" / "c0" / "final.seg.nrrd"),
                          segment_kji(logic.segmentation, logic.segment_id, logic.volume))

    agent.queued.append(({"name": "stalk"}, {"segmentation_node": logic.segmentation, "volume_node": logic.volume}))
    logic.next()  # the agent's session on the case goes with it, and the structures queued after it
    assert run.key not in agent.runs and run.prompts.roi.GetScene() is None and agent.queued == []
    agent.cleanup()


def test_on_a_volume_paint_on_another_slice_is_human_and_a_propagation_the_agents(out, scene):
    agent = AgentSegLogic(scene, engine_factory=lambda name, **kw: BoxEngine())
    logic = LabelingReviewLogic(scene, "alice", agent=agent)
    logic.open_folder(str(out))
    logic.open_case("vol")
    run = agent.start(logic.volume, logic.segmentation, "polyp", segment_name="polyp", axis="K", slice_index=3,
                      engine="fake", policy="scripted")
    agent.wait()
    stroke = np.zeros((6, 40, 50), bool)
    stroke[0, 1:4, 1:4] = True  # slice 0: not the session's slice
    paint(logic.segmentation, logic.segment_id, logic.volume, stroke)
    run.prompts.write(Prompts(box=(12.0, 12.0, 28.0, 24.0)), run.geom)
    agent.sync_prompts_from_markups()
    agent.wait()
    assert agent.propagate() is True
    agent.wait()
    assert run.propagations and run.propagations[-1].written
    logic.save_edit()
    review = json.loads((out / "cases" / "vol" / "review.json").read_text())
    assert [(t["by"], t["action"]) for t in review["turns"] if t["mask"] == "final"] == [
        ("human", "segment editor"), ("human", "add_bbox"), ("agent", "propagate")]
    final = seg_kji(out / "cases" / "vol" / "final.seg.nrrd")
    assert final[0, 1:4, 1:4].all() and final[3, 12:25, 12:29].all()
    agent.cleanup()


def test_a_needs_prompt_case_is_segmented_in_the_review_and_saved(out, scene):
    """Issue #24 finding 6: a case the batch could not start on ("needs prompt") could only be prompted back on the
    command line. It opens with an empty segment of its target; the reviewer's box runs the engine; Save edit writes
    final.seg.nrrd on the image's grid (read back here) and the case is "edited"; Accept before a mask is refused."""
    from MedAgentSegLib.labeling.manifest import new_record, write_manifest

    Image.fromarray(gray_image(seed=7)).save(out / "c3.png")
    records = read_manifest(out)
    records["c3"] = {**new_record("c3", str(out / "c3.png"), "polyp"), "status": "needs prompt",
                     "reason": "the locator could not find the polyp"}
    write_manifest(out, records)
    agent = AgentSegLogic(scene, engine_factory=lambda name, **kw: BoxEngine())
    logic = LabelingReviewLogic(scene, "alice", agent=agent)
    logic.open_folder(str(out))
    case = logic.open_case("c3")
    assert case.original is None and status(out)["c3"] == "needs prompt"
    assert logic.segmentation.GetSegmentation().GetSegment(logic.segment_id).GetName() == "polyp"
    assert not segment_kji(logic.segmentation, logic.segment_id, logic.volume).any()
    with pytest.raises(ReviewError, match="has no mask yet"):
        logic.accept()

    run = agent.start(logic.volume, logic.segmentation, "polyp", segment_name="polyp", axis="K", slice_index=0,
                      engine="fake", policy="scripted")
    agent.wait()
    run.prompts.write(Prompts(box=(20.0, 10.0, 40.0, 30.0)), run.geom)  # the person's box on the page
    agent.sync_prompts_from_markups()
    agent.wait()
    assert [r.record["action"]["name"] for r in run.records] == ["add_bbox"]
    drawn = segment_kji(logic.segmentation, logic.segment_id, logic.volume)
    assert drawn.sum() == 21 * 21
    rec = logic.save_edit("segmented from a box")
    assert rec["status"] == "edited" == status(out)["c3"] and rec["provenance"] == {"agent": 0, "human": 1}
    assert np.array_equal(seg_kji(out / "cases" / "c3" / "final.seg.nrrd"), drawn)
    logic.open_case("c0")
    logic.open_case("c3")  # opened again: its final mask
    assert np.array_equal(segment_kji(logic.segmentation, logic.segment_id, logic.volume), drawn)
    logic.accept("right")
    assert status(out)["c3"] == "accepted"
    agent.cleanup()


def test_the_agent_reads_a_colour_case_in_colour_as_the_batch_did(out, scene):
    """The review shows a colour frame as grey (one component), but the engine must see the colours `label` saw: on
    the grey luminance the locator missed polyps it had found in the batch."""
    from MedAgentSegLib.labeling.manifest import new_record, write_manifest

    rgb = np.random.default_rng(3).integers(0, 255, (48, 64, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(out / "colour.png")
    records = read_manifest(out)
    records["colour"] = {**new_record("colour", str(out / "colour.png"), "polyp"), "status": "needs prompt"}
    write_manifest(out, records)
    agent = AgentSegLogic(scene, engine_factory=lambda name, **kw: BoxEngine())
    logic = LabelingReviewLogic(scene, "alice", agent=agent)
    logic.open_folder(str(out))
    logic.open_case("colour")
    assert logic.volume.GetImageData().GetNumberOfScalarComponents() == 1  # the view is grey
    run = agent.start(logic.volume, logic.segmentation, "polyp", segment_name="polyp", axis="K", slice_index=0,
                      engine="fake", policy="scripted")
    agent.wait()
    assert np.array_equal(run.image_rgb, rgb) and np.array_equal(run.session.image, rgb)
    agent.cleanup()
