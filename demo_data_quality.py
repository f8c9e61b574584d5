"""See what the data-quality checks catch, on a good and a bad built-in data set.

    python demo_data_quality.py                       # the two built-in sets
    python demo_data_quality.py --data-file my.json   # ... and your own file beside them

Every conversation of the bad set shows one problem the validator finds, with why it would hurt
the trained model. Nothing is trained; torch is never imported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtnsails.core.errors import MtnsailsError
from mtnsails.data.handler import ConversationDataHandler
from mtnsails.quality.config import CODES, LABELS
from mtnsails.quality.report import QualityReport
from mtnsails.quality.validator import DataQualityValidator

GOOD = [
    {
        "input": "What is the capital of France?",
        "output": "The capital of France is Paris, which is also its largest city.",
    },
    {
        "input": "How do I reverse a list in Python?",
        "output": "Call my_list.reverse() to reverse it in place, or use reversed(my_list) to get an "
        "iterator over the items in reverse order.",
    },
    {
        "input": "Why is the sky blue?",
        "output": "Air molecules scatter short blue wavelengths of sunlight much more than red ones, "
        "so blue light reaches your eyes from every direction of the sky.",
    },
    {
        "input": "Can you suggest a quick breakfast?",
        "output": "Try oatmeal with sliced banana and a spoon of peanut butter. It takes five "
        "minutes and keeps you full until lunch.",
    },
    {
        "input": "What does HTTP status 404 mean?",
        "output": "It means the server could not find the page you asked for, usually because the "
        "address is mistyped or the page was removed.",
    },
    {
        "input": "How many planets are in the solar system?",
        "output": "There are eight planets: Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus and Neptune.",
    },
]

# One problem each; the comment says what a model trained on it would learn.
BAD = [
    {"input": "What is machine learning?", "output": ""},  # nothing: the model learns to stop at once
    {"input": "", "output": "Paris is the capital and largest city of France."},  # no question
    {"input": "Explain recursion.", "output": "Self reference."},  # terse: the model copies the brevity
    {
        "input": "Tell me a fact about cats.",
        "output": "Cats sleep a lot. Cats sleep a lot. Cats sleep a lot. Cats sleep a lot.",
    },  # loops
    {
        "input": "What is the weather like?",
        "output": "@@## $$%% ^^&& **(( )) !!~~ <<>> ||.",
    },  # symbol soup (broken scraping or encoding)
    {"input": "What is the speed of light?", "output": "What is the speed of light?"},  # parrots the question
    {
        "input": "How do I install Python?",
        "output": "Download the installer from python.org and run it, then make sure to",
    },  # cut off
    {
        "input": "What is the capital of France?",
        "output": "The capital of France is Paris, which is also its largest city.",
    },
    {
        "input": "What is the capital of France?",
        "output": "The capital of France is Paris, which is also its largest city.",
    },  # exact copy
    {
        "input": "Name the largest planet.",
        "output": "Jupiter is the largest planet in our solar system, more than twice as massive as "
        "all the other planets combined.",
    },
    {
        "input": "Name the largest planet!",
        "output": "Jupiter is the largest planet in our solar system, more than twice as massive as "
        "all other planets combined.",
    },  # near copy: one word differs
]

WHY = {
    "empty_output": "the model learns to end its reply at once",
    "empty_input": "the model learns answers to nothing in particular",
    "short_output": "the model copies the brevity and answers in fragments",
    "repetitive_output": "the model learns to loop, the commonest failure of small models",
    "gibberish_output": "symbols and markup (scraping or encoding debris) end up in its replies",
    "echo_output": "the model learns to repeat the question instead of answering it",
    "incomplete_output": "the model learns to stop mid-sentence",
    "duplicate": "copies weigh some answers more and leak between training and evaluation",
    "near_duplicate": "near copies act like duplicates: memorised, over-weighted answers",
}


def show_conversations(conversations: list[dict], report: QualityReport) -> None:
    """Print each conversation with the issues the report found in it."""
    for index, (conversation, issues) in enumerate(zip(conversations, report.issues)):
        print(f"  [{index}] Q: {conversation['input']!r}")
        print(f"      A: {conversation['output']!r}")
        if not issues:
            print("      ✓ passes every check")
        for issue in issues:
            print(f"      ✗ {LABELS[issue.code]}: {issue.reason}")
            print(f"        why it matters: {WHY[issue.code]}")


def side_by_side(reports: dict[str, QualityReport]) -> str:
    """The reports' figures in one table, a column per data set."""
    rows = [
        ("conversations", [str(r.total) for r in reports.values()]),
        ("valid", [str(r.valid) for r in reports.values()]),
        ("quality score", [f"{r.quality_score:.0%}" for r in reports.values()]),
        ("verdict", [r.verdict for r in reports.values()]),
    ]
    rows += [(LABELS[code], [str(r.counts.get(code, 0)) for r in reports.values()]) for code in CODES]
    widths = [max(10, len(name)) + 2 for name in reports]
    lines = [f"{'':<22}" + "".join(f"{name:>{w}}" for name, w in zip(reports, widths))]
    lines += [f"{label:<22}" + "".join(f"{value:>{w}}" for value, w in zip(values, widths)) for label, values in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code (2 for an unreadable --data-file)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-file", help="also check this .json/.jsonl file")
    args = parser.parse_args(argv)
    validator = DataQualityValidator()
    data_sets = {"good set": GOOD, "bad set": BAD}
    if args.data_file:
        try:
            data_sets[Path(args.data_file).name] = ConversationDataHandler.from_file(args.data_file).conversations
        except MtnsailsError as error:
            print(f"error: {error}", file=sys.stderr)
            return error.exit_code
    reports = {}
    for name, conversations in data_sets.items():
        report = validator.analyze(conversations)
        reports[name] = report
        print(f"\n{'#' * 72}\n# {name}: {len(conversations)} conversations\n{'#' * 72}")
        if len(conversations) <= 20:
            show_conversations(conversations, report)
            print()
        print(report.format_text())
    print(f"\n{'#' * 72}\n# side by side\n{'#' * 72}")
    print(side_by_side(reports))
    print(
        "\nCheck your own data: python main.py validate --data-file your_data.json "
        "(add --filter to keep only the valid conversations)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
