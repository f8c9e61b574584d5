"""Model resolution, and the embedded default model that works with no network.

The embedded default ("tiny") is a small GPT-2 (`GPT2LMHeadModel`, the same code path as
distilgpt2) with a byte-level BPE tokenizer trained on the user's data plus a small corpus that
ships in the package. It is built deterministically from a fixed seed in well under a second.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources
from typing import Iterable

EMBEDDED_MODEL_NAME = "tiny"
EOS_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class EmbeddedModelSpec:
    """Size of the embedded default model; small enough to train from scratch on a CPU."""

    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_positions: int = 512
    vocab_size: int = 4096
    seed: int = 0


def packaged_corpus() -> list[str]:
    """The small English corpus shipped with mtnsails (tokenizer coverage beyond your data)."""
    text = resources.files("mtnsails").joinpath("resources/corpus.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line.strip()]


def build_embedded_tokenizer(texts: Iterable[str], vocab_size: int = EmbeddedModelSpec.vocab_size):
    """Train a byte-level BPE tokenizer on `texts` plus the packaged corpus.

    Byte-level BPE can encode any text, so chat never meets an unknown character. The returned
    tokenizer has EOS as pad token and no `token_type_ids` (GPT-2 would add them to its
    embeddings, and ONNX Runtime's generate refuses them).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([*texts, *packaged_corpus()], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=EmbeddedModelSpec.n_positions,
    )


def build_embedded_model(texts: Iterable[str], spec: EmbeddedModelSpec = EmbeddedModelSpec()):
    """Return (model, tokenizer) of the embedded default, randomly initialised from `spec.seed`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_embedded_tokenizer(texts, spec.vocab_size)
    eos_id = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=spec.n_positions,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(spec.seed)
    try:
        model = GPT2LMHeadModel(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.config.mtnsails_embedded = asdict(spec)
    return model, tokenizer
