"""The MedAgentSeg Slicer logic against a real MRML scene (PyPI slicer-core), real CT, real LiteMedSAM.

The volume is LiTS case 117 as bundled (Resources/Samples: 24 slices of 128 x 128, so these run on a fresh
clone) placed with an oblique, anisotropic IJKToRAS, so every pixel <-> IJK <-> RAS mapping is exercised off-axis.
What is checked:
- a full agent run writes one ROI box, the clicks (positive / negative nodes), the target segment's slice
  (equal to the session mask, nothing on other slices) and one sequence item per turn;
- markups positions in RAS map back, through the volume node's own RASToIJK, to the prompt pixels;
- Reject and Undo restore every segment and every markups node bit-exactly, and drop the sequence item;
- other segments of the same segmentation node are untouched; Segment Editor overwrite and masking apply;
- moving / deleting / adding a click re-runs the engine from that prompt state; a second run resumes;
- bad input (no volume, RGB volume, locked segment, engine failing mid-turn) gives a message and writes nothing;
- trajectory.json is written next to the scene when it is saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mrml_scene import oblique

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed: pip install -e '.[test]'")
vtk = pytest.importorskip("vtk")
from vtk.util import numpy_support  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

from MedAgentSegModuleLib.agent_logic import AgentError, AgentSegLogic  # noqa: E402
from MedAgentSegModuleLib.geometry import SliceGeometry  # noqa: E402
from MedAgentSegModuleLib.mrml_writer import (  # noqa: E402
    MRMLInputError,
    ensure_scene_logics,
    markups_positions,
    vtk_matrix,
)

SAMPLE = REPO / "Resources" / "Samples"
MAX_TURNS = 3


# -- helpers -------------------------------------------------------------------------------------------------
def oblique_ijk_to_ras() -> np.ndarray:
    """Rotation about two axes, anisotropic spacing (0.8, 0.7, 2.5) mm, an offset origin."""
    return oblique(25.0, -12.0, (0.8, 0.7, 2.5), (-41.5, 23.25, 110.0))


def add_volume(scene, array_kji: np.ndarray, name: str, ijk_to_ras: np.ndarray, components: int = 1):
    vol = slicer.vtkMRMLScalarVolumeNode()
    vol.SetName(name)
    scene.AddNode(vol)
    img = vtk.vtkImageData()
    k, j, i = array_kji.shape[:3]
    img.SetDimensions(i, j, k)
    flat = array_kji.reshape(-1, components) if components > 1 else array_kji.ravel()
    img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(flat), deep=True))
    vol.SetAndObserveImageData(img)
    vol.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras))
    return vol


def segment_array(seg_node, segment_id: str, shape_kji: tuple[int, int, int]) -> np.ndarray:
    """(K, J, I) bool of a segment on the volume grid, read independently of the module's own reader."""
    img = slicer.vtkOrientedImageData()
    seg_node.GetBinaryLabelmapRepresentation(segment_id, img)
    out = np.zeros(shape_kji, dtype=bool)
    e = img.GetExtent()
    if e[0] > e[1] or img.GetPointData().GetScalars() is None:
        return out
    a = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(
        e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    out[e[4]:e[5] + 1, e[2]:e[3] + 1, e[0]:e[1] + 1] = a > 0
    return out


def set_segment(seg_node, segment_id: str, mask_kji: np.ndarray, ijk_to_ras: np.ndarray) -> None:
    img = slicer.vtkOrientedImageData()
    k, j, i = mask_kji.shape
    img.SetDimensions(i, j, k)
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    img.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(mask_kji.astype(np.uint8).ravel(), deep=True))
    img.SetImageToWorldMatrix(vtk_matrix(ijk_to_ras))
    ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        img, seg_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    assert ok


