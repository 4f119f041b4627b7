"""A local multimodal LLM (Qwen2-VL / Qwen2.5-VL family) as a policy, in MedSAM-Agent's tool-call form.

Each turn the model sees the image with the current mask as a green overlay, the target's name and the turn
count, and answers with exactly one `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (coordinates on
the 0..999 grid, x first). A reply without exactly one valid call is retried once, with a message saying what
was wrong; a second bad reply makes the policy stop, with the reason in `last_decision`.

The model is loaded only from a local folder (`save_pretrained` layout, `local_files_only=True`); nothing is
downloaded. Needs `torch` and `transformers` (not imported by `import MedAgentSegLib`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..actions import Action, AddBBox, AddPoint, StopAction, ToolCallError, parse_tool_call, tool_schemas
from ..observation import Decision, Observation, overlay_observation

__all__ = ["MLLMPolicy", "SUPPORTED_MODEL_TYPES", "SYSTEM_PROMPT", "check_model_folder"]

SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")

SYSTEM_PROMPT = (
    "You are a professional segmentation annotator. You segment '{target}' in a medical image by driving a "
    "promptable segmentation model with tools. At first no mask exists: create one with a tool (add_bbox around "
    "the target, or add_point inside it), then refine it with add_point: positive where the target is missed, "
    "negative on tissue that is wrongly included. Each turn you see the image with the current mask as a green "
    "overlay. Call stop_action when the mask covers the target well. Coordinates are integers on a 0..999 grid "
    "over the image, x first (x = column from the left, y = row from the top). Make exactly one function call "
    "per turn, inside <tool_call></tool_call> tags: "
    '<tool_call>{{"name": <function-name>, "arguments": <args-json-object>}}</tool_call>. '
    "You have at most {max_turns} mask-producing turns."
)

_TOOLS_TEXT = ("\n\n# Tools\n\nYou are provided with function signatures within <tools></tools> XML tags:\n"
               "<tools>\n{tools}\n</tools>")

_HINT = ("give --mllm-path a local folder holding a Qwen2-VL/Qwen2.5-VL model saved with save_pretrained "
         "(config.json, weights, tokenizer and processor files); nothing is downloaded")


def check_model_folder(model_path: str | Path) -> Path:
    """Check that `model_path` is a local Qwen2-VL/Qwen2.5-VL folder; return it, or raise ValueError saying why."""
    path = Path(model_path).expanduser()
    if not path.exists():
        raise ValueError(f"MLLM model path {str(path)!r} does not exist; {_HINT}")
    if not path.is_dir():
        raise ValueError(f"MLLM model path {str(path)!r} is a file, not a model folder; {_HINT}")
    config = path / "config.json"
    if not config.is_file():
        raise ValueError(f"{str(path)!r} is not a Qwen2-VL/Qwen2.5-VL model folder (no config.json); {_HINT}")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{str(config)!r} is not a readable JSON model config ({exc}); {_HINT}") from None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{str(path)!r} holds a {model_type!r} model, not Qwen2-VL/Qwen2.5-VL "
                         f"(model_type one of {', '.join(SUPPORTED_MODEL_TYPES)}); {_HINT}")
    return path


def _describe(action: Action) -> str:
    if isinstance(action, AddBBox):
        return f"add_bbox {list(action.bbox_2d)}"
    if isinstance(action, AddPoint):
        return f"add_point {action.point_type} at ({action.point_2d[0]}, {action.point_2d[1]})"
    return "stop_action"


def _short(exc: Exception) -> str:
    """The error's reason without the list of valid calls (for the chat)."""
    return str(exc).split("; valid calls:")[0]


