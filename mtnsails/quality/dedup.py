"""Near-duplicate detection: MinHash signatures of word shingles, LSH banding, exact check.

Used by `DataQualityValidator` (copies across a data set) and by the scraped-content processor
(answers that copy one another). Texts are added one at a time (`CopyFinder.add`), or in
batches encoded elsewhere (`text_codes`, in a worker process, then `CopyFinder.add_codes`), and
kept only as an 8-byte hash, a MinHash signature and their bounded, distinct shingle hashes, so
a data set of millions of conversations is checked without holding its text. Candidate pairs are
checked in blocks by sorted-array search, never as Python sets, so the check's memory stays
bounded however many candidates there are. Needs only numpy.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from array import array
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from mtnsails.core.cpu import usable_cpus

if TYPE_CHECKING:
    from mtnsails.quality.config import QualityConfig


HIGH_HALF = 1 if sys.byteorder == "little" else 0  # where a uint64's high uint32 lies


def find_copies(
    keys: list[str], token_lists: list[list[str]], config: QualityConfig
) -> dict[int, tuple[int, float | None]]:
    """`CopyFinder.copies()` of texts given as lists: `keys[i]` normalised, `token_lists[i]`
    its words."""
    finder = CopyFinder(config)
    finder.add_codes(text_codes(keys, token_lists, config.max_dedup_words))
    return finder.copies()


class TextCodes(NamedTuple):
    """Texts as `CopyFinder` keeps them, encoded without the finder (in a worker process):
    each text's key hash (0 for an empty key) and word count, and its words as ids into `words`,
    this batch's vocabulary in order of first use."""

    digests: array
    words: list[str]
    ids: array
    lengths: array


def text_codes(keys: Sequence[str], token_lists: Sequence[list[str]], max_words: int) -> TextCodes:
    """`TextCodes` of texts: `keys[i]` normalised, `token_lists[i]` its words (the first
    `max_words` count)."""
    digests, ids, lengths = array("Q"), array("Q"), array("q")
    vocabulary = defaultdict(itertools.count().__next__)  # word -> id, in order of first use
    for key, tokens in zip(keys, token_lists):
        digest = 0
        if key:
            digest = (
                int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
                | 1
            )
        digests.append(digest)
        tokens = tokens[:max_words]
        ids.extend(map(vocabulary.__getitem__, tokens))
        lengths.append(len(tokens))
    return TextCodes(digests, list(vocabulary), ids, lengths)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices starts[i] .. starts[i] + lengths[i] - 1 of every i, one after another."""
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(ends[-1] if len(ends) else 0)


def _distinct(values: np.ndarray) -> np.ndarray:
    """`values` sorted, each once. `np.unique` would give the same, but numpy 2 finds distinct
    integers with a hash table first, far slower than this sort."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


