"""ConversationAugmenter: training examples after drawn history or reworded, drawn anew each use."""

import random

import pytest
from conftest import TINY_CONVERSATIONS

from mtnsails.core.errors import MtnsailsError
from mtnsails.model_dir.template import ChatTemplate, Segment
from mtnsails.train.augment import HOW_TO, AugmentConfig, ConversationAugmenter, reword
from mtnsails.train.collator import encode_segments
from mtnsails.train.config import TrainingConfig
from mtnsails.train.models import build_embedded_tokenizer

TEMPLATE = ChatTemplate()
ALWAYS_HISTORY = AugmentConfig(enabled=True, history_share=1.0, max_history=3, reworded_share=0.0)
ALWAYS_REWORDED = AugmentConfig(enabled=True, history_share=0.0, reworded_share=1.0)


def learned_answers(example: list[Segment]) -> list[str]:
    return [segment.text for segment in example if segment.is_response and segment.learned]


def test_after_history_only_the_last_answer_is_learned():
    augmenter = ConversationAugmenter(TINY_CONVERSATIONS, TEMPLATE, ALWAYS_HISTORY, seed=0)
    all_answers = {" " + c["output"] for c in TINY_CONVERSATIONS} | {" Paris is in France."}
    for index, conversation in enumerate(TINY_CONVERSATIONS):
        example = augmenter.variant(index, 0)
        assert learned_answers(example) == [" " + conversation["output"]]
        context = [segment for segment in example if segment.is_response and not segment.learned]
        assert context, "every example has drawn history before the conversation"
        assert {segment.text for segment in context} <= all_answers
        assert example[-2].text == "\n" + TEMPLATE.prompt_text(conversation["input"])


def test_history_tokens_are_masked_but_keep_their_eos_as_chat_prompts_do():
    tokenizer = build_embedded_tokenizer([TEMPLATE.render([(c["input"], c["output"])]) for c in TINY_CONVERSATIONS])
    encode = lambda segments: encode_segments(tokenizer, segments, max_length=512)  # noqa: E731
    augmenter = ConversationAugmenter(TINY_CONVERSATIONS, TEMPLATE, ALWAYS_HISTORY, 0, encode)
    encoded = augmenter[0]
    answer = tokenizer(" " + TINY_CONVERSATIONS[0]["output"], add_special_tokens=False)["input_ids"]
    assert [label for label in encoded["labels"] if label != -100] == answer + [tokenizer.eos_token_id]
    responses = sum(segment.is_response for segment in augmenter.variant(0, 0))
    assert encoded["input_ids"].count(tokenizer.eos_token_id) == responses


def test_a_multi_turn_conversation_keeps_its_own_turns_after_the_drawn_history():
    multi_turn = TINY_CONVERSATIONS[-1]
    data = [multi_turn, *TINY_CONVERSATIONS[:3]]
    texts = [segment.text for segment in ConversationAugmenter(data, TEMPLATE, ALWAYS_HISTORY, seed=3).variant(0, 0)]
    own = texts.index("\n" + TEMPLATE.prompt_text("Which country is Paris in?"))
    assert texts[own + 1 :] == [
        " Paris is in France.",
        "\n" + TEMPLATE.prompt_text(multi_turn["input"]),
        " " + multi_turn["output"],
    ]
    reworded = ConversationAugmenter(data, TEMPLATE, ALWAYS_REWORDED, seed=3).variant(0, 0)
    assert reworded[0].text == TEMPLATE.prompt_text("Which country is Paris in?")
    assert learned_answers(reworded) == [" " + multi_turn["output"]]


def test_each_use_draws_anew_and_the_same_seed_repeats_the_run():
    def run(seed):
        augmenter = ConversationAugmenter(TINY_CONVERSATIONS, TEMPLATE, AugmentConfig(enabled=True), seed)
        return [augmenter[index] for _ in range(5) for index in range(len(augmenter))]

    first = run(7)
    assert first == run(7)
    assert first != run(8)
    uses_of_0 = first[:: len(TINY_CONVERSATIONS)]
    assert len({tuple(example) for example in uses_of_0}) > 1, "epochs see other variants"
    originals = [list(TEMPLATE.segments([(c["input"], c["output"])])) for c in TINY_CONVERSATIONS[:7]]
    assert any(example in originals for example in first), "some examples stay as they are"


def test_switched_off_by_default_every_example_is_the_conversation_as_it_is():
    augmenter = ConversationAugmenter(TINY_CONVERSATIONS, TEMPLATE, AugmentConfig())
    assert [augmenter[i] for i in range(len(augmenter))] == [
        list(
            TEMPLATE.segments(
                [(c["input"], c["output"])]
                if not c.get("history")
                else [("Which country is Paris in?", "Paris is in France."), (c["input"], c["output"])]
            )
        )
        for c in TINY_CONVERSATIONS
    ]
    assert not AugmentConfig(enabled=True, history_share=0, reworded_share=0).active


def test_out_of_range_settings_are_refused_naming_their_flag():
    with pytest.raises(MtnsailsError, match="--augment-history must be in"):
        TrainingConfig(augment=AugmentConfig(history_share=1.5)).validate()
    with pytest.raises(MtnsailsError, match="--augment-max-history must be at least 1"):
        AugmentConfig(max_history=0).validate()


def test_reword_changes_the_words_but_keeps_a_question():
    rng = random.Random(0)
    rewordings = {reword("How do I clean my bike chain?", rng) for _ in range(20)}
    assert len(rewordings) > 5
    assert all("chain" in text.lower() or len(text.split()) >= 3 for text in rewordings)
    assert any(
        text.lower().startswith(tuple(opening for opening in HOW_TO if opening != "how do i")) for text in rewordings
    )
