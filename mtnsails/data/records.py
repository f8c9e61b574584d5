"""Conversation data: read the formats people have, normalise them, format them for training.

Every record is normalised to the native form

    {"input": str, "output": str}                    # one exchange
    {"input": ..., "output": ..., "history": [{"input": ..., "output": ...}, ...],
     "system": str}                                  # multi-turn: earlier exchanges first

so a multi-turn conversation keeps its turns and a file saved by mtnsails is native JSON/JSONL.
Accepted on load: native records, Alpaca (`instruction`/`input`/`output`), `prompt`/`completion`,
`question`/`answer`, ShareGPT (`conversations` of `from`/`value`) and OpenAI-style `messages`
of `role`/`content`; a JSON array (`.json`), JSON Lines (`.jsonl`, `.ndjson`, read a line at a
time), or a table whose columns carry those names (`.csv`, `.tsv`, `.parquet`, read with
`datasets`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from mtnsails.core.errors import DataFormatError, MtnsailsError
from mtnsails.core.files import atomic_writer
from mtnsails.data.turns import _json_type, _objects, _sharegpt_turns, _string, openai_turns, split_turns
from mtnsails.quality.config import CutShort

JSONL_SUFFIXES = {".jsonl", ".ndjson"}
# A chat log's name for one exchange across its versions (see ConversationLogger.amend).
EXCHANGE_ID = "exchange_id"
# Tables, read with `datasets`: suffix -> format.
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
SUPPORTED_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet")
# A \uD800-\uDFFF escape in JSON text: alone it decodes to no character, a pair to one, so a
# match is checked further.
LONE_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")

# Simple pair formats: (key of the question, key of the answer).
PAIR_KEYS = (("input", "output"), ("prompt", "completion"), ("question", "answer"))
# Keys that mark an object as one conversation record (of any accepted format).
RECORD_KEYS = {key for pair in PAIR_KEYS for key in pair} | {"instruction", "conversations", "messages"}
KNOWN_FORMATS = (
    "input/output, instruction/output, prompt/completion, question/answer, "
    "conversations (ShareGPT) or messages (OpenAI)"
)


# -- reading --------------------------------------------------------------------------------


def read_records(path: str | os.PathLike) -> list[tuple[str, Any]]:
    """Return (location, raw record) pairs; location reads "record 3", "line 7" or "row 2"."""
    return list(iter_records(path))


def iter_records(path: str | os.PathLike, keep_cut_short: bool = False) -> Iterator[tuple[str, Any]]:
    """Yield (location, raw record) pairs; JSON Lines are read one line at a time.

    A chat log may hold several versions of one exchange (a verdict given after it was logged
    is appended as a new version with the same `exchange_id`): only the last is yielded, in
    the place of the first, so each exchange is one record with its final verdict. Ordering
    them needs the whole file, so a JSON Lines file is streamed only when it holds no
    `exchange_id` at all.

    Raises DataFormatError naming the file and the place for anything unreadable: a missing
    or unreadable file, an unsupported suffix, text that is not UTF-8, invalid JSON, numbers
    JSON cannot hold (NaN, Infinity, more digits than Python reads) or lone surrogates.
    `keep_cut_short`: a JSON Lines record cut short by a crash is yielded as a `CutShort`
    marker (for `validate` to count) instead of being skipped with a warning.
    """
    path = Path(path)
    records = _iter_all(path, keep_cut_short)
    if path.suffix.lower() in JSONL_SUFFIXES and not _mentions(path, f'"{EXCHANGE_ID}"'):
        yield from records
        return
    latest: list[tuple[str, Any]] = []
    place: dict[str, int] = {}
    for where, record in records:
        exchange_id = record.get(EXCHANGE_ID) if isinstance(record, dict) else None
        if isinstance(exchange_id, str) and exchange_id in place:
            latest[place[exchange_id]] = (where, record)
            continue
        if isinstance(exchange_id, str):
            place[exchange_id] = len(latest)
        latest.append((where, record))
    yield from latest


def _mentions(path: Path, text: str) -> bool:
    """Does the file's text contain `text`? Read in blocks; an unreadable file says yes (the
    reader then reports why it cannot be read)."""
    needle = text.encode("utf-8")
    try:
        with open(path, "rb") as handle:
            tail = b""
            for block in iter(lambda: handle.read(1 << 20), b""):
                if needle in tail + block:
                    return True
                tail = block[-len(needle) :]
    except OSError:
        return True
    return False


def _iter_all(path: Path, keep_cut_short: bool = False) -> Iterator[tuple[str, Any]]:
    """Every (location, raw record) pair of the file, versions of one exchange included."""
    suffix = path.suffix.lower()
    if not path.exists():
        raise DataFormatError(f"{path}: no such file")
    if path.is_dir():
        raise DataFormatError(f"{path}: is a directory, expected a data file ({', '.join(SUPPORTED_SUFFIXES)})")
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataFormatError(
            f"{path}: unsupported file type '{suffix or 'no suffix'}' (supported: {', '.join(SUPPORTED_SUFFIXES)})"
        )
    try:
        if suffix in TABLE_SUFFIXES:
            yield from _table_records(path, TABLE_SUFFIXES[suffix])
        elif suffix in JSONL_SUFFIXES:
            with open(path, "rb") as handle:
                yield from _jsonl_records(path, enumerate(handle, start=1), keep_cut_short)
        else:
            yield from _json_records(path)
    except OSError as error:
        raise DataFormatError(f"{path}: cannot be read ({error.strerror or error})") from None


def iter_conversations(path: str | os.PathLike, keep_cut_short: bool = False) -> Iterator[dict]:
    """Yield the file's conversations normalised, one at a time (a large file is never held
    whole); raises DataFormatError for a bad record or a file without conversations.
    `keep_cut_short` as for `iter_records`: the marker is yielded as it is."""
    path = Path(path)
    count, prefix = 0, f"{path}: "
    for where, record in iter_records(path, keep_cut_short):
        yield record if isinstance(record, CutShort) else normalize_record(record, prefix + where)
        count += 1
    if not count:
        raise DataFormatError(f"{path}: contains no conversations")


def _decoded(path: Path, number: int, raw: bytes) -> str:
    """Line `number` of the file as text (a byte-order mark opening the file is dropped)."""
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as error:
        raise DataFormatError(
            f"{path}: line {number}: not valid UTF-8 (byte 0x{raw[error.start]:02x}); save the file as UTF-8"
        ) from None


def _json_records(path: Path) -> Iterator[tuple[str, Any]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataFormatError(
            f"{path}: line {line}: not valid UTF-8 (byte 0x{raw[error.start]:02x}); save the file as UTF-8"
        ) from None
    del raw
    if not text.strip():
        raise DataFormatError(f"{path}: the file is empty")
    try:
        data = _loads(text, path)
    except json.JSONDecodeError as error:
        invalid = DataFormatError(f"{path}: not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})")
        if error.msg == "Extra data":  # maybe JSON Lines in a .json file
            try:
                records = list(_jsonl_records(path, enumerate(text.splitlines(keepends=True), start=1)))
            except DataFormatError:
                raise invalid from None
            yield from records
            return
        raise invalid from None
    del text
    if isinstance(data, dict):
        wrapped = data.get("conversations")
        if isinstance(wrapped, list) and wrapped and not _is_sharegpt_turn(wrapped[0]):
            data = wrapped  # {"conversations": [record, ...]}
        elif RECORD_KEYS & data.keys():
            data = [data]  # a single conversation, which the original accepted too
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON array of conversations, got {_json_type(data)}")
    data.reverse()  # popped from the end: each record is freed once it has been handed on
    index = 0
    while data:
        yield f"record {index}", data.pop()
        index += 1


def _jsonl_records(
    path: Path, lines: Iterable[tuple[int, bytes | str]], keep_cut_short: bool = False
) -> Iterator[tuple[str, Any]]:
    """The records of JSON Lines given numbered, with their line ends, as read (bytes) or as
    text. A last line that does not parse and has no newline is a record whose write a crash cut
    short (any log can end so): skipped with a warning, or yielded as a `CutShort` marker."""
    seen = False
    for number, line in lines:
        record = _quick_loads(line)
        if record is not _SLOW:
            seen = True
            yield f"line {number}", record
            continue
        if isinstance(line, bytes):
            line = _decoded(path, number, line)
        if not line.strip():
            continue
        seen = True
        try:
            record = _loads(line, path, f"line {number}: ")
        except json.JSONDecodeError as error:
            if not line.endswith("\n"):
                if keep_cut_short:
                    yield f"line {number}", CutShort(f"{path}: line {number}")
                else:
                    print(
                        f"warning: {path}: line {number} is cut short (an interrupted write); skipped it",
                        file=sys.stderr,
                    )
                break
            raise DataFormatError(
                f"{path}: line {number}: not valid JSON: {error.msg} (column {error.colno})"
            ) from None
        yield f"line {number}", record
    if not seen:
        raise DataFormatError(f"{path}: the file is empty")


_SLOW = object()  # `_quick_loads`: this line is for `_loads`
# Deleting every other byte leaves a line's digits and opening brackets.
NOT_DIGITS_OR_BRACKETS = bytes(set(range(256)) - set(b"0123456789[{"))


def _quick_loads(line: bytes | str) -> Any:
    """orjson's reading of a line read as bytes, where it can only agree with `_loads`: valid
    UTF-8 JSON with fewer than 19 digits and opening brackets together (orjson reads integers
    beyond 64 bits as floats, Python refuses integers of more digits than it reads, and each
    parser has its own nesting limit). Anything else, including every line orjson refuses,
    returns `_SLOW`: `_loads` reads it (or says exactly what is wrong, as it always has).
    orjson reads a line several times faster than the standard library."""
    if isinstance(line, str) or len(line.translate(None, NOT_DIGITS_OR_BRACKETS)) >= 19:
        return _SLOW
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return _SLOW


def _loads(text: str, path: Path, where: str = "") -> Any:
    """`json.loads` of strict JSON: what Python's parser accepts beyond JSON (NaN, Infinity,
    lone surrogates) and what it cannot read (deep nesting, huge integers) raise a one-line
    DataFormatError; invalid JSON raises json.JSONDecodeError for the caller to place."""
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise DataFormatError(
            f"{path}: {where}JSON nested too deeply to read (arrays or objects "
            "inside each other about 1000 levels deep)"
        ) from None
    except _NumberError as error:
        raise DataFormatError(f"{path}: {where}{error}") from None
    if LONE_SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as error:
            raise DataFormatError(
                f"{path}: {where}holds a lone surrogate escape "
                f"(\\u{ord(error.object[error.start]):04x}), which is no character; "
                "remove it or escape the full pair"
            ) from None
    return value


class _NumberError(ValueError):
    """A number JSON allows but Python cannot hold, or one Python allows but JSON does not."""


def _refuse_constant(name: str) -> float:
    raise _NumberError(f"{name} is not a JSON number (write it as a string or leave it out)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NumberError(f"the number {text[:20]} is too large for a 64-bit float")
    return value


def _bounded_int(text: str) -> int:
    limit = sys.get_int_max_str_digits()
    digits = len(text.lstrip("-"))
    if limit and digits > limit:
        raise _NumberError(
            f"a number of {digits} digits is longer than the {limit} digits Python reads; write it as a string"
        )
    return int(text)


def _table_records(path: Path, kind: str) -> Iterator[tuple[str, Any]]:
    """Rows of a CSV, TSV or Parquet file read with `datasets`, as dicts keyed by column.

    CSV and TSV cells are read as text (an answer "007" stays "007", an empty cell is ""),
    numbered as a spreadsheet shows them: the header is row 1. Parquet keeps its column types,
    so ShareGPT or OpenAI conversations can be nested columns; its rows count from 0.
    """
    import tempfile

    import datasets
    from datasets.exceptions import DatasetGenerationError

    separator = "\t" if kind == "tsv" else ","
    columns = _csv_header(path, separator) if kind != "parquet" else []
    bars_were_on, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    # A table is read in seconds, and a broken one becomes our one-line error: no bars, no log.
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 1)
    try:
        with tempfile.TemporaryDirectory(prefix="mtnsails-table-") as cache:
            if kind == "parquet":
                table = datasets.Dataset.from_parquet(str(path), cache_dir=cache, keep_in_memory=True)
            else:
                table = datasets.Dataset.from_csv(
                    str(path),
                    cache_dir=cache,
                    keep_in_memory=True,
                    sep=separator,
                    na_filter=False,
                    features=datasets.Features({name: datasets.Value("string") for name in columns}),
                )
    except (ValueError, DatasetGenerationError) as error:
        cause = error.__cause__ or error
        message = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise DataFormatError(f"{path}: not a readable {kind.upper()} file: {message}") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()
    if not len(table):
        raise DataFormatError(f"{path}: the file is empty")
    first, label = (0, "record") if kind == "parquet" else (2, "row")
    number = first
    for batch in table.iter(batch_size=1024):
        for values in zip(*batch.values()):
            yield f"{label} {number}", dict(zip(batch.keys(), values))
            number += 1


def _csv_header(path: Path, separator: str) -> list[str]:
    """The column names in the first row of a CSV or TSV file."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        try:
            header = next(csv.reader(handle, delimiter=separator), None)
        except (UnicodeDecodeError, csv.Error) as error:
            raise DataFormatError(f"{path}: row 1: cannot read the column names ({error})") from None
    if not header or not any(name.strip() for name in header):
        raise DataFormatError(f"{path}: the file is empty")
    return header


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int)


