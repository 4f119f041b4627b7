"""The evaluation harness: instances of a dataset -> protocol runs -> per-case records + summary JSON.

`evaluate(...)` never stops on one bad case: unreadable files, empty masks and absent labels become skip
records (printed, and listed under "skipped" in the output JSON); the run goes on with the other instances.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..datasets import (
    DatasetError,
    Skip,
    instance_seed,
    list_instances,
    load_instance,
    load_volume_instance,
    read_dataset,
)
from .protocols import MAX_NOC_CLICKS, PROTOCOLS, run_instance

__all__ = ["evaluate", "summarize", "format_table", "plot_dice", "Progress", "DEGRADE_TOL", "run_volume"]

DEGRADE_TOL = 0.01


class Progress:
    """A one-line text progress bar on stderr (plain lines when not a terminal)."""

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None, width: int = 30):
        self.total, self.label, self.width = max(total, 1), label, width
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = -1

    def update(self, done: int, note: str = "") -> None:
        frac = done / self.total
        pct = int(frac * 100)
        if not self.tty and pct // 10 == self._last // 10 and done != self.total:
            return
        self._last = pct
        el = time.perf_counter() - self.t0
        eta = el / done * (self.total - done) if done else 0.0
        bar = "#" * int(frac * self.width) + "-" * (self.width - int(frac * self.width))
        line = f"{self.label} [{bar}] {done}/{self.total} {el:.0f}s eta {eta:.0f}s {note}"
        if self.tty:
            self.stream.write("\r" + line[:150])
            if done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _pad(seq: list[float], n: int) -> list[float]:
    return list(seq) + [seq[-1]] * (n - len(seq)) if seq else []


def summarize(cases: list[dict[str, Any]], protocol: str) -> dict[str, Any]:
    """Summary of per-instance records (each with dice_by_step, iou_by_step, turns, noc85/noc90).

    Steps are aligned by carrying an instance's last value forward (a session that stopped keeps its mask).
    degraded_rate: share of instances whose final Dice is more than DEGRADE_TOL below their box-only Dice.
    """
    ok = [c for c in cases if "dice_by_step" in c]
    out: dict[str, Any] = {"n": len(ok), "protocol": protocol}
    if not ok:
        out.update({"dice_by_step": [], "iou_by_step": [], "dice_final": None, "noc85": None, "noc90": None,
                    "fail90": None, "turns_mean": None, "degraded_rate": None, "per_label": {}})
        return out
    n_steps = max(len(c["dice_by_step"]) for c in ok)
    if protocol == "noc":  # report the curve only as far as every run went (at least --clicks)
        n_steps = min(len(c["dice_by_step"]) for c in ok) if protocol == "noc" else n_steps
    d = np.array([_pad(c["dice_by_step"], max(n_steps, len(c["dice_by_step"])))[:n_steps] for c in ok])
    i = np.array([_pad(c["iou_by_step"], max(n_steps, len(c["iou_by_step"])))[:n_steps] for c in ok])
    final = [c["dice_by_step"][-1] for c in ok]
    out["dice_by_step"] = [round(float(v), 4) for v in d.mean(axis=0)]
    out["iou_by_step"] = [round(float(v), 4) for v in i.mean(axis=0)]
    out["dice_final"] = _mean(final)
    out["dice_final_std"] = round(float(np.std(final)), 4)
    nocs = [c for c in ok if c.get("noc90") is not None]
    out["noc85"] = _mean([c["noc85"] for c in nocs])
    out["noc90"] = _mean([c["noc90"] for c in nocs])
    out["fail90"] = sum(1 for c in nocs if not c["reached90"]) if nocs else None
    out["turns_mean"] = _mean([c["turns"] for c in ok])
    # How the engine applied the clicks (engines.base.Prediction.update): shares over all click turns.
    kinds = [u for c in ok for u in c.get("updates", [])]
    out["click_updates"] = {k: round(kinds.count(k) / len(kinds), 4) for k in sorted(set(kinds))} if kinds else {}
    # The network's own answer kept (model or local, not a painted disk): the share issue #26 asks >= 80% for.
    out["network_kept"] = round(sum(1 for k in kinds if k != "disk") / len(kinds), 4) if kinds else None
    if any("dice_lone" in c for c in ok):  # lone protocol: one positive click at the interior, no box
        lone = [c["dice_lone"] for c in ok if "dice_lone" in c]
        out["dice_lone"] = _mean(lone)
        out["lone_ge_0.6"] = round(float(np.mean(np.array(lone) >= 0.6)), 4)
    if any("asked" in c for c in ok):  # auto protocol (issue #16): the locator's first box, or the agent asked
        ious = [c["box_iou"] for c in ok if c.get("box_iou") is not None]
        out["box_iou_median"] = round(float(np.median(ious)), 4) if ious else None
        out["asked_rate"] = round(sum(1 for c in ok if c["asked"]) / len(ok), 4)
        out["dice_ref_final"] = _mean([c["dice_ref_final"] for c in ok])
        hits = [c["start_slice_hit"] for c in ok if "start_slice_hit" in c]
        out["start_slice_hit_rate"] = round(float(np.mean(hits)), 4) if hits else None
    if any("seconds_per_volume" in c for c in ok):  # propagate protocol
        out["dice_3d"] = out["dice_final"]
        out["seconds_per_volume"] = _mean([c["seconds_per_volume"] for c in ok])
    out["degraded_rate"] = round(sum(1 for c in ok if c["dice_by_step"][-1] < c["dice_by_step"][0] - DEGRADE_TOL)
                                 / len(ok), 4)
    out["gain_final"] = round(float(np.mean([c["dice_by_step"][-1] - c["dice_by_step"][0] for c in ok])), 4)
    if any("policy_s" in c for c in ok):  # agent protocol: the policy's own time next to the engine's
        pol = [v for c in ok for v in c.get("policy_s", [])]
        eng = [v for c in ok for v in c.get("engine_s", [])[1:]]  # corrective turns, not the box
        out["policy_ms_median"] = round(1000 * float(np.median(pol)), 2) if pol else None
        out["engine_turn_ms_median"] = round(1000 * float(np.median(eng)), 2) if eng else None
        out["reverted_rate"] = round(sum(1 for c in ok if c.get("reverted")) / len(ok), 4)
        acts = [a for c in ok for a in c.get("actions", [])]
        out["actions"] = {k: acts.count(k) for k in sorted(set(acts))}
    per: dict[str, list[dict[str, Any]]] = {}
    for c in ok:
        per.setdefault(f"{c['dataset']}/{c['label_name']}", []).append(c)
    out["per_label"] = {}
    for name, group in sorted(per.items()):
        sub = summarize(group, protocol) if len(per) > 1 else None
        if sub is None:
            sub = {k: out[k] for k in ("n", "dice_by_step", "dice_final", "noc85", "noc90", "fail90",
                                      "degraded_rate")}
        else:
            sub = {k: sub[k] for k in ("n", "dice_by_step", "dice_final", "noc85", "noc90", "fail90",
                                      "degraded_rate")}
        out["per_label"][name] = sub
    return out


def run_volume(engine: Any, inst: Any, protocol: str, clicks: int, jitter: float, seed: int,
               policy: str, store: Any = None) -> dict[str, Any]:
    """--mode 3d: the protocol on every axial slice holding the label; Dice/IoU per step on the volume.
    store: an EmbeddingCache to take each slice's embedding from, where it holds one."""
    from ..images import extract_slice, to_engine_rgb
    from ..metrics import dice, iou

    img, gt = load_volume_instance(inst)
    ks = [k for k in range(gt.shape[0]) if gt[k].any()]
    steps: list[list[np.ndarray]] = []
    turns = 0
    for k in ks:
        rgb = to_engine_rgb(extract_slice(img.array, k), img.modality)
        if store is not None:
            store.keep(engine, rgb)
        r = _run_with_masks(engine, rgb, gt[k], protocol, clicks, jitter,
                            instance_seed(seed, inst.dataset, inst.case_id, inst.label, k), policy)
        steps.append(r)
        turns += len(r)
    n = max(len(s) for s in steps)
    dices, ious = [], []
    for t in range(n):
        vol = np.zeros_like(gt)
        for k, s in zip(ks, steps):
            vol[k] = s[min(t, len(s) - 1)]
        dices.append(round(dice(vol, gt), 6))
        ious.append(round(iou(vol, gt), 6))
    return {"dice_by_step": dices, "iou_by_step": ious, "turns": turns, "slices": len(ks), "noc85": None,
            "noc90": None, "reached90": None}


