"""GT-free agents: policies that choose the next action from an `Observation` alone.

- `heuristic`: fixed rules over the engine's own outputs (no training); the baseline.
- `features` / `controller` / `learned`: a small network over the frozen engine's features (SFT then GRPO).
- `expert`: expert trajectories from the reference mask (training data only).
- `mllm`: a local multimodal LLM in MedSAM-Agent's tool-call form.

Nothing here is imported by `import MedAgentSegLib`; torch is needed only by the learned controller.
"""
