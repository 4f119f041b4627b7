"""GT-free agents: what a policy can see, taking back a turn, the heuristic's rules, the expert, the reward."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from MedAgentSegLib.actions import AddBBox, AddPoint, StopAction
from MedAgentSegLib.agent.expert import ExpertConfig, error_clicks, expert_trajectory
from MedAgentSegLib.agent.heuristic import HeuristicPolicy
from MedAgentSegLib.engines.base import Engine, Prediction, Prompts
from MedAgentSegLib.observation import Decision, Observation, UndoTurn
from MedAgentSegLib.session import Session, SessionError, replay
from MedAgentSegLib.training.policy import reward


class BoxEngine(Engine):
    """A fake engine: the mask is the box (shrunk by `shrink` px) plus disks at positive clicks minus disks at
    negative ones; score = `scores[turn]` when given. candidates(): the box, the box grown by 6 px, and grown by 8."""

    name = "box-fake"

    def __init__(self, shrink: int = 0, scores: list[float] | None = None, radius: int = 4):
        self.shrink, self.scores, self.radius, self.calls = shrink, scores, radius, 0

    def set_image(self, image):
        self.hw = image.shape[:2]

    def _mask(self, prompts: Prompts, grow: int = 0) -> np.ndarray:
        h, w = self.hw
        m = np.zeros((h, w), bool)
        if prompts.box is not None:
            x1, y1, x2, y2 = (int(round(v)) for v in prompts.box)
            s = self.shrink - grow
            m[max(0, y1 + s):y2 - s + 1, max(0, x1 + s):x2 - s + 1] = True
        yy, xx = np.mgrid[:h, :w]
        for (x, y), lab in zip(prompts.points, prompts.labels):
            m[(yy - y) ** 2 + (xx - x) ** 2 <= self.radius ** 2] = bool(lab)
        return m

    def predict(self, prompts, prev_logits=None):
        mask = self._mask(prompts)
        score = self.scores[min(self.calls, len(self.scores) - 1)] if self.scores else 0.8
        self.calls += 1
        return Prediction(mask, np.where(mask.any(), 1.0, -1.0) * np.ones((1, 256, 256), np.float32), score)

    def candidates(self, prompts):
        return np.stack([self._mask(prompts), self._mask(prompts, 6), self._mask(prompts, 8)]), np.ones(3)


IMAGE = np.zeros((64, 64, 3), np.uint8)


class Spy:
    def __init__(self, actions):
        self.actions, self.seen = list(actions), []

    def next_action(self, obs):
        self.seen.append(obs)
        return self.actions.pop(0) if self.actions else StopAction()


def _arrays(obj, depth=0):
    """Every numpy array reachable from obj's public fields (dataclasses, tuples, dicts)."""
    if isinstance(obj, np.ndarray):
        yield obj
    elif dataclasses.is_dataclass(obj) and depth < 4:
        for f in dataclasses.fields(obj):
            yield from _arrays(getattr(obj, f.name), depth + 1)
    elif isinstance(obj, (list, tuple)) and depth < 4:
        for v in obj:
            yield from _arrays(v, depth + 1)
    elif isinstance(obj, dict) and depth < 4:
        for v in obj.values():
            yield from _arrays(v, depth + 1)


def test_policy_cannot_read_a_reference_the_session_was_built_with():
    gt = np.zeros((64, 64), bool)
    gt[5:17, 40:61] = True  # a shape no prompt here makes
    session = Session(BoxEngine(), IMAGE, "liver", metadata={"reference": gt, "gt": gt})
    spy = Spy([AddBBox((100, 100, 600, 600)), AddPoint((700, 700), "positive")])
    session.run(spy)
    assert len(spy.seen) == 3
    for obs in spy.seen:
        assert isinstance(obs, Observation)
        assert not hasattr(obs, "metadata") and not hasattr(obs, "session")
        assert all(not (a.shape == gt.shape and np.array_equal(a, gt)) for a in _arrays(obs))
        for name in ("set_image", "predict", "_engine", "engine", "__dict__"):
            assert not hasattr(obs.engine, name), name  # the engine view offers features and candidates only
        assert obs.engine.candidates(obs.prompts) is None or len(obs.engine.candidates(obs.prompts)) == 2
        with pytest.raises(dataclasses.FrozenInstanceError):
            obs.mask = np.ones_like(obs.mask)  # a frozen record
        if obs.masks:
            with pytest.raises(ValueError):
                obs.masks[-1][0, 0] = True  # read-only views of the session's masks


