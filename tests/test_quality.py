"""DataQualityValidator: each rule fires on a bad answer and stays quiet on good ones."""

from __future__ import annotations

import random

import pytest
from conftest import DATA_DIR, EXAMPLE_DATA

from mtnsails.data.handler import ConversationDataHandler
from mtnsails.quality.config import CODES, QualityConfig
from mtnsails.quality.report import QualityReport
from mtnsails.quality.rules import WORD_RE, _gopher_repetition, words_of
from mtnsails.quality.validator import DataQualityValidator, quality_gate

GOOD_ANSWERS = [
    "Paris is the capital of France and its largest city.",
    "Use my_list.reverse() to reverse it in place, or my_list[::-1] for a copy.",
    "The Moon is about 384,000 km away from Earth.",
    "Machine learning is a field of computer science that is widely used in AI.",
    "Sure! Here are the steps:\n- open the file\n- read it",
    "Run this:\n```python\nprint(sum(x * x for x in range(10)))\n```",
    'He said "good night" and left the room (quietly).',
    "That is wonderful news, congratulations 🎉",
    "Numbers such as 2, 3, 5, 7 and 11 are prime.",
    "See https://docs.python.org/3/ for the full tutorial on lists and loops.",
    "See https://example.com/a/b/c for the full details.",  # 57 % of it is the link
    "巴黎是法国的首都，也是最大的城市。",
    "日本の首都は東京です。",
    "Python — это популярный язык программирования.",
]


def codes(output: str, user_input: str = "Can you help me with a question?") -> list[str]:
    return [issue.code for issue in DataQualityValidator().check({"input": user_input, "output": output})]


@pytest.mark.parametrize("answer", GOOD_ANSWERS)
def test_good_answers_pass_every_rule(answer):
    assert codes(answer) == []


@pytest.mark.parametrize(
    "output, code, reason_part",
    [
        ("", "empty_output", "empty"),
        ("   \n", "empty_output", "empty"),
        ("Yes.", "short_output", "only 1 word"),
        ("Of course!", "short_output", "only 2 words"),
        ("This is very very very very good advice for you.", "repetitive_output", "'very' 4 times"),
        ("I like it. I like it. I like it.", "repetitive_output", "'i like it.' 3 times"),
        (
            'He said "shut the door." He said "shut the door." Fine.',
            "repetitive_output",
            """'he said "shut the door."' 2 times""",
        ),
        ("@@## %%$$ &&** !!~~ ^^ ok.", "gibberish_output", "letters"),
        ("http://a.example.com/x?y=1 www.b.org/z/a/b/c.html", "gibberish_output", "mostly URLs"),
        (
            "Links: " + " ".join(f"https://example.com/docs/page-{n}.html" for n in range(4)),
            "gibberish_output",
            "mostly URLs",
        ),
        (
            "See these pages: https://example.com/docs/getting-started/installation.html and "
            "https://example.com/docs/reference/configuration.html",
            "gibberish_output",
            "mostly URLs",
        ),
        ("Asdkjfhaskdjfh qweoiruqwoeiru zxcmvnbzxmcnvb lkjhasdflkjh.", "gibberish_output", "mean word length"),
        ("The capital of France is", "incomplete_output", "dangling word 'is'"),
        ("Airplanes fly because their wings push air down and", "incomplete_output", "'and'"),
        ("You should first boil the water, then add", "incomplete_output", "without closing"),
        ("We walked along the river to the...", "incomplete_output", "trails off after the word 'the'"),
        ("Here is the list of things you need:", "incomplete_output", "without closing"),
    ],
)
def test_each_rule_fires_with_an_actionable_reason(output, code, reason_part):
    issues = DataQualityValidator().check({"input": "Tell me something useful.", "output": output})
    matching = [issue for issue in issues if issue.code == code]
    assert matching, issues
    assert reason_part in matching[0].reason


def test_empty_input_is_flagged():
    issues = DataQualityValidator().check({"input": "  ", "output": "A complete answer here."})
    assert [issue.code for issue in issues] == ["empty_input"]


