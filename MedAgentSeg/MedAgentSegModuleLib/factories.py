"""Which engine and policy a session gets: the choices, the defaults, the checks made before anything is created,
and the engines and locator built (once) on the worker thread."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .context import AgentError

__all__ = ["POLICY_CHOICES", "GT_FREE", "BUILT_ON_WORKER", "guess_modality", "learned_weights_available",
           "default_policy", "engine_choices", "default_engine", "to_engine_rgb", "Factories"]

#: the policies the module offers: the GT-free agents first, then the reference-driven oracle and the person
POLICY_CHOICES = ("learned", "heuristic", "oracle", "scripted", "mllm")
GT_FREE = ("heuristic", "learned", "mllm")  # as MedAgentSegLib.policies.GT_FREE_POLICIES
BUILT_ON_WORKER = ("learned", "mllm")  # they load weights or a model: built on the worker thread


def guess_modality(volume_array: np.ndarray) -> str:
    """"CT" when the intensities look like Hounsfield units, else "MR" (percentile stretch)."""
    lo, hi = float(np.min(volume_array)), float(np.max(volume_array))
    return "CT" if lo <= -500.0 and hi >= 200.0 else "MR"


def learned_weights_available() -> bool:
    """True when the shipped controller of the `learned` policy and its card (.json) are installed."""
    try:
        from MedAgentSegLib.agent import learned
    except ImportError:
        return False
    weights = Path(learned.POLICY_WEIGHTS)
    return weights.is_file() and weights.with_suffix(".json").is_file()


def default_policy(reference_segment_id: str | None = None) -> str:
    """The policy to use when none is chosen: "oracle" with a reference segment, else a GT-free agent
    ("learned" when its weights are installed, else "heuristic")."""
    if reference_segment_id:
        return "oracle"
    return "learned" if learned_weights_available() else "heuristic"


def engine_choices() -> list[str]:
    """Every engine the library can build here (the click-aware one first when its weights are shipped)."""
    from MedAgentSegLib.engines import engine_names

    return engine_names()


def default_engine() -> str:
    """The library's default: the click-aware LiteMedSAM when shipped (plain LiteMedSAM gets worse with clicks)."""
    from MedAgentSegLib.engines import DEFAULT_ENGINE

    return DEFAULT_ENGINE



def to_engine_rgb(plane: np.ndarray, modality: str, window: Any) -> np.ndarray:
    from MedAgentSegLib.images import to_engine_rgb as rgb

    return rgb(np.ascontiguousarray(plane), modality=modality, window=window)


class Factories:
    """Builds engines (cached per name and options; on the worker thread), policies and the locator.

    engine_factory(name, **options) -> Engine (default: MedAgentSegLib.engines.create_engine). policy_factory(name,
    gt, **options) -> Policy (default: MedAgentSegLib.agent.registry.create_policy). locator_factory() -> Locator
    (default: the shipped one)."""

    def __init__(self, engine_factory: Callable[..., Any] | None = None,
                 policy_factory: Callable[..., Any] | None = None, device: str = "auto",
                 locator_factory: Callable[[], Any] | None = None):
        self.engine_factory = engine_factory
        self.policy_factory = policy_factory
        self.device = device
        self.locator_factory = locator_factory
        self.engines: dict[tuple, Any] = {}  # (name, options) -> engine; touched only on the worker thread
        self.locator: Any = None  # loaded once, on the worker

    def make_policy(self, policy: Any, gt: np.ndarray | None, options: dict[str, Any] | None = None,
                     device: str | None = None) -> Any:
        """A policy object from a name (main thread, or the worker thread for `BUILT_ON_WORKER` names)."""
        if not isinstance(policy, str):
            if not hasattr(policy, "next_action"):
                raise AgentError(f"{policy!r} is not a policy (it has no next_action method).")
            return policy
        options = dict(options or {})
        factory = self.policy_factory
        if factory is None:
            from MedAgentSegLib.agent.registry import create_policy

            if policy in BUILT_ON_WORKER and device is not None:
                options.setdefault("device", device)  # the policy's tensors live where the engine's do

            def factory(name, ref, **kw):
                return create_policy(name, gt=ref if name == "oracle" else None, **kw)
        try:
            return factory(policy, gt, **options) if options else factory(policy, gt)
        except ValueError as exc:
            raise AgentError(f"Policy '{policy}' cannot be used: {exc}") from None
        except ImportError as exc:
            raise AgentError(f"Policy '{policy}' cannot be used: {exc}. Install the missing package into "
                             "Slicer's Python (Python console: slicer.util.pip_install(...)), or choose another "
                             "policy.") from None

    def check_policy_files(self, policy: str, options: dict[str, Any]) -> None:
        """Main thread, before anything is created: the files a `learned` / `mllm` policy loads exist."""
        if self.policy_factory is not None:
            return
        if policy == "learned":
            from MedAgentSegLib.agent.learned import POLICY_WEIGHTS

            weights = Path(options.get("weights") or POLICY_WEIGHTS)
            if not weights.is_file() or not weights.with_suffix(".json").is_file():
                raise AgentError(f"Policy 'learned' cannot be used: its weights {weights.name} or their card "
                                 f"{weights.with_suffix('.json').name} are not installed in {weights.parent}. "
                                 "Choose the 'heuristic' policy (GT-free, no weights), or reinstall MedAgentSeg.")
        elif policy == "mllm":
            path = str(options.get("mllm_path") or "").strip()
            if not path:
                raise AgentError("Policy 'mllm' needs a local model folder: fill in 'MLLM folder' with a Qwen2-VL / "
                                 "Qwen2.5-VL folder saved with save_pretrained (nothing is downloaded), or choose "
                                 "another policy.")
            from MedAgentSegLib.agent.mllm import check_model_folder

            try:
                check_model_folder(path)
            except ValueError as exc:
                raise AgentError(f"Policy 'mllm' cannot be used: {exc}") from None

    def check_engine(self, engine: str, options: dict[str, Any]) -> None:
        """Main thread, before anything is created: a known engine, and SAM's checkpoint file given and there."""
        if self.engine_factory is not None:
            return
        if engine not in engine_choices():
            raise AgentError(f"Unknown engine '{engine}': choose one of {', '.join(engine_choices())}.")
        checkpoint = options.get("checkpoint")
        if engine.startswith("sam_") and not checkpoint:
            raise AgentError(f"Engine '{engine}' needs Meta's SAM checkpoint file (e.g. sam_vit_b_01ec64.pth, "
                             "downloaded once by you): give its path in 'SAM checkpoint', or choose "
                             f"'{default_engine()}'.")
        if checkpoint and not Path(checkpoint).is_file():
            raise AgentError(f"The checkpoint file {checkpoint} does not exist: give the path of the downloaded "
                             "file in 'SAM checkpoint'.")

    def engine(self, name: str, options: dict[str, Any] | None = None) -> Any:  # worker thread
        options = dict(options or {})
        key = (name, tuple(sorted((k, str(v)) for k, v in options.items())))
        eng = self.engines.get(key)
        if eng is None:
            if self.engine_factory is not None:
                eng = self.engine_factory(name, **options) if options else self.engine_factory(name)
            else:
                from MedAgentSegLib.engines import create_engine

                eng = create_engine(name, device=self.device, encoder="auto", **options)  # the checked fast path
            self.engines[key] = eng
        return eng

    def load_locator(self) -> Any:  # worker thread
        if self.locator is None:
            if self.locator_factory is not None:
                self.locator = self.locator_factory()
            else:
                from MedAgentSegLib.agent.locator import load_locator

                self.locator = load_locator()
        return self.locator
