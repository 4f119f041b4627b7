"""3D propagation in the Slicer logic, on a real MRML scene (PyPI slicer-core) with a fake engine (fast).

The volume is a synthetic 40 x 40 x 22 ball (slices K=5..15) placed with an oblique, anisotropic IJKToRAS. The
person draws the box on slice K=10 (scripted policy), then asks for the whole volume. What is checked:
- propagate writes the ball's slices into the segment from the worker's result; another segment and the person's
  voxels on slices the propagation found nothing on are untouched; model work runs on the worker thread;
- Undo right after it restores every segment bit-exactly, and the review sequence goes with it;
- Stop mid-propagation keeps the slices done, writes nothing more, and the chat says it was stopped;
- propagation only adds to what the segment holds on a slice: the person's painting on the slices it reaches
  stays (Undo puts back exactly the painting);
- re-propagating from a slice the person corrected changes only the slices beyond it (the corrected slice from
  the slice view, or given), and there takes out only the earlier propagation's voxels: the person's painting
  beyond the corrected slice stays, also where the new propagation finds nothing;
- trajectory_dict / save_trajectory hold the propagation record (it replays bit for bit) and the review sequence
  has one item per slice;
- no mask yet, nothing found beyond the start, a PropagationError: each says so in the chat and writes nothing;
- the chat words for it ("whole volume", "propagate", "3d", "re-propagate").
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from mrml_scene import oblique

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed: pip install -e '.[test]'")
vtk = pytest.importorskip("vtk")

REPO = Path(__file__).resolve().parent.parent

from MedAgentSegModuleLib.agent_logic import AgentError, AgentSegLogic, chat_command  # noqa: E402
from MedAgentSegModuleLib.mrml_writer import ensure_scene_logics  # noqa: E402
from test_mrml_agent_flow import add_volume, segment_array, set_segment  # noqa: E402

from MedAgentSegLib.engines.base import Engine, Prediction, Prompts  # noqa: E402
from MedAgentSegLib.propagation import PROPAGATION_FORMAT, replay_propagation  # noqa: E402

K0 = 10  # the slice the person segments
BALL_SLICES = list(range(5, 16))  # one voxel on 4 and 16: below min_area, past the structure's ends


# -- helpers ---------------------------------------------------------------------------------------------------
class BrightInBox(Engine):
    """Fake engine: the bright pixels (> 128) inside the box; score 0.9 when it finds some, else 0.1.

    blind: finds nothing. block_at: that call waits for `release` after setting `reached`, so a test can press Stop
    in the middle of a propagation without relying on timing.
    """

    name, device = "bright-in-box", "cpu"

    def __init__(self):
        self.calls, self.threads, self.blind, self.block_at = 0, [], False, None
        self.reached, self.release = threading.Event(), threading.Event()

    def set_image(self, image):
        self.image = np.asarray(image)[..., 0]

    def predict(self, prompts, prev_logits=None):
        self.calls += 1
        self.threads.append(threading.get_ident())
        if self.calls == self.block_at:
            self.reached.set()
            self.release.wait(60)
        m = np.zeros(self.image.shape, bool)
        if prompts.box is not None and not self.blind:
            x1, y1, x2, y2 = (int(round(v)) for v in prompts.box)
            m[y1:y2 + 1, x1:x2 + 1] = self.image[y1:y2 + 1, x1:x2 + 1] > 128
        return Prediction(m, np.full((1, 256, 256), 1.0 if m.any() else -1.0, np.float32), 0.9 if m.any() else 0.1)


def ball_volume() -> tuple[np.ndarray, np.ndarray]:
    """(K, J, I) int16 volume (22, 40, 40) with a bright ball over slices 5..15, and the ball's mask."""
    k, j, i = np.mgrid[:22, :40, :40]
    ball = (k - 10) ** 2 / 36 + ((j - 20) ** 2 + (i - 18) ** 2) / 100 <= 1
    vol = np.full(ball.shape, 20, np.int16)
    vol[ball] = 200
    return vol, ball


def oblique_ijk_to_ras() -> np.ndarray:
    return oblique(30.0, 15.0, (0.7, 0.9, 3.0), (12.0, -40.5, 7.25))


def texts(ctx, role: str | None = None) -> list[str]:
    return [m.text for m in ctx["messages"] if role is None or m.role == role]


