"""Near-duplicate detection: MinHash signatures of word shingles, LSH banding, exact check.

Used by `DataQualityValidator` (near duplicates across a data set) and by the scraped-content
processor (answers that copy one another). Needs only numpy.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mtnsails.quality import QualityConfig


def find_copies(keys: list[str], token_lists: list[list[str]],
                config: "QualityConfig") -> dict[int, tuple[int, float | None]]:
    """{index of a copy: (index of its kept original, similarity)} over texts in order.

    A text whose normalised `keys[i]` equals an earlier one's is an exact copy (similarity
    None); the remaining texts are compared by their `token_lists` with `NearDuplicateFinder`.
    Texts with an empty key are never copies.
    """
    first_seen: dict[str, int] = {}
    copies: dict[int, tuple[int, float | None]] = {}
    unique: list[int] = []
    for index, key in enumerate(keys):
        if not key:
            continue
        original = first_seen.setdefault(key, index)
        if original != index:
            copies[index] = (original, None)
        else:
            unique.append(index)
    near = NearDuplicateFinder(config).find([token_lists[i] for i in unique])
    for position, (original, similarity) in near.items():
        copies[unique[position]] = (unique[original], similarity)
    return copies


class NearDuplicateFinder:
    """MinHash signatures of word-shingle sets, LSH banding for candidates, exact Jaccard check.

    Everything per shingle runs in numpy: words become integer ids, an n-gram's hash is a
    random linear combination of its ids, and the k-th MinHash value is the minimum over the
    set of (a_k * h + b_k) >> 32 (multiply-shift hashing, uint64 arithmetic wraps).
    """

    CHUNK = 40_000  # shingles hashed at once: CHUNK x permutations x 8 bytes of memory

    def __init__(self, config: "QualityConfig") -> None:
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
        shingles, offsets = self._shingles(token_lists)
        signatures = self._signatures(shingles, offsets)
        similar: dict[int, list[tuple[int, float]]] = {}
        sets: dict[int, set] = {}

        def shingle_set(i: int) -> set:
            """Text i's shingles as a set, built once."""
            if i not in sets:
                sets[i] = set(shingles[offsets[i]:offsets[i + 1]].tolist())
            return sets[i]

        for later, earlier in self._candidates(signatures).tolist():
            first, second = shingle_set(later), shingle_set(earlier)
            similarity = len(first & second) / len(first | second)
            if similarity >= self.config.near_duplicate_threshold:
                similar.setdefault(later, []).append((earlier, similarity))
        result: dict[int, tuple[int, float]] = {}
        for later in sorted(similar):  # compare only with conversations that are kept
            kept = [(e, s) for e, s in similar[later] if e not in result]
            if kept:
                result[later] = min(kept)
        return result

    def _shingles(self, token_lists: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """One hashed shingle array for all texts and each text's start offset in it."""
        vocabulary = defaultdict(itertools.count(1).__next__)  # word -> id, ids from 1
        ids = np.fromiter(map(vocabulary.__getitem__, itertools.chain.from_iterable(token_lists)),
                          dtype=np.uint64)
        lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        size = np.where(lengths >= self.config.long_text_words, self.config.long_shingle_words,
                        self.config.short_shingle_words)
        size = np.minimum(size, lengths)
        counts = lengths - size + 1
        padded = np.concatenate((ids, np.zeros(self.config.long_shingle_words, np.uint64)))
        # position of every shingle's first word, text by text
        first = np.repeat(starts, counts) + (np.arange(counts.sum())
                                             - np.repeat(np.cumsum(counts) - counts, counts))
        width = np.repeat(size, counts)
        hashes = width.astype(np.uint64) * self.mix[15]
        for k in range(int(size.max())):
            hashes += np.where(k < width, padded[first + k], 0).astype(np.uint64) * self.mix[k]
        offsets = np.concatenate(([0], np.cumsum(counts)))
        return hashes ^ (hashes >> np.uint64(29)), offsets

    def _signatures(self, shingles: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        documents = len(offsets) - 1
        signatures = np.empty((documents, len(self.a)), dtype=np.uint32)
        start_doc = 0
        while start_doc < documents:
            end_doc = int(np.searchsorted(offsets, offsets[start_doc] + self.CHUNK, "right")) - 1
            end_doc = max(end_doc, start_doc + 1)
            lo, hi = offsets[start_doc], offsets[end_doc]
            values = (shingles[lo:hi, None] * self.a + self.b) >> np.uint64(32)
            signatures[start_doc:end_doc] = np.minimum.reduceat(
                values, offsets[start_doc:end_doc] - lo, axis=0)
            start_doc = end_doc
        return signatures

    def _candidates(self, signatures: np.ndarray) -> np.ndarray:
        """(later, earlier) pairs that share a whole LSH band and whose signatures agree on
        nearly the threshold's share of values (the exact check follows)."""
        rows, count = self.config.minhash_rows, len(signatures)
        bands = signatures.reshape(count, self.config.minhash_bands, rows)
        keys = (bands.astype(np.uint64) * self.mix[:rows]).sum(axis=2)
        # MinHash agreement estimates Jaccard similarity (standard error <= 0.05 at 100
        # permutations); a margin of 0.15 keeps true pairs and drops most band collisions.
        least = self.config.near_duplicate_threshold - 0.15
        found = []
        for band in keys.T:
            order = np.argsort(band, kind="stable")  # stable: a bucket keeps input order
            ordered = band[order]
            # pair each bucket member with up to `max_bucket_candidates` members before it
            for distance in range(1, self.config.max_bucket_candidates + 1):
                same = np.flatnonzero(ordered[distance:] == ordered[:-distance])
                if not len(same):
                    break
                later, earlier = order[same + distance], order[same]
                agreement = (signatures[later] == signatures[earlier]).mean(axis=1)
                keep = agreement >= least
                found.append(later[keep] * count + earlier[keep])
        codes = np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)
        return np.stack((codes // count, codes % count), axis=1)
