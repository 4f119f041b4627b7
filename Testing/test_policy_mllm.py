"""MLLMPolicy end to end on a tiny randomly initialised Qwen2-VL built here (CPU, no network, no weights).

The tiny model, a byte-level tokenizer with Qwen2-VL's special tokens and a small image processor are saved with
`save_pretrained` and loaded back through `MLLMPolicy(path)`, so the real loading, chat templating, image
processing, generation, decoding and parsing all run. Valid replies are forced with a LogitsProcessor.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from MedAgentSegLib.actions import grid_to_pixel, tool_schemas  # noqa: E402
from MedAgentSegLib.agent.mllm import SYSTEM_PROMPT, MLLMPolicy  # noqa: E402
from MedAgentSegLib.engines.base import Prediction, Prompts  # noqa: E402
from MedAgentSegLib.session import Session  # noqa: E402

H, W = 64, 80
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]
# Qwen2-VL's processor template, without tool support (as in Qwen2-VL/Qwen2.5-VL's chat_template.json).
TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
            "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
            "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
            "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

BBOX = '<tool_call>{"name": "add_bbox", "arguments": {"bbox_2d": [100, 100, 600, 600]}}</tool_call>'
POINT = '<tool_call>{"name": "add_point", "arguments": {"point_2d": [500, 400], "point_type": "positive"}}</tool_call>'
STOP = '<tool_call>{"name": "stop_action", "arguments": {}}</tool_call>'


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The model is tiny: one thread is many times faster than several fighting over shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Qwen2-VL (about 0.1 M parameters) with its processor, saved as a model folder."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    # Byte-level BPE (every text is encodable and decodes back exactly), its merges learnt here from the
    # policy's own prompt so that a turn's prompt is a few hundred tokens, not thousands.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [SYSTEM_PROMPT, json.dumps(tool_schemas()), BBOX, POINT, STOP, "Target: liver. Turn 1: 0 of 3"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    # As in Qwen2.5: the tool-call tags are added tokens that are not special (they survive decoding).
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in ("<tool_call>", "</tool_call>")])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        chat_template=TEMPLATE)
    pixels = 28 * 28 * 4  # every image becomes 2x2 merged patches or so: a handful of image tokens
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels),
                                 video_processor=Qwen2VLVideoProcessor(min_pixels=pixels, max_pixels=pixels),
                                 tokenizer=tokenizer, chat_template=TEMPLATE)
    tid = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4},
                         bos_token_id=tid("<|endoftext|>"), eos_token_id=tid("<|im_end|>"),
                         pad_token_id=tid("<|endoftext|>")),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"))
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    path = tmp_path_factory.mktemp("tiny_qwen2vl")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


class ForceReplies(transformers.LogitsProcessor):
    """Forces generation number k to emit the tokens of replies[k], then EOS (greedy picks the only finite score)."""

    def __init__(self, tokenizer, replies: list[str]):
        self.targets = [tokenizer.encode(r, add_special_tokens=False) + [tokenizer.eos_token_id] for r in replies]
        self.generation, self.start, self.last_len = -1, 0, -1

    def __call__(self, input_ids, scores):
        n = input_ids.shape[1]
        if n != self.last_len + 1:  # a new generate call: its prompt is longer than one more token
            self.generation, self.start = self.generation + 1, n
        self.last_len = n
        target = self.targets[min(self.generation, len(self.targets) - 1)]
        forced = torch.full_like(scores, -float("inf"))
        forced[:, target[min(n - self.start, len(target) - 1)]] = 0.0
        return forced


class BoxEngine:
    """Fake engine: the mask is the box region, plus a disk of radius 5 at each positive click."""

    name = "fake-box"

    def set_image(self, image):
        self.shape = image.shape[:2]

    def reset(self):
        pass

    def predict(self, prompts: Prompts, prev_logits=None) -> Prediction:
        yy, xx = np.mgrid[: self.shape[0], : self.shape[1]]
        mask = np.zeros(self.shape, dtype=bool)
        if prompts.box is not None:
            x1, y1, x2, y2 = prompts.box
            mask |= (xx >= x1) & (xx <= x2) & (yy >= y1) & (yy <= y2)
        for (x, y), label in zip(prompts.points, prompts.labels):
            disk = (xx - x) ** 2 + (yy - y) ** 2 <= 25
            mask = mask | disk if label == 1 else mask & ~disk
        return Prediction(mask=mask, logits=np.zeros((1, 256, 256), np.float32), score=0.9)


def make_session(max_turns: int = 3) -> Session:
    image = np.full((H, W, 3), 100, dtype=np.uint8)
    return Session(BoxEngine(), image, "liver", max_turns=max_turns)


def spy(policy, monkeypatch):
    """Record every generate call and every (text, image) the processor gets."""
    calls = {"generate": 0, "texts": [], "images": []}
    generate = policy.model.generate

    def counting_generate(*args, **kwargs):
        calls["generate"] += 1
        return generate(*args, **kwargs)

    monkeypatch.setattr(policy.model, "generate", counting_generate)
    original = type(policy.processor).__call__

    def recording_call(self, *args, **kwargs):
        calls["texts"].extend(kwargs.get("text") or [])
        calls["images"].extend(kwargs.get("images") or [])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(policy.processor), "__call__", recording_call)
    return calls


def forced_policy(model_dir, replies: list[str]) -> MLLMPolicy:
    from transformers import AutoTokenizer, LogitsProcessorList

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return MLLMPolicy(model_dir, device="cpu",
                      generate_kwargs={"logits_processor": LogitsProcessorList([ForceReplies(tokenizer, replies)])})


def test_random_reply_is_retried_once_then_stops(model_dir, monkeypatch):
    policy = MLLMPolicy(model_dir, device="cpu", max_new_tokens=16)
    calls = spy(policy, monkeypatch)
    session = make_session()
    turns = session.run(policy)
    assert calls["generate"] == 2
    assert len(turns) == 1 and session.status == "stopped"
    assert turns[0].action["name"] == "stop_action"
    assert turns[0].action["reason"].startswith("stopped: the model's reply had no valid tool call twice (")
    assert len(policy.last_replies) == 2
    # The retry tells the model what was wrong, after its own bad reply.
    assert "Your reply had no valid tool call" in calls["texts"][1]
    assert "Your reply had no valid tool call" not in calls["texts"][0]


def test_forced_valid_calls_drive_the_session(model_dir, monkeypatch):
    policy = forced_policy(model_dir, [BBOX, STOP])
    calls = spy(policy, monkeypatch)
    session = make_session()
    turns = session.run(policy)
    assert calls["generate"] == 2
    assert [t.action["name"] for t in turns] == ["add_bbox", "stop_action"]
    assert session.status == "stopped"
    box = turns[0].prompts.box
    expected = (grid_to_pixel(100, W), grid_to_pixel(100, H), grid_to_pixel(600, W), grid_to_pixel(600, H))
    assert box == pytest.approx(expected)
    assert turns[0].prompts_grid["box"] == [100, 100, 600, 600]
    engine = BoxEngine()
    engine.set_image(np.zeros((H, W, 3), np.uint8))
    assert np.array_equal(turns[0].mask, engine.predict(Prompts(box=expected)).mask)
    assert turns[0].action["reason"] == "the model chose add_bbox [100, 100, 600, 600]"
    assert turns[1].action["reason"] == "the model chose stop_action"
    assert policy.last_replies == [STOP]
    # The prompt: system text with the tool schemas (this template has no tool support), target and turn count.
    first = calls["texts"][0]
    assert "professional segmentation annotator" in first and '"name": "add_bbox"' in first
    assert "Target: liver. Turn 1: 0 of 3" in first and "Turn 2: 1 of 3" in calls["texts"][1]


def test_observation_image_has_the_green_overlay(model_dir, monkeypatch):
    policy = forced_policy(model_dir, [BBOX, STOP])
    calls = spy(policy, monkeypatch)
    session = make_session()
    session.run(policy)
    first, second = (np.asarray(im) for im in calls["images"])
    assert first.shape == second.shape == (H, W, 3)
    assert (first == 100).all()  # no mask yet: the plain image
    mask = session.turns[0].mask
    assert mask.any() and not mask.all()
    inside, outside = second[mask], second[~mask]
    assert (outside == 100).all()
    assert (inside[:, 1] > 100).all() and (inside[:, 0] < 100).all() and (inside[:, 2] < 100).all()


def test_two_tool_calls_are_rejected_and_retried(model_dir, monkeypatch):
    policy = forced_policy(model_dir, [BBOX + "\n" + POINT, POINT, STOP])
    calls = spy(policy, monkeypatch)
    session = make_session()
    turns = session.run(policy)
    assert calls["generate"] == 3
    assert [t.action["name"] for t in turns] == ["add_point", "stop_action"]
    assert turns[0].action["arguments"] == {"point_2d": [500, 400], "point_type": "positive"}
    assert turns[0].action["reason"] == ("the model chose add_point positive at (500, 400) "
                                         "(after a retry: found 2 tool calls, expected exactly one per turn)")
    assert "found 2 tool calls" in calls["texts"][1]
    x, y = grid_to_pixel(500, W), grid_to_pixel(400, H)
    assert turns[0].mask[round(y), round(x)]


def test_out_of_grid_call_is_retried_then_stops(model_dir):
    bad = '<tool_call>{"name": "add_point", "arguments": {"point_2d": [1200, 5], "point_type": "positive"}}</tool_call>'
    policy = forced_policy(model_dir, [bad, bad])
    session = make_session()
    turns = session.run(policy)
    assert [t.action["name"] for t in turns] == ["stop_action"]
    assert "outside the 0..999 grid" in turns[0].action["reason"]


def test_from_model_passes_tools_when_the_template_takes_them(model_dir, monkeypatch):
    from transformers import AutoModelForImageTextToText, AutoProcessor, LogitsProcessorList

    model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    processor.chat_template = ("{% if tools %}<|im_start|>tools\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
                               "<|im_end|>\n{% endif %}" + TEMPLATE)
    force = ForceReplies(processor.tokenizer, [POINT])
    policy = MLLMPolicy.from_model(model, processor, generate_kwargs={"logits_processor": LogitsProcessorList([force])})
    calls = spy(policy, monkeypatch)
    action = policy.next_action(make_session().observe())
    assert action.to_dict()["arguments"] == {"point_2d": [500, 400], "point_type": "positive"}
    text = calls["texts"][0]
    assert text.startswith("<|im_start|>tools\n") and '"add_bbox"' in text
    assert "<tools>" not in text  # the schemas went through the template, not into the system text


def test_not_a_model_folder_is_a_helpful_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*--mllm-path"):
        MLLMPolicy(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"not a Qwen2-VL/Qwen2.5-VL model folder \(no config.json\).*save_pretrained"):
        MLLMPolicy(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' model, not Qwen2-VL/Qwen2.5-VL"):
        MLLMPolicy(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))  # no weights, no tokenizer
    with pytest.raises(ValueError, match="could not load"):
        MLLMPolicy(tmp_path)


def test_missing_transformers_names_the_install(model_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="pip install transformers"):
        MLLMPolicy(model_dir)
