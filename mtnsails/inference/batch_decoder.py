"""Continuous batching: several sequences share every onnxruntime run of one exported model.

On a CPU a decoding step is bound by reading the weights, whatever the batch, so feeding one
token of each of N sequences through one run costs little more than one sequence alone: that is
where a server's throughput comes from. `BatchDecoder` keeps the KV caches of its sequences as
one batch, left-padded to the longest: each row's real positions are its last `length` columns
and its attention mask hides the padding, while its position ids count only its own tokens, so a
row computes what it would compute alone. Sequences join (`add`, `add_many`: the prompts run,
those of similar lengths in one run padded the same way, then their caches join the batch) and
leave (`remove`) between steps; between joins and leaves the caches stay inside onnxruntime
(each step's `present.*` is bound as the next step's past).

With a graph whose attention appends to its past buffer in place (the decoder's `shared_cache`,
see fused_attention), each cache tensor is one buffer with room for more rows and positions; the
batch's rows are its first ones, bound as both past and present: every step writes one column, at
the common width, for all rows at once, and nothing is copied. A join writes the new row's prompt
cache into the next free row, a leave moves the last row into the freed one, both in place (a
fresh buffer per join or leave would be allocated and faulted in each time). The batch is
narrowed to its longest sequence when a leave leaves more than NARROW_SLACK padding positions
(moving every row's columns left costs about what some tens of steps spend reading the padding).
Without `shared_cache`, each step's fresh present copies the whole batch's cache.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import onnxruntime as ort

from mtnsails.core.errors import MtnsailsError
from mtnsails.inference.generation import (
    OnnxDecoder,
    bind_shared_cache,
    finite_logits,
    grown_cache_buffers,
    grown_capacity,
)

NARROW_SLACK = 32  # padding positions a leave may leave in a shared cache before the batch is narrowed
PREFILL_PADDING = 1.25  # prompts share a run while its padded tokens are at most 1.25x their own
PREFILL_TOKENS = 2048  # tokens of one prompt run at most (padding included): its attention scores grow with the square


def prefill_groups(prompts: Sequence[tuple[Hashable, Sequence[int]]]) -> list[list[tuple[Hashable, Sequence[int]]]]:
    """`prompts` in runs of similar lengths: shortest first, a run grows while its padding stays
    within PREFILL_PADDING and its size within PREFILL_TOKENS (a prompt longer than that runs alone)."""
    groups: list[list] = []
    real = 0
    for prompt in sorted(prompts, key=lambda item: len(item[1])):
        length = len(prompt[1])  # the longest of its group so far: prompts come shortest first
        group = groups[-1] if groups else []
        rows = len(group) + 1
        if group and rows * length <= PREFILL_PADDING * (real + length) and rows * length <= PREFILL_TOKENS:
            group.append(prompt)
            real += length
        else:
            groups.append([prompt])
            real = length
    return groups


def _stack_right_aligned(old: np.ndarray, new: np.ndarray, axis: int) -> np.ndarray:
    """`old`'s rows then `new`'s, each right-aligned along `axis` and zero-padded on the left,
    written once into one new array (a join copies the cache once)."""
    width = max(old.shape[axis], new.shape[axis])
    shape = list(old.shape)
    shape[0], shape[axis] = old.shape[0] + new.shape[0], width
    out = np.zeros(shape, dtype=old.dtype)
    for rows, part in ((slice(0, old.shape[0]), old), (slice(old.shape[0], None), new)):
        index = [rows] + [slice(None)] * (old.ndim - 1)
        index[axis] = slice(width - part.shape[axis], None)
        out[tuple(index)] = part
    return out


class BatchDecoder:
    """The sequences being decoded together, each under a key of the caller's choice.

    >>> batch = BatchDecoder(OnnxDecoder("onnx_model/model.onnx"))
    >>> first = batch.add("a", [464, 2068])      # next-token logits of "a"'s prompt
    >>> second = batch.add("b", [7586])
    >>> logits = batch.step([318, 11])           # one token per sequence, in `batch.keys` order
    >>> batch.remove("a")                        # "b" carries on alone
    """

    def __init__(self, decoder: OnnxDecoder) -> None:
        """Decode with `decoder`'s onnxruntime session (its own batch-1 cache is left alone)."""
        if not decoder.uses_position_ids:
            raise MtnsailsError(
                "the model has no position_ids input: batched decoding needs it (export it with `mtnsails convert`)"
            )
        self.decoder = decoder
        self.session = decoder.session
        self.keys: list[Hashable] = []
        self.lengths = np.zeros(0, dtype=np.int64)  # tokens each sequence holds (prompt + new)
        self._mask = np.zeros((0, 0), dtype=np.int64)  # rows left-padded to the longest sequence
        empty = decoder.empty_cache[:0]  # no rows, no positions
        self._past: list = [empty] * len(decoder.past_names)  # without shared_cache: the batch's cache
        self.shared_cache = decoder.shared_cache
        self._buffers: list[np.ndarray] = []  # shared_cache: [row room, heads, position room, head_dim] each
        # shared_cache with a fixed vocabulary: [row room, 1, vocabulary], the rows' logits, bound once
        self._logits: np.ndarray | None = None
        self._binding = self.session.io_binding()

    @property
    def cache_capacity(self) -> int:
        """Positions the shared cache buffers hold before they grow (0 before the first join or
        without `shared_cache`)."""
        return self._buffers[0].shape[2] if self._buffers else 0

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def width(self) -> int:
        """Positions of the batch's cache: the longest sequence's length (with `shared_cache`, up
        to NARROW_SLACK more after a leave)."""
        return self._mask.shape[1]

    def add(self, key: Hashable, prompt_ids: Sequence[int]) -> np.ndarray:
        """Run `prompt_ids` alone, join the batch under `key`; return its next-token logits."""
        return self.add_many([(key, prompt_ids)])[0]

    def add_many(self, prompts: Sequence[tuple[Hashable, Sequence[int]]]) -> list[np.ndarray]:
        """Run several `(key, prompt_ids)` and join the batch with them, in that order; return
        their next-token logits. Prompts of similar lengths share one run (left-padded to the
        longest, see `prefill_groups`), so the weights are read once for them. Every run
        happens before any joins, so a run that fails (MtnsailsError: the model computes NaN
        for a prompt) leaves the batch as it was."""
        keys = [key for key, _ in prompts]
        for index, key in enumerate(keys):
            if key in self.keys or key in keys[:index]:
                raise ValueError(f"sequence {key!r} is already in the batch")
        if not all(len(prompt_ids) for _, prompt_ids in prompts):
            raise ValueError("a sequence needs at least one prompt token")
        prefilled = {key: result for group in prefill_groups(prompts) for key, result in self._prefill(group).items()}
        for key in keys:
            self._join(key, prefilled[key][1])
        return [prefilled[key][0] for key in keys]

    def _prefill(self, prompts: Sequence[tuple[Hashable, Sequence[int]]]) -> dict[Hashable, tuple[np.ndarray, list]]:
        """One run for `prompts`, each row left-padded to the longest (masked, its positions
        counted from its first token): each key's next-token logits and its own positions of the cache."""
        width = max(len(prompt_ids) for _, prompt_ids in prompts)
        ids, mask, positions = (np.zeros((len(prompts), width), dtype=np.int64) for _ in range(3))
        for row, (_, prompt_ids) in enumerate(prompts):
            start = width - len(prompt_ids)
            ids[row, start:], mask[row, start:] = prompt_ids, 1
            positions[row, start:] = np.arange(len(prompt_ids))
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        empty = np.zeros((len(prompts), *self.decoder.empty_cache.shape[1:]), dtype=self.decoder.empty_cache.dtype)
        feeds.update((name, empty) for name in self.decoder.past_names)
        logits, *present = self.session.run(["logits", *self.decoder.present_names], feeds)
        logits = finite_logits(logits[:, -1], self.decoder.model_file)
        return {
            key: (logits[row], [cache[row : row + 1, :, width - len(prompt_ids) :] for cache in present])
            for row, (key, prompt_ids) in enumerate(prompts)
        }

    def _join(self, key: Hashable, prompt_cache: list[np.ndarray]) -> None:
        """Add a sequence whose prompt ran (`prompt_cache`: its cache, one row) under `key`."""
        length = prompt_cache[0].shape[2]
        if self.shared_cache:
            self._join_shared(prompt_cache)
        else:
            self._past = [_stack_right_aligned(self._cached(old), new, 2) for old, new in zip(self._past, prompt_cache)]
        self._mask = _stack_right_aligned(self._mask, np.ones((1, length), dtype=np.int64), 1)
        self.keys.append(key)
        self.lengths = np.append(self.lengths, length)

    def remove(self, key: Hashable) -> None:
        """Drop `key`'s sequence; the batch narrows to its new longest sequence (with
        `shared_cache`: when that saves more than NARROW_SLACK positions, and the last row takes
        the freed row's place in `keys`)."""
        row = self.keys.index(key)
        if self.shared_cache:
            self._leave_shared(row)
            return
        del self.keys[row]
        keep = np.arange(len(self.lengths)) != row
        self.lengths = self.lengths[keep]
        start = self.width - (int(self.lengths.max()) if len(self.keys) else 0)
        self._past = [self._cached(past)[keep, :, start:] for past in self._past]
        self._mask = self._mask[keep, start:]  # one copy each, contiguous for onnxruntime

    def step(self, tokens: Sequence[int]) -> np.ndarray:
        """Feed one token per sequence (in `keys` order); return next-token logits, one row each.

        With `shared_cache` the rows may be a view of a buffer that the next step overwrites:
        copy what must outlive it."""
        if len(tokens) != len(self.keys):
            raise ValueError(f"step() takes one token per sequence: {len(self.keys)}, got {len(tokens)}")
        mask = np.concatenate([self._mask, np.ones((len(self.keys), 1), dtype=np.int64)], axis=1)
        if self.shared_cache and mask.shape[1] > self.cache_capacity:
            self._reserve(len(self.keys), mask.shape[1])
            self._bind_shared()
        binding = self._binding
        binding.bind_cpu_input("input_ids", np.asarray(tokens, dtype=np.int64)[:, None])
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_cpu_input("position_ids", self.lengths[:, None].copy())
        if self._logits is None:
            binding.bind_output("logits")
        if not self.shared_cache:
            for name, value in zip(self.decoder.past_names, self._past):
                if isinstance(value, np.ndarray):
                    binding.bind_cpu_input(name, value)
                else:  # the previous step's present.* stays inside onnxruntime
                    binding.bind_ortvalue_input(name, value)
            for name in self.decoder.present_names:
                binding.bind_output(name)
        self.session.run_with_iobinding(binding)
        self._mask = mask
        self.lengths = self.lengths + 1
        if self._logits is not None:
            return finite_logits(self._logits[: len(self.keys), 0], self.decoder.model_file)
        logits, *present = binding.get_outputs()
        if not self.shared_cache:
            self._past = present
        return finite_logits(logits.numpy()[:, -1], self.decoder.model_file)

    def _join_shared(self, present: list) -> None:
        """Write a prompt's cache (`present`, one row) into the next free row, right-aligned at
        the batch's width (the other rows move right first when the prompt is the longest)."""
        rows, width, length = len(self.keys), self.width, present[0].shape[2]
        wider = max(width, length)
        self._reserve(rows + 1, wider + 1)
        for buffer, new in zip(self._buffers, present):
            if wider > width and rows:
                buffer[:rows, :, wider - width : wider] = buffer[:rows, :, :width]
            buffer[rows, :, wider - length : wider] = new[0]
        self._bind_shared(rows + 1)

    def _leave_shared(self, row: int) -> None:
        """Drop `row`: the last row moves into its place; the batch narrows to its longest
        sequence when that leaves more than NARROW_SLACK padding positions (or no row)."""
        last, width = len(self.keys) - 1, self.width
        if row != last:
            for buffer in self._buffers:
                buffer[row, :, :width] = buffer[last, :, :width]
            self.keys[row], self.lengths[row], self._mask[row] = self.keys[last], self.lengths[last], self._mask[last]
        del self.keys[last]
        self.lengths, self._mask = self.lengths[:last], self._mask[:last]
        longest = int(self.lengths.max()) if last else 0
        if width - longest > (NARROW_SLACK if last else 0):
            for buffer in self._buffers:
                buffer[:last, :, :longest] = buffer[:last, :, width - longest : width]
            self._mask = self._mask[:, width - longest :]
        self._mask = np.ascontiguousarray(self._mask)
        if not last:  # an idle server holds no cache: the next join allocates what it needs
            self._buffers, self._logits = [], None
        self._bind_shared(last)

    def _reserve(self, rows: int, positions: int) -> None:
        """Make the shared cache buffers hold `rows` rows of `positions` positions: when they
        cannot, new ones (rows doubled only when the rows do not fit, positions grown as
        `grown_capacity` says) get the batch's cache, copied once."""
        row_room = self._buffers[0].shape[0] if self._buffers else 0
        capacity = self.cache_capacity
        if rows <= row_room and positions <= capacity:
            return
        if rows > row_room:
            row_room = max(rows, 2 * row_room)
        if positions > capacity:
            capacity = grown_capacity(capacity, positions)
        _, heads, _, head_dim = self.decoder.empty_cache.shape
        self._buffers = grown_cache_buffers(
            self.decoder, self._buffers, (row_room, heads, capacity, head_dim), len(self.keys), self.width
        )
        vocabulary = self.decoder.fixed_vocabulary
        if vocabulary and (self._logits is None or len(self._logits) != row_room):
            self._logits = np.empty((row_room, 1, vocabulary), dtype=self.decoder.logits_type)

    def _bind_shared(self, rows: int | None = None) -> None:
        """Bind the buffers' first `rows` rows (default: the batch's) as both past and present."""
        rows = len(self.keys) if rows is None else rows
        self._binding = self.session.io_binding()
        if self._logits is not None and rows:
            self._binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self._logits[:rows]))
        else:
            self._binding.bind_output("logits")  # bound first: get_outputs()[0] is always the logits
        if rows:  # no rows: nothing to bind until one joins
            bind_shared_cache(self._binding, self.decoder, [buffer[:rows] for buffer in self._buffers])

    @staticmethod
    def _cached(value) -> np.ndarray:
        """A cache tensor as numpy (a step leaves them as onnxruntime values)."""
        return value if isinstance(value, np.ndarray) else value.numpy()