class MLLMPolicy:
    """Policy backed by a local Qwen2-VL/Qwen2.5-VL model: next_action(Observation) -> Action.

    model_path: local folder saved with `save_pretrained` (ValueError if it is not one).
    device: "auto" (cuda, then mps, then cpu) or a torch device name.
    max_new_tokens: generation limit per reply. generate_kwargs: extra `model.generate` arguments (e.g.
    `logits_processor`); generation is greedy (`do_sample=False`) unless they say otherwise.
    After each `next_action`: `last_decision` (observation.Decision) says why, `last_replies` holds the raw
    reply text of each generation of that turn (one, or two after a retry).
    """

    def __init__(self, model_path: str | Path, device: str = "auto", max_new_tokens: int = 128,
                 generate_kwargs: dict[str, Any] | None = None):
        path = check_model_folder(model_path)
        try:
            import torch  # noqa: F401
            from transformers import AutoModelForImageTextToText, AutoProcessor
        except ImportError as exc:
            raise ImportError(f"the MLLM policy needs transformers and torch ({exc}); "
                              "pip install transformers") from exc
        from ..engines.base import resolve_device

        try:
            model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype="auto")
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"could not load a Qwen2-VL/Qwen2.5-VL model from {str(path)!r} ({exc}); {_HINT}") from exc
        if not getattr(processor, "chat_template", None):
            raise ValueError(f"{str(path)!r} has no chat template (chat_template.jinja or chat_template.json); {_HINT}")
        self._setup(model.to(resolve_device(device)).eval(), processor, max_new_tokens, generate_kwargs)

    @classmethod
    def from_model(cls, model: Any, processor: Any, max_new_tokens: int = 128,
                   generate_kwargs: dict[str, Any] | None = None) -> MLLMPolicy:
        """Wrap an already loaded model (with `generate`) and its processor (chat template + image processor)."""
        self = cls.__new__(cls)
        self._setup(model, processor, max_new_tokens, generate_kwargs)
        return self

    def _setup(self, model: Any, processor: Any, max_new_tokens: int, generate_kwargs: dict[str, Any] | None) -> None:
        self.model, self.processor = model, processor
        self.max_new_tokens = int(max_new_tokens)
        self.generate_kwargs = dict(generate_kwargs or {})
        self.last_decision: Decision | None = None
        self.last_replies: list[str] = []
        template = getattr(processor, "chat_template", None) or ""
        self.template_has_tools = "tools" in (template if isinstance(template, str) else json.dumps(template))

    # -- prompt ----------------------------------------------------------------------------------------
    def system_text(self, obs: Observation) -> str:
        text = SYSTEM_PROMPT.format(target=obs.target, max_turns=obs.max_turns)
        if not self.template_has_tools:
            text += _TOOLS_TEXT.format(tools="\n".join(json.dumps(t) for t in tool_schemas()))
        return text

    def messages(self, obs: Observation) -> list[dict[str, Any]]:
        """The chat for one turn: system text, then the user message with the overlay image and the turn state."""
        history = [{"name": a["name"], "arguments": a["arguments"]} for a in obs.history]
        state = ("No mask exists yet: create one with a tool." if not obs.mask.any()
                 else "The current mask is shown in green.")
        user = (f"Target: {obs.target}. Turn {obs.mask_turns + 1}: {obs.mask_turns} of {obs.max_turns} "
                f"mask-producing turns used. {state} Actions so far: {json.dumps(history)}. "
                "Reply with exactly one tool call.")
        return [{"role": "system", "content": [{"type": "text", "text": self.system_text(obs)}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user}]}]

    # -- generation ------------------------------------------------------------------------------------
    def generate(self, messages: list[dict[str, Any]], image: Any) -> str:
        """One reply to `messages` about `image` (PIL, (H, W) RGB); the decoded text excludes the prompt."""
        import torch

        extra = {"tools": tool_schemas()} if self.template_has_tools else {}
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)
        inputs = self.processor(text=[text], images=[image], return_tensors="pt").to(self.model.device)
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": False, **self.generate_kwargs}
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        new = out[0, inputs["input_ids"].shape[1]:]  # (new_tokens,)
        return self.processor.tokenizer.decode(new, skip_special_tokens=True)

    @staticmethod
    def parse(reply: str) -> Action:
        """Exactly one tool call in `reply` -> Action; ToolCallError otherwise."""
        n = max(reply.count("<tool_call>"), reply.count("</tool_call>"))
        if n > 1:
            raise ToolCallError(f"found {n} tool calls, expected exactly one per turn")
        try:
            return parse_tool_call(reply)
        except TypeError as exc:  # e.g. a number where a list belongs
            raise ToolCallError(f"malformed arguments ({exc})") from None

    def next_action(self, obs: Observation) -> Action:
        """Ask the model for one action; retry once on a bad reply, then stop (reason in `last_decision`)."""
        from PIL import Image

        image = Image.fromarray(overlay_observation(np.asarray(obs.image), np.asarray(obs.mask, dtype=bool)))
        messages = self.messages(obs)
        self.last_replies = []
        error: Exception | None = None
        for attempt in range(2):
            reply = self.generate(messages, image)
            self.last_replies.append(reply)
            try:
                action = self.parse(reply)
            except ValueError as exc:  # ToolCallError, or anything else the reply's content trips
                error = exc
                messages = messages + [
                    {"role": "assistant", "content": [{"type": "text", "text": reply}]},
                    {"role": "user", "content": [{"type": "text", "text": (
                        f"Your reply had no valid tool call: {exc}. Answer again with exactly one call, e.g. "
                        '<tool_call>{"name": "add_point", "arguments": {"point_2d": [500, 500], '
                        '"point_type": "positive"}}</tool_call>')}]},
                ]
                continue
            note = f" (after a retry: {_short(error)})" if attempt else ""
            self.last_decision = Decision(f"the model chose {_describe(action)}{note}", None)
            return action
        self.last_decision = Decision(f"stopped: the model's reply had no valid tool call twice ({_short(error)})",
                                      None)
        return StopAction()
