"""CopyFinder and NearDuplicateFinder: exact and near copies, checked against plain sets."""

from __future__ import annotations

import random

import numpy as np

from mtnsails.quality.config import QualityConfig
from mtnsails.quality.dedup import CopyFinder, NearDuplicateFinder, _buckets

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


def naive_candidates(finder: NearDuplicateFinder, signatures, members) -> set[tuple[int, int]]:
    """The candidate rule written plainly: in every band, each member of a bucket (members in
    their order) is paired with up to `max_bucket_candidates` members before it, kept when
    its signature agrees on at least the threshold less 0.15."""
    config = finder.config
    rows, least = config.minhash_rows, config.near_duplicate_threshold - 0.15
    pairs = set()
    for band in range(config.minhash_bands):
        buckets: dict[tuple, list[int]] = {}
        for member in members.tolist():
            buckets.setdefault(tuple(signatures[member, band * rows : (band + 1) * rows]), []).append(member)
        for bucket in buckets.values():
            for place, later in enumerate(bucket):
                for earlier in bucket[max(0, place - config.max_bucket_candidates) : place]:
                    if (signatures[later] == signatures[earlier]).mean() >= least:
                        pairs.add((later, earlier))
    return pairs


def test_candidate_pairs_are_those_of_the_plain_rule_in_large_buckets_too():
    finder = NearDuplicateFinder(QualityConfig())
    rng = np.random.default_rng(3)
    # few distinct values: buckets of dozens of members, beyond the 10 compared
    signatures = rng.integers(0, 2, size=(300, 100), dtype=np.uint16)
    members = np.sort(rng.choice(300, size=250, replace=False))
    pairs = finder._candidates(signatures, members)
    assert {tuple(pair) for pair in pairs.tolist()} == naive_candidates(finder, signatures, members)
    assert len(pairs) > 1000 and (np.diff(pairs[:, 0] * 300 + pairs[:, 1]) > 0).all()
    wide = signatures.astype(np.uint32)  # `find`'s signatures: a band is wider than a word
    assert (finder._candidates(wide, members) == pairs).all()
    # bands shared among three threads: the same pairs
    assert (finder._candidates(signatures, members, threads=3) == pairs).all()


def test_a_large_set_is_checked_in_threads_with_the_same_result():
    token_lists = texts(600, seed=4)
    alone = NearDuplicateFinder(QualityConfig(workers=1)).find(token_lists)
    shared = NearDuplicateFinder(QualityConfig(workers=3, parallel_min_conversations=100))
    assert shared.find(token_lists) == alone and len(alone) > 100


def test_buckets_keep_members_in_order_when_keys_share_their_high_bits():
    keys = np.array([5, 7, 5, 9, 7, 5, 2**40 + 7, 2**40 + 5, 2**40 + 7], dtype=np.uint64)
    place, ordered, sizes = _buckets(keys)  # 5 and 7 share every high bit: the slow sort runs
    expected = np.argsort(keys, kind="stable")
    expected = expected[np.isin(keys[expected], [5, 7, 2**40 + 7])]
    assert place.tolist() == expected.tolist() and (ordered == keys[expected]).all()
    assert sizes.tolist() == [3, 3, 3, 2, 2, 2, 2]
    spread = keys * np.uint64(0x9E3779B97F4A7C15)  # mixed keys: the vectorised sort suffices
    place, _, sizes = _buckets(spread)
    assert sorted(place.tolist()) == [0, 1, 2, 4, 5, 6, 8] and sizes.tolist().count(3) == 3
