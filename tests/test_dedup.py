"""CopyFinder and NearDuplicateFinder: exact and near copies, checked against plain sets."""

from __future__ import annotations

import random

from mtnsails.dedup import CopyFinder, NearDuplicateFinder
from mtnsails.quality import QualityConfig

WORDS = "river delta silt sea boat tide harbour sand reed heron salt marsh".split()


def texts(count: int, seed: int = 0) -> list[list[str]]:
    """Random sentences, a third of them an earlier one with one or two words changed."""
    rng = random.Random(seed)
    result: list[list[str]] = []
    for _ in range(count):
        if result and rng.random() < 0.3:
            words = list(rng.choice(result))
            for _ in range(rng.randint(1, 2)):
                words[rng.randrange(len(words))] = rng.choice(WORDS)
        else:
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 30))]
        result.append(words)
    return result


def jaccard(first: list[str], second: list[str]) -> float:
    """Similarity of the 2-word shingle sets (the shingle size of texts under 100 words)."""
    a, b = set(zip(first, first[1:])), set(zip(second, second[1:]))
    return len(a & b) / len(a | b)


def test_near_duplicates_carry_their_exact_jaccard_similarity_and_the_first_kept_original():
    config = QualityConfig()
    token_lists = texts(400)
    found = NearDuplicateFinder(config).find(token_lists)
    assert len(found) > 50
    for later, (earlier, similarity) in found.items():
        assert earlier < later and earlier not in found
        assert similarity == jaccard(token_lists[later], token_lists[earlier])
        assert similarity >= config.near_duplicate_threshold


def test_copies_do_not_depend_on_how_texts_are_buffered_or_when_they_are_read():
    token_lists = texts(300, seed=1)
    token_lists[7] = list(token_lists[3])  # an exact copy
    whole, small = CopyFinder(QualityConfig()), CopyFinder(QualityConfig())
    small.CHUNK_WORDS = 50  # signed every few texts: many blocks to join
    for finder in (whole, small):
        for tokens in token_lists[:150]:
            finder.add(" ".join(tokens), tokens)
    assert whole.copies() == small.copies()
    for finder in (whole, small):  # added after a first look: joined with what came before
        for tokens in token_lists[150:]:
            finder.add(" ".join(tokens), tokens)
    copies = small.copies()
    assert copies == whole.copies() and copies[7] == (3, None) and len(copies) > 40


def test_pairs_are_checked_in_blocks_bounded_by_their_shingles_with_the_same_result():
    token_lists = texts(400, seed=2)
    whole = NearDuplicateFinder(QualityConfig()).find(token_lists)
    bounded = NearDuplicateFinder(QualityConfig())
    bounded.PAIR_SHINGLES = 60  # two or three pairs of these texts a block
    assert bounded.find(token_lists) == whole and len(whole) > 50
