"""The learned controller: its weights are checked, its outputs become valid actions, the shipped agent runs on the
bundled sample with the real engine, and the whole training recipe runs end to end on a tiny dataset."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the learned policy needs torch: pip install -e '.[engine]'")

from conftest import REPO  # noqa: E402

from MedAgentSegLib.agent.controller import CONTROLLER_ARCH, build_controller  # noqa: E402
from MedAgentSegLib.agent.features import GRID, STATE_CHANNELS, cell_to_pixel, frame, state_maps  # noqa: E402
from MedAgentSegLib.agent.learned import POLICY_WEIGHTS, LearnedPolicy, choose, snap  # noqa: E402
from MedAgentSegLib.engines.base import Prompts  # noqa: E402
from MedAgentSegLib.engines.weights import sha256_file  # noqa: E402

SAMPLE = REPO / "Resources" / "Samples" / "lits117_liver_ct.nrrd"
LABELS = REPO / "Resources" / "Samples" / "lits117_liver_ct_labels.nrrd"


def _write(tmp_path, state, sha=None, name="c.pt"):
    path = tmp_path / name
    torch.save(state, path)
    card = {"sha256": sha if sha is not None else sha256_file(path)}
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


def test_bad_policy_weights_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        LearnedPolicy(weights=tmp_path / "none.pt")
    good = build_controller(**CONTROLLER_ARCH).state_dict()
    with pytest.raises(ValueError, match="SHA-256"):
        LearnedPolicy(weights=_write(tmp_path, good, sha="0" * 64, name="hash.pt"))
    narrow = build_controller(CONTROLLER_ARCH["emb_channels"], STATE_CHANNELS, width=16).state_dict()
    with pytest.raises(ValueError, match="do not fit"):
        LearnedPolicy(weights=_write(tmp_path, narrow, name="shape.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    junk.with_suffix(".json").write_text(json.dumps({"sha256": sha256_file(junk)}))
    with pytest.raises(ValueError, match="train-policy"):
        LearnedPolicy(weights=junk)
    ok = LearnedPolicy(weights=_write(tmp_path, good, name="ok.pt"))
    assert ok.net is not None


class _Obs:
    """A minimal observation for the choice helpers."""

    def __init__(self, h=100, w=80, points=(), labels=(), box=(10.0, 10.0, 70.0, 90.0)):
        self.height, self.width = h, w
        self.prompts = Prompts(box, list(points), list(labels))
        self.mask = np.zeros((h, w), bool)
        self.mask[30:70, 20:60] = True


def test_choice_follows_the_heatmap_peak_and_avoids_earlier_clicks():
    obs = _Obs()
    heat = torch.full((1, 2, GRID, GRID), -5.0)
    heat[0, 1, 19, 12] = 5.0  # negative channel peak, on a cell whose centre lies just outside the mask
    heat[0, 0, 19, 13] = 4.0  # runner-up, positive
    act = torch.tensor([[3.0, -3.0, -3.0]])
    name, cell, logp = choose(obs, heat, act)
    assert name == "click" and cell == (1, 19, 12) and logp < 0
    cx, cy = cell_to_pixel(19, 12, (obs.height, obs.width))
    assert not obs.mask[int(round(cy)), int(round(cx))]
    x, y, positive = snap(obs, *cell)
    assert not positive and obs.mask[int(y), int(x)]  # snapped inside: a negative click must hit the mask
    assert abs(x - cx) <= 2 and abs(y - cy) <= 2
    blocked = _Obs(points=[(cx, cy)], labels=[0])
    name, cell, _ = choose(blocked, heat, act)
    assert cell[1:] != (19, 12) and cell[1:] != (19, 13)  # both within two cells of the earlier click
    nobox = _Obs(box=None)
    assert choose(nobox, heat, torch.tensor([[-3.0, 9.0, -3.0]]))[0] != "rebox"  # nothing to re-box


def test_state_maps_place_prompts_on_the_embedding_grid():
    scale, (nh, nw) = frame(100, 80)
    maps = state_maps(np.full((GRID, GRID), 4.0, np.float32), {"box": [8.0, 8.0, 40.0, 40.0],
                      "points": [[20.0, 30.0], [60.0, 90.0]], "labels": [1, 0]}, (100, 80), 0.7, 2)
    assert maps.shape == (STATE_CHANNELS, GRID, GRID)
    r, c = int(30 * scale / 4), int(20 * scale / 4)
    assert maps[4, r, c] > 0.8 and maps[5, r, c] < 0.01
    assert maps[3, r, c] == 1 and maps[3, 60, 60] == 0
    assert maps[6, :int(np.ceil(nh / 4)), :int(np.ceil(nw / 4))].all() and not maps[6, :, -1].any()
    assert maps[7, 0, 0] == pytest.approx(0.7) and maps[8, 0, 0] == pytest.approx(0.4)


@pytest.fixture(scope="module")
def sample_slice():
    from MedAgentSegLib import images

    img = images.load_image(SAMPLE)
    lab = images.load_mask(LABELS, img, 1)
    k = images.largest_slice(lab, "axial")
    return images.to_engine_rgb(images.extract_slice(img.array, k), img.modality), images.extract_slice(lab, k, "axial")


def test_shipped_agent_refines_the_bundled_sample_with_reasons_and_replays(lite_engine, sample_slice):
    if not POLICY_WEIGHTS.is_file():
        pytest.fail(f"the learned policy's weights are not shipped at {POLICY_WEIGHTS}")
    from MedAgentSegLib.engines import create_engine
    from MedAgentSegLib.oracle import box_from_mask
    from MedAgentSegLib.session import Session, replay

    engine = create_engine(None, device="cpu")  # the default, click-aware engine
    rgb, gt = sample_slice
    session = Session(engine, rgb, "liver", max_turns=6, metadata={"reference": gt})
    session.add_box(*box_from_mask(gt, 0.1, np.random.default_rng(0)), source="user")
    policy = LearnedPolicy(device="cpu")
    session.run(policy)
    agent = [t for t in session.turns if t.source == "agent"]
    assert session.status == "stopped" and agent and agent[-1].action["name"] == "stop_action"
    assert session.mask_turns + len(session.reverted) <= 6
    for t in agent:
        assert t.action["reason"] and 0.0 <= t.action["confidence"] <= 1.0 and t.timings["policy_s"] > 0
    again = replay(session.to_dict(), engine, rgb)
    assert np.array_equal(again.mask, session.mask)


def test_segment_cli_runs_the_learned_agent_after_a_box(tmp_path, lite_engine):
    from MedAgentSegLib.cli import main

    out = tmp_path / "o"
    assert main(["segment", str(SAMPLE), "--target", "liver", "--policy", "learned", "--device", "cpu",
                 "--out", str(out)]) == 2
    assert not out.exists()
    rc = main(["segment", str(SAMPLE), "--target", "liver", "--policy", "learned", "--box", "20,30,100,110",
               "--device", "cpu", "--out", str(out)])
    assert rc == 0
    traj = json.loads((out / "trajectory.json").read_text())
    assert traj["turns"][0]["source"] == "user"
    assert traj["turns"][-1]["action"]["name"] == "stop_action" and "reason" in traj["turns"][-1]["action"]


def test_train_policy_runs_end_to_end_on_a_tiny_dataset(tmp_path):
    """make the expert's data, behaviour-clone, GRPO, write weights + card, and load them as a policy."""
    from PIL import Image

    data = tmp_path / "data" / "synth"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    cases = []
    for i in range(4):
        img = rng.integers(0, 40, (64, 64, 3)).astype(np.uint8)
        m = np.zeros((64, 64), np.uint8)
        r, c = 16 + 4 * i, 20
        m[r:r + 24, c:c + 20] = 1
        img[m == 1] += 150
        Image.fromarray(img).save(data / "images" / f"c{i}.png")
        Image.fromarray(m).save(data / "masks" / f"c{i}.png")
        cases.append({"id": f"c{i}", "image": f"images/c{i}.png", "mask": f"masks/c{i}.png", "patient": f"p{i}"})
    (data / "dataset.json").write_text(json.dumps({"name": "synth", "modality": "photo", "dimension": "2D",
                                                   "labels": {"1": "polyp"}, "cases": cases}))
    out = tmp_path / "w" / "pc.pt"
    r = subprocess.run([sys.executable, "-m", "MedAgentSegLib.cli", "train-policy", "--data", str(tmp_path / "data"),
                        "--datasets", "synth", "--out", str(out), "--work", str(tmp_path / "work"),
                        "--embedding-cache", str(tmp_path / "cache"), "--sft-steps", "3", "--rl-groups", "2",
                        "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["sha256"] == sha256_file(out) and card["training"]["grpo_groups"] == 2
    lines = (tmp_path / "work" / "trajectories.jsonl").read_text().splitlines()
    assert lines and all("config" in json.loads(line) for line in lines)
    assert LearnedPolicy(weights=out).card["name"] == "medagentseg-learned-controller"


def test_grpo_log_probabilities_match_the_sampled_choices():
    """The log-probability GRPO differentiates is the one the action was drawn with (same masking)."""
    from MedAgentSegLib.agent.learned import _blocked
    from MedAgentSegLib.training.policy import _logp

    torch.manual_seed(0)
    net = build_controller(**CONTROLLER_ARCH).eval()
    rng = np.random.default_rng(1)
    obs = _Obs(points=[(30.0, 40.0)], labels=[1])
    emb = torch.randn(1, 256, GRID, GRID)
    maps = state_maps(np.zeros((GRID, GRID), np.float32), obs.prompts.to_dict(), (100, 80), 0.5, 1)
    st = torch.from_numpy(maps)[None]
    with torch.inference_mode():
        heat, act, _ = net(emb, st)
    for _ in range(5):
        name, cell, logp = choose(obs, heat, act, sample=True, rng=rng)
        step = (emb, st, torch.from_numpy(_blocked(obs)), True, ("click", "rebox", "stop").index(name), cell, 0.5)
        total, value_loss = _logp(net, [step])
        assert total.item() == pytest.approx(logp, abs=1e-4) and value_loss.item() > 0
