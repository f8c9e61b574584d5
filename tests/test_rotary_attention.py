"""The rotary families' attention as one GroupQueryAttention per layer (rotary_attention).

Each family's tiny random model (tests/test_gguf.py's builder: every weight, the biases and norms
included, nudged off its init) is converted by `convert --quantize all` and compared with the
graph as optimum exports it and with PyTorch: greedy tokens alone and in a left-padded batch.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from random_models import build_family_model

from mtnsails.export.attention_graph import FUSED_OP
from mtnsails.export.fused_attention import unfusable_reason
from mtnsails.export.rotary_attention import rotary_layers
from mtnsails.inference.batch_decoder import BatchDecoder
from mtnsails.inference.generation import OnnxDecoder, generate_tokens
from mtnsails.inference.generation_config import GenerationConfig

# run -> (a FAMILY_MODELS entry, settings changed); Mistral, Gemma 2 and Gemma 3 with a window
# shorter than the prompts (Gemma 2 and 3 on their sliding layers only); SmolLM3's fourth layer has
# no rotary; untied heads where the tied random model repeats one token
RUNS = {
    "llama": ("llama", {}),
    "llama3_rope": ("llama3_rope", {}),
    "mistral_window": ("mistral", {"sliding_window": 8}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
    "phi3": ("phi3", {}),
    "smollm3": ("smollm3", {"tie_word_embeddings": False}),  # tied, the random model repeats itself
    "gemma": ("gemma", {"tie_word_embeddings": False}),
    "gemma2_window": ("gemma2", {"tie_word_embeddings": False, "sliding_window": 8}),
    "gemma3_window": ("gemma3_text", {"tie_word_embeddings": False, "sliding_window": 8}),
}
NEW_TOKENS = 32
PROMPT_LENGTHS = (5, 12, 20, 31)
GREEDY = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, repetition_penalty=1.0)


def ops(model_file: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(model_file), load_external_data=False).graph.node)


@pytest.fixture(scope="module", params=list(RUNS))
def converted(request, tmp_path_factory) -> dict:
    """One run's model: its directory, `convert --quantize all` of it (attention fused), the same
    conversion with the attention as optimum exports it ("plain"), and prompts of several lengths."""
    import transformers

    import mtnsails.export.converter as converter_module
    from mtnsails.export.converter import ONNXConverter

    family, changes = RUNS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    model = build_family_model(family, root / "model", **changes)
    vocabulary = len(transformers.AutoTokenizer.from_pretrained(model))
    converter = ONNXConverter(model, quiet=True)
    converter.convert_to_onnx(root / "onnx", quantize="all")
    with pytest.MonkeyPatch.context() as patch:  # the same conversion with the attention as exported
        patch.setattr(converter_module, "attention_fusion", lambda *_: "switched off by the test")
        converter.convert_to_onnx(root / "plain", quantize="all")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, vocabulary, size=length).tolist() for length in PROMPT_LENGTHS]
    return {"model": model, "onnx": root / "onnx", "plain": root / "plain", "prompts": prompts, "converter": converter}


def pytorch_tokens(model_dir: Path, prompt: list[int]) -> list[int]:
    """PyTorch's greedy tokens, the whole sequence run at each step (`generate` would stop at,
    or with min_new_tokens suppress, the end-of-sequence token that the ONNX loop writes on)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.mark.slow
def test_every_layer_is_one_fused_node_reading_one_packed_matmul(converted):
    meta = json.loads((converted["onnx"] / "mtnsails.json").read_text())
    assert meta["kv_cache"] == "shared"
    config = json.loads((converted["model"] / "config.json").read_text())
    layers = config["num_hidden_layers"]
    fused = ops(converted["onnx"] / "model.onnx")
    assert fused[FUSED_OP] == layers and fused["RotaryEmbedding"] == 2 * sum(rotary_layers(config, layers))
    assert "Softmax" not in fused and "Cos" not in fused
    # per layer: q/k/v packed, o, gate, up, down (Phi-3: gate and up packed too) and the head
    per_layer = 4 if config["model_type"] == "phi3" else 5
    assert fused["MatMul"] + fused["FusedMatMul"] <= per_layer * layers + 1
    int4 = ops(converted["onnx"] / "model_int4.onnx")
    assert sum(int4.values()) < sum(ops(converted["plain"] / "model_int4.onnx").values()) / 2
    assert int4["MatMulNBits"] == per_layer * layers + 1 and int4[FUSED_OP] == layers
    assert ops(converted["onnx"] / "model_int8.onnx")[FUSED_OP] == layers


