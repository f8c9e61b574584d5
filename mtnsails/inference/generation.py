"""Token generation with an ONNX causal LM: onnxruntime + numpy only (no torch, no transformers).

`OnnxDecoder` runs a model exported with optimum's `text-generation-with-past` task: the prompt
goes through once, then every step feeds one new token plus the KV cache of all earlier ones.
The cache never leaves onnxruntime: each step's `present.*` outputs are bound as the next step's
`past_key_values.*` inputs through IO binding, so no per-step numpy copy or concatenation of the
cache happens in Python. A graph whose attention writes the new key and value into its past
buffer (`shared_cache`, see fused_attention) gets one preallocated buffer per cache tensor, bound
as both past and present: a step then copies nothing, however long the history.
`generate_tokens` applies the logits processors in the order transformers' `generate` does, so
greedy output matches PyTorch token for token.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import onnxruntime as ort

from mtnsails.core.cpu import physical_cores
from mtnsails.core.errors import MtnsailsError, first_line
from mtnsails.inference.generation_config import GenerationConfig, setting_label
from mtnsails.model_dir.answer_lengths import DEFAULT_MAX_NEW_TOKENS

PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."
CACHE_GROWTH = 256  # positions a shared cache buffer gains beyond what it must hold when it grows


def session_options(threads: int | None = None, optimize: bool = True, spin: bool = True) -> ort.SessionOptions:
    """CPU settings for batch-1 decoding: all graph optimisations (none for a graph stored already
    optimised, `optimize=False`), one op at a time, one thread per core. `spin=False`: idle
    onnxruntime threads sleep instead of spinning, leaving the cores to Python threads between
    runs (a server's event loop; spinning halved `serve`'s throughput on 2 shared cores)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None and threads < 1:
        raise MtnsailsError(f"{setting_label('threads')} = {threads} must be at least 1")
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # onnxruntime warnings about unused initializers are noise here
    # Packing the weights into the kernels' layouts is most of a stored graph's load time: do it
    # on all threads.
    options.add_session_config_entry("session.prepack.enable_parallel", "1")
    return options


