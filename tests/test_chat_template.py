"""A model's own Jinja chat template: training and chat build the same token ids through it.

The forms are the real templates of Qwen2.5 (ChatML), Llama 3, Gemma 3 and Phi-3 (and variants:
Llama 3.2's dated system header, Gemma 2's refused system role, Qwen3's rewritten history) on
tiny local tokenizers (tests/template_forms.py). Training's ids come from the collator, chat's
from the engine's `rendered_prompt` over the `tokenizers` tokenizer that chat loads, with the
template as it travels through mtnsails.json; transformers' `apply_chat_template` is the
reference for what the model is prompted with elsewhere.
"""

from __future__ import annotations

import json

import pytest
from template_forms import FORMS, VARIANTS, form_tokenizer, learned_runs, openai_messages, prompt_and_learned_ids

from mtnsails.core.errors import MtnsailsError
from mtnsails.inference.answer_text import AnswerText
from mtnsails.inference.engine import rendered_prompt
from mtnsails.model_dir.answer_lengths import answer_lengths
from mtnsails.model_dir.jinja_template import CHATML, JinjaTemplate, template_from_dict
from mtnsails.model_dir.onnx_metadata import check_onnx_metadata, eos_token_ids
from mtnsails.model_dir.template import ChatTemplate, exchanges
from mtnsails.train.collator import encode_segments

