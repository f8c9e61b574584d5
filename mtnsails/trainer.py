"""Fine-tune a causal language model on conversations with transformers' `Trainer`.

What the model learns is the assistant's answers: every prompt token is labelled -100, each
answer ends in EOS (labelled, so the model learns to stop), and batches are padded only to their
longest example. The finished model directory loads with plain `AutoModelForCausalLM` /
`AutoTokenizer` and carries `mtnsails.json` (template, data hash, settings, losses).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import sys
import threading
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from mtnsails.collator import PaddingCollator, encode_segments
from mtnsails.data import exchanges
from mtnsails.errors import MtnsailsError
from mtnsails.files import (METADATA_FILE, MODEL_FORMAT, atomic_directory, atomic_write_text,
                            check_replaceable, file_sha256, read_json_object)
from mtnsails.models import EMBEDDED_MODEL_NAME, EmbeddedTrainingDefaults, resolve_model
from mtnsails.quality import DataQualityValidator, QualityReport
from mtnsails.template import ChatTemplate, Segment
from mtnsails.training_config import TrainingConfig

QUALITY_BLOCKS = "critical"  # verdict (< 50 % valid conversations) that stops training without --force


def packaged_example_data() -> Path:
    """The example conversations shipped with mtnsails (what `train` uses without --data-file)."""
    return Path(__file__).resolve().parent / "resources" / "example_conversations.json"


def quality_gate(conversations: list[dict], force: bool = False, quiet: bool = False
                 ) -> QualityReport:
    """Show the data-quality report; refuse a critical data set unless `force`. Returns the report."""
    report = DataQualityValidator().analyze(conversations)
    main = _is_main_process()  # every rank checks (all stop together); only rank 0 prints
    if main and not quiet:
        print(report.format_text())
    score = f"{report.quality_score:.0%}"
    if report.verdict == QUALITY_BLOCKS and not force:
        raise MtnsailsError(f"data quality {score} is below 50 %: fix the data (`validate --filter` "
                            "keeps the good conversations) or pass --force to train anyway")
    if main and report.verdict != "good":
        print(f"warning: data quality is {score} ({report.verdict}); training anyway",
              file=sys.stderr)
    return report



@dataclass
class TrainingResult:
    """What a finished run reports."""

    train_loss: float | None
    eval_loss: float | None
    perplexity: float | None
    examples: int
    loss_history: list[dict]

    def summary(self, path: str | os.PathLike, next_step: bool = True) -> str:
        """The lines `train` ends with: where the model is, its losses, the next command."""
        losses = f"final train loss {self.train_loss:.4f}"
        if self.eval_loss is not None:
            losses += f", eval loss {self.eval_loss:.4f} (perplexity {self.perplexity:.2f})"
        shown = os.path.relpath(path) if Path(path).is_relative_to(Path.cwd()) else str(path)
        text = f"Model saved to {shown} ({self.examples} examples)\n{losses}"
        if next_step:
            text += f"\nNext: python main.py convert --model-path {shlex.quote(shown)}"
        return text


class TrainingInterrupted(MtnsailsError):
    """Ctrl-C during training: a checkpoint was saved and the run can be resumed."""

    exit_code = 130


class LLMTrainer:
    """Train a model on conversations and save it as an mtnsails model directory.

    New API::

        trainer = LLMTrainer(config=TrainingConfig(model_name="tiny", output_dir="out"))
        trainer.train_conversations([{"input": "Hi", "output": "Hello!"}])
        trainer.save_model()

    The original API works too: `LLMTrainer("distilgpt2", "./trained_model", "cpu")`,
    `train(texts, num_epochs=3, ...)`, `save_model(path=None)`, `load_trained_model(path)`.
    """

    def __init__(self, model_name: str = "distilgpt2", output_dir: str = "./trained_model",
                 device: str = "cpu", config: TrainingConfig | None = None) -> None:
        self.config = config or TrainingConfig(model_name=model_name, output_dir=output_dir,
                                               device=device)
        self.config.validate()
        self.model = None
        self.tokenizer = None
        self.resolved = None  # mtnsails.models.ResolvedModel of the last run
        self.result: TrainingResult | None = None
        self._settings: dict = {}
        self._data_info: dict = {"data_file": None, "data_sha256": None}

    @property
    def is_main_process(self) -> bool:
        """False on the other ranks of a torchrun/accelerate run (only rank 0 writes files)."""
        return _is_main_process()

    # -- the original API ----------------------------------------------------------------------

    def train(self, train_texts: list[str], num_epochs: int = 3, batch_size: int = 4,
              learning_rate: float = 5e-5, save_steps: int = 100, max_length: int = 256
              ) -> TrainingResult:
        """Original API: train on texts like "User: ...\\nAssistant: ..." (see `parse_text`)."""
        self.config = replace(self.config, num_epochs=num_epochs, batch_size=batch_size,
                              learning_rate=learning_rate, save_steps=save_steps,
                              max_length=max_length)
        self.config.validate()
        self._data_info = {"data_file": None, "data_sha256": _sha256_json(train_texts)}
        return self._train(lambda template: [parse_text(text, template) for text in train_texts])

    def save_model(self, save_path: str | os.PathLike | None = None) -> str:
        """Write the trained model atomically to `save_path` (default: output_dir); return it."""
        if self.model is None:
            raise MtnsailsError("no model to save: train or load one first")
        path = Path(save_path or self.config.output_dir).expanduser().resolve()
        if _is_main_process():  # under torchrun/accelerate only rank 0 writes
            with atomic_directory(path, kind=MODEL_FORMAT) as staging:
                self.model.save_pretrained(staging, safe_serialization=True)
                self.tokenizer.save_pretrained(staging)
                atomic_write_text(staging / METADATA_FILE,
                                  json.dumps(self._metadata(), indent=2) + "\n")
                history = self.result.loss_history if self.result else []
                note = plot_loss(history, staging / "loss.png")
                if note and not self.config.quiet:
                    print(note, file=sys.stderr)
        _distributed_barrier()  # the other ranks return once the model is there
        return str(path)

    def load_trained_model(self, model_path: str | os.PathLike) -> None:
        """Load a saved model directory (weights via safetensors only) for further use."""
        self.resolved = resolve_model(str(model_path), trust_remote_code=self.config.trust_remote_code)
        self.model, self.tokenizer = self.resolved.model, self.resolved.tokenizer
        self.config.template = ChatTemplate.from_dict(self.resolved.metadata.get("template"))

    # -- the new API ---------------------------------------------------------------------------

    def train_conversations(self, conversations: list[dict],
                            data_file: str | os.PathLike | None = None) -> TrainingResult:
        """Train on native conversations ({"input", "output"} + optional history/system)."""
        self._data_info = {
            "data_file": str(data_file) if data_file else None,
            "data_sha256": file_sha256(data_file) if data_file else _sha256_json(conversations),
        }
        return self._train(lambda template: [list(template.segments(exchanges(c), c.get("system")))
                                             for c in conversations])

    # -- the work ------------------------------------------------------------------------------

    def _train(self, make_examples: Callable[[ChatTemplate], list[list[Segment]]]
               ) -> TrainingResult:
        """Train on the examples `make_examples(template)` builds (segments per conversation)."""
        with _removed_without_checkpoint(self.config.checkpoint_dir):
            return self._run(make_examples)

    def _run(self, make_examples: Callable[[ChatTemplate], list[list[Segment]]]
             ) -> TrainingResult:
        """The run itself: resolve the model, encode, train, record the result."""
        config = self.config
        examples = make_examples(config.template)
        if not examples:
            raise MtnsailsError("no conversations to train on")
        _quiet_libraries(config.quiet)
        check_replaceable(config.output_dir, MODEL_FORMAT)  # refuse before hours of training
        checkpoint = self._resume_checkpoint()  # before any slow work: refuse early
        examples = self._resolve_model(examples, make_examples)
        model, tokenizer = self.resolved.model, self.resolved.tokenizer
        defaults = EmbeddedTrainingDefaults() if self.resolved.embedded else None
        epochs = config.num_epochs or (defaults.num_epochs if defaults else 3)
        learning_rate = config.learning_rate or (defaults.learning_rate if defaults else 5e-5)
        eval_split = config.eval_split
        if eval_split is None:
            eval_split = defaults.eval_split if defaults else (0.1 if len(examples) >= 20 else 0.0)
        max_length = min(config.max_length, _context_length(model))

        encoded = [encode_segments(tokenizer, segments, max_length) for segments in examples]
        truncated = sum(bool(item["truncated"]) for item in encoded)
        if truncated and _is_main_process():
            cut_answers = sum(item["truncated"] == 2 for item in encoded)
            print(f"note: {truncated} of {len(encoded)} examples exceed --max-length {max_length} "
                  f"tokens: their context was cut from the left"
                  + (f"; {cut_answers} answers lost their end too (raise --max-length)"
                     if cut_answers else ""), file=sys.stderr)
        train_set, eval_set = _split(encoded, eval_split, config.seed)

        self._settings = {
            "num_epochs": epochs, "batch_size": config.batch_size, "learning_rate": learning_rate,
            "warmup_ratio": config.warmup_ratio, "weight_decay": config.weight_decay,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "max_length": max_length, "eval_split": eval_split,
            "early_stopping_patience": config.early_stopping_patience, "seed": config.seed,
            "device": config.device, "examples": len(encoded), "train_examples": len(train_set),
            "eval_examples": len(eval_set), "truncated_examples": truncated,
            "processes": _world_size(),
        }
        trainer, interrupt = self._build_trainer(model, tokenizer, train_set, eval_set, epochs,
                                                 learning_rate)
        threads = defaults.cpu_threads if defaults and "OMP_NUM_THREADS" not in os.environ else None
        with interrupt, _torch_threads(threads):
            output = trainer.train(resume_from_checkpoint=checkpoint)
        if interrupt.requested:
            raise TrainingInterrupted(
                f"training interrupted at step {trainer.state.global_step}: checkpoint saved in "
                f"{config.checkpoint_dir}; the output {config.output_dir} was not touched; "
                "continue with the same command plus --resume")
        self.model, self.tokenizer = trainer.model, tokenizer
        if _is_main_process():  # the run is complete: nothing left to resume
            shutil.rmtree(config.checkpoint_dir, ignore_errors=True)
        self.model.generation_config.eos_token_id = tokenizer.eos_token_id
        self.model.generation_config.pad_token_id = tokenizer.pad_token_id
        history = _loss_history(trainer.state.log_history)
        train_losses = [entry["loss"] for entry in history if "loss" in entry]
        eval_loss = trainer.state.best_metric if eval_set else None
        self.result = TrainingResult(
            train_loss=train_losses[-1] if train_losses else output.training_loss,
            eval_loss=eval_loss, perplexity=_perplexity(eval_loss), examples=len(encoded),
            loss_history=history)
        return self.result

    def _resolve_model(self, examples: list[list[Segment]],
                       make_examples: Callable[[ChatTemplate], list[list[Segment]]]
                       ) -> list[list[Segment]]:
        """Set `self.resolved`; return the examples, rebuilt if the model brings its own template."""
        config = self.config
        texts = ["".join(segment.text for segment in segments) for segments in examples]
        self.resolved = resolve_model(config.model_name, texts,
                                      trust_remote_code=config.trust_remote_code)
        if self.resolved.notice and _is_main_process():
            print(self.resolved.notice, file=sys.stderr)
        model = self.resolved.model
        if getattr(model, "loss_type", None) is None:  # GPT-2: the loss transformers falls back to,
            model.loss_type = "ForCausalLM"              # without its "unrecognized" warning
        earlier = self.resolved.metadata.get("template")
        if earlier and config.template == ChatTemplate():  # retraining keeps the model's template
            config.template = ChatTemplate.from_dict(earlier)
            return make_examples(config.template)
        return examples

    def _resume_checkpoint(self) -> str | None:
        from transformers.trainer_utils import get_last_checkpoint

        directory = self.config.checkpoint_dir
        last = get_last_checkpoint(str(directory)) if directory.is_dir() else None
        # What the checkpoints belong to: resuming with other data or another model would load
        # weights into a model they do not fit (the embedded tokenizer is built from the data).
        run = {"model_name": self.config.model_name, "data_sha256": self._data_info["data_sha256"]}
        marker = directory / "mtnsails-run.json"
        if self.config.resume:
            if last is None:
                raise MtnsailsError(f"--resume: no checkpoint in {directory} (nothing to resume)")
            recorded = read_json_object(marker) or run
            changed = [key for key in run if recorded.get(key) != run[key]]
            if changed:
                raise MtnsailsError(
                    f"--resume: the checkpoints in {directory} were made with another "
                    f"{' and '.join(changed).replace('_sha256', '')}; resume with the same "
                    "--model-name and --data-file, or delete that directory to start over")
            return last
        if last is not None:
            raise MtnsailsError(
                f"{directory} holds checkpoints of an interrupted run: add --resume to continue "
                "it, or delete that directory to start over")
        if _is_main_process():
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(marker, json.dumps(run) + "\n")
        return None

    def _build_trainer(self, model, tokenizer, train_set, eval_set, epochs, learning_rate):
        from transformers import EarlyStoppingCallback, TrainingArguments
        from transformers.trainer_callback import PrinterCallback

        PerplexityTrainer, SaveAfterEvaluate, Interrupt = _trainer_classes()

        config = self.config
        # checkpoints are ordered by step number anyway; the note only confuses users
        warnings.filterwarnings("ignore", message="mtime may not be reliable")
        device_flags = _device_flags(config.device)
        steps_per_epoch = max(1, math.ceil(len(train_set) / (config.batch_size * _world_size()
                                                              * config.gradient_accumulation_steps)))
        has_eval = bool(eval_set)
        args = TrainingArguments(
            output_dir=str(config.checkpoint_dir),
            num_train_epochs=epochs,
            per_device_train_batch_size=config.batch_size,
            per_device_eval_batch_size=config.batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            learning_rate=learning_rate,
            warmup_ratio=config.warmup_ratio,
            weight_decay=config.weight_decay,
            seed=config.seed,
            data_seed=config.seed,
            eval_strategy="epoch" if has_eval else "no",
            save_strategy="steps",
            save_steps=config.save_steps,
            save_total_limit=2,
            save_safetensors=True,
            metric_for_best_model="eval_loss" if has_eval else None,
            greater_is_better=False,
            logging_strategy="steps",
            logging_steps=max(1, steps_per_epoch * epochs // 25),  # about 25 points for loss.png
            group_by_length=True,
            remove_unused_columns=False,
            disable_tqdm=config.quiet,
            report_to="none",
            ddp_find_unused_parameters=False,
            dataloader_num_workers=0,
            **device_flags,
        )
        # Evaluate each epoch but checkpoint every --save-steps: Trainer's own check forbids that
        # mix with load_best_model_at_end, so a callback saves after every evaluation (the best
        # model is then always on disk) and the flag is switched on after that check.
        args.load_best_model_at_end = has_eval
        callbacks = [SaveAfterEvaluate()] if has_eval else []
        if has_eval and config.early_stopping_patience:
            callbacks.append(EarlyStoppingCallback(config.early_stopping_patience))
        interrupt = Interrupt()
        callbacks.append(interrupt)
        trainer = PerplexityTrainer(
            model=model, args=args, train_dataset=_dataset(train_set),
            eval_dataset=_dataset(eval_set) if has_eval else None,
            data_collator=PaddingCollator(tokenizer.pad_token_id), processing_class=tokenizer,
            callbacks=callbacks)
        if config.quiet:
            trainer.remove_callback(PrinterCallback)
        return trainer, interrupt

    def _metadata(self) -> dict:
        resolved, result = self.resolved, self.result
        embedded = bool(resolved and resolved.embedded)
        base = resolved and (resolved.metadata.get("base_model")
                             or (EMBEDDED_MODEL_NAME if embedded else resolved.name))
        return {
            "format": MODEL_FORMAT, "version": 1, "base_model": base, "embedded": embedded,
            "template": self.config.template.to_dict(), **self._data_info,
            "settings": self._settings,
            "train_loss": result.train_loss if result else None,
            "eval_loss": result.eval_loss if result else None,
            "perplexity": result.perplexity if result else None,
            "loss_history": result.loss_history if result else [],
            "context_length": _context_length(self.model),
        }


def parse_text(text: str, template: ChatTemplate) -> list[Segment]:
    """Split an original-API training text back into prompt and response segments.

    Texts that match the template ("User: ...\\nAssistant: ...") learn only the answer; any
    other text is learned whole, as the original trainer did.
    """
    before_input, after_input = template.template[: -len("{output}")].split("{input}")
    match = re.fullmatch(f"{re.escape(before_input)}(.*?){re.escape(after_input.rstrip(' '))}"
                         f"({re.escape(after_input[len(after_input.rstrip(' ')):])}.*)",
                         text, flags=re.DOTALL)
    if match is None:
        return [Segment(text, True)]
    return [Segment(template.prompt_text(match.group(1)), False), Segment(match.group(2), True)]


def _dataset(encoded: list[dict]):
    from datasets import Dataset

    return Dataset.from_dict({key: [item[key] for item in encoded]
                              for key in ("input_ids", "labels", "length")})


def _split(encoded: list[dict], eval_split: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A reproducible held-out split by conversation (at least one example on each side)."""
    if not eval_split or len(encoded) < 2:
        return encoded, []
    order = list(range(len(encoded)))
    random.Random(seed).shuffle(order)
    held_out = min(len(encoded) - 1, max(1, round(len(encoded) * eval_split)))
    eval_indices = set(order[:held_out])
    return ([item for i, item in enumerate(encoded) if i not in eval_indices],
            [item for i, item in enumerate(encoded) if i in eval_indices])


