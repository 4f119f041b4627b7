"""Fine-tuning of the click-aware LiteMedSAM engine (embedding cache + interactive-simulation trainer).

Importing this package does not import torch.
"""

from __future__ import annotations

from .cache import DEFAULT_CACHE, EmbeddingCache, build_cache, image_key
from .trainer import TrainConfig, save_overlay, simulate_click, train

__all__ = ["DEFAULT_CACHE", "EmbeddingCache", "build_cache", "image_key", "TrainConfig", "save_overlay",
           "simulate_click", "train"]