SYSTEM = "You are a terse travel guide."
HISTORY = [
    ("What is the capital of France?", "Paris."),
    ("And of Italy?", "Rome, since 1871."),
    ("Which one is larger?", "Rome has more people than Paris proper."),
]
QUESTION, ANSWER = "Thanks! Anything else?", "Both are worth a visit in spring."
CONVERSATION = {
    "system": SYSTEM,
    "history": [{"input": question, "output": answer} for question, answer in HISTORY],
    "input": QUESTION,
    "output": ANSWER,
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """form name -> (transformers tokenizer, its saved directory), built once per form."""
    built = {}

    def get(name):
        if name not in built:
            tokenizer = form_tokenizer({**FORMS, **VARIANTS}[name])
            path = tmp_path_factory.mktemp(name.replace(".", "_"))
            tokenizer.save_pretrained(path)
            built[name] = tokenizer, path
        return built[name]

    return get


def chat_prompt(path, template: JinjaTemplate, eos_id, system, question, history, budget=100_000):
    """The prompt ids chat builds: `tokenizers` from tokenizer.json, the template read back
    from its mtnsails.json record, the engine's `rendered_prompt`."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    travelled = template_from_dict(json.loads(json.dumps(template.to_dict())))
    return rendered_prompt(
        travelled, lambda text: tokenizer.encode(text, add_special_tokens=False).ids, eos_id, system, question,
        history, budget,
    )  # fmt: skip


def messages(history, question, answer=None, system=SYSTEM):
    result = [{"role": "system", "content": system}] if system else []
    for q, a in history:
        result += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    result.append({"role": "user", "content": question})
    return result + ([{"role": "assistant", "content": answer}] if answer is not None else [])


@pytest.mark.parametrize("name", list(FORMS))
def test_training_and_chat_build_the_same_ids_and_learn_only_the_answers(saved, name):
    tokenizer, path = saved(name)
    form = FORMS[name]
    template = JinjaTemplate.from_tokenizer(tokenizer)
    assert template.end_of_turn == form.end_of_turn
    assert JinjaTemplate.from_tokenizer_files(path) == template  # a plain export reads the same
    segments = list(template.segments(exchanges(CONVERSATION), SYSTEM))
    training = encode_segments(tokenizer, segments, max_length=4096)
    ids, labels = training["input_ids"], training["labels"]

    prompt, start = chat_prompt(path, template, tokenizer.eos_token_id, SYSTEM, QUESTION, HISTORY)
    assert start == 0
    assert ids[: len(prompt)] == prompt and labels[: len(prompt)].count(-100) < len(prompt)  # history answers learned
    # what transformers feeds the model for the same conversation is what chat feeds it
    assert prompt == tokenizer.apply_chat_template(messages(HISTORY, QUESTION), add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(messages(HISTORY, QUESTION, ANSWER))
    assert ids == whole[: len(ids)]  # and training learns from its ids (what follows the last end-of-turn dropped)

    # the mask: exactly each answer's tokens and its end-of-turn token, nothing else
    runs = learned_runs(labels)
    answers = [answer for _, answer in HISTORY] + [ANSWER]
    assert [tokenizer.decode(run) for run in runs] == [answer + form.end_of_turn for answer in answers]
    assert ids[len(prompt) :] == runs[-1]
    end = tokenizer.convert_tokens_to_ids(form.end_of_turn)
    assert all(run[-1] == end for run in runs)
    assert sum(label != -100 for label in labels) == sum(map(len, runs))
    assert all(label in (-100, token) for label, token in zip(labels, ids))
    # answer lengths from the template's tokens: the end-of-turn token is not counted
    assert answer_lengths(labels, {tokenizer.eos_token_id, end}) == [
        len(tokenizer(answer, add_special_tokens=False)["input_ids"]) for answer in answers
    ]


@pytest.mark.parametrize("name", list(FORMS) + ["llama3.2", "mistral"])
def test_rendering_matches_transformers(saved, name):
    tokenizer, _ = saved(name)
    template = JinjaTemplate.from_tokenizer(tokenizer)
    for conversation in (messages(HISTORY, QUESTION), messages([], QUESTION, system=None)):
        expected = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        history = [(m["content"], n["content"]) for m, n in zip(conversation[1::2], conversation[2::2])]
        system = conversation[0]["content"] if conversation[0]["role"] == "system" else None
        assert template.render([*(history if system else []), (QUESTION, None)], system) == expected


def test_a_dated_system_header_round_trips(saved):
    """Llama 3.2 writes today's date (strftime_now) into a system header it always has."""
    from datetime import datetime

    tokenizer, path = saved("llama3.2")
    template = JinjaTemplate.from_tokenizer(tokenizer)
    assert "Today Date: " + datetime.now().strftime("%d %b %Y") in template.prompt_text("Hi")
    training = encode_segments(tokenizer, list(template.segments(exchanges(CONVERSATION), SYSTEM)), 4096)
    prompt, _ = chat_prompt(path, template, tokenizer.eos_token_id, SYSTEM, QUESTION, HISTORY)
    assert training["input_ids"][: len(prompt)] == prompt
    assert tokenizer.decode(learned_runs(training["labels"])[-1]) == ANSWER + "<|eot_id|>"


def test_a_template_without_a_system_role_gets_the_system_prompt_in_the_first_user_turn(saved):
    tokenizer, path = saved("gemma2")
    template = JinjaTemplate.from_tokenizer(tokenizer)
    assert not template.system_role
    with pytest.raises(Exception, match="System role not supported"):
        tokenizer.apply_chat_template(messages(HISTORY, QUESTION))
    prompt, _ = chat_prompt(path, template, tokenizer.eos_token_id, SYSTEM, QUESTION, HISTORY)
    folded = messages(HISTORY, QUESTION, system=None)
    folded[0]["content"] = f"{SYSTEM}\n\n{folded[0]['content']}"
    assert prompt == tokenizer.apply_chat_template(folded, add_generation_prompt=True)
    training = encode_segments(tokenizer, list(template.segments(exchanges(CONVERSATION), SYSTEM)), 4096)
    assert training["input_ids"][: len(prompt)] == prompt and len(learned_runs(training["labels"])) == 4


def test_a_template_that_rewrites_history_learns_the_last_answer_only(saved):
    """Qwen3 writes <think></think> into the last answer only: an earlier answer reads
    differently once a question follows it, so the conversation is one prompt."""
    tokenizer, path = saved("qwen3")
    template = JinjaTemplate.from_tokenizer(tokenizer)
    assert template.rewrites_history
    training = encode_segments(tokenizer, list(template.segments(exchanges(CONVERSATION), SYSTEM)), 4096)
    prompt, _ = chat_prompt(path, template, tokenizer.eos_token_id, SYSTEM, QUESTION, HISTORY)
    assert prompt == tokenizer.apply_chat_template(messages(HISTORY, QUESTION), add_generation_prompt=True)
    assert training["input_ids"][: len(prompt)] == prompt
    (run,) = learned_runs(training["labels"])
    assert tokenizer.decode(run) == "<think>\n\n</think>\n\n" + ANSWER + "<|im_end|>"


def test_a_template_that_puts_the_system_prompt_in_the_last_question_learns_the_answer_after_it(saved):
    """Mistral v0.3 writes the system prompt into the last user message only, so a conversation
    that ends in an answer renders without it: training learns the last answer after the prompt
    chat builds (the system prompt in the question); without a system prompt, every answer."""
    tokenizer, path = saved("mistral")
    template = JinjaTemplate.from_tokenizer(tokenizer)
    assert template.end_of_turn == "</s>" and template.system_role and not template.rewrites_history
    training = encode_segments(tokenizer, list(template.segments(exchanges(CONVERSATION), SYSTEM)), 4096)
    prompt, _ = chat_prompt(path, template, tokenizer.eos_token_id, SYSTEM, QUESTION, HISTORY)
    assert prompt == tokenizer.apply_chat_template(messages(HISTORY, QUESTION), add_generation_prompt=True)
    (run,) = learned_runs(training["labels"])
    assert training["input_ids"] == prompt + run and tokenizer.decode(run) == f" {ANSWER}</s>"
    training = encode_segments(tokenizer, list(template.segments(exchanges(CONVERSATION))), 4096)
    answers = [answer for _, answer in HISTORY] + [ANSWER]
    assert [tokenizer.decode(run) for run in learned_runs(training["labels"])] == [f" {a}</s>" for a in answers]
    whole = tokenizer.apply_chat_template(messages(HISTORY, QUESTION, ANSWER, system=None))
    assert training["input_ids"] == whole


def test_chat_keeps_the_newest_exchanges_that_fit_and_the_end_of_a_long_question(saved):
    tokenizer, path = saved("chatml")
    template = JinjaTemplate.from_tokenizer(tokenizer)
    eos = tokenizer.eos_token_id
    full, _ = chat_prompt(path, template, eos, SYSTEM, QUESTION, HISTORY)
    for budget in range(20, len(full) + 5, 7):
        prompt, start = chat_prompt(path, template, eos, SYSTEM, QUESTION, HISTORY, budget)
        assert len(prompt) <= budget
        expected = next(
            (ids for first in range(len(HISTORY) + 1)
             if len(ids := chat_prompt(path, template, eos, SYSTEM, QUESTION, HISTORY[first:])[0]) <= budget),
            None,
        )  # fmt: skip
        if expected is not None:  # the oldest exchanges dropped until it fits; the system prompt stays
            assert prompt == expected and tokenizer.decode(prompt).startswith("<|im_start|>system\n" + SYSTEM)
    long_question = " ".join(["words"] * 300) + " end?"
    prompt, start = chat_prompt(path, template, eos, SYSTEM, long_question, HISTORY, 60)
    text = tokenizer.decode(prompt)
    assert len(prompt) <= 60 and start == len(HISTORY)
    assert text.startswith("<|im_start|>system\n") and text.endswith("words end?<|im_end|>\n<|im_start|>assistant\n")


def test_a_template_without_an_end_of_turn_token_ends_answers_in_eos(saved):
    tokenizer, _ = saved("chatml")
    template = JinjaTemplate(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}",
        end_of_turn="",
    )
    segments = list(template.segments([("Hi", "Hello."), ("Bye", "Bye.")]))
    assert [(s.text, s.is_response, s.eos) for s in segments] == [
        ("user: Hi\nassistant:", False, True),
        (" Hello.", True, True),
        ("\nuser: Bye\nassistant:", False, True),
        (" Bye.", True, True),
    ]
    encoded = encode_segments(tokenizer, segments, 512)
    assert all(run[-1] == tokenizer.eos_token_id for run in learned_runs(encoded["labels"]))