def _is_sharegpt_turn(item: Any) -> bool:
    return isinstance(item, dict) and "from" in item and "value" in item


# -- normalising ----------------------------------------------------------------------------


def normalize_record(record: Any, where: str) -> dict:
    """Turn one record of any accepted format into the native form, or raise DataFormatError."""
    if (
        type(record) is dict
        and len(record) == 2
        and type(record.get("input")) is str
        and type(record.get("output")) is str
    ):
        return {"input": record["input"], "output": record["output"]}  # already native
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected an object, got {_json_type(record)}")
    if "conversations" in record:
        return _from_turns(_sharegpt_turns(record["conversations"], where), where)
    if "messages" in record:
        return _from_turns(openai_turns(record["messages"], where), where)
    if "instruction" in record:
        instruction = _string(record, "instruction", where)
        context = _string(record, "input", where, required=False)
        output = _string(record, "output", where)
        user_input = f"{instruction}\n\n{context}" if context.strip() else instruction
        return _native(user_input, output, record.get("system"), where)
    for question_key, answer_key in PAIR_KEYS:
        if question_key in record or answer_key in record:
            if question_key not in record or answer_key not in record:
                missing = answer_key if question_key in record else question_key
                raise DataFormatError(f"{where}: missing '{missing}' (expected one of: {KNOWN_FORMATS})")
            result = _native(
                _string(record, question_key, where), _string(record, answer_key, where), record.get("system"), where
            )
            if question_key == "input":
                history = record.get("history")
                if history:
                    result["history"] = _native_history(history, where)
                # keep the record's other fields (a chat log's timestamp, say)
                for key, value in record.items():
                    result.setdefault(key, value)
            return result
    raise DataFormatError(
        f"{where}: unrecognised record with keys {sorted(record)[:6]} (expected one of: {KNOWN_FORMATS})"
    )


