"""The environment: whole prompt state, undo, accept, edits, save/load and bit-exact replay (real LiteMedSAM)."""

import json

import numpy as np
import pytest

from MedAgentSegLib.actions import AddBBox, AddPoint, StopAction
from MedAgentSegLib.engines import Prompts
from MedAgentSegLib.metrics import dice
from MedAgentSegLib.observation import UndoTurn
from MedAgentSegLib.oracle import box_from_mask
from MedAgentSegLib.policies import OraclePolicy, ScriptedPolicy
from MedAgentSegLib.session import Session, SessionError, load_trajectory, replay


@pytest.fixture()
def session(lite_engine, kvasir_case):
    image, _ = kvasir_case
    return Session(lite_engine, image, "polyp", max_turns=4)


def test_box_then_clicks_keeps_every_prompt(session, kvasir_case):
    _, gt = kvasir_case
    box = box_from_mask(gt)
    t1 = session.add_box(*box)
    assert dice(t1.mask, gt) > 0.85
    session.add_click(box[0] + 5, box[1] + 5, positive=False)
    t3 = session.add_click((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, positive=True)
    assert t3.prompts.box == pytest.approx(box)
    assert t3.prompts.labels == [0, 1] and len(t3.prompts.points) == 2
    assert t3.used_prev_logits and not t1.used_prev_logits
    assert t3.prompts_grid["box"][2] == round(box[2] * 999 / (session.width - 1))
    assert json.loads(json.dumps(t3.to_dict()))["action"]["name"] == "add_point"


def test_undo_restores_previous_state_exactly(session, kvasir_case):
    _, gt = kvasir_case
    t1 = session.add_box(*box_from_mask(gt))
    before = session.mask
    session.add_click(10, 10, positive=True)
    assert not np.array_equal(session.mask, before)
    undone = session.undo()
    assert undone.action["name"] == "add_point"
    assert np.array_equal(session.mask, before) and session.prompts.points == []
    # the next turn after undo continues from turn 1's logits, as if the click never happened
    again = session.add_click(10, 10, positive=True)
    assert again.used_prev_logits and again.index == t1.index + 1
    session.undo(), session.undo()
    assert session.undo() is None and not session.mask.any()


def test_accept_freezes_and_stop_closes(session, kvasir_case):
    _, gt = kvasir_case
    with pytest.raises(SessionError, match="nothing to accept"):
        session.accept()
    session.add_box(*box_from_mask(gt))
    session.stop()
    with pytest.raises(SessionError, match="stopped"):
        session.add_click(5, 5)
    session.undo()  # undoing the stop reopens the session
    session.add_click(5, 5, positive=False)
    session.accept()
    with pytest.raises(SessionError, match="accepted"):
        session.add_click(6, 6)
    with pytest.raises(SessionError, match="accepted"):
        session.undo()


def test_prompts_outside_the_image_are_refused(session):
    with pytest.raises(ValueError, match="outside"):
        session.add_box(-5, 0, 50, 50)
    with pytest.raises(ValueError, match="outside"):
        session.add_click(session.width + 3, 4)
    assert session.turns == []


def test_edit_prompts_reruns_from_the_edited_state(session, kvasir_case):
    _, gt = kvasir_case
    box = box_from_mask(gt)
    session.add_box(*box)
    session.add_click(box[0] + 4, box[1] + 4, positive=False)
    edited = session.prompts
    edited.points, edited.labels = [], []  # the user deletes the click
    t = session.set_prompts(edited)
    assert t.action["name"] == "edit_prompts" and not t.used_prev_logits
    assert np.array_equal(t.mask, session.turns[0].mask)  # same prompts, no logits -> same mask as the box turn
    with pytest.raises(SessionError, match="empty"):
        session.set_prompts(Prompts())


def test_run_stops_at_the_turn_limit(session, kvasir_case):
    _, gt = kvasir_case
    turns = session.run(OraclePolicy(gt, jitter=0.1, seed=3))
    assert session.mask_turns == 4 and turns[-1].action["name"] == "stop_action"
    assert session.status == "stopped"
    s2 = Session(session.engine, session.image, "polyp")
    s2.run(ScriptedPolicy([AddBBox((100, 100, 800, 800)), AddPoint((500, 500), "positive"), StopAction()]))
    assert [t.action["name"] for t in s2.turns] == ["add_bbox", "add_point", "stop_action"]


def test_saved_trajectory_replays_bit_exactly(session, kvasir_case, tmp_path, lite_engine):
    image, gt = kvasir_case
    session.run(OraclePolicy(gt, jitter=0.1, seed=1), max_turns=2)
    session.undo()  # the stop
    session.add_click(20, 30, positive=False)
    session.set_prompts(session.prompts)
    path = session.save(tmp_path / "trajectory.json")
    data = load_trajectory(path)
    assert [t["source"] for t in data["turns"]] == ["agent", "agent", "user", "user"]
    replayed = replay(path, lite_engine, image)
    for a, b in zip(session.turns, replayed.turns, strict=True):
        assert np.array_equal(a.mask, b.mask)
    with pytest.raises(ValueError, match="image differs"):
        replay(path, lite_engine, image[::-1].copy())
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_trajectory(bad)


def test_two_sessions_can_share_one_engine(lite_engine, kvasir_case):
    image, gt = kvasir_case
    a = Session(lite_engine, image, "polyp")
    b = Session(lite_engine, image[:, ::-1].copy(), "polyp")
    box = box_from_mask(gt)
    ta = a.add_box(*box)
    b.add_box(*box)
    a.undo()
    assert np.array_equal(a.add_box(*box).mask, ta.mask)  # a's image, not b's, was used


def test_box_after_clicks_rereads_the_object_without_old_logits(session, kvasir_case):
    _, gt = kvasir_case
    box = box_from_mask(gt)
    session.add_click((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, positive=True)
    t2 = session.add_box(*box)
    assert not t2.used_prev_logits, "a box must not be treated as a refinement around the last click"
    assert t2.prompts.points and t2.prompts.box == pytest.approx(box)
    assert dice(t2.mask, gt) > 0.85


# -- a specialist's mask as the first turn (issue #16) ----------------------------------------------------------
SPECIALIST = {"model": "TinySpecialist", "licence": "CC0-1.0", "runner": "nnunetv2", "path": "/models/tiny"}


def test_a_specialist_mask_is_a_turn_that_the_engine_refines_and_replays_bit_exactly(session, kvasir_case,
                                                                                       tmp_path, lite_engine):
    from scipy import ndimage

    _, gt = kvasir_case
    made = ndimage.binary_erosion(gt, iterations=6)  # what a specialist might give: the polyp, a little short
    t1 = session.add_mask(made, SPECIALIST)
    assert t1.action == {"name": "specialist", "arguments": SPECIALIST} and t1.source == "agent"
    assert np.array_equal(t1.mask, made) and t1.score is None and t1.update == "specialist"
    ys, xs = np.nonzero(made)
    x1, y1, x2, y2 = t1.prompts.box  # the box the agent refines from: around the mask
    assert x1 <= xs.min() and y1 <= ys.min() and x2 >= xs.max() and y2 >= ys.max() and not t1.prompts.points
    # the next click refines this mask (it is fed back as the previous logits), not a fresh answer to the box
    r, c = np.argwhere(made)[len(ys) // 2]
    t2 = session.add_click(float(c), float(r), positive=True)
    assert t2.used_prev_logits and t2.prompts.box == t1.prompts.box
    assert dice(t2.mask, made) > 0.8, dice(t2.mask, made)
    saved = session.save(tmp_path / "trajectory.json")
    data = load_trajectory(saved)
    assert data["turns"][0]["action"]["arguments"]["licence"] == "CC0-1.0"
    again = replay(data, lite_engine, session.image)  # raises if any mask differs
    assert [t.action["name"] for t in again.turns] == ["specialist", "add_point"]
    assert np.array_equal(again.turns[1].mask, t2.mask)
    assert session.undo() is t2 and session.undo() is t1 and not session.mask.any()


def test_a_specialist_turn_is_refused_without_a_usable_mask_or_a_model_name(session, kvasir_case):
    _, gt = kvasir_case
    with pytest.raises(SessionError, match="empty"):
        session.add_mask(np.zeros_like(gt), SPECIALIST)
    with pytest.raises(SessionError, match="pixels but the image is"):
        session.add_mask(gt[:-1], SPECIALIST)
    with pytest.raises(SessionError, match="name its model"):
        session.add_mask(gt, {"licence": "CC0-1.0"})
    assert session.turns == []


def test_mask_logits_are_the_mask_in_the_engines_frame():
    import torch
    import torch.nn.functional as F

    from MedAgentSegLib.engines.base import mask_logits

    mask = np.zeros((90, 140), bool)
    mask[20:70, 30:100] = True
    logits = mask_logits(mask)
    assert logits.shape == (1, 256, 256) and logits.dtype == np.float32
    new_h = int(90 * 256 / 140 + 0.5)
    assert (logits[0, new_h:] < 0).all()  # the padding is background
    back = F.interpolate(torch.from_numpy(logits)[None, :, :new_h], size=(90, 140), mode="bilinear",
                         align_corners=False)[0, 0].numpy() > 0  # as LiteMedSAM upsamples its logits
    assert dice(back, mask) > 0.97


def test_a_propagation_is_an_entry_of_the_timeline_that_undo_and_replay_follow(session, kvasir_case, tmp_path,
                                                                             lite_engine):
    """One history (issue #25): the propagation is a turn of the session that leaves the slice's mask, prompts and
    logits as they were, is not shown to a policy, and replays; after a stop it goes under the stop (a stopped
    session ends with its stop, which Run and a click resume from); taking it off keeps the stop."""
    image, gt = kvasir_case
    box_turn = session.add_box(*box_from_mask(gt))
    session.stop()
    entry = session.add_propagation({"kind": "propagate", "axis": "axial", "slices": [3, 4, 5]})
    assert entry.action == {"name": "propagate", "arguments": {"kind": "propagate", "axis": "axial",
                                                               "slices": [3, 4, 5]}}
    assert np.array_equal(entry.mask, box_turn.mask) and entry.prompts.box == box_turn.prompts.box
    assert entry.logits is box_turn.logits and not entry.produces_mask and session.mask_turns == 1
    assert [a["name"] for a in session.observe().history] == ["add_bbox", "stop_action"]
    assert [t.action["name"] for t in session.turns] == ["add_bbox", "propagate", "stop_action"]
    assert [t.index for t in session.turns] == [0, 1, 2] and session.status == "stopped"
    assert session.turns[-1].score == box_turn.score  # the stop keeps the slice's score, not the entry's None

    session.save(tmp_path / "t.json")
    again = replay(load_trajectory(tmp_path / "t.json"), lite_engine, image)
    assert [t.action["name"] for t in again.turns] == ["add_bbox", "propagate", "stop_action"]
    assert again.turns[1].action == entry.action and again.status == "stopped"

    session.remove_entry(entry)
    assert [t.action["name"] for t in session.turns] == ["add_bbox", "stop_action"] and session.status == "stopped"
    assert [t.index for t in session.turns] == [0, 1]
    session.undo()  # the stop: open again
    later = session.add_propagation({"kind": "propagate"})
    assert session.act(UndoTurn()).action["name"] == "stop_action"  # the agent's turn is under the propagation
    assert session.reverted == [] and session.turns[1] is later
    with pytest.raises(SessionError, match="only the last propagation"):
        session.remove_entry(box_turn)
    session.accept()
    with pytest.raises(SessionError, match="accepted"):
        session.add_propagation({"kind": "propagate"})
