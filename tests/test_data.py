"""ConversationDataHandler: every accepted format, every bad input, the original method names."""

from __future__ import annotations

import json

import pytest
from conftest import DATA_DIR, EXAMPLE_DATA, unreadable_file

from mtnsails.core.errors import DataFormatError, MtnsailsError
from mtnsails.data.handler import ConversationDataHandler, common_system, iter_unique, opening_questions
from mtnsails.data.records import iter_conversations, iter_records
from mtnsails.model_dir.template import exchanges


@pytest.mark.parametrize(
    "name, count, first",
    [
        ("native.json", 3, {"input": "What is a kilometre?"}),
        ("native.jsonl", 3, {"input": "What do bees make?"}),
        (
            "alpaca.json",
            3,
            {
                "input": "Translate the word into French.\n\ncat",
                "output": "The French word for cat is chat, pronounced without the final t.",
            },
        ),
        ("prompt_completion.jsonl", 2, {"input": "Write a greeting for a shop sign."}),
        ("question_answer.json", 2, {"input": "Which planet is closest to the Sun?"}),
        (
            "openai_messages.jsonl",
            2,
            {"input": "Can you suggest a classic novel?", "system": "Answer like a friendly librarian."},
        ),
        ("bom.json", 1, {"input": "Is a BOM allowed?"}),
    ],
)
def test_every_format_loads_into_native_records(name, count, first):
    handler = ConversationDataHandler.from_file(DATA_DIR / name)
    assert len(handler) == count
    assert first.items() <= handler.conversations[0].items()
    assert all(isinstance(c["input"], str) and isinstance(c["output"], str) for c in handler.conversations)


def test_alpaca_without_context_uses_the_instruction_alone():
    handler = ConversationDataHandler(DATA_DIR / "alpaca.json")
    assert handler.conversations[1]["input"] == "Give one tip for saving energy at home."


def test_sharegpt_keeps_turns_and_system_prompt():
    handler = ConversationDataHandler(DATA_DIR / "sharegpt.json")
    conversation = handler.conversations[0]
    assert conversation["system"] == "You are a patient cooking teacher."
    assert [q for q, _ in exchanges(conversation)] == ["How do I cook rice?", "And if it sticks to the pot?"]
    text = handler.format_for_training()[0]
    assert text.index("How do I cook rice?") < text.index("And if it sticks to the pot?")
    assert "history" not in handler.conversations[1]


def test_openai_multi_turn_becomes_history():
    conversation = ConversationDataHandler(DATA_DIR / "openai_messages.jsonl").conversations[1]
    assert conversation["history"] == [
        {
            "input": "How long should I steep green tea?",
            "output": "Steep green tea for two to three minutes in water just below boiling, or it turns bitter.",
        }
    ]
    assert conversation["input"] == "What temperature exactly?"


@pytest.mark.parametrize(
    "name, where",
    [
        ("not_json.json", "not valid JSON"),
        ("not_json.jsonl", "line 2: not valid JSON"),
        ("wrong_top_level.json", "expected a JSON array of conversations, got an object"),
        ("missing_keys.json", "record 1: missing 'output'"),
        ("missing_keys.jsonl", "line 3: missing 'completion'"),
        ("non_string.json", "record 1: 'output' must be a string, got a number"),
        ("invalid_utf8.json", "line 2: not valid UTF-8"),
        ("empty.json", "the file is empty"),
        ("no_such_file.json", "no such file"),
    ],
)
def test_bad_input_names_file_and_place_in_one_line(name, where):
    with pytest.raises(DataFormatError) as caught:
        ConversationDataHandler(DATA_DIR / name)
    message = str(caught.value)
    assert message.startswith(str(DATA_DIR / name) + ": ")
    assert where in message and "\n" not in message
    assert isinstance(caught.value, MtnsailsError)


def test_a_torn_last_line_of_a_log_is_skipped_with_a_warning(tmp_path, capfd):
    path = tmp_path / "chat_history.jsonl"  # as a crash (disk full, kill) can leave a log
    path.write_text('{"input": "Hi", "output": "Hello!"}\n{"input": "Bye", "outp')
    assert [c["input"] for c in ConversationDataHandler(path).conversations] == ["Hi"]
    assert capfd.readouterr().err == (f"warning: {path}: line 2 is cut short (an interrupted write); skipped it\n")


