"""`QuestionMatcher`: the trained question a new question asks in other words."""

from __future__ import annotations

from mtnsails.inference.question_matcher import DEFAULT_THRESHOLD, QuestionMatcher

TRAINED = ["How do I fix a flat tyre?", "What is a derailleur?", "How should I store my bike in winter?",
           "Why does my chain keep falling off?"]


def test_rewordings_find_their_trained_question():
    matcher = QuestionMatcher(TRAINED)
    assert matcher.match("what does a derailleur do").question == "What is a derailleur?"
    assert matcher.match("My chain keeps coming off, why?").question == TRAINED[3]
    assert matcher.match("Where should I keep my bike over the winter?").question == TRAINED[2]


def test_the_trained_question_itself_matches_fully():
    match = QuestionMatcher(TRAINED).match("What is a derailleur?")
    assert match.question == "What is a derailleur?" and match.similarity > 0.99


def test_unrelated_questions_match_nothing():
    matcher = QuestionMatcher(TRAINED)
    assert matcher.match("Who wrote Hamlet?") is None
    assert matcher.match("") is None
    assert DEFAULT_THRESHOLD > 0


def test_threshold_above_one_turns_matching_off_and_empty_index_matches_nothing():
    assert QuestionMatcher(TRAINED, threshold=1.01).match("What is a derailleur?") is None
    assert QuestionMatcher([]).match("What is a derailleur?") is None
