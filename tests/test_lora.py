"""LoRA (`train --lora-r N`): adapters trained through peft, saved beside the merged model that
convert, chat, continued training and replay read; a LoRA model continues and resumes as LoRA;
`--gradient-checkpointing` in both modes. Real training of the embedded model, no mocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_CONVERSATIONS, assert_one_line_error
from test_trainer import NEW_CONVERSATIONS, greedy_answer
from transformers import AutoModelForCausalLM, AutoTokenizer

from mtnsails.core.errors import MtnsailsError
from mtnsails.train.config import TrainingConfig
from mtnsails.train.lora import ALL_LINEAR, LoraSettings
from mtnsails.train.trainer import LLMTrainer


def train(model_name, output: Path, conversations=NEW_CONVERSATIONS, **settings) -> LLMTrainer:
    config = TrainingConfig(
        model_name=str(model_name), output_dir=str(output), save_steps=1000, quiet=True, seed=0, **settings
    )
    trainer = LLMTrainer(config=config)
    trainer.train_conversations(conversations)
    trainer.save_model()
    return trainer


def metadata(path: Path) -> dict:
    return json.loads((path / "mtnsails.json").read_text())


@pytest.fixture(scope="module")
def lora_model_dir(trained_tiny_model_dir, tmp_path_factory) -> Path:
    """`trained_tiny_model_dir` continued with LoRA r=8 on NEW_CONVERSATIONS (its own
    conversations replayed): a new answer to learn on weights that already know the others."""
    path = tmp_path_factory.mktemp("lora") / "model"
    # the embedded model's frozen embeddings make LoRA slow to learn new words: 60 epochs at 3e-3
    train(trained_tiny_model_dir, path, lora_r=8, num_epochs=60, learning_rate=3e-3)
    return path


@pytest.mark.slow
def test_a_lora_run_saves_the_merged_model_and_the_adapter_and_records_them(trained_tiny_model_dir, lora_model_dir):
    files = {path.relative_to(lora_model_dir).as_posix() for path in lora_model_dir.rglob("*")}
    assert {
        "model.safetensors",
        "config.json",
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
    } <= files
    assert not any(name.endswith(".bin") for name in files)
    meta = metadata(lora_model_dir)
    assert meta["lora"] == {
        "r": 8,
        "alpha": 16.0,  # 2 x r
        "dropout": 0.05,
        "targets": ALL_LINEAR,
        "modules": ["c_attn", "c_fc", "c_proj"],  # every linear layer of GPT-2, not the head
        "trainable_parameters": 4 * (8 * (256 + 768) + 8 * (256 + 256) + 8 * (256 + 1024) + 8 * (1024 + 256)),
        "adapter": "adapter",
        "adapter_base": str(trained_tiny_model_dir),
    }
    assert meta["settings"]["lora"] == {"r": 8, "alpha": 16.0, "dropout": 0.05, "targets": ALL_LINEAR}
    assert meta["settings"]["replayed_conversations"] == len(TINY_CONVERSATIONS)  # replay as ever
    adapter_config = json.loads((lora_model_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["base_model_name_or_path"] == str(trained_tiny_model_dir)


@pytest.mark.slow
def test_the_adapter_on_its_base_weights_is_the_merged_model(trained_tiny_model_dir, lora_model_dir):
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(trained_tiny_model_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(lora_model_dir).eval()
    base_weights = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    # LoRA trains the adapters only: what has none (embeddings, layer norms, biases) is unchanged
    for name, tensor in merged.state_dict().items():
        if not name.endswith("weight") or "ln_" in name or "wte" in name or "wpe" in name:
            assert torch.equal(tensor, base_weights[name]), name
    assert not torch.equal(
        merged.state_dict()["transformer.h.0.attn.c_attn.weight"], base_weights["transformer.h.0.attn.c_attn.weight"]
    )
    adapted = PeftModel.from_pretrained(base, lora_model_dir / "adapter").eval()
    ids = torch.tensor([list(range(10, 60))])
    with torch.no_grad():
        assert torch.allclose(adapted(ids).logits, merged(ids).logits, atol=1e-4)


@pytest.mark.slow
def test_a_lora_run_learns_the_new_answer_and_keeps_the_old_ones(lora_model_dir):
    model = AutoModelForCausalLM.from_pretrained(lora_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(lora_model_dir)
    for conversation in [NEW_CONVERSATIONS[0], *TINY_CONVERSATIONS]:
        assert greedy_answer(model, tokenizer, conversation) == conversation["output"]


@pytest.mark.slow
def test_convert_reads_a_lora_model(lora_model_dir, tmp_path):
    from mtnsails.export.converter import ONNXConverter

    converter = ONNXConverter(lora_model_dir, quiet=True)
    converter.convert_to_onnx(tmp_path / "onnx")
    report = converter.verify(tmp_path / "onnx")
    assert report.ok, report.problems


@pytest.mark.slow
def test_continuing_a_lora_model_continues_as_lora_and_replays(lora_model_dir, tmp_path):
    more = [{"input": "What colour are limes?", "output": "Limes are green."}]
    train(lora_model_dir, tmp_path / "v3", more, num_epochs=1)
    meta = metadata(tmp_path / "v3")
    assert (meta["lora"]["r"], meta["lora"]["alpha"]) == (8, 16.0)  # the recorded settings
    assert meta["lora"]["adapter_base"] == str(lora_model_dir)  # a new adapter on the merged weights
    assert meta["settings"]["replayed_conversations"] == len(TINY_CONVERSATIONS) + 1
    assert (tmp_path / "v3" / "adapter" / "adapter_model.safetensors").is_file()
    # --lora-r 0: full fine-tuning from here on, no adapter
    train(lora_model_dir, tmp_path / "full", more, num_epochs=1, lora_r=0)
    assert metadata(tmp_path / "full")["lora"] is None and not (tmp_path / "full" / "adapter").exists()


@pytest.mark.slow
def test_an_interrupted_lora_run_resumes_as_lora(tmp_path):
    from mtnsails.train.trainer import TrainingInterrupted

    config = TrainingConfig(
        model_name="tiny", output_dir=str(tmp_path / "model"), num_epochs=2, save_steps=2, quiet=True, lora_r=4
    )

    class StopAtStepThree(LLMTrainer):  # Ctrl-C after the checkpoint of step 2
        def _build_trainer(self, *args):
            trainer, interrupt, divergence = super()._build_trainer(*args)
            original = interrupt.on_step_end

            def on_step_end(args, state, control, **kwargs):
                interrupt.requested = interrupt.requested or state.global_step == 3
                return original(args, state, control, **kwargs)

            interrupt.on_step_end = on_step_end
            return trainer, interrupt, divergence

    with pytest.raises(TrainingInterrupted):
        StopAtStepThree(config=config).train_conversations(TINY_CONVERSATIONS)
    newest = config.checkpoint_dir / "checkpoint-3"
    assert (newest / "adapter_model.safetensors").is_file() and not (newest / "model.safetensors").exists()
    resumed = LLMTrainer(config=TrainingConfig(**{**vars(config), "lora_r": None, "resume": True}))
    result = resumed.train_conversations(TINY_CONVERSATIONS)  # no --lora-r: the checkpoints' LoRA
    assert result.loss_history[-1]["step"] == 4 and resumed.config.lora_r == 4
    assert resumed.save_model() and metadata(tmp_path / "model")["lora"]["r"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("lora_r", [0, 4])
def test_gradient_checkpointing_trains_the_same_model(lora_r, tmp_path):
    losses = []
    for checkpointing in (False, True):
        trainer = train(
            "tiny",
            tmp_path / str(checkpointing),
            TINY_CONVERSATIONS,
            num_epochs=2,
            lora_r=lora_r,
            lora_dropout=0.0,
            gradient_checkpointing=checkpointing,
        )
        losses.append([entry["loss"] for entry in trainer.result.loss_history if "loss" in entry])
        assert metadata(tmp_path / str(checkpointing))["settings"]["gradient_checkpointing"] is checkpointing
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_lora_settings_come_from_the_flags_then_the_model_continued_then_the_defaults():
    assert LoraSettings.from_config(TrainingConfig()) is None  # full fine-tuning
    assert LoraSettings.from_config(TrainingConfig(lora_r=16)) == LoraSettings(16, 32.0, 0.05, ALL_LINEAR)
    recorded = {"r": 8, "alpha": 4.0, "dropout": 0.1, "targets": "c_attn"}
    assert LoraSettings.from_config(TrainingConfig(), recorded) == LoraSettings(8, 4.0, 0.1, "c_attn")
    assert LoraSettings.from_config(TrainingConfig(lora_r=0), recorded) is None
    # a new rank takes its own default alpha; flags given win over the record
    assert LoraSettings.from_config(TrainingConfig(lora_r=32, lora_dropout=0.0), recorded) == LoraSettings(
        32, 64.0, 0.0, "c_attn"
    )
    assert LoraSettings(4, 8.0, 0.0, " q_proj, v_proj ").target_modules() == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"lora_r": -1}, "--lora-r must be >= 0 (0: full fine-tuning), got -1"),
        ({"lora_alpha": 0.0}, "--lora-alpha must be greater than 0, got 0.0"),
        ({"lora_dropout": 1.0}, "--lora-dropout must be in [0, 1), got 1.0"),
        ({"lora_targets": " , "}, "--lora-targets must name at least one layer (or all-linear)"),
    ],
)
def test_lora_settings_out_of_range_are_one_line_errors(settings, message):
    with pytest.raises(MtnsailsError) as error:
        TrainingConfig(**settings).validate()
    assert str(error.value) == message


def test_lora_targets_the_model_lacks_are_a_one_line_error_naming_its_layers(tmp_path, cli_here):
    result = cli_here(
        "train", "--model-name", "tiny", "--output-dir", str(tmp_path / "out"), "--lora-r", "4",
        "--lora-targets", "q_proj,v_proj", "--quiet",
    )  # fmt: skip
    assert_one_line_error(result, "--lora-targets q_proj,v_proj: ", "its linear layers: c_attn, c_fc, c_proj")
    assert not (tmp_path / "out").exists()


def test_lora_without_peft_is_a_one_line_error(monkeypatch):
    import sys

    from mtnsails.train.lora import add_adapters

    monkeypatch.setitem(sys.modules, "peft", None)  # as if it were not installed
    with pytest.raises(MtnsailsError, match=r"^--lora-r needs the peft package: pip install 'mtnsails\[train\]'"):
        add_adapters(torch.nn.Linear(2, 2), LoraSettings(4, 8.0, 0.0, ALL_LINEAR))


def test_resuming_with_other_lora_flags_is_refused(tmp_path):
    from mtnsails.train.trainer import _sha256_json

    checkpoints = tmp_path / "out.checkpoints"
    (checkpoints / "checkpoint-2").mkdir(parents=True)
    flags = {"lora_r": 4, "lora_alpha": None, "lora_dropout": None, "lora_targets": None}
    run = {"model_name": "tiny", "data_sha256": _sha256_json(TINY_CONVERSATIONS), "lora": flags}
    (checkpoints / "mtnsails-run.json").write_text(json.dumps(run))
    config = TrainingConfig(model_name="tiny", output_dir=str(tmp_path / "out"), lora_r=8, resume=True, quiet=True)
    with pytest.raises(MtnsailsError) as error:
        LLMTrainer(config=config).train_conversations(TINY_CONVERSATIONS)
    assert str(error.value) == (
        f"--resume: the checkpoints in {checkpoints} were made with another LoRA setting; resume with "
        "the same --model-name, --data-file, --chat-template and --lora-* flags, or delete that directory to start over"
    )
