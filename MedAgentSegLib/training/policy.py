"""Training the learned controller: expert trajectories -> behaviour cloning (SFT) -> GRPO on the real engine.

- `collect`: runs the expert (`expert.py`) on the training split, with the real engine and cached image
  embeddings, and keeps every state it acted from (`StateSet`).
- `sft`: behaviour cloning. Action head: cross-entropy to the expert's action (click / rebox / stop). Heat head:
  cross-entropy to a target over both channels that puts half its mass on the expert's click cell and half on
  the interior of every error region (distance to the region's edge, squared), so the network learns where the
  engine is wrong, not one click only. Value head: binary cross-entropy to the state's IoU.
- `grpo`: groups of rollouts from the same box on the real engine, actions sampled from the controller,
  advantages normalised in the group (A = (R - mean) / (std + 1e-6)), policy-gradient step on the summed
  log-probabilities. `reward` is the process reward (see there).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..agent.controller import ACTIONS
from ..agent.expert import ExpertConfig, State, expert_trajectory
from ..agent.features import CELL, GRID, frame, pool_logits, state_maps

__all__ = ["PolicyTrainConfig", "StateSet", "collect", "sft", "grpo", "reward", "train_instances"]


@dataclass
class PolicyTrainConfig:
    """Hyper-parameters of train-policy (defaults = the shipped recipe)."""

    datasets: tuple[str, ...] = ("kvasir-seg", "btcv-slices", "acdc")
    per_dataset: dict[str, int] = field(default_factory=lambda: {"kvasir-seg": 240, "btcv-slices": 360,
                                                                   "acdc": 120})
    min_area: int = 20
    sft_steps: int = 1200
    batch: int = 32
    lr: float = 2e-3
    rl_groups: int = 300
    group: int = 8
    rl_lr: float = 2e-4
    rl_jitter: float = 0.15
    max_turns: int = 5
    seed: int = 0
    threads: int = 2
    rl_time_budget_s: float | None = None
    expert: ExpertConfig = field(default_factory=ExpertConfig)


# -- data ---------------------------------------------------------------------------------------------------
def train_instances(data_root: str | Path, cfg: PolicyTrainConfig, store: Any, engine: Any, split: str = "train",
                    log: Any = print) -> list[Any]:
    """Instances of the split whose image embedding is in `store` (seeded subsample per dataset)."""
    from ..datasets import list_instances, read_dataset

    out = []
    for name in cfg.datasets:
        root = Path(data_root) / name
        if not (root / "dataset.json").is_file():
            log(f"[policy] {name}: no dataset.json under {root}, skipped")
            continue
        insts, _ = list_instances(read_dataset(root), split=split, min_area=cfg.min_area)
        rng = np.random.default_rng(cfg.seed)
        insts = [insts[i] for i in rng.permutation(len(insts))][:cfg.per_dataset.get(name, len(insts))]
        out.extend(insts)
    return out


@dataclass
class StateSet:
    """States for SFT, as arrays. keys: embedding-cache key per state; the rest one row per state."""

    keys: list[str]
    pooled: np.ndarray  # (N, 64, 64) float16 pooled logits
    fn: np.ndarray  # (N, 64, 64) uint8: false-negative pixels per cell of the input frame (0..16)
    fp: np.ndarray  # (N, 64, 64) uint8
    prompts: list[dict[str, Any]]
    hw: np.ndarray  # (N, 2) int
    score: np.ndarray  # (N,) float32
    turns: np.ndarray  # (N,) int
    iou: np.ndarray  # (N,) float32
    action: np.ndarray  # (N,) int, index into ACTIONS
    click: np.ndarray  # (N, 3) int (channel, row, col), -1 when not a click

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, keys=np.array(self.keys), pooled=self.pooled, fn=self.fn, fp=self.fp,
                            prompts=np.array([json.dumps(p) for p in self.prompts]), hw=self.hw, score=self.score,
                            turns=self.turns, iou=self.iou, action=self.action, click=self.click)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> StateSet:
        z = np.load(path)
        return cls([str(k) for k in z["keys"]], z["pooled"], z["fn"], z["fp"],
                   [json.loads(str(p)) for p in z["prompts"]], z["hw"], z["score"], z["turns"], z["iou"],
                   z["action"], z["click"])

    def __len__(self) -> int:
        return len(self.keys)


def _cells(region: np.ndarray, scale: float, new_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) bool -> (64, 64) uint8 count of region pixels per cell of the 256 input frame."""
    from .cache import to_input_frame

    m = to_input_frame(region, scale, new_hw) if region.any() else np.zeros((256, 256), bool)
    return m.reshape(GRID, CELL, GRID, CELL).sum(axis=(1, 3)).astype(np.uint8)


