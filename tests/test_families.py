"""Every decoder family mtnsails supports, through every stage (docs/families.md).

For each family of `TESTED_FAMILIES`, a random-weight tiny model of its transformers config class
(2 layers, hidden 64; 4 query heads over 2 key/value heads wherever the family has grouped-query
attention) is fine-tuned as people fine-tune it: through the family's own chat template, which
the tiny tokenizer beside the model carries with the family's special tokens (template_forms.py:
Llama 3, Mistral's [INST], Qwen2.5's ChatML, Qwen3, Gemma 2, Gemma 3, Phi-3), so that `train
--model-name DIR` picks it up as it picks up an instruct model's. GPT-2 (and Llama once more, as
"llama-legacy") keeps the legacy "User:/Assistant:" format, and SmolLM3 is a base model given
ChatML by `train --chat-template chatml` (its tokens added, its embeddings grown). Each then goes
through `convert --quantize all --verify`; training's ids for every conversation are checked to
be the prompt chat and `serve` build for it (and transformers' `apply_chat_template`), then the
answer learned, the end-of-turn token last, which the model writes greedily; `chat --prompt` at
each precision; 4 requests decoded together by `serve`'s scheduler (each greedy answer must be
the one the question gets alone, ending at the end-of-turn token) and `evaluate`. One family
other than GPT-2 also answers 4 concurrent clients of a real `serve` process.

The tests record what they measure; with MTNSAILS_FAMILY_TABLE=FILE the module writes the family
x stage table to FILE (docs/families.md's table is one such run).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CONVERSATIONS, assert_one_line_error
from template_forms import FORMS, VARIANTS, form_tokenizer, prompt_and_learned_ids

from mtnsails.export.families import TESTED_FAMILIES

SINGLE = [conversation for conversation in TINY_CONVERSATIONS if "history" not in conversation]
PRECISIONS = ("fp32", "int8", "int4")
# whose attention convert rewrites into GroupQueryAttention (fused_attention, rotary_attention)
FUSED_FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "smollm3")
HTTP_FAMILY = "gemma2"  # the family that also runs behind a real `serve` process
# Learns every TINY_CONVERSATIONS answer by heart at this size: one step of 8 an epoch.
TRAIN_FLAGS = ("--epochs", "80", "--batch-size", "8", "--learning-rate", "5e-3", "--seed", "0")
GQA = {"num_attention_heads": 4, "num_key_value_heads": 2}
SHAPE = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "max_position_embeddings": 512}
# family -> (transformers config class, its settings beyond SHAPE); sliding windows of 8 tokens
# are shorter than the prompts, so the windows are exercised.
CONFIGS = {
    "gpt2": ("GPT2Config", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512}),
    "llama": ("LlamaConfig", {**SHAPE, **GQA, "tie_word_embeddings": True}),
    "mistral": ("MistralConfig", {**SHAPE, **GQA, "tie_word_embeddings": False, "sliding_window": 8}),
    "qwen2": ("Qwen2Config", {**SHAPE, **GQA, "tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", {**SHAPE, **GQA, "head_dim": 16, "tie_word_embeddings": True}),
    "gemma2": ("Gemma2Config", {**SHAPE, **GQA, "head_dim": 16, "sliding_window": 8, "query_pre_attn_scalar": 16}),
    "gemma3_text": (
        "Gemma3TextConfig",
        {
            **SHAPE,
            **GQA,
            "head_dim": 16,
            "sliding_window": 8,
            "query_pre_attn_scalar": 16,
            "layer_types": ["sliding_attention", "full_attention"],
        },
    ),
    "phi3": ("Phi3Config", {**SHAPE, **GQA, "tie_word_embeddings": False}),
    "smollm3": ("SmolLM3Config", {**SHAPE, **GQA, "tie_word_embeddings": True, "no_rope_layers": [1, 0]}),
}
LEGACY = "legacy"  # mtnsails' own "User:/Assistant:" format (the embedded tokenizer, no template)
ADD_CHATML = "chatml added"  # the embedded tokenizer, given ChatML by `train --chat-template chatml`
# run -> (family, how it is trained: a form of template_forms, LEGACY or ADD_CHATML).
RUNS = {
    "gpt2": ("gpt2", LEGACY),
    "llama": ("llama", "llama3"),
    "llama-legacy": ("llama", LEGACY),
    "mistral": ("mistral", "mistral"),
    "qwen2": ("qwen2", "chatml"),
    "qwen3": ("qwen3", "qwen3"),
    "gemma2": ("gemma2", "gemma2"),
    "gemma3_text": ("gemma3_text", "gemma"),
    "phi3": ("phi3", "phi3"),
    "smollm3": ("smollm3", ADD_CHATML),
}
TRAINED_AS = {
    LEGACY: "legacy User:/Assistant: format",
    "llama3": "Llama 3 template",
    "mistral": "Mistral v0.3 [INST] template",
    "chatml": "ChatML (Qwen2.5's template)",
    "qwen3": "Qwen3 template",
    "gemma2": "Gemma 2 template",
    "gemma": "Gemma 3 template",
    "phi3": "Phi-3 template",
    ADD_CHATML: "ChatML given by --chat-template chatml",
}
ALL_FORMS = {**FORMS, **VARIANTS}
TABLE: dict[str, dict[str, str]] = defaultdict(dict)  # run -> stage -> what was measured
STAGES = ("train", "convert", "verify", "ids", "chat", "batched rows", "serve", "evaluate")


def test_every_tested_family_has_a_tiny_config_and_a_run():
    assert set(CONFIGS) == set(TESTED_FAMILIES) == {family for family, _ in RUNS.values()}
    templated = {family for family, how in RUNS.values() if how != LEGACY}
    assert templated == set(TESTED_FAMILIES) - {"gpt2"}  # every family but GPT-2 learns a chat template


@dataclass
class Family:
    """One run: a family's tiny model through train and convert (the CLI, in this process)."""

    run: str  # the key of RUNS, the table's row
    name: str  # the family (model_type)
    how: str  # how it was trained (a key of TRAINED_AS)
    base_vocab: int  # the tokenizer's size before training
    config: dict  # the trained model's config.json
    trained: Path
    onnx: Path
    data: Path
    train_code: int
    convert_code: int
    convert_output: str