def _buckets(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The LSH buckets of more than one member: the places in `keys` of their members, bucket
    by bucket and in ascending order within each (a stable sort's order), those keys, and each
    member's bucket size.

    A stable argsort of 64-bit keys is the slow part of the candidate search: instead each key's
    high bits and its place share one word, sorted by numpy's vectorised sort. Two different
    keys with equal high bits (rare with well-mixed keys) could interleave: then the stable
    argsort runs after all."""
    count = len(keys)
    low = np.uint64((1 << max(1, (count - 1).bit_length())) - 1)
    combined = (keys & ~low) | np.arange(count, dtype=np.uint64)
    combined.sort()
    place = (combined & low).astype(np.intp)
    ordered, high = keys[place], combined & ~low
    if np.any((high[1:] == high[:-1]) & (ordered[1:] != ordered[:-1])):
        place = np.argsort(keys, kind="stable")
        ordered = keys[place]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    sizes = np.diff(np.append(starts, count))
    sizes = np.repeat(sizes, sizes)
    shared = sizes > 1
    return place[shared], ordered[shared], sizes[shared]


def _in_threads(function: Callable[[Any], np.ndarray], parts: Sequence) -> list[np.ndarray]:
    """[function(part) for part in parts]: the first part in this thread, each other one at the
    same time in a thread of its own. numpy releases the interpreter lock while it sorts, gathers
    and compares, so the parts run on several cores, in one process: no memory is copied or
    counted twice. An error in a part is raised here."""
    if len(parts) < 2:
        return [function(part) for part in parts]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(parts) - 1) as pool:
        others = [pool.submit(function, part) for part in parts[1:]]
        return [function(parts[0])] + [other.result() for other in others]


class _Blocks:
    """A numpy array appended to in blocks and joined only when read: growing a single array
    by doubling would hold the old and the new copy at once (three times the data)."""

    def __init__(self, dtype: type, width: int = 0) -> None:
        self.empty = np.empty((0, width) if width else 0, dtype=dtype)
        self.blocks: list[np.ndarray] = []

    def append(self, block: np.ndarray) -> None:
        self.blocks.append(block)

    def joined(self) -> np.ndarray:
        """All blocks as one array (kept as the only block); each block is freed once copied,
        so joining holds the data about once, not twice."""
        if len(self.blocks) != 1:
            blocks, self.blocks = self.blocks[::-1], []
            total = sum(len(block) for block in blocks)
            joined = np.empty((total,) + self.empty.shape[1:], dtype=self.empty.dtype)
            filled = 0
            while blocks:
                block = blocks.pop()
                joined[filled : filled + len(block)] = block
                filled += len(block)
                del block
            self.blocks = [joined]
        return self.blocks[0]


class CopyFinder:
    """Exact and near copies among texts added in order.

    A text whose normalised key equals an earlier one's is an exact copy (similarity None);
    the others are compared by MinHash over the shingles of their first `max_dedup_words`
    words. Texts with an empty key are never copies.

    >>> finder = CopyFinder(QualityConfig())                   # doctest: +SKIP
    >>> finder.add("a b c", ["a", "b", "c"]); finder.add("a b c", ["a", "b", "c"])
    >>> finder.copies()                                        # doctest: +SKIP
    {1: (0, None)}
    """

    CHUNK_WORDS = 400_000  # words buffered before their signatures are computed in one go

    def __init__(self, config: QualityConfig) -> None:
        self.config = config
        self.near = NearDuplicateFinder(config)
        self._digests = array("Q")  # 8-byte hash of each key, 0 for an empty key
        self._vocabulary = defaultdict(itertools.count(1).__next__)  # word -> id, ids from 1
        self._ids = array("Q")  # word ids of the texts not yet signed
        self._lengths = array("q")  # their word counts
        # Kept per text: the low 16 bits of each MinHash value (two different minima agree by
        # chance once in 65,536, which the exact check absorbs) and its distinct 32-bit shingle
        # hashes, sorted (among a thousand shingles a collision is a one-in-millions event).
        self._signatures = _Blocks(np.uint16, len(self.near.a))
        self._shingles = _Blocks(np.uint32)
        self._shingle_counts = _Blocks(np.int64)

    def __len__(self) -> int:
        return len(self._digests)

    def digest(self, index: int) -> int:
        """The key hash of text `index` (0 for an empty key)."""
        return self._digests[index]

    def add(self, key: str, tokens: list[str]) -> None:
        """Add the next text: `key` its normalised form (only a hash of it is kept), `tokens`
        its words for near-duplicate shingles."""
        self.add_codes(text_codes([key], [tokens], self.config.max_dedup_words))

    def add_codes(self, codes: TextCodes) -> None:
        """Add the next texts, encoded by `text_codes`. A batch's words get the finder's ids in
        the batch's order of first use, so batches added in order give every word the id that
        adding their texts one by one gives (the shingle hashes depend on the ids)."""
        self._digests.extend(codes.digests)
        ids = np.fromiter(map(self._vocabulary.__getitem__, codes.words), dtype=np.uint64, count=len(codes.words))
        self._ids.frombytes(ids[np.frombuffer(codes.ids, dtype=np.uint64).astype(np.intp)].tobytes())
        self._lengths.extend(codes.lengths)
        if len(self._ids) >= self.CHUNK_WORDS:
            self._sign_pending()

    def copies(self) -> dict[int, tuple[int, float | None]]:
        """{index of a copy: (index of its kept original, similarity, None when exact)}."""
        self._sign_pending()
        digests = np.frombuffer(self._digests, dtype=np.uint64)
        if not len(digests):
            return {}
        order = np.argsort(digests, kind="stable")  # stable: the first of equal keys leads
        ordered = digests[order]
        leads = np.concatenate(([True], ordered[1:] != ordered[:-1]))
        first = order[np.maximum.accumulate(np.where(leads, np.arange(len(order)), 0))]
        exact = ~leads & (ordered != 0)
        copies: dict[int, tuple[int, float | None]] = {
            int(index): (int(original), None) for index, original in zip(order[exact].tolist(), first[exact].tolist())
        }
        unique = digests != 0
        unique[order[exact]] = False
        unique = np.flatnonzero(unique)
        offsets = np.concatenate(([0], np.cumsum(self._shingle_counts.joined())))
        near = self.near.verified(self._signatures.joined(), unique, self._shingles.joined(), offsets)
        copies.update(near)
        return copies

    def _sign_pending(self) -> None:
        if not len(self._lengths):
            return
        ids = np.frombuffer(self._ids, dtype=np.uint64)
        lengths = np.frombuffer(self._lengths, dtype=np.int64)
        shingles, offsets = self.near.shingles_of_ids(ids, lengths)
        self._signatures.append(self.near.signatures(shingles, offsets).astype(np.uint16))
        shingles, counts = self.near.distinct_shingles(shingles, offsets)
        self._shingles.append(shingles)
        self._shingle_counts.append(counts)
        self._ids, self._lengths = array("Q"), array("q")


class NearDuplicateFinder:
    """MinHash signatures of word-shingle sets, LSH banding for candidates, exact Jaccard check.

    Everything per shingle runs in numpy: words become integer ids, an n-gram's hash is a
    random linear combination of its ids, and the k-th MinHash value is the minimum over the
    set of (a_k * h + b_k) >> 32 (multiply-shift hashing, uint64 arithmetic wraps).
    """

    # Shingles hashed at once: CHUNK x permutations x 8 bytes (1.6 MB) stay in the CPU cache,
    # faster than larger chunks.
    CHUNK = 2_000
    PAIRS = 100_000  # candidate pairs checked at once
    # Shingle keys of the pairs checked at once: about 40 bytes of temporary arrays each, so a
    # block stays near 80 MB whatever the texts' lengths (a block of PAIRS long answers' pairs
    # would take gigabytes).
    PAIR_SHINGLES = 2_000_000

    def __init__(self, config: QualityConfig) -> None:
        """Hash parameters from a fixed seed; `config` gives the threshold and shingle sizes."""
        self.config = config
        rng = np.random.default_rng(20211208)  # fixed: results must not change between runs
        permutations = config.minhash_bands * config.minhash_rows
        self.mix = rng.integers(1, 2**63, size=16, dtype=np.uint64) | np.uint64(1)
        self.a = rng.integers(1, 2**63, size=permutations, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**63, size=permutations, dtype=np.uint64)

    def find(self, token_lists: list[list[str]]) -> dict[int, tuple[int, float]]:
        """{later index: (index of the kept original, Jaccard similarity)}."""
        if len(token_lists) < 2:
            return {}
        vocabulary = defaultdict(itertools.count(1).__next__)  # word -> id, ids from 1
        ids = np.fromiter(map(vocabulary.__getitem__, itertools.chain.from_iterable(token_lists)), dtype=np.uint64)
        lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
        shingles, offsets = self.shingles_of_ids(ids, lengths)
        signatures = self.signatures(shingles, offsets)
        shingles, counts = self.distinct_shingles(shingles, offsets)
        return self.verified(
            signatures, np.arange(len(token_lists)), shingles, np.concatenate(([0], np.cumsum(counts)))
        )

    def verified(
        self, signatures: np.ndarray, members: np.ndarray, shingles: np.ndarray, offsets: np.ndarray
    ) -> dict[int, tuple[int, float]]:
        """Near duplicates among the texts `members` (indices into `signatures`, ascending),
        candidates checked by the exact Jaccard similarity of their shingle sets: text i's
        are `shingles[offsets[i]:offsets[i + 1]]`, distinct and sorted (`distinct_shingles`).
        From `parallel_min_conversations` members the search is shared among `workers`
        threads (see `_in_threads`)."""
        threads = 1
        if len(members) >= self.config.parallel_min_conversations:
            threads = self.config.workers or usable_cpus()
        pairs = self._candidates(signatures, members, threads)  # sorted by later, then earlier
        counts = np.diff(offsets)
        keys_before = np.cumsum(counts[pairs[:, 0]] + counts[pairs[:, 1]])  # keys up to each pair
        # each thread checks a run of pairs holding an equal share of the shingle keys
        bounds = np.searchsorted(
            keys_before, np.arange(1, threads) * (keys_before[-1] / threads if len(pairs) else 0)
        ).tolist()
        similarity = np.concatenate(
            _in_threads(
                lambda run: self._similarities(pairs, keys_before, shingles, offsets, *run),
                list(zip([0] + bounds, bounds + [len(pairs)])),
            )
        )
        close = similarity >= self.config.near_duplicate_threshold
        result: dict[int, tuple[int, float]] = {}
        # compare only with texts that are kept: the first earlier text that is not a copy
        for later, earlier, share in zip(
            pairs[close, 0].tolist(), pairs[close, 1].tolist(), similarity[close].tolist()
        ):
            if later not in result and earlier not in result:
                result[later] = (earlier, share)
        return result

    def _similarities(
        self,
        pairs: np.ndarray,
        keys_before: np.ndarray,
        shingles: np.ndarray,
        offsets: np.ndarray,
        start: int,
        stop: int,
    ) -> np.ndarray:
        """The Jaccard similarity of `pairs[start:stop]`, in blocks of at most PAIRS pairs and
        PAIR_SHINGLES keys (long texts' pairs hold thousands each)."""
        similarity = np.empty(stop - start)
        block = start
        while block < stop:
            budget = (keys_before[block - 1] if block else 0) + self.PAIR_SHINGLES
            end = min(block + self.PAIRS, stop, max(block + 1, int(np.searchsorted(keys_before, budget, "right"))))
            similarity[block - start : end - start] = self._jaccard(
                pairs[block:end, 0], pairs[block:end, 1], shingles, offsets
            )
            block = end
        return similarity

    @staticmethod
    def _jaccard(first: np.ndarray, second: np.ndarray, shingles: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Jaccard similarity of the shingle sets of texts first[k] and second[k], for every k:
        the pair number k goes into the high 32 bits of each shingle, so one search of the
        first texts' shingles among the second's (sorted: pair by pair, each set sorted)
        counts every pair's shared shingles at once."""
        sizes = []
        keys = []
        for texts in (first, second):
            lengths = offsets[texts + 1] - offsets[texts]
            pair = np.repeat(np.arange(len(texts), dtype=np.uint64) << np.uint64(32), lengths)
            keys.append(pair | shingles[_ranges(offsets[texts], lengths)])
            sizes.append(lengths)
        found = np.searchsorted(keys[1], keys[0])
        shared = np.zeros(len(first), dtype=np.int64)
        if len(keys[1]):
            hit = keys[1][np.minimum(found, len(keys[1]) - 1)] == keys[0]
            shared = np.bincount((keys[0][hit] >> np.uint64(32)).astype(np.int64), minlength=len(first))
        return shared / np.maximum(sizes[0] + sizes[1] - shared, 1)

    @staticmethod
    def distinct_shingles(shingles: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each text's distinct shingle hashes cut to 32 bits, sorted, one text after another,
        and how many each text has: what `verified` compares, in the least memory."""
        texts = len(offsets) - 1
        text = np.repeat(np.arange(texts, dtype=np.uint64), np.diff(offsets))
        keys = _distinct((text << np.uint64(32)) | (shingles & np.uint64(0xFFFFFFFF)))
        counts = np.bincount((keys >> np.uint64(32)).astype(np.int64), minlength=texts)
        return keys.astype(np.uint32), counts

    def shingles_of_ids(self, ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One hashed shingle array for texts given as word ids (`lengths` words each, one
        after another) and each text's start offset in it."""
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        size = np.where(
            lengths >= self.config.long_text_words, self.config.long_shingle_words, self.config.short_shingle_words
        )
        size = np.minimum(size, lengths)
        counts = lengths - size + 1
        padded = np.concatenate((ids, np.zeros(self.config.long_shingle_words, np.uint64)))
        first = _ranges(starts, counts)  # position of every shingle's first word, text by text
        width = np.repeat(size, counts)
        hashes = width.astype(np.uint64) * self.mix[15]
        for k in range(int(size.max(initial=0))):
            hashes += np.where(k < width, padded[first + k], 0).astype(np.uint64) * self.mix[k]
        offsets = np.concatenate(([0], np.cumsum(counts)))
        return hashes ^ (hashes >> np.uint64(29)), offsets

    def signatures(self, shingles: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """The MinHash signature (one uint32 per permutation) of each text's shingles."""
        documents = len(offsets) - 1
        signatures = np.empty((documents, len(self.a)), dtype=np.uint32)
        buffer = np.empty((self.CHUNK, len(self.a)), dtype=np.uint64)  # reused: no allocations
        start_doc = 0
        while start_doc < documents:
            end_doc = int(np.searchsorted(offsets, offsets[start_doc] + self.CHUNK, "right")) - 1
            end_doc = max(end_doc, start_doc + 1)
            lo, hi = offsets[start_doc], offsets[end_doc]
            if hi - lo > len(buffer):  # one text with more shingles than a chunk
                buffer = np.empty((hi - lo, len(self.a)), dtype=np.uint64)
            values = buffer[: hi - lo]
            np.multiply(shingles[lo:hi, None], self.a, out=values)
            values += self.b
            # the minimum of the values' high 32-bit halves, read in place (no shift pass)
            signatures[start_doc:end_doc] = np.minimum.reduceat(
                values.view(np.uint32)[:, HIGH_HALF::2], offsets[start_doc:end_doc] - lo, axis=0
            )
            start_doc = end_doc
        return signatures

    def _candidates(self, signatures: np.ndarray, members: np.ndarray, threads: int = 1) -> np.ndarray:
        """(later, earlier) pairs of `members` that share a whole LSH band and whose signatures
        agree on nearly the threshold's share of values (the exact check follows); the bands
        are shared among `threads` threads."""
        bands = range(self.config.minhash_bands)
        codes = _distinct(
            np.concatenate(
                _in_threads(
                    lambda part: self._band_candidates(signatures, members, part),
                    [bands[first::threads] for first in range(threads)],
                )
            )
        )
        count = len(signatures)
        return np.stack((codes // count, codes % count), axis=1)

    def _band_candidates(self, signatures: np.ndarray, members: np.ndarray, bands: Sequence[int]) -> np.ndarray:
        """`_candidates` of the given bands, as codes later * len(signatures) + earlier,
        sorted and distinct."""
        rows, count = self.config.minhash_rows, len(signatures)
        # MinHash agreement estimates Jaccard similarity (standard error <= 0.05 at 100
        # permutations); a margin of 0.15 keeps true pairs and drops most band collisions.
        # Counted as matching values: the least count whose share reaches the margin.
        least = self.config.near_duplicate_threshold - 0.15
        permutations = signatures.shape[1]
        least_matching = next(k for k in range(permutations + 1) if k / permutations >= least)
        codes = np.empty(0, dtype=np.int64)  # later * count + earlier, sorted, distinct
        found: list[np.ndarray] = []  # codes of the latest bands, not yet merged into `codes`
        for band in bands:
            values = signatures[members, band * rows : (band + 1) * rows]
            if rows * values.itemsize == 8:  # the band's values side by side are one word
                keys = values.view(np.uint64)[:, 0] * self.mix[0]  # odd: equal iff equal
            else:
                keys = (values.astype(np.uint64) * self.mix[:rows]).sum(axis=1)
            del values
            place, keys, sizes = _buckets(keys)
            order = members[place]
            # each bucket member is paired with up to `max_bucket_candidates` members before
            # it, the pairs at one distance at once; the rows are gathered once, in bucket
            # order, so the pairs compare neighbouring rows
            ordered = np.take(signatures, order, axis=0)
            for distance in range(1, self.config.max_bucket_candidates + 1):
                reach = sizes > distance
                if not reach.any():
                    break
                if np.count_nonzero(reach) < 0.8 * len(reach):  # drop buckets out of reach
                    ordered, order, keys, sizes = (ordered[reach], order[reach], keys[reach], sizes[reach])
                same = keys[distance:] == keys[:-distance]
                for start in range(0, len(same), self.PAIRS):  # bounded temporary arrays
                    end = min(start + self.PAIRS, len(same))
                    matching = (
                        (ordered[start + distance : end + distance] == ordered[start:end])
                        .view(np.uint8)
                        .sum(axis=1, dtype=np.uint16)
                    )
                    keep = np.flatnonzero(same[start:end] & (matching >= least_matching)) + start
                    found.append(order[keep + distance].astype(np.int64) * count + order[keep])
            del ordered
            # most pairs recur in several bands: merging as they pile up keeps memory near
            # the distinct pairs' size
            if sum(map(len, found)) >= max(len(codes), self.PAIRS):
                codes, found = _distinct(np.concatenate([codes] + found)), []
        return _distinct(np.concatenate([codes] + found))
