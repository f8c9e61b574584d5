"""The command line's own errors: every bad flag is one `error:` line naming the command's help."""

from __future__ import annotations

import pytest
from conftest import assert_one_line_error, run_cli


@pytest.mark.parametrize(
    "args, phrases",
    [
        (
            ["train", "--learning-rate", "nan"],
            ["--learning-rate: 'nan' is not a finite number", "mtnsails train --help"],
        ),
        (
            ["chat", "--model-path", "m", "--temperature", "inf"],
            ["'inf' is not a finite number", "mtnsails chat --help"],
        ),
        (["serve", "--model-path", "m", "--top-p=-inf"], ["'-inf' is not a finite number"]),
        (["watch", "--log-file", "l", "--live", "d", "--tolerance", "nan"], ["--tolerance: 'nan'"]),
        (["train", "--bogus"], ["unrecognized arguments: --bogus", "(see mtnsails train --help)"]),
        (["convert", "--quantize", "int5"], ["invalid choice: 'int5'", "mtnsails convert --help"]),
        (["frobnicate"], ["invalid choice: 'frobnicate'", "(see mtnsails --help)"]),
        ([], ["the following arguments are required: COMMAND"]),
    ],
)
def test_bad_flags_are_one_line_errors_naming_the_help_to_read(args, phrases):
    assert_one_line_error(run_cli(*args), *phrases)


def test_help_still_prints_usage_and_exits_0():
    shown = run_cli("train", "--help")
    assert shown.returncode == 0 and shown.stdout.startswith("usage: mtnsails train")