def test_an_answer_marked_bad_in_chat_is_invalid_whatever_it_reads_like():
    validator = DataQualityValidator()
    wrong = {"input": "What is the capital of Germany?", "output": "The capital of Germany is Bonn.", "feedback": "bad"}
    issues = validator.check(wrong)
    assert [issue.code for issue in issues] == ["marked_bad"]
    assert "marked bad in chat" in issues[0].reason
    fixed = {
        **wrong,
        "feedback": "fixed",
        "output": "The capital of Germany is Berlin.",
        "model_output": wrong["output"],
    }
    good = {"input": "Who wrote Hamlet?", "output": "William Shakespeare wrote it.", "feedback": "good"}
    report = validator.analyze([wrong, fixed, good])
    assert report.counts["marked_bad"] == 1 and report.valid == 2
    assert validator.filter_valid([wrong, fixed, good]) == [fixed, good]
    assert any("marked bad in chat" in text for text in report.recommendations)


def test_echo_fires_on_a_repeated_question_but_not_on_a_restated_answer():
    question = "What is the capital of France?"
    assert codes("You asked what the capital of France is.", question) == ["echo_output"]
    assert codes("What is the capital of France?", question) == ["echo_output"]
    # original false positive: restating the question and then answering it is fine
    assert codes("The capital of France is Paris.", question) == []
    assert codes("The capital of France is Paris, a city of two million people on the Seine.", question) == []


def test_short_last_word_is_not_incomplete():
    # original false positive: a two-letter last word ("AI") counted as a cut
    assert codes("Neural networks are used in AI.") == []
    assert codes("Machine learning is widely used in AI") == ["incomplete_output"]


@pytest.mark.parametrize(
    "text",
    [
        "don't stop, it's 5 o'clock",
        "'quoted' and a''b or rock'n'roll'",
        "snake_case x2 __init__",
        "tabs\tand\nlines-with-dashes (and) [brackets]!",
        "l'été où ’twas",
        "",
        "' ' '",
    ],
)
def test_words_of_splits_like_the_word_pattern(text):
    assert words_of(text) == WORD_RE.findall(text)


def test_ngrams_match_on_word_boundaries_only():
    # "art is" occurs inside "start issues" as a substring but not as words
    text = "Good art is hard to define. Many start issues with a blank page, while others begin with a sketch."
    assert codes(text) == []


def test_long_natural_text_passes_the_gopher_rules():
    text = (
        "Rivers shape the land over thousands of years. Water carries sand and stones "
        "downstream, cutting valleys through soft rock and leaving harder ridges behind. "
        "Where a river slows near the sea, it drops its load and builds a delta of fertile "
        "mud. Farmers have settled on such deltas since ancient times, because the soil is "
        "rich and water is close. Floods remain the price of that richness, which is why "
        "many delta cities now rely on dikes, pumps and careful planning."
    )
    assert len(text.split()) >= QualityConfig().gopher_min_words
    assert codes(text) == []


@pytest.mark.parametrize(
    "text, reason_part",
    [
        (
            "\n".join(
                ["Buy now and save big on shoes today."] * 6
                + [
                    "Our shop has many other items for you to browse, with fair prices, friendly "
                    "staff and fast delivery across the whole country every single day."
                ]
            ),
            "repeats the line",
        ),
        (" ".join(f"the cat sat on mat number {i}." for i in range(12)), "repeats the phrase"),
    ],
)
def test_gopher_repetition_rules_fire_on_long_texts(text, reason_part):
    issues = DataQualityValidator().check({"input": "Tell me", "output": text})
    reasons = [issue.reason for issue in issues if issue.code == "repetitive_output"]
    assert reasons and reason_part in reasons[0]


def datatrove_repeated_chars(words: list[str], n: int) -> int:
    """Characters in repeated n-grams as datatrove counts them: a plain scan that counts a
    repeat once and skips past it (the validator only scans where an n-gram can repeat)."""
    seen, chars, i = set(), 0, 0
    while i <= len(words) - n:
        gram = tuple(words[i : i + n])
        if gram in seen:
            chars, i = chars + sum(map(len, gram)), i + n
        else:
            seen.add(gram)
            i += 1
    return chars