def run_main(*args: str) -> tuple[int, str]:
    """`mtnsails ARGS` in this process: (exit status, stdout + stderr)."""
    from mtnsails.cli import main

    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = main(list(args))
    return code, output.getvalue()


@pytest.fixture(scope="module")
def tokenizer():
    """The embedded tokenizer (byte-level BPE), trained on the test conversations."""
    from mtnsails.train.models import build_embedded_tokenizer

    return build_embedded_tokenizer([f"User: {c['input']}\nAssistant: {c['output']}" for c in TINY_CONVERSATIONS])


@pytest.fixture(scope="module")
def tokenizers(tokenizer):
    """how -> the tokenizer a run starts from: the embedded one (LEGACY, ADD_CHATML), or a form's
    byte-level BPE trained on the test conversations, its template and special tokens set."""
    texts = [f"{turn['input']} {turn['output']}" for c in TINY_CONVERSATIONS for turn in [*c.get("history", []), c]]
    built = {LEGACY: tokenizer, ADD_CHATML: tokenizer}

    def get(how: str):
        if how not in built:
            built[how] = form_tokenizer(ALL_FORMS[how], texts)
        return built[how]

    return get


@pytest.fixture(scope="module", params=list(RUNS))
def family(request, tokenizers, tmp_path_factory) -> Family:
    """A random-weight tiny model of the family, its tokenizer beside it (its vocabulary the
    tokenizer's, special tokens included), trained and converted with --quantize all --verify."""
    import torch
    import transformers

    run = request.param
    name, how = RUNS[run]
    tokenizer = tokenizers(how)
    root = tmp_path_factory.mktemp(run)
    eos = tokenizer.eos_token_id
    ids = {
        "bos_token_id": eos if tokenizer.bos_token_id is None else tokenizer.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": eos if tokenizer.pad_token_id is None else tokenizer.pad_token_id,
    }
    class_name, settings = CONFIGS[name]
    config = getattr(transformers, class_name)(vocab_size=len(tokenizer), **ids, **settings)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(root / "random")
    tokenizer.save_pretrained(root / "random")
    data = root / "data.json"
    data.write_text(json.dumps(TINY_CONVERSATIONS))
    template = ("--chat-template", "chatml") if how == ADD_CHATML else ()
    train_code, train_output = run_main(
        "train", "--model-name", str(root / "random"), "--data-file", str(data), "--output-dir", str(root / "trained"),
        "--quiet", *TRAIN_FLAGS, *template,
    )  # fmt: skip
    assert train_code == 0, train_output  # nothing to convert otherwise
    convert_code, output = run_main(
        "convert", "--model-path", str(root / "trained"), "--onnx-output", str(root / "onnx"),
        "--quantize", "all", "--verify",
    )  # fmt: skip
    config = json.loads((root / "trained" / "config.json").read_text())
    return Family(
        run, name, how, len(tokenizer), config, root / "trained", root / "onnx", data, train_code, convert_code, output
    )


