"""LiteMedSAM's image encoder on the fastest CPU path that keeps the masks.

Paths: "torch" (the reference, fp32), "openvino-f32" and "openvino-bf16" (OpenVINO from PyPI; bf16 needs a CPU
with AVX512-BF16 or AMX). A fast path is used only if `encoder_check.json` (written by `medagentseg
check-encoder` on the validation split) says its Dice stayed within TOLERANCE of torch fp32; "auto" takes the
fastest such path this CPU supports and falls back to torch otherwise (no OpenVINO, a GPU, a failed check).

On an OpenVINO path the mask decoder (and the mask prompt's downscaling) runs in OpenVINO too, in the path's
precision; the check covers encoder and decoder together.
Models are converted on first use from the engine's own (SHA-256-checked) weights and cached under `cache_dir()`,
keyed by a digest of the module's weights; their files' SHA-256 are recorded beside them and checked on every load,
and a mismatch rebuilds them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .weights import sha256_file

__all__ = ["ENCODER_PATHS", "TOLERANCE", "CHECK_FILE", "choose_encoder", "supported_paths", "OpenVINOEncoder",
           "OpenVINODecoder", "cache_dir", "checked_paths", "compile_module", "module_digest"]

ENCODER_PATHS = ("openvino-bf16", "openvino-f32", "torch")  # fastest first
TOLERANCE = 0.005  # Dice, against torch fp32, on every validation dataset
CHECK_FILE = Path(__file__).resolve().parent.parent / "weights" / "encoder_check.json"


def cache_dir() -> Path:
    """Where converted models live: $MEDAGENTSEG_CACHE, else ~/.cache/medagentseg."""
    return Path(os.environ.get("MEDAGENTSEG_CACHE") or Path.home() / ".cache" / "medagentseg")


def _openvino():
    try:
        import openvino
    except ImportError:
        return None
    return openvino


def supported_paths(device: str = "cpu") -> list[str]:
    """The encoder paths this machine can run, fastest first (only torch on a GPU)."""
    if device != "cpu":
        return ["torch"]
    ov = _openvino()
    if ov is None:
        return ["torch"]
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return (["openvino-bf16"] if "BF16" in caps else []) + ["openvino-f32", "torch"]


def checked_paths(check_file: Path = CHECK_FILE) -> set[str]:
    """Paths that passed the validation check (torch always does: it is the reference)."""
    if not check_file.is_file():
        return {"torch"}
    record = json.loads(check_file.read_text())
    return {"torch"} | {p for p, r in record.get("paths", {}).items() if r.get("passed")}


def choose_encoder(requested: str = "auto", device: str = "cpu", check_file: Path = CHECK_FILE) -> str:
    """Resolve --encoder: 'auto' -> the fastest supported path that passed the check; a named path is checked to run
    here (ValueError saying what to use instead)."""
    supported = supported_paths(device)
    if requested == "auto":
        ok = checked_paths(check_file)
        return next(p for p in supported if p in ok)
    if requested not in ENCODER_PATHS:
        raise ValueError(f"unknown encoder {requested!r}; use auto or one of {', '.join(ENCODER_PATHS)}")
    if requested not in supported:
        why = ("OpenVINO is not installed (pip install 'medagentseg[fast]')" if _openvino() is None else
               "this CPU has no bf16 support (AVX512-BF16 / AMX)" if requested == "openvino-bf16" else
               f"the engine runs on {device}, where only torch is used")
        raise ValueError(f"--encoder {requested}: {why}; use --encoder auto or one of {', '.join(supported)}")
    return requested


def module_digest(module: Any) -> str:
    """SHA-256 of a module's parameters and buffers: the key its converted model is cached under."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def compile_module(module: Any, name: str, example: tuple, shapes: list | None, precision: str,
                   root: Path | None = None, log: Any = None) -> tuple[Any, Path]:
    """Convert a torch module to OpenVINO once (cached by its weights' digest and the OpenVINO version, files checked
    against their recorded SHA-256 on every load), then compile it for the CPU. Returns (compiled, folder)."""
    ov = _openvino()
    if ov is None:
        raise ImportError("OpenVINO is not installed: pip install 'medagentseg[fast]', or use --encoder torch")
    version = ov.__version__.split("-")[0]  # "2026.4.1-22982-...-releases/2026/4": no slashes in a folder name
    folder = (root or cache_dir()) / "openvino" / f"litemedsam-{name}-{module_digest(module)[:16]}-ov{version}"
    xml = _load_or_build(ov, module, name, example, shapes, folder, log)
    core = ov.Core()
    hint = {"openvino-bf16": "bf16", "openvino-f32": "f32"}[precision]
    config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": inference_threads()}
    return core.compile_model(core.read_model(str(xml)), "CPU", config), folder