@pytest.mark.parametrize("seed", range(4))
def test_repeated_ngram_share_matches_datatrove_scan(seed):
    rng = random.Random(seed)
    words = [rng.choice("ab cd efg hi jk".split()) for _ in range(80)]
    words[10:10] = words[40:52] * 3  # overlapping repeats: the skips decide what counts
    for n in range(5, 11):
        # one character of text: the reason's percentage is the repeated characters x 100
        config = QualityConfig(max_top_ngram_char_fraction=((2, 1e9),), max_duplicate_ngram_char_fraction=((n, 0.0),))
        reason = _gopher_repetition("x", words, config)
        assert reason.startswith(f"{datatrove_repeated_chars(words, n) * 100}% of the text")


def test_markdown_headings_in_a_long_answer_are_not_symbol_soup():
    text = (
        "# Rivers\n\nRivers shape the land over thousands of years and carry sand downstream "
        "to the sea.\n\n## Deltas\n\nWhere a river slows near the coast it drops its load "
        "and builds a delta of fertile mud that farmers have used since ancient times.\n\n"
        "## Floods\n\nFloods are the price of that richness, so delta cities rely on dikes "
        "and pumps."
    )
    assert len(text.split()) >= QualityConfig().gopher_min_words
    assert codes(text) == []


@pytest.mark.parametrize(
    "text, reason_part",
    [
        (" ".join(f"Step {i}... then wait... and see." for i in range(12)), "'#' or '...' symbols"),
        (" ".join(f"temperature {i} {i + 1}" for i in range(20)) + ".", "of its words"),
    ],
)
def test_gopher_quality_rules_fire_on_long_texts(text, reason_part):
    issues = DataQualityValidator().check({"input": "Tell me", "output": text})
    reasons = [issue.reason for issue in issues if issue.code == "gibberish_output"]
    assert reasons and reason_part in reasons[0], issues


def test_compression_ratio_catches_a_short_loop_without_repeated_sentences():
    text = "na na hey hey " * 8 + "goodbye to you now."
    issues = DataQualityValidator().check({"input": "Sing", "output": text})
    assert any(i.code == "repetitive_output" and "compresses" in i.reason for i in issues)


def test_every_assistant_turn_is_checked_and_named():
    conversation = {
        "history": [{"input": "Hi there", "output": "Hello"}],
        "input": "How are you?",
        "output": "I am fine, thank you for asking.",
    }
    issues = DataQualityValidator().check(conversation)
    assert {issue.code for issue in issues} == {"short_output", "incomplete_output"}
    assert all(issue.reason.startswith("turn 1 of 2: ") for issue in issues)


def test_validate_conversation_keeps_the_original_signature_and_flags():
    validator = DataQualityValidator()
    conversation = {"input": "Hi", "output": "Fine"}
    assert validator.validate_conversation(conversation)[0] is False
    ok, reasons = validator.validate_conversation(conversation, check_length=False, check_incomplete=False)
    assert (ok, reasons) == (True, [])


def test_exact_and_near_duplicates_keep_the_first_occurrence():
    base = {
        "input": "How do I water a cactus?",
        "output": "Water it deeply about once a month and let the soil dry out completely.",
    }
    conversations = [
        base,
        {
            "input": "How do I water a fern?",
            "output": "Keep the soil of a fern slightly moist and mist its leaves in dry weather.",
        },
        {"input": "how do I water a cactus", "output": base["output"].upper()},  # same, normalised
        {
            "input": "How do I water a cactus?",  # two words changed
            "output": "Water it deeply about once a month and let the earth dry out fully.",
        },
    ]
    report = DataQualityValidator().analyze(conversations)
    assert report.issues[0] == [] and report.issues[1] == []
    assert [issue.code for issue in report.issues[2]] == ["duplicate"]
    assert "conversation 0" in report.issues[2][0].reason
    assert [issue.code for issue in report.issues[3]] == ["near_duplicate"]
    assert "conversation 0" in report.issues[3][0].reason
    assert report.counts["duplicate"] == 1 and report.counts["near_duplicate"] == 1