@pytest.fixture(scope="module", autouse=True)
def family_table():
    """Write the measured table to $MTNSAILS_FAMILY_TABLE (when set) once every family has run."""
    yield
    target = os.environ.get("MTNSAILS_FAMILY_TABLE")
    if target and TABLE:
        lines = ["| family | " + " | ".join(STAGES) + " |", "|---" * (len(STAGES) + 1) + "|"]
        for run, cells in TABLE.items():  # a token's "|" escaped, so that it stays in its cell
            row = [run, *(cells.get(stage, "not run") for stage in STAGES)]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        Path(target).write_text("\n".join(lines) + "\n")


def end_of_turn(family: Family) -> tuple[str, int]:
    """The token that ends a trained answer, and its id: the template's end-of-turn token, else EOS."""
    from tokenizers import Tokenizer

    from mtnsails.model_dir.jinja_template import template_from_dict

    template = template_from_dict(json.loads((family.trained / "mtnsails.json").read_text())["template"])
    tokenizer = Tokenizer.from_file(str(family.trained / "tokenizer.json"))
    end = getattr(template, "end_of_turn", "") or tokenizer.id_to_token(family.config["eos_token_id"])
    return end, tokenizer.token_to_id(end)


@pytest.mark.slow
def test_train_fine_tunes_the_local_model_directory(family):
    """A tokenizer with a chat template is trained through it, its end-of-turn token among the
    ids that end an answer; `--chat-template chatml` adds ChatML's tokens and grows the model."""
    from transformers import AutoTokenizer

    from mtnsails.model_dir.jinja_template import CHATML, JinjaTemplate, template_from_dict

    assert family.train_code == 0
    assert family.config["model_type"] == family.name
    meta = json.loads((family.trained / "mtnsails.json").read_text())
    if family.how == LEGACY:
        assert meta["template"]["template"] == "User: {input}\nAssistant: {output}"
        TABLE[family.run]["train"] = TRAINED_AS[LEGACY]
        return
    template = template_from_dict(meta["template"])
    tokenizer = AutoTokenizer.from_pretrained(family.trained)
    assert template == JinjaTemplate.from_tokenizer(tokenizer)  # the record and the tokenizer's files agree
    if family.how == ADD_CHATML:
        assert template.source == CHATML and template.end_of_turn == "<|im_end|>"
        assert len(tokenizer) == family.base_vocab + 2  # <|im_start|>, <|im_end|>
    else:
        form = ALL_FORMS[family.how]
        assert template.source == form.template and template.end_of_turn == form.end_of_turn
        assert len(tokenizer) == family.base_vocab
    assert family.config["vocab_size"] == len(tokenizer)  # every token has its embedding
    _, end = end_of_turn(family)
    ends = json.loads((family.trained / "generation_config.json").read_text())["eos_token_id"]
    assert end in (ends if isinstance(ends, list) else [ends])
    added = f", {len(tokenizer) - family.base_vocab} tokens added" if family.how == ADD_CHATML else ""
    TABLE[family.run]["train"] = f"{TRAINED_AS[family.how]}{added}; answers end in `{template.end_of_turn}`"