@pytest.mark.parametrize(
    "record",
    [
        {"input": "Just one?", "output": "Yes, a file may hold a single conversation object."},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
    ],
)
def test_a_single_conversation_object_is_accepted(tmp_path, record):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(record))
    assert len(ConversationDataHandler(path)) == 1


@pytest.mark.parametrize("name, where", [("deep.json", ""), ("deep.jsonl", "line 1: ")])
def test_deeply_nested_json_is_a_one_line_error(tmp_path, name, where):
    path = tmp_path / name
    path.write_text("[" * 100_000)  # Python's JSON parser gives up (RecursionError) long before
    with pytest.raises(DataFormatError) as caught:
        ConversationDataHandler(path)
    assert str(caught.value).startswith(f"{path}: {where}JSON nested too deeply")
    assert "\n" not in str(caught.value)


def test_bad_turn_inside_a_record_is_located(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(
        json.dumps([{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}])
    )
    with pytest.raises(DataFormatError, match=r"record 0: messages\[1\]: unsupported role"):
        ConversationDataHandler(path)


def test_original_method_names_still_work(tmp_path):
    handler = ConversationDataHandler(EXAMPLE_DATA)
    handler.load_from_json(EXAMPLE_DATA)  # loading again replaces, as in the original
    loaded = handler.len()
    assert loaded == len(ConversationDataHandler(EXAMPLE_DATA).conversations)
    handler.add_conversation({"input": "What is 2+2?", "output": "Two plus two makes four."})
    handler.add_conversations(
        [{"question": "Is water wet?", "answer": "Water makes other things wet when they touch it."}]
    )
    assert len(handler) == loaded + 2
    assert handler.format_for_training()[loaded] == ("User: What is 2+2?\nAssistant: Two plus two makes four.")
    assert handler.get_batch(2, start_idx=loaded) == handler.conversations[loaded:]
    ok, reasons = handler.validate_conversation_quality({"input": "Hi", "output": "Hello"}, check_length=False)
    assert not ok and reasons == ["incomplete output: ends mid-sentence without closing punctuation: 'Hello'"]
    report = handler.analyze_dataset_quality()
    assert report["total_conversations"] == loaded + 2 and report["quality_score"] >= 0.95
    assert len(handler.filter_valid_conversations()) == report["valid_conversations"]
    saved = tmp_path / "saved.json"
    handler.save_to_json(saved)
    assert ConversationDataHandler(saved).conversations == handler.conversations
    handler.add_conversations(ConversationDataHandler(DATA_DIR / "native.jsonl").conversations)
    assert len(handler) == loaded + 5  # combining files goes through add_conversations


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_save_and_load_round_trip(tmp_path, suffix):
    original = ConversationDataHandler(DATA_DIR / "sharegpt.json")
    original.add_conversation({"input": "Ça va ?", "output": "Très bien, merci beaucoup !"})
    path = tmp_path / f"out{suffix}"
    original.save_to_json(path)
    text = path.read_text(encoding="utf-8")
    if suffix == ".jsonl":
        assert len(text.splitlines()) == 3 and text.lstrip().startswith("{")
    else:
        assert text.lstrip().startswith("[")
    assert "Très bien" in text  # stored as UTF-8, not \\u escapes
    assert ConversationDataHandler(path).conversations == original.conversations


def test_save_into_missing_directory_is_a_clear_error(tmp_path):
    handler = ConversationDataHandler(DATA_DIR / "native.json")
    with pytest.raises(DataFormatError, match="does not exist"):
        handler.save_to_json(tmp_path / "missing" / "out.json")


def test_training_segments_separate_prompt_and_response():
    handler = ConversationDataHandler(DATA_DIR / "native.json")
    segments = handler.training_segments()[0]
    assert [s.is_response for s in segments] == [False, True]
    assert segments[0].text == "User: What is a kilometre?\nAssistant:"
    assert segments[1].text.startswith(" A kilometre")


@pytest.mark.parametrize(
    "records, message",
    [
        ([], "contains no conversations"),
        ([1], "record 0: expected an object, got a number"),
        ([{"foo": 1}], "record 0: unrecognised record with keys ['foo']"),
        (
            [{"input": "Hi", "output": "Hello there, friend.", "system": 3}],
            "record 0: 'system' must be a string, got a number",
        ),
        (
            [{"input": "Hi", "output": "Hello.", "history": {"input": "a"}}],
            "record 0: 'history' must be an array, got an object",
        ),
        (
            [{"input": "Hi", "output": "Hello.", "history": ["a"]}],
            "record 0: history[0]: expected an object, got a string",
        ),
        (
            [{"conversations": [{"from": "robot", "value": "beep"}]}],
            "record 0: conversations[0]: unknown speaker 'robot'",
        ),
        (
            [{"messages": [{"role": "user", "content": 5}]}],
            "record 0: messages[0]: 'content' must be a string, got a number",
        ),
        (
            [{"messages": [{"role": "user", "content": "Anyone there?"}]}],
            "record 0: no user turn followed by an assistant answer",
        ),
    ],
)
def test_each_malformed_record_is_named_with_its_problem(tmp_path, records, message):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataFormatError) as caught:
        ConversationDataHandler(path)
    assert str(caught.value).startswith(f"{path}: {message}")


