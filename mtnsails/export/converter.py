"""Export a trained model to an ONNX directory that `ChatInterface` runs without torch.

The directory holds `model.onnx` (one graph with KV-cache inputs, optimum's
`text-generation-with-past` export, its GPT-2 attention fused so the cache grows in place: see
fused_attention), optionally `model_int8.onnx` (dynamic int8, every MatMul including the LM head)
and `model_int4.onnx` (int4 blocks, see int4), each also as onnxruntime optimised it for this CPU
(see optimized_graph), the tokenizer files, config.json, generation_config.json and an
`mtnsails.json` that tells chat the template (a model's Jinja chat template travels whole), EOS id
and context length. It is written into a staging directory and swapped in only when complete, so a
failed export leaves no half directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtnsails.core.cpu import cpu_flags
from mtnsails.core.errors import MtnsailsError, first_line
from mtnsails.core.files import is_torch_save_file, read_json_object
from mtnsails.export.families import TESTED_FAMILIES, check_exportable, export_configs, rope_note
from mtnsails.export.fused_attention import attention_fusion
from mtnsails.export.graph_rewrites import keep_last_logits, retie_head, unflatten_linears, untranspose_head
from mtnsails.export.int4 import Int4Config, quantize_int4
from mtnsails.inference.generation import OnnxDecoder, generate_tokens
from mtnsails.inference.generation_config import GenerationConfig
from mtnsails.inference.optimized_graph import store_optimized_graphs
from mtnsails.model_dir.jinja_template import template_from_dict
from mtnsails.model_dir.metadata import (
    DEFAULT_ONNX_DIR,
    DEFAULT_OPSET,
    FP32_FILE,
    INT4_FILE,
    INT8_FILE,
    ONNX_FORMAT,
    PYTORCH_WEIGHTS,
    context_length,
)
from mtnsails.model_dir.onnx_metadata import read_onnx_directory, write_onnx_metadata
from mtnsails.model_dir.output import atomic_directory

VERIFY_PROMPTS = ("Hello, how are you?", "What is mtnsails?", "Explain ONNX in one sentence.")
LOGIT_TOLERANCE = 1e-3  # fp32 export vs PyTorch; measured differences are ~1e-6 to 3e-6
# Share of positions where a quantized file must pick PyTorch's greedy token (teacher-forced).
# Rounding weights flips only near-tie positions: int8 (256 levels per tensor) stays above 95 %
# on the tiny test model; int4 (16 levels per block of 32) flips more of them, yet a file below
# 80 % rewrites whole answers rather than a word here and there.
MIN_AGREEMENT = {"int8": 0.9, "int4": 0.8}
QUANTIZE_CHOICES = ("none", "int8", "int4", "all")


@dataclass
class VerificationReport:
    """PyTorch vs ONNX Runtime on the same prompts (teacher-forced through the KV-cache path)."""

    prompts: int = 0
    positions: int = 0
    max_logit_diff: float = 0.0
    greedy_match: bool = True
    agreement: dict[str, float] = field(default_factory=dict)  # precision -> share of positions whose
    # argmax is PyTorch's greedy token
    problems: list[str] = field(default_factory=list)

    @property
    def int8_agreement(self) -> float | None:
        """`agreement["int8"]` (None without an int8 file), as the original report had it."""
        return self.agreement.get("int8")

    @property
    def ok(self) -> bool:
        """True when no check failed (`problems` is empty)."""
        return not self.problems

    def format_text(self) -> str:
        """The figures as printed after `convert --verify`: logit difference, greedy and quantized agreement."""
        lines = [
            f"verified {self.prompts} prompts ({self.positions} positions): "
            f"max logit difference {self.max_logit_diff:.2e}, greedy continuations "
            f"{'agree' if self.greedy_match else 'DIFFER'}"
        ]
        for precision, share in self.agreement.items():
            lines.append(
                f"{precision} greedy token agrees with fp32 PyTorch on {share:.1%} of positions "
                f"(needs {MIN_AGREEMENT[precision]:.0%})"
            )
        return "\n".join(lines)

    def format_problems(self) -> str:
        """One "verification failed: ..." line per problem (for stderr)."""
        return "\n".join(f"verification failed: {problem}" for problem in self.problems)


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence torch tracer warnings and optimum/transformers chatter (opset advice, tied-weight notes)."""
    from optimum.utils import logging as optimum_logging
    from transformers.utils import logging as hf_logging

    verbosities = [(module, module.get_verbosity()) for module in (optimum_logging, hf_logging)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module, _ in verbosities:
            module.set_verbosity_error()
        try:
            yield
        finally:
            for module, verbosity in verbosities:
                module.set_verbosity(verbosity)


def _megabytes(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


class ONNXConverter:
    """Convert a trained model directory (save_pretrained + tokenizer) to an ONNX chat directory.

    >>> converter = ONNXConverter("./trained_model")
    >>> converter.convert_to_onnx("./onnx_model", quantize="int8")
    >>> converter.verify("./onnx_model").ok
    """

    def __init__(self, model_path: str | os.PathLike, quiet: bool = False, echo: Callable[[str], None] = print) -> None:
        """Check `model_path` holds config.json and weights; `quiet` silences progress, `echo` prints it."""
        self.model_path = Path(model_path)
        self.quiet = quiet
        self._echo = echo
        if not self.model_path.is_dir():
            raise MtnsailsError(f"model path {self.model_path} does not exist or is not a directory")
        if (self.model_path / FP32_FILE).exists():
            raise MtnsailsError(f"{self.model_path} is already an ONNX model directory: chat with it directly")
        if not (self.model_path / "config.json").exists() or not any(
            (self.model_path / name).exists() for name in PYTORCH_WEIGHTS
        ):
            raise MtnsailsError(
                f"{self.model_path} is not a trained model directory (needs config.json and model.safetensors)"
            )
        weights = self.model_path / "pytorch_model.bin"
        if weights.is_file() and not is_torch_save_file(weights):
            raise MtnsailsError(
                f"{weights}: not a PyTorch weights file (torch.save or model.safetensors); it is never unpickled"
            )
        tokenizer = self.model_path / "tokenizer.json"
        if tokenizer.is_file():  # a damaged one would otherwise read as "no fast tokenizer" after the export
            from tokenizers import Tokenizer

            try:
                Tokenizer.from_file(str(tokenizer))
            except Exception as error:  # tokenizers raises a bare Exception for a bad file
                raise MtnsailsError(f"{tokenizer}: cannot be read as a tokenizer ({first_line(error)})") from None

    def _say(self, message: str) -> None:
        if not self.quiet:
            self._echo(message)

    # -- export --------------------------------------------------------------------------------

    def convert_to_onnx(
        self,
        output_path: str | os.PathLike = DEFAULT_ONNX_DIR,
        opset_version: int = DEFAULT_OPSET,
        use_io_binding: bool = True,
        quantize: str = "none",
    ) -> str:
        """Export to `output_path` (replaced atomically) and return its path.

        `use_io_binding` is accepted for the original API: chat always uses IO binding.
        `quantize="int8"` also writes model_int8.onnx, "int4" model_int4.onnx, "all" both. Each
        graph is also stored as onnxruntime optimised it for this CPU (see `optimized_graph`).
        """
        output = Path(output_path).resolve()
        if output == self.model_path.resolve() or self.model_path.resolve() in output.parents:
            raise MtnsailsError(f"--onnx-output {output_path} must not be the model directory or inside it")
        quantize = quantize or "none"
        if quantize not in QUANTIZE_CHOICES:
            raise MtnsailsError(f"quantize {quantize!r} is not one of {', '.join(QUANTIZE_CHOICES)}")
        with atomic_directory(output, kind=ONNX_FORMAT) as staging:
            start = time.perf_counter()
            kv_cache = "shared" if self._export(staging, opset_version) else None
            self._say(
                f"exported {FP32_FILE} ({_megabytes(staging / FP32_FILE)}) in {time.perf_counter() - start:.1f} s"
            )
            files = {"fp32": FP32_FILE}
            for precision, file, method in (
                ("int8", INT8_FILE, self.quantize_int8),
                ("int4", INT4_FILE, self.quantize_int4),
            ):
                if quantize in (precision, "all"):
                    start = time.perf_counter()
                    method(staging)
                    files[precision] = file
                    self._say(f"quantized {file} ({_megabytes(staging / file)}) in {time.perf_counter() - start:.1f} s")
            untranspose_head(staging / FP32_FILE)  # after quantizing: both quantizers expect the Transpose
            start = time.perf_counter()
            optimized = store_optimized_graphs(staging, files)
            self._say(
                f"stored {len(optimized['files'])} graph(s) optimised for this CPU "
                f"in {time.perf_counter() - start:.1f} s"
            )
            write_onnx_metadata(staging, self.model_path, files, opset_version, optimized, kv_cache)
        self._say(f"ONNX model directory: {output}")
        return str(output)

    def _export(self, staging: Path, opset_version: int) -> bool:
        """Export model.onnx into `staging`; True when its attention was fused (shared KV cache).

        Each rewrite that does not apply to this model's family says why (unless quiet)."""
        config = read_json_object(self.model_path / "config.json")
        model_type = config.get("model_type")
        check_exportable(model_type, self.model_path)
        if model_type not in TESTED_FAMILIES:
            self._say(f"note: {model_type} is exported by optimum but untested by mtnsails (docs/families.md)")
        if rope_note(config):
            self._say(rope_note(config))
        with _quiet_libraries():
            from optimum.exporters.onnx import main_export

            try:
                custom, note = export_configs(self.model_path)
                main_export(
                    str(self.model_path),
                    staging,
                    task="text-generation-with-past",
                    opset=opset_version,
                    device="cpu",
                    do_validation=False,
                    custom_onnx_configs=custom,
                )
            except Exception as error:  # a broken model directory fails deep inside transformers/torch
                raise MtnsailsError(f"cannot export {self.model_path} to ONNX: {first_line(error)}") from None
        if note:
            self._say(note)
        if not (staging / "tokenizer.json").exists():
            raise MtnsailsError(f"{self.model_path} has no fast tokenizer (tokenizer.json): chat needs one")
        graph = staging / FP32_FILE
        if not keep_last_logits(graph):
            self._say("rewrite skipped: logits for the last position only (no MatMul LM head found)")
        if retie_head(graph, tied=config.get("tie_word_embeddings", True)):
            self._say("the export stored the tied LM head weight twice: the head reads the embedding again")
        if not unflatten_linears(graph):
            self._say("rewrite skipped: linear layers unflattened (none exported as Reshape, Gemm, Reshape)")
        reason = attention_fusion(graph, staging / "config.json")
        if reason is not None:
            self._say(f"rewrite skipped: fused attention ({reason})")
        return reason is None

    def quantize_int8(self, onnx_dir: str | os.PathLike) -> Path:
        """Write onnx_dir/model_int8.onnx: dynamic int8 weights for every MatMul, the LM head included.

        optimum's AVX-512 VNNI (or AVX2) dynamic config quantizes all MatMuls; onnxruntime's
        `quantize_dynamic` defaults leave 13 of them (the 768x50257 head among them) in fp32 and
        run slower than fp32 (docs/performance.md).
        """
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        onnx_dir = Path(onnx_dir)
        make_config = (
            AutoQuantizationConfig.avx512_vnni if "avx512_vnni" in cpu_flags() else AutoQuantizationConfig.avx2
        )
        with _quiet_libraries():
            quantizer = ORTQuantizer.from_pretrained(onnx_dir, file_name=FP32_FILE)
            quantizer.quantize(
                save_dir=onnx_dir,
                file_suffix="int8",
                # per-tensor: per-channel scales decoded slower
                quantization_config=make_config(is_static=False, per_channel=False),
            )
        return onnx_dir / INT8_FILE

    def quantize_int4(self, onnx_dir: str | os.PathLike, config: Int4Config | None = None) -> Path:
        """Write onnx_dir/model_int4.onnx: int4 block-quantized weights (MatMulNBits) for every
        weight matrix, the LM head and the embedding it is tied to included (see int4_quantizer)."""
        onnx_dir = Path(onnx_dir)
        if (
            not quantize_int4(onnx_dir / FP32_FILE, onnx_dir / INT4_FILE, config)
            and (config or Int4Config()).quantize_head
        ):
            self._say("int4: the LM head is not tied to the embedding: quantized on its own, the embedding kept fp32")
        return onnx_dir / INT4_FILE

    # -- verification --------------------------------------------------------------------------

    def verify(
        self, onnx_dir: str | os.PathLike, prompts: tuple[str, ...] = VERIFY_PROMPTS, max_new_tokens: int = 16
    ) -> VerificationReport:
        """Run `prompts` through PyTorch and ONNX Runtime and compare.

        For each prompt: PyTorch greedy `generate` vs the chat generation loop (token for token),
        and the logits of the prompt's last position and of PyTorch's continuation, fed to ONNX
        through the KV cache one token at a time, vs one PyTorch forward pass. Each quantized file
        must pick PyTorch's greedy token on at least `MIN_AGREEMENT` of those positions.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        start = time.perf_counter()
        onnx_dir = Path(onnx_dir)
        meta = read_onnx_directory(onnx_dir)
        template = template_from_dict(meta.get("template"))
        eos = meta["eos_token_id"]
        shared = meta.get("kv_cache") == "shared"  # as chat runs it
        decoders = {name: OnnxDecoder(onnx_dir / file, shared_cache=shared) for name, file in meta["files"].items()}
        report = VerificationReport()
        agree = dict.fromkeys((name for name in decoders if name != "fp32"), 0)
        with _quiet_libraries():
            model = AutoModelForCausalLM.from_pretrained(self.model_path).eval()
            tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
            for prompt in prompts:
                for name, count in self._verify_prompt(
                    model, tokenizer, decoders, template.prompt_text(prompt), max_new_tokens, eos, report
                ).items():
                    agree[name] += count
        if report.max_logit_diff > LOGIT_TOLERANCE:
            report.problems.append(f"max logit difference {report.max_logit_diff:.2e} exceeds {LOGIT_TOLERANCE:g}")
        for name, count in agree.items():
            report.agreement[name] = count / report.positions
            if report.agreement[name] < MIN_AGREEMENT[name]:
                report.problems.append(
                    f"{name} greedy token agrees on only {report.agreement[name]:.1%} "
                    f"of positions (needs {MIN_AGREEMENT[name]:.0%})"
                )
        self._say(f"{report.format_text()}\n(verification took {time.perf_counter() - start:.1f} s)")
        return report

    @staticmethod
    def _verify_prompt(
        model, tokenizer, decoders: dict, prompt: str, max_new_tokens: int, eos: int, report: VerificationReport
    ) -> dict[str, int]:
        """Compare one prompt; update `report`; return how many positions each quantized file got right."""
        import torch
        from transformers import GenerationConfig as HFGenerationConfig

        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            torch_ids = torch.tensor([ids])
            hf_greedy = HFGenerationConfig(
                do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos
            )
            continuation = model.generate(
                torch_ids, attention_mask=torch.ones_like(torch_ids), generation_config=hf_greedy
            )[0, len(ids) :].tolist()
            reference = model(torch.tensor([ids + continuation])).logits[0, len(ids) - 1 :].numpy()
        greedy = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.0)
        onnx_tokens = list(generate_tokens(decoders["fp32"], ids, greedy, eos_token_id=eos))
        if onnx_tokens != continuation:
            report.greedy_match = False
            report.problems.append(
                f"greedy continuation of {prompt!r} differs: PyTorch "
                f"{tokenizer.decode(continuation)!r}, ONNX {tokenizer.decode(onnx_tokens)!r}"
            )
        logits = ONNXConverter._teacher_forced(decoders["fp32"], ids, continuation)
        report.max_logit_diff = max(report.max_logit_diff, float(np.abs(logits - reference).max()))
        report.prompts += 1
        report.positions += len(reference)
        greedy_tokens = reference.argmax(-1)
        return {
            name: int((ONNXConverter._teacher_forced(decoder, ids, continuation).argmax(-1) == greedy_tokens).sum())
            for name, decoder in decoders.items()
            if name != "fp32"
        }

    @staticmethod
    def _teacher_forced(decoder: OnnxDecoder, prompt: list[int], continuation: list[int]) -> np.ndarray:
        """Logits of every position: the prompt in one pass, then each given token through the cache."""
        decoder.reset()
        # The prompt's last position onwards: a graph whose head could not be sliced (see
        # keep_last_logits) returns every position of the prompt.
        rows = [decoder.forward(prompt)[-1:]] + [decoder.forward([token]) for token in continuation]
        return np.concatenate(rows)

    def verify_onnx_model(self, onnx_model_path: str | os.PathLike, test_text: str = "Hello, how are you?") -> bool:
        """Original API: True when PyTorch and ONNX agree on `test_text`."""
        return self.verify(onnx_model_path, prompts=(test_text,)).ok

    # -- information ---------------------------------------------------------------------------

    @staticmethod
    def get_model_info(model_path: str | os.PathLike) -> dict:
        """Size and shape of a PyTorch or ONNX model directory, read from its files (no torch)."""
        path = Path(model_path)
        if not path.is_dir():
            raise MtnsailsError(f"model path {path} does not exist or is not a directory")
        config = read_json_object(path / "config.json")
        files = {item.name: item.stat().st_size for item in sorted(path.iterdir()) if item.is_file()}
        info = {
            "path": str(path),
            "format": "onnx" if FP32_FILE in files else "pytorch",
            "model_type": config.get("model_type"),
            "vocab_size": config.get("vocab_size"),
            "layers": config.get("n_layer") or config.get("num_hidden_layers"),
            "hidden_size": config.get("n_embd") or config.get("hidden_size"),
            "context_length": context_length(config),
            "files": files,
            "size_mb": round(sum(files.values()) / 1e6, 1),
        }
        if "model.safetensors" in files:
            info["parameters"] = _safetensors_parameters(path / "model.safetensors")
        return info


def _safetensors_parameters(path: Path) -> int:
    """Parameter count from a safetensors header (8-byte length + JSON), without loading weights."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return sum(int(np.prod(entry["shape"])) for name, entry in header.items() if name != "__metadata__")
