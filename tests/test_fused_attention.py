"""fuse_attention: one GroupQueryAttention per layer, so the KV cache grows in place."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from mtnsails.export.attention_graph import FUSED_OP
from mtnsails.export.fused_attention import fuse_attention
from mtnsails.inference.generation import CACHE_GROWTH, OnnxDecoder, generate_tokens
from mtnsails.inference.generation_config import GenerationConfig


@pytest.fixture(scope="module")
def plain_export(trained_tiny_model_dir, tmp_path_factory):
    """The tiny model as optimum exports it (what ONNX directories held before the fusion)."""
    from optimum.exporters.onnx import main_export

    path = tmp_path_factory.mktemp("plain_export")
    main_export(str(trained_tiny_model_dir), path, task="text-generation-with-past", device="cpu", do_validation=False)
    return path


def ops(model_file) -> list[str]:
    return [node.op_type for node in onnx.load(str(model_file), load_external_data=False).graph.node]


def test_fused_graph_answers_as_the_plain_export(plain_export, tmp_path):
    fused = tmp_path / "model.onnx"
    shutil.copy(plain_export / "model.onnx", fused)
    assert fuse_attention(fused, plain_export / "config.json")
    assert ops(fused).count(FUSED_OP) == 4 and "Softmax" not in ops(fused)
    greedy = GenerationConfig(max_new_tokens=16, do_sample=False, repetition_penalty=1.0)
    prompt = list(range(30, 60))
    plain = list(generate_tokens(OnnxDecoder(plain_export / "model.onnx"), prompt, greedy))
    assert list(generate_tokens(OnnxDecoder(fused, shared_cache=True), prompt, greedy)) == plain
    assert list(generate_tokens(OnnxDecoder(fused), prompt, greedy)) == plain  # present bound fresh


def test_other_architectures_are_left_as_exported(plain_export, tmp_path):
    config = json.loads((plain_export / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    before = (plain_export / "model.onnx").read_bytes()
    assert not fuse_attention(plain_export / "model.onnx", tmp_path / "config.json")
    assert (plain_export / "model.onnx").read_bytes() == before


@pytest.mark.slow
def test_heads_onnxruntime_cannot_fuse_are_left_as_exported(tmp_path):
    """Head size 20 (40 wide, 2 heads): onnxruntime's kernel runs only multiples of 8."""
    from optimum.exporters.onnx import main_export
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=40, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "model")
    main_export(
        str(tmp_path / "model"), tmp_path / "onnx", task="text-generation-with-past", device="cpu", do_validation=False
    )
    before = (tmp_path / "onnx" / "model.onnx").read_bytes()
    assert not fuse_attention(tmp_path / "onnx" / "model.onnx", tmp_path / "onnx" / "config.json")
    assert (tmp_path / "onnx" / "model.onnx").read_bytes() == before
    decoder = OnnxDecoder(tmp_path / "onnx" / "model.onnx")
    assert decoder.forward([1, 2, 3]).shape[-1] == 64  # the exported graph still runs


def test_shared_cache_grows_and_is_reused_after_reset(tiny_onnx_dir):
    shared = OnnxDecoder(tiny_onnx_dir / "model.onnx", shared_cache=True)
    fresh = OnnxDecoder(tiny_onnx_dir / "model.onnx")  # binds a new present every step
    prompt = list(range(100, 110))
    np.testing.assert_allclose(shared.forward(prompt), fresh.forward(prompt), atol=1e-5)
    first_capacity = shared.cache_capacity
    assert first_capacity >= len(prompt) + CACHE_GROWTH
    more = list(range(200, 200 + first_capacity - len(prompt) - 2))  # fills the buffer but 2
    np.testing.assert_allclose(shared.forward(more), fresh.forward(more), atol=1e-5)
    for token in range(4):  # the third step grows the buffer
        np.testing.assert_allclose(shared.forward([token]), fresh.forward([token]), atol=1e-5)
    assert shared.cache_capacity > first_capacity
    shared.reset()  # a shorter sequence in the same buffers: the stale positions are never read
    fresh.reset()
    for ids in (prompt[:3], [7], [8]):
        np.testing.assert_allclose(shared.forward(ids), fresh.forward(ids), atol=1e-5)


def test_logits_a_step_returned_stay_as_they_were(tiny_onnx_dir):
    # The shared-cache decoder reads the logits from one output buffer that every step writes.
    decoder = OnnxDecoder(tiny_onnx_dir / "model.onnx", shared_cache=True)
    first = decoder.forward(list(range(100, 110)))
    kept = first.copy()
    second = decoder.forward([7])
    np.testing.assert_array_equal(first, kept)
    assert not np.array_equal(first, second)