@pytest.mark.slow
def test_fused_graph_answers_as_the_plain_export_and_pytorch(converted):
    answers = []
    for prompt in converted["prompts"]:
        plain = list(generate_tokens(OnnxDecoder(converted["plain"] / "model.onnx"), prompt, GREEDY))
        shared = OnnxDecoder(converted["onnx"] / "model.onnx", shared_cache=True)
        assert list(generate_tokens(shared, prompt, GREEDY)) == plain
        fresh = OnnxDecoder(converted["onnx"] / "model.onnx")  # a new present bound every step
        assert list(generate_tokens(fresh, prompt, GREEDY)) == plain
        assert plain == pytorch_tokens(converted["model"], prompt)[: len(plain)]
        answers.append(plain)
    assert all(len(answer) == NEW_TOKENS for answer in answers)  # the random model never writes EOS here
    assert min(len(set(answer)) for answer in answers) > 4  # nor repeats one token


@pytest.mark.slow
@pytest.mark.parametrize("shared_cache", [True, False])
def test_left_padded_batch_answers_as_each_prompt_alone(converted, shared_cache):
    model_file = converted["onnx"] / "model.onnx"
    prompts = converted["prompts"]
    alone = [list(generate_tokens(OnnxDecoder(model_file, shared_cache=True), p, GREEDY)) for p in prompts]
    batch = BatchDecoder(OnnxDecoder(model_file, shared_cache=shared_cache))
    logits = batch.add_many(list(enumerate(prompts)))  # one left-padded prefill of 4 lengths
    tokens = {key: [int(np.argmax(row))] for key, row in enumerate(logits)}
    for _ in range(len(alone[0]) - 1):
        rows = batch.step([tokens[key][-1] for key in batch.keys])
        for key, row in zip(list(batch.keys), rows):
            tokens[key].append(int(np.argmax(row)))
    assert [tokens[key] for key in range(len(prompts))] == alone


@pytest.mark.slow
def test_quantized_files_verify_as_the_plain_conversion(converted):
    """fp32 passes verify; int4 picks PyTorch's greedy token where the plain conversion's file
    does (its blocks run along each output column: packing q/k/v changes none), int8 within a few
    positions (its one per-tensor scale now spans the packed q/k/v weights). Random weights: int4
    falls below verify's bar for trained models either way."""
    report = converted["converter"].verify(converted["onnx"])
    plain = converted["converter"].verify(converted["plain"])
    assert report.greedy_match and report.max_logit_diff < 1e-4, report.format_text()
    assert set(report.agreement) == {"int8", "int4"}
    assert abs(report.agreement["int4"] - plain.agreement["int4"]) <= 2 / report.positions, (report, plain)
    assert report.agreement["int8"] >= plain.agreement["int8"] - 0.15, (report, plain)


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ({"model_type": "llama", "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "sequence length"),
        ({"model_type": "qwen2", "rope_scaling": {"type": "longrope"}}, "sequence length"),
        ({"model_type": "llama", "partial_rotary_factor": 0.5}, "partial rotary"),
        ({"model_type": "qwen2", "use_sliding_window": True}, "sliding windows"),
        ({"model_type": "gpt_neox"}, "gpt_neox"),
    ],
)
def test_what_the_rewrite_does_not_compute_stays_as_exported(config, why):
    assert why in unfusable_reason(config)


@pytest.mark.parametrize(
    "model_type", ["llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "gemma", "gemma2", "gemma3_text"]
)
def test_rotary_families_are_fused(model_type):
    assert unfusable_reason({"model_type": model_type}) is None
