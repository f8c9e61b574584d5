"""LoRA (`train --lora-r N`): train small low-rank adapters through peft instead of every weight.

Why: full fine-tuning keeps weights, gradients and two AdamW moments for every parameter (16
bytes each in fp32), so a 1.5B-parameter model needs about 25 GB before any activation; LoRA
freezes the model and trains only the adapters (about 1% of the parameters at r=16 on every
linear layer), so memory is little more than the weights themselves.

What a run leaves: the merged model (adapter folded into the weights, `merge_and_unload`) at the
top of the output directory, so `convert`, `chat`, continued training and replay read it like any
model, and the adapter alone in `ADAPTER_DIR` (`adapter_model.safetensors` and
`adapter_config.json`, loadable with `peft.PeftModel.from_pretrained` onto the weights it was
trained on). `mtnsails.json` records the settings under "lora".

Continuing a LoRA-trained model continues as LoRA with its recorded settings: a new adapter is
trained on the merged weights (the earlier base may not be at hand, and the merged weights are
what the model now is); `--lora-r 0` switches to full fine-tuning.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from mtnsails.core.errors import MtnsailsError, first_line

ADAPTER_DIR = "adapter"  # the adapter's folder inside the output directory
ALL_LINEAR = "all-linear"  # peft: every linear (and GPT-2 Conv1D) layer but the output head
# Defaults from peft's documentation: LoRA on all linear layers ("QLoRA-style training", which
# "can provide performance equal to a fully finetuned model"), alpha 2-4 times the rank and
# dropout 0.05 for models below 7B ("Optimal Settings by Model Size").
DEFAULT_ALPHA_PER_RANK = 2
DEFAULT_DROPOUT = 0.05


class LoraFlags(Protocol):
    """The LoRA flags of a `TrainingConfig` (None: not given)."""

    lora_r: int | None
    lora_alpha: float | None
    lora_dropout: float | None
    lora_targets: str | None


@dataclass(frozen=True)
class LoraTrainingDefaults:
    """Learning rate (and, for the embedded model, epochs) of a LoRA run unless given; other
    settings are those of full fine-tuning. Measured with bench/defaults_bench.py
    (docs/training.md#defaults-measured): the adapters start at zero and are few, so for the same answers
    they need about ten times the rate full fine-tuning needs, hence ten times each full
    fine-tuning default for a pretrained model (5e-4 is the top of peft's documented 1e-4 to
    5e-4). The embedded model's embeddings stay frozen and random under LoRA, so it learns new
    words slowly: continuing a trained one took 60 epochs at 3e-3 to learn a new answer (30 at
    1e-3, full fine-tuning's continuing defaults, did not); from scratch LoRA teaches it nothing.
    """

    learning_rate: float = 5e-4  # full fine-tuning: 5e-5
    continued_learning_rate: float = 1e-4  # full fine-tuning: 1e-5
    embedded_learning_rate: float = 3e-3  # full fine-tuning: 1e-3
    embedded_num_epochs: int = 60  # full fine-tuning: 40, continuing 30

    def resolve(self, embedded: bool, continuing: bool, epochs: int) -> tuple[int, float]:
        """(epochs, learning rate) for a LoRA run of this kind; `epochs` is full fine-tuning's."""
        if embedded:
            return self.embedded_num_epochs, self.embedded_learning_rate
        return epochs, self.continued_learning_rate if continuing else self.learning_rate


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA a run trains with, every default filled in."""

    r: int
    alpha: float
    dropout: float
    targets: str  # ALL_LINEAR or comma-separated module names

    @classmethod
    def from_config(cls, config: LoraFlags, recorded: dict | None = None) -> LoraSettings | None:
        """The settings `config` asks for, or None for full fine-tuning. A flag left unset takes
        the value `recorded` (the "lora" record of the model being continued) holds, so a
        LoRA-trained model continues as LoRA; `--lora-r 0` is full fine-tuning."""
        recorded = recorded if isinstance(recorded, dict) else {}
        if config.lora_r is None:  # unset: what the model being continued was trained with
            r, alpha = recorded.get("r"), recorded.get("alpha")
        else:
            r, alpha = config.lora_r, None
        if not r:
            return None
        alpha = config.lora_alpha or alpha or DEFAULT_ALPHA_PER_RANK * r
        dropout = config.lora_dropout if config.lora_dropout is not None else recorded.get("dropout", DEFAULT_DROPOUT)
        targets = config.lora_targets or recorded.get("targets") or ALL_LINEAR
        return cls(r=int(r), alpha=float(alpha), dropout=float(dropout), targets=targets)

    def target_modules(self) -> str | list[str]:
        """`targets` as peft's `target_modules` takes it."""
        if self.targets == ALL_LINEAR:
            return ALL_LINEAR
        return [name.strip() for name in self.targets.split(",") if name.strip()]


def lora_flags(config: LoraFlags) -> dict:
    """The LoRA flags as given (None where unset): what a run's checkpoints are recorded with."""
    return {
        "lora_r": config.lora_r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "lora_targets": config.lora_targets,
    }


def add_adapters(model, settings: LoraSettings):
    """`model` wrapped by peft with trainable adapters (everything else frozen); a one-line
    MtnsailsError when peft is missing or the target modules are not in the model."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise MtnsailsError(
            "--lora-r needs the peft package: pip install 'mtnsails[train]' (or pip install peft)"
        ) from None
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules(),
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():  # GPT-2's Conv1D layers: peft sets fan_in_fan_out itself
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
            return get_peft_model(model, config)
    except ValueError as error:  # peft's NoMatchingPeftModuleError is a ValueError
        raise MtnsailsError(
            f"--lora-targets {settings.targets}: {first_line(error)} (its linear layers: "
            f"{', '.join(linear_layer_names(model)) or 'none'}; or use {ALL_LINEAR})"
        ) from None


def linear_layer_names(model) -> list[str]:
    """The distinct last names of `model`'s linear layers (e.g. c_attn, q_proj), for a hint."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear | Conv1D)
        }
    )


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, all) parameters of `model`."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