def test_a_directory_is_not_a_data_file(tmp_path):
    with pytest.raises(DataFormatError, match=r"is a directory, expected a data file \(\.json, "):
        ConversationDataHandler(tmp_path)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_versions_of_one_exchange_read_as_its_last_in_the_place_of_its_first(tmp_path, suffix):
    # A chat log holds a verdict given after an exchange was logged as a new version of it.
    records = [
        {"input": "q1", "output": "wrong", "exchange_id": "a"},
        {"input": "q2", "output": "fine", "exchange_id": "b"},
        {"input": "q1", "output": "right", "exchange_id": "a", "feedback": "fixed", "model_output": "wrong"},
        {"input": "q3", "output": "no id"},
        {"input": "q3", "output": "no id"},
    ]
    path = tmp_path / f"log{suffix}"
    path.write_text(
        "".join(json.dumps(r) + "\n" for r in records) if suffix == ".jsonl" else json.dumps(records), encoding="utf-8"
    )
    conversations = ConversationDataHandler(path).conversations
    assert [(c["input"], c["output"]) for c in conversations] == [
        ("q1", "right"),
        ("q2", "fine"),
        ("q3", "no id"),
        ("q3", "no id"),
    ]  # ids only merge
    assert conversations[0]["feedback"] == "fixed"


def test_opening_questions_are_the_ones_asked_with_nothing_before_them():
    conversations = [
        {"input": "What is a derailleur?", "output": "It moves the chain."},
        {
            "input": "And how do I adjust it?",
            "output": "Turn the barrel adjuster.",
            "history": [{"input": "Which part changes gear?", "output": "The derailleur."}],
        },
        {
            "input": "What should I pack?",
            "output": "Light clothes.",
            "history": [{"input": "I am planning a trip to Japan.", "output": "Great! How can I help?"}],
        },
        {"input": "What is a derailleur?", "output": "A gear changer."},  # a repeat keeps its first answer
    ]
    assert opening_questions(conversations) == {
        "What is a derailleur?": "It moves the chain.",
        "Which part changes gear?": "The derailleur.",
    }


def test_common_system_is_the_prompt_most_records_carry():
    assert common_system([{"system": "A"}, {"system": "B"}, {"system": "B"}, {}]) == "B"
    assert common_system([{"system": "A"}, {}]) == "A"  # as many carry it as carry none
    assert common_system([{"system": "A"}, {}, {"system": ""}]) is None  # most carry none
    assert common_system([{"input": "q", "output": "a"}]) is None and common_system([]) is None