def all_segments(ctx) -> dict[str, np.ndarray]:
    seg = ctx["seg"]
    return {sid: segment_array(seg, sid, ctx["shape"]) for sid in seg.GetSegmentation().GetSegmentIDs()}


def assert_same_segments(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for sid in a:
        assert np.array_equal(a[sid], b[sid]), sid


def slices_with_voxels(mask_kji: np.ndarray) -> list[int]:
    return [int(k) for k in np.nonzero(mask_kji.any(axis=(1, 2)))[0]]


# -- fixtures --------------------------------------------------------------------------------------------------
@pytest.fixture
def ctx():
    vol_kji, ball = ball_volume()
    scene = slicer.vtkMRMLScene()
    ensure_scene_logics(scene)
    m = oblique_ijk_to_ras()
    vol = add_volume(scene, vol_kji, "ball", m)
    seg = slicer.vtkMRMLSegmentationNode()
    seg.SetName("Segmentation")
    scene.AddNode(seg)
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(vol)
    other = np.zeros_like(ball)  # another structure overlapping the ball's left part on slices 7..13
    other[7:14, 12:28, 6:16] = True
    other_id = seg.GetSegmentation().AddEmptySegment("other", "other structure")
    set_segment(seg, other_id, other, m)
    engine = BrightInBox()
    messages = []
    logic = AgentSegLogic(scene, engine_factory=lambda name: engine, on_message=messages.append)
    yield {"scene": scene, "vol": vol, "seg": seg, "ball": ball, "other": other_id, "shape": vol_kji.shape,
           "logic": logic, "engine": engine, "messages": messages, "m": m, "volume": vol_kji}
    engine.release.set()
    logic.cleanup()


def start_with_box(ctx, box: bool = True):
    """A scripted session on slice K=10; the person's box around the ball there (the engine runs it)."""
    logic = ctx["logic"]
    run = logic.start(ctx["vol"], ctx["seg"], target="ball", axis="K", slice_index=K0, engine="fake",
                      policy="scripted")
    logic.wait()
    assert run.session is not None, texts(ctx)
    if box:
        ys, xs = np.nonzero(ctx["ball"][K0])
        run.prompts.write(Prompts(box=(xs.min() - 2.0, ys.min() - 2.0, xs.max() + 2.0, ys.max() + 2.0)), run.geom)
        logic.sync_prompts_from_markups()
        logic.wait()
        assert np.array_equal(run.session.mask, ctx["ball"][K0]) and len(run.records) == 1, texts(ctx)
    return run


def propagate(ctx, run):
    before = all_segments(ctx)
    assert ctx["logic"].propagate() is True
    ctx["logic"].wait()
    assert not texts(ctx, "error"), texts(ctx, "error")
    return before


# -- tests -----------------------------------------------------------------------------------------------------
def test_propagate_writes_the_ball_into_the_segment_and_leaves_the_rest_alone(ctx):
    logic, ball = ctx["logic"], ctx["ball"]
    run = start_with_box(ctx)
    painted = np.zeros_like(ball)  # the person's own voxels on slice 19, where the propagation finds nothing
    painted[19, 2:5, 30:34] = True
    set_segment(ctx["seg"], run.segment_id, segment_array(ctx["seg"], run.segment_id, ctx["shape"]) | painted,
                ctx["m"])
    before = propagate(ctx, run)

    target = segment_array(ctx["seg"], run.segment_id, ctx["shape"])
    assert slices_with_voxels(target) == BALL_SLICES + [19]
    assert np.array_equal(target[5:16], ball[5:16])  # through the oblique IJK->RAS, voxel for voxel
    assert np.array_equal(target[19], painted[19])
    assert np.array_equal(segment_array(ctx["seg"], ctx["other"], ctx["shape"]), before[ctx["other"]])
    worker = logic.executor.thread_ident
    assert ctx["engine"].threads and set(ctx["engine"].threads) == {worker} != threading.get_ident()

    (step,) = run.propagations
    assert step.kind == "propagate" and step.result.slices == BALL_SLICES
    assert step.written == [k for k in BALL_SLICES if k != K0]  # the start slice is the session's own
    said = texts(ctx, "agent")[-1]
    assert "Propagated 'ball' from slice K=10 to 10 more slice(s) (K=5..15)" in said and "Undo" in said, said
    tag = vtk.reference("")
    assert run.segment().GetTag("MedAgentSeg.Propagation", tag) and json.loads(str(tag))["slices"] == BALL_SLICES


def test_undo_right_after_propagate_restores_every_segment_bit_exactly(ctx):
    logic = ctx["logic"]
    run = start_with_box(ctx)
    editor = slicer.vtkMRMLSegmentEditorNode()  # overwrite other segments: the propagation changes "other" too
    ctx["scene"].AddNode(editor)
    editor.SetOverwriteMode(editor.OverwriteAllSegments)
    before = propagate(ctx, run)
    after = all_segments(ctx)
    assert not np.array_equal(after[ctx["other"]], before[ctx["other"]])
    assert run.review.count == len(BALL_SLICES)

    assert logic.undo() is True
    assert_same_segments(all_segments(ctx), before)
    assert not run.propagations and run.review.count == 0
    assert len(run.records) == 1 and run.recorder.count == 1  # the 2D turn is still there
    assert "the propagation was reverted" in texts(ctx, "info")[-1]
    tag = vtk.reference("")
    assert not run.segment().GetTag("MedAgentSeg.Propagation", tag)

    # again, reverted with Reject this time; the next Undo takes back the 2D turn
    propagate(ctx, run)
    assert logic.reject() is True
    assert_same_segments(all_segments(ctx), before)
    assert logic.undo() is True and not run.records
    assert not segment_array(ctx["seg"], run.segment_id, ctx["shape"]).any()


def test_propagation_is_an_entry_of_the_sessions_timeline_and_undo_follows_it(ctx):
    """One history (issue #25): box, propagate, a click; Undo takes back the click, then the propagation, each to the
    segments as they were; the saved trajectory holds the propagation in the session's own turns."""
    logic = ctx["logic"]
    run = start_with_box(ctx)
    before_propagation = propagate(ctx, run)
    after_propagation = all_segments(ctx)
    assert [t.action["name"] for t in run.session.turns] == ["add_bbox", "propagate"]
    assert run.propagations[-1].entry is run.session.turns[-1]
    box = run.session.prompts.box
    ys, xs = np.nonzero(ctx["ball"][K0])
    run.prompts.write(Prompts(box=box, points=[(float(xs.mean()), float(ys.mean()))], labels=[1]), run.geom)
    logic.sync_prompts_from_markups()
    logic.wait()
    assert [t.action["name"] for t in run.session.turns] == ["add_bbox", "propagate", "add_point"]

    assert logic.undo() is True  # the click
    assert_same_segments(all_segments(ctx), after_propagation)
    assert [t.action["name"] for t in run.session.turns] == ["add_bbox", "propagate"] and run.propagations
    assert logic.undo() is True  # then the propagation
    assert_same_segments(all_segments(ctx), before_propagation)
    assert [t.action["name"] for t in run.session.turns] == ["add_bbox"] and not run.propagations


def test_reject_after_a_propagation_and_a_stop_takes_back_the_propagation_not_the_turn_under_it(ctx):
    logic = ctx["logic"]
    run = start_with_box(ctx)
    before_propagation = propagate(ctx, run)
    run.session.stop()  # the agent stopped after the propagation
    assert logic.reject() is True
    assert_same_segments(all_segments(ctx), before_propagation)
    assert [t.action["name"] for t in run.session.turns] == ["add_bbox", "stop_action"] and len(run.records) == 1
    assert run.session.status == "stopped"  # the stop is not the propagation's: it stays


def test_a_click_after_a_stop_and_a_propagation_resumes_and_undo_follows_the_order(ctx):
    """The agent stopped, the person propagated, then clicks: the click resumes the session (the stop goes, the
    propagation stays); Undo takes back the click, then the propagation."""
    logic = ctx["logic"]
    run = start_with_box(ctx)
    run.session.stop()
    before_propagation = propagate(ctx, run)
    after_propagation = all_segments(ctx)
    assert [t.action["name"] for t in run.session.turns] == ["add_bbox", "propagate", "stop_action"]
    ys, xs = np.nonzero(ctx["ball"][K0])
    run.prompts.write(Prompts(box=run.session.prompts.box, points=[(float(xs.mean()), float(ys.mean()))],
                              labels=[1]), run.geom)
    logic.sync_prompts_from_markups()
    logic.wait()
    assert not texts(ctx, "error"), texts(ctx, "error")
    assert [t.action["name"] for t in run.session.turns] == ["add_bbox", "propagate", "add_point"]
    assert logic.undo() is True
    assert_same_segments(all_segments(ctx), after_propagation)
    assert logic.undo() is True
    assert_same_segments(all_segments(ctx), before_propagation)
    assert [t.action["name"] for t in run.session.turns] == ["add_bbox"] and not run.propagations


def test_stop_mid_propagation_keeps_the_slices_done_and_says_stopped(ctx):
    logic, engine = ctx["logic"], ctx["engine"]
    run = start_with_box(ctx)
    engine.calls, engine.block_at = 0, 3  # the third slice's prediction (K=13) waits
    assert logic.propagate() is True
    assert engine.reached.wait(60)
    logic.poll()  # slices 11 and 12 are done
    assert "propagating: 3 slices done" in texts(ctx, "info"), texts(ctx)
    assert logic.busy
    with pytest.raises(AgentError, match="propagation is still running"):
        logic.run_agent()
    logic.stop()
    engine.release.set()
    logic.wait()

    assert not texts(ctx, "error"), texts(ctx, "error")
    (step,) = run.propagations
    assert step.result.stopped == "cancelled" and step.result.slices == [10, 11, 12, 13]
    assert engine.calls == 3  # nothing ran after the stop
    target = segment_array(ctx["seg"], run.segment_id, ctx["shape"])
    assert slices_with_voxels(target) == [10, 11, 12, 13]
    assert np.array_equal(target[10:14], ctx["ball"][10:14])
    said = texts(ctx, "agent")[-1]
    assert "was stopped after 3 slice(s) (K=11..13)" in said and "kept" in said, said
    assert run.session.status == "open"  # Stop ended the propagation, not the 2D session


def test_repropagate_from_a_corrected_slice_changes_only_the_slices_beyond_it(ctx):
    logic, ball = ctx["logic"], ctx["ball"]
    run = start_with_box(ctx)
    propagate(ctx, run)
    first = segment_array(ctx["seg"], run.segment_id, ctx["shape"])
    corrected = first.copy()  # the person trims slice 13 to the ball's left half in the Segment Editor
    corrected[13][:, 18:] = False
    set_segment(ctx["seg"], run.segment_id, corrected, ctx["m"])
    other_before = segment_array(ctx["seg"], ctx["other"], ctx["shape"])

    red = slicer.vtkMRMLSliceNode()  # the Red view shows slice K=13
    red.SetLayoutName("Red")
    ctx["scene"].AddNode(red)
    red.RotateToVolumePlane(ctx["vol"])
    red.JumpSliceByOffsetting(*run.geom.pixel_to_ras(20.0, 20.0, offset=3.0))
    assert logic.repropagate() is True
    logic.wait()
    assert not texts(ctx, "error"), texts(ctx, "error")

    again = segment_array(ctx["seg"], run.segment_id, ctx["shape"])
    assert np.array_equal(again[:14], corrected[:14])  # the corrected slice and the start's side: as they were
    assert again[14].any() and not again[14][:, 20:].any() and first[14][:, 20:].any()
    assert np.array_equal(again[14:] & ~ball[14:], np.zeros_like(ball[14:]))
    assert np.array_equal(segment_array(ctx["seg"], ctx["other"], ctx["shape"]), other_before)
    step = run.propagations[-1]
    assert step.kind == "repropagate" and step.result.restarted_at == 13
    assert step.written == [14, 15]
    assert "from your corrected slice K=13" in texts(ctx, "agent")[-1]

    # one undo step: back to the person's correction, then to before the first propagation
    assert logic.undo() is True
    assert np.array_equal(segment_array(ctx["seg"], run.segment_id, ctx["shape"]), corrected)
    # given as an argument (no view needed): the same result
    assert logic.repropagate(slice_index=13) is True
    logic.wait()
    assert np.array_equal(segment_array(ctx["seg"], run.segment_id, ctx["shape"]), again)


def paint(ctx, run, blob: np.ndarray) -> np.ndarray:
    """The person paints `blob` into the run's segment (Segment Editor): returns the segment afterwards."""
    painted = segment_array(ctx["seg"], run.segment_id, ctx["shape"]) | blob
    set_segment(ctx["seg"], run.segment_id, painted, ctx["m"])
    return painted


def test_propagate_adds_to_what_the_person_painted_on_the_slices_it_reaches(ctx):
    logic, ball = ctx["logic"], ctx["ball"]
    run = start_with_box(ctx)
    blob = np.zeros_like(ball)  # on slices 12 and 14: partly inside the ball, partly outside it
    blob[12, 16:24, 24:34] = True
    blob[14, 2:6, 14:22] = True
    assert (blob & ball).any() and (blob & ~ball).any()
    painted = paint(ctx, run, blob)
    before = propagate(ctx, run)

    target = segment_array(ctx["seg"], run.segment_id, ctx["shape"])
    made = np.zeros_like(ball)  # the ball's slices the propagation makes (not the one-voxel tips on 4 and 16)
    made[5:16] = ball[5:16]
    assert np.array_equal(target, painted | made)  # the ball was added; every painted voxel is still there
    assert np.array_equal(target[[12, 14]] & ~ball[[12, 14]], blob[[12, 14]] & ~ball[[12, 14]])
    assert np.array_equal(segment_array(ctx["seg"], ctx["other"], ctx["shape"]), before[ctx["other"]])
    assert run.propagations[0].written == [k for k in BALL_SLICES if k != K0]
    assert run.propagations[0].masked_voxels == 0

    # Propagate again: it replaces only what the first one wrote, so the same result; Undo takes back one each
    after = all_segments(ctx)
    propagate(ctx, run)
    assert len(run.propagations) == 2
    assert_same_segments(all_segments(ctx), after)
    assert logic.undo() is True
    assert_same_segments(all_segments(ctx), after)
    assert logic.undo() is True  # one step back to the painting, bit for bit
    assert_same_segments(all_segments(ctx), before)
    assert np.array_equal(segment_array(ctx["seg"], run.segment_id, ctx["shape"]), painted)


def test_repropagate_replaces_only_the_old_propagation_and_keeps_the_persons_painting(ctx):
    logic, ball = ctx["logic"], ctx["ball"]
    run = start_with_box(ctx)
    propagate(ctx, run)
    first = segment_array(ctx["seg"], run.segment_id, ctx["shape"])
    corrected = first.copy()  # the person trims slice 13 to the ball's left half...
    corrected[13][:, 18:] = False
    set_segment(ctx["seg"], run.segment_id, corrected, ctx["m"])
    blob = np.zeros_like(ball)  # ...and paints outside the ball on slices 14 and 15, beyond the corrected slice
    blob[14, 2:6, 26:34] = True
    blob[15, 34:38, 4:9] = True
    assert not (blob & first).any()
    painted = paint(ctx, run, blob)
    before = all_segments(ctx)

    assert logic.repropagate(slice_index=13) is True
    logic.wait()
    assert not texts(ctx, "error"), texts(ctx, "error")
    new = run.propagations[-1].result.mask
    again = segment_array(ctx["seg"], run.segment_id, ctx["shape"])
    assert np.array_equal(again[:14], painted[:14])  # the corrected slice and the start's side: as they were
    assert np.array_equal(again[14:], new[14:] | blob[14:])  # beyond it: the new propagation and the painting
    replaced = first[14:] & ~new[14:]  # the old propagation's voxels there that the new one does not make
    assert replaced.any() and not (again[14:] & replaced).any()
    assert run.propagations[-1].written == [14, 15]

    assert logic.undo() is True  # back to the correction and the painting, bit for bit
    assert_same_segments(all_segments(ctx), before)

    # the engine now finds nothing beyond slice 13: the old propagation's voxels go, the painting stays
    ctx["engine"].blind = True
    assert logic.repropagate(slice_index=13) is True
    logic.wait()
    assert not texts(ctx, "error"), texts(ctx, "error")
    cleared = segment_array(ctx["seg"], run.segment_id, ctx["shape"])
    assert np.array_equal(cleared[:14], painted[:14]) and np.array_equal(cleared[14:], blob[14:])
    assert "removed from 2 slice(s)" in texts(ctx, "agent")[-1], texts(ctx, "agent")[-1]
    assert logic.undo() is True
    assert_same_segments(all_segments(ctx), before)


def test_trajectory_and_review_sequence_hold_the_propagation(ctx, tmp_path):
    logic = ctx["logic"]
    run = start_with_box(ctx)
    propagate(ctx, run)

    (entry,) = logic.trajectory_dict()["runs"]
    (record,) = entry["propagations"]
    assert record["format"] == PROPAGATION_FORMAT and record["start"] == K0 and record["axis"] == "axial"
    assert sorted(s["index"] for s in record["slices"]) == BALL_SLICES
    assert record["slicer"]["ijk_axis"] == "K" and record["slicer"]["written_slices"] == run.propagations[0].written
    assert entry["propagation_browser"] == run.review.browser.GetID()
    saved = json.loads(logic.save_trajectory(tmp_path / "trajectory.json").read_text())
    assert saved["runs"][0]["propagations"][0]["slices"] == record["slices"]
    replayed = replay_propagation(saved["runs"][0]["propagations"][0], BrightInBox(), ctx["volume"],
                                  ctx["ball"][K0], None, modality=record["slicer"]["modality"])
    assert np.array_equal(replayed.mask, segment_array(ctx["seg"], run.segment_id, ctx["shape"]))

    # the review sequence: one item per slice, each the slice's mask (and its box) on the volume grid
    review = run.review
    assert review.index_values() == [str(k) for k in BALL_SLICES]
    assert review.browser.GetNumberOfSynchronizedSequenceNodes() >= 1
    for n, k in enumerate(BALL_SLICES):
        item = review.sequences["mask"].GetNthDataNode(n)
        mask = segment_array(item, run.segment_id, ctx["shape"])
        assert slices_with_voxels(mask) == [k] and np.array_equal(mask[k], ctx["ball"][k])
        assert json.loads(item.GetAttribute("MedAgentSeg.Slice"))["index"] == k
        assert review.sequences["box"].GetNthDataNode(n).GetNumberOfControlPoints() == 1
    assert run.recorder.count == 1  # the turn sequence is the 2D session's alone


def test_propagate_without_a_mask_says_what_to_do_and_writes_nothing(ctx):
    logic = ctx["logic"]
    with pytest.raises(AgentError, match="No segmentation session yet"):
        logic.propagate()
    run = start_with_box(ctx, box=False)
    n_nodes = ctx["scene"].GetNumberOfNodes()
    assert logic.propagate() is False
    (said,) = texts(ctx, "error")
    assert said.startswith("Nothing to propagate yet") and "box" in said and "Propagate" in said
    assert not logic.busy and not run.propagations and run.review is None
    assert ctx["scene"].GetNumberOfNodes() == n_nodes
    assert not segment_array(ctx["seg"], run.segment_id, ctx["shape"]).any()
    assert logic.repropagate(slice_index=K0) is False
    assert "press Propagate first" in texts(ctx, "error")[-1]


def test_nothing_found_beyond_the_start_slice_says_so(ctx):
    logic = ctx["logic"]
    run = start_with_box(ctx)
    before = all_segments(ctx)
    ctx["engine"].blind = True
    assert logic.propagate() is True
    logic.wait()
    assert not texts(ctx, "error"), texts(ctx, "error")
    assert "found nothing beyond slice K=10" in texts(ctx, "agent")[-1]
    assert_same_segments(all_segments(ctx), before)
    assert not run.propagations and run.review is None
    assert logic.undo() is True and not run.records  # Undo takes back the 2D turn, nothing else


def test_a_propagation_error_goes_into_the_chat(ctx):
    logic = ctx["logic"]
    run = start_with_box(ctx)
    propagate(ctx, run)
    emptied = segment_array(ctx["seg"], run.segment_id, ctx["shape"])
    emptied[12] = False  # the person erased slice 12, then asks to re-propagate from it
    set_segment(ctx["seg"], run.segment_id, emptied, ctx["m"])
    assert logic.repropagate(slice_index=12) is True
    logic.wait()
    (said,) = texts(ctx, "error")
    assert said.startswith("The re-propagation cannot run: the corrected mask on slice 12 is empty"), said
    assert np.array_equal(segment_array(ctx["seg"], run.segment_id, ctx["shape"]), emptied)
    assert len(run.propagations) == 1
    with pytest.raises(AgentError, match="outside the volume"):
        logic.repropagate(slice_index=40)


def test_chat_words_for_propagation():
    for text in ("whole volume", "Propagate", "do it in 3D", "propagate the ball", "all slices please"):
        assert chat_command(text) == "propagate", text
    for text in ("re-propagate", "repropagate from here", "propagate again", "propagate from this slice"):
        assert chat_command(text) == "repropagate", text
    for text in ("segment the liver", "segment the liver in 3d", "undo", "stop propagating", "accept"):
        assert chat_command(text) is None, text
