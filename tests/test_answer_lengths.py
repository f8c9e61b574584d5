"""answer_lengths: the answer lengths training records and the token limit chat derives from them."""

from __future__ import annotations

from mtnsails.model_dir.answer_lengths import DEFAULT_MAX_NEW_TOKENS, answer_lengths, length_record, token_limit


def test_each_run_of_learned_labels_is_an_answer_without_its_eos():
    labels = [-100, -100, 5, 6, 7, 0, -100, -100, 8, 0]  # two answers, each ending in EOS 0
    assert answer_lengths(labels, eos_token_id=0) == [3, 1]
    assert answer_lengths([-100, 5, 6], eos_token_id=None) == [2]  # no EOS: every token counts
    assert answer_lengths([-100, -100], eos_token_id=0) == []


def test_length_record_has_max_p95_and_mean():
    assert length_record(list(range(1, 21))) == {"count": 20, "max": 20, "p95": 19, "mean": 10.5}
    assert length_record([4]) == {"count": 1, "max": 4, "p95": 4, "mean": 4.0}
    assert length_record([]) is None


def test_token_limit_is_the_longest_answer_plus_a_margin_capped_by_the_context():
    assert token_limit({"max": 8}, 512) == 8 + 8 + 1  # at least 8 tokens of margin, 1 for EOS
    assert token_limit({"max": 100}, 512) == 100 + 25 + 1
    assert token_limit({"max": 500}, 512) == 384  # three quarters of the context at most
    assert token_limit(None, 512) == token_limit({}, 512) == DEFAULT_MAX_NEW_TOKENS == 50