def _row(state: State, key: str, gt: np.ndarray, hw: tuple[int, int]) -> dict[str, Any]:
    scale, new_hw = frame(*hw)
    click = (-1, -1, -1)
    if state.click is not None:
        x, y, positive = state.click
        click = (0 if positive else 1, min(GRID - 1, int(y * scale / CELL)), min(GRID - 1, int(x * scale / CELL)))
    return {"key": key, "pooled": pool_logits(state.logits).astype(np.float16),
            "fn": _cells(gt & ~state.mask, scale, new_hw), "fp": _cells(state.mask & ~gt, scale, new_hw),
            "prompts": state.prompts, "hw": hw, "score": state.score, "turns": state.mask_turns, "iou": state.iou,
            "action": ACTIONS.index(state.action), "click": click}


def collect(instances: list[Any], engine: Any, store: Any, out_dir: Path, cfg: PolicyTrainConfig,
            log: Any = print) -> StateSet:
    """Expert trajectories on `instances`; writes out_dir/trajectories.jsonl and out_dir/states.npz."""
    from ..datasets import instance_seed, load_instance
    from ..session import Session

    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with (out_dir / "trajectories.jsonl.tmp").open("w") as fh:
        for n, inst in enumerate(instances):
            try:
                rgb, gt = load_instance(inst)
            except (ValueError, OSError) as exc:
                log(f"[expert] skipped {inst.dataset}/{inst.case_id}: {exc}")
                continue
            key = store.encode(engine, rgb)
            store.prime(engine, rgb)
            rng = np.random.default_rng(instance_seed(cfg.seed, inst.dataset, inst.case_id, inst.label,
                                                      inst.slice_index))
            session = Session(engine, rgb, inst.label_name, max_turns=cfg.expert.max_turns)
            record, states = expert_trajectory(session, gt, cfg.expert, rng)
            record.update({"dataset": inst.dataset, "case": inst.case_id, "label": inst.label_name,
                           "slice": inst.slice_index, "key": key, "states": len(states)})
            fh.write(json.dumps(record) + "\n")
            rows += [_row(s, key, gt, rgb.shape[:2]) for s in states]
            if n % 25 == 0:
                log(f"[expert] {n + 1}/{len(instances)} states {len(rows)} {time.perf_counter() - t0:.0f}s")
    (out_dir / "trajectories.jsonl.tmp").replace(out_dir / "trajectories.jsonl")
    sset = StateSet([r["key"] for r in rows], np.stack([r["pooled"] for r in rows]), np.stack([r["fn"] for r in rows]),
                    np.stack([r["fp"] for r in rows]), [r["prompts"] for r in rows],
                    np.array([r["hw"] for r in rows], int), np.array([r["score"] for r in rows], np.float32),
                    np.array([r["turns"] for r in rows], int), np.array([r["iou"] for r in rows], np.float32),
                    np.array([r["action"] for r in rows], int), np.array([r["click"] for r in rows], int))
    sset.save(out_dir / "states.npz")
    return sset


# -- SFT ----------------------------------------------------------------------------------------------------
def _heat_target(fn: np.ndarray, fp: np.ndarray, click: np.ndarray) -> np.ndarray:
    """(2, 64, 64) float32 target distribution: half on the expert's cell (smoothed), half on error interiors."""
    from scipy import ndimage

    dense = np.zeros((2, GRID, GRID), np.float32)
    for ch, cells in enumerate((fn, fp)):
        region = cells >= CELL * CELL // 2
        if region.any():
            dense[ch] = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1] ** 2
    one = np.zeros((2, GRID, GRID), np.float32)
    ch, r, c = (int(v) for v in click)
    one[ch, r, c] = 1.0
    one[ch] = ndimage.gaussian_filter(one[ch], 0.8)
    t = 0.5 * one / one.sum()
    if dense.sum() > 0:
        t += 0.5 * dense / dense.sum()
    else:
        t *= 2
    return t


def load_embeddings(store: Any, keys: list[str]) -> tuple[Any, dict[str, int]]:
    """(N_unique, 256, 64, 64) float16 tensor of the cached embeddings and key -> row."""
    import torch

    uniq = sorted(set(keys))
    embs = torch.empty((len(uniq), 256, GRID, GRID), dtype=torch.float16)
    for i, k in enumerate(uniq):
        embs[i] = torch.from_numpy(store.load(k)[0]).half()
    return embs, {k: i for i, k in enumerate(uniq)}