@pytest.mark.slow
def test_convert_writes_every_precision_with_its_rewrites(family):
    import onnx

    from mtnsails.inference.generation import OnnxDecoder

    assert family.convert_code == 0, family.convert_output
    meta = json.loads((family.onnx / "mtnsails.json").read_text())
    assert set(meta["files"]) == set(PRECISIONS)
    graphs = {precision: onnx.load(str(family.onnx / meta["files"][precision])).graph for precision in PRECISIONS}
    for graph in graphs.values():  # rows of a batch count their own positions, Gemma's included
        assert "position_ids" in {value.name for value in graph.input}
    logits = next(value for value in graphs["fp32"].output if value.name == "logits")
    assert logits.type.tensor_type.shape.dim[1].dim_value == 1  # the last position only, soft-capped or not
    heads = family.config.get("num_key_value_heads") or family.config.get("n_head")
    assert OnnxDecoder(family.onnx / "model.onnx").empty_cache.shape[1] == heads  # grouped-query caches
    fused = family.name in FUSED_FAMILIES
    if fused:
        assert meta["kv_cache"] == "shared"
        assert any(node.op_type == "GroupQueryAttention" for node in graphs["fp32"].node)
    else:  # skipped, with the reason said
        assert "kv_cache" not in meta
        assert "rewrite skipped: fused attention (" in family.convert_output
    vocab, hidden = family.config["vocab_size"], family.config.get("hidden_size") or family.config["n_embd"]
    tables = [t for t in graphs["fp32"].initializer if sorted(t.dims) == sorted([vocab, hidden])]
    ops = {node.op_type for node in graphs["int4"].node}
    if family.config.get("tie_word_embeddings", True):  # one copy, one int4 copy for head and embedding
        assert len(tables) == 1 and "GatherBlockQuantized" in ops
        head = "tied: one copy"
    else:
        assert len(tables) == 2 and "not tied to the embedding" in family.convert_output
        head = "untied"
    rewrites = "fused attention" if fused else "attention as exported"
    TABLE[family.run]["convert"] = f"fp32, int8, int4; {rewrites}; head {head}"


@pytest.mark.slow
def test_verify_passes_for_every_precision(family):
    output = family.convert_output
    assert family.convert_code == 0 and "greedy continuations agree" in output, output
    difference = float(re.search(r"max logit difference (\S+),", output).group(1))
    assert difference < 1e-4
    agreement = dict(re.findall(r"(int8|int4) greedy token agrees with fp32 PyTorch on (\S+)%", output))
    assert set(agreement) == {"int8", "int4"}
    TABLE[family.run]["verify"] = (
        f"logits within {difference:.0e}; greedy agrees: int8 {agreement['int8']} %, int4 {agreement['int4']} %"
    )


def greedy_ids(decoder, prompt: list[int], count: int) -> list[int]:
    """The `count` tokens `decoder` picks greedily after `prompt`."""
    decoder.reset()
    logits, picked = decoder.forward(prompt)[-1], []
    for _ in range(count):
        picked.append(int(np.argmax(logits)))
        logits = decoder.forward(picked[-1:])[-1]
    return picked


@pytest.mark.slow
def test_chat_and_serve_feed_the_model_the_ids_it_learned_from(family):
    """For every training conversation (and one with a system prompt besides), the ids training
    learns from are the prompt chat and `serve` build, which is what transformers'
    `apply_chat_template` builds, then the answer ending in the end-of-turn token; prompted with
    chat's ids, the fp32 model writes that answer greedily, the end-of-turn token last."""
    from mtnsails.inference.generation import OnnxDecoder

    conversations = [*TINY_CONVERSATIONS, {**TINY_CONVERSATIONS[-1], "system": "Answer briefly."}]
    checked = prompt_and_learned_ids(family.trained, family.onnx, conversations)
    end_token, end = end_of_turn(family)
    assert all(learned[-1] == end for _, learned in checked)
    decoder = OnnxDecoder(family.onnx / "model.onnx")
    for (prompt, learned), conversation in zip(checked, conversations, strict=True):
        if "system" not in conversation:  # a trained conversation
            assert greedy_ids(decoder, prompt, len(learned)) == learned, conversation["input"]
    transformers = "" if family.how == LEGACY else ", transformers"
    TABLE[family.run]["ids"] = (
        f"equal on {len(checked)} conversations (training, chat, serve{transformers}); greedy fp32: "
        f"{len(TINY_CONVERSATIONS)}/{len(TINY_CONVERSATIONS)} answers, then `{end_token}`"
    )


