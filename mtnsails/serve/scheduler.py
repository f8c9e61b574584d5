"""The decoding loop of `serve`: one thread owns the model and decodes all requests in flight together.

Requests wait in a queue; between two decoding steps the loop admits waiting requests while the
batch has room (their prompts run once, those of similar lengths together in one run, then they
join the batch), drops requests whose client went away, and ends those that are done, so
sequences join and leave the batch at any step (continuous batching). Every step then feeds one
token per sequence through one onnxruntime run. Answers are decoded exactly as chat decodes them
(`TokenChooser`, `AnswerText`), so a greedy answer is the one chat gives.

Hot reload: when the model directory is replaced (its inode or its mtnsails.json changes) or
`reload()` is called, the loop admits no new request until the batch has emptied, then opens a
new `ChatEngine` and carries on with it (nothing of the old model is kept); requests keep
waiting meanwhile, none is dropped. A directory that fails to load leaves the old model serving
(a warning goes to stderr).
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mtnsails.core.errors import MtnsailsError
from mtnsails.inference.answer_text import AnswerText
from mtnsails.inference.batch_decoder import BatchDecoder
from mtnsails.inference.engine import ChatEngine
from mtnsails.inference.generation import TokenChooser
from mtnsails.inference.generation_config import GenerationConfig


class QueueFull(Exception):
    """Every batch slot and queue place is taken: the request is refused at once."""


@dataclass
class Completion:
    """How a request ended. `answer` is the text for the conversation log: like chat, it drops
    the sentence a token limit cut in half, while `text` is what the client got."""

    text: str
    answer: str
    finish_reason: str  # "stop" (EOS, the user marker or a stop text) or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass(eq=False)
class GenerationJob:
    """One request: its conversation, settings and where its text goes.

    `on_text(piece)` and `on_done(completion_or_error)` are called from the scheduler thread
    (then `BatchScheduler.on_round` once per round); `on_done` gets a `Completion`, or an
    `MtnsailsError` when the request cannot be answered.
    """

    question: str
    history: list[tuple[str, str]]
    system: str | None  # None: the model's own system prompt
    config: GenerationConfig
    stops: tuple[str, ...]
    on_text: Callable[[str], None]
    on_done: Callable[[Completion | MtnsailsError], None]
    cancelled: bool = False
    model: ChatEngine | None = None  # the model `prompt_ids` were built with
    prompt_ids: list[int] = field(default_factory=list)

    def cancel(self) -> None:
        """The client went away: free the slot at the next step (nothing more is delivered)."""
        self.cancelled = True


@dataclass(eq=False)
class _Sequence:
    job: GenerationJob
    chooser: TokenChooser
    answer: AnswerText
    generated: int = 0
    last_token: int = -1


class BatchScheduler:
    """Decode `GenerationJob`s together on the model (a `ChatEngine`) `open_model()` returns.

    >>> scheduler = BatchScheduler(lambda: ChatEngine("onnx_model"), max_batch=8)  # doctest: +SKIP
    >>> scheduler.start(); job = scheduler.prepare(...); scheduler.submit(job)
    """

    def __init__(self, open_model: Callable[[], ChatEngine], max_batch: int = 8, max_queue: int = 32) -> None:
        """`max_batch` requests are decoded together at most, `max_queue` more may wait."""
        if max_batch < 1:
            raise MtnsailsError(f"max_batch = {max_batch} must be at least 1")
        if max_queue < 0:
            raise MtnsailsError(f"max_queue = {max_queue} must be 0 or more")
        self.open_model = open_model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.model = open_model()
        self._batch = BatchDecoder(self.model.decoder)
        self._signature = self._directory_signature()
        self._waiting: deque[GenerationJob] = deque()
        self._active: dict[int, _Sequence] = {}
        self._condition = threading.Condition()
        self._reload_requested = False
        self._stopping = False
        self.served = 0  # requests answered
        self.cancelled = 0  # requests dropped because their client went away
        # Called from the decoding thread after each round (admissions, then one decoding step)
        # once the round's on_text/on_done calls are made: a server can hand all of a round's
        # text to its event loop in one wake-up instead of one per token (see ChatServer).
        self.on_round: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name="batch-scheduler", daemon=True)

    # -- called from other threads -----------------------------------------------------------

    def start(self) -> None:
        """Start the decoding thread."""
        self._thread.start()

    def prepare(self, job: GenerationJob) -> GenerationJob:
        """Build the job's prompt with the current model (MtnsailsError when it cannot fit)."""
        model = self.model
        if job.config.max_new_tokens is None:  # neither the request nor the server set a limit
            job.config = replace(job.config, max_new_tokens=model.generation.max_new_tokens)
        prompt = model.prompt(job.question, job.history, job.config.max_new_tokens, system=job.system).ids
        if len(prompt) + job.config.max_new_tokens > model.context_length:
            raise MtnsailsError(
                f"the prompt ({len(prompt)} tokens) and max_tokens "
                f"({job.config.max_new_tokens}) exceed the model's context of "
                f"{model.context_length} tokens"
            )
        job.model, job.prompt_ids = model, prompt
        return job

    def submit(self, job: GenerationJob) -> None:
        """Queue a prepared job; raise QueueFull when the batch and the queue are full."""
        with self._condition:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._active) + len(self._waiting) >= self.max_batch + self.max_queue:
                raise QueueFull(
                    f"the server is busy: {self.max_batch} requests in the batch and {self.max_queue} waiting"
                )
            self._waiting.append(job)
            self._condition.notify_all()

    def reload(self) -> None:
        """Load the model directory again once the requests in the batch are done."""
        with self._condition:
            self._reload_requested = True
            self._condition.notify_all()

    def load(self) -> dict:
        """Requests in the batch and waiting, and counts so far (for /health)."""
        with self._condition:
            return {
                "active": len(self._active),
                "waiting": len(self._waiting),
                "served": self.served,
                "cancelled": self.cancelled,
            }

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new jobs, end those in flight with an error, and wait for the thread."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the decoding thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._condition:
                while not (self._stopping or self._waiting or self._active):
                    self._condition.wait()
                if self._stopping:
                    break
                if self._waiting and not self._reload_requested and self._replaced():
                    self._reload_requested = True
                admitted = []
                while (
                    not self._reload_requested and self._waiting and len(self._active) + len(admitted) < self.max_batch
                ):
                    admitted.append(self._waiting.popleft())
                reload_now = self._reload_requested and not self._active
            if reload_now:
                self._reload()
            self._admit(admitted)
            self._drop_cancelled()
            if self._active:
                self._step()
            self._end_round()
        failure = MtnsailsError("the server is shutting down")
        for job in [*self._waiting, *(sequence.job for sequence in self._active.values())]:
            if not job.cancelled:
                job.on_done(failure)
        self._end_round()

    def _end_round(self) -> None:
        if self.on_round is not None:
            self.on_round()

    def _admit(self, jobs: list[GenerationJob]) -> None:
        """Join the batch with `jobs` (their prompts run together where their lengths allow)."""
        sequences = []
        for job in jobs:
            if job.cancelled:
                self._count_cancelled()
                continue
            try:
                if job.model is not self.model:  # prepared before a reload: rebuild with the new model
                    self.prepare(job)
            except MtnsailsError as error:
                job.on_done(error)
                continue
            rng = np.random.default_rng(job.config.seed)
            sequences.append(
                _Sequence(
                    job,
                    TokenChooser(job.config, job.prompt_ids, rng),
                    self.model.answer_text(job.stops),
                )
            )
        if not sequences:
            return
        with self._condition:
            self._active.update((id(sequence), sequence) for sequence in sequences)
        try:
            rows = self._batch.add_many([(id(sequence), sequence.job.prompt_ids) for sequence in sequences])
        except MtnsailsError as error:  # the model computes NaN for a prompt: those requests fail
            self._fail([id(sequence) for sequence in sequences], error)
            return
        for sequence, logits in zip(sequences, rows, strict=True):  # one row per prompt
            self._advance(id(sequence), logits)

    def _fail(self, keys: list[int], error: MtnsailsError) -> None:
        """End the sequences `keys` (in the batch or not yet) with `error`."""
        for key in keys:
            if key in self._batch.keys:
                self._batch.remove(key)
            with self._condition:
                sequence = self._active.pop(key)
            sequence.job.on_done(error)

    def _step(self) -> None:
        keys = list(self._batch.keys)
        try:
            rows = self._batch.step([self._active[key].last_token for key in keys])
        except MtnsailsError as error:  # the model computes NaN at a position: the batch cannot go on
            self._fail(keys, error)
            return
        for key, logits in zip(keys, rows, strict=True):  # one row per sequence
            self._advance(key, logits)

    def _advance(self, key: int, logits: np.ndarray) -> None:
        """Choose the sequence's next token; deliver its text, or end it."""
        sequence = self._active[key]
        token = sequence.chooser.choose(logits)
        sequence.generated += 1
        sequence.last_token = token
        piece = sequence.answer.add(token)
        if piece:
            sequence.job.on_text(piece)
        length = len(sequence.job.prompt_ids) + sequence.generated
        if (
            sequence.answer.stop_reason
            or sequence.generated >= sequence.job.config.max_new_tokens
            or length >= self.model.context_length
        ):
            self._finish(key)

    def _finish(self, key: int) -> None:
        sequence = self._remove(key)
        answer = sequence.answer
        cut = answer.stop_reason is None  # the token limit or the context ended it
        completion = Completion(
            answer.finish(),
            answer.finish(trim=cut),
            "length" if cut else "stop",
            len(sequence.job.prompt_ids),
            sequence.generated,
        )
        with self._condition:
            self.served += 1
        sequence.job.on_done(completion)

    def _drop_cancelled(self) -> None:
        for key in [key for key, sequence in self._active.items() if sequence.job.cancelled]:
            self._remove(key)
            self._count_cancelled()

    def _count_cancelled(self) -> None:
        with self._condition:
            self.cancelled += 1

    def _remove(self, key: int) -> _Sequence:
        self._batch.remove(key)
        with self._condition:
            return self._active.pop(key)

    # -- hot reload --------------------------------------------------------------------------

    def _directory_signature(self) -> tuple | None:
        """What changes when the model directory is replaced or rewritten (None: unreadable now)."""
        try:
            directory = os.stat(self.model.path)
        except OSError:
            return None
        try:
            meta = os.stat(Path(self.model.path) / "mtnsails.json")
        except FileNotFoundError:  # a plain optimum export: only a replaced directory shows
            return directory.st_ino, None
        except OSError:
            return None
        return directory.st_ino, meta.st_ino, meta.st_mtime_ns

    def _replaced(self) -> bool:
        signature = self._directory_signature()
        # None: the directory is being swapped right now; look again with the next request.
        return signature is not None and signature != self._signature

    def _reload(self) -> None:
        with self._condition:
            self._reload_requested = False
        self._signature = self._directory_signature()  # a directory that fails is not retried until it changes
        try:
            model = self.open_model()
        except MtnsailsError as error:
            print(
                f"warning: model reload failed, still serving the previous model: {error}", file=sys.stderr, flush=True
            )
            return
        self.model, self._batch = model, BatchDecoder(model.decoder)
        print(f"reloaded the model from {model.path} ({model.precision})", file=sys.stderr, flush=True)
