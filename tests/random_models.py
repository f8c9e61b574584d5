"""Tiny random-weight models of today's families with byte-level BPE tokenizers trained here in
the pre-tokenizer style of each real counterpart, so nothing is downloaded (the GGUF export's
tests and the fused attention's tests build them)."""

from __future__ import annotations

from pathlib import Path

EOS = "<|endoftext|>"

# -- tokenizers in the styles of real models ----------------------------------------------------

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = QWEN2_SPLIT.replace(r"|\p{N}|", r"|\p{N}{1,3}|")


def pre_tokenizer(style: str):
    """The tokenizers pre-tokenizer of each llama.cpp pre-tokenizer name (how the real models'
    tokenizer.json files declare them)."""
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if style == "gpt-2":
        return byte_level
    if style == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    regex = {"qwen2": QWEN2_SPLIT, "llama-bpe": LLAMA3_SPLIT}[style]
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def train_tokenizer(style: str, specials: list[str], vocab_size: int = 700):
    """A byte-level BPE trained on the packaged corpus, split as `style` splits."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mtnsails.train.models import packaged_corpus

    bpe = Tokenizer(models.BPE(ignore_merges=style == "llama-bpe"))
    bpe.pre_tokenizer = pre_tokenizer(style)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(packaged_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=specials[0],
        eos_token=specials[-1],
        model_input_names=["input_ids", "attention_mask"],
    )


CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# family -> (config class, config settings, tokenizer style, special tokens, extra vocabulary rows)
SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
FAMILY_MODELS = {
    "llama": ("LlamaConfig", {**SMALL, "num_key_value_heads": 2, "rope_theta": 50000.0}, "smollm", [EOS], 0),
    "llama3_rope": (  # Llama 3.x: per-frequency rope scaling, which llama.cpp reads as a tensor
        "LlamaConfig",
        {
            **SMALL,
            "num_key_value_heads": 2,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
        "llama-bpe",
        [EOS],
        0,
    ),
    "mistral": ("MistralConfig", {**SMALL, "num_key_value_heads": 2, "sliding_window": None}, "gpt-2", [EOS], 0),
    "smollm3": ("SmolLM3Config", {**SMALL, "num_hidden_layers": 4, "num_key_value_heads": 2}, "llama-bpe", [EOS], 0),
    "qwen2": ("Qwen2Config", {**SMALL, "num_key_value_heads": 2}, "qwen2", [EOS, "<|im_start|>", "<|im_end|>"], 6),
    "qwen3": ("Qwen3Config", {**SMALL, "num_key_value_heads": 2, "head_dim": 32}, "qwen2", [EOS], 0),
    "gemma": ("GemmaConfig", {**SMALL, "num_key_value_heads": 1, "head_dim": 16}, "gpt-2", [EOS], 0),
    "gemma2": (
        "Gemma2Config",
        {**SMALL, "num_key_value_heads": 2, "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 64},
        "gpt-2",
        [EOS],
        0,
    ),
    "gemma3_text": (
        "Gemma3TextConfig",
        {**SMALL, "num_hidden_layers": 6, "num_key_value_heads": 2, "head_dim": 16, "query_pre_attn_scalar": 16},
        "gpt-2",
        [EOS],
        0,
    ),
    "phi3": ("Phi3Config", {**SMALL, "num_key_value_heads": 2}, "llama-bpe", [EOS], 0),
}


def save_random_model(config, tokenizer, path: Path) -> Path:
    """A seeded random model of `config` (weights nudged off their init so no two tensors
    stay alike) saved with `tokenizer` in `path`."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_family_model(model_type: str, path: Path, **changes) -> Path:
    """A tiny random-weight model of `model_type` (its FAMILY_MODELS settings, with `changes`),
    saved with its tokenizer. Every weight gets noise, so norms are not all ones (or zeros) and
    every transform shows in the values."""
    import transformers

    class_name, settings, style, specials, extra_rows = FAMILY_MODELS[model_type]
    tokenizer = train_tokenizer(style, specials)
    if model_type == "qwen2":
        tokenizer.chat_template = CHATML
    eos = tokenizer.convert_tokens_to_ids(EOS)
    config = getattr(transformers, class_name)(
        vocab_size=len(tokenizer) + extra_rows,
        max_position_embeddings=256,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        **{**settings, **changes},
    )
    return save_random_model(config, tokenizer, path)