@dataclass
class Adapter:
    """A trained adapter taken out of its model: its weights and peft config, to save later."""

    weights: dict
    config: object  # peft.LoraConfig
    settings: LoraSettings
    modules: list[str]  # the distinct names of the layers that got adapters
    trainable_parameters: int

    def save(self, directory: Path) -> None:
        """Write `adapter_model.safetensors` and `adapter_config.json` into `directory`."""
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.weights, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
        self.config.save_pretrained(str(directory))

    def record(self) -> dict:
        """What mtnsails.json keeps under "lora": the settings (continued training reads them),
        where the adapter is and which weights it applies to."""
        return {
            **asdict(self.settings),
            "modules": self.modules,
            "trainable_parameters": self.trainable_parameters,
            "adapter": ADAPTER_DIR,
            "adapter_base": self.config.base_model_name_or_path,
        }


def merge(model, settings: LoraSettings, base: str | None) -> tuple[object, Adapter]:
    """(the model with its adapter folded into the weights, the adapter on its own)."""
    from peft import get_peft_model_state_dict

    trainable, _ = parameter_counts(model)
    weights = {
        name: tensor.detach().to("cpu").contiguous().clone()
        for name, tensor in get_peft_model_state_dict(model).items()
    }
    config = model.peft_config["default"]
    config.base_model_name_or_path = base
    config.inference_mode = True
    if isinstance(config.target_modules, set):  # written in a stable order
        config.target_modules = sorted(config.target_modules)
    modules = sorted({name.rsplit(".", 1)[-1] for name in config.target_modules})
    return model.merge_and_unload(), Adapter(weights, config, settings, modules, trainable)


def describe(model, settings: LoraSettings, random_weights: bool = False) -> str:
    """The note a LoRA run starts with, e.g. "note: LoRA r=16 (alpha 32, dropout 0.05,
    all-linear): 8.8M of 502.8M parameters train (1.75%)"; with `random_weights` (the embedded
    model from scratch) a warning that LoRA cannot teach it."""
    trainable, total = parameter_counts(model)
    note = (
        f"note: LoRA r={settings.r} (alpha {settings.alpha:g}, dropout {settings.dropout:g}, "
        f"{settings.targets}): {trainable / 1e6:.1f}M of {total / 1e6:.1f}M parameters train "
        f"({100 * trainable / max(total, 1):.2f}%)"
    )
    if random_weights:
        note += (
            "\nwarning: the embedded model starts from random weights, which LoRA leaves as they "
            "are: it learns next to nothing this way (0 of 40 answers where full fine-tuning "
            "learns 40, docs/training.md#defaults-measured); train it without --lora-r"
        )
    return note


def adopt_recorded_flags(config: LoraFlags, recorded: dict | None) -> None:
    """`--resume` without LoRA flags takes the ones the checkpoints were made with (a LoRA run
    resumes as LoRA); flags given are kept, and compared by the caller."""
    if isinstance(recorded, dict) and all(value is None for value in lora_flags(config).values()):
        for name, value in recorded.items():
            if name in lora_flags(config):
                setattr(config, name, value)
