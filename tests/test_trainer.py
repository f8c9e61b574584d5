"""LLMTrainer: learns the answers (not the prompts), pads per batch, writes a standard model dir."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_CONVERSATIONS
from transformers import AutoModelForCausalLM, AutoTokenizer

from mtnsails.data.handler import ConversationDataHandler
from mtnsails.model_dir.metadata import TRAINING_DATA_FILE
from mtnsails.model_dir.template import ChatTemplate, Segment, exchanges
from mtnsails.train.collator import PaddingCollator, encode_segments
from mtnsails.train.config import TrainingConfig
from mtnsails.train.models import ContinuedTrainingDefaults
from mtnsails.train.trainer import LLMTrainer, parse_text


def greedy_answer(model, tokenizer, conversation: dict) -> str:
    """Build the prompt the way chat does (segments + EOS after answers) and decode greedily."""
    turns = exchanges(conversation)[:-1] + [(conversation["input"], None)]
    segments = list(ChatTemplate().segments(turns, conversation.get("system")))
    ids = encode_segments(tokenizer, segments, max_length=model.config.n_positions)["input_ids"]
    output = model.generate(
        torch.tensor([ids]), max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.eos_token_id
    )
    return tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True).strip()


def test_the_trained_model_answers_its_questions_and_loads_with_plain_auto_classes(trained_tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(trained_tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(trained_tiny_model_dir)
    for conversation in (TINY_CONVERSATIONS[0], TINY_CONVERSATIONS[-1]):  # single and multi-turn
        assert greedy_answer(model, tokenizer, conversation) == conversation["output"]
    # it learned to stop: EOS comes right after the answer
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_the_model_directory_records_how_it_was_made(trained_tiny_model_dir):
    files = {path.name for path in trained_tiny_model_dir.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "generation_config.json", "mtnsails.json", "loss.png"} <= files
    assert not any(name.endswith(".bin") for name in files)
    meta = json.loads((trained_tiny_model_dir / "mtnsails.json").read_text())
    assert meta["format"] == "mtnsails-model" and meta["version"] == 1
    assert meta["base_model"] == "tiny" and meta["embedded"] is True
    assert meta["template"] == ChatTemplate().to_dict() and len(meta["data_sha256"]) == 64
    assert meta["settings"]["num_epochs"] == 60 and meta["context_length"] == 512
    losses = [entry["loss"] for entry in meta["loss_history"] if "loss" in entry]
    assert losses[-1] == meta["train_loss"] < losses[0] / 10
    assert not trained_tiny_model_dir.with_name("model.checkpoints").exists()
    # the answer lengths it learned (history answers too), in tokens without EOS
    tokenizer = AutoTokenizer.from_pretrained(trained_tiny_model_dir)
    lengths = sorted(
        len(tokenizer(" " + answer, add_special_tokens=False)["input_ids"])
        for conversation in TINY_CONVERSATIONS
        for _, answer in exchanges(conversation)
    )
    assert meta["answer_tokens"] == {
        "count": 9,
        "max": lengths[-1],
        "p95": lengths[-1],
        "mean": round(sum(lengths) / 9, 2),
    }
    assert meta["system"] is None  # no record carries a system prompt


def test_prompt_tokens_are_not_learned_and_each_answer_ends_in_a_learned_eos(untrained_tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(untrained_tiny_model_dir)
    eos = tokenizer.eos_token_id
    segments = list(ChatTemplate().segments([("Hi", "Hello!"), ("Bye", "See you.")]))
    item = encode_segments(tokenizer, segments, max_length=256)
    prompt = tokenizer("User: Hi\nAssistant:", add_special_tokens=False)["input_ids"]
    answer = tokenizer(" Hello!", add_special_tokens=False)["input_ids"]
    assert item["input_ids"][: len(prompt) + len(answer) + 1] == prompt + answer + [eos]
    assert item["labels"][: len(prompt)] == [-100] * len(prompt)
    assert item["labels"][len(prompt) : len(prompt) + len(answer) + 1] == answer + [eos]
    assert item["labels"][-1] == eos and item["truncated"] == 0  # the second answer too


def test_batches_are_padded_to_their_longest_example_and_padding_is_not_learned(untrained_tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(untrained_tiny_model_dir)
    short, long = (
        encode_segments(tokenizer, list(ChatTemplate().segments([(q, a)])), 256)
        for q, a in [("Hi", "Hello!"), ("What is the capital of France?", "The capital of France is Paris.")]
    )
    batch = PaddingCollator(tokenizer.pad_token_id)([short, long])
    assert batch["input_ids"].shape == (2, long["length"])  # dynamic: not 256
    padding = long["length"] - short["length"]
    assert batch["attention_mask"][0].tolist() == [1] * short["length"] + [0] * padding
    assert batch["labels"][0].tolist() == short["labels"] + [-100] * padding
    assert batch["labels"][1].tolist() == long["labels"]


def test_long_examples_lose_context_from_the_left_but_keep_their_answer(untrained_tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(untrained_tiny_model_dir)
    history = [("Tell me more.", "There is a lot to tell about many things.")] * 10
    segments = list(ChatTemplate().segments([*history, ("Last question?", "Final answer.")]))
    item = encode_segments(tokenizer, segments, max_length=40)
    assert item["truncated"] == 1 and item["length"] == 40
    assert tokenizer.decode(item["input_ids"]).endswith("User: Last question?\nAssistant: Final answer.<|endoftext|>")
    # an answer longer than the window keeps its question and loses its end (reported as 2)
    segments = list(ChatTemplate().segments([("Why?", "Because " * 100)]))
    item = encode_segments(tokenizer, segments, max_length=40)
    assert item["truncated"] == 2 and item["length"] == 40
    assert tokenizer.decode(item["input_ids"]).startswith("User: Why?\nAssistant: Because")


def test_original_texts_are_parsed_back_into_prompt_and_answer():
    template = ChatTemplate()
    assert parse_text("User: Hi there\nAssistant: Hello!", template) == [
        Segment("User: Hi there\nAssistant:", False),
        Segment(" Hello!", True),
    ]
    assert parse_text("free text", template) == [Segment("free text", True)]


def test_original_api_and_retraining_with_an_eval_split(trained_tiny_model_dir, tmp_path):
    # the original three-argument constructor and train(texts, ...) / save_model() / load
    trainer = LLMTrainer(str(trained_tiny_model_dir), str(tmp_path / "out"), "cpu")
    trainer.config.eval_split, trainer.config.quiet = 0.25, True
    texts = [f"User: {c['input']}\nAssistant: {c['output']}" for c in TINY_CONVERSATIONS]
    result = trainer.train(texts, num_epochs=2, batch_size=4, learning_rate=1e-4, save_steps=100)
    evaluations = [entry for entry in result.loss_history if "eval_loss" in entry]
    assert len(evaluations) == 2  # one per epoch
    assert result.eval_loss == evaluations[-1]["eval_loss"]  # the last model is kept, and its loss
    assert result.held_out == [f"example {i + 1}" for i in trainer._held_out] != []  # texts, not conversations
    assert math.isclose(result.perplexity, math.exp(result.eval_loss))
    path = trainer.save_model()
    assert path == str(tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "mtnsails.json").read_text())
    assert meta["base_model"] == "tiny" and meta["settings"]["eval_examples"] == 2
    reloaded = LLMTrainer()
    reloaded.load_trained_model(path)
    assert greedy_answer(reloaded.model, reloaded.tokenizer, TINY_CONVERSATIONS[1]) == TINY_CONVERSATIONS[1]["output"]


@pytest.mark.slow
def test_early_stopping_keeps_the_model_with_the_best_eval_loss(tmp_path):
    config = TrainingConfig(
        model_name="tiny",
        output_dir=str(tmp_path / "out"),
        num_epochs=20,
        eval_split=0.25,
        early_stopping_patience=2,
        save_steps=1000,
        quiet=True,
        seed=0,
    )
    result = LLMTrainer(config=config).train_conversations(TINY_CONVERSATIONS)
    evaluations = [entry["eval_loss"] for entry in result.loss_history if "eval_loss" in entry]
    assert len(evaluations) < 20  # it stopped: the unseen answers' loss soon rises
    assert result.eval_loss == min(evaluations) != evaluations[-1]


def test_settings_out_of_range_are_one_line_errors():
    import pytest

    from mtnsails.core.errors import MtnsailsError

    for settings, flag in [
        ({"num_epochs": 0}, "--epochs"),
        ({"batch_size": -1}, "--batch-size"),
        ({"eval_split": 1.5}, "--eval-split"),
        ({"device": "tpu"}, "--device"),
        ({"learning_rate": float("inf")}, "--learning-rate must be a finite"),
        ({"weight_decay": float("nan")}, "--weight-decay must be a finite"),
    ]:
        with pytest.raises(MtnsailsError, match=flag) as error:
            TrainingConfig(**settings).validate()
        assert "\n" not in str(error.value)


def test_resolved_fills_each_unset_setting_with_the_models_own_default():
    from mtnsails.train.lora import LoraTrainingDefaults
    from mtnsails.train.models import EmbeddedTrainingDefaults

    unset = TrainingConfig()
    assert unset.eval_split == 0.0  # nothing is held out unless asked: held-out answers go unlearned
    tiny = unset.resolved(embedded=True)
    assert (tiny.num_epochs, tiny.learning_rate) == (
        EmbeddedTrainingDefaults.num_epochs,
        EmbeddedTrainingDefaults.learning_rate,
    )
    assert (unset.resolved(embedded=False).num_epochs, unset.resolved(embedded=False).learning_rate) == (3, 5e-5)
    # LoRA: ten times full fine-tuning's rate on a pretrained model; the embedded model's own
    lora = LoraTrainingDefaults()
    assert unset.resolved(embedded=False, lora=True).learning_rate == lora.learning_rate == 5e-4
    assert unset.resolved(embedded=False, continuing=True, lora=True).learning_rate == lora.continued_learning_rate
    lora_tiny = unset.resolved(embedded=True, continuing=True, lora=True)
    assert (lora_tiny.num_epochs, lora_tiny.learning_rate) == (60, 3e-3)
    chosen = TrainingConfig(num_epochs=7, learning_rate=0.01, eval_split=0.2)
    assert chosen.resolved(embedded=True, lora=True) == chosen  # what the user set is kept
    assert unset.num_epochs is None  # a copy: the config itself is unchanged


def test_a_model_save_that_runs_out_of_space_is_one_line_and_changes_nothing(trained_tiny_model_dir, tmp_path):
    import resource

    import pytest

    from mtnsails.core.errors import MtnsailsError

    trainer = LLMTrainer(config=TrainingConfig(model_name="tiny", quiet=True))
    trainer.load_trained_model(trained_tiny_model_dir)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, limits[1]))  # as if the disk filled up
    try:
        with pytest.raises(MtnsailsError) as error:
            trainer.save_model(tmp_path / "model")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    assert str(error.value).startswith(f"cannot write the model to {tmp_path / 'model'}: ")
    assert "\n" not in str(error.value) and list(tmp_path.iterdir()) == []


def refusal(output_dir, resume: bool = False) -> str:
    """The one-line error `train_conversations` raises before it loads any model."""
    import pytest

    from mtnsails.core.errors import MtnsailsError

    trainer = LLMTrainer(
        config=TrainingConfig(model_name="tiny", output_dir=str(output_dir), resume=resume, quiet=True)
    )
    with pytest.raises(MtnsailsError) as error:
        trainer.train_conversations(TINY_CONVERSATIONS)
    assert "\n" not in str(error.value) and trainer.resolved is None  # refused before loading
    return str(error.value)


def test_checkpoints_of_an_interrupted_run_are_never_silently_dropped_or_misread(tmp_path):
    checkpoints = tmp_path / "out.checkpoints"
    assert refusal(tmp_path / "out", resume=True).startswith(f"--resume: no checkpoint in {checkpoints}")
    (checkpoints / "checkpoint-1").mkdir(parents=True)
    assert refusal(tmp_path / "out") == (
        f"{checkpoints} holds checkpoints of an interrupted run: add --resume to continue it, "
        "or delete that directory to start over"
    )
    (checkpoints / "mtnsails-run.json").write_text("{not json")
    assert refusal(tmp_path / "out", resume=True).startswith(f"{checkpoints / 'mtnsails-run.json'}: not valid JSON")
    assert (checkpoints / "checkpoint-1").is_dir() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_resume_goes_back_to_the_newest_complete_checkpoint(tmp_path, capfd):
    import os
    import signal
    import threading
    import time

    import pytest

    from mtnsails.train.trainer import TrainingInterrupted

    config = TrainingConfig(
        model_name="tiny", output_dir=str(tmp_path / "model"), num_epochs=10, save_steps=2, quiet=True, seed=0
    )
    checkpoints = config.checkpoint_dir

    def interrupt_after_two_checkpoints():  # Ctrl-C, as a user would press it
        deadline = time.monotonic() + 120
        while len(list(checkpoints.glob("checkpoint-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_after_two_checkpoints, daemon=True).start()
    with pytest.raises(TrainingInterrupted):
        LLMTrainer(config=config).train_conversations(TINY_CONVERSATIONS)
    steps = sorted(int(path.name.split("-")[1]) for path in checkpoints.glob("checkpoint-*"))
    newest = checkpoints / f"checkpoint-{steps[-1]}"
    optimizer = newest / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])  # cut short, as a full disk leaves it

    config.resume = True
    result = LLMTrainer(config=config).train_conversations(TINY_CONVERSATIONS)
    assert f"{newest.name} is incomplete (optimizer.pt is cut short or damaged)" in capfd.readouterr().err
    assert result.loss_history[-1]["step"] == 20 and not checkpoints.exists()


NEW_CONVERSATIONS = [
    {"input": "What colour are lemons?", "output": "Lemons are yellow."},
    TINY_CONVERSATIONS[0],  # already known: not counted twice
]


def continued(model_dir, output, **settings):
    """Continue `model_dir` for one epoch on NEW_CONVERSATIONS; return (trainer, saved path)."""
    config = TrainingConfig(
        model_name=str(model_dir), output_dir=str(output), num_epochs=1, save_steps=1000, quiet=True, **settings
    )
    trainer = LLMTrainer(config=config)
    trainer.train_conversations(NEW_CONVERSATIONS)
    return trainer, Path(trainer.save_model())


def test_a_model_keeps_its_training_data_and_continuing_mixes_it_back_in(trained_tiny_model_dir, tmp_path):
    kept = ConversationDataHandler.from_file(trained_tiny_model_dir / TRAINING_DATA_FILE)
    assert kept.conversations == TINY_CONVERSATIONS
    trainer, path = continued(trained_tiny_model_dir, tmp_path / "v2")
    assert trainer.result.examples == len(TINY_CONVERSATIONS) + 1
    trained_on = ConversationDataHandler.from_file(path / TRAINING_DATA_FILE).conversations
    assert trained_on == TINY_CONVERSATIONS + NEW_CONVERSATIONS[:1]  # old first, no copy
    settings = json.loads((path / "mtnsails.json").read_text())["settings"]
    assert settings["continued"] is True and settings["replayed_conversations"] == 8
    assert settings["learning_rate"] == ContinuedTrainingDefaults().embedded_learning_rate


def test_answers_marked_bad_in_chat_are_never_learned(trained_tiny_model_dir, tmp_path):
    config = TrainingConfig(
        model_name=str(trained_tiny_model_dir),
        output_dir=str(tmp_path / "v2"),
        num_epochs=1,
        save_steps=1000,
        quiet=True,
        no_replay=True,
    )
    trainer = LLMTrainer(config=config)
    wrong = {"input": "What is the capital of Germany?", "output": "Run python main.", "feedback": "bad"}
    trainer.train_conversations([*NEW_CONVERSATIONS, wrong])
    path = Path(trainer.save_model())
    trained_on = ConversationDataHandler.from_file(path / TRAINING_DATA_FILE).conversations
    assert trainer.result.examples == len(NEW_CONVERSATIONS) and wrong["input"] not in {c["input"] for c in trained_on}


def test_no_replay_trains_on_the_new_data_alone(trained_tiny_model_dir, tmp_path):
    trainer, path = continued(trained_tiny_model_dir, tmp_path / "v2", no_replay=True, learning_rate=1e-4)
    assert trainer.result.examples == len(NEW_CONVERSATIONS)
    trained_on = ConversationDataHandler.from_file(path / TRAINING_DATA_FILE).conversations
    assert trained_on == NEW_CONVERSATIONS
    settings = json.loads((path / "mtnsails.json").read_text())["settings"]
    assert settings["replayed_conversations"] == 0 and settings["learning_rate"] == 1e-4
