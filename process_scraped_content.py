"""Turn scraped web pages (scrapyer output, .md, .html, .txt) into question/answer pairs.

    python process_scraped_content.py scraped_site/ --output chat_data.json
    python main.py validate --data-file chat_data.json
    python main.py train --data-file chat_data.json

See docs/data-formats.md, "Scraped web content" (flags: docs/commands.md); the work is done by
`mtnsails.data.scraped.ScrapedContentProcessor`.
"""

from __future__ import annotations

import argparse
import sys

from mtnsails.core.errors import MtnsailsError
from mtnsails.data.questions import DEFAULT_TEMPLATE
from mtnsails.data.scraped import ScrapedContentProcessor, ScrapedSettings


def build_parser() -> argparse.ArgumentParser:
    """The script's flags; their defaults come from `ScrapedSettings`."""
    defaults = ScrapedSettings()
    parser = argparse.ArgumentParser(
        description="Turn folders of scraped pages into question/answer pairs for training."
    )
    parser.add_argument(
        "directories", nargs="+", metavar="DIR", help="folders of pages, read recursively (files may be given too)"
    )
    parser.add_argument(
        "--output",
        default="chat_data.json",
        help="where to write the pairs; .jsonl for JSON Lines (default: %(default)s)",
    )
    parser.add_argument(
        "--chunk-words",
        type=int,
        default=defaults.chunk_words,
        help="most words per answer; answers end at sentence ends (default: %(default)s)",
    )
    parser.add_argument(
        "--prompt-template",
        default=None,
        help=f"one question template for every pair, e.g. '{DEFAULT_TEMPLATE}' "
        "(default: a natural question chosen per heading)",
    )
    parser.add_argument(
        "--keep-all", action="store_true", help="keep pairs that fail the quality checks (duplicates still go)"
    )
    parser.add_argument(
        "--append", action="store_true", help="add to an existing output file, skipping pairs it already has"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output file (without it, or --append, an existing output is an error)",
    )
    parser.add_argument("--quiet", action="store_true", help="print no summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the script; returns the exit code (0 done, 2 one-line error on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        settings = ScrapedSettings(
            chunk_words=args.chunk_words, prompt_template=args.prompt_template, keep_all=args.keep_all
        )
        result = ScrapedContentProcessor(settings).process_to_file(
            args.directories, args.output, append=args.append, overwrite=args.overwrite
        )
    except MtnsailsError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    if not args.quiet:
        print(result.format_summary())
        print(f"wrote {args.output}; next: python main.py validate --data-file {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