def scene_state(ctx, run) -> dict:
    """Every segment's full array plus every prompt node's control points and the ROI geometry."""
    seg = ctx["seg"]
    state = {sid: segment_array(seg, sid, ctx["shape"]) for sid in seg.GetSegmentation().GetSegmentIDs()}
    roi = run.prompts.roi
    state["roi"] = (roi.GetNumberOfControlPoints(), tuple(roi.GetCenter()), tuple(roi.GetSize()))
    state["pos"] = markups_positions(run.prompts.positive)
    state["neg"] = markups_positions(run.prompts.negative)
    return state


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].shape == b[key].shape and np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lits():
    sitk = pytest.importorskip("SimpleITK")
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / "lits117_liver_ct.nrrd"))).astype(np.float32)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / "lits117_liver_ct_labels.nrrd"))).astype(np.uint8)
    liver = labels == 1
    k = int(np.argmax(liver.sum(axis=(1, 2))))
    return image, liver, k


@pytest.fixture
def ctx(lits, lite_engine):
    image, liver, k = lits
    scene = slicer.vtkMRMLScene()
    ensure_scene_logics(scene)  # what the Slicer application does at start-up: segmentation converters
    m = oblique_ijk_to_ras()
    vol = add_volume(scene, image, "LiTS117 oblique", m)
    seg = slicer.vtkMRMLSegmentationNode()
    seg.SetName("Segmentation")
    scene.AddNode(seg)
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(vol)
    ref_id = seg.GetSegmentation().AddEmptySegment("reference", "liver reference")
    set_segment(seg, ref_id, liver, m)
    # an unrelated segment overlapping the liver on the working slice (left half of its bounding box)
    other = np.zeros_like(liver)
    ys, xs = np.nonzero(liver[k])
    other[k - 1:k + 2, ys.min():ys.max() + 1, xs.min():(xs.min() + xs.max()) // 2] = True
    other_id = seg.GetSegmentation().AddEmptySegment("other", "other structure")
    set_segment(seg, other_id, other, m)
    messages = []
    logic = AgentSegLogic(scene, engine_factory=lambda name: lite_engine, on_message=messages.append)
    yield {"scene": scene, "vol": vol, "seg": seg, "ref": ref_id, "other": other_id, "k": k, "liver": liver,
           "shape": image.shape, "logic": logic, "messages": messages, "m": m}
    logic.cleanup()


def start(ctx, **kw):
    logic = ctx["logic"]
    args = dict(target="liver", axis="K", slice_index=ctx["k"], engine="litemedsam", policy="oracle",
                reference_segment_id=ctx["ref"], max_turns=MAX_TURNS)
    args.update(kw)
    run = logic.start(ctx["vol"], ctx["seg"], **args)
    logic.wait()
    assert run.session is not None, [m.text for m in ctx["messages"]]
    return run


def errors(ctx) -> list[str]:
    return [m.text for m in ctx["messages"] if m.role == "error"]


# -- tests ---------------------------------------------------------------------------------------------------
def test_slice_geometry_matches_the_volume_node_for_every_axis():
    """pixel -> IJK -> RAS agrees with the volume node's own matrices, off-axis and anisotropic."""
    scene = slicer.vtkMRMLScene()
    m = oblique_ijk_to_ras()
    vol = add_volume(scene, np.zeros((6, 7, 9), np.int16), "v", m)
    ras_to_ijk = vtk.vtkMatrix4x4()
    vol.GetRASToIJKMatrix(ras_to_ijk)
    for axis, index, expect in (("K", 4, lambda x, y: (x, y, 4)), ("J", 3, lambda x, y: (x, 3, y)),
                                ("I", 2, lambda x, y: (2, x, y))):
        geom = SliceGeometry(axis, index, (9, 7, 6), m)
        for x, y in ((0.0, 0.0), (1.5, 2.25), (geom.width - 1, geom.height - 1)):
            ras = geom.pixel_to_ras(x, y)
            ijk = ras_to_ijk.MultiplyPoint([*ras, 1.0])[:3]
            assert np.allclose(ijk, expect(x, y), atol=1e-9)
            px, py, off = geom.ras_to_pixel(ras)
            assert np.allclose((px, py, off), (x, y, 0.0), atol=1e-9)
        box = (1.0, 2.0, geom.width - 2.0, geom.height - 1.5)
        assert np.allclose(geom.roi_to_box(*geom.box_to_roi(box)), box, atol=1e-9)
        arr = np.arange(6 * 7 * 9).reshape(6, 7, 9)
        assert geom.extract(arr).shape == (geom.height, geom.width)
        assert arr[tuple(int(v) for v in expect(3, 1))[::-1]] == geom.extract(arr)[1, 3]


def test_full_agent_run_writes_roi_clicks_segment_and_sequence(ctx):
    logic, seg, k = ctx["logic"], ctx["seg"], ctx["k"]
    before_ref = segment_array(seg, ctx["ref"], ctx["shape"])
    before_other = segment_array(seg, ctx["other"], ctx["shape"])
    run = start(ctx)
    logic.run_agent()
    logic.wait()
    assert not errors(ctx), errors(ctx)
    session = run.session
    n = session.mask_turns
    assert 2 <= n <= MAX_TURNS and len(run.records) == n
    assert session.turns[0].action["name"] == "add_bbox"

    # the segment holds the session mask on slice k and nothing elsewhere
    target = segment_array(seg, run.segment_id, ctx["shape"])
    assert np.array_equal(target[k], session.mask)
    assert target.sum() == session.mask.sum() > 0
    dice = 2 * (target[k] & ctx["liver"][k]).sum() / (target[k].sum() + ctx["liver"][k].sum())
    assert dice > 0.7, f"the written mask does not look like the liver (Dice {dice:.2f})"

    # other segments of the same node are untouched (default: overwrite none), even where they overlap
    assert np.array_equal(segment_array(seg, ctx["ref"], ctx["shape"]), before_ref)
    assert np.array_equal(segment_array(seg, ctx["other"], ctx["shape"]), before_other)

    # markups: one box, clicks in the right node, each mapping back through the volume's RASToIJK
    ras_to_ijk = vtk.vtkMatrix4x4()
    ctx["vol"].GetRASToIJKMatrix(ras_to_ijk)
    prompts = session.prompts
    roi = run.prompts.roi
    assert roi.GetNumberOfControlPoints() == 1
    centre_ijk = ras_to_ijk.MultiplyPoint([*roi.GetCenter(), 1.0])[:3]
    x1, y1, x2, y2 = prompts.box
    assert np.allclose(centre_ijk, ((x1 + x2) / 2, (y1 + y2) / 2, k), atol=1e-6)
    assert np.allclose(roi.GetSize(), ((x2 - x1) * 0.8, (y2 - y1) * 0.7, 2.5), atol=1e-6)
    pos, neg = run.prompts.positive, run.prompts.negative
    assert pos.GetNumberOfControlPoints() == sum(prompts.labels)
    assert neg.GetNumberOfControlPoints() == len(prompts.labels) - sum(prompts.labels)
    for node, label in ((pos, 1), (neg, 0)):
        expected = [p for p, lab in zip(prompts.points, prompts.labels) if lab == label]
        for i, (x, y) in enumerate(expected):
            ijk = ras_to_ijk.MultiplyPoint([*node.GetNthControlPointPosition(i), 1.0])[:3]
            assert np.allclose(ijk, (x, y, k), atol=1e-6)
            assert node.GetNthControlPointLabel(i).startswith("+" if label else "-")
    assert pos.GetDisplayNode().GetSelectedColor() != neg.GetDisplayNode().GetSelectedColor()

    # sequences: one item per turn, synchronised, the last mask item equals the live segment
    seqs = run.recorder.sequences
    assert all(s.GetNumberOfDataNodes() == n for s in seqs.values())
    assert run.recorder.index_values() == [str(i) for i in range(1, n + 1)]
    browser = run.recorder.browser
    assert browser.GetNumberOfSynchronizedSequenceNodes() >= 3
    last = seqs["mask"].GetNthDataNode(n - 1)
    assert np.array_equal(segment_array(last, run.segment_id, ctx["shape"]), target)
    first_box = seqs["box"].GetNthDataNode(0)
    assert first_box.GetNumberOfControlPoints() == 1
    assert seqs["positive"].GetNthDataNode(0).GetNumberOfControlPoints() == 0  # turn 1 was the box only

    # the turn record as a segment tag
    tag = vtk.reference("")
    assert run.segment().GetTag("MedAgentSeg.LastTurn", tag)
    rec = json.loads(str(tag))
    assert rec["turn"] == n and rec["action"] == session.turns[-1].action
    assert rec["score"] == pytest.approx(session.turns[-1].score, abs=1e-4) and "engine_s" in rec["timings"]
    agent_lines = [m for m in ctx["messages"] if m.role == "agent" and m.turn]
    assert len(agent_lines) == n and f"predicted IoU {session.turns[-1].score:.2f}" in agent_lines[-1].text


def test_reject_and_undo_restore_segment_and_markups_bit_exactly_then_a_second_run_resumes(ctx):
    logic = ctx["logic"]
    run = start(ctx)
    states = [scene_state(ctx, run)]
    for _ in range(3):
        logic.step()
        logic.wait()
        states.append(scene_state(ctx, run))
    assert len(run.records) == 3 and not errors(ctx)
    assert not np.array_equal(states[2][run.segment_id], states[3][run.segment_id])

    assert logic.reject()
    assert_same_state(scene_state(ctx, run), states[2])
    assert run.recorder.count == 2 and len(run.session.turns) == 2
    assert logic.undo()
    assert_same_state(scene_state(ctx, run), states[1])
    assert run.recorder.count == 1

    # a second run on the same target and slice resumes the same session and numbering
    again = logic.start(ctx["vol"], ctx["seg"], target="liver", axis="K", slice_index=ctx["k"], policy="oracle",
                        reference_segment_id=ctx["ref"], max_turns=MAX_TURNS)
    assert again is run
    logic.step()
    logic.wait()
    assert len(run.records) == 2 and run.recorder.index_values() == ["1", "2"]
    assert np.array_equal(segment_array(ctx["seg"], run.segment_id, ctx["shape"])[ctx["k"]], run.session.mask)
    # undo back to nothing: the segment is empty again and the box is gone
    logic.undo()
    logic.undo()
    assert_same_state(scene_state(ctx, run), states[0])
    assert logic.undo() is False


def test_moving_deleting_and_adding_clicks_reruns_the_engine(ctx):
    logic = ctx["logic"]
    run = start(ctx)
    logic.run_agent(2)
    logic.wait()
    k = ctx["k"]
    pos = run.prompts.positive
    neg = run.prompts.negative
    node = pos if pos.GetNumberOfControlPoints() else neg
    assert node.GetNumberOfControlPoints() == 1
    n0 = len(run.records)

    # move the click two pixels along pixel x, as a drag would, and release it
    x, y = run.session.prompts.points[0]
    node.SetNthControlPointPosition(0, *run.geom.pixel_to_ras(x + 2.0, y))
    node.InvokeEvent(node.PointEndInteractionEvent)
    logic.wait()
    assert len(run.records) == n0 + 1
    last = run.session.turns[-1]
    assert last.source == "user" and last.action["name"] == "edit_prompts"
    assert np.allclose(last.prompts.points[0], (x + 2.0, y), atol=1e-6)
    assert np.array_equal(segment_array(ctx["seg"], run.segment_id, ctx["shape"])[k], last.mask)

    # add a positive click at the liver's interior and let the engine run from there
    ys, xs = np.nonzero(ctx["liver"][k])
    cx, cy = float(np.median(xs)), float(np.median(ys))
    logic.add_click(run.geom.pixel_to_ras(cx, cy), positive=True)
    logic.wait()
    last = run.session.turns[-1]
    assert last.action["name"] == "add_point" and last.source == "user"
    assert np.allclose(last.prompts.points[-1], (cx, cy), atol=1e-6)
    assert pos.GetNumberOfControlPoints() == sum(last.prompts.labels)

    # delete the first click: the engine re-runs without it
    n_points = len(last.prompts.points)
    node.RemoveNthControlPoint(0)
    logic.wait()
    last = run.session.turns[-1]
    assert last.action["name"] == "edit_prompts" and len(last.prompts.points) == n_points - 1
    assert run.recorder.count == len(run.records) == n0 + 3

    # and the agent continues from the user's prompt state
    logic.step()
    logic.wait()
    assert run.session.turns[-1].source == "agent" and len(run.records) == n0 + 4
    assert not errors(ctx), errors(ctx)


def test_segment_editor_overwrite_and_masking_are_obeyed_and_reverted(ctx):
    logic, seg, k = ctx["logic"], ctx["seg"], ctx["k"]
    editor = slicer.vtkMRMLSegmentEditorNode()  # the user's Segment Editor settings
    ctx["scene"].AddNode(editor)
    editor.SetOverwriteMode(editor.OverwriteAllSegments)
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
    other_before = segment_array(seg, ctx["other"], ctx["shape"])
    run = start(ctx)
    state0 = scene_state(ctx, run)
    logic.step()
    logic.wait()
    target = segment_array(seg, run.segment_id, ctx["shape"])
    other = segment_array(seg, ctx["other"], ctx["shape"])
    assert (other_before[k] & target[k]).any()
    assert not (other[k] & target[k]).any(), "overwrite-all must remove the target's voxels from other segments"
    assert np.array_equal(other[k - 1], other_before[k - 1])  # other slices untouched
    logic.reject()
    assert_same_state(scene_state(ctx, run), state0)

    # masking: only outside all other segments
    editor.SetOverwriteMode(editor.OverwriteNone)
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
    logic.step()
    logic.wait()
    target = segment_array(seg, run.segment_id, ctx["shape"])
    assert np.array_equal(segment_array(seg, ctx["other"], ctx["shape"]), other_before)
    blocked = other_before[k] | segment_array(seg, ctx["ref"], ctx["shape"])[k]  # "all segments" but the target
    assert np.array_equal(target[k], run.session.mask & ~blocked)
    assert run.records[-1].record["masked_voxels"] == int((run.session.mask & blocked).sum()) > 0


def test_accept_freezes_the_segment(ctx):
    logic = ctx["logic"]
    run = start(ctx)
    logic.step()
    logic.wait()
    before = scene_state(ctx, run)
    logic.accept()
    tag = vtk.reference("")
    assert run.segment().GetTag("MedAgentSeg.Locked", tag) and str(tag) == "true"
    assert run.prompts.positive.GetLocked() and run.prompts.roi.GetLocked()
    with pytest.raises(AgentError, match="accepted"):
        logic.run_agent()
    with pytest.raises(AgentError, match="frozen"):
        logic.reject()
    with pytest.raises(AgentError, match="locked"):
        logic.start(ctx["vol"], ctx["seg"], target="liver", slice_index=ctx["k"], policy="oracle",
                    reference_segment_id=ctx["ref"])
    assert_same_state(scene_state(ctx, run), before)


def test_bad_input_says_what_to_do_and_writes_nothing(ctx, lite_engine):
    logic, scene = ctx["logic"], ctx["scene"]
    with pytest.raises(MRMLInputError, match="No input volume selected"):
        logic.start(None, ctx["seg"], target="liver")
    rgb = add_volume(scene, np.zeros((4, 16, 16, 3), np.uint8), "colour", np.eye(4), components=3)
    with pytest.raises(MRMLInputError, match="RGB colour volume.*Vector to Scalar"):
        logic.start(rgb, ctx["seg"], target="liver")
    with pytest.raises(AgentError, match="No target given"):
        logic.start(ctx["vol"], ctx["seg"], target="  ")
    with pytest.raises(AgentError, match="reference segment"):
        logic.start(ctx["vol"], ctx["seg"], target="liver", slice_index=ctx["k"], policy="oracle")

    # the engine fails on the second prediction: an error message, nothing half-written
    class FailingSecond:
        def __init__(self, inner):
            self.inner, self.calls, self.name, self.device = inner, 0, "failing", "cpu"

        def set_image(self, image):
            self.inner.set_image(image)

        def predict(self, prompts, prev_logits=None):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("CUDA out of memory (simulated)")
            return self.inner.predict(prompts, prev_logits)

    failing = FailingSecond(lite_engine)
    logic.engine_factory = lambda name: failing
    run = start(ctx, engine="failing")
    logic.run_agent(3)
    logic.wait()
    assert len(run.records) == 1 and run.recorder.count == 1 and len(run.session.turns) == 1
    assert any("The turn failed: CUDA out of memory" in e for e in errors(ctx))
    assert np.array_equal(segment_array(ctx["seg"], run.segment_id, ctx["shape"])[ctx["k"]], run.session.mask)


def test_a_click_the_model_ignored_is_reported_in_the_chat_and_the_turn_tag(ctx, lite_engine):
    import dataclasses

    class IgnoresClicks:  # the real engine, with every corrective turn marked as a painted disk
        def __init__(self, inner):
            self.inner, self.name, self.device = inner, "ignores-clicks", "cpu"

        def set_image(self, image):
            self.inner.set_image(image)

        def predict(self, prompts, prev_logits=None):
            pred = self.inner.predict(prompts, prev_logits)
            return dataclasses.replace(pred, update="disk") if prev_logits is not None else pred

    ctx["logic"].engine_factory = lambda name: IgnoresClicks(lite_engine)
    run = start(ctx, engine="ignores-clicks")
    ctx["logic"].run_agent(2)  # the box, then one click
    ctx["logic"].wait()
    assert not errors(ctx), errors(ctx)
    assert len(run.records) == 2
    told = [m.text for m in ctx["messages"] if "the model ignored this click" in m.text]
    assert len(told) == 1 and told[0].startswith("Turn 2"), told
    assert run.records[-1].record["update"] == "disk" and run.records[0].record["update"] == "model"


def test_trajectory_json_is_written_next_to_the_saved_scene(ctx, tmp_path):
    logic, scene = ctx["logic"], ctx["scene"]
    run = start(ctx)
    logic.run_agent(2)
    logic.wait()
    scene.SetRootDirectory(str(tmp_path))
    scene.SetURL(str(tmp_path / "scene.mrml"))
    scene.InvokeEvent(scene.StartSaveEvent)
    data = json.loads((tmp_path / "trajectory.json").read_text())
    assert data["format"] == "medagentseg-slicer-trajectory/1"
    (entry,) = data["runs"]
    assert entry["segment_id"] == run.segment_id and entry["slice"] == {**entry["slice"], "axis": "K",
                                                                          "index": ctx["k"]}
    assert "turn_records" not in entry  # one history: the session's turns, written once
    assert [t["action"] for t in entry["session"]["turns"]] == [t.action for t in run.session.turns]


def _place_box(run, box) -> None:
    """The person draws the box: the ROI node is set as Slicer's ROI widget leaves it, then its drag ends."""
    from MedAgentSegModuleLib.mrml_writer import set_roi_box

    set_roi_box(run.prompts.roi, box, run.geom)
    run.prompts.roi.InvokeEvent(run.prompts.roi.PointEndInteractionEvent)


def _markups_prompts(run):
    return run.prompts.read(run.geom)


def test_undo_and_reject_of_the_persons_clicks_leave_no_stale_marker_for_the_next_turn(ctx):
    """Issue #24 finding 1: box -> negative click -> positive click -> Undo -> Reject -> one more click. The clicks
    the person placed were kept in the markups after Undo / Reject (the copy taken when their turn was written already
    held them) and the next click re-ran the engine from them all ('re-ran from your edited prompts (2 clicks, a
    box)'), losing the mask."""
    logic, k = ctx["logic"], ctx["k"]
    run = start(ctx, policy="scripted", reference_segment_id=None)
    ys, xs = np.nonzero(ctx["liver"][k])
    box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
    _place_box(run, box)
    logic.wait()
    assert [t.action["name"] for t in run.session.turns] == ["add_bbox"]
    box_state = scene_state(ctx, run)
    box_mask = run.session.mask.copy()

    outside = (box[0] + 2.0, box[1] + 2.0)  # a corner of the box: background
    inside = (float(np.median(xs)), float(np.median(ys)))
    logic.add_click(run.geom.pixel_to_ras(*outside), positive=False)
    logic.wait()
    neg_state = scene_state(ctx, run)
    logic.add_click(run.geom.pixel_to_ras(*inside), positive=True)
    logic.wait()
    assert [t.action["name"] for t in run.session.turns] == ["add_bbox", "add_point", "add_point"]

    assert logic.undo()
    assert_same_state(scene_state(ctx, run), neg_state)
    shown = _markups_prompts(run)
    assert len(shown.points) == 1 and np.allclose(shown.points, run.session.prompts.points, atol=1e-6)
    assert logic.reject()
    assert_same_state(scene_state(ctx, run), box_state)
    assert len(markups_positions(run.prompts.positive)) == 0 and len(markups_positions(run.prompts.negative)) == 0

    logic.add_click(run.geom.pixel_to_ras(*inside), positive=True)
    logic.wait()
    last = run.session.turns[-1]
    assert last.action["name"] == "add_point", last.action
    assert len(last.prompts.points) == 1 and np.allclose(last.prompts.points[0], inside, atol=1e-6)
    assert last.used_prev_logits  # refines the box's mask, not a re-run from scratch
    assert len(run.records) == 2 and not errors(ctx), errors(ctx)
    # the click refined the box turn's mask: most of it is still there
    assert (last.mask & box_mask).sum() >= 0.8 * box_mask.sum()


def test_a_hand_edit_is_a_turn_that_undo_takes_back_exactly_and_the_next_click_refines(ctx):
    """Paint / erase in an editor writes the segment itself; record_hand_edit makes it one turn of the session (a
    person's, replayable from its mask), Undo puts every segment on the slice back, and a click continues from it."""
    logic, seg, k, m = ctx["logic"], ctx["seg"], ctx["k"], ctx["m"]
    run = start(ctx, policy="scripted", reference_segment_id=None)
    ys, xs = np.nonzero(ctx["liver"][k])
    _place_box(run, (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())))
    logic.wait()
    before = scene_state(ctx, run)
    assert logic.record_hand_edit("paint") is False  # nothing drawn yet: no turn

    painted = segment_array(seg, run.segment_id, ctx["shape"])
    painted[k, :10, :10] = True  # a stroke in a corner, as the Paint effect leaves it
    other = segment_array(seg, ctx["other"], ctx["shape"])
    other_after = other.copy()
    other_after[k, :10, :10] = False  # the editor's overwrite took it from the other segment
    set_segment(seg, run.segment_id, painted, m)
    set_segment(seg, ctx["other"], other_after, m)
    assert logic.record_hand_edit("paint") is True
    last = run.session.turns[-1]
    assert last.action == {"name": "hand_edit", "arguments": {"tool": "paint"}} and last.source == "user"
    assert np.array_equal(last.mask, painted[k]) and run.recorder.count == len(run.records) == 2
    assert any(t.startswith("Turn 2 (You): painted") for t in (mm.text for mm in ctx["messages"]))

    assert logic.undo()
    assert_same_state(scene_state(ctx, run), before)
    assert [t.action["name"] for t in run.session.turns] == ["add_bbox"]

    # paint again, then a click refines the painted mask (fed back as the previous logits)
    set_segment(seg, run.segment_id, painted, m)
    assert logic.record_hand_edit("paint")
    logic.add_click(run.geom.pixel_to_ras(float(np.median(xs)), float(np.median(ys))), positive=True)
    logic.wait()
    assert [t.action["name"] for t in run.session.turns] == ["add_bbox", "hand_edit", "add_point"]
    assert run.session.turns[-1].used_prev_logits and not errors(ctx), errors(ctx)


