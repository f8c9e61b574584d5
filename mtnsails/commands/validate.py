"""`validate`: check a data set's quality, optionally write the valid conversations."""

from __future__ import annotations

import argparse
import sys

from mtnsails.errors import MtnsailsError

HELP = "check a data set's quality (and optionally filter it)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-file", required=True, help="conversations to check: .json, .jsonl, .csv, .tsv or .parquet")
    parser.add_argument("--filter", action="store_true",
                        help="write only the valid conversations to --output")
    parser.add_argument("--output", help="where --filter writes (default: <input stem>_filtered.json, "
                                         "or .jsonl for a .jsonl input, beside the input)")
    parser.add_argument("--json", action="store_true",
                        help="print the full report as JSON on stdout, nothing else")
    parser.add_argument("--quiet", action="store_true", help="print only the verdict line")


def run(args: argparse.Namespace) -> int:
    """Exit 0 when at least 50 % of the conversations are valid, 1 below, 2 for unusable input."""
    import json
    from pathlib import Path

    from mtnsails.data import (JSONL_SUFFIXES, iter_conversations, require_output_directory,
                               write_conversations)
    from mtnsails.quality import DataQualityValidator

    data_file = Path(args.data_file)
    if args.output and not args.filter:
        raise MtnsailsError("--output is only used with --filter; add --filter to write the valid "
                            "conversations")
    output = None
    if args.filter:
        suffix = ".jsonl" if data_file.suffix.lower() in JSONL_SUFFIXES else ".json"
        output = Path(args.output or data_file.with_name(f"{data_file.stem}_filtered{suffix}"))
        if output.resolve() == data_file.resolve():
            raise MtnsailsError(f"{output}: is the input file; choose another --output "
                                "(validate never overwrites its input)")
        require_output_directory(output)
    report = DataQualityValidator().analyze(iter_conversations(data_file))
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    elif args.quiet:
        print(report.verdict_line())
    else:
        print(f"File: {data_file}\n")
        print(report.format_text())
    if output is not None:  # a second pass: the conversations were not kept
        kept = write_conversations(output, (
            conversation for conversation, found
            in zip(iter_conversations(data_file), report.issues) if not found))
        if not args.quiet:
            print(f"Filtered: kept {kept} of {report.total} conversations, removed "
                  f"{report.total - kept}; wrote {output}",
                  file=sys.stderr if args.json else sys.stdout)
    return 0 if report.quality_score >= 0.5 else 1
