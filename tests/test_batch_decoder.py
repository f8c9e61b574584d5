"""BatchDecoder: sequences decoded together compute what each computes alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_CONVERSATIONS

from mtnsails.inference import batch_decoder, generation
from mtnsails.inference.batch_decoder import BatchDecoder
from mtnsails.inference.chat import ChatInterface
from mtnsails.inference.generation import OnnxDecoder, TokenChooser, generate_tokens
from mtnsails.inference.generation_config import GenerationConfig

GREEDY = GenerationConfig(max_new_tokens=12, temperature=0)


@pytest.fixture(scope="module")
def chat(tiny_onnx_dir):
    return ChatInterface(tiny_onnx_dir, precision="fp32")


def prompts(chat: ChatInterface) -> list[list[int]]:
    """Prompts of different lengths: trained questions, a two-turn one and an unknown one."""
    questions = [conversation["input"] for conversation in TINY_CONVERSATIONS[:5]]
    return [chat.prompt_ids(question) for question in questions] + [
        chat.prompt_ids("And what is its largest river?", [("Which country is Paris in?", "Paris is in France.")]),
        chat.prompt_ids("Tell me a long story about a spider who wanted to make honey like the bees"),
    ]


def decode_together(
    batch: BatchDecoder, prompts: list[list[int]], joining: int, add_many: bool = False
) -> dict[int, list]:
    """Greedy-decode every prompt in `batch`: `joining` new sequences join every other step (with
    `add_many`: in one call, their prompts sharing runs) and each leaves after
    GREEDY.max_new_tokens; return each sequence's (token, logits) pairs."""
    waiting = list(range(len(prompts)))
    choosers: dict[int, TokenChooser] = {}
    out: dict[int, list] = {index: [] for index in waiting}
    step = 0
    while waiting or len(batch):
        if step % 2 == 0:
            joiners = waiting[:joining]
            rows = (
                batch.add_many([(index, prompts[index]) for index in joiners])
                if add_many
                else [batch.add(index, prompts[index]) for index in joiners]
            )
            for index, logits in zip(joiners, rows):
                choosers[index] = TokenChooser(GREEDY, prompts[index])
                out[index].append((choosers[index].choose(logits), logits.copy()))
            del waiting[:joining]
        for key in [key for key in batch.keys if len(out[key]) == GREEDY.max_new_tokens]:
            batch.remove(key)
            padding = batch.width - max(batch.lengths, default=0)  # narrowed to the longest left
            assert padding == 0 or (batch.shared_cache and padding <= batch_decoder.NARROW_SLACK)
        if len(batch):
            rows = batch.step([out[key][-1][0] for key in batch.keys])
            for key, logits in zip(batch.keys, rows):  # a view of the step's buffer: kept as a copy
                out[key].append((choosers[key].choose(logits), logits.copy()))
        step += 1
    return out


@pytest.mark.parametrize("joining, add_many", [(1, False), (3, False), (3, True)])
def test_batched_greedy_decoding_equals_decoding_alone(chat, joining, add_many):
    alone = [list(generate_tokens(chat.decoder, ids, GREEDY)) for ids in prompts(chat)]
    batch = BatchDecoder(OnnxDecoder(chat.model_file))  # a fresh present.* every step
    together = decode_together(batch, prompts(chat), joining, add_many)
    assert len(batch) == 0 and batch.width == 0
    for index, tokens in enumerate(alone):
        assert [token for token, _ in together[index]] == tokens
    # The logits themselves agree (padding and the other rows change nothing but rounding).
    reference = OnnxDecoder(chat.model_file)
    ids = prompts(chat)[-1]
    expected = [reference.forward(ids)[-1]] + [reference.forward([token])[-1] for token in alone[-1][:-1]]
    np.testing.assert_allclose(
        np.stack([logits for _, logits in together[len(alone) - 1]]), np.stack(expected), atol=1e-4
    )


def test_prompts_of_similar_lengths_share_a_run_with_bounded_padding(chat, monkeypatch):
    groups = batch_decoder.prefill_groups([("a", [1] * 20), ("b", [1] * 8), ("c", [1] * 21), ("d", [1] * 24)])
    assert [[key for key, _ in group] for group in groups] == [["b"], ["a", "c", "d"]]  # 8 would pad 3x
    assert all(
        len(group) * max(len(ids) for _, ids in group)
        <= batch_decoder.PREFILL_PADDING * sum(len(ids) for _, ids in group)
        for group in groups
    )
    monkeypatch.setattr(batch_decoder, "PREFILL_TOKENS", 48)  # two 24-token prompts fill a run
    assert [len(group) for group in batch_decoder.prefill_groups([(key, [1] * 24) for key in "abc"])] == [2, 1]
    # Left-padded in one run, each prompt's logits and cache are its own.
    ids = prompts(chat)
    assert (
        len({len(prompt) for prompt in ids[:3]}) > 1
        and len(batch_decoder.prefill_groups(list(enumerate(ids[:3])))) == 1
    )
    batch = BatchDecoder(chat.decoder)
    together = batch.add_many(list(enumerate(ids[:3])))
    for index, prompt in enumerate(ids[:3]):
        reference = OnnxDecoder(chat.model_file)
        np.testing.assert_allclose(together[index], reference.forward(prompt)[-1], atol=1e-4)
    assert batch.keys == [0, 1, 2]  # joined in the order given, whatever runs their prompts shared
    step = batch.step([5 + key for key in batch.keys])
    for index, prompt in enumerate(ids[:3]):
        reference = OnnxDecoder(chat.model_file)
        reference.forward(prompt)
        np.testing.assert_allclose(step[batch.keys.index(index)], reference.forward([5 + index])[-1], atol=1e-4)


