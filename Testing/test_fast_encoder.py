"""The fast encoder path: chosen only where it runs and passed the validation check, built from the shipped weights
into a cache whose hashes are checked, close to torch fp32, and replay-exact; the embedding cache is bounded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedAgentSegLib.engines.base import Prompts
from MedAgentSegLib.engines.fast_encoder import choose_encoder, supported_paths


def _check_file(tmp_path, passed: dict[str, bool]):
    path = tmp_path / "encoder_check.json"
    path.write_text(json.dumps({"paths": {p: {"passed": ok} for p, ok in passed.items()}}))
    return path


def test_auto_takes_only_paths_that_run_here_and_passed_the_check(tmp_path):
    here = supported_paths("cpu")
    assert here[-1] == "torch"
    nothing_passed = _check_file(tmp_path, {p: False for p in here})
    assert choose_encoder("auto", "cpu", nothing_passed) == "torch"
    all_passed = _check_file(tmp_path, {p: True for p in here})
    assert choose_encoder("auto", "cpu", all_passed) == here[0]
    assert choose_encoder("auto", "cuda", all_passed) == "torch"  # a GPU runs the reference
    assert choose_encoder("auto", "cpu", tmp_path / "missing.json") == "torch"


def test_a_path_that_cannot_run_is_refused_with_what_to_use():
    with pytest.raises(ValueError, match="unknown encoder 'fast'.*auto"):
        choose_encoder("fast")
    with pytest.raises(ValueError, match="only torch"):
        choose_encoder("openvino-f32", "cuda")


def _image(seed=0, size=160):
    rng = np.random.default_rng(seed)
    img = (rng.random((size, size)) * 60).astype(np.uint8)
    img[40:110, 50:120] += 150
    return img


def test_openvino_encoder_is_built_once_checked_and_close_to_torch(tmp_path, monkeypatch, lite_engine):
    pytest.importorskip("openvino", reason="openvino is not installed (the fast extra); the torch path is the default")
    from MedAgentSegLib.engines.litemedsam import LiteMedSAMEngine

    monkeypatch.setenv("MEDAGENTSEG_CACHE", str(tmp_path))
    fast = LiteMedSAMEngine(device="cpu", encoder="openvino-f32")
    folder = fast._encode.model_dir
    assert (folder / "model.bin").is_file() and json.loads((folder / "sha256.json").read_text())
    img = _image()
    fast.set_image(img)
    lite_engine.set_image(img)
    ref, got = lite_engine.image_embedding, fast.image_embedding
    assert got.shape == ref.shape and float((got - ref).abs().max()) < 0.01 * float(ref.abs().max())
    box = Prompts((50, 40, 120, 110))
    a, b = fast.predict(box), lite_engine.predict(box)
    assert (a.mask & b.mask).sum() * 2 / (a.mask.sum() + b.mask.sum()) > 0.99
    click = Prompts((50, 40, 120, 110), [(60.0, 50.0)], [0])  # the OpenVINO decoder, with a mask prompt
    a, b = fast.predict(click, a.logits), lite_engine.predict(click, a.logits)
    assert abs(a.score - b.score) < 0.01 and (a.mask & b.mask).sum() * 2 / (a.mask.sum() + b.mask.sum()) > 0.99
    cand_a, cand_b = fast.candidates(box)[1], lite_engine.candidates(box)[1]
    assert np.allclose(cand_a, cand_b, atol=0.01)
    # A tampered cached model is not used: it is rebuilt, and said.
    from MedAgentSegLib.engines.fast_encoder import OpenVINOEncoder

    (folder / "model.bin").write_bytes(b"\0" * 64)
    said = []
    rebuilt = OpenVINOEncoder(fast.net.image_encoder, "openvino-f32", tmp_path, log=said.append)
    assert rebuilt.model_dir == folder and any("SHA-256" in s for s in said)
    assert (folder / "model.bin").stat().st_size > 1000
    (folder / "sha256.json").write_text("{not json")  # a damaged record is rebuilt too, not a crash
    OpenVINOEncoder(fast.net.image_encoder, "openvino-f32", tmp_path, log=said.append)
    assert json.loads((folder / "sha256.json").read_text())["model.bin"]


def test_fast_path_keeps_fp16_embeddings_and_a_cached_image_predicts_bit_for_bit(tmp_path, monkeypatch):
    pytest.importorskip("openvino", reason="openvino is not installed (the fast extra)")
    from MedAgentSegLib.engines.litemedsam import LiteMedSAMEngine

    monkeypatch.setenv("MEDAGENTSEG_CACHE", str(tmp_path))
    engine = LiteMedSAMEngine(device="cpu", encoder="openvino-f32", cache_mb=3)  # room for one fp16 embedding
    img, other = _image(0), _image(1)
    engine.set_image(img)
    first = engine.predict(Prompts((50, 40, 120, 110)))
    assert engine.cache_nbytes() == 256 * 64 * 64 * 2  # fp16
    engine.set_image(other)  # pushes the first out: the bound holds
    assert engine.cache_nbytes() <= 3 * 2 ** 20 and not engine.has_embedding(img)
    engine.set_image(img)  # encoded again: the same masks as the first time
    assert engine.last_timings["cached"] == 0.0
    again = engine.predict(Prompts((50, 40, 120, 110)))
    assert np.array_equal(first.mask, again.mask) and np.array_equal(first.logits, again.logits)
    engine.set_image(img)
    assert engine.last_timings["cached"] == 1.0


def test_the_torch_cache_is_bounded_by_memory_not_count(lite_engine):
    from MedAgentSegLib.engines.litemedsam import LiteMedSAMEngine

    engine = LiteMedSAMEngine(device="cpu", cache_mb=9)  # two fp32 embeddings of 4 MiB
    for seed in range(3):
        engine.set_image(_image(seed, 64))
    assert engine.cache_nbytes() == 2 * 256 * 64 * 64 * 4
    assert not engine.has_embedding(_image(0, 64)) and engine.has_embedding(_image(2, 64))


def test_bench_and_check_encoder_refuse_what_they_cannot_do(tmp_path, capsys):
    from MedAgentSegLib.cli import main

    assert main(["bench", "--depth", "50"]) == 2
    assert "--depth >= 120" in capsys.readouterr().err
    assert main(["check-encoder", str(tmp_path), "--paths", "openvino-fp8"]) == 2
    assert "openvino-fp8 cannot run here" in capsys.readouterr().err


def test_the_bench_ct_holds_one_organ_of_the_asked_length_in_int16():
    from MedAgentSegLib.evaluation.bench import synthetic_ct

    vol, organ = synthetic_ct(depth=130, size=64, organ_slices=40)
    assert vol.dtype == np.int16 and vol.shape == (130, 64, 64)
    assert organ.any(axis=(1, 2)).sum() in (39, 40)
    assert vol[organ].mean() > vol[~organ & (vol > -500)].mean() + 60  # the organ is brighter than the body


def test_openvino_uses_as_many_threads_as_torch_so_workers_do_not_fight_over_cores(tmp_path, monkeypatch,
                                                                                   lite_engine):
    pytest.importorskip("openvino", reason="openvino is not installed (the fast extra); the torch path is the default")
    import torch

    from MedAgentSegLib.engines.fast_encoder import compile_module

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # what a labeling worker on a shared machine sets (batch._init_worker)
        compiled, _ = compile_module(lite_engine.net.image_encoder, "encoder", (torch.zeros(1, 3, 256, 256),), None,
                                     "openvino-f32", root=tmp_path)
        assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    finally:
        torch.set_num_threads(before)