def run_propagate(engine: Any, inst: Any, clicks: int, jitter: float, seed: int, policy: str, store: Any = None,
                  config: Any = None, policy_kwargs: dict[str, Any] | None = None,
                  fix_slices: int = 0) -> dict[str, Any]:
    """--protocol propagate: a jittered box on the label's largest slice, `clicks` refinement turns there (oracle
    clicks, or the GT-free policy's turns), then propagation through the volume; Dice of the whole volume.

    fix_slices: then K corrections, each on the slice that is worst now, re-propagated outwards from it
    (`repropagate`); dice_by_step = [after propagation, after each correction]. The oracle corrects the slice with
    the most wrong pixels (a jittered box from the reference and up to FIX_CLICKS clicks; a slice the structure does
    not reach is erased with every slice beyond it); a GT-free policy refines the propagated slice with the lowest
    engine score.
    """
    from ..agent.registry import create_policy
    from ..images import extract_slice, to_engine_rgb
    from ..metrics import dice, iou
    from ..oracle import box_from_mask
    from ..policies import OraclePolicy
    from ..propagation import propagate
    from ..session import Session

    img, gt = load_volume_instance(inst)
    k = inst.slice_index
    t0 = time.perf_counter()
    rgb = to_engine_rgb(extract_slice(img.array, k), img.modality)
    if store is not None:
        store.keep(engine, rgb)
    rng = np.random.default_rng(instance_seed(seed, inst.dataset, inst.case_id, inst.label, k))
    session = Session(engine, rgb, inst.label_name, max_turns=1 + clicks)
    session.add_box(*box_from_mask(gt[k], jitter, rng), source="agent")
    if clicks > 0:
        pol = (OraclePolicy(gt[k], seed=seed) if policy == "oracle"
               else create_policy(policy, **(policy_kwargs or {})))
        session.run(pol)
    refine = None if policy == "oracle" else (lambda: create_policy(policy, **(policy_kwargs or {})))
    res = propagate(engine, img.array, k, session.mask, session.turns[-1].logits if session.turns else None,
                    "axial", img.modality, config=config, policy_factory=refine, store=store)
    seconds = time.perf_counter() - t0
    dices, ious = [round(dice(res.mask, gt), 6)], [round(iou(res.mask, gt), 6)]
    fixed: list[int] = []
    for _ in range(fix_slices):
        res, where = _fix_worst_slice(engine, img, gt, res, policy, policy_kwargs, jitter, rng, fixed, store)
        if where is None:
            break
        fixed.append(where)
        dices.append(round(dice(res.mask, gt), 6))
        ious.append(round(iou(res.mask, gt), 6))
    slices_gt = [i for i in range(gt.shape[0]) if gt[i].any()]
    kept = res.slices or [k]
    return {"dice_by_step": dices, "iou_by_step": ious,
            "dice_start_slice": round(dice(session.mask, gt[k]), 6), "turns": session.mask_turns,
            "slices": len(res.records), "slices_gt": len(slices_gt), "seconds_per_volume": round(seconds, 2),
            "range": [min(kept), max(kept)], "range_gt": [min(slices_gt), max(slices_gt)], "fixed_slices": fixed,
            "noc85": None, "noc90": None, "reached90": None}