@pytest.mark.slow
def test_chat_answers_a_trained_question_at_every_precision(family, cli_here):
    question, answer = SINGLE[0]["input"], SINGLE[0]["output"]
    answers = {}
    for precision in PRECISIONS:
        result = cli_here(
            "chat", "--model-path", str(family.onnx), "--prompt", question, "--temperature", "0",
            "--precision", precision,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        answers[precision] = result.stdout.strip()
    assert answers["fp32"] == answer
    assert all(answers.values())
    TABLE[family.run]["chat"] = "trained answer: " + ", ".join(
        f"{precision} {'yes' if text == answer else 'no'}" for precision, text in answers.items()
    )


def batched_answers(onnx_dir: Path, precision: str, questions: list[str], config) -> dict[str, str]:
    """`questions` submitted together to `serve`'s scheduler (4 at once): each one's answer."""
    from mtnsails.inference.engine import ChatEngine, EngineSettings
    from mtnsails.serve.scheduler import BatchScheduler, Completion, GenerationJob

    scheduler = BatchScheduler(lambda: ChatEngine(onnx_dir, EngineSettings(precision=precision)), max_batch=4)
    results: dict[str, object] = {}
    answered = threading.Semaphore(0)

    def job(question: str) -> GenerationJob:
        def done(result) -> None:
            results[question] = result
            answered.release()

        return scheduler.prepare(GenerationJob(question, [], None, config, (), lambda piece: None, done))

    jobs = [job(question) for question in questions]  # prepared first: all join the first round
    scheduler.start()
    for queued in jobs:
        scheduler.submit(queued)
    for _ in questions:
        assert answered.acquire(timeout=120)
    scheduler.stop()
    assert all(isinstance(result, Completion) for result in results.values()), results
    return {question: result.text for question, result in results.items()}


@pytest.mark.slow
def test_four_requests_decoded_together_answer_as_alone(family, tmp_path):
    """fp32 and int4 (what `serve` runs by default) compute each row on its own (to rounding, see
    the batched-rows test), so a batched greedy answer is the lone one. int8 quantizes each
    step's activations with one scale for the whole batch, so a row can flip a near tie:
    measured, not required (docs/families.md)."""
    from mtnsails.inference.chat import ChatInterface
    from mtnsails.inference.generation_config import GenerationConfig

    config = GenerationConfig(max_new_tokens=24, temperature=0)
    questions = [conversation["input"] for conversation in SINGLE[:4]]
    same = {}
    for precision in PRECISIONS:
        chat = ChatInterface(family.onnx, precision=precision, generation=config)
        assert end_of_turn(family)[1] in chat.engine.stop_ids
        alone = {}
        for question in questions:
            chat.reset()
            alone[question] = chat.reply(question)
            assert chat.last_stats.stop_reason == "eos" or precision == "int8", (precision, alone[question])
        batched = batched_answers(family.onnx, precision, questions, config)
        same[precision] = sum(batched[question] == alone[question] for question in questions)
        if precision != "int8":
            assert batched == alone, precision
    cell = ", ".join(f"{precision} {count}/4" for precision, count in same.items())
    if family.run == HTTP_FAMILY:
        http_answers_equal_chat(family, tmp_path)
        cell += "; HTTP serve 4 clients: equal"
    TABLE[family.run]["serve"] = "batched = alone: " + cell


def http_answers_equal_chat(family: Family, tmp_path: Path) -> None:
    """4 concurrent clients of a real `serve` process (no torch in it) get chat's greedy answers."""
    from test_chat_server import Server, ask

    from mtnsails.inference.chat import ChatInterface
    from mtnsails.inference.generation_config import GenerationConfig

    server = Server(family.onnx, tmp_path, "--api-key", "key", "--max-batch", "4")
    try:
        client = server.client("key")
        questions = [conversation["input"] for conversation in SINGLE[:4]]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda question: ask(client, question).choices[0].message.content, questions))
    finally:
        assert server.stop() == 0
    chat = ChatInterface(family.onnx, generation=GenerationConfig(temperature=0))
    for question, answer in zip(questions, answers, strict=True):
        chat.reset()
        assert answer == chat.reply(question)


# Prompts of the batched-rows test (token ids) and the tokens each is fed after its prompt.
ROW_PROMPTS = {"a": list(range(10, 20)), "b": list(range(100, 112)), "c": list(range(200, 230)), "d": [300, 301]}
FED = list(range(50, 60))