def assert_one_line_data_error(path, message: str) -> None:
    """Loading `path` fails with one line that names the file and says `message`."""
    with pytest.raises(DataFormatError) as caught:
        ConversationDataHandler(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "big.jsonl",
            '{"input": "Hi", "output": "Hello.", "n": %s}\n' % ("9" * 5001),
            "line 1: a number of 5001 digits is longer than the 4300 digits Python reads",
        ),
        ("nan.json", '[{"input": "Hi", "output": "Hello.", "score": NaN}]', "NaN is not a JSON number"),
        (
            "inf.jsonl",
            '{"input": "Hi", "output": "Hello.", "score": -Infinity}\n',
            "line 1: -Infinity is not a JSON number",
        ),
        (
            "huge.jsonl",
            '{"input": "Hi", "output": "Hello.", "score": 1e999}\n',
            "line 1: the number 1e999 is too large for a 64-bit float",
        ),
        (
            "surrogate.jsonl",
            '{"input": "Hi", "output": "Hello."}\n{"input": "A\\ud800", "output": "B."}\n',
            "line 2: holds a lone surrogate escape (\\ud800)",
        ),
        ("surrogate.json", '[{"input": "Hi", "output": "Hello \\udfff"}]', "holds a lone surrogate escape (\\udfff)"),
        (
            "notes.txt",
            "input,output\n",
            "unsupported file type '.txt' (supported: .json, .jsonl, .ndjson, .csv, .tsv, .parquet)",
        ),
    ],
)
def test_what_json_or_python_cannot_hold_is_a_one_line_error(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    assert_one_line_data_error(path, message)


def test_a_surrogate_pair_escape_is_one_character(tmp_path):
    path = tmp_path / "emoji.jsonl"
    path.write_text('{"input": "Smile?", "output": "Sure \\ud83d\\ude00"}\n')
    assert ConversationDataHandler(path).conversations[0]["output"] == "Sure \U0001f600"


def test_an_unreadable_file_is_a_one_line_error(tmp_path):
    path = unreadable_file(tmp_path / "data.jsonl")
    with pytest.raises(DataFormatError, match=r"data.jsonl: cannot be read \("):
        ConversationDataHandler(path)


def test_json_lines_read_as_the_standard_library_reads_them(tmp_path):
    # orjson reads most lines; these are the values where it could differ, and must not
    lines = [
        '{"input": "BOM?", "output": "Before this line: dropped."}',
        '{"input": "Hi", "output": "Hello.", "n": 123456789012345678901234}',  # > 64 bits
        '{"input": "Pi?", "output": "About 3.14.", "x": 3.141592653589793, "z": 1e-300}',
        '{"input": "Caf\\u00e9?", "output": "Sure \\ud83d\\ude00", "tags": [[[1]], {"a": null}], "ok": true}',
        "\u00a0 ",  # a no-break space: a blank line to Python, invalid JSON to orjson
        '{"input": "Again", "output": "Twice.", "input": "Once"}',  # the last key wins
        "[" * 600 + "]" * 600,
    ]
    path = tmp_path / "values.jsonl"
    path.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")  # a byte-order mark
    records = [record for _, record in iter_records(path)]
    assert records == [json.loads(line) for line in lines if line.strip()]
    assert type(records[1]["n"]) is int and records[3]["output"] == "Sure \U0001f600"


def test_json_lines_are_read_one_at_a_time(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"input": "Hi", "output": "Hello."}\nnot json\n')
    conversations = iter_conversations(path)
    assert next(conversations) == {"input": "Hi", "output": "Hello."}  # before line 2 is read
    with pytest.raises(DataFormatError, match="line 2: not valid JSON"):
        next(conversations)


TABLE_ROWS = [
    (["input", "output"], ["What is a tarp?", "A tarp is a sheet of waterproof fabric."]),
    (["instruction", "input", "output"], ["Translate into French.", "cat", "Chat."]),
    (["prompt", "completion"], ["Write a greeting.", "Welcome, come in!"]),
    (["question", "answer"], ["How many legs has a spider?", "A spider has 8 legs."]),
]
TABLE_EXPECTED = [
    {"input": "What is a tarp?", "output": "A tarp is a sheet of waterproof fabric."},
    {"input": "Translate into French.\n\ncat", "output": "Chat."},
    {"input": "Write a greeting.", "output": "Welcome, come in!"},
    {"input": "How many legs has a spider?", "output": "A spider has 8 legs."},
]


@pytest.mark.parametrize("suffix, separator", [(".csv", ","), (".tsv", "\t")])
@pytest.mark.parametrize(
    "columns, row, expected", [(*columns_row, expected) for columns_row, expected in zip(TABLE_ROWS, TABLE_EXPECTED)]
)
def test_csv_and_tsv_columns_are_named_as_in_json(tmp_path, suffix, separator, columns, row, expected):
    import csv

    path = tmp_path / f"data{suffix}"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter=separator).writerows([columns, row])
    assert ConversationDataHandler(path).conversations == [expected]