def test_undo_turn_takes_back_only_the_agents_own_turn_and_replays_exactly():
    engine = BoxEngine()
    session = Session(engine, IMAGE, "liver")
    session.add_box(10, 10, 40, 40)
    before = session.mask
    spy = Spy([AddPoint((800, 800), "positive"), UndoTurn()])
    session.run(spy)
    assert session.status == "stopped"
    assert [t.action["name"] for t in session.turns] == ["add_bbox", "stop_action"]
    assert np.array_equal(session.mask, before)
    assert session.reverted[0]["action"]["name"] == "add_point"
    data = session.to_dict()
    assert data["reverted"][0]["action"]["arguments"]["point_2d"] == [800, 800]
    again = replay(data, BoxEngine(), IMAGE)
    assert np.array_equal(again.mask, before)
    user = Session(engine, IMAGE, "liver")
    user.add_box(10, 10, 40, 40)
    with pytest.raises(SessionError, match="own last turn"):
        user.act(UndoTurn())


def test_agent_turn_records_reason_confidence_and_policy_time():
    class Talky(Spy):
        last_decision = Decision("a stale reason from an earlier turn", 0.1)

        def next_action(self, obs):
            self.last_decision = Decision("positive click where the mask stops short", 0.81)
            return super().next_action(obs)

    session = Session(BoxEngine(), IMAGE, "liver")
    session.add_box(10, 10, 40, 40)
    turn = session.agent_turn(Talky([AddPoint((500, 500), "positive")]))
    assert turn.action["reason"] == "positive click where the mask stops short"
    assert turn.action["confidence"] == pytest.approx(0.81)
    assert turn.timings["policy_s"] >= 0.0
    assert session.to_dict()["turns"][1]["action"]["reason"].startswith("positive click")


def test_heuristic_asks_for_a_box_first():
    session = Session(BoxEngine(), IMAGE, "liver")
    policy = HeuristicPolicy()
    session.run(policy)
    assert [t.action["name"] for t in session.turns] == ["stop_action"]
    assert "draw a box" in session.turns[0].action["reason"]


def test_heuristic_reboxes_a_box_much_larger_than_its_mask():
    session = Session(BoxEngine(shrink=12), IMAGE, "liver")
    session.add_box(2, 2, 61, 61)  # mask = rows/cols 14..49: far smaller than the box
    action = HeuristicPolicy().next_action(session.observe())
    assert isinstance(action, AddBBox)
    x1, y1, x2, y2 = action.bbox_2d
    assert 150 < x1 < 230 and 770 < x2 < 850 and 150 < y1 < 230


def test_heuristic_clicks_where_candidates_disagree_and_takes_back_a_worse_turn():
    engine = BoxEngine(scores=[0.95, 0.80, 0.70])  # box, first click (judged by nothing), second click
    session = Session(engine, IMAGE, "liver")
    session.add_box(20, 20, 40, 40)
    policy = HeuristicPolicy(rebox_below=0.0)
    action = policy.next_action(session.observe())
    assert isinstance(action, AddPoint) and action.positive  # the grown candidates add tissue outside the mask
    x, y = action.point_2d[0] * 63 / 999, action.point_2d[1] * 63 / 999
    assert not session.mask[int(round(y)), int(round(x))]
    session.agent_turn(policy)  # 0.80 after the box's 0.95: another head, not a reason to take it back
    assert session.turns[-1].action["name"] == "add_point"
    session.agent_turn(policy)  # the second click gets 0.70 < 0.80 - drop
    turn = session.agent_turn(policy)
    assert turn.action["name"] == "stop_action" and "took back" in turn.action["reason"]
    assert len(session.reverted) == 1 and session.mask_turns == 2