FIX_CLICKS = 2  # oracle clicks after the box on a corrected slice (it stops at IoU 0.9), as a person would fix it


def _fix_worst_slice(engine, img, gt, res, policy, policy_kwargs, jitter, rng, fixed, store):
    """One correction of the propagation `res` (see run_propagate); returns (new result, slice) or (res, None)."""
    from ..agent.registry import create_policy
    from ..images import to_engine_rgb
    from ..oracle import box_from_mask
    from ..policies import OraclePolicy
    from ..propagation import Propagation, repropagate
    from ..session import Session

    if policy == "oracle":
        wrong = (res.mask ^ gt).sum(axis=(1, 2))
        wrong[fixed] = 0
        k = int(np.argmax(wrong))
        if wrong[k] == 0:
            return res, None
        if not gt[k].any():  # past the structure's end: the person erases this slice and those beyond it
            mask = res.mask.copy()
            beyond = range(k, mask.shape[0]) if k > res.start else range(0, k + 1)
            mask[list(beyond)] = False
            records = [r for r in res.records if r.index not in beyond]
            return Propagation(res.axis, res.start, mask, records, res.stopped, res.config, res.restarted_at), k
        rgb = to_engine_rgb(img.array[k], img.modality)
        session = Session(engine, rgb, "target", max_turns=1 + FIX_CLICKS)
        session.add_box(*box_from_mask(gt[k], jitter, rng), source="agent")
        session.run(OraclePolicy(gt[k], seed=int(rng.integers(1 << 30)), stop_iou=0.9))
    else:
        scored = [r for r in res.records if r.prior is not None and r.index not in fixed]
        if not scored:
            return res, None
        worst = min(scored, key=lambda r: r.score)
        k = worst.index
        rgb = to_engine_rgb(img.array[k], img.modality)
        session = Session(engine, rgb, "target", max_turns=3)
        session.add_box(*worst.box, source="agent")
        session.run(create_policy(policy, **(policy_kwargs or {})))
    if not session.mask.any():
        return res, None
    return repropagate(engine, img.array, res, k, session.mask, session.turns[-1].logits, img.modality,
                       store=store), k


