"""`convert`: export a trained model directory to ONNX (optionally quantized, verified), or
with `--format gguf` to a GGUF file and Ollama Modelfile for llama.cpp, Ollama and LM Studio."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from mtnsails.model_dir.metadata import DEFAULT_GGUF_DIR, DEFAULT_ONNX_DIR, DEFAULT_OPSET

if TYPE_CHECKING:
    from mtnsails.export.converter import VerificationReport

HELP = "export a trained model to ONNX for fast CPU chat, or to GGUF for llama.cpp and Ollama"
# The opsets an export works with: attention (scaled_dot_product_attention) needs 14, and 20 is
# the newest that torch's TorchScript exporter, which optimum uses, supports.
OPSETS = range(14, 21)
# Mirrors mtnsails.export.gguf.GGUF_TYPES (not imported: building the parser imports no numpy).
GGUF_TYPES = ("f16", "q8_0", "q4_0")


def add_arguments(parser: argparse.ArgumentParser, standalone: bool = True) -> None:
    """`standalone=False` (pipeline) leaves out --model-path and --quiet, which train declares."""
    group = parser.add_argument_group("ONNX export")
    if standalone:
        group.add_argument("--model-path", required=True, help="trained model directory (save_pretrained)")
        group.add_argument("--quiet", action="store_true", help="print nothing but errors")
    group.add_argument(
        "--onnx-output",
        default=DEFAULT_ONNX_DIR,
        help=f"ONNX model directory to write, replaced atomically (default: {DEFAULT_ONNX_DIR})",
    )
    group.add_argument(
        "--opset-version",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {OPSETS.start} to {OPSETS.stop - 1} (default: {DEFAULT_OPSET})",
    )
    group.add_argument(
        "--verify",
        action="store_true",
        help="compare PyTorch and ONNX Runtime on test prompts; exit 1 if they disagree",
    )
    group.add_argument(
        "--quantize",
        choices=("none", "int8", "int4", "all"),
        default="none",
        help="also write model_int8.onnx (dynamic int8), model_int4.onnx (int4 blocks of 64) "
        "or both (all) (default: none)",
    )
    if standalone:  # the pipeline chats with the ONNX model it converts: GGUF is convert's alone
        _add_gguf_arguments(parser)


def _add_gguf_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("GGUF export (llama.cpp, Ollama, LM Studio)")
    group.add_argument(
        "--format",
        choices=("onnx", "gguf"),
        default="onnx",
        help="onnx: the directory chat and serve run; gguf: a .gguf file and an Ollama Modelfile (default: onnx)",
    )
    group.add_argument(
        "--gguf-type",
        choices=GGUF_TYPES,
        default=None,
        help="weights of the GGUF file: f16 (as trained), q8_0 or q4_0 (blocks of 32) (default: f16)",
    )
    group.add_argument(
        "--gguf-output",
        default=None,
        help="GGUF directory to write (the .gguf file, Modelfile, mtnsails.json), replaced atomically "
        f"(default: {DEFAULT_GGUF_DIR})",
    )


def check_settings(args: argparse.Namespace) -> None:
    """Refuse a bad export setting before any work (the pipeline calls this before it trains):
    argparse checks the choices, this the --opset-version range and that each flag fits --format."""
    from mtnsails.core.errors import MtnsailsError

    if getattr(args, "format", "onnx") == "gguf":
        if args.quantize != "none":
            raise MtnsailsError("--quantize chooses ONNX files; with --format gguf choose the weights with --gguf-type")
        if args.verify:
            raise MtnsailsError(
                "--verify compares ONNX with PyTorch; bench/gguf_bench.py checks a GGUF file with llama.cpp"
            )
    elif getattr(args, "gguf_type", None) is not None or getattr(args, "gguf_output", None) is not None:
        flag = "--gguf-type" if args.gguf_type is not None else "--gguf-output"
        raise MtnsailsError(f"{flag} needs --format gguf")
    if args.opset_version not in OPSETS:
        raise MtnsailsError(f"--opset-version {args.opset_version} must be from {OPSETS.start} to {OPSETS.stop - 1}")


def convert(args: argparse.Namespace, model_path: str | None = None) -> tuple[str, VerificationReport | None]:
    """Export (and verify) as `convert` describes; return (onnx directory, VerificationReport or None)."""
    from mtnsails.export.converter import ONNXConverter

    check_settings(args)
    converter = ONNXConverter(model_path or args.model_path, quiet=args.quiet)
    onnx_dir = converter.convert_to_onnx(args.onnx_output, opset_version=args.opset_version, quantize=args.quantize)
    report = converter.verify(onnx_dir) if args.verify else None
    if report is not None and not report.ok:
        print(report.format_problems(), file=sys.stderr)
    return onnx_dir, report


def convert_gguf(args: argparse.Namespace) -> None:
    """Write the GGUF directory and say how to run it."""
    from mtnsails.export.gguf import export_gguf

    check_settings(args)
    result = export_gguf(
        args.model_path, args.gguf_output or DEFAULT_GGUF_DIR, args.gguf_type or "f16", quiet=args.quiet
    )
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if not args.quiet:
        print(
            f"GGUF directory: {result.directory}\n"
            f"  llama.cpp:  llama-cli -m {result.gguf_file}   (or llama-server -m {result.gguf_file})\n"
            f"  Ollama:     ollama create NAME -f {result.modelfile}   (then ollama run NAME)\n"
            f"  LM Studio:  lms import {result.gguf_file}"
        )


def run(args: argparse.Namespace) -> int:
    """Exit 0 after a successful export, 1 when --verify found PyTorch and ONNX disagreeing."""
    if args.format == "gguf":
        convert_gguf(args)
        return 0
    _, report = convert(args)
    return 1 if report is not None and not report.ok else 0
