"""`main.py validate`: formats, bad input, exit codes, --filter, --json. Real subprocesses, but
for the per-format and per-bad-input cases, which run through `cli.main` in this process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import DATA_DIR, EXAMPLE_DATA, REPO_ROOT, run_cli, unreadable_file

FORMATS = [
    "native.json",
    "native.jsonl",
    "alpaca.json",
    "prompt_completion.jsonl",
    "question_answer.json",
    "sharegpt.json",
    "openai_messages.jsonl",
    "bom.json",
]
BAD_INPUTS = [
    "not_json.json",
    "not_json.jsonl",
    "wrong_top_level.json",
    "missing_keys.json",
    "missing_keys.jsonl",
    "non_string.json",
    "invalid_utf8.json",
    "empty.json",
    "no_such_file.json",
]


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_validates_with_exit_0(name, cli_here):
    result = cli_here("validate", "--data-file", str(DATA_DIR / name))
    assert result.returncode == 0, result.stderr
    assert "Quality score:" in result.stdout
    assert "✓ Data quality is GOOD" in result.stdout.splitlines()[-1]


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_unusable_input_exits_2_with_a_one_line_error(name, cli_here):
    result = cli_here("validate", "--data-file", str(DATA_DIR / name))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0]
    assert result.stdout == ""


def test_example_data_is_good():
    result = run_cli("validate", "--data-file", str(EXAMPLE_DATA))
    assert result.returncode == 0
    assert "✓ Data quality is GOOD" in result.stdout


def test_bad_data_exits_1_and_reports_every_issue():
    result = run_cli("validate", "--data-file", str(DATA_DIR / "bad_conversations.json"))
    assert result.returncode == 1, result.stderr
    assert "Quality score:         18.2%" in result.stdout
    assert "Examples of problems:" in result.stdout and "Recommendations:" in result.stdout
    assert result.stdout.rstrip().endswith("✗ Data quality is CRITICAL (18.2% of 11 conversations are valid)")


def test_quiet_prints_only_the_verdict():
    result = run_cli("validate", "--data-file", str(DATA_DIR / "bad_conversations.json"), "--quiet")
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["✗ Data quality is CRITICAL (18.2% of 11 conversations are valid)"]


def test_json_report_is_the_only_stdout():
    result = run_cli("validate", "--data-file", str(DATA_DIR / "bad_conversations.json"), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["total_conversations"] == 11 and report["valid_conversations"] == 2
    assert report["verdict"] == "critical" and report["near_duplicates"] == 1
    assert {entry["index"] for entry in report["issues_found"]} == set(range(1, 10))


def test_filter_writes_beside_the_input_and_keeps_the_input(tmp_path):
    data = tmp_path / "bad_conversations.json"
    shutil.copy(DATA_DIR / "bad_conversations.json", data)
    before = data.read_bytes()
    result = run_cli("validate", "--data-file", str(data), "--filter")
    assert result.returncode == 1
    filtered = tmp_path / "bad_conversations_filtered.json"
    assert f"kept 2 of 11 conversations, removed 9; wrote {filtered}" in result.stdout
    assert data.read_bytes() == before
    kept = json.loads(filtered.read_text())
    assert [c["input"] for c in kept] == ["What is the capital of Italy?", "Name a fruit."]
    again = run_cli("validate", "--data-file", str(filtered), "--quiet")
    assert again.returncode == 0


def test_filter_drops_answers_marked_bad_in_chat_and_keeps_fixed_and_good(tmp_path):
    # A chat log: each verdict came after its exchange, as a new version with the same id.
    log = tmp_path / "chat_history.jsonl"
    records = [
        {"input": "What is the capital of Germany?", "output": "Run python main.", "exchange_id": "a"},
        {"input": "Who wrote Hamlet?", "output": "The capital of France is Paris.", "exchange_id": "b"},
        {"input": "What do bees make?", "output": "Bees make honey and wax.", "exchange_id": "c"},
        {
            "input": "What is the capital of Germany?",
            "output": "Berlin is the capital of Germany.",
            "exchange_id": "a",
            "feedback": "fixed",
            "model_output": "Run python main.",
        },
        {
            "input": "Who wrote Hamlet?",
            "output": "The capital of France is Paris.",
            "exchange_id": "b",
            "feedback": "bad",
        },
        {"input": "What do bees make?", "output": "Bees make honey and wax.", "exchange_id": "c", "feedback": "good"},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    result = run_cli("validate", "--data-file", str(log), "--filter", "--output", str(tmp_path / "kept.json"))
    assert "marked bad in chat:    1" in result.stdout, result.stdout
    assert "kept 2 of 3 conversations, removed 1" in result.stdout
    kept = json.loads((tmp_path / "kept.json").read_text())
    assert [(c["output"], c["feedback"]) for c in kept] == [
        ("Berlin is the capital of Germany.", "fixed"),
        ("Bees make honey and wax.", "good"),
    ]


def test_filter_of_jsonl_writes_jsonl_and_json_mode_reports_on_stderr(tmp_path):
    data = tmp_path / "chats.jsonl"
    shutil.copy(DATA_DIR / "openai_messages.jsonl", data)
    result = run_cli("validate", "--data-file", str(data), "--filter", "--json")
    assert result.returncode == 0
    json.loads(result.stdout)
    assert "removed 0" in result.stderr
    lines = (tmp_path / "chats_filtered.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["output"] for line in lines)


def test_filter_to_chosen_output(tmp_path):
    output = tmp_path / "clean.json"
    result = run_cli(
        "validate",
        "--data-file",
        str(DATA_DIR / "bad_conversations.json"),
        "--filter",
        "--output",
        str(output),
        "--quiet",
    )
    assert result.returncode == 1
    assert len(json.loads(output.read_text())) == 2
    assert result.stdout.count("\n") == 1  # --quiet: the verdict line only


def test_filter_refuses_to_overwrite_the_input(tmp_path):
    data = tmp_path / "data.json"
    shutil.copy(DATA_DIR / "bad_conversations.json", data)
    before = data.read_bytes()
    result = run_cli("validate", "--data-file", str(data), "--filter", "--output", str(tmp_path / "." / "data.json"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "input file" in result.stderr
    assert data.read_bytes() == before


def test_deeply_nested_json_exits_2_with_a_one_line_error(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    result = run_cli("validate", "--data-file", str(deep))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: {deep}: JSON nested too deeply to read (arrays or objects inside each other about 1000 levels deep)"
    ]


def test_filter_into_a_missing_directory_fails_before_the_report(tmp_path):
    output = tmp_path / "nodir" / "x.json"
    result = run_cli(
        "validate", "--data-file", str(DATA_DIR / "bad_conversations.json"), "--filter", "--output", str(output)
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {output}: directory {output.parent} does not exist"]


def test_output_without_filter_is_an_error(tmp_path):
    result = run_cli("validate", "--data-file", str(DATA_DIR / "native.json"), "--output", str(tmp_path / "x.json"))
    assert result.returncode == 2 and "--filter" in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["validate", "--help"],
        ["validate", "--data-file", str(EXAMPLE_DATA)],
        ["validate", "--data-file", str(DATA_DIR / "empty.json")],
    ],
)
def test_help_and_validate_never_import_torch_or_transformers(argv):
    code = (
        "import sys\nfrom mtnsails.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'optimum') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.stdout.splitlines()[-1] == "HEAVY []", result.stdout + result.stderr


HOSTILE_FILES = {
    "huge_number.jsonl": '{"input": "Hi?", "output": "Hello there, friend.", "n": %s}\n' % ("1" * 5001),
    "surrogate.jsonl": '{"input": "Hi?", "output": "Hello \\ud800 there, friend."}\n',
    "not_a_number.json": '[{"input": "Hi?", "output": "Hello there, friend.", "score": NaN}]',
    "table.txt": "input,output\nHi?,Hello there.\n",
}


@pytest.mark.parametrize("name", [*HOSTILE_FILES, "unreadable.json"])
def test_hostile_data_files_are_one_line_errors_and_nothing_is_written(tmp_path, name):
    data = tmp_path / name
    if name in HOSTILE_FILES:
        data.write_text(HOSTILE_FILES[name])
    else:
        unreadable_file(data)
    result = run_cli("validate", "--data-file", str(data), "--filter", "--output", str(tmp_path / "out.json"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {data}: "), result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == [name]


def test_csv_data_validates_and_filters_to_json(tmp_path):
    data = tmp_path / "faq.csv"
    data.write_text(
        "question,answer\n"
        '"What is a base layer?","A base layer is the clothing worn next to the skin."\n'
        '"Why pack a headlamp?","Short days end early; a headlamp frees both hands."\n'
        '"Hi?",""\n'
    )
    result = run_cli("validate", "--data-file", str(data), "--filter")
    assert result.returncode == 0, result.stderr
    assert "kept 2 of 3 conversations" in result.stdout
    kept = json.loads((tmp_path / "faq_filtered.json").read_text())
    assert [c["input"] for c in kept] == ["What is a base layer?", "Why pack a headlamp?"]


def test_several_files_report_per_file_counts_and_drop_cross_file_copies(tmp_path):
    extra = tmp_path / "extra.jsonl"
    extra.write_text(
        json.dumps(
            {
                "input": "What is the capital of Italy?",  # in the first file
                "output": "Rome is the capital of Italy and home to the Colosseum.",
            }
        )
        + "\n"
        + json.dumps({"input": "Name a colour.", "output": "Green is the colour of fresh grass in spring."})
        + "\n"
    )
    first = DATA_DIR / "bad_conversations.json"
    text = run_cli("validate", "--data-file", str(first), str(extra))
    assert text.returncode == 1
    assert f"{first}: 11 conversations" in text.stdout
    assert f"{extra}: 2 conversations (1 already in an earlier file, dropped)" in text.stdout
    assert "-> 12 conversations" in text.stdout
    report = json.loads(run_cli("validate", "--data-file", str(first), str(extra), "--json").stdout)
    assert report["total_conversations"] == 12
    assert [(f["conversations"], f["added"]) for f in report["files"]] == [(11, 11), (2, 1)]
    filtered = run_cli(
        "validate",
        "--data-file",
        str(first),
        str(extra),
        "--filter",
        "--output",
        str(tmp_path / "kept.json"),
        "--quiet",
    )
    kept = json.loads((tmp_path / "kept.json").read_text())
    assert filtered.returncode == 1 and [c["input"] for c in kept] == [
        "What is the capital of Italy?",
        "Name a fruit.",
        "Name a colour.",
    ]
    refused = run_cli("validate", "--data-file", str(first), str(extra), "--filter", "--output", str(extra))
    assert refused.returncode == 2 and "is an input file" in refused.stderr


def test_a_jsonl_file_cut_short_counts_the_lost_record_and_exits_1(tmp_path):
    data = tmp_path / "chat.jsonl"
    whole = "".join(
        json.dumps({"input": f"What is {n} plus {n}?", "output": f"{n} plus {n} is {2 * n}."}) + "\n" for n in (2, 3, 4)
    )
    data.write_text(whole + '{"input": "Hi", "outp', encoding="utf-8")
    result = run_cli("validate", "--data-file", str(data), "--filter")
    assert result.returncode == 1, result.stderr
    assert "record cut short:      1" in result.stdout and "Total conversations:   4" in result.stdout
    assert f"{data}: line 4 is cut short (an interrupted write): the record is lost" in result.stdout
    assert (tmp_path / "chat_filtered.jsonl").read_text(encoding="utf-8") == whole
    assert "warning" not in result.stderr  # counted in the report instead
    verdict = "✗ Data quality is GOOD (75.0% of 4 conversations are valid), but 1 record(s) cut short"
    assert verdict + ": the file ends mid-record" in result.stdout.splitlines()


def test_records_cut_short_in_two_files_count_twice_and_a_field_named_cut_short_is_data(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(
        '{"input": "What is one plus one?", "output": "One plus one is two.", "cut_short": false}\n'
        '{"input": "Hi", "outp',
        encoding="utf-8",
    )
    second.write_text('{"input": "What is two plus two?", "output": "Two plus two is four."}\n{"inp', encoding="utf-8")
    result = run_cli("validate", "--data-file", str(first), str(second))
    assert "record cut short:      2" in result.stdout and "Valid conversations:   2" in result.stdout, result.stdout
