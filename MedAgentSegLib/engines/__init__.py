"""Engine registry. `create_engine(name)` builds one; heavy imports happen only then."""

from __future__ import annotations

import json
from pathlib import Path

from .base import Engine, EngineError, Prediction, Prompts, resolve_device

__all__ = ["Engine", "EngineError", "Prediction", "Prompts", "resolve_device", "create_engine", "engine_names",
           "DEFAULT_ENGINE", "CLICK_WEIGHTS"]

# Fine-tuned prompt encoder + mask decoder of the click-aware engine, with its model card beside it.
CLICK_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "litemedsam_click.pt"


def _click_weights_available(weights: Path = CLICK_WEIGHTS) -> bool:
    """The overlay and its model card (.json beside it) are both there."""
    return weights.is_file() and weights.with_suffix(".json").is_file()


DEFAULT_ENGINE = "litemedsam-click" if _click_weights_available() else "litemedsam"


def engine_names() -> list[str]:
    names = ["litemedsam", "litemedsam-local", "sam_vit_b", "sam_vit_l", "sam_vit_h"]
    if _click_weights_available():
        names = ["litemedsam-click"] + names + ["litemedsam-click-global"]
    return names


_ENGINES: dict[tuple, Engine] = {}
CLICK_ENGINES = ("litemedsam-click", "litemedsam-click-global", "litemedsam-click-noboxes")


def create_engine(name: str | None = None, checkpoint: str | Path | None = None, device: str = "auto",
                  reuse: bool = True, click_weights: str | Path | None = None, encoder: str = "torch") -> Engine:
    """Build an engine by name: 'litemedsam-click' (default when shipped), 'litemedsam', 'sam_vit_b|l|h'.

    'litemedsam-click-global' is the click-aware engine without click-local updates (the decoder's answer
    replaces the whole mask on every click), kept to measure what the local updates add; 'litemedsam-local' is
    the original LiteMedSAM with the click-local updates, to measure what the fine-tuning adds.
    'litemedsam-click-noboxes' (not listed: a measuring variant, not offered to users) is the click-aware engine
    without reading clicks through boxes (`click_rules.boxes`): a lone click answered by LiteMedSAM's own decoder and
    an ignored corrective click painted as a disk, as before issue #24; `eval` compares the two.

    checkpoint: for SAM, the path of Meta's checkpoint (required); for LiteMedSAM, an optional full state dict.
    click_weights: for the click-aware engines, another overlay written by `train-engine` (its model card .json
    beside it) instead of the shipped one, to evaluate a new run before shipping it.
    reuse: return the engine already built with the same arguments in this process (sessions re-set their
    own image before each prediction, so sharing is safe on one thread).
    encoder: LiteMedSAM's image encoder path: "torch" (the reference, what evaluations use unless told), "auto"
    (the fastest path checked on the validation split; what the product uses), or a named one (`fast_encoder`).
    SAM engines run torch whatever is asked.
    """
    name = name or DEFAULT_ENGINE
    key = (name, str(checkpoint), device, _file_stamp(click_weights), encoder)
    if reuse and key in _ENGINES:
        return _ENGINES[key]
    engine = _build(name, checkpoint, device, click_weights, encoder)
    if reuse:
        _ENGINES[key] = engine
    return engine


def _file_stamp(weights: str | Path | None) -> tuple | None:
    """Path and modification times of an overlay and its card, so a rewritten file is loaded (and checked) anew."""
    if weights is None:
        return None
    paths = (Path(weights), Path(weights).with_suffix(".json"))
    return tuple((str(q.resolve()), q.stat().st_mtime_ns if q.is_file() else None) for q in paths)


def _read_card(path: Path) -> dict:
    """A model card: a JSON object (nothing in it is executed); EngineError naming the file otherwise."""
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise EngineError(f"the model card {path} is not readable JSON ({type(exc).__name__}); give the card that "
                          "`medagentseg train-engine` wrote beside the weights") from None
    if not isinstance(card, dict):
        raise EngineError(f"the model card {path} is not a JSON object; give the card that `medagentseg "
                          "train-engine` wrote beside the weights")
    return card


def _build(name: str, checkpoint: str | Path | None, device: str, click_weights: str | Path | None,
           encoder: str = "torch") -> Engine:
    if click_weights is not None and name not in CLICK_ENGINES:
        raise EngineError(f"click weights only apply to litemedsam-click and litemedsam-click-global, not {name!r}")
    if name == "litemedsam":
        from .litemedsam import LiteMedSAMEngine

        return LiteMedSAMEngine(checkpoint=checkpoint, device=device, encoder=encoder)
    if name == "litemedsam-local":
        from .litemedsam import LiteMedSAMEngine

        return LiteMedSAMEngine(checkpoint=checkpoint, device=device, name=name, click_update="local",
                                encoder=encoder)
    if name in CLICK_ENGINES:
        weights = CLICK_WEIGHTS if click_weights is None else Path(click_weights)
        if not _click_weights_available(weights):
            fix = ("reinstall MedAgentSeg or use --engine litemedsam" if click_weights is None else
                   "give the .pt that `medagentseg train-engine --out` wrote (it writes the card beside it)")
            raise EngineError(f"the click-aware weights {weights} or their model card "
                              f"{weights.with_suffix('.json').name} are missing; {fix}")
        from .litemedsam import LiteMedSAMEngine
        from .weights import verify_sha256

        card = _read_card(weights.with_suffix(".json"))
        verify_sha256(weights, card.get("sha256"))  # a tampered overlay is refused before any model is built
        return LiteMedSAMEngine(checkpoint=checkpoint, device=device, decoder_weights=weights,
                                decoder_sha256=card.get("sha256"), name=name,
                                base_first_turn=card.get("first_turn") == "base",
                                click_update="global" if name.endswith("-global") else card.get("click_update",
                                                                                                 "local"),
                                encoder=encoder, click_boxes=not name.endswith("-noboxes"))
    if name.startswith("sam_"):
        from .sam import SAMEngine

        return SAMEngine(name[4:], checkpoint, device=device)
    raise EngineError(f"unknown engine {name!r}; choose one of: {', '.join(engine_names())}")