def test_csv_cells_stay_text_and_may_span_lines(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('input,output,id\n"Agent?","007\nat your service.",12\nWho?,\n')
    assert ConversationDataHandler(path).conversations == [
        {"input": "Agent?", "output": "007\nat your service.", "id": "12"},
        {"input": "Who?", "output": "", "id": ""},
    ]  # an empty cell is empty text


def test_parquet_keeps_nested_conversations(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    pq.write_table(
        pa.table(
            {
                "messages": [
                    [
                        {"role": "user", "content": "Is it cold?"},
                        {"role": "assistant", "content": "Yes, bring a warm jacket."},
                    ]
                ]
            }
        ),
        path,
    )
    assert ConversationDataHandler(path).conversations == [
        {"input": "Is it cold?", "output": "Yes, bring a warm jacket."}
    ]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("keys.csv", "foo,bar\n1,2\n", "row 2: unrecognised record with keys ['bar', 'foo']"),
        ("missing.csv", "question,reply\nWhy?,Because.\n", "row 2: missing 'answer'"),
        ("latin1.csv", "question,answer\nCaf\xe9?,Yes.\n".encode("latin-1"), "not"),
        ("empty.tsv", "", "the file is empty"),
        ("broken.parquet", "not parquet at all", "not a readable PARQUET file"),
    ],
)
def test_bad_tables_are_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert_one_line_data_error(path, message)


def test_several_files_of_different_formats_combine_without_cross_file_copies(tmp_path):
    first = tmp_path / "first.json"
    first.write_text(
        json.dumps(
            [
                {"question": "What is 2+2?", "answer": "It is 4."},
                {"input": "Hi", "output": "Hello!"},
                {"input": "Hi", "output": "Hello!"},
            ]
        )
    )  # a copy inside one file
    second = tmp_path / "second.jsonl"
    second.write_text(
        "\n".join(
            json.dumps(record)
            for record in [
                {"input": "What is 2+2?", "output": "It is 4.", "timestamp": "2026-01-01"},  # a copy
                {"input": "What is 2+2?", "output": "It is 4.", "system": "Be brief."},  # not a copy
                {"prompt": "Bye", "completion": "Goodbye!"},
            ]
        )
        + "\n"
    )
    handler = ConversationDataHandler.from_files([first, second])
    assert [(c["input"], c.get("system")) for c in handler.conversations] == [
        ("What is 2+2?", None),
        ("Hi", None),
        ("Hi", None),
        ("What is 2+2?", "Be brief."),
        ("Bye", None),
    ]
    assert [(s.path.name, s.conversations, s.added, s.duplicates) for s in handler.sources] == [
        ("first.json", 3, 3, 0),
        ("second.jsonl", 3, 2, 1),
    ]
    report = handler.sources_report()
    assert "first.json: 3 conversations" in report
    assert "second.jsonl: 3 conversations (1 already in an earlier file, dropped)" in report
    assert report.endswith("-> 5 conversations")
    # one file: the same conversations as from_file, and no report
    single = ConversationDataHandler.from_files([first])
    assert single.conversations == ConversationDataHandler.from_file(first).conversations
    assert single.sources_report() == "" and single.data_path == first


def test_iter_unique_drops_copies_of_earlier_groups_only():
    a, b, c = ({"input": f"Q{n}?", "output": f"Answer {n}."} for n in range(3))
    counts: list[list[int]] = []
    # the last group is checked against the earlier ones though its own keys are not kept
    assert list(iter_unique(iter([[a, a], [b, a], [c, b, a, c]]), counts)) == [a, a, b, c, c]
    assert counts == [[2, 2], [2, 1], [4, 2]]
    counts = []
    assert list(iter_unique([[a, a, b]], counts)) == [a, a, b] and counts == [[3, 3]]


def test_a_bad_file_among_several_is_named(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"input": "Hi", "output": "Hello!"}]))
    with pytest.raises(DataFormatError, match=r"missing\.json: no such file"):
        ConversationDataHandler.from_files([good, tmp_path / "missing.json"])
