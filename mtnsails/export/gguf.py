"""Export a trained model to a GGUF file for llama.cpp, Ollama and LM Studio.

The output directory holds `model-<type>.gguf` (the weights in f16, q8_0 or q4_0, the
hyperparameters llama.cpp reads, the tokenizer and the chat template), an Ollama `Modelfile`
beside it, and `mtnsails.json`. It is written with the `gguf` package (llama.cpp's own Python
library) from the safetensors weights and tokenizer.json, without torch, into a staging
directory that replaces the output only when complete: a refused family, tokenizer or setting
leaves nothing behind. What each family needs is in gguf_families, the tokenizer in
gguf_tokenizer, the chat format in gguf_chat.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from mtnsails.core.errors import MtnsailsError
from mtnsails.core.files import atomic_write_text, read_json_object
from mtnsails.export.gguf_chat import ChatFormat, chat_format
from mtnsails.export.gguf_families import EMBEDDING, OUTPUT, Family, family_of, gguf_names, gguf_tensors
from mtnsails.export.gguf_tokenizer import Vocabulary, read_vocabulary
from mtnsails.export.gguf_weights import SafetensorsWeights
from mtnsails.export.modelfile import modelfile_text
from mtnsails.inference.generation_config import GenerationConfig
from mtnsails.model_dir.answer_lengths import token_limit
from mtnsails.model_dir.metadata import (
    DEFAULT_GGUF_DIR,
    FP32_FILE,
    GGUF_FORMAT,
    METADATA_FILE,
    context_length,
    read_metadata,
)
from mtnsails.model_dir.output import atomic_directory

Q = gguf.GGMLQuantizationType
GGUF_TYPES = ("f16", "q8_0", "q4_0")
FILE_TYPES = {
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}
MODELFILE = "Modelfile"
F16_MAX = float(np.finfo(np.float16).max)


def gguf_file_name(gguf_type: str) -> str:
    """The name of the GGUF file in the output directory, e.g. "model-q8_0.gguf"."""
    return f"model-{gguf_type}.gguf"


def tensor_type(name: str, shape: tuple[int, ...], gguf_type: str, output_name: str) -> gguf.GGMLQuantizationType:
    """The storage type of one tensor, as llama.cpp's converter and quantizer choose it:
    vectors, norms and GPT-2's position table stay F32 (llama.cpp computes them in F32); the
    weight matrices take `gguf_type`, except that q4_0 keeps the output layer (`output_name`:
    the embedding when the two are tied) in Q8_0, where llama.cpp's own quantizer keeps it above
    4 bits, and a matrix whose rows do not split into blocks of 32 is F16."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or name == "position_embd.weight":
        return Q.F32
    if gguf_type == "f16":
        return Q.F16
    block = gguf.GGML_QUANT_SIZES[Q.Q8_0][0]
    if shape[-1] % block:
        return Q.F16
    return Q.Q8_0 if gguf_type == "q8_0" or name == output_name else Q.Q4_0


@dataclass
class GGUFExport:
    """What one export wrote."""

    directory: Path
    gguf_file: Path
    family: str
    gguf_type: str
    tensor_types: dict[str, int] = field(default_factory=dict)  # storage type -> tensor count
    chat_format: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # where llama.cpp may answer otherwise, one line each

    @property
    def modelfile(self) -> Path:
        return self.directory / MODELFILE


@dataclass
class _Plan:
    """Everything an export writes, read and checked before anything is written."""

    model_dir: Path
    output: Path
    gguf_type: str
    config: dict
    family: Family
    vocabulary: Vocabulary
    chat: ChatFormat
    weights: SafetensorsWeights
    modelfile: str
    record: dict  # the output's mtnsails.json

    @property
    def file_name(self) -> str:
        return gguf_file_name(self.gguf_type)