def test_expert_keeps_only_steps_that_gain_and_records_its_parameters():
    gt = np.zeros((64, 64), bool)
    gt[20:45, 20:45] = True
    session = Session(BoxEngine(shrink=0, radius=5), IMAGE, "liver", max_turns=5)
    cfg = ExpertConfig(click_start_p=0.0, max_jitter=0.3, tau=0.01)
    record, states = expert_trajectory(session, gt, cfg, np.random.default_rng(3))
    assert record["start"] == "box" and record["config"]["tau"] == 0.01
    ious = record["ious"]
    assert all(b - a >= 0.01 for a, b in zip(ious, ious[1:]))  # every kept step gained at least tau
    assert states[-1].action == "stop" and all(s.action in ("click", "rebox") for s in states[:-1])
    assert len(states) == len(ious)
    # only kept turns stay in the session (the tried ones were undone)
    assert session.mask_turns == len(ious)


def test_expert_drops_a_trajectory_that_does_not_improve():
    gt = np.zeros((64, 64), bool)
    gt[20:45, 20:45] = True
    class NoGain(BoxEngine):  # clicks change nothing: no step can gain tau

        def predict(self, prompts, prev_logits=None):
            return super().predict(Prompts(prompts.box), prev_logits)

    session = Session(NoGain(shrink=6), IMAGE, "liver")
    cfg = ExpertConfig(click_start_p=0.0, max_jitter=0.0)
    record, states = expert_trajectory(session, gt, cfg, np.random.default_rng(0))
    assert not record["kept"] and states == []


def test_error_clicks_are_deepest_first_with_the_right_sign():
    gt = np.zeros((40, 40), bool)
    gt[5:35, 5:35] = True
    pred = gt.copy()
    pred[5:35, 5:12] = False  # a wide miss (positive)
    pred[0:3, 0:3] = True  # a small leak (negative)
    clicks = error_clicks(pred, gt, 3)
    assert clicks[0][2] is True and 5 <= clicks[0][0] < 12
    assert any(c[2] is False for c in clicks)


def test_reward_penalises_every_drop_each_turn_and_a_bad_stop():
    steady = reward([0.8, 0.85, 0.9], [0.88, 0.92, 0.95], stopped=True, large_error_left=False)
    dip = reward([0.8, 0.7, 0.9], [0.88, 0.82, 0.95], stopped=True, large_error_left=False)
    assert steady - dip == pytest.approx(0.1, abs=1e-6)  # the dip costs its drop even though the end is the same
    one = reward([0.8, 0.9], [0.88, 0.95], stopped=True, large_error_left=False)
    assert one > steady  # same end, one turn fewer
    good = reward([0.92], [0.96], stopped=True, large_error_left=False)
    bad = reward([0.5], [0.66], stopped=True, large_error_left=True)
    assert good == pytest.approx(0.5 * 0.92 + 0.5 * 0.96 + 0.05)
    assert bad == pytest.approx(0.5 * 0.5 + 0.5 * 0.66 - 0.1)


def test_eval_agent_protocol_counts_taken_back_turns_and_only_the_policys_own_time(monkeypatch):
    import MedAgentSegLib.agent.registry as registry
    from MedAgentSegLib.evaluation.protocols import run_instance

    gt = np.zeros((64, 64), bool)
    gt[20:41, 20:41] = True
    made = []

    def fake_policy(name, **kwargs):
        assert "gt" not in kwargs  # a GT-free policy is never handed the reference
        made.append(Spy([AddPoint((100, 100), "negative"), UndoTurn()]))
        return made[-1]

    monkeypatch.setattr(registry, "create_policy", fake_policy)
    out = run_instance(BoxEngine(), IMAGE, gt, "agent", clicks=4, jitter=0.0, policy="heuristic")
    assert out["turns"] == 2 and out["reverted"] == 1  # the box, and the click it took back
    assert len(out["dice_by_step"]) == 1  # the kept masks: the box's only
    assert sorted(out["actions"]) == ["add_point", "stop_action"] and len(out["policy_s"]) == 2
    assert len(made) == 1 and made[0].seen[0].max_turns == 5  # the box and 4 turns: what the policy is told

    capped = Spy([AddPoint((100, 100 + 50 * i), "positive") for i in range(9)])
    monkeypatch.setattr(registry, "create_policy", lambda name, **kw: capped)
    out = run_instance(BoxEngine(), IMAGE, gt, "agent", clicks=2, jitter=0.0, policy="heuristic")
    assert out["turns"] == 3 and out["actions"] == ["add_point", "add_point"]  # the forced stop is not the policy's
