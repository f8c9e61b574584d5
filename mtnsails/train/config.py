"""`TrainingConfig`: every training setting, declared once (the `train` flags come from it)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from mtnsails.core.errors import MtnsailsError
from mtnsails.core.settings import MAX_SEED, flag_of, non_finite, setting
from mtnsails.model_dir.jinja_template import JinjaTemplate
from mtnsails.model_dir.template import ChatTemplate
from mtnsails.train.augment import AugmentConfig
from mtnsails.train.devices import DEVICES
from mtnsails.train.lora import LoraTrainingDefaults
from mtnsails.train.models import ContinuedTrainingDefaults, EmbeddedTrainingDefaults
from mtnsails.train.templates import check_choice


@dataclass
class TrainingConfig:
    """Every training setting. None means "the model's own default" (see `resolved`)."""

    model_name: str = setting(
        "distilgpt2",
        "hub model name, a local model directory (e.g. ./trained_model to retrain) or "
        "'tiny' for the embedded offline model; distilgpt2 falls back to tiny when it cannot be had",
    )
    output_dir: str = setting("./trained_model", "where the trained model goes")
    num_epochs: int | None = setting(
        None,
        "passes over the data (default: 3; tiny: 40; continuing a model: 3, tiny: 30; with --lora-r, tiny: 60)",
        flag="--epochs",
    )
    batch_size: int = setting(4, "examples per device step")
    learning_rate: float | None = setting(
        None,
        "peak learning rate (default: 5e-5; tiny: 1e-3; continuing a model: 1e-5, tiny: 1e-3; "
        "with --lora-r: 5e-4; tiny: 3e-3; continuing a model: 1e-4, tiny: 3e-3)",
    )
    warmup_ratio: float = setting(0.0, "fraction of steps with a rising learning rate")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    gradient_accumulation_steps: int = setting(1, "steps whose gradients add up before one update")
    max_length: int = setting(256, "tokens per example; longer ones lose context from the left")
    eval_split: float = setting(
        0.0,
        "fraction of the conversations held out for an eval loss each epoch; the model never "
        "learns their answers, and the summary names them",
    )
    early_stopping_patience: int | None = setting(
        None,
        "with --eval-split: stop after N evaluations without a better eval loss and keep the model "
        "with the best one (default: off; the last model is kept)",
    )
    seed: int = setting(42, "random seed")
    device: str = setting("cpu", "where to train; auto picks a GPU when there is one", choices=DEVICES)
    save_steps: int = setting(100, "checkpoint every N steps into <output-dir>.checkpoints")
    resume: bool = setting(False, "continue an interrupted run from its last checkpoint")
    quiet: bool = setting(False, "no progress bars or reports")
    trust_remote_code: bool = setting(False, "allow a hub model to run its own Python code (only for models you trust)")
    no_replay: bool = setting(
        False,
        "continuing an mtnsails model (--model-name ./trained_model): train on the new data "
        "alone, without mixing the model's earlier training data back in",
    )
    chat_template: str | None = setting(
        None,
        "the chat template conversations are rendered with: chatml or a Jinja file gives the model one "
        "(adding the special tokens it lacks), none is mtnsails' own 'User:/Assistant:' format (default: "
        "the template the model's tokenizer has, else mtnsails' own format)",
    )
    # -- LoRA and memory (mtnsails.train.lora) --
    lora_r: int | None = setting(
        None,
        "train LoRA adapters of rank N (through peft) instead of every weight; 0: full fine-tuning "
        "(default: full fine-tuning; continuing a LoRA-trained model: its LoRA settings)",
    )
    lora_alpha: float | None = setting(None, "LoRA scaling: adapters count alpha/r times (default: 2 x --lora-r)")
    lora_dropout: float | None = setting(None, "dropout on the LoRA adapters' input (default: 0.05)")
    lora_targets: str | None = setting(
        None,
        "layers that get LoRA adapters: all-linear (every linear layer but the output head) or "
        "comma-separated names, e.g. q_proj,v_proj (default: all-linear)",
    )
    gradient_checkpointing: bool = setting(
        False, "recompute activations in the backward pass: less memory, slower steps (full and LoRA)"
    )
    template: ChatTemplate | JinjaTemplate = field(default_factory=ChatTemplate)  # the API's (see train.templates)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # extra examples (mtnsails.train.augment)

    def validate(self) -> None:
        """Raise `MtnsailsError` naming the first setting that is out of range."""
        bad = non_finite(self)
        if bad is not None:
            raise MtnsailsError(f"{flag_of(bad)} must be a finite number, got {getattr(self, bad.name)}")
        positive = {
            "--epochs": self.num_epochs,
            "--batch-size": self.batch_size,
            "--learning-rate": self.learning_rate,
            "--save-steps": self.save_steps,
            "--gradient-accumulation-steps": self.gradient_accumulation_steps,
            "--max-length": self.max_length,
            "--early-stopping-patience": self.early_stopping_patience,
        }
        for flag, value in positive.items():
            if value is not None and not value > 0:
                raise MtnsailsError(f"{flag} must be greater than 0, got {value}")
        for flag, value in {
            "--warmup-ratio": self.warmup_ratio,
            "--eval-split": self.eval_split,
            "--lora-dropout": self.lora_dropout,
        }.items():
            if value is not None and not 0 <= value < 1:
                raise MtnsailsError(f"{flag} must be in [0, 1), got {value}")
        if self.lora_r is not None and self.lora_r < 0:
            raise MtnsailsError(f"--lora-r must be >= 0 (0: full fine-tuning), got {self.lora_r}")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise MtnsailsError(f"--lora-alpha must be greater than 0, got {self.lora_alpha}")
        if self.lora_targets is not None and not self.lora_targets.strip(" ,"):
            raise MtnsailsError("--lora-targets must name at least one layer (or all-linear)")
        if self.weight_decay < 0:
            raise MtnsailsError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.seed <= MAX_SEED:
            raise MtnsailsError(f"--seed must be from 0 to {MAX_SEED}, got {self.seed}")
        if self.device not in DEVICES:
            raise MtnsailsError(f"--device must be one of {', '.join(DEVICES)}, got {self.device}")
        check_choice(self.chat_template)
        self.augment.validate()

    def resolved(self, embedded: bool, continuing: bool = False, lora: bool = False) -> TrainingConfig:
        """A copy with each None default replaced by the model's own: the embedded model's
        `EmbeddedTrainingDefaults`, else fine-tuning defaults (3 epochs, learning rate 5e-5).
        `continuing` (an mtnsails model trained further) takes epochs and learning rate from
        `ContinuedTrainingDefaults`; `lora` (a LoRA run) from `LoraTrainingDefaults`."""
        if embedded:
            own = EmbeddedTrainingDefaults()
            epochs, learning_rate = own.num_epochs, own.learning_rate
        else:
            epochs, learning_rate = 3, 5e-5
        if continuing:
            later = ContinuedTrainingDefaults()
            epochs, learning_rate = (
                (later.embedded_num_epochs, later.embedded_learning_rate)
                if embedded
                else (later.num_epochs, later.learning_rate)
            )
        if lora:
            epochs, learning_rate = LoraTrainingDefaults().resolve(embedded, continuing, epochs)
        return replace(self, num_epochs=self.num_epochs or epochs, learning_rate=self.learning_rate or learning_rate)

    @property
    def checkpoint_dir(self) -> Path:
        """Checkpoints live beside the output, never inside it (the output is swapped in whole)."""
        output = Path(self.output_dir).expanduser().resolve()
        return output.with_name(output.name + ".checkpoints")