def test_a_stroke_on_another_slice_is_an_entry_of_the_history_that_undo_takes_back(ctx):
    """With a hand tool on, paint on a slice that is not the session's (the person scrolled) becomes a slice-edit
    entry; Undo puts every segment on that slice back, the session's slice and turns untouched (issue #24)."""
    logic, seg, k, m = ctx["logic"], ctx["seg"], ctx["k"], ctx["m"]
    run = start(ctx, policy="scripted", reference_segment_id=None)
    ys, xs = np.nonzero(ctx["liver"][k])
    _place_box(run, (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())))
    logic.wait()
    logic.watch_hand_edits()
    own_before = segment_array(seg, run.segment_id, ctx["shape"])
    other_before = segment_array(seg, ctx["other"], ctx["shape"])
    elsewhere = k - 2
    painted, other_after = own_before.copy(), other_before.copy()
    painted[elsewhere, 20:30, 20:30] = True
    other_after[elsewhere, 20:30, 20:30] = False  # the editor's overwrite took it from the other segment
    set_segment(seg, run.segment_id, painted, m)
    set_segment(seg, ctx["other"], other_after, m)

    assert logic.record_hand_edit("paint") is True
    entry = run.session.turns[-1]
    assert entry.action == {"name": "slice_edit", "arguments": {"tool": "paint", "axis": "K", "slices": [elsewhere]}}
    assert [t.action["name"] for t in run.session.turns] == ["add_bbox", "slice_edit"] and len(run.records) == 1
    assert any(f"You painted on slice K={elsewhere}" in mm.text for mm in ctx["messages"])
    assert logic.record_hand_edit("paint") is False  # the same stroke is not recorded twice

    assert logic.undo()
    assert np.array_equal(segment_array(seg, run.segment_id, ctx["shape"]), own_before)
    assert np.array_equal(segment_array(seg, ctx["other"], ctx["shape"]), other_before)
    assert [t.action["name"] for t in run.session.turns] == ["add_bbox"] and not run.slice_edits
    logic.watch_hand_edits(False)
    assert run.volume_seen is None