def test_near_duplicates_are_found_among_thousands_and_topics_are_not_confused():
    rng = random.Random(7)
    words = (
        "river stone cloud apple engine garden violin winter market lantern harbour "
        "pencil forest copper meadow signal basket candle orbit thunder"
    ).split()
    conversations = []
    for index in range(3000):
        answer = " ".join(rng.choice(words) for _ in range(rng.randint(12, 30)))
        conversations.append(
            {"input": f"Question number {index} about {rng.choice(words)}?", "output": answer.capitalize() + "."}
        )
    paraphrased = rng.sample(range(3000), 40)
    for source in paraphrased:
        tokens = conversations[source]["output"].split()
        tokens[rng.randrange(1, len(tokens))] = "zebra"
        conversations.append({"input": conversations[source]["input"], "output": " ".join(tokens)})
    report = DataQualityValidator().analyze(conversations)
    flagged = {
        index for index, found in enumerate(report.issues) if any(issue.code == "near_duplicate" for issue in found)
    }
    assert flagged == set(range(3000, 3040))


def test_report_keys_score_and_verdict():
    handler = ConversationDataHandler(DATA_DIR / "bad_conversations.json")
    report = DataQualityValidator().analyze(handler.conversations)
    result = report.to_dict()
    for key in (
        "total_conversations",
        "valid_conversations",
        "invalid_conversations",
        "quality_score",
        "issues_found",
        "recommendations",
        "empty_outputs",
        "repetitive_outputs",
        "short_outputs",
        "gibberish_outputs",
        "echo_outputs",
        "incomplete_outputs",
        "duplicates",
        "near_duplicates",
        "verdict",
        "issue_counts",
    ):
        assert key in result
    assert set(result["issue_counts"]) == set(CODES)
    # the sample hits each rule on the text (a chat verdict and a torn file are no property of it)
    assert all(result["issue_counts"][code] >= 1 for code in CODES if code not in ("marked_bad", "cut_short"))
    assert result["quality_score"] == pytest.approx(2 / 11)
    assert result["verdict"] == "critical"
    assert 1 <= len(report.examples) <= 5
    assert any("--filter" in text for text in report.recommendations)
    text = report.format_text()
    assert "18.2%" in text and text.splitlines()[-1].startswith("✗ Data quality is CRITICAL")


@pytest.mark.parametrize(
    "valid, verdict, symbol", [(7, "good", "✓"), (6, "warning", "⚠"), (5, "warning", "⚠"), (4, "critical", "✗")]
)
def test_verdict_bands(valid, verdict, symbol):
    report = QualityReport(total=10, valid=valid, issues=[[]] * 10, counts={})
    assert report.verdict == verdict
    assert report.verdict_line().startswith(f"{symbol} Data quality is {verdict.upper()}")


def test_example_data_scores_at_least_95_percent():
    handler = ConversationDataHandler(EXAMPLE_DATA)
    assert len(handler) >= 40
    report = DataQualityValidator().analyze(handler.conversations)
    assert report.quality_score >= 0.95, report.format_text()


def test_filter_valid_drops_every_flagged_conversation():
    handler = ConversationDataHandler(DATA_DIR / "bad_conversations.json")
    kept = DataQualityValidator().filter_valid(handler.conversations)
    assert [c["output"] for c in kept] == [handler.conversations[0]["output"], handler.conversations[10]["output"]]


def test_long_texts_use_word_5_gram_shingles_and_still_catch_small_edits():
    rng = random.Random(3)
    words = "river stone cloud apple engine garden violin winter market lantern".split()
    text = " ".join(rng.choice(words) for _ in range(150)) + "."
    edited = text.split()
    edited[40], edited[90] = "zebra", "yak"
    other = " ".join(rng.choice(words) for _ in range(150)) + "."
    report = DataQualityValidator().analyze(
        [
            {"input": "Long one?", "output": text},
            {"input": "Other?", "output": other},
            {"input": "Long one?", "output": " ".join(edited)},
        ]
    )
    assert [[issue.code for issue in found] for found in report.issues] == [[], [], ["near_duplicate"]]


