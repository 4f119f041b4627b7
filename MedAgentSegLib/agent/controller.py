"""The learned controller: a small network over the frozen engine's image embedding and the session state maps.

It sits outside the engine (the engine is not changed). Inputs: the (256, 64, 64) image embedding and the
(STATE_CHANNELS, 64, 64) state maps (`features.state_maps`). Outputs:
- heat: (2, 64, 64) logits of where to click, channel 0 = positive, 1 = negative (one softmax over both);
- action: (3,) logits of ACTIONS = (click, rebox, stop);
- value: a logit of the current mask's IoU with the target (sigmoid -> 0..1), the policy's own confidence.

About 55k parameters and 0.2 GMAC per call (a 1x1 reduction of the embedding, four dilated 3x3 layers at
64x64).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .features import STATE_CHANNELS

__all__ = ["ACTIONS", "build_controller", "load_controller", "CONTROLLER_ARCH"]

ACTIONS = ("click", "rebox", "stop")
CONTROLLER_ARCH = {"emb_channels": 256, "state_channels": STATE_CHANNELS, "width": 32}


def build_controller(emb_channels: int = 256, state_channels: int = STATE_CHANNELS, width: int = 32):
    import torch
    from torch import nn

    class Controller(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.reduce = nn.Conv2d(emb_channels, width, 1)
            layers: list[nn.Module] = []
            cin = width + state_channels
            for d in (1, 2, 4, 8):
                layers += [nn.Conv2d(cin, width, 3, padding=d, dilation=d), nn.GroupNorm(4, width), nn.GELU()]
                cin = width
            self.body = nn.Sequential(*layers)
            self.heat = nn.Conv2d(width + state_channels, 2, 1)
            self.head = nn.Sequential(nn.Linear(3 * width + 3, 64), nn.GELU(), nn.Linear(64, len(ACTIONS) + 1))

        def forward(self, emb: torch.Tensor, state: torch.Tensor):
            """emb: (B, 256, 64, 64); state: (B, C, 64, 64). -> heat (B, 2, 64, 64), action (B, 3), value (B,)."""
            x = self.body(torch.cat([self.reduce(emb), state], 1))
            valid = state[:, 6:7]
            heat = self.heat(torch.cat([x, state], 1))
            heat = heat.masked_fill(valid < 0.5, -1e4)
            prob = state[:, 0:1]
            n_valid = valid.sum((2, 3)).clamp(min=1)
            mean_all = (x * valid).sum((2, 3)) / n_valid
            mean_in = (x * prob * valid).sum((2, 3)) / (prob * valid).sum((2, 3)).clamp(min=1e-3)
            edge = state[:, 2:3] * valid
            mean_edge = (x * edge).sum((2, 3)) / edge.sum((2, 3)).clamp(min=1e-3)
            scalars = state[:, 7:10, 0, 0]
            out = self.head(torch.cat([mean_all, mean_in, mean_edge, scalars], 1))
            return heat, out[:, :len(ACTIONS)], out[:, len(ACTIONS)]

    return Controller()


def load_controller(path: str | Path, sha256: str | None, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load controller weights written by train-policy: SHA-256 checked, weights_only, shapes checked.

    Returns (module in eval mode, architecture dict). Raises ValueError naming what to do on any mismatch.
    """
    import torch

    from ..engines.base import EngineError
    from ..engines.weights import load_verified_state

    try:
        state = load_verified_state(path, sha256)
    except EngineError as exc:  # a wrong hash, or not a torch file: say which file to give instead
        raise ValueError(f"policy weights: {exc}; the policy needs the .pt that `medagentseg train-policy` wrote"
                         ) from None
    except Exception as exc:  # a file that is not a torch state dict at all
        raise ValueError(f"policy weights {path} could not be read as a state dict ({type(exc).__name__}); give the "
                         ".pt that `medagentseg train-policy` wrote") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"policy weights {path} are not a state dict of tensors; give the .pt that "
                         "`medagentseg train-policy` wrote")
    net = build_controller(**CONTROLLER_ARCH)
    want = net.state_dict()
    bad = [k for k in want if k not in state or tuple(state[k].shape) != tuple(want[k].shape)]
    extra = [k for k in state if k not in want]
    if bad or extra:
        what = bad[0] if bad else extra[0]
        raise ValueError(f"policy weights {path} do not fit the controller (shape or name of {what!r} differs); "
                         "they were written for another architecture: retrain with `medagentseg train-policy`")
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.to(device).eval(), dict(CONTROLLER_ARCH)