def export_gguf(
    model_path: str | os.PathLike,
    output_path: str | os.PathLike = DEFAULT_GGUF_DIR,
    gguf_type: str = "f16",
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> GGUFExport:
    """Write `model_path` (a trained model directory) as GGUF into `output_path` (replaced
    atomically) and return what was written. Raises MtnsailsError, before anything is written,
    for a family, tokenizer or setting llama.cpp cannot run as the model does."""
    start = time.perf_counter()
    plan = _plan(Path(model_path), output_path, gguf_type)
    result = GGUFExport(
        plan.output,
        plan.output / plan.file_name,
        plan.family.label,
        gguf_type,
        chat_format=plan.chat.name,
        notes=plan.family.notes(plan.config),
    )
    with atomic_directory(plan.output, kind=GGUF_FORMAT) as staging:
        result.tensor_types = _write_gguf(staging / plan.file_name, plan)
        atomic_write_text(staging / MODELFILE, plan.modelfile)
        atomic_write_text(staging / METADATA_FILE, json.dumps(plan.record, indent=2) + "\n")
    result.seconds = time.perf_counter() - start
    if not quiet:
        counts = ", ".join(f"{count} {name}" for name, count in sorted(result.tensor_types.items()))
        echo(
            f"wrote {result.gguf_file.name} ({result.family}, {result.gguf_file.stat().st_size / 1e6:.1f} MB; "
            f"tensors: {counts}) and an Ollama {MODELFILE} in {result.seconds:.1f} s"
        )
    return result


def _plan(model_dir: Path, output_path: str | os.PathLike, gguf_type: str) -> _Plan:
    """Read and check the model directory: family, tokenizer, chat format, Modelfile."""
    if gguf_type not in GGUF_TYPES:
        raise MtnsailsError(f"GGUF type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
    _check_model_dir(model_dir)
    output = Path(output_path).resolve()
    if output == model_dir.resolve() or model_dir.resolve() in output.parents:
        raise MtnsailsError(f"the GGUF output {output_path} must not be the model directory or inside it")
    config = read_json_object(model_dir / "config.json")
    family = family_of(config)
    vocabulary = read_vocabulary(model_dir, int(config.get("vocab_size") or 0))
    eos_id = vocabulary.special_ids.get("eos")
    if eos_id is None:
        raise MtnsailsError(f"{model_dir}: no EOS token (config.json eos_token_id or tokenizer_config eos_token)")
    chat = chat_format(model_dir, vocabulary.tokens[eos_id])
    if chat.name == "mtnsails":
        vocabulary.add_bos = False  # the trained template: training and chat never put BOS first
    elif chat.writes_bos:
        # Ollama's templates write no BOS text: the tokenizer must add it, and llama.cpp then
        # drops the one its Jinja template writes (so there is one BOS either way)
        vocabulary.add_bos = True
    metadata = read_metadata(model_dir)
    system = metadata.get("system") if isinstance(metadata.get("system"), str) else None
    context = context_length(config)
    lengths = metadata.get("answer_tokens")
    modelfile = modelfile_text(
        gguf_file_name(gguf_type),
        chat,
        system or chat.default_system,
        GenerationConfig(),
        context,
        token_limit(lengths, context) if lengths and context else None,
    )
    record = {
        "format": GGUF_FORMAT,
        "version": 1,
        "source_model": str(model_dir.resolve()),
        "family": family.label,
        "gguf_type": gguf_type,
        "file": gguf_file_name(gguf_type),
        "chat_format": chat.name,
        "template": metadata.get("template"),
        "system": system,
        "eos_token_id": eos_id,
        "context_length": context,
        "answer_tokens": lengths,
    }
    weights = SafetensorsWeights(model_dir)
    return _Plan(model_dir, output, gguf_type, config, family, vocabulary, chat, weights, modelfile, record)


def _write_gguf(path: Path, plan: _Plan) -> dict[str, int]:
    """Write the GGUF file; return how many tensors each storage type holds."""
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[plan.family.arch])
    writer.add_name(_model_name(plan.model_dir.resolve().name, plan.vocabulary.tokens))
    writer.add_file_type(FILE_TYPES[plan.gguf_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    plan.family.write_hparams(writer, plan.config)
    writer.add_vocab_size(len(plan.vocabulary.tokens))
    plan.vocabulary.write(writer, eot_id=plan.vocabulary.token_id(plan.chat.end_of_turn))
    writer.add_chat_template(plan.chat.jinja)
    generation = GenerationConfig()  # llama.cpp tools take sampling defaults from the file: chat's
    writer.add_sampling_temp(generation.temperature)
    writer.add_sampling_top_k(generation.top_k)
    writer.add_sampling_top_p(generation.top_p)
    writer.add_sampling_penalty_repeat(generation.repetition_penalty)
    types = _add_tensors(writer, plan.family, plan.config, plan.weights, plan.gguf_type, len(plan.vocabulary.tokens))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types


# llama.cpp sets per-token attributes for a model whose general.name holds "phi3" or "phi-3", and
# fails to load it ("unordered_map::at") when one of these tokens is missing from the vocabulary.
PHI3_NAME_TOKENS = ("</s>", "<unk>", "<s>", "<|endoftext|>")


def _model_name(name: str, tokens: list[str]) -> str:
    """general.name: the model directory's name, with "phi3"/"phi-3" spelt "phi_3" where llama.cpp
    would look for Phi-3's own tokens and not find them."""
    if set(PHI3_NAME_TOKENS) <= set(tokens):
        return name
    return re.sub(r"phi-?3", "phi_3", name, flags=re.IGNORECASE)


def _check_model_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise MtnsailsError(f"model path {model_dir} does not exist or is not a directory")
    if (model_dir / FP32_FILE).exists():
        raise MtnsailsError(
            f"{model_dir} is an ONNX model directory: give the trained model directory (the one train wrote)"
        )
    if not (model_dir / "config.json").is_file():
        raise MtnsailsError(f"{model_dir} is not a trained model directory (needs config.json and model.safetensors)")


def _add_tensors(
    writer: gguf.GGUFWriter, family: Family, config: dict, weights: SafetensorsWeights, gguf_type: str, n_vocab: int
) -> dict[str, int]:
    """Convert and add every tensor, one at a time (only the converted data stays in memory until
    the file is written); return how many tensors each storage type holds."""
    targets = gguf_names(family, config, weights)
    output_name = OUTPUT if OUTPUT in targets.values() else EMBEDDING
    types: Counter = Counter()
    computed = family.extra_tensors(config).items()
    for name, data in itertools.chain(computed, gguf_tensors(family, config, weights, targets)):
        if name == EMBEDDING and data.shape[0] != n_vocab:
            raise MtnsailsError(
                f"cannot write this model as GGUF: its embedding has {data.shape[0]} rows, config.json "
                f"vocab_size says {n_vocab}"
            )
        if not np.isfinite(data).all():
            raise MtnsailsError(f"cannot write this model as GGUF: tensor {name} holds NaN or infinite values")
        kind = tensor_type(name, data.shape, gguf_type, output_name)
        if kind == Q.F16 and float(np.abs(data).max(initial=0.0)) > F16_MAX:
            kind = Q.F32  # beyond f16's range: rounding would turn it into infinities
        writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
        types[kind.name] += 1
    return dict(types)
