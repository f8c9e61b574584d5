"""ChatInterface with the real trained embedded model exported to ONNX."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, SYSTEM_CONVERSATIONS, SYSTEM_PROMPT, TINY_CONVERSATIONS

from mtnsails.core.errors import MtnsailsError
from mtnsails.data.handler import ConversationDataHandler
from mtnsails.data.logger import ConversationLogger
from mtnsails.inference.chat import ChatInterface
from mtnsails.inference.generation import OnnxDecoder
from mtnsails.inference.generation_config import GenerationConfig
from mtnsails.model_dir.template import ChatTemplate, segment_ids

pytestmark = pytest.mark.slow

GREEDY = GenerationConfig(temperature=0, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def chat(tiny_onnx_dir):
    return ChatInterface(tiny_onnx_dir, precision="fp32", generation=GREEDY)


def history_of(conversation: dict) -> list[tuple[str, str]]:
    return [(turn["input"], turn["output"]) for turn in conversation.get("history", [])]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_trained_answers_come_back(tiny_onnx_dir, precision):
    chat = ChatInterface(tiny_onnx_dir, precision=precision, generation=GREEDY)
    assert chat.model_file.name == {"fp32": "model.onnx", "int8": "model_int8.onnx"}[precision]
    for conversation in TINY_CONVERSATIONS:
        chat.history = history_of(conversation)
        assert chat.reply(conversation["input"]) == conversation["output"]
        assert chat.last_stats.stop_reason == "eos"


def test_auto_precision_picks_int8(tiny_onnx_dir):
    assert ChatInterface(tiny_onnx_dir).precision == "int8"


@pytest.mark.parametrize("repetition_penalty, no_repeat_ngram_size", [(1.0, 0), (1.2, 0), (1.0, 2)])
def test_greedy_matches_pytorch_generate_token_for_token(
    chat, trained_tiny_model_dir, repetition_penalty, no_repeat_ngram_size
):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(trained_tiny_model_dir).eval()
    config = replace(
        GREEDY, max_new_tokens=24, repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size
    )
    for question in ["What do bees make?", "Tell me something about rivers and spiders."]:
        ids = chat.prompt_ids(question)
        with torch.no_grad():
            expected = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=24,
                repetition_penalty=repetition_penalty,
                no_repeat_ngram_size=no_repeat_ngram_size,
                pad_token_id=0,
                eos_token_id=0,
            )[0, len(ids) :].tolist()
        assert list(chat.generate_ids(ids, config)) == expected


def test_prompt_is_tokenized_exactly_like_training(chat, trained_tiny_model_dir):
    from transformers import AutoTokenizer

    from mtnsails.model_dir.template import exchanges
    from mtnsails.train.collator import encode_segments

    tokenizer = AutoTokenizer.from_pretrained(trained_tiny_model_dir)
    conversation = TINY_CONVERSATIONS[-1]  # multi-turn: history + question
    training = encode_segments(tokenizer, list(chat.template.segments(exchanges(conversation))), 512)
    prompt = chat.prompt_ids(conversation["input"], history_of(conversation))
    answer = tokenizer(" " + conversation["output"], add_special_tokens=False)["input_ids"] + [0]
    assert training["input_ids"] == prompt + answer


def test_decode_step_feeds_one_new_token_with_the_kv_cache(tiny_onnx_dir):
    class RecordingDecoder(OnnxDecoder):
        def forward(self, token_ids):
            calls.append((len(token_ids), self.past_length))
            logits = super().forward(token_ids)
            cache_lengths.append(self._past[0].shape()[2])  # present.* kept inside onnxruntime
            return logits

    calls, cache_lengths = [], []
    chat = ChatInterface(tiny_onnx_dir, precision="fp32", generation=GREEDY)
    chat.decoder = RecordingDecoder(chat.model_file)
    answer = chat.reply("Who wrote Hamlet?")
    prompt = chat.last_stats.prompt_tokens
    steps = chat.last_stats.new_tokens
    assert answer == "Hamlet was written by William Shakespeare."
    # The prompt once, then exactly one token per step on top of the cached sequence.
    assert calls == [(prompt, 0)] + [(1, prompt + i) for i in range(steps - 1)]
    assert cache_lengths == [prompt + i for i in range(steps)]


def test_stream_pieces_make_up_the_answer(chat):
    pieces = []
    answer = chat.reply("How many legs does a spider have?", on_text=pieces.append)
    assert answer == "A spider has eight legs." and len(pieces) > 1 and "".join(pieces) == answer


def test_stops_at_a_new_user_turn_without_printing_the_marker(tiny_onnx_dir):
    class StopAtFrance(ChatTemplate):
        user_marker = " France"  # stands in for "User:": the model writes it mid-answer

    chat = ChatInterface(tiny_onnx_dir, precision="fp32", generation=GREEDY)
    chat.template = StopAtFrance()
    pieces = []
    assert chat.reply("What is the capital of France?", on_text=pieces.append) == "The capital of"
    assert "".join(pieces) == "The capital of" and chat.last_stats.stop_reason == "user_turn"


def test_token_limit_trims_the_half_sentence(chat):
    answer = chat.generate_response("Hello!", max_new_tokens=5, do_sample=False, repetition_penalty=1.0)
    assert chat.last_stats.stop_reason == "length"
    assert answer == "Hello!"  # "Hello! How can I" cut by the limit


def test_history_keeps_the_newest_exchanges_within_the_window(tiny_onnx_dir):
    chat = ChatInterface(tiny_onnx_dir, max_length=60, generation=GREEDY, match_questions=False)
    chat.history_exchanges = None  # as for a model trained on long sessions: all that fit
    history = [(c["input"], c["output"]) for c in TINY_CONVERSATIONS[:6]]
    ids = chat.prompt_ids("Hello!", history)
    assert len(ids) <= 60
    text = chat.tokenizer.decode(ids)
    assert text.endswith("User: Hello!\nAssistant:")
    assert "Bees make honey" in text and "capital of France" not in text  # oldest dropped first
    long_question = chat.prompt_ids(" ".join(["x"] * 500))  # too long alone: keeps its end
    assert len(long_question) == 60 and chat.tokenizer.decode(long_question).endswith("x x\nAssistant:")

    def whole_prompt(exchanges):  # every exchange kept, tokenized as training does
        pieces = segment_ids(chat.encode, chat.template.segments(exchanges), chat.eos_token_id)
        return [token for _, ids in pieces for token in ids]

    exchanges = [*history, ("Hello!", None)]
    for budget in range(8, 200, 6):  # the same as dropping the oldest until the whole prompt fits
        chat.max_length = budget
        expected = next(
            ids
            for start in range(len(exchanges))
            if len(ids := whole_prompt(exchanges[start:])) <= budget or start == len(history)
        )
        assert chat.prompt_ids("Hello!", history) == expected[-budget:], budget


def test_multi_turn_conversation_and_reset(tiny_onnx_dir):
    chat = ChatInterface(tiny_onnx_dir, generation=GREEDY)
    assert chat.reply("Which country is Paris in?") == "Paris is in France."
    assert chat.reply("And what is its largest river?") == "Its longest river is the Loire."
    assert len(chat.history) == 2
    chat.reset()
    assert chat.history == [] and len(chat.get_conversation_log()) == 2


def test_sampling_is_reproducible_with_a_seed(tiny_onnx_dir):
    hot = GenerationConfig(temperature=50.0, top_k=0, top_p=1.0, max_new_tokens=12)
    runs = {
        seed: [ChatInterface(tiny_onnx_dir, generation=replace(hot, seed=seed)).reply("Who are you?") for _ in range(2)]
        for seed in (7, 8)
    }
    assert runs[7][0] == runs[7][1] and runs[8][0] == runs[8][1]  # same seed, same answer
    assert runs[7][0] != runs[8][0]  # another seed samples something else
    # top-k 1 is greedy whatever the temperature.
    top1 = ChatInterface(tiny_onnx_dir, generation=replace(hot, top_k=1, max_new_tokens=50))
    assert top1.reply("What colour is the sky?") == "The sky is blue on a clear day."


def test_original_api_and_log(tiny_onnx_dir, tmp_path):
    log_file = tmp_path / "chat_history.jsonl"
    with ChatInterface(
        str(tiny_onnx_dir),
        device="cpu",
        max_length=256,
        log_conversations=True,
        log_file=str(log_file),
        auto_flush_interval=5,
    ) as chat:
        # The original auto-flush setting is the logger's wake-up interval (records never wait for it).
        assert isinstance(chat.logger, ConversationLogger) and chat.logger.flush_interval == 5
        answers = chat.batch_generate(
            ["What is two plus two?", "Who wrote Hamlet?"], max_new_tokens=20, do_sample=False, repetition_penalty=1.0
        )
        assert answers == ["Two plus two is four.", "Hamlet was written by William Shakespeare."]
        chat.flush_logs()
        on_disk = [json.loads(line) for line in log_file.read_text().splitlines()]
        assert [(r["input"], r["output"]) for r in on_disk] == [
            ("What is two plus two?", answers[0]),
            ("Who wrote Hamlet?", answers[1]),
        ]
        assert [r["output"] for r in chat.get_conversation_log()] == answers
        saved = chat.save_conversation_log(tmp_path / "saved.json")
        assert [r["input"] for r in json.loads(open(saved).read())] == ["What is two plus two?", "Who wrote Hamlet?"]
        chat.clear_conversation_log()
        assert chat.get_conversation_log() == []


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_feedback_amends_the_logged_exchange_with_its_context(tiny_onnx_dir, tmp_path, suffix):
    log_file = tmp_path / f"log{suffix}"
    with ChatInterface(
        tiny_onnx_dir, generation=GREEDY, log_conversations=True, log_file=log_file, system="Answer briefly."
    ) as chat:
        with pytest.raises(MtnsailsError, match="no answer"):
            chat.feedback("good")
        first = chat.reply("Which country is Paris in?")
        assert chat.feedback("good")["feedback"] == "good"
        said = chat.reply("And what is its largest river?")
        with pytest.raises(MtnsailsError, match="blank"):
            chat.feedback("fixed", "  ")
        chat.feedback("bad")
        record = chat.feedback("fixed", "Its longest river is the Loire.")  # the last verdict wins
        assert record["model_output"] == said and record["output"] == "Its longest river is the Loire."
        # the conversation goes on from the right answer
        assert chat.history[-1] == ("And what is its largest river?", "Its longest river is the Loire.")
        chat.reset()
        chat.reply("Who wrote Hamlet?")
        chat.feedback("fixed", "Shakespeare.")
        chat.feedback("good")  # back to what the model said
    logged = [
        {key: c.get(key) for key in ("input", "output", "feedback", "model_output", "history", "system")}
        for c in ConversationDataHandler(log_file).conversations
    ]
    assert logged == [
        {
            "input": "Which country is Paris in?",
            "output": first,
            "feedback": "good",
            "model_output": None,
            "history": None,
            "system": "Answer briefly.",
        },
        {
            "input": "And what is its largest river?",
            "output": "Its longest river is the Loire.",
            "feedback": "fixed",
            "model_output": said,
            "system": "Answer briefly.",
            "history": [{"input": "Which country is Paris in?", "output": first}],
        },
        {
            "input": "Who wrote Hamlet?",
            "output": chat.get_conversation_log()[-1]["output"],
            "feedback": "good",
            "model_output": None,
            "history": None,
            "system": "Answer briefly.",
        },
    ]


def test_the_logged_history_is_what_fitted_in_the_prompt(tiny_onnx_dir, tmp_path):
    chat = ChatInterface(tiny_onnx_dir, max_length=40, generation=GREEDY, match_questions=False)
    chat.history_exchanges = None  # as for a model trained on long sessions: all that fit
    for conversation in TINY_CONVERSATIONS[:4]:
        chat.reply(conversation["input"])
    record = chat.get_conversation_log()[-1]
    kept = [(turn["input"], turn["output"]) for turn in record["history"]]
    assert 0 < len(kept) < 3 and kept == chat.history[-1 - len(kept) : -1]
    assert chat.prompt_ids(record["input"], chat.history[:-1]) == chat.prompt_ids(record["input"], kept)


def test_bad_settings_are_one_line_errors(tiny_onnx_dir):
    with pytest.raises(MtnsailsError, match=r"--temperature \(temperature\) = inf must be a finite"):
        ChatInterface(tiny_onnx_dir, generation=GenerationConfig(temperature=float("inf")))
    with pytest.raises(MtnsailsError, match="auto_flush_interval"):
        ChatInterface(tiny_onnx_dir, log_conversations=True, auto_flush_interval=0)
    with pytest.raises(MtnsailsError, match="precision 'fp16' is not one of fp32, int8, int4, auto"):
        ChatInterface(tiny_onnx_dir, precision="fp16")
    with pytest.raises(MtnsailsError, match=r"has no int4 model \(convert with --quantize int4\)"):
        ChatInterface(tiny_onnx_dir, precision="int4")


def copy_with_broken_tokenizer(path, onnx_dir):
    shutil.copytree(onnx_dir, path)
    (path / "tokenizer.json").write_text("{not json", encoding="utf-8")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda path, _: path.write_text("x"), "is not a directory"),
        (lambda path, _: path.mkdir(), "is not an ONNX model directory"),
        (copy_with_broken_tokenizer, "tokenizer.json cannot be read"),
    ],
)
def test_a_wrong_model_path_is_a_one_line_error(tiny_onnx_dir, tmp_path, make, message):
    path = tmp_path / "model"
    make(path, tiny_onnx_dir)
    with pytest.raises(MtnsailsError, match=message) as raised:
        ChatInterface(path)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_chat_path_never_imports_torch_transformers_or_other_commands(tiny_onnx_dir):
    # Other command modules pull in training code (mtnsails.data.records, training_config): a cold start cost.
    code = f"""