# -- Trainer plumbing -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _trainer_classes():
    """The Trainer subclass and callbacks, built on first use: they need transformers, and
    importing this module (e.g. `mtnsails.LLMTrainer`) must not import it."""
    from transformers import Trainer, TrainerCallback

    class PerplexityTrainer(Trainer):
        """Adds eval perplexity (exp of the eval loss) to every evaluation's log line."""

        def log(self, logs: dict, *args, **kwargs) -> None:
            if "eval_loss" in logs:
                logs["eval_perplexity"] = _perplexity(logs["eval_loss"])
            super().log(logs, *args, **kwargs)

    class SaveAfterEvaluate(TrainerCallback):
        """Checkpoint after each evaluation, so the best model is on disk to reload at the end."""

        def on_evaluate(self, args, state, control, **kwargs):
            control.should_save = True

    class Interrupt(TrainerCallback):
        """Ctrl-C: finish the current step, save a checkpoint and stop (a second Ctrl-C aborts)."""

        def __init__(self) -> None:
            self.requested = False
            self._previous = None

        def __enter__(self):
            if threading.current_thread() is threading.main_thread():
                self._previous = signal.signal(signal.SIGINT, self._handle)
            return self

        def __exit__(self, *exc) -> None:
            if self._previous is not None:
                signal.signal(signal.SIGINT, self._previous)

        def _handle(self, signum, frame) -> None:
            self.requested = True
            signal.signal(signal.SIGINT, signal.default_int_handler)
            print("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to abort)",
                  file=sys.stderr)

        def on_step_end(self, args, state, control, **kwargs):
            if self.requested:
                control.should_save = True
                control.should_training_stop = True

    return PerplexityTrainer, SaveAfterEvaluate, Interrupt