def test_generation_markers_render_as_their_body():
    template = JinjaTemplate(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{% generation %}"
        "{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}{{ '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        end_of_turn="<|im_end|>",
    )
    assert template.render([("Hi", "Hello.")]) == JinjaTemplate(CHATML, end_of_turn="<|im_end|>").render(
        [("Hi", "Hello.")]
    )


def test_original_api_texts_are_rendered_through_the_models_template():
    from mtnsails.train.trainer import parse_text

    template = JinjaTemplate(CHATML, end_of_turn="<|im_end|>")
    assert parse_text("User: Hi\nAssistant: Hello.", template) == list(template.segments([("Hi", "Hello.")]))
    assert parse_text("free text", template)[0].text == "free text"


def test_answers_stop_at_any_end_id():
    from tokenizers import Tokenizer, models

    tokenizer = Tokenizer(models.WordLevel({"a": 0, "b": 1, "<|im_end|>": 2, "<|endoftext|>": 3}, unk_token="a"))
    for end in (2, 3):
        answer = AnswerText(tokenizer, ["<|im_end|>"], {2, 3})
        for token in (0, 1, end):
            answer.add(token)
        assert answer.stop_reason == "eos" and answer.ids == [0, 1]


def test_every_eos_of_the_generation_config_is_an_end(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 151643}))
    assert eos_token_ids(tmp_path) == [151645, 151643]
    assert eos_token_ids(tmp_path / "missing") == []


