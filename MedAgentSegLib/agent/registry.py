"""Policies by name, for every front end (issue #25: the rules layer, `policies`, names no agent; this does).

`create_policy(name, ...)`: the oracle and scripted policies of `MedAgentSegLib.policies` and the GT-free agents
of this package. `policy_options(request)`: create_policy's keyword arguments from a request's (or argparse
namespace's) policy_weights / mllm_path / drop / device, refusing one given to a policy it does not apply to.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..actions import Action
from ..policies import GT_FREE_POLICIES, POLICY_NAMES, OraclePolicy, Policy, ScriptedPolicy

__all__ = ["create_policy", "policy_options", "GT_FREE_POLICIES", "POLICY_NAMES"]


_MLLM_LOADED: dict[tuple[str, str], Any] = {}


def create_policy(name: str, gt: np.ndarray | None = None, actions: Iterable[Action] = (), **kwargs: Any) -> Policy:
    """Build a policy by name.

    'oracle' (needs gt; kwargs go to OraclePolicy), 'scripted' (plays `actions`), and the GT-free agents:
    'heuristic' (fixed rules), 'learned' (the shipped controller; kwargs: weights=PATH, device), 'mllm' (a local
    multimodal LLM; kwargs: mllm_path=PATH, device). GT-free policies never receive gt.
    """
    if name == "oracle":
        if gt is None:
            raise ValueError("the oracle policy needs a reference mask: pass --gt MASK (or use --policy scripted "
                             "with --box/--click, or a GT-free agent: --policy learned or heuristic)")
        return OraclePolicy(gt, **kwargs)
    if name == "scripted":
        return ScriptedPolicy(actions)
    if name == "heuristic":
        from .heuristic import HeuristicPolicy

        return HeuristicPolicy(**kwargs)
    if name == "learned":
        from .learned import LearnedPolicy

        return LearnedPolicy(**kwargs)
    if name == "mllm":
        from .mllm import MLLMPolicy

        path = kwargs.pop("mllm_path", None)
        if not path:
            raise ValueError("the mllm policy needs a local model folder: pass --mllm-path DIR (a Qwen2-VL / "
                             "Qwen2.5-VL model saved with save_pretrained; nothing is downloaded)")
        key = (str(path), str(kwargs.get("device", "auto")))
        if key not in _MLLM_LOADED:  # a model is loaded once per process, a policy (its turn state) per session
            _MLLM_LOADED[key] = MLLMPolicy(path, **kwargs)
        first = _MLLM_LOADED[key]
        kwargs.pop("device", None)
        return MLLMPolicy.from_model(first.model, first.processor, **kwargs)
    raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(POLICY_NAMES)}")


def policy_options(request: Any) -> dict[str, Any]:
    """create_policy keyword arguments from --policy-weights / --mllm-path / --drop / --device."""
    out: dict[str, Any] = {}
    if getattr(request, "policy_weights", None):
        if request.policy != "learned":
            raise ValueError("--policy-weights applies to --policy learned only")
        out["weights"] = request.policy_weights
    if getattr(request, "mllm_path", None):
        if request.policy != "mllm":
            raise ValueError("--mllm-path applies to --policy mllm only")
        out["mllm_path"] = request.mllm_path
    if getattr(request, "drop", None) is not None:
        if request.policy != "learned":
            raise ValueError("--drop applies to --policy learned only")
        out["drop"] = request.drop
    if request.policy in ("learned", "mllm"):
        out["device"] = getattr(request, "device", "auto")
    return out
