"""Fine-tune a causal language model on conversations with transformers' `Trainer`.

What the model learns is the assistant's answers: every prompt token is labelled -100, each
answer ends in EOS (labelled, so the model learns to stop), and batches are padded only to their
longest example. The finished model directory loads with plain `AutoModelForCausalLM` /
`AutoTokenizer` and carries `mtnsails.json` (template, data hash, settings, losses).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import shlex
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mtnsails.core.errors import MtnsailsError, first_line
from mtnsails.core.files import atomic_write_text, file_sha256, read_json_object
from mtnsails.core.ranks import barrier, finish_distributed, is_main_process, world_size
from mtnsails.data.handler import ConversationDataHandler, combine_conversations, common_system, opening_questions
from mtnsails.data.records import write_conversations
from mtnsails.model_dir.answer_lengths import answer_lengths, length_record
from mtnsails.model_dir.jinja_template import JinjaTemplate, template_from_dict
from mtnsails.model_dir.metadata import (
    METADATA_FILE,
    MODEL_FORMAT,
    TRAINING_DATA_FILE,
    describe_training,
    read_metadata,
)
from mtnsails.model_dir.output import atomic_directory, check_replaceable
from mtnsails.model_dir.template import ChatTemplate, Segment, exchanges
from mtnsails.quality.validator import quality_gate
from mtnsails.train.augment import ConversationAugmenter
from mtnsails.train.callbacks import non_finite_problem, perplexity, trainer_classes
from mtnsails.train.checkpoints import checkpoints, newest_complete
from mtnsails.train.collator import PaddingCollator, encode_segments
from mtnsails.train.config import TrainingConfig
from mtnsails.train.devices import device_flags, torch_threads
from mtnsails.train.lora import (
    ADAPTER_DIR,
    LoraSettings,
    add_adapters,
    adopt_recorded_flags,
    describe,
    lora_flags,
    merge,
)
from mtnsails.train.loss_plot import plot_loss
from mtnsails.train.models import (
    EMBEDDED_MODEL_NAME,
    EmbeddedTrainingDefaults,
    ModelChoice,
    choose_model,
    resolve_model,
)
from mtnsails.train.templates import end_ids, training_template

# Importable from here as before: scripts and the CLI use them with LLMTrainer.
__all__ = [
    "LLMTrainer",
    "TrainingConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "TrainingResult",
    "finish_distributed",
    "packaged_example_data",
    "parse_text",
    "plot_loss",
    "quality_gate",
]
# The training data drawn anew each epoch: (template, indices of the training conversations,
# segments -> encoded example) -> a map-style dataset, or None to train on the examples as they are.
Augment = Callable[[ChatTemplate | JinjaTemplate, list[int], Callable[[list[Segment]], dict]], object]


def packaged_example_data() -> Path:
    """The example conversations shipped with mtnsails (what `train` uses without --data-file)."""
    return Path(__file__).resolve().parent / "resources" / "example_conversations.json"


@dataclass
class TrainingResult:
    """What a finished run reports."""

    train_loss: float | None
    eval_loss: float | None
    perplexity: float | None
    examples: int
    loss_history: list[dict]
    held_out: list[str] = field(default_factory=list)  # the questions of the eval split

    def summary(self, path: str | os.PathLike, next_step: bool = True) -> str:
        """The lines `train` ends with: where the model is, its losses, the next command."""
        losses = f"final train loss {self.train_loss:.4f}"
        if self.eval_loss is not None:
            losses += f", eval loss {self.eval_loss:.4f} (perplexity {self.perplexity:.2f})"
        shown = os.path.relpath(path) if Path(path).is_relative_to(Path.cwd()) else str(path)
        text = f"Model saved to {shown} ({self.examples} examples)\n{losses}"
        if self.held_out:  # never learned: the user must know which answers the model lacks
            shown_questions = ", ".join(json.dumps(q, ensure_ascii=False) for q in self.held_out[:3])
            more = f" and {len(self.held_out) - 3} more" if len(self.held_out) > 3 else ""
            text += (
                f"\nheld out for the eval loss, so not learned: {len(self.held_out)} of {self.examples} "
                f'conversations ({shown_questions}{more}; all in mtnsails.json "held_out"); '
                "--eval-split 0 learns them all"
            )
        if next_step:
            text += f"\nNext: python main.py convert --model-path {shlex.quote(shown)}"
        return text


class TrainingInterrupted(MtnsailsError):
    """Ctrl-C during training: a checkpoint was saved and the run can be resumed."""

    exit_code = 130


class TrainingDiverged(MtnsailsError):
    """The loss became NaN or infinite: training stopped and nothing was saved."""


class LLMTrainer:
    """Train a model on conversations and save it as an mtnsails model directory.

    New API::

        trainer = LLMTrainer(config=TrainingConfig(model_name="tiny", output_dir="out"))
        trainer.train_conversations([{"input": "Hi", "output": "Hello!"}])
        trainer.save_model()

    The original API works too: `LLMTrainer("distilgpt2", "./trained_model", "cpu")`,
    `train(texts, num_epochs=3, ...)`, `save_model(path=None)`, `load_trained_model(path)`.
    """

    def __init__(
        self,
        model_name: str = "distilgpt2",
        output_dir: str = "./trained_model",
        device: str = "cpu",
        config: TrainingConfig | None = None,
    ) -> None:
        self.config = config or TrainingConfig(model_name=model_name, output_dir=output_dir, device=device)
        self.config.validate()
        self.model = None
        self.tokenizer = None
        self.resolved = None  # mtnsails.train.models.ResolvedModel of the last run
        self._choice: ModelChoice | None = None  # what the next run trains (see model_choice)
        self.result: TrainingResult | None = None
        self._settings: dict = {}
        self._data_info: dict = {
            "data_file": None,
            "data_sha256": None,
            "system": None,
            "history_exchanges": None,
            "questions": None,
            "question_answers": None,
        }
        self._answer_tokens: dict | None = None
        self._held_out: list[int] = []
        self._conversations: list[dict] | None = None  # what the last run trained on
        self._replayed = 0  # how many of them came from the model it continued
        self._adapter = None  # the LoRA adapter of the last run (mtnsails.train.lora.Adapter)

    @property
    def is_main_process(self) -> bool:
        """False on the other ranks of a torchrun/accelerate run (only rank 0 writes files)."""
        return is_main_process()

    def model_choice(self) -> ModelChoice:
        """Which model the next run trains, decided (and loaded, unless embedded) once: the
        pipeline calls this to name the model in its stage header before the data is read."""
        if self._choice is None:
            self._choice = choose_model(self.config.model_name, self.config.trust_remote_code)
        return self._choice

    # -- the original API ----------------------------------------------------------------------

    def train(
        self,
        train_texts: list[str],
        num_epochs: int = 3,
        batch_size: int = 4,
        learning_rate: float = 5e-5,
        save_steps: int = 100,
        max_length: int = 256,
    ) -> TrainingResult:
        """Original API: train on texts like "User: ...\\nAssistant: ..." (see `parse_text`)."""
        self.config = replace(
            self.config,
            num_epochs=num_epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            save_steps=save_steps,
            max_length=max_length,
        )
        self.config.validate()
        self._data_info = {"data_file": None, "data_sha256": _sha256_json(train_texts), "system": None}
        self._conversations, self._replayed = None, 0  # texts: no conversations to keep
        return self._train(lambda template: [parse_text(text, template) for text in train_texts])

    def save_model(self, save_path: str | os.PathLike | None = None) -> str:
        """Write the trained model atomically to `save_path` (default: output_dir); return it."""
        if self.model is None:
            raise MtnsailsError("no model to save: train or load one first")
        path = Path(save_path or self.config.output_dir).expanduser().resolve()
        if is_main_process():  # under torchrun/accelerate only rank 0 writes
            try:
                with atomic_directory(path, kind=MODEL_FORMAT) as staging:
                    self.model.save_pretrained(staging, safe_serialization=True)
                    if self._adapter is not None:
                        self._adapter.save(staging / ADAPTER_DIR)
                    self.tokenizer.save_pretrained(staging)
                    atomic_write_text(staging / METADATA_FILE, json.dumps(self._metadata(), indent=2) + "\n")
                    if self._conversations is not None:
                        write_conversations(staging / TRAINING_DATA_FILE, self._conversations)
                    history = self.result.loss_history if self.result else []
                    note = plot_loss(history, staging / "loss.png")
            except MtnsailsError:
                raise
            except Exception as error:  # torch, safetensors and the OS each raise their own
                raise MtnsailsError(
                    f"cannot write the model to {path}: {first_line(error)[:200]} "
                    "(is the disk full?); nothing there was changed"
                ) from None
            if note and not self.config.quiet:
                print(note, file=sys.stderr)
        barrier()  # the other ranks return once the model is there
        return str(path)

    def load_trained_model(self, model_path: str | os.PathLike) -> None:
        """Load a saved model directory (weights via safetensors only) for further use."""
        self.resolved = resolve_model(str(model_path), trust_remote_code=self.config.trust_remote_code)
        self.model, self.tokenizer = self.resolved.model, self.resolved.tokenizer
        self.config.template = template_from_dict(self.resolved.metadata.get("template"))

    # -- the new API ---------------------------------------------------------------------------

    def train_conversations(
        self, conversations: list[dict], data_file: str | os.PathLike | list | None = None
    ) -> TrainingResult:
        """Train on native conversations ({"input", "output"} + optional history/system).

        `data_file` (a path, or a list of paths the conversations were combined from) is
        recorded with the model. Continuing from an mtnsails model directory that keeps its
        training data (`TRAINING_DATA_FILE`), those conversations are mixed back in first
        unless `config.no_replay`, so the model keeps what it knew. Conversations a person
        marked bad in chat (`"feedback": "bad"`) are left out.
        """
        if isinstance(data_file, (list, tuple)):
            files = list(data_file)
        else:
            files = [data_file] if data_file else []
        self._data_info = {
            "data_file": str(files[0]) if len(files) == 1 else [str(f) for f in files] or None,
            "data_sha256": file_sha256(files[0]) if len(files) == 1 else _sha256_json(conversations),
        }
        marked_bad = sum(c.get("feedback") == "bad" for c in conversations)
        if marked_bad:  # an answer a person marked wrong in chat is never learned
            conversations = [c for c in conversations if c.get("feedback") != "bad"]
            if not self.config.quiet and is_main_process():
                print(f"note: {marked_bad} conversation(s) marked bad in chat are left out", file=sys.stderr)
        replayed = self._replay_conversations()
        combined, (self._replayed, added) = combine_conversations([replayed, conversations])
        self._data_info["system"] = common_system(combined)  # chat's default system prompt
        # chat keeps as many earlier exchanges as the model learned to use, and asks reworded
        # questions as the trained question they match
        self._data_info["history_exchanges"] = max((len(c.get("history") or []) for c in combined), default=0)
        first_answers = opening_questions(combined)
        self._data_info["questions"] = list(first_answers)
        self._data_info["question_answers"] = list(first_answers.values())
        if replayed and not self.config.quiet and is_main_process():
            print(
                f"note: continuing {self.config.model_name}: its {len(replayed)} training "
                f"conversations are mixed back in with {added} new ones, so it keeps what it "
                "knew (--no-replay trains on the new ones alone)",
                file=sys.stderr,
            )
        self._conversations = combined
        config = self.config
        return self._train(
            lambda template: [list(template.segments(exchanges(c), c.get("system"))) for c in combined],
            lambda template, kept, encode: (
                ConversationAugmenter([combined[i] for i in kept], template, config.augment, config.seed, encode)
                if config.augment.active
                else None
            ),
        )

    def _replay_conversations(self) -> list[dict]:
        """The conversations the model being continued was trained on ([] when it is not an
        mtnsails model keeping them, or replay is off)."""
        path = Path(self.config.model_name).expanduser()
        if self.config.no_replay or not (path / TRAINING_DATA_FILE).is_file():
            return []
        if read_metadata(path).get("format") != MODEL_FORMAT:
            return []
        return ConversationDataHandler.from_file(path / TRAINING_DATA_FILE).conversations

    # -- the work ------------------------------------------------------------------------------

    def _train(
        self, make_examples: Callable[[ChatTemplate], list[list[Segment]]], augment: Augment | None = None
    ) -> TrainingResult:
        """Train on the examples `make_examples(template)` builds (segments per conversation),
        or on `augment(...)`'s dataset of them that varies each epoch (never the held-out ones)."""
        with _removed_without_checkpoint(self.config.checkpoint_dir):
            return self._run(make_examples, augment)

    def _run(
        self, make_examples: Callable[[ChatTemplate], list[list[Segment]]], augment: Augment | None
    ) -> TrainingResult:
        """The run itself: resolve the model, encode, train, record the result."""
        config = self.config
        examples = make_examples(config.template)
        if not examples:
            raise MtnsailsError("no conversations to train on")
        _quiet_libraries(config.quiet)
        check_replaceable(config.output_dir, MODEL_FORMAT)  # refuse before hours of training
        checkpoint = self._resume_checkpoint()  # before any slow work: refuse early
        earlier = describe_training(config.output_dir)
        if earlier and not config.quiet and is_main_process():  # users rerun train: say what goes
            print(
                f"note: replacing the model in {config.output_dir} ({earlier}) once this run "
                "succeeds; choose another --output-dir to keep it",
                file=sys.stderr,
            )
        examples = self._resolve_model(examples, make_examples)
        model, tokenizer = self.resolved.model, self.resolved.tokenizer
        continuing = self.resolved.metadata.get("format") == MODEL_FORMAT
        lora = LoraSettings.from_config(config, self.resolved.metadata.get("lora"))
        settings = config.resolved(self.resolved.embedded, continuing, lora=lora is not None)
        epochs, learning_rate, eval_split = settings.num_epochs, settings.learning_rate, config.eval_split
        max_length = min(config.max_length, _context_length(model))

        encoded = [encode_segments(tokenizer, segments, max_length) for segments in examples]
        truncated = sum(bool(item["truncated"]) for item in encoded)
        if truncated and is_main_process():
            cut_answers = sum(item["truncated"] == 2 for item in encoded)
            print(
                f"note: {truncated} of {len(encoded)} examples exceed --max-length {max_length} "
                f"tokens: their context was cut from the left"
                + (f"; {cut_answers} answers lost their end too (raise --max-length)" if cut_answers else ""),
                file=sys.stderr,
            )
        answer_ends = end_ids(config.template, tokenizer, model)  # EOS and the template's end of turn
        self._answer_tokens = length_record(
            [length for item in encoded for length in answer_lengths(item["labels"], answer_ends)]
        )
        train_set, eval_set = _split(encoded, eval_split, config.seed)
        held_out = {id(item) for item in eval_set}
        self._held_out = [index for index, item in enumerate(encoded) if id(item) in held_out]
        train_data = None
        if augment is not None:  # the training conversations only, never the held-out ones
            kept = [index for index, item in enumerate(encoded) if id(item) not in held_out]
            train_data = augment(
                config.template, kept, lambda segments: encode_segments(tokenizer, segments, max_length)
            )

        self._settings = {
            "num_epochs": epochs,
            "batch_size": config.batch_size,
            "learning_rate": learning_rate,
            "warmup_ratio": config.warmup_ratio,
            "weight_decay": config.weight_decay,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "max_length": max_length,
            "eval_split": eval_split,
            "early_stopping_patience": config.early_stopping_patience,
            "seed": config.seed,
            "device": config.device,
            "examples": len(encoded),
            "train_examples": len(train_set),
            "eval_examples": len(eval_set),
            "truncated_examples": truncated,
            "processes": world_size(),
            "continued": continuing,
            "replayed_conversations": self._replayed,
            "augment": asdict(config.augment) if augment and config.augment.active else None,
            "lora": asdict(lora) if lora else None,
            "gradient_checkpointing": config.gradient_checkpointing,
        }
        if lora is not None:  # only the adapters train; the model's weights stay as they are
            import torch

            torch.manual_seed(config.seed)  # the adapters' random start, as reproducible as the run
            model = add_adapters(model, lora)
            if not config.quiet and is_main_process():
                print(describe(model, lora, self.resolved.embedded and not continuing), file=sys.stderr)
        if train_data is None:
            train_data = _dataset(train_set)
        trainer, interrupt, divergence = self._build_trainer(
            model, tokenizer, train_data, eval_set, epochs, learning_rate
        )
        # The embedded model's matrices are too small to gain from more threads (see its defaults)
        threads = (
            EmbeddedTrainingDefaults.cpu_threads
            if self.resolved.embedded and "OMP_NUM_THREADS" not in os.environ
            else None
        )
        with interrupt, torch_threads(threads):
            output = trainer.train(resume_from_checkpoint=checkpoint)
        if interrupt.requested:
            raise TrainingInterrupted(
                f"training interrupted at step {trainer.state.global_step}: checkpoint saved in "
                f"{config.checkpoint_dir}; the output {config.output_dir} was not touched; "
                "continue with the same command plus --resume"
            )
        problem = non_finite_problem({"loss": output.training_loss}, trainer.model)
        diverged = divergence.diverged or (problem and (trainer.state.global_step, problem))
        if diverged:
            step, problem = diverged
            raise TrainingDiverged(
                f"training stopped at step {step}: {problem}, so the model is no longer usable "
                f"(learning rate {learning_rate:g} is likely too high); {config.output_dir} was "
                "not replaced"
            )
        self.model, self.tokenizer, self._adapter = trainer.model, tokenizer, None
        if lora is not None:  # saved: the merged model, and the adapter beside it
            self.model, self._adapter = merge(trainer.model, lora, base=config.model_name)
        if is_main_process():  # the run is complete: nothing left to resume
            shutil.rmtree(config.checkpoint_dir, ignore_errors=True)
        # transformers' generate, llama.cpp and Ollama stop at these too
        self.model.generation_config.eos_token_id = answer_ends[0] if len(answer_ends) == 1 else answer_ends or None
        self.model.generation_config.pad_token_id = tokenizer.pad_token_id
        history = _loss_history(trainer.state.log_history)
        train_losses = [entry["loss"] for entry in history if "loss" in entry]
        eval_loss = _kept_eval_loss(trainer, bool(eval_set))
        self.result = TrainingResult(
            train_loss=train_losses[-1] if train_losses else output.training_loss,
            eval_loss=eval_loss,
            perplexity=perplexity(eval_loss),
            examples=len(encoded),
            loss_history=history,
            held_out=[
                self._conversations[i]["input"] if self._conversations else f"example {i + 1}" for i in self._held_out
            ],
        )
        return self.result

    def _resolve_model(
        self, examples: list[list[Segment]], make_examples: Callable[[ChatTemplate], list[list[Segment]]]
    ) -> list[list[Segment]]:
        """Set `self.resolved`; return the examples, rebuilt if the model brings its own template."""
        config = self.config
        texts = ["".join(segment.text for segment in segments) for segments in examples]
        choice, self._choice = self.model_choice(), None  # a later run decides anew
        self.resolved = resolve_model(config.model_name, texts, choice=choice)
        if self.resolved.notice and is_main_process():
            print(self.resolved.notice, file=sys.stderr)
        model = self.resolved.model
        if getattr(model, "loss_type", None) is None:  # GPT-2: the loss transformers falls back to,
            model.loss_type = "ForCausalLM"  # without its "unrecognized" warning
        recorded = self.resolved.metadata.get("template")
        template, added = training_template(
            config.chat_template, config.template, self.resolved.tokenizer, model, recorded
        )
        notes = []
        if added:
            notes.append(
                f"note: --chat-template {config.chat_template}: added {', '.join(added)} to the tokenizer as "
                "special tokens (their embeddings start as the mean of the others)"
            )
        if isinstance(template, JinjaTemplate) and template.rewrites_history:
            notes.append(
                "note: the model's chat template writes an earlier answer differently once a later "
                "question follows (as Qwen3's drops reasoning from history): of a conversation with "
                "history only the last answer is learned"
            )
        for note in notes if not config.quiet and is_main_process() else ():
            print(note, file=sys.stderr)
        if template == config.template:
            return examples
        config.template = template
        return make_examples(template)

    def _resume_checkpoint(self) -> str | None:
        directory = self.config.checkpoint_dir
        last = (checkpoints(directory) or [None])[0] if directory.is_dir() else None
        # What the checkpoints belong to: resuming with other data or another model would load
        # weights into a model they do not fit (the embedded tokenizer is built from the data).
        run = {
            "model_name": self.config.model_name,
            "data_sha256": self._data_info["data_sha256"],
            "chat_template": self.config.chat_template,  # may add tokens: the weights' shape changes
            "lora": lora_flags(self.config),
        }
        marker = directory / "mtnsails-run.json"
        if self.config.resume:
            if last is None:
                raise MtnsailsError(f"--resume: no checkpoint in {directory} (nothing to resume)")
            recorded = read_json_object(marker) or run
            adopt_recorded_flags(self.config, recorded.get("lora"))  # a LoRA run resumes as LoRA
            run["lora"] = lora_flags(self.config)
            changed = [key for key in run if recorded.get(key, run[key]) != run[key]]
            if changed:
                names = " and ".join(changed).replace("_sha256", "").replace("lora", "LoRA setting").replace("_", " ")
                raise MtnsailsError(
                    f"--resume: the checkpoints in {directory} were made with another {names}; "
                    "resume with the same --model-name, --data-file, --chat-template and --lora-* flags, "
                    "or delete that directory to start over"
                )
            complete, skipped = newest_complete(directory)
            for note in skipped if is_main_process() else ():
                print(f"warning: --resume: {directory}: {note}; going back further", file=sys.stderr)
            if complete is None:
                raise MtnsailsError(
                    f"--resume: no complete checkpoint in {directory} (each was "
                    "cut short); delete that directory to start over"
                )
            return str(complete)
        if last is not None:
            raise MtnsailsError(
                f"{directory} holds checkpoints of an interrupted run: add --resume to continue "
                "it, or delete that directory to start over"
            )
        if is_main_process():
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(marker, json.dumps(run) + "\n")
        return None

    def _build_trainer(self, model, tokenizer, train_set, eval_set, epochs, learning_rate):
        from transformers import EarlyStoppingCallback, TrainingArguments
        from transformers.trainer_callback import PrinterCallback

        classes = trainer_classes()

        config = self.config
        # checkpoints are ordered by step number anyway; the note only confuses users
        warnings.filterwarnings("ignore", message="mtime may not be reliable")
        on_device = device_flags(config.device)
        steps_per_epoch = max(
            1, math.ceil(len(train_set) / (config.batch_size * world_size() * config.gradient_accumulation_steps))
        )
        has_eval = bool(eval_set)
        keep_best = has_eval and bool(config.early_stopping_patience)
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
            metric_for_best_model="eval_loss" if keep_best else None,
            greater_is_better=False,
            logging_strategy="steps",
            logging_steps=max(1, steps_per_epoch * epochs // 25),  # about 25 points for loss.png
            group_by_length=True,
            remove_unused_columns=False,
            disable_tqdm=True,  # the progress callback is chosen below
            logging_nan_inf_filter=False,  # a NaN loss must show, not be averaged away
            report_to="none",
            ddp_find_unused_parameters=False,
            dataloader_num_workers=0,
            label_names=["labels"],  # what Trainer cannot infer through a peft wrapper
            gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},  # needs no input gradients (LoRA)
            **on_device,
        )
        # The last model is kept: the best eval loss on held-out answers the model never learns
        # marks an early, undertrained one (docs/training.md). Early stopping keeps the best, as
        # asked: it evaluates each epoch but checkpoints every --save-steps, which Trainer's own
        # check forbids with load_best_model_at_end, so a callback saves after every evaluation
        # (the best model is then always on disk) and the flag is switched on after that check.
        args.load_best_model_at_end = keep_best
        callbacks = (
            [classes.SaveAfterEvaluate(), EarlyStoppingCallback(config.early_stopping_patience)] if keep_best else []
        )
        interrupt, divergence = classes.Interrupt(), classes.StopOnNonFiniteLoss()
        callbacks += [interrupt, divergence]
        trainer = classes.CheckedTrainer(
            model=model,
            args=args,
            train_dataset=train_set,
            eval_dataset=_dataset(eval_set) if has_eval else None,
            data_collator=PaddingCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)  # it prints raw log dicts
        if not config.quiet:
            trainer.add_callback(classes.ProgressBar if sys.stderr.isatty() else classes.ProgressLines)
        return trainer, interrupt, divergence

    def _metadata(self) -> dict:
        resolved, result = self.resolved, self.result
        embedded = bool(resolved and resolved.embedded)
        base = resolved and (
            resolved.metadata.get("base_model") or (EMBEDDED_MODEL_NAME if embedded else resolved.name)
        )
        return {
            "format": MODEL_FORMAT,
            "version": 1,
            "base_model": base,
            "embedded": embedded,
            "template": self.config.template.to_dict(),
            **self._data_info,
            "settings": self._settings,
            "train_loss": result.train_loss if result else None,
            "eval_loss": result.eval_loss if result else None,
            "perplexity": result.perplexity if result else None,
            "loss_history": result.loss_history if result else [],
            "context_length": _context_length(self.model),
            "answer_tokens": self._answer_tokens,  # chat's default token limit comes from it
            "held_out": self._held_out,  # positions in the data of the eval split's conversations
            "lora": self._adapter.record() if self._adapter else None,
        }