def test_the_mtnsails_json_record_is_checked():
    record = JinjaTemplate(CHATML, {"eos_token": "<|im_end|>"}, "<|im_end|>").to_dict()
    meta = {"files": {"fp32": "model.onnx"}, "template": record}
    assert check_onnx_metadata(meta, "x/mtnsails.json") is meta
    assert template_from_dict(record) == JinjaTemplate(CHATML, {"eos_token": "<|im_end|>"}, "<|im_end|>")
    assert template_from_dict(None) == ChatTemplate()
    for bad, phrase in [
        ({**record, "chat_template": "{% for %}"}, "not valid Jinja"),
        ({**record, "chat_template": 3}, '"chat_template" must be'),
        ({**record, "special_tokens": {"bos_token": 1}}, '"special_tokens" must map'),
        ({**record, "end_of_turn": None}, '"end_of_turn" must be'),
    ]:
        with pytest.raises(MtnsailsError, match=phrase) as raised:
            check_onnx_metadata({**meta, "template": bad}, "x/mtnsails.json")
        assert "\n" not in str(raised.value) and str(raised.value).startswith("x/mtnsails.json")


def test_a_template_that_refuses_the_conversation_is_a_one_line_error():
    template = JinjaTemplate("{{ raise_exception('Only user and assistant roles are supported!') }}")
    with pytest.raises(MtnsailsError, match="refuses the conversation: Only user and assistant") as raised:
        list(template.segments([("Hi", "Hello.")]))
    assert "\n" not in str(raised.value)


# -- giving a base model a template --------------------------------------------------------------


def test_chatml_gives_a_base_model_its_tokens_and_grows_its_embeddings():
    from mtnsails.train.models import build_embedded_model
    from mtnsails.train.templates import install_template, training_template

    model, tokenizer = build_embedded_model(["User: hi\nAssistant: Hello."])
    before = model.get_input_embeddings().num_embeddings
    assert training_template(None, ChatTemplate(), tokenizer, model, None) == (ChatTemplate(), [])  # none of its own
    template, added = training_template("chatml", ChatTemplate(), tokenizer, model, None)
    assert added == ["<|im_start|>", "<|im_end|>"]
    assert template.source == CHATML and template.end_of_turn == "<|im_end|>"
    assert {"<|im_start|>", "<|im_end|>"} <= set(tokenizer.get_added_vocab())
    assert model.get_input_embeddings().num_embeddings == before + 2 == len(tokenizer)
    ids = tokenizer("<|im_start|>user\n<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens([ids[0], ids[-1]]) == ["<|im_start|>", "<|im_end|>"]  # whole tokens
    assert install_template("chatml", tokenizer, model) == []  # a second time: nothing to add
    # from now on the tokenizer's template is the model's own; none keeps mtnsails' format, and an
    # mtnsails model continued keeps the template it was trained with
    assert training_template(None, ChatTemplate(), tokenizer, model, None) == (template, [])
    assert training_template("none", ChatTemplate(), tokenizer, model, None) == (ChatTemplate(), [])
    assert training_template(None, ChatTemplate(), tokenizer, model, ChatTemplate().to_dict())[0] == ChatTemplate()


def test_a_template_file_adds_the_markers_it_writes(tmp_path):
    from mtnsails.train.models import build_embedded_model
    from mtnsails.train.templates import install_template

    model, tokenizer = build_embedded_model(["User: hi\nAssistant: Hello."])
    (tmp_path / "phi3.jinja").write_text(FORMS["phi3"].template)
    added = install_template(str(tmp_path / "phi3.jinja"), tokenizer, model)
    assert added == ["<|system|>", "<|end|>", "<|user|>", "<|assistant|>"]
    assert JinjaTemplate.from_tokenizer(tokenizer).end_of_turn == "<|end|>"
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)


@pytest.mark.parametrize(
    "choice, phrase",
    [
        ("missing.jinja", "--chat-template missing.jinja: not one of chatml, none and cannot be read"),
        ("bad.jinja", "not valid Jinja"),
    ],
)
def test_a_chat_template_that_cannot_be_used_is_refused_before_training(cli_here, tmp_path, choice, phrase):
    from conftest import assert_one_line_error

    (tmp_path / "bad.jinja").write_text("{% for message in messages %}")
    result = cli_here("train", "--model-name", "tiny", "--chat-template", choice, cwd=tmp_path)
    assert_one_line_error(result, phrase)