def _native(user_input: str, output: str, system: Any, where: str) -> dict:
    result = {"input": user_input, "output": output}
    if system is not None:
        if not isinstance(system, str):
            raise DataFormatError(f"{where}: 'system' must be a string, got {_json_type(system)}")
        if system.strip():
            result["system"] = system
    return result


def _native_history(history: Any, where: str) -> list[dict]:
    return [
        {"input": _string(turn, "input", turn_where), "output": _string(turn, "output", turn_where)}
        for turn_where, turn in _objects(history, "history", where)
    ]


def _from_turns(turns: list[tuple[str, str]], where: str) -> dict:
    """A native record of the turns' exchanges (a trailing question without an answer teaches nothing)."""
    system, pairs, _ = split_turns(turns)
    if not pairs:
        raise DataFormatError(f"{where}: no user turn followed by an assistant answer")
    result = _native(pairs[-1][0], pairs[-1][1], system, where)
    if len(pairs) > 1:
        result["history"] = [{"input": q, "output": a} for q, a in pairs[:-1]]
    return result


# -- writing --------------------------------------------------------------------------------


def write_conversations(path: str | os.PathLike, conversations: Iterable[dict]) -> int:
    """Atomically write native conversations, one at a time: JSON Lines for `.jsonl`, else a
    JSON array. Returns how many were written; raises MtnsailsError when the file cannot be."""
    path = Path(path)
    require_output_directory(path)
    jsonl = path.suffix.lower() in JSONL_SUFFIXES
    count = 0
    try:
        with atomic_writer(path) as handle:
            for conversation in conversations:
                if jsonl:
                    handle.write(json.dumps(conversation, ensure_ascii=False) + "\n")
                else:  # the layout of json.dumps(list, indent=2), an item at a time
                    text = json.dumps(conversation, ensure_ascii=False, indent=2)
                    handle.write(("[\n  " if not count else ",\n  ") + text.replace("\n", "\n  "))
                count += 1
            if not jsonl:
                handle.write("\n]\n" if count else "[]\n")
    except OSError as error:
        raise MtnsailsError(f"{path}: cannot write the conversations ({error.strerror or error})") from None
    return count


def require_output_directory(path: str | os.PathLike) -> None:
    """Raise DataFormatError unless `path`'s directory exists: checked before long work, so a
    typo in an output path fails at once instead of after the report or the processing."""
    path = Path(path)
    if not path.parent.is_dir():
        raise DataFormatError(f"{path}: directory {path.parent} does not exist")
    try:  # modes do not stop root: only a real write tells whether the folder takes files
        descriptor, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
    except OSError as error:
        raise DataFormatError(f"{path}: cannot write into {path.parent} ({error.strerror})") from None
    os.close(descriptor)
    os.unlink(probe)