def _run_auto_instance(engine: Any, inst: Any, locator: Any, concept: str | None, clicks: int, seed: int,
                       policy: str, policy_kwargs: Any, store: Any) -> dict[str, Any]:
    """--protocol auto (issue #16) on the instance's image (3D: its largest slice); on a 3D case the locator also
    picks the start slice by itself, scanning up to 12 slices: "start_slice_hit" = the target is on that slice."""
    from ..images import extract_slice, to_engine_rgb
    from .protocols import run_auto

    rgb, gt = load_instance(inst)
    if store is not None:
        store.keep(engine, rgb)
    rec = run_auto(engine, rgb, gt, locator, concept, clicks,
                   instance_seed(seed, inst.dataset, inst.case_id, inst.label, inst.slice_index), policy=policy,
                   target=inst.label_name, policy_kwargs=policy_kwargs)
    if inst.is_3d and locator.knows(concept):
        img, gt3 = load_volume_instance(inst)

        def plane(k: int) -> np.ndarray:
            p = to_engine_rgb(extract_slice(img.array, k), img.modality)
            if store is not None:
                store.keep(engine, p)
            return p

        loc = locator.locate_volume(engine, plane, gt3.shape[0], concept)
        rec["start_slice"] = loc.slice
        rec["start_slice_hit"] = bool(gt3[loc.slice].any())
    return rec


def _run_with_masks(engine, rgb, gt, protocol, clicks, jitter, seed, policy) -> list[np.ndarray]:
    """Masks per step of one 2D run (for 3D mode): re-runs the session and keeps each turn's mask."""
    from ..oracle import box_from_mask
    from ..policies import OraclePolicy
    from ..session import Session

    rng = np.random.default_rng(seed)
    session = Session(engine, rgb, "target", max_turns=MAX_NOC_CLICKS + 1)
    session.add_box(*box_from_mask(gt, jitter, rng), source="agent")
    masks = [session.mask]
    if protocol != "box":
        oracle = OraclePolicy(gt, rule="ritm", seed=seed, stop_iou=0.90 if protocol in ("noc", "agent") else None)
        limit = clicks if protocol != "noc" else MAX_NOC_CLICKS
        while len(masks) - 1 < limit:
            action = oracle.next_action(session.observe())
            if action.to_dict()["name"] == "stop_action":
                break
            session.act(action)
            masks.append(session.mask)
    return masks