@pytest.mark.parametrize(
    "output, category",
    [
        ("", "empty output"),
        ("Yes.", "too-short output: only 1 word"),
        ("This is very very very very good advice for you.", "repetitive output: "),
        ("@@## %%$$ &&** !!~~ ^^ ok.", "gibberish output: "),
        ("http://", "gibberish output: is mostly URLs"),  # a bare URL fragment, as the original said
        ("https://", "gibberish output: is mostly URLs"),
        ("Tell me something useful.", "output echoes input: "),
        ("The capital of France is", "incomplete output: "),
    ],
)
def test_original_api_reasons_name_their_category(output, category):
    handler = ConversationDataHandler()
    ok, reasons = handler.validate_conversation_quality({"input": "Tell me something useful.", "output": output})
    assert not ok and any(reason.startswith(category) for reason in reasons), reasons


def test_a_stream_is_analysed_like_a_list():
    conversations = ConversationDataHandler(DATA_DIR / "bad_conversations.json").conversations
    streamed = DataQualityValidator().analyze(iter(conversations))
    listed = DataQualityValidator().analyze(conversations)
    assert streamed.issues == listed.issues and streamed.counts == listed.counts
    # a stream is not kept: its examples are conversations failing a rule of their own
    assert streamed.examples and all(
        set(example["codes"]) - {"duplicate", "near_duplicate"} for example in streamed.examples
    )


def test_a_huge_answer_is_checked_on_a_bounded_part():
    config = QualityConfig(max_text_chars=2_000, max_dedup_words=100)
    sentence = "Pack a warm layer, a rain shell and enough water for the whole day. "
    huge = sentence * 20_000  # 1.4 MB, one sentence over and over
    first = {"input": "What should I pack?", "output": huge + "Have fun."}
    second = {"input": "What should I pack?", "output": huge + "Enjoy it."}
    report = DataQualityValidator(config).analyze([first, second])
    assert [issue.code for issue in report.issues[0]] == ["repetitive_output"]
    # equal in their first 100 words, different in full: a near copy, never an exact one
    assert [issue.code for issue in report.issues[1]] == ["repetitive_output", "near_duplicate"]


def test_quality_does_not_import_the_data_module():
    import subprocess
    import sys

    code = "import sys, mtnsails.quality.validator; print('mtnsails.data.records' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def mixed_conversations(count: int, seed: int = 3) -> list[dict]:
    """Varied answers, bad ones, and exact and near copies of conversations up to 500 back (so
    copies cross chunk boundaries)."""
    rng = random.Random(seed)
    words = (
        "river stone cloud apple engine garden violin winter market lantern harbour "
        "pencil forest copper meadow signal basket candle orbit thunder"
    ).split()
    conversations: list[dict] = []
    for index in range(count):
        roll = rng.random()
        if roll < 0.1 and conversations:
            conversation = dict(rng.choice(conversations[-500:]))
        elif roll < 0.2 and conversations:
            source = rng.choice(conversations[-500:])
            tokens = source["output"].split() or ["Empty"]
            tokens[rng.randrange(len(tokens))] = rng.choice(words)
            conversation = {"input": source["input"], "output": " ".join(tokens)}
        else:
            answer = " ".join(rng.choice(words) for _ in range(rng.randint(1, 40)))
            conversation = {
                "input": f"Question {index} about {rng.choice(words)}?",
                "output": answer.capitalize() + rng.choice([".", "", " and the"]),
            }
        conversations.append(conversation)
    return conversations


