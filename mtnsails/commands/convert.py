"""`convert`: export a trained model directory to ONNX (optionally quantized, verified)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from mtnsails.model_dir.metadata import DEFAULT_ONNX_DIR, DEFAULT_OPSET

if TYPE_CHECKING:
    from mtnsails.export.converter import VerificationReport

HELP = "export a trained model to ONNX for fast CPU chat"
# The opsets an export works with: attention (scaled_dot_product_attention) needs 14, and 20 is
# the newest that torch's TorchScript exporter, which optimum uses, supports.
OPSETS = range(14, 21)


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


def check_settings(args: argparse.Namespace) -> None:
    """Refuse a bad export setting before any work (the pipeline calls this before it trains):
    argparse checks --quantize, this the --opset-version range."""
    from mtnsails.core.errors import MtnsailsError

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


def run(args: argparse.Namespace) -> int:
    """Exit 0 after a successful export, 1 when --verify found PyTorch and ONNX disagreeing."""
    _, report = convert(args)
    return 1 if report is not None and not report.ok else 0