def sft(net: Any, sset: StateSet, embs: Any, index: dict[str, int], cfg: PolicyTrainConfig, log: Any = print
        ) -> list[dict[str, float]]:
    """Behaviour cloning on `sset`; returns the loss log."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(cfg.seed)
    maps = np.stack([state_maps(sset.pooled[i].astype(np.float32), sset.prompts[i], tuple(sset.hw[i]),
                                float(sset.score[i]), int(sset.turns[i])) for i in range(len(sset))])
    clicks = np.nonzero(sset.action == ACTIONS.index("click"))[0]
    heat_t = np.zeros((len(sset), 2, GRID, GRID), np.float32)
    for i in clicks:
        heat_t[i] = _heat_target(sset.fn[i], sset.fp[i], sset.click[i])
    maps_t, heat_tt = torch.from_numpy(maps), torch.from_numpy(heat_t)
    emb_rows = torch.tensor([index[k] for k in sset.keys])
    counts = np.bincount(sset.action, minlength=len(ACTIONS)).astype(np.float64)
    weight = torch.tensor(np.clip(counts.sum() / np.maximum(counts, 1) / len(ACTIONS), 0.2, 5.0), dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    warm, total = max(1, cfg.sft_steps // 10), max(1, cfg.sft_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * s / total)))
    net.train()
    history = []
    t0 = time.perf_counter()
    for step in range(cfg.sft_steps):
        b = torch.from_numpy(rng.choice(len(sset), size=min(cfg.batch, len(sset)), replace=False))
        heat, act, val = net(embs[emb_rows[b]].float(), maps_t[b])
        a = torch.from_numpy(sset.action[b.numpy()])
        nobox = maps_t[b][:, 9, 0, 0] < 0.5  # as at run time: no re-box without a box (choose masks it too)
        act = act.masked_fill(nobox[:, None] & (torch.arange(len(ACTIONS)) == ACTIONS.index("rebox"))[None], -1e4)
        keep = ~(nobox & (a == ACTIONS.index("rebox")))
        loss_a = F.cross_entropy(act[keep], a[keep], weight=weight) if keep.any() else torch.zeros(())
        is_click = a == ACTIONS.index("click")
        loss_h = torch.zeros(())
        if is_click.any():
            logp = torch.log_softmax(heat[is_click].reshape(int(is_click.sum()), -1), 1)
            loss_h = -(heat_tt[b][is_click].reshape(int(is_click.sum()), -1) * logp).sum(1).mean()
        loss_v = F.binary_cross_entropy_with_logits(val, torch.from_numpy(sset.iou[b.numpy()]))
        loss = loss_a + 0.5 * loss_h + loss_v
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.sft_steps - 1:
            rec = {"step": step, "loss": round(loss.item(), 4), "action": round(loss_a.item(), 4),
                   "heat": round(loss_h.item(), 4), "value": round(loss_v.item(), 4),
                   "s": round(time.perf_counter() - t0, 1)}
            history.append(rec)
            log(f"[sft] {rec}")
    net.eval()
    return history


# -- GRPO ---------------------------------------------------------------------------------------------------
def reward(ious: list[float], dices: list[float], stopped: bool, large_error_left: bool) -> float:
    """Process reward of one rollout. ious/dices: after the box (index 0) and each agent turn.

    0.5 IoU_T + 0.5 Dice_T, minus every step's IoU drop (not only max vs final), minus 0.01 per agent turn (the
    first included), plus 0.05 for stopping on a good mask (IoU >= 0.9), minus 0.1 for stopping while a large
    error remains (an error region of at least 10% of the target's area). Rollouts call this with stopped=True
    also when the turns ran out: the run ended there, so clicking to the limit cannot dodge the penalty.
    """
    turns = len(ious) - 1
    drops = sum(max(0.0, a - b) for a, b in zip(ious[:-1], ious[1:]))
    r = 0.5 * ious[-1] + 0.5 * dices[-1] - drops - 0.01 * turns
    if stopped and ious[-1] >= 0.9:
        r += 0.05
    if stopped and large_error_left:
        r -= 0.1
    return float(r)


def _large_error(mask: np.ndarray, gt: np.ndarray) -> bool:
    from scipy import ndimage

    area = max(1, int(gt.sum()))
    for region in (gt & ~mask, mask & ~gt):
        labels, n = ndimage.label(region)
        if n and np.bincount(labels.ravel())[1:].max() >= 0.1 * area:
            return True
    return False


def _rollout(net: Any, session: Any, gt: np.ndarray, rng: np.random.Generator, max_turns: int):
    """One sampled rollout from the session's box; returns (steps [(emb, state, blocked, a, cell)], reward, iou)."""
    import torch

    from ..agent.common import box_action, click_action, mask_box
    from ..agent.learned import _blocked, choose, controller_inputs, snap
    from ..metrics import dice, iou

    ious, dices = [iou(session.mask, gt)], [dice(session.mask, gt)]
    steps = []
    while session.mask_turns < max_turns:
        obs = session.observe()
        emb, st = controller_inputs(obs)
        with torch.inference_mode():
            heat, act, _ = net(emb, st)
        name, cell, _ = choose(obs, heat, act, sample=True, rng=rng)
        blocked = torch.from_numpy(_blocked(obs))
        steps.append((emb, st, blocked, obs.prompts.box is not None, ACTIONS.index(name), cell, ious[-1]))
        if name == "stop":
            break
        if name == "rebox":
            box = mask_box(obs.mask)
            if box is None:
                break
            session.act(box_action(box, obs.height, obs.width))
        else:
            x, y, positive = snap(obs, *cell)
            session.act(click_action(x, y, positive, obs.height, obs.width))
        ious.append(iou(session.mask, gt))
        dices.append(dice(session.mask, gt))
    return steps, reward(ious, dices, True, _large_error(session.mask, gt)), ious[-1]


def _logp(net: Any, steps: list[tuple]) -> tuple[Any, Any]:
    """(sum of log-probabilities of the chosen actions and click cells, value loss on the visited states' IoU),
    with gradients, for one rollout."""
    import torch
    import torch.nn.functional as F

    emb = torch.cat([s[0] for s in steps])
    st = torch.cat([s[1] for s in steps])
    heat, act, val = net(emb, st)
    value_loss = F.binary_cross_entropy_with_logits(val, torch.tensor([s[6] for s in steps], dtype=torch.float32))
    total = torch.zeros(())
    for i, (_, _, blocked, has_box, a, cell, _) in enumerate(steps):
        logits = act[i]
        if not has_box:
            logits = logits.masked_fill(torch.arange(len(ACTIONS)) == ACTIONS.index("rebox"), -1e4)
        total = total + torch.log_softmax(logits, 0)[a]
        if cell is not None:
            h = heat[i].masked_fill(blocked[None], -1e4).reshape(-1)
            ch, r, c = cell
            total = total + torch.log_softmax(h, 0)[ch * GRID * GRID + r * GRID + c]
    return total, value_loss


def grpo(net: Any, instances: list[Any], engine: Any, store: Any, cfg: PolicyTrainConfig, log: Any = print
         ) -> list[dict[str, float]]:
    """GRPO against the real engine; returns the log (mean reward and IoU per group)."""
    import torch

    from ..datasets import load_instance
    from ..oracle import box_from_mask
    from ..session import Session

    rng = np.random.default_rng(cfg.seed + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.rl_lr, weight_decay=0.0)
    history = []
    t0 = time.perf_counter()
    for g in range(cfg.rl_groups):
        if cfg.rl_time_budget_s is not None and time.perf_counter() - t0 > cfg.rl_time_budget_s:
            log(f"[grpo] time budget reached after {g} groups")
            break
        inst = instances[int(rng.integers(len(instances)))]
        try:
            rgb, gt = load_instance(inst)
        except (ValueError, OSError):
            continue
        store.prime(engine, rgb)
        box = box_from_mask(gt, float(rng.uniform(0, cfg.rl_jitter)), rng)
        net.eval()
        rollouts = []
        for _ in range(cfg.group):
            session = Session(engine, rgb, inst.label_name, max_turns=cfg.max_turns)
            session.add_box(*box, source="agent")
            rollouts.append(_rollout(net, session, gt, rng, cfg.max_turns))
        rewards = np.array([r[1] for r in rollouts], np.float32)
        adv = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
        net.train()
        opt.zero_grad()
        loss = torch.zeros(())
        for (steps, _, _), a in zip(rollouts, adv):
            if steps:  # the policy gradient, and the value head kept on the IoU of the states it now visits
                logp, value_loss = _logp(net, steps)
                loss = loss + (value_loss - float(a) * logp) / cfg.group
        if loss.requires_grad:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
        rec = {"group": g, "reward": round(float(rewards.mean()), 4),
               "iou": round(float(np.mean([r[2] for r in rollouts])), 4),
               "turns": round(float(np.mean([len(r[0]) for r in rollouts])), 2),
               "s": round(time.perf_counter() - t0, 1)}
        history.append(rec)
        if g % 10 == 0:
            log(f"[grpo] {rec}")
    net.eval()
    return history


def config_dict(cfg: PolicyTrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["datasets"] = list(cfg.datasets)
    return d