def test_workers_give_the_report_of_one_process():
    import multiprocessing

    conversations = mixed_conversations(3000)
    # chunks of 64, the first 200 conversations here, the rest in two worker processes
    chunked = dict(chunk_conversations=64, parallel_min_conversations=200)
    alone = DataQualityValidator(QualityConfig(workers=1, **chunked))
    together = DataQualityValidator(QualityConfig(workers=2, **chunked))
    children = []

    def stream(items):  # notes the worker processes running while the stream is read
        for index, conversation in enumerate(items):
            if index % 500 == 0:
                children.append(len(multiprocessing.active_children()))
            yield conversation

    one = alone.analyze(stream(conversations))
    assert not any(children)  # workers=1: everything in this process
    assert one.counts["duplicate"] > 100 and one.counts["near_duplicate"] > 100
    children.clear()
    parallel = together.analyze(stream(conversations))
    assert max(children) == 2 and not multiprocessing.active_children()
    assert parallel.to_dict() == one.to_dict()
    assert (
        together.analyze(conversations).to_dict()
        == DataQualityValidator().analyze(conversations).to_dict()
        == alone.analyze(conversations).to_dict()
    )


def test_a_repeat_gets_the_report_of_its_first_reading_without_a_second_check(monkeypatch):
    from mtnsails.quality import validator as quality

    cut = {"input": "Why is the sky blue?", "output": "Because the light and the"}
    conversations = [cut, dict(cut), {"input": "Hi", "output": ""}, dict(cut)]
    conversations += mixed_conversations(3000)  # 10 % exact copies of one up to 500 back
    chunked = dict(chunk_conversations=64, parallel_min_conversations=200)
    one = DataQualityValidator(QualityConfig(workers=1, **chunked))
    pairs = DataQualityValidator(QualityConfig(workers=1, chunk_conversations=2))
    with monkeypatch.context() as unseen:  # no repeats: every conversation checked on its own
        unseen.setattr(quality, "_content_key", lambda conversation: None)
        expected = one.analyze(iter(conversations)).to_dict()
        expected_pairs = pairs.analyze(iter(conversations[:50])).to_dict()
    assert [example["index"] for example in expected["problematic_examples"]][:4] == [0, 1, 2, 3]
    assert pairs.analyze(iter(conversations[:50])).to_dict() == expected_pairs  # 3 repeats 0
    monkeypatch.setattr(quality, "REMEMBERED", 300)  # older copies are checked again
    assert one.analyze(iter(conversations)).to_dict() == expected
    together = DataQualityValidator(QualityConfig(workers=2, **chunked))
    assert together.analyze(iter(conversations)).to_dict() == expected
    checked: list[int] = []
    check_chunk = quality.check_chunk
    monkeypatch.setattr(
        quality, "check_chunk", lambda validator, chunk: checked.append(len(chunk)) or check_chunk(validator, chunk)
    )
    one.analyze(iter(conversations))
    distinct = len({tuple(conversation.items()) for conversation in conversations})
    assert distinct <= sum(checked) < len(conversations) - 250  # each one once, or nearly


def test_an_error_in_a_worker_reaches_the_caller_and_stops_the_workers():
    import multiprocessing

    conversations = mixed_conversations(400) + [["not", "a", "conversation"]]
    config = QualityConfig(workers=2, chunk_conversations=64, parallel_min_conversations=128)
    with pytest.raises(AttributeError):
        DataQualityValidator(config).analyze(conversations)
    assert not multiprocessing.active_children()


def test_the_training_quality_gate_checks_in_its_own_process():
    """Training has torch's threads running: forking workers from it is not safe."""
    import multiprocessing

    children = []

    class Watched(list):  # notes the worker processes running while the gate reads the data
        def __iter__(self):
            for index, conversation in enumerate(list.__iter__(self)):
                if index % 2000 == 0:
                    children.append(len(multiprocessing.active_children()))
                yield conversation

    data = Watched(mixed_conversations(QualityConfig().parallel_min_conversations + 4000))
    report = quality_gate(data, force=True, quiet=True)
    assert report.total == len(data) and len(children) > 10 and not any(children)


def test_no_valid_conversation_gets_no_advice_to_filter_down_to_them():
    report = DataQualityValidator().analyze([{"input": "Hi", "output": ""}, {"input": "Yo", "output": "ok ok ok"}])
    assert report.valid == 0
    assert not any("--filter" in line for line in report.recommendations), report.recommendations
