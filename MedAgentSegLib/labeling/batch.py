"""Batch pre-labeling: list the cases, pre-label each with `segment`'s own code path, record it in the manifest.

Each case runs `cli.run_segment` (the same as `medagentseg segment IMAGE --target NAME [--box ...] [--mode 3d]`)
into a hidden work folder `DIR/cases/.<id>.work-*`; its files (`original.seg.nrrd`, `trajectory.json`, `turns.png`,
`propagation.json` in 3D, `record.json`) are then moved into `DIR/cases/<id>` in one rename, and only then is the
manifest rewritten (atomically) by the parent process. A run killed between the two finds `record.json` in the
case folder on the next run and takes it over without doing the case again.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from .case import RASTER, VOLUME, LabelError, cores, init_worker, label_case
from .case import file_stem as _stem
from .case import file_suffix as _suffix
from .case import is_dicom_folder as _is_dicom_folder
from .manifest import DONE, json_lines, new_record, read_manifest, update_manifest

__all__ = ["LabelError", "list_cases", "read_prompts", "label_case", "run_batch"]



def list_cases(source: str | Path) -> tuple[list[tuple[str, str]], list[str]]:
    """([(case_id, image path)], warnings). source: a folder of images / DICOM series folders, a dataset.json, or a
    folder that holds a dataset.json. Duplicate ids are named in the warnings and the later case is left out."""
    src = Path(source)
    warnings: list[str] = []
    if src.is_dir() and (src / "dataset.json").is_file():
        src = src / "dataset.json"
    if not src.exists():
        raise LabelError(f"{source} does not exist; give a folder of images or a dataset.json")
    found: list[tuple[str, str]] = []
    if src.is_file():
        if src.suffix.lower() != ".json":
            raise LabelError(f"{src} is a file; give a folder of cases or a dataset.json")
        try:
            meta = json.loads(src.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise LabelError(f"{src} is not readable JSON ({exc}); fix or regenerate it") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("cases"), list):
            raise LabelError(f"{src} has no cases[] list; each case needs an image (and an id)")
        for i, c in enumerate(meta["cases"]):
            if not isinstance(c, dict) or not isinstance(c.get("image"), str) or not c["image"]:
                warnings.append(f"case #{i} of {src} has no image; left out")
                continue
            found.append((str(c.get("id") or _stem(Path(c["image"]))), str((src.parent / c["image"]).resolve())))
    else:
        for p in sorted(src.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_dir() and _is_dicom_folder(p):
                found.append((p.name, str(p.resolve())))
            elif p.is_file() and _suffix(p) in RASTER + VOLUME:
                found.append((_stem(p), str(p.resolve())))
        stems = [cid for cid, _ in found]  # a.png and a.nii.gz: each keeps its file name as its id
        found = [(Path(path).name if stems.count(cid) > 1 else cid, path) for cid, path in found]
    cases: dict[str, str] = {}
    for cid, path in found:
        if cid in cases:
            warnings.append(f"duplicate case id {cid!r}: {path} left out (it is also {cases[cid]})")
        else:
            cases[cid] = path
    if not cases:
        raise LabelError(f"no cases in {source}: expected NIfTI/NRRD/MHA/PNG/JPEG files, DICOM series folders or a "
                         "dataset.json")
    return list(cases.items()), warnings


def read_prompts(path: str | Path) -> dict[str, dict[str, Any]]:
    """JSON lines {"case": id, "box": [x1, y1, x2, y2], "clicks": [[x, y, 1|0], ...], "slice": k} -> {id: prompt}."""
    prompts: dict[str, dict[str, Any]] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"cannot read --prompts {path} ({exc}); give a JSON-lines file") from None
    for n, rec in json_lines(lines):
        ok = isinstance(rec, dict) and isinstance(rec.get("case"), (str, int))
        box, clicks, k = (rec.get("box"), rec.get("clicks"), rec.get("slice")) if ok else (None, None, None)
        ok = ok and (box is not None or clicks) and (
            box is None or isinstance(box, list) and len(box) == 4 and all(_num(v) for v in box)) and (
            not clicks or isinstance(clicks, list) and all(
                isinstance(c, list) and len(c) == 3 and _num(c[0]) and _num(c[1]) and c[2] in (0, 1, True, False,
                                                                                              "+", "-")
                for c in clicks)) and (k is None or isinstance(k, int) and not isinstance(k, bool))
        if not ok:
            raise LabelError(f"--prompts {path} line {n} is not a prompt: expected {{\"case\": ID, \"box\": "
                             "[x1, y1, x2, y2]} and/or \"clicks\": [[x, y, 1 or 0], ...], optional \"slice\": k")
        prompts[str(rec["case"])] = rec
    return prompts


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _adopt(out: Path, rec: dict[str, Any]) -> dict[str, Any] | None:
    """A case folder whose record.json says pre-labelled (moved in, killed before the manifest said so)."""
    path = out / "cases" / rec["case_id"] / "record.json"
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) and done.get("status") == "pre-labelled" else None


def _lock(out: Path) -> Any:
    """One `label` at a time per folder: a second one would pre-label the same pending cases again."""
    fh = open(out / ".label.lock", "a")  # noqa: SIM115 - kept open while the batch runs
    try:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # not POSIX: no lock
        pass
    except OSError:
        fh.close()
        raise LabelError(f"another `medagentseg label` is writing {out} now; wait for it to end (or stop it), then "
                         "run this again") from None
    return fh


def run_batch(source: str | Path, target: str, out: str | Path, prompts: dict[str, dict[str, Any]] | None = None,
              workers: int = 1, options: dict[str, Any] | None = None, retry_failed: bool = False,
              log: Callable[[str], None] | None = None, ray: str | None = None) -> dict[str, dict[str, Any]]:
    """Pre-label every case of `source` not yet done in `out`; returns the manifest's records. ray: a Ray
    address (or "auto") to run the cases on Ray actors instead of local processes; workers is then the number of
    actors (0: one per CPU of the cluster)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(out)
    cases, warnings = list_cases(source)
    for w in warnings:
        log(f"medagentseg label: warning: {w}")
    if ray:
        from .ray_runner import check_address

        check_address(ray)  # a dead address or no Ray is said before anything is written
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)  # held until the batch ends; a kill -9 releases it too
    try:
        return _run(cases, target, out, prompts, workers, options, retry_failed, log, ray)
    finally:
        lock.close()