def evaluate(dataset_dirs: list[str | Path], protocol: str, engine: Any = None, engine_name: str | None = None,
             policy: str = "oracle", clicks: int = 5, jitter: float = 0.1, seed: int = 0, limit: int | None = None,
             labels: list[str] | None = None, min_area: int = 0, mode: str = "2d", split: str | None = None,
             embedding_cache: str | Path | None = None, log: Any = None, progress: bool = True,
             policy_kwargs: dict[str, Any] | None = None, propagation: Any = None,
             fix_slices: int = 0, locator_weights: str | Path | None = None,
             sample: int | None = None) -> dict[str, Any]:
    """Evaluate one engine on one or more dataset folders; returns {"summary", "cases", "skipped", "config"}.

    summary also holds "per_dataset" (one summary per dataset). split: "val"/"train" to restrict to that side
    of the patient split (datasets.split_patients), None for every case. sample: N instances per
    dataset drawn at random (seeded by `seed`) from those listed, kept in dataset order.
    """
    if sample is not None and sample < 1:
        raise ValueError(f"--sample must be at least 1, got {sample}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if mode not in ("2d", "3d"):
        raise ValueError(f"--mode must be 2d or 3d, got {mode!r}")
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if engine is None:
        from ..engines import create_engine

        engine = create_engine(engine_name)
    store = None
    if embedding_cache is not None:
        from ..training.cache import EmbeddingCache

        store = EmbeddingCache(embedding_cache)
    locator = None
    if protocol == "auto":  # issue #16: the locator places the first box
        from ..agent.locator import concept_name, load_locator

        locator = load_locator(locator_weights)
    cases: list[dict[str, Any]] = []
    skipped: list[Skip] = []
    per_dataset: dict[str, Any] = {}
    t0 = time.perf_counter()
    for root in dataset_dirs:
        try:
            ds = read_dataset(root)
        except DatasetError as exc:
            log(f"skipped dataset {root}: {exc}")
            skipped.append(Skip(Path(root).name, "*", None, str(exc)))
            continue
        remaining = None if limit is None else max(0, limit - len(cases))
        insts, sk = list_instances(ds, labels=labels, min_area=min_area, mode=mode, split=split, limit=remaining,
                                   seed=2026)
        if sample is not None and len(insts) > sample:
            pick = np.random.default_rng(seed).choice(len(insts), size=sample, replace=False)
            insts = [insts[i] for i in sorted(pick)]
        for s in sk:
            log(f"skipped {s}")
        skipped.extend(sk)
        bar = Progress(len(insts), f"{ds.key} {protocol} {getattr(engine, 'name', '?')}") if progress else None
        ds_cases: list[dict[str, Any]] = []
        for n, inst in enumerate(insts):
            rec = {"dataset": inst.dataset, "case": inst.case_id, "patient": inst.patient, "label": inst.label,
                   "label_name": inst.label_name, "slice": inst.slice_index, "area": inst.area}
            try:
                if protocol == "propagate":
                    if not inst.is_3d:
                        raise ValueError("--protocol propagate needs a 3D dataset")
                    rec.update(run_propagate(engine, inst, clicks, jitter, seed, policy, store, propagation,
                                             policy_kwargs, fix_slices))
                elif inst.is_3d and mode == "3d":
                    if protocol == "agent" and policy != "oracle":
                        raise ValueError("--mode 3d runs the oracle only; evaluate GT-free policies in 2d mode")
                    rec.update(run_volume(engine, inst, protocol, clicks, jitter, seed, policy, store))
                elif protocol == "auto":  # issue #16
                    rec.update(_run_auto_instance(engine, inst, locator, concept_name(inst.label_name), clicks,
                                                  seed, policy, policy_kwargs, store))
                else:
                    rgb, gt = load_instance(inst)
                    if store is not None:
                        store.keep(engine, rgb)
                    rec.update(run_instance(engine, rgb, gt, protocol, clicks, jitter,
                                            instance_seed(seed, inst.dataset, inst.case_id, inst.label,
                                                          inst.slice_index), policy=policy,
                                            target=inst.label_name, policy_kwargs=policy_kwargs))
            except (ValueError, OSError, RuntimeError) as exc:
                msg = f"{inst.dataset}/{inst.case_id}, label {inst.label_name}: {exc}"
                log(f"skipped {msg}")
                skipped.append(Skip(inst.dataset, inst.case_id, inst.label_name, str(exc)))
                continue
            ds_cases.append(rec)
            if bar is not None:
                bar.update(n + 1, f"dice {rec['dice_by_step'][-1]:.3f}")
        cases.extend(ds_cases)
        per_dataset[ds.key] = summarize(ds_cases, protocol)
        per_dataset[ds.key]["name"] = ds.name
        per_dataset[ds.key]["license"] = ds.license
    summary = summarize(cases, protocol)
    summary["per_dataset"] = per_dataset
    summary["skipped"] = len(skipped)
    config = {"protocol": protocol, "engine": getattr(engine, "name", str(engine_name)),
              "encoder": getattr(engine, "encoder_path", "torch"), "policy": policy,
              "clicks": clicks, "jitter": jitter, "seed": seed, "limit": limit, "labels": labels,
              "min_area": min_area, "mode": mode, "sample": sample, "split": split, "click_rule": "ritm",
              "fix_slices": fix_slices,
              "noc_definition": f"clicks after the box to reach IoU >= t; {MAX_NOC_CLICKS} (a failure) if never",
              "datasets": [str(d) for d in dataset_dirs], "elapsed_s": round(time.perf_counter() - t0, 1)}
    return {"summary": summary, "cases": cases, "skipped": [s.to_dict() for s in skipped], "config": config}


def format_table(result: dict[str, Any], steps: tuple[int, ...] = (0, 1, 3, 5)) -> str:
    """A readable text table: one row per dataset (and the total), Dice at the given steps, NoC, degraded.
    The lone protocol adds the lone click's Dice first and the share of clicks the network's answer was kept."""
    summ = result["summary"]
    rows = [(k, v) for k, v in summ.get("per_dataset", {}).items()] + [("all", summ)]
    if "dice_lone" in summ:
        return _lone_table(result, rows)
    head = f"{'dataset':<24}{'n':>5}" + "".join(f"{('box' if s == 0 else f'+{s}'):>8}" for s in steps)
    head += f"{'final':>8}{'NoC85':>7}{'NoC90':>7}{'fail90':>7}{'degr.':>7}"
    lines = [f"engine {result['config']['engine']}, protocol {result['config']['protocol']}, "
             f"jitter {result['config']['jitter']}, seed {result['config']['seed']}", head, "-" * len(head)]

    def f(v: Any, w: int, p: int = 3) -> str:
        return f"{'-':>{w}}" if v is None else f"{v:>{w}.{p}f}"

    for name, s in rows:
        d = s.get("dice_by_step") or []
        line = f"{name:<24}{s['n']:>5}" + "".join(f(d[k] if k < len(d) else None, 8) for k in steps)
        line += f(s.get("dice_final"), 8) + f(s.get("noc85"), 7, 2) + f(s.get("noc90"), 7, 2)
        line += f"{('-' if s.get('fail90') is None else s['fail90']):>7}" + f(s.get("degraded_rate"), 7, 2)
        lines.append(line)
    shares = summ.get("click_updates")
    if shares and set(shares) != {"model"}:
        lines.append("clicks applied as: " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
                     + " (model = the network's whole answer, local = its change at the click, "
                       "disk = it ignored the click)")
    if result.get("skipped"):
        lines.append(f"skipped: {len(result['skipped'])} (see 'skipped' in the JSON)")
    return "\n".join(lines)


def _lone_table(result: dict[str, Any], rows: list[tuple[str, dict[str, Any]]]) -> str:
    """--protocol lone: lone-click Dice (and share >= 0.6), box, +1..+clicks, and the network's kept share."""
    n = result["config"]["clicks"]
    head = (f"{'dataset':<24}{'n':>5}{'lone':>8}{'>=0.6':>7}{'box':>8}" + "".join(f"{f'+{s}':>8}" for s in
                                                                               range(1, n + 1)) + f"{'kept':>7}")
    lines = [f"engine {result['config']['engine']}, protocol lone (a positive click at the target's interior, "
             f"no box; then box jitter {result['config']['jitter']} and {n} oracle clicks), seed "
             f"{result['config']['seed']}", head, "-" * len(head)]
    for name, s in rows:
        d = s.get("dice_by_step") or []
        line = f"{name:<24}{s['n']:>5}" + "".join("       -" if s.get(k) is None else f"{s[k]:>8.3f}"
                                                  for k in ("dice_lone",))
        line += "      -" if s.get("lone_ge_0.6") is None else f"{s['lone_ge_0.6']:>7.0%}"
        line += "".join(f"{d[k]:>8.3f}" if k < len(d) else "       -" for k in range(n + 1))
        line += "      -" if s.get("network_kept") is None else f"{s['network_kept']:>7.0%}"
        lines.append(line)
    lines.append("kept = clicks after the box applied from the network's own answer (model or local), not a painted "
                 "disk")
    return "\n".join(lines)


def plot_dice(results: dict[str, dict[str, Any]], path: str | Path, title: str = "Dice per interaction step"
              ) -> Path:
    """Plot mean Dice per step (step 0 = box) for each result ({label: evaluate() result}) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, res in results.items():
        per = res["summary"].get("per_dataset") or {"all": res["summary"]}
        for ds, s in per.items():
            d = s.get("dice_by_step") or []
            if d:
                ax.plot(range(len(d)), d, marker="o", label=f"{label} {ds}" if len(results) > 1 else ds)
    ax.set_xlabel("step (0 = box, k = after k clicks)")
    ax.set_ylabel("mean Dice")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    from ..fileio import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(result, indent=1))  # never a half-written result, no temp left
