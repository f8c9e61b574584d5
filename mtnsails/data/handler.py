"""`ConversationDataHandler`: conversations from one or more files, in memory, for training.

The original MTN Sails API (load, add, format for training, batches, quality checks) over the
readers in `records`; several sources are combined with copies across files left out.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mtnsails.core.errors import DataFormatError
from mtnsails.data.records import iter_conversations, normalize_record, write_conversations
from mtnsails.model_dir.template import ChatTemplate, Segment, exchanges
from mtnsails.quality.config import CutShort


@dataclass
class DataSource:
    """One file of a combined data set: how many conversations it held and how many it added."""

    path: Path
    conversations: int  # read from the file
    added: int  # not already read from an earlier file

    @property
    def duplicates(self) -> int:
        """Conversations dropped as exact copies of an earlier file's."""
        return self.conversations - self.added

    def describe(self) -> str:
        """E.g. "new.jsonl: 10 conversations (2 already in an earlier file, dropped)"."""
        text = f"{self.path}: {self.conversations} conversation{'s' * (self.conversations != 1)}"
        return text + (f" ({self.duplicates} already in an earlier file, dropped)" if self.duplicates else "")


class ConversationDataHandler:
    """Holds conversations and turns them into training text.

    >>> handler = ConversationDataHandler()
    >>> handler.add_conversation({"question": "What is 2+2?", "answer": "It is 4."})
    >>> handler.format_for_training()
    ['User: What is 2+2?\\nAssistant: It is 4.']
    """

    def __init__(self, data_path: str | os.PathLike | None = None, template: ChatTemplate | None = None) -> None:
        self.conversations: list[dict] = []
        self.template = template or ChatTemplate()
        self.data_path: Path | None = None
        self.sources: list[DataSource] = []  # the files read by `load_files`
        if data_path is not None:
            self.load_from_json(data_path)

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike, template: ChatTemplate | None = None) -> ConversationDataHandler:
        """Load a data file (any accepted format) into a new handler."""
        return cls(path, template=template)

    def load_from_json(self, path: str | os.PathLike) -> list[dict]:
        """Read a data file (JSON, JSON Lines, CSV, TSV or Parquet); its normalised
        conversations replace the held ones.

        Replacing, as the original did, keeps `ConversationDataHandler(path)` followed by
        `load_from_json(path)` (a pattern of scripts for the original) from doubling the data;
        use `add_conversations` to combine files.
        Raises `DataFormatError` with a one-line message naming the file and the record or line.
        """
        path = Path(path)
        records = list(iter_conversations(path))
        self.conversations = records
        self.data_path = path
        return records

    @classmethod
    def from_files(
        cls, paths: Sequence[str | os.PathLike], template: ChatTemplate | None = None
    ) -> ConversationDataHandler:
        """Load several data files (formats may differ) into one handler; see `load_files`."""
        handler = cls(template=template)
        handler.load_files(paths)
        return handler

    def load_files(self, paths: Sequence[str | os.PathLike]) -> list[dict]:
        """Read several data files into one set that replaces the held conversations.

        A conversation already read from an earlier file (same input, output, history and system
        prompt) is dropped; copies inside one file stay (the quality report counts them).
        `self.sources` says how many conversations each file held and added.
        """
        self.conversations = list(iter_files(paths, self.sources))
        self.data_path = self.sources[0].path if len(self.sources) == 1 else None
        return self.conversations

    def sources_report(self) -> str:
        """`sources_report(self.sources)`: per-file counts, "" for a single file."""
        return sources_report(self.sources)

    def add_conversation(self, conversation: dict) -> None:
        """Add one conversation in any accepted record format."""
        self.conversations.append(normalize_record(conversation, "conversation"))

    def add_conversations(self, conversations: Iterable[dict]) -> None:
        """Add several conversations in any accepted format (errors name their index)."""
        for index, conversation in enumerate(conversations):
            self.conversations.append(normalize_record(conversation, f"conversation {index}"))

    def __len__(self) -> int:
        return len(self.conversations)

    def len(self) -> int:
        """Number of conversations (the original API spelled it as a method)."""
        return len(self.conversations)

    def get_batch(self, batch_size: int, start_idx: int = 0) -> list[dict]:
        """Up to `batch_size` conversations starting at `start_idx` (original API)."""
        return self.conversations[start_idx : start_idx + batch_size]

    # -- formatting ------------------------------------------------------------------------

    def format_for_training(self) -> list[str]:
        """Plain training texts, "User: {input}\\nAssistant: {output}" per exchange (no EOS)."""
        return [self.template.render(exchanges(c), c.get("system")) for c in self.conversations]

    def training_segments(self) -> list[list[Segment]]:
        """Each conversation as prompt/response segments (the trainer learns responses only)."""
        return [list(self.template.segments(exchanges(c), c.get("system"))) for c in self.conversations]

    # -- saving ----------------------------------------------------------------------------

    def save_to_json(self, path: str | os.PathLike, conversations: list[dict] | None = None) -> None:
        """Write conversations atomically as a JSON array, or JSON Lines for `.jsonl` paths."""
        write_conversations(path, self.conversations if conversations is None else conversations)

    # -- quality (delegates to DataQualityValidator) ---------------------------------------

    def _validator(self):
        from mtnsails.quality.validator import DataQualityValidator

        return DataQualityValidator()

    def validate_conversation_quality(
        self,
        conversation: dict,
        check_repetition: bool = True,
        check_length: bool = True,
        check_gibberish: bool = True,
        check_echo: bool = True,
        check_incomplete: bool = True,
    ) -> tuple[bool, list[str]]:
        """Original API: (is_valid, reasons) for one conversation."""
        return self._validator().validate_conversation(
            normalize_record(conversation, "conversation"),
            check_repetition=check_repetition,
            check_length=check_length,
            check_gibberish=check_gibberish,
            check_echo=check_echo,
            check_incomplete=check_incomplete,
        )

    def analyze_dataset_quality(self) -> dict:
        """Original API: the data-set report as a dict (see `QualityReport.to_dict`)."""
        return self._validator().analyze(self.conversations).to_dict()

    def filter_valid_conversations(self) -> list[dict]:
        """Original API: the conversations that pass every quality rule."""
        return self._validator().filter_valid(self.conversations)