def _run(cases: list[tuple[str, str]], target: str, out: Path, prompts: dict[str, dict[str, Any]] | None,
         workers: int, options: dict[str, Any] | None, retry_failed: bool,
         log: Callable[[str], None], ray: str | None = None) -> dict[str, dict[str, Any]]:
    records = read_manifest(out)
    other = {r["target"] for r in records.values() if r.get("target") not in (None, target)}
    if other:
        raise LabelError(f"{out} holds pre-labels of {', '.join(sorted(other))}, not {target}; give another --out "
                         "for another target")
    for cid, image in cases:
        records.setdefault(cid, new_record(cid, image, target))
    for stale in (out / "cases").glob(".*.work-*") if (out / "cases").is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True)  # a killed run's half-done case: never part of the outputs
    prompts = prompts or {}
    unknown = sorted(set(prompts) - {cid for cid, _ in cases})
    if unknown:  # a typo in a case id would otherwise leave that case to the autonomous agent unnoticed
        log(f"medagentseg label: warning: --prompts names {len(unknown)} case(s) not in the input: "
            + ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else ""))
    todo = []
    for cid, image in cases:
        rec = records[cid]
        if rec["status"] == "pending" and (done := _adopt(out, rec)) is not None:
            records[cid] = rec = done
        if rec["status"] in DONE and not (retry_failed and rec["status"] == "failed"):
            continue
        if rec["status"] == "needs prompt" and cid not in prompts:
            continue
        todo.append({"case_id": cid, "image": image, "target": target, "out": str(out), "prompt": prompts.get(cid),
                     "options": dict(options or {})})

    def merge(current: dict[str, dict[str, Any]]) -> None:  # a reviewer may have decided since the read above
        for cid, rec in records.items():
            if cid not in current or current[cid]["status"] == "pending":
                current[cid] = rec

    records = update_manifest(out, merge)
    skipped = len(cases) - len(todo)
    log(f"medagentseg label: {len(cases)} cases, {skipped} already done, {len(todo)} to pre-label with "
        f"{f'Ray ({ray})' if ray else f'{workers} worker(s)'}; manifest {out / 'manifest.jsonl'}")
    t0 = time.perf_counter()
    counts: dict[str, int] = {}

    def record(rec: dict[str, Any]) -> None:
        records[rec["case_id"]] = rec
        update_manifest(out, lambda current: current.update({rec["case_id"]: rec}))  # only this case: keeps reviews
        counts[rec["status"]] = counts.get(rec["status"], 0) + 1
        n = sum(counts.values())
        rate = n / max(time.perf_counter() - t0, 1e-6) * 60
        eta = (len(todo) - n) / rate * 60 if rate else 0
        why = f" ({rec['reason'][:80]})" if rec.get("reason") else ""
        log(f"[{n}/{len(todo)}] {rec['case_id']}: {rec['status']}{why}; {rate:.1f} cases/min, ETA "
            f"{int(eta // 60)}:{int(eta % 60):02d}")

    if ray:
        from .ray_runner import run_on_ray

        run_on_ray(ray, todo, record, workers, log)
    elif workers <= 1:
        for task in todo:
            record(label_case(task))
    else:
        threads = max(1, cores() // workers)
        pool = ProcessPoolExecutor(max_workers=workers, initializer=init_worker, initargs=(threads,))
        try:
            pending = {pool.submit(label_case, task): task for task in todo}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    task = pending.pop(fut)
                    try:
                        rec = fut.result()
                    except Exception as exc:  # the worker died (killed, out of memory): the case is recorded
                        rec = new_record(task["case_id"], task["image"], target)
                        rec.update(status="failed", reason=f"worker process failed: {exc or type(exc).__name__}")
                    record(rec)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    if todo:
        dt = time.perf_counter() - t0
        log(f"medagentseg label: {len(todo)} cases in {dt:.1f} s ({len(todo) / dt * 60:.1f} cases/min): "
            + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return records
