"""`validate`: check a data set's quality, optionally write the valid conversations."""

from __future__ import annotations

import argparse
import sys

from mtnsails.core.errors import MtnsailsError

HELP = "check a data set's quality (and optionally filter it)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-file",
        required=True,
        nargs="+",
        metavar="DATA_FILE",
        help="conversations to check: one or more files (.json, .jsonl, .csv, .tsv "
        "or .parquet; formats may differ); a conversation already in an earlier "
        "file is dropped",
    )
    parser.add_argument("--filter", action="store_true", help="write only the valid conversations to --output")
    parser.add_argument(
        "--output",
        help="where --filter writes (default: <input stem>_filtered.json, "
        "or .jsonl for a .jsonl input, beside the input)",
    )
    parser.add_argument("--json", action="store_true", help="print the full report as JSON on stdout, nothing else")
    parser.add_argument("--quiet", action="store_true", help="print only the verdict line")


def run(args: argparse.Namespace) -> int:
    """Exit 0 when at least 50 % of the conversations are valid and no record is cut short, 1
    otherwise, 2 for unusable input."""
    import json
    from pathlib import Path

    from mtnsails.data.handler import iter_files, sources_report
    from mtnsails.data.records import JSONL_SUFFIXES, require_output_directory, write_conversations
    from mtnsails.quality.validator import DataQualityValidator

    data_files = [Path(path) for path in args.data_file]
    data_file = data_files[0]
    if args.output and not args.filter:
        raise MtnsailsError("--output is only used with --filter; add --filter to write the valid conversations")
    output = None
    if args.filter:
        suffix = ".jsonl" if data_file.suffix.lower() in JSONL_SUFFIXES else ".json"
        output = Path(args.output or data_file.with_name(f"{data_file.stem}_filtered{suffix}"))
        if output.resolve() in [path.resolve() for path in data_files]:
            raise MtnsailsError(
                f"{output}: is an input file; choose another --output (validate never overwrites its input)"
            )
        require_output_directory(output)
    sources: list = []  # filled per file as the files stream through the analysis
    report = DataQualityValidator().analyze(iter_files(data_files, sources, keep_cut_short=True))
    if args.json:
        result = report.to_dict()
        if len(data_files) > 1:
            result["files"] = [
                {"path": str(source.path), "conversations": source.conversations, "added": source.added}
                for source in sources
            ]
        print(json.dumps(result, ensure_ascii=False, indent=2))
    elif args.quiet:
        print(report.verdict_line())
    else:
        print(sources_report(sources) + "\n" if len(data_files) > 1 else f"File: {data_file}\n")
        print(report.format_text())
    if output is not None:  # a second pass: the conversations were not kept
        kept = write_conversations(
            output,
            (
                conversation
                for conversation, found in zip(iter_files(data_files, [], keep_cut_short=True), report.issues)
                if not found
            ),
        )
        if not args.quiet:
            print(
                f"Filtered: kept {kept} of {report.total} conversations, removed {report.total - kept}; wrote {output}",
                file=sys.stderr if args.json else sys.stdout,
            )
    return 0 if report.quality_score >= 0.5 and not report.counts.get("cut_short") else 1