def test_a_saved_session_with_a_hand_edit_replays_bit_for_bit(ctx, lite_engine):
    from MedAgentSegLib.session import replay

    logic, seg, k, m = ctx["logic"], ctx["seg"], ctx["k"], ctx["m"]
    run = start(ctx, policy="scripted", reference_segment_id=None)
    ys, xs = np.nonzero(ctx["liver"][k])
    _place_box(run, (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())))
    logic.wait()
    erased = segment_array(seg, run.segment_id, ctx["shape"])
    erased[k, int(np.median(ys)):, :] = False
    set_segment(seg, run.segment_id, erased, m)
    assert logic.record_hand_edit("erase")
    logic.add_click(run.geom.pixel_to_ras(float(np.median(xs)), float(ys.max() - 3)), positive=True)
    logic.wait()
    data = run.session.to_dict()
    again = replay(data, lite_engine, run.image_rgb)
    assert [t.action["name"] for t in again.turns] == ["add_bbox", "hand_edit", "add_point"]
    for a, b in zip(again.turns, run.session.turns):
        assert np.array_equal(a.mask, b.mask)


def test_a_request_on_a_segment_that_holds_a_mask_goes_on_from_it(ctx):
    """Issue #24 finding 6: a request on a reviewed case (or any segment already drawn) started a new, empty
    session (the locator's box replaced the pre-label). The mask already there is the session's first turn, on the
    slice where it is largest; the agent refines from it, and undoing everything gives the pre-label back."""
    from scipy import ndimage

    logic, seg, m = ctx["logic"], ctx["seg"], ctx["m"]
    prelabel = ndimage.binary_erosion(ctx["liver"], iterations=2)
    k = int(np.argmax(prelabel.sum(axis=(1, 2))))
    liver_id = seg.GetSegmentation().AddEmptySegment("liver", "liver")
    set_segment(seg, liver_id, prelabel, m)
    before = {sid: segment_array(seg, sid, ctx["shape"]) for sid in seg.GetSegmentation().GetSegmentIDs()}
    logic.request("segment the liver", ctx["vol"], seg)
    logic.wait()
    run = logic.active
    assert not errors(ctx), errors(ctx)
    assert run.segment_id == liver_id and run.geom.index == k
    first = run.session.turns[0]
    assert first.action["name"] == "hand_edit" and first.action["arguments"]["tool"] == "existing"
    assert np.array_equal(first.mask, prelabel[k]) and first.prompts.box is not None
    assert len(run.records) >= 2, "the agent goes on from the pre-label"
    while logic.undo():
        pass
    after = {sid: segment_array(seg, sid, ctx["shape"]) for sid in seg.GetSegmentation().GetSegmentIDs()}
    assert all(np.array_equal(before[sid], after[sid]) for sid in before)