@contextlib.contextmanager
def _removed_without_checkpoint(directory: Path):
    """Remove `directory` if this run created it and fails before saving a checkpoint in it:
    there is nothing to resume, and a leftover would only be clutter (e.g. an unknown model)."""
    existed = directory.exists()
    try:
        yield
    except BaseException:
        if not existed and _is_main_process() and not any(directory.glob("checkpoint-*")):
            shutil.rmtree(directory, ignore_errors=True)
        raise


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """Run the block with `threads` CPU threads for torch (None: leave them alone)."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _device_flags(device: str) -> dict:
    import torch

    if device == "cpu":
        return {"use_cpu": True}
    if device == "cuda" and not torch.cuda.is_available():
        raise MtnsailsError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise MtnsailsError("--device mps: Apple's MPS is not available here (use --device cpu or auto)")
    if torch.cuda.is_available() and device in ("auto", "cuda"):
        return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}
    return {}


def _distributed_barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def finish_distributed() -> None:
    """End a torchrun/accelerate run's process group; a process that exits with it still open
    can abort ("terminate called without an active exception"). `save_model` has already waited
    for every rank."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _quiet_libraries(quiet: bool) -> None:
    from transformers.utils import logging

    logging.set_verbosity_error() if quiet else logging.set_verbosity_warning()
    if quiet:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()


def _context_length(model) -> int:
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 1024)


def _perplexity(loss: float | None) -> float | None:
    return None if loss is None else math.exp(min(loss, 50.0))


def _loss_history(log_history: list[dict]) -> list[dict]:
    keys = ("step", "epoch", "loss", "eval_loss", "eval_perplexity", "learning_rate")
    return [{key: entry[key] for key in keys if key in entry}
            for entry in log_history if "loss" in entry or "eval_loss" in entry]


def _sha256_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


def plot_loss(history: list[dict], path: Path) -> str | None:
    """Write train/eval loss per step to `path`; return a note instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        return "note: matplotlib is not installed, so loss.png was skipped (pip install matplotlib)"
    figure, axes = pyplot.subplots(figsize=(7, 4))
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        points = [(entry["step"], entry[key]) for entry in history if key in entry]
        if points:
            axes.plot(*zip(*points), marker="o" if key == "eval_loss" else None, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return None