def inference_threads() -> int:
    """OpenVINO's threads follow torch's: a labeling worker limited to 1 thread (label --workers 2 on 2 cores) must
    not run OpenVINO on every core, or two workers fight over the cores and gain nothing."""
    import torch

    return max(1, int(torch.get_num_threads()))


def _load_or_build(ov: Any, module: Any, name: str, example: tuple, shapes: list | None, folder: Path,
                   log: Any) -> Path:
    xml, record = folder / "model.xml", folder / "sha256.json"
    if record.is_file() and xml.is_file():
        try:
            want = json.loads(record.read_text(encoding="utf-8"))
        except (ValueError, RecursionError):  # a damaged record: rebuild, as for a hash that does not match
            want = {"model.xml": ""}
        if isinstance(want, dict) and want and all(
                (folder / str(n)).is_file() and sha256_file(folder / str(n)) == h for n, h in want.items()):
            return xml
        if log:
            log(f"the cached OpenVINO {name} in {folder} does not match its recorded SHA-256; rebuilding it")
    import warnings

    import torch

    if log:
        log(f"building the OpenVINO {name} once, into {folder} (seconds)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=folder.parent))
    try:
        with torch.inference_mode(), warnings.catch_warnings():  # tracer notices are not the user's concern
            warnings.simplefilter("ignore")
            kw = {} if shapes is None else {"input": [ov.PartialShape(s) for s in shapes]}
            model = ov.convert_model(module.eval(), example_input=example, **kw)
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        (tmp / "sha256.json").write_text(json.dumps({n: sha256_file(tmp / n) for n in ("model.xml", "model.bin")}))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)  # whole folder at once: a killed build leaves only a .build-* folder
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return xml


class _Compiled:
    """A compiled model with one infer request per thread (prefetch encodes on its own thread)."""

    def __init__(self, compiled: Any):
        import threading

        self._compiled = compiled
        self._local = threading.local()

    def infer(self, *arrays: np.ndarray) -> list[np.ndarray]:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self._compiled.create_infer_request()
        out = req.infer([np.ascontiguousarray(a, dtype=np.float32) for a in arrays])
        return [np.array(out[i]) for i in range(len(out))]


class OpenVINOEncoder:
    """Callable (1, 3, 256, 256) float tensor -> (1, 256, 64, 64) float32 tensor, compiled for the CPU."""

    def __init__(self, torch_encoder: Any, precision: str, root: Path | None = None, log: Any = None):
        import torch

        compiled, self.model_dir = compile_module(torch_encoder, "encoder", (torch.zeros(1, 3, 256, 256),), None,
                                                  precision, root, log)
        self._model = _Compiled(compiled)
        self.path = precision

    def __call__(self, tensor: Any) -> Any:
        import torch

        return torch.from_numpy(self._model.infer(tensor.cpu().numpy())[0])


class OpenVINODecoder:
    """LiteMedSAM's mask decoder (all four masks and IoU scores, any number of prompt tokens) and its prompt
    encoder's mask downscaling, in OpenVINO at `precision`; the same call shape as the torch modules it replaces.
    The torch prompt encoder still embeds points and boxes (microseconds)."""

    def __init__(self, prompt_encoder: Any, mask_decoder: Any, precision: str = "openvino-f32",
                 root: Path | None = None, log: Any = None):
        import torch

        class _Masks(torch.nn.Module):  # predict_masks without the Python-level choice of masks
            def __init__(self, md):
                super().__init__()
                self.md = md

            def forward(self, emb, pos, sparse, dense):
                return self.md.predict_masks(emb, pos, sparse, dense)

        grid = (1, 256, 64, 64)
        example = (torch.zeros(grid), prompt_encoder.get_dense_pe(), torch.zeros(1, 3, 256), torch.zeros(grid))
        dec, self.model_dir = compile_module(_Masks(mask_decoder), "decoder", example,
                                             [grid, grid, (1, -1, 256), grid], precision, root, log)
        down, _ = compile_module(prompt_encoder.mask_downscaling, "mask-downscaling", (torch.zeros(1, 1, 256, 256),),
                                 None, precision, root, log)
        self._dec, self._down = _Compiled(dec), _Compiled(down)
        self._pos = np.ascontiguousarray(prompt_encoder.get_dense_pe().detach().numpy())

    def dense(self, mask: Any) -> Any:
        """The dense prompt embedding of a (1, 1, 256, 256) mask prompt."""
        import torch

        return torch.from_numpy(self._down.infer(mask.cpu().numpy())[0])

    def __call__(self, emb: Any, sparse: Any, dense: Any, multimask: bool) -> tuple[Any, Any]:
        import torch

        masks, iou = self._dec.infer(emb.cpu().numpy(), self._pos, sparse.cpu().numpy(), dense.cpu().numpy())
        pick = slice(1, None) if multimask else slice(0, 1)
        return torch.from_numpy(masks[:, pick]), torch.from_numpy(iou[:, pick])