def common_system(conversations: Iterable[dict]) -> str | None:
    """The system prompt the conversations carry most often (records without one count as
    "none", which wins only over fewer carriers; ties go to the prompt seen first); None when
    none carries one, or when more records carry none than carry the most common prompt."""
    counts = Counter(conversation.get("system") or None for conversation in conversations)
    carried = [(count, system) for system, count in counts.items() if system is not None]
    if not carried:
        return None
    count, system = max(carried, key=lambda item: item[0])  # max keeps the first of equal counts
    return system if count >= counts[None] else None


def opening_questions(conversations: Iterable[dict]) -> dict[str, str]:
    """Each question asked with nothing before it, with its first answer: a stand-alone one, or
    a history's first turn when it is a question (an opening statement such as "I am planning a
    trip." is no question to ask a user's question as). Chat's question matcher reads both."""
    found: dict[str, str] = {}
    for conversation in conversations:
        history = conversation.get("history")
        opening = history[0] if history else conversation
        if not history or opening["input"].rstrip().endswith("?"):
            found.setdefault(opening["input"], opening["output"])
    return found


def conversation_key(conversation: dict) -> bytes:
    """A digest of what makes two native conversations the same: input, output, history and
    system prompt (a chat log's timestamp or verdict does not)."""
    text = json.dumps(
        [
            conversation.get("input"),
            conversation.get("output"),
            conversation.get("history") or [],
            conversation.get("system") or "",
        ],
        ensure_ascii=False,
    )
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def iter_unique(groups: Iterable[Iterable[dict]], counts: list[list[int]]) -> Iterator[dict]:
    """Yield the conversations of each group in turn, leaving out any already yielded from an
    earlier group (same `conversation_key`); copies inside one group stay. `counts` gets one
    [read, added] pair per group, updated as it goes. Holds a 16-byte digest per conversation,
    not the conversations, so files stream through."""
    earlier: set[bytes] = set()
    groups = iter(groups)
    group = next(groups, None)
    while group is not None:
        following = next(groups, None)  # a later group: keep this one's keys for it
        tally = [0, 0]
        counts.append(tally)
        current: set[bytes] = set()
        for conversation in group:
            tally[0] += 1
            # a single group needs no key at all; a record cut short is no copy of another
            if (earlier or following is not None) and not isinstance(conversation, CutShort):
                key = conversation_key(conversation)
                if key in earlier:
                    continue
                if following is not None:
                    current.add(key)
            tally[1] += 1
            yield conversation
        earlier |= current
        group = following


def combine_conversations(groups: Iterable[list[dict]]) -> tuple[list[dict], list[int]]:
    """`iter_unique` as a list: the joined conversations and how many each group added."""
    counts: list[list[int]] = []
    combined = list(iter_unique(groups, counts))
    return combined, [added for _, added in counts]


def sources_report(sources: list[DataSource]) -> str:
    """One line per file of a combined set, then the total ("" for a single file)."""
    if len(sources) < 2:
        return ""
    lines = [f"Read {len(sources)} data files:"] + [f"  {source.describe()}" for source in sources]
    lines.append(f"  -> {sum(source.added for source in sources)} conversations")
    return "\n".join(lines)


def iter_files(
    paths: Sequence[str | os.PathLike], sources: list[DataSource], keep_cut_short: bool = False
) -> Iterator[dict]:
    """Stream several data files as one set (`iter_unique` over their `iter_conversations`);
    `sources` gets a `DataSource` per file once it has been read. `keep_cut_short` as for
    `iter_conversations`."""
    if not paths:
        raise DataFormatError("no data files given")
    counts: list[list[int]] = []
    yield from iter_unique((iter_conversations(path, keep_cut_short) for path in paths), counts)
    sources[:] = [DataSource(Path(path), read, added) for path, (read, added) in zip(paths, counts)]
