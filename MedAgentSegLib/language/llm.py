"""Optional LLM parser plug-in (local model path only; never downloads).

The deterministic :class:`~MedAgentSegLib.language.parser.RequestParser` is the default. An LLM parser only
rewrites the request into a short canonical sentence ("segment the left kidney on CT") that the
deterministic parser then reads, so the vocabulary, codes and routing stay the same and explainable.

Status: the protocol and the adapter are tested with an injected ``generate`` function. Loading a real
local model (``transformers``, ``local_files_only=True``) is implemented but untested in this repository.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from .parser import ParsedRequest, RequestParser

__all__ = ["LLMParser", "LocalLLMParser", "PROMPT"]

PROMPT = ("Rewrite the clinician's request as one short line in the form '<command> the <side> <structure> on "
          "<modality>' using standard anatomical names; command is one of segment, refine, undo, accept, reject, "
          "stop, next slice, previous slice, whole volume. Leave out what is not said.\nRequest: {text}\nLine:")


@runtime_checkable
class LLMParser(Protocol):
    """Anything with ``parse(text, image_metadata=None) -> ParsedRequest``."""

    def parse(self, text: str | None, image_metadata: dict | str | None = None) -> ParsedRequest: ...


class LocalLLMParser:
    """LLM front end for the deterministic parser.

    ``model_path``: a local folder with a causal LM (loaded with ``local_files_only=True``); or ``generate``:
    a function ``prompt -> str`` (e.g. the project's MLLM adapter). If the LLM's line yields no target or
    command, the original text is parsed instead, so the chat never gets worse than the rule parser.
    """

    def __init__(self, model_path: str | os.PathLike | None = None,
                 generate: Callable[[str], str] | None = None, parser: RequestParser | None = None) -> None:
        if generate is None:
            if model_path is None:
                raise ValueError("LocalLLMParser needs model_path (a local folder) or a generate function.")
            path = Path(model_path)
            if not path.is_dir():
                raise FileNotFoundError(f"LLM model folder not found: {path}. Only local models are used; nothing "
                                        "is downloaded.")
            generate = _transformers_generate(path)
        self._generate = generate
        self.parser = parser or RequestParser()

    def parse(self, text: str | None, image_metadata: dict | str | None = None) -> ParsedRequest:
        """Parse via the LLM's canonical line; fall back to the original text."""
        direct = self.parser.parse(text, image_metadata)
        if not text or not text.strip():
            return direct
        try:
            line = (self._generate(PROMPT.format(text=text.strip())) or "").strip().splitlines()[0]
        except (RuntimeError, ValueError, OSError, IndexError) as e:
            direct.warnings.append(f"LLM parser failed ({type(e).__name__}); used the rule parser.")
            return direct
        via = self.parser.parse(line, image_metadata)
        if via.command in ("unknown", "empty") or (direct.targets and not via.targets):
            return direct
        via.text = text
        via.notes.insert(0, f"LLM line: {line!r}")
        return via


def _transformers_generate(path: Path) -> Callable[[str], str]:
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ImportError("The LLM parser needs transformers: pip install transformers") from e
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)

    def generate(prompt: str) -> str:
        ids = tok(prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=32, do_sample=False)
        return tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)

    return generate