import sys, runpy
sys.argv = ["main.py", "chat", "--model-path", {str(tiny_onnx_dir)!r}, "--prompt", "Hello!", "--temperature", "0"]
try:
    runpy.run_path({str(REPO_ROOT / "main.py")!r}, run_name="__main__")
except SystemExit as done:
    assert not done.code, done.code
from mtnsails.inference.chat import ChatInterface
ChatInterface({str(tiny_onnx_dir)!r}).generate_response("Who wrote Hamlet?")
print(sorted(name for name in ("torch", "transformers", "optimum", "mtnsails.commands.train",
                                "mtnsails.data.records") if name in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Hello! How can I help you today?", "[]"]


def test_sampling_helpers_follow_transformers_semantics():
    from mtnsails.inference.generation import RepeatedNgrams, apply_repetition_penalty, sample

    logits = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    apply_repetition_penalty(logits, np.array([0, 1, 1]), 2.0)
    assert logits.tolist() == [1.0, -4.0, 1.0, 0.5]
    banned = np.zeros(5, dtype=np.float32)
    RepeatedNgrams(3, [1, 2, 3, 1, 2]).ban(banned)  # "1 2" was followed by 3 before
    assert banned[3] == -np.inf and np.isfinite(banned[[0, 1, 2, 4]]).all()
    rng = np.random.default_rng(0)
    top_p = GenerationConfig(temperature=1.0, top_k=0, top_p=0.5)
    peaked = np.log(np.array([0.6, 0.3, 0.1]))
    assert {sample(peaked, top_p, rng) for _ in range(50)} == {0}  # 0.6 alone covers top_p 0.5
    wide = np.log(np.full(1000, 1e-3))  # flat: the nucleus is larger than the 256-token probe
    assert len({sample(wide, replace(top_p, top_p=0.9), rng) for _ in range(300)}) > 200


def test_spin_threads_false_lets_idle_onnxruntime_threads_sleep(tiny_onnx_dir):
    def spinning(chat: ChatInterface) -> str | None:
        options = chat.decoder.session.get_session_options()
        try:
            return options.get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # not set: onnxruntime's default, spinning
            return None

    assert spinning(ChatInterface(tiny_onnx_dir)) is None
    chat = ChatInterface(tiny_onnx_dir, spin_threads=False)  # as serve opens its model
    assert spinning(chat) == "0"
    chat.reload()
    assert spinning(chat) == "0"  # a reload keeps it


def test_top_ids_are_the_k_largest_largest_first_also_when_most_values_tie():
    from mtnsails.inference.generation import top_ids

    rng = np.random.default_rng(0)
    tied = np.zeros(50257, dtype=np.float32)  # the logits of ids a model never produces
    tied[rng.choice(50257, 300, replace=False)] = rng.normal(size=300)
    for values in (
        tied,
        rng.normal(size=50257).astype(np.float32),
        rng.integers(-2, 3, 5000).astype(np.float32),
        np.full(40, 1.5, dtype=np.float32),
    ):
        for k in (1, 3, 50, 256, 4000):
            # By value, largest first; equal values by index, lowest first.
            expected = np.lexsort((np.arange(values.size), -values))[:k]
            assert top_ids(values, k).tolist() == expected.tolist()
    assert top_ids(np.array([1, 3, 2], dtype=np.float32), 5).tolist() == [1, 2, 0]


def test_choosing_a_token_leaves_the_logits_as_they_were():
    """The penalty and the n-gram ban work on the logits in place and are undone afterwards:
    the token is the one a penalised, banned copy gives, and the caller's logits are unchanged."""
    from mtnsails.inference.generation import RepeatedNgrams, TokenChooser, apply_repetition_penalty

    rng = np.random.default_rng(3)
    context = [5, 7, 5, 9, 5, 7]  # "5 7" was followed by 5 before: 5 is banned after "... 5 7"
    for config in (
        GenerationConfig(temperature=0, repetition_penalty=1.3, no_repeat_ngram_size=3),
        GenerationConfig(repetition_penalty=1.3, no_repeat_ngram_size=3, seed=11),
    ):
        for _ in range(20):
            logits = rng.normal(size=64).astype(np.float32)
            logits[[5, 7, 9]] += 4  # the context's tokens lead, so the penalty and the ban matter
            before = logits.copy()
            expected_scores = logits.copy()
            apply_repetition_penalty(expected_scores, np.array(sorted(set(context))), 1.3)
            RepeatedNgrams(3, context).ban(expected_scores)
            reference = TokenChooser(replace(config, repetition_penalty=1.0, no_repeat_ngram_size=0), [])
            reference.rng = np.random.default_rng(11)
            chooser = TokenChooser(config, context, np.random.default_rng(11))
            assert chooser.choose(logits) == reference.choose(expected_scores)
            assert logits.tobytes() == before.tobytes()


def test_system_prompt_round_trip_through_train_convert_chat(system_tiny_onnx_dir, tmp_path):
    # Training recorded the data's system prompt and answer lengths; convert carried them.
    meta = json.loads((system_tiny_onnx_dir / "mtnsails.json").read_text())
    source = json.loads((Path(meta["source_model"]) / "mtnsails.json").read_text())
    assert meta["system"] == source["system"] == SYSTEM_PROMPT
    assert meta["answer_tokens"] == source["answer_tokens"] and meta["answer_tokens"]["count"] == 3
    log = tmp_path / "log.jsonl"
    with ChatInterface(
        system_tiny_onnx_dir, generation=GREEDY, log_conversations=True, log_file=log
    ) as chat:  # no system given: the recorded one
        assert chat.system == SYSTEM_PROMPT
        for record in SYSTEM_CONVERSATIONS:
            _, question, answer = (message["content"] for message in record["messages"])
            assert chat.reply(question) == answer
            chat.reset()
        assert chat.prompt_ids("Hi")[: len(chat.system_ids)] == chat.system_ids == chat.encode(SYSTEM_PROMPT + "\n")
    assert [json.loads(line)["system"] for line in log.read_text().splitlines()] == [SYSTEM_PROMPT] * 3
    plain = ChatInterface(system_tiny_onnx_dir, generation=GREEDY, system="")  # "" = none
    assert plain.system_ids == [] and plain.prompt_ids("Hi") == plain.encode("User: Hi\nAssistant:")
    other = ChatInterface(system_tiny_onnx_dir, generation=GREEDY, system="Be brief.")
    assert other.prompt_ids("Hi")[: len(other.system_ids)] == other.encode("Be brief.\n")
    with pytest.raises(MtnsailsError, match="system prompt is .* tokens: it leaves no room"):
        ChatInterface(system_tiny_onnx_dir, system="word " * 300)


def test_token_limit_comes_from_the_trained_answer_lengths(system_tiny_onnx_dir, tiny_onnx_dir, tmp_path):
    meta = json.loads((system_tiny_onnx_dir / "mtnsails.json").read_text())
    chat = ChatInterface(system_tiny_onnx_dir)
    assert chat.generation.max_new_tokens == meta["answer_tokens"]["max"] + 8 + 1
    assert (
        ChatInterface(system_tiny_onnx_dir, generation=GenerationConfig(max_new_tokens=7)).generation.max_new_tokens
        == 7
    )  # the user's limit wins
    unrecorded = tmp_path / "unrecorded"  # a model converted before lengths were recorded
    shutil.copytree(tiny_onnx_dir, unrecorded)
    meta = json.loads((unrecorded / "mtnsails.json").read_text())
    del meta["answer_tokens"]
    (unrecorded / "mtnsails.json").write_text(json.dumps(meta))
    assert ChatInterface(unrecorded).generation.max_new_tokens == 50


def test_an_answer_stopped_by_the_limit_is_marked_truncated(tiny_onnx_dir, chat):
    short = ChatInterface(tiny_onnx_dir, precision="fp32", generation=replace(GREEDY, max_new_tokens=3))
    short.reply("What colour is the sky?")
    assert short.last_stats.truncated and short.last_stats.new_tokens == 3
    assert chat.generate_response("What colour is the sky?", do_sample=False) == "The sky is blue on a clear day."
    assert not chat.last_stats.truncated and chat.last_stats.stop_reason == "eos"


def test_questions_asked_one_after_another_get_their_alone_answers(tiny_onnx_dir):
    """A session's earlier exchanges do not change the answer to a trained question."""
    from conftest import TINY_CONVERSATIONS

    questions = [c["input"] for c in TINY_CONVERSATIONS if not c.get("history")]
    greedy = GenerationConfig(temperature=0, max_new_tokens=24)
    with ChatInterface(tiny_onnx_dir, generation=greedy) as chat:
        alone = [chat.generate_response(q, max_new_tokens=24, do_sample=False) for q in questions]
        in_session = [chat.reply(q) for q in questions]
    assert in_session == alone


def test_a_reworded_question_is_asked_as_the_trained_one(tiny_onnx_dir):
    greedy = GenerationConfig(temperature=0, max_new_tokens=24)
    with ChatInterface(tiny_onnx_dir, generation=greedy) as chat:
        answer = chat.reply("so what's the capital city of france")
        assert chat.last_match.question == "What is the capital of France?"
        assert "Paris" in answer
        assert chat.get_conversation_log()[-1]["input"] == "so what's the capital city of france"
    with ChatInterface(tiny_onnx_dir, generation=greedy, match_questions=False) as chat:
        chat.reply("so what's the capital city of france")
        assert chat.matcher is None and chat.last_match is None


def test_after_a_promotion_reload_asks_the_new_models_questions(tiny_onnx_dir, other_onnx_dir, tmp_path):
    """`/reload` after `promote` or `watch` replaced the directory: matching, the history length
    and everything else the directory records come from the new model, none from the old."""
    from conftest import OTHER_CONVERSATIONS

    from mtnsails.loop.promoter import Promoter

    live = tmp_path / "live"
    shutil.copytree(tiny_onnx_dir, live)
    with ChatInterface(live, generation=GREEDY) as chat:
        chat.reply("so what's the capital city of france")
        assert chat.last_match.question == "What is the capital of France?"
        assert chat.history_exchanges == 1
        assert Promoter(live).promote(other_onnx_dir, OTHER_CONVERSATIONS).promoted
        chat.reload()
        chat.reset()
        chat.reply("what is the tallest mountain on earth")
        assert chat.last_match.question == "Which mountain is the tallest on Earth?"
        chat.reply("so what's the capital city of france")
        assert chat.last_match is None  # the old model's question is gone with it
        assert chat.history_exchanges == 0 and chat.matcher.questions == [
            conversation["input"] for conversation in OTHER_CONVERSATIONS
        ]


def test_a_follow_up_keeps_the_history_the_model_was_trained_with(tiny_onnx_dir):
    """The multi-turn record trained one earlier exchange: chat keeps one, so follow-ups work."""
    meta = json.loads((tiny_onnx_dir / "mtnsails.json").read_text())
    assert meta["history_exchanges"] == 1
    assert "And what is its largest river?" not in meta["questions"]  # follow-ups need context
    greedy = GenerationConfig(temperature=0, max_new_tokens=24)
    with ChatInterface(tiny_onnx_dir, generation=greedy) as chat:
        chat.reply("What do bees make?")
        chat.history.append(("Which country is Paris in?", "Paris is in France."))
        ids = chat.prompt_ids("And what is its largest river?", chat.history)
        text = chat.tokenizer.decode(ids)
        assert "Which country is Paris in?" in text and "bees" not in text