# -- a model trained through ChatML, exported and chatted with -----------------------------------


@pytest.fixture(scope="module")
def chatml_model(tmp_path_factory):
    """The embedded model given ChatML (`--chat-template chatml`), trained on TINY_CONVERSATIONS
    until it knows them, and exported: (model directory, ONNX directory)."""
    from conftest import TINY_CONVERSATIONS

    from mtnsails.export.converter import ONNXConverter
    from mtnsails.train.config import TrainingConfig
    from mtnsails.train.trainer import LLMTrainer

    root = tmp_path_factory.mktemp("chatml_tiny")
    config = TrainingConfig(
        model_name="tiny",
        output_dir=str(root / "model"),
        num_epochs=60,
        learning_rate=2e-3,
        save_steps=1000,
        quiet=True,
        seed=0,
        chat_template="chatml",
    )
    trainer = LLMTrainer(config=config)
    trainer.train_conversations(TINY_CONVERSATIONS)
    trainer.save_model()
    ONNXConverter(root / "model", quiet=True).convert_to_onnx(root / "onnx")
    return root / "model", root / "onnx"


@pytest.mark.slow
def test_chat_answers_through_the_template_and_stops_at_its_end_of_turn(chatml_model):
    from conftest import TINY_CONVERSATIONS

    from mtnsails.inference.chat import ChatInterface
    from mtnsails.inference.generation_config import GenerationConfig

    chat = ChatInterface(chatml_model[1], precision="fp32", generation=GenerationConfig(temperature=0))
    im_end = chat.tokenizer.token_to_id("<|im_end|>")
    assert im_end in chat.engine.stop_ids and chat.tokenizer.token_to_id("<|endoftext|>") in chat.engine.stop_ids
    for conversation in TINY_CONVERSATIONS:
        chat.history = [(turn["input"], turn["output"]) for turn in conversation.get("history", [])]
        assert chat.reply(conversation["input"]) == conversation["output"]
        assert chat.last_stats.stop_reason == "eos"


@pytest.mark.slow
def test_transformers_prompting_the_model_through_its_template_gets_the_trained_answers(chatml_model):
    """The issue's failure: prompted through its own chat template, as transformers, llama.cpp
    and Ollama prompt it, the model must answer as it learned."""
    import torch
    from conftest import TINY_CONVERSATIONS
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(chatml_model[0]).eval()
    tokenizer = AutoTokenizer.from_pretrained(chatml_model[0])
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    for conversation in TINY_CONVERSATIONS:
        ids = tokenizer.apply_chat_template(openai_messages(conversation), add_generation_prompt=True)
        with torch.no_grad():
            output = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=40)[0, len(ids) :]
        assert tokenizer.decode(output, skip_special_tokens=True) == conversation["output"]


@pytest.mark.slow
def test_chat_and_serve_prompts_are_what_training_learned_from(chatml_model):
    from conftest import TINY_CONVERSATIONS
    from transformers import AutoTokenizer

    model_dir, onnx_dir = chatml_model
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert JinjaTemplate.from_tokenizer(tokenizer).source == CHATML
    conversation = {**TINY_CONVERSATIONS[-1], "system": "Answer briefly."}  # history + question + a system prompt
    # training's ids are chat's prompt then the answer; transformers and serve build the same prompt
    ((_, learned),) = prompt_and_learned_ids(model_dir, onnx_dir, [conversation])
    assert learned == tokenizer(conversation["output"] + "<|im_end|>", add_special_tokens=False)["input_ids"]


@pytest.mark.slow
def test_the_template_travels_into_the_onnx_directory(chatml_model):
    from conftest import TINY_CONVERSATIONS
    from transformers import AutoTokenizer

    from mtnsails.model_dir.onnx_metadata import read_onnx_directory

    model_dir, onnx_dir = chatml_model
    meta = read_onnx_directory(onnx_dir)
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert meta["template"] == json.loads((model_dir / "mtnsails.json").read_text())["template"]
    assert template_from_dict(meta["template"]) == JinjaTemplate.from_tokenizer(tokenizer)  # the files agree
    assert im_end in eos_token_ids(onnx_dir)
    longest = max(len(tokenizer(c["output"], add_special_tokens=False)["input_ids"]) for c in TINY_CONVERSATIONS)
    assert meta["answer_tokens"]["max"] == longest  # counted without the end-of-turn token
    # a plain export (no mtnsails.json) of the same model still chats through its template
    assert JinjaTemplate.from_tokenizer_files(onnx_dir) == template_from_dict(meta["template"])
