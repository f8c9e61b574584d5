"""What mtnsails adds to transformers' `Trainer`: eval perplexity, checkpoints that are complete
or absent, a checkpoint after every evaluation, Ctrl-C that saves a checkpoint before stopping,
a stop when the loss diverges, and progress a person can read: one line per logging step (the
bar on a terminal, plain lines elsewhere; never raw log dicts).

The classes subclass transformers' own, so they are built on first use by `trainer_classes()`:
importing this module (and so `mtnsails.LLMTrainer`) must not import transformers.
"""

from __future__ import annotations

import datetime
import functools
import math
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from mtnsails.core.errors import MtnsailsError, first_line


def perplexity(loss: float | None) -> float | None:
    """exp(loss), capped so a diverged loss gives a large number rather than an overflow."""
    return None if loss is None else math.exp(min(loss, 50.0))


def progress_line(state, logs: dict, started: float, start_step: int) -> str | None:
    """One readable line for a Trainer log entry with a loss, e.g. "epoch 1.50/3, step 12/24:
    loss 2.3456, learning rate 4.2e-05, elapsed 0:00:12, ETA 0:00:12"; None for other entries
    (the final run summary)."""
    if "loss" in logs:
        measures = f"loss {logs['loss']:.4f}"
        if "learning_rate" in logs:
            measures += f", learning rate {logs['learning_rate']:.2g}"
    elif "eval_loss" in logs:
        measures = f"eval loss {logs['eval_loss']:.4f}"
        if logs.get("eval_perplexity") is not None:
            measures += f" (perplexity {logs['eval_perplexity']:.2f})"
    else:
        return None
    elapsed = time.monotonic() - started
    done = state.global_step - start_step
    remaining = elapsed / done * (state.max_steps - state.global_step) if done else None
    eta = _clock(remaining) if remaining is not None else "unknown"
    return (
        f"epoch {state.epoch or 0:.2f}/{state.num_train_epochs}, step {state.global_step}/"
        f"{state.max_steps}: {measures}, elapsed {_clock(elapsed)}, ETA {eta}"
    )


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def non_finite_problem(logs: dict, model=None) -> str | None:
    """What in a Trainer log entry or a model is NaN or infinite, e.g. "the loss became nan";
    None when everything is finite. (Trainer's own NaN filter is off: see the trainer.)"""
    for name in ("loss", "grad_norm", "eval_loss"):
        value = logs.get(name)
        if value is not None and not math.isfinite(value):
            return f"the {name.replace('_', ' ')} became {value}"
    if model is not None:
        import torch

        if not all(torch.isfinite(weight).all() for weight in model.parameters()):
            return "weights became NaN or infinite"
    return None


@functools.cache
def trainer_classes() -> SimpleNamespace:
    """The classes, by name: CheckedTrainer, SaveAfterEvaluate, Interrupt, StopOnNonFiniteLoss,
    ProgressLines, ProgressBar."""
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    class CheckedTrainer(Trainer):
        """Trainer with eval perplexity (exp of the eval loss) in every evaluation's log line and
        checkpoints that are complete or absent: a save that fails (disk full, a file-size
        limit, a read-only folder) removes what it wrote and raises MtnsailsError."""

        def log(self, logs: dict, *args, **kwargs) -> None:
            if "eval_loss" in logs:
                logs["eval_perplexity"] = perplexity(logs["eval_loss"])
            super().log(logs, *args, **kwargs)

        def _save_checkpoint(self, model, trial) -> None:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            existed = folder.exists()
            try:
                super()._save_checkpoint(model, trial)
            except Exception as error:  # torch, safetensors and the OS each raise their own
                if self.args.should_save and not existed:
                    shutil.rmtree(folder, ignore_errors=True)
                raise MtnsailsError(
                    f"cannot save a checkpoint in {folder}: {first_line(error)[:200]} "
                    "(is the disk full or the folder read-only?)"
                ) from None

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
            print("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to abort)", file=sys.stderr)

        def on_step_end(self, args, state, control, **kwargs):
            if self.requested:
                control.should_save = True
                control.should_training_stop = True

    class StopOnNonFiniteLoss(TrainerCallback):
        """Stop at the first logging step whose loss, gradient norm or weights are NaN or
        infinite, without saving: from then on every weight is garbage. `diverged` says where
        and what."""

        def __init__(self) -> None:
            self.diverged: tuple[int, str] | None = None  # (step, what became non-finite)

        def on_log(self, args, state, control, logs=None, model=None, **kwargs):
            if self.diverged is None:
                problem = non_finite_problem(logs or {}, model)
                if problem is not None:
                    self.diverged = (state.global_step, problem)
            if self.diverged is not None:
                control.should_training_stop = True
                control.should_save = False
                control.should_evaluate = False

    class ProgressLines(TrainerCallback):
        """Off a terminal (a log file, CI, a pipe): one `progress_line` per logging step on
        stderr, where the bar would have gone, and nothing else."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.started, self.start_step = time.monotonic(), state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            line = progress_line(state, logs or {}, self.started, self.start_step)
            if line and state.is_world_process_zero:
                print(line, file=sys.stderr, flush=True)

    class ProgressBar(ProgressCallback):
        """On a terminal: transformers' bar, with each log entry as a `progress_line` above it
        instead of a raw dict."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.started, self.start_step = time.monotonic(), state.global_step
            super().on_train_begin(args, state, control, **kwargs)

        def on_log(self, args, state, control, logs=None, **kwargs):
            line = progress_line(state, logs or {}, self.started, self.start_step)
            if line and state.is_world_process_zero and self.training_bar is not None:
                self.training_bar.write(line)

    return SimpleNamespace(
        CheckedTrainer=CheckedTrainer,
        SaveAfterEvaluate=SaveAfterEvaluate,
        Interrupt=Interrupt,
        StopOnNonFiniteLoss=StopOnNonFiniteLoss,
        ProgressLines=ProgressLines,
        ProgressBar=ProgressBar,
    )