def parse_text(text: str, template: ChatTemplate | JinjaTemplate) -> list[Segment]:
    """Split an original-API training text back into prompt and response segments.

    Texts that match the template ("User: ...\\nAssistant: ...") learn only the answer; any
    other text is learned whole, as the original trainer did. With a model's own chat template
    the texts are read in mtnsails' format and the exchange rendered through that template.
    """
    own = template if isinstance(template, ChatTemplate) else ChatTemplate()
    before_input, after_input = own.template[: -len("{output}")].split("{input}")
    match = re.fullmatch(
        f"{re.escape(before_input)}(.*?){re.escape(after_input.rstrip(' '))}"
        f"({re.escape(after_input[len(after_input.rstrip(' ')) :])}.*)",
        text,
        flags=re.DOTALL,
    )
    if match is None:
        return [Segment(text, True)]
    if own is not template:
        return list(template.segments([(match.group(1), match.group(2)[len(own.response_text("")) :])]))
    return [Segment(template.prompt_text(match.group(1)), False), Segment(match.group(2), True)]


def _dataset(encoded: list[dict]):
    from datasets import Dataset

    return Dataset.from_dict({key: [item[key] for item in encoded] for key in ("input_ids", "labels", "length")})


def _split(encoded: list[dict], eval_split: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A reproducible held-out split by conversation (at least one example on each side)."""
    if not eval_split or len(encoded) < 2:
        return encoded, []
    order = list(range(len(encoded)))
    random.Random(seed).shuffle(order)
    held_out = min(len(encoded) - 1, max(1, round(len(encoded) * eval_split)))
    eval_indices = set(order[:held_out])
    return (
        [item for i, item in enumerate(encoded) if i not in eval_indices],
        [item for i, item in enumerate(encoded) if i in eval_indices],
    )


@contextlib.contextmanager
def _removed_without_checkpoint(directory: Path):
    """Remove `directory` if this run created it and fails before saving a checkpoint in it, or
    diverged (resuming would diverge again): there is nothing to resume, and a leftover would
    only be clutter (e.g. an unknown model)."""
    existed = directory.exists()
    try:
        yield
    except BaseException as error:
        if (
            not existed
            and is_main_process()
            and (isinstance(error, TrainingDiverged) or not any(directory.glob("checkpoint-*")))
        ):
            shutil.rmtree(directory, ignore_errors=True)
        raise


def _quiet_libraries(quiet: bool) -> None:
    from transformers.utils import logging

    logging.set_verbosity_error() if quiet else logging.set_verbosity_warning()
    if quiet:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()


def _context_length(model) -> int:
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 1024)


def _kept_eval_loss(trainer, has_eval: bool) -> float | None:
    """The eval loss of the model kept: the best one under early stopping, else the last."""
    if not has_eval:
        return None
    if trainer.args.load_best_model_at_end:
        return trainer.state.best_metric
    losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    return losses[-1] if losses else None


def _loss_history(log_history: list[dict]) -> list[dict]:
    keys = ("step", "epoch", "loss", "eval_loss", "eval_perplexity", "learning_rate")
    return [
        {key: entry[key] for key in keys if key in entry}
        for entry in log_history
        if "loss" in entry or "eval_loss" in entry
    ]


def _sha256_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()