class OnnxDecoder:
    """One ONNX causal LM session holding the KV cache of the sequence decoded so far.

    >>> decoder = OnnxDecoder("onnx_model/model.onnx")
    >>> logits = decoder.forward([464, 2068])   # the prompt, once
    >>> logits = decoder.forward([7586])        # then one token per step, reusing the cache
    """

    def __init__(
        self,
        model_file: str | os.PathLike,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        optimized: bool = False,
        shared_cache: bool = False,
        spin: bool = True,
    ) -> None:
        """Load `model_file` into onnxruntime (`threads`: intra-op threads, default one per physical
        core; `optimized`: the file is a graph onnxruntime already optimised, see optimized_graph;
        `shared_cache`: its attention appends to the past buffer in place, see fused_attention;
        `spin`: see session_options)."""
        options = session_options(threads, optimize=not optimized, spin=spin)
        self.model_file = model_file
        try:
            self.session = ort.InferenceSession(str(model_file), options, providers=list(providers))
        except Exception as error:  # onnxruntime raises its own classes for corrupt files
            reason = first_line(error)
            raise MtnsailsError(
                f"{model_file} cannot be loaded by onnxruntime (corrupt or not an ONNX model): {reason[:200]}"
            ) from None
        inputs = {value.name: value for value in self.session.get_inputs()}
        self.past_names = [name for name in inputs if name.startswith(PAST_PREFIX)]
        if "input_ids" not in inputs or not self.past_names:
            raise MtnsailsError(
                f"{model_file} has no KV-cache inputs (past_key_values.*): export it with `mtnsails convert`"
            )
        self.present_names = [PRESENT_PREFIX + name[len(PAST_PREFIX) :] for name in self.past_names]
        _, heads, _, head_dim = inputs[self.past_names[0]].shape
        cache_type = np.float16 if "float16" in inputs[self.past_names[0]].type else np.float32
        self.empty_cache = np.zeros((1, heads, 0, head_dim), dtype=cache_type)
        self.uses_position_ids = "position_ids" in inputs
        self.shared_cache = shared_cache
        self._buffers: list[np.ndarray] = []  # shared_cache: [1, heads, capacity, head_dim] each
        self._binding = self.session.io_binding()
        logits = next(value for value in self.session.get_outputs() if value.name == "logits")
        self.logits_type = np.float16 if "float16" in logits.type else np.float32
        # A graph from `convert` returns the last position only, over a vocabulary of fixed size:
        # with shared_cache, its logits go to one buffer bound once, read after each step without
        # asking onnxruntime for its 13 outputs each step (BatchDecoder does the same).
        self.fixed_vocabulary = logits.shape[2] if logits.shape[1] == 1 and isinstance(logits.shape[2], int) else None
        self._logits = None  # shared_cache: the one buffer the logits are written into
        if shared_cache and self.fixed_vocabulary:
            self._logits = np.empty((1, 1, self.fixed_vocabulary), dtype=self.logits_type)
            self._binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self._logits))
        else:
            self._binding.bind_output("logits")  # bound first: get_outputs()[0] is always the logits
        self._mask = np.ones((1, 0), dtype=np.int64)
        self._positions = np.zeros((1, 0), dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget the cached sequence (the next `forward` starts a new one)."""
        self._past: list = [self.empty_cache] * len(self.past_names)
        self.past_length = 0  # a shared buffer's positions from here on are stale and never read

    @property
    def cache_capacity(self) -> int:
        """Positions the shared cache buffers hold before they grow (0 before the first step or
        without `shared_cache`)."""
        return self._buffers[0].shape[2] if self._buffers else 0

    def _reserve(self, total: int) -> None:
        """Make the shared cache buffers hold `total` positions (grown geometrically, the cached
        positions copied once) and bind each as both past and present."""
        capacity = self.cache_capacity
        if total <= capacity:
            return
        _, heads, _, head_dim = self.empty_cache.shape
        shape = (1, heads, grown_capacity(capacity, total), head_dim)
        self._buffers = grown_cache_buffers(self, self._buffers, shape, 1, self.past_length)
        bind_shared_cache(self._binding, self, self._buffers)

    def forward(self, token_ids: Sequence[int]) -> np.ndarray:
        """Feed `token_ids` after the cached sequence; return logits, shape (positions, vocab).

        A graph from `mtnsails convert` returns the last position only; a plain optimum export
        returns every position fed. Either way row -1 is the next-token distribution.
        """
        total = self.past_length + len(token_ids)
        if self._mask.shape[1] < total:  # growing buffers of ones and positions, sliced per step
            self._mask = np.ones((1, max(total, 2 * self._mask.shape[1])), dtype=np.int64)
            self._positions = np.arange(self._mask.shape[1], dtype=np.int64)[None]
        binding = self._binding
        binding.bind_cpu_input("input_ids", np.asarray([token_ids], dtype=np.int64))
        binding.bind_cpu_input("attention_mask", self._mask[:, :total])
        if self.uses_position_ids:
            binding.bind_cpu_input("position_ids", self._positions[:, self.past_length : total])
        if self._logits is None:
            binding.bind_output("logits")
        if self.shared_cache:
            self._reserve(total)
        else:
            for name, value in zip(self.past_names, self._past):
                if isinstance(value, np.ndarray):
                    binding.bind_cpu_input(name, value)
                else:  # the previous step's present.* stays inside onnxruntime
                    binding.bind_ortvalue_input(name, value)
            for name in self.present_names:
                binding.bind_output(name)
        self.session.run_with_iobinding(binding)
        self.past_length = total
        if self._logits is not None:  # copied: the buffer is written again by the next step
            return finite_logits(self._logits[0].copy(), self.model_file)
        logits, *present = binding.get_outputs()
        if not self.shared_cache:
            self._past = present
        return finite_logits(logits.numpy()[0], self.model_file)


def grown_capacity(capacity: int, needed: int) -> int:
    """Positions a shared cache buffer of `capacity` holds once grown to hold `needed`: doubled
    (each growth copies the cache, so growing geometrically copies it a few times at most) and
    never less than `needed` plus CACHE_GROWTH."""
    return max(2 * capacity, needed + CACHE_GROWTH)


def grown_cache_buffers(decoder: OnnxDecoder, buffers: list, shape: tuple, rows: int, positions: int) -> list:
    """New zeroed cache buffers of `shape`, one per cache tensor of `decoder`, holding the first
    `rows` rows and `positions` positions of `buffers` (the old ones; none before the first)."""
    grown = []
    for index in range(len(decoder.past_names)):
        buffer = np.zeros(shape, dtype=decoder.empty_cache.dtype)
        if buffers:
            buffer[:rows, :, :positions] = buffers[index][:rows, :, :positions]
        grown.append(buffer)
    return grown


def bind_shared_cache(binding: ort.IOBinding, decoder: OnnxDecoder, buffers: list) -> None:
    """Bind each cache buffer as both the past input and the present output of its tensor:
    the fused attention writes the new positions into it in place."""
    for past, present, buffer in zip(decoder.past_names, decoder.present_names, buffers):
        value = ort.OrtValue.ortvalue_from_numpy(buffer)  # onnxruntime writes into `buffer` itself
        binding.bind_ortvalue_input(past, value)
        binding.bind_ortvalue_output(present, value)


def finite_logits(logits: np.ndarray, model_file: object) -> np.ndarray:
    """`logits` (one row, or one per sequence), refused when any is NaN or +infinity, or a row
    has no finite one: weights broken by a diverged training run (sampling would fail on them
    with a numpy error instead of saying why). -infinity, a token that can never be chosen, is a
    logit like any other. Checked by each row's maximum (NaN wins it), cheaper than a flag per
    logit."""
    if not np.isfinite(logits.max(axis=-1)).all():
        raise MtnsailsError(
            f"{model_file}: the model computes non-finite logits (NaN or "
            "infinity), so its weights are broken: retrain it"
        )
    return logits


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL's penalty as transformers applies it: divide positive, multiply negative logits of
    the `seen` token ids (those in the context; a repeated id is penalised once all the same).
    Returns the `seen` logits as they were, to put back with `logits[seen] = returned`."""
    scores = logits[seen]
    if penalty != 1.0 and len(seen):
        logits[seen] = np.where(scores < 0, scores * penalty, scores / penalty)
    return scores


class RepeatedNgrams:
    """The n-grams of a growing context, indexed by their first size-1 tokens, to ban repeats.

    Each token adds one n-gram (`append`), so a step costs the same however long the context is.
    """

    def __init__(self, size: int, context: Sequence[int] = ()) -> None:
        self.size = size
        self.context: list[int] = []
        self.next_tokens: dict[tuple[int, ...], set[int]] = {}  # prefix -> tokens that followed it
        for token in context:
            self.append(token)

    def append(self, token: int) -> None:
        """Extend the context by `token`, recording the n-gram it completes."""
        self.context.append(token)
        if len(self.context) >= self.size:
            prefix = tuple(self.context[len(self.context) - self.size : -1])
            self.next_tokens.setdefault(prefix, set()).add(token)

    def ban(self, logits: np.ndarray) -> tuple[list[int], np.ndarray]:
        """Forbid every token that would complete an n-gram already in the context; return their
        ids and their logits as they were (to put back with `logits[ids] = returned`)."""
        banned = (
            list(self.next_tokens.get(tuple(self.context[len(self.context) - self.size + 1 :]), ()))
            if len(self.context) >= self.size
            else []
        )
        scores = logits[banned]
        if banned:
            logits[banned] = -np.inf
        return banned, scores


NUCLEUS_PROBE = 256  # top-p first looks for the nucleus among this many likeliest tokens
TOP_STRIDE = 16  # top_ids bounds the k largest values by the k largest of every 16th one


def top_ids(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` largest `values`, largest first (equal values: the lowest index first).

    np.argpartition slows down many times over when most values are equal, as the logits of ids
    a model never produces are. Here the k-th largest of every 16th value bounds the k-th
    largest from below, and only the values above the bound (a few hundred) are sorted: tens of
    microseconds, tied or not.
    """
    strided = values[::TOP_STRIDE]
    if k >= values.size or strided.size < k:
        return np.argsort(-values, kind="stable")[:k]
    bound = np.sort(strided)[-k]
    ids = np.flatnonzero(values > bound)
    if ids.size < k:  # at least k values reach the bound, so the k-th largest is the bound itself
        ids = np.concatenate([ids, np.flatnonzero(values == bound)[: k - ids.size]])
    return ids[np.argsort(-values[ids], kind="stable")[:k]]


def sample(logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator) -> int:
    """Temperature, then top-k, then top-p (transformers' warper order), then draw one token.

    Sorting the whole vocabulary costs about as much as an int8 decoding step, so
    only the top-k candidates are sorted, and without top-k the nucleus is looked for among the
    256 likeliest tokens first (exact: the full sort runs only when they hold less than top-p).
    Every pass over the vocabulary costs tens of microseconds (it does not stay in the cache),
    so the candidates come out of `top_ids` in the order top-p needs.
    """
    top_k = 0 < config.top_k < logits.size
    if top_k:
        candidates = top_ids(logits, config.top_k)  # likeliest first
        scores = logits[candidates].astype(np.float64)
    else:
        candidates, scores = np.arange(logits.size), logits.astype(np.float64)
    scores /= config.temperature
    scores -= scores.max()
    probabilities = np.exp(scores, out=scores)  # unnormalised: the draw scales by their sum
    if config.top_p < 1.0:
        nucleus = config.top_p * probabilities.sum()
        if not top_k:  # the whole vocabulary: order the likeliest first
            probe = top_ids(probabilities, NUCLEUS_PROBE)
            order = probe if probabilities[probe].sum() >= nucleus else np.argsort(-probabilities, kind="stable")
            candidates, probabilities = candidates[order], probabilities[order]
        cumulative = np.cumsum(probabilities)
        cdf = cumulative[: int(np.searchsorted(cumulative, nucleus)) + 1]
    else:
        cdf = np.cumsum(probabilities)
    # Generator.choice(len(p), p=p)'s own draw, without its checks of `p` (tens of microseconds,
    # as long as the rest of sampling): one uniform number against the cumulative distribution.
    return int(candidates[min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1)])


class TokenChooser:
    """Picks the next tokens of one sequence: the logits processors over its context, then the
    most likely token or a sample. `generate_tokens` and `BatchDecoder` users keep one per sequence.

    The context's seen tokens and n-grams are kept incrementally (nothing when the setting is off),
    so a step costs the same however long the sequence is.
    """

    def __init__(
        self, config: GenerationConfig, prompt_ids: Sequence[int], rng: np.random.Generator | None = None
    ) -> None:
        self.config = config
        self.rng = rng or np.random.default_rng(config.seed)
        self.penalise = config.repetition_penalty != 1.0
        self.seen = set(prompt_ids) if self.penalise else set()
        self.seen_ids = np.fromiter(self.seen, dtype=np.int64, count=len(self.seen))
        self.ngrams = RepeatedNgrams(config.no_repeat_ngram_size, prompt_ids) if config.no_repeat_ngram_size else None

    def choose(self, logits: np.ndarray) -> int:
        """The next token given the model's next-token `logits`; it joins the context.

        The penalty and the n-gram ban change `logits` (which must be writable) in place and are
        undone before this returns (a copy of the vocabulary's logits would cost more than the
        rest of a choice).
        """
        penalty = self.config.repetition_penalty
        penalised = apply_repetition_penalty(logits, self.seen_ids, penalty) if self.penalise else None
        banned, banned_scores = self.ngrams.ban(logits) if self.ngrams is not None else ([], None)
        try:
            token = int(np.argmax(logits)) if self.config.greedy else sample(logits, self.config, self.rng)
        finally:
            if banned:  # put back in the opposite order: a banned id may have been penalised too
                logits[banned] = banned_scores
            if penalised is not None:
                logits[self.seen_ids] = penalised
        if self.penalise and token not in self.seen:
            self.seen.add(token)
            self.seen_ids = np.append(self.seen_ids, token)
        if self.ngrams is not None:
            self.ngrams.append(token)
        return token


def generate_tokens(
    decoder: OnnxDecoder,
    prompt_ids: Sequence[int],
    config: GenerationConfig,
    rng: np.random.Generator | None = None,
    eos_token_id: int | None = None,
    context_length: int | None = None,
) -> Iterator[int]:
    """Yield new token ids one by one (EOS included, then stop) up to `config.max_new_tokens`.

    The prompt is processed once; each later step feeds only the token just chosen. The next
    step runs only when the caller asks for the next token, so stopping early costs nothing.
    """
    chooser = TokenChooser(config, prompt_ids, rng)
    decoder.reset()
    length = len(prompt_ids)
    limit = config.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    logits = decoder.forward(list(prompt_ids))[-1]
    for index in range(limit):
        token = chooser.choose(logits)
        yield token
        length += 1
        if token == eos_token_id or index + 1 == limit:
            return
        if context_length is not None and length >= context_length:
            return
        logits = decoder.forward([token])[-1]