def lone_logits(decoder, prompt: list[int]) -> np.ndarray:
    """Next-token logits of `prompt`, then after each token of FED, decoded alone."""
    decoder.reset()
    return np.array([decoder.forward(prompt)[-1]] + [decoder.forward([token])[-1] for token in FED])


def batched_logits(decoder) -> dict[str, list[np.ndarray]]:
    """ROW_PROMPTS decoded together, each fed FED: "a" and "b" in one prefill run ("a" left-padded
    by 2); after 3 steps "c" joins (longer: the others move right) and "d" (shorter than the
    batch is wide); after 6 steps "c" leaves. Each key's logits, as `lone_logits` lists them."""
    from mtnsails.inference.batch_decoder import BatchDecoder

    batch = BatchDecoder(decoder)
    got: dict[str, list] = {}
    for step in range(len(FED)):
        joining = ("a", "b") if step == 0 else ("c", "d") if step == 4 else ()
        if joining:
            for key, logits in zip(joining, batch.add_many([(key, ROW_PROMPTS[key]) for key in joining]), strict=True):
                got[key] = [logits.copy()]
        if step == 7:
            batch.remove("c")
        tokens = [FED[len(got[key]) - 1] for key in batch.keys]
        for key, logits in zip(list(batch.keys), batch.step(tokens), strict=True):
            got[key].append(logits.copy())
    return got


@pytest.mark.slow
def test_left_padded_rows_compute_what_they_compute_alone(family):
    """Rotary positions count from each row's first real token: rows left-padded in one run,
    rows joining a batch wider or narrower than themselves and a row leaving (`batched_logits`)
    all give the logits each prompt gets alone, to fp32 rounding. int4 quantizes each row's
    activations on their own, so a rounding difference upstream flips one int8 step of an
    activation now and then (a position off by about 1e-2, and the row's later positions with
    it: the cache keeps the step); int8 quantizes them with one scale for the whole batch, so
    nearly every position differs: both measured, int4 bounded to differences of that size."""
    from mtnsails.inference.generation import OnnxDecoder

    meta = json.loads((family.onnx / "mtnsails.json").read_text())
    shared = meta.get("kv_cache") == "shared"
    cells = []
    for precision in PRECISIONS:
        graph = family.onnx / meta["files"][precision]
        decoder = OnnxDecoder(graph, shared_cache=shared)
        alone = {key: lone_logits(decoder, prompt) for key, prompt in ROW_PROMPTS.items()}
        got = batched_logits(OnnxDecoder(graph, shared_cache=shared))
        assert set(got) == set(ROW_PROMPTS) and len(got["a"]) == len(FED) + 1
        errors = np.concatenate(
            [np.abs(np.array(rows) - alone[key][: len(rows)]).max(axis=1) for key, rows in got.items()]
        )
        differing = int((errors > 1e-4).sum())
        if precision == "fp32":
            assert differing == 0, errors.max()
        if precision == "int4":
            assert errors.max() < 0.1 and differing <= len(errors) // 4, errors
        cells.append(f"{precision} {differing}/{len(errors)}" + (f" (up to {errors.max():.0e})" if differing else ""))
    TABLE[family.run]["batched rows"] = "positions off by > 1e-4: " + ", ".join(cells)


@pytest.mark.slow
def test_evaluate_scores_the_trained_answers(family):
    code, output = run_main(
        "evaluate", "--model-path", str(family.onnx), "--data-file", str(family.data), "--json", "--quiet"
    )
    assert code == 0, output
    report = json.loads(output)
    assert report["first_sentence_match"] >= 0.5
    TABLE[family.run]["evaluate"] = (
        f"int4 (auto): first sentence {report['first_sentence_match']:.0%}, exact {report['exact_match']:.0%}"
    )


def test_convert_refuses_a_family_optimum_cannot_export(cli_here, tmp_path, tokenizer):
    """Mamba has no KV cache for optimum to export: one line before any loading."""
    import torch
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    MambaForCausalLM(MambaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1)).save_pretrained(
        tmp_path / "mamba"
    )
    tokenizer.save_pretrained(tmp_path / "mamba")
    result = cli_here("convert", "--model-path", str(tmp_path / "mamba"), "--onnx-output", str(tmp_path / "onnx"))
    assert_one_line_error(result, "'mamba'", "cannot be exported to ONNX with a KV cache")
    assert not (tmp_path / "onnx").exists()