@pytest.mark.parametrize("slack", [0, 4])
def test_shared_cache_rows_join_leave_and_grow_as_decoded_alone(chat, tiny_onnx_dir, monkeypatch, slack):
    assert json.loads((tiny_onnx_dir / "mtnsails.json").read_text())["kv_cache"] == "shared"
    # Lengths whose joins and leaves make the buffers grow more than once and a leave keep padding
    # (a short trained question last, after the long two-turn prompt).
    ordered = [*prompts(chat)[:-1], chat.prompt_ids("What do bees make?")]
    alone = [list(generate_tokens(chat.decoder, ids, GREEDY)) for ids in ordered]
    # No spare room: the buffers grow (and are copied) whenever the common width outruns them.
    monkeypatch.setattr(generation, "CACHE_GROWTH", 0)
    monkeypatch.setattr(batch_decoder, "NARROW_SLACK", slack)  # 0: every leave narrows the batch
    capacities, paddings = set(), set()

    class Recording(BatchDecoder):
        def step(self, tokens):
            logits = super().step(tokens)
            capacities.add(self.cache_capacity)
            paddings.add(self.width - max(self.lengths))
            return logits

    batch = Recording(OnnxDecoder(chat.model_file, shared_cache=True))
    together = decode_together(batch, ordered, joining=2)
    assert len(batch) == 0 and batch.width == 0
    assert len(capacities) > 2  # it grew past its first room more than once
    assert max(paddings) == 0 if slack == 0 else 0 < max(paddings) <= slack  # leaves kept some padding
    for index, tokens in enumerate(alone):
        assert [token for token, _ in together[index]] == tokens


def test_shared_cache_reserves_rows_only_for_rows_and_frees_them_when_idle(chat, monkeypatch):
    monkeypatch.setattr(generation, "CACHE_GROWTH", 0)  # every few steps the positions outgrow the buffers
    batch = BatchDecoder(OnnxDecoder(chat.model_file, shared_cache=True))
    ids = prompts(chat)[0]
    batch.add("alone", ids)
    capacities = set()
    for _ in range(3 * len(ids)):
        batch.step([ids[-1]])
        capacities.add(batch.cache_capacity)
        assert batch._buffers[0].shape[0] == 1  # one sequence: positions grew, rows did not
    assert len(capacities) > 1
    batch.remove("alone")
    assert batch.cache_capacity == 0  # nothing held while no one is served
    first = batch.add("next", ids)  # and the next request starts afresh
    np.testing.assert_allclose(first, OnnxDecoder(chat.model_file).forward(ids)[-1], atol=1e-4)


def test_misuse_is_refused(chat):
    batch = BatchDecoder(chat.decoder)
    batch.add("a", prompts(chat)[0])
    with pytest.raises(ValueError, match="already in the batch"):
        batch.add("a", prompts(chat)[1])
    with pytest.raises(ValueError, match="one token per sequence"):
        batch.step([1, 2])
    with pytest.raises(ValueError, match="at least one prompt token"):
        batch.add("b", [])


def test_a_step_with_non_finite_logits_is_refused_with_the_model_named(tiny_onnx_dir, tmp_path):
    """Weights that break only at a later position (its position embedding is NaN): the prompt
    decodes, the step that reaches that position is refused instead of sampling from NaN."""
    import onnx
    from onnx import numpy_helper

    from mtnsails.core.errors import MtnsailsError

    graph = onnx.load(str(tiny_onnx_dir / "model.onnx"))
    context = json.loads((tiny_onnx_dir / "config.json").read_text())["n_positions"]
    positions = next(
        weights for weights in graph.graph.initializer if len(weights.dims) == 2 and weights.dims[0] == context
    )
    broken = numpy_helper.to_array(positions).copy()
    broken[3] = np.nan
    positions.CopyFrom(numpy_helper.from_array(broken, positions.name))
    onnx.save(graph, str(tmp_path / "model.onnx"))
    batch = BatchDecoder(OnnxDecoder(tmp_path / "model.onnx"))
    # A prompt that reaches position 3 fails, in a run of its own (too long to share one with
    # "ok", whose run succeeds first): neither joins, the batch is as it was.
    with pytest.raises(MtnsailsError, match="model.onnx: the model computes non-finite logits"):
        batch.add_many([("ok", [5, 6]), ("long", list(range(5, 13)))])
    assert batch.keys == [] and batch.width == 0
    batch.add("a", [5, 6, 7])  # positions 0-2
    with pytest.raises(MtnsailsError, match="model.onnx: the model computes non-finite logits"):
        batch.step([8])  # position 3


def test_minus_infinity_is_a_logit_but_nan_and_plus_infinity_are_refused():
    from mtnsails.core.errors import MtnsailsError
    from mtnsails.inference.generation import finite_logits

    logits = np.zeros((2, 5), dtype=np.float32)
    logits[0, 1] = -np.inf  # a token that can never be chosen (a model may mask its vocabulary)
    assert finite_logits(logits, "m.onnx") is logits
    for broken in (np.nan, np.inf):
        bad = logits.copy()
        bad[1, 3] = broken
        with pytest.raises(MtnsailsError, match="m.onnx: the model computes non-finite logits"):
            finite_logits(bad, "m.onnx")
    with pytest.raises(MtnsailsError, match="non-finite"):
        finite_logits(np.full(4, -np.inf, dtype=np.float32), "m.onnx")  # nothing can be chosen
    logits[1] = -np.inf
    with pytest.raises(MtnsailsError, match="non-finite"):
        finite_logits(logits, "m.onnx")  # nothing can be chosen in the second row
