"""Crash-safe conversation logging: chat exchanges become training data without slowing the chat.

`log()` only serialises the record and queues it; a background thread writes it at once
(while the chat generates its next answer):

- `.jsonl` / `.ndjson`: one JSON object per line, appended with a single `write` + `fsync`;
- anything else (`.json`, the original default `./chat_history.json`): a JSON array, rewritten
  through a temp file + `fsync` + `os.replace` per batch, so the file on disk is a complete,
  valid array at every instant, also after `kill -9` in the middle of a write. That costs
  O(log size) per batch, which is nothing next to generating an answer.

Both formats hold records `{"input", "output", "timestamp", "exchange_id", **extra}` that
`ConversationDataHandler` loads and `train` uses directly. Several processes may log to one file:
each write holds an exclusive `flock` (on the `.jsonl` itself; for a `.json` array on a
`.<name>.lock` file beside it, since the array is replaced by each rewrite), and a `.json` writer
re-reads the array under that lock, so no process drops another's records. A `.jsonl` append that
fails part-way (disk full, file-size limit) is cut back to the last whole record; a torn last
line that a crash left behind anyway is dropped with a warning when the log is opened.

`amend()` changes a logged record later (a chat verdict: `"feedback"`, a corrected `"output"`)
as crash-safely as it was logged: a `.json` log's array holds the new version in the old one's
place; a `.jsonl` log gets the whole new version as one more line with the same `exchange_id`.
Readers keep the last version of each exchange id in the place of its first
(`mtnsails.data.read_records` does), so every reader sees one record per exchange.

>>> with ConversationLogger(tmp / "chat.jsonl") as log:       # doctest: +SKIP
...     log.log("What is ONNX?", "An open format for models.")
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

from mtnsails.core.errors import DataFormatError, MtnsailsError
from mtnsails.core.files import atomic_write_text
from mtnsails.data.records import EXCHANGE_ID, JSONL_SUFFIXES, normalize_record

try:
    import fcntl
except ImportError:  # Windows: no flock; one process per log there
    fcntl = None

_STOP = object()  # queued by close(): the writer drains what came before it, then exits


class ConversationLogger:
    """Append chat exchanges to a JSON or JSON Lines file from a background writer thread.

    Args:
        path: the log file; its suffix picks the format (`.jsonl`/`.ndjson` lines, else a
            JSON array). Missing parent directories are created. An existing log is kept and
            appended to; one that is not a valid log raises `MtnsailsError` and is left alone.
        flush_interval: how often (seconds) the writer and waiting callers wake up to check
            on each other. Records never wait for it: the writer writes as soon as they arrive
            and batches only those that queue up during a write, so a record reaches the disk
            one write after it was logged (the original API's auto-flush setting maps here).

    `log()` first waits until the exchanges logged before are on disk. Normally they already
    are (the writer stored them while the next answer was being generated), so the caller never
    waits unless the disk is slower than the model; in exchange at most the newest exchange is
    ever held only in memory, which is what lets a chat promise that after `kill -9` the log
    holds every exchange whose answer it printed before the last one.

    Thread-safe: any number of threads may call `log()`. `flush()` and `close()` raise
    `MtnsailsError` if records could not be written (the writer retries them with the next
    batch, so nothing is dropped while the process lives). An atexit hook closes the logger.
    """

    def __init__(self, path: str | os.PathLike, flush_interval: float = 1.0) -> None:
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be positive, got {flush_interval}")
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.jsonl = self.path.suffix.lower() in JSONL_SUFFIXES
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Records not yet on disk: .json (exchange id, serialised text), .jsonl the bytes to append.
        self._unwritten: list[tuple[str, str]] = []
        self._pending = b""
        self._read_existing()
        self._logged: dict[str, dict] = {}  # this logger's records by exchange id, for amend()
        self._queue: list[tuple[str, str] | object] = []
        self._condition = threading.Condition()
        self._queued = 0  # records accepted by log()
        self._attempted = 0  # of those, records the writer has tried to write
        self._written = 0  # of those, records on disk (fsynced)
        self._error: BaseException | None = None  # last write failure, cleared by a success
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"log-writer:{self.path.name}", daemon=True)
        self._thread.start()
        atexit.register(self._close_at_exit)

    # -- public API ------------------------------------------------------------------------

    def log(self, user_input: str, output: str, **extra) -> str:
        """Queue one exchange for the writer and return its exchange id (for `amend`).
        `extra` (JSON-serialisable) joins the record.

        Returns at once unless the previous exchange is still being written (see the class
        docstring); a failed write does not block it (`flush()` reports failures).
        """
        if not isinstance(user_input, str) or not isinstance(output, str):
            raise TypeError("log() takes the user input and the answer as strings")
        for key in ("input", EXCHANGE_ID):
            if key in extra:
                raise ValueError(f"log(): '{key}' is not an extra field")
        record = {
            "input": user_input,
            "output": output,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            EXCHANGE_ID: uuid.uuid4().hex,
        }
        record.update(extra)
        self._enqueue(record, wait=True)
        return record[EXCHANGE_ID]

    def amend(self, exchange_id: str, **changes) -> dict:
        """Queue a new version of an exchange this logger logged and return it: `changes`
        replace its fields, a change to None removes one. `flush()` then waits for it.

        Raises KeyError for an exchange id this logger did not log.
        """
        for key in ("input", EXCHANGE_ID, "timestamp"):
            if key in changes:
                raise ValueError(f"amend(): '{key}' of a logged exchange does not change")
        record = {**self._logged[exchange_id], **changes}
        self._enqueue({key: value for key, value in record.items() if value is not None}, wait=False)
        return dict(self._logged[exchange_id])

    def _enqueue(self, record: dict, wait: bool) -> None:
        text = json.dumps(record, ensure_ascii=False)  # here, so a bad field fails the caller
        with self._condition:
            while wait and self._attempted < self._queued and self._thread.is_alive() and not self._closed:
                self._condition.wait(self.flush_interval)
            if self._closed:  # checked after waiting: close() may have come meanwhile
                raise ValueError(f"{self.path}: the conversation logger is closed")
            self._logged[record[EXCHANGE_ID]] = record
            self._queue.append((record[EXCHANGE_ID], text))
            self._queued += 1
            self._condition.notify_all()

    def flush(self) -> None:
        """Block until every record logged so far is on disk (fsynced); raise `MtnsailsError`
        naming the cause if the writer's last attempt failed. Returns at once when it is caught up.
        """
        with self._condition:
            target = self._queued
            while self._attempted < target and self._thread.is_alive():
                self._condition.wait(self.flush_interval)
            if self._written < target:
                raise self._failure(target - self._written)

    def close(self) -> None:
        """Write everything still queued and stop the writer thread. Safe to call twice."""
        with self._condition:
            if self._closed:
                return
            self._closed = True
            self._queue.append(_STOP)
            self._condition.notify_all()
        atexit.unregister(self._close_at_exit)
        self._thread.join()
        with self._condition:
            if self._written < self._queued:
                raise self._failure(self._queued - self._written)

    @property
    def written(self) -> int:
        """Records this logger has put on disk so far."""
        return self._written

    def __enter__(self) -> ConversationLogger:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- reading what is there -------------------------------------------------------------

    def _read_existing(self) -> None:
        """Check an existing log, so that it is never overwritten by mistake."""
        check_log_path(self.path)
        if not self.path.exists():
            return
        if self.jsonl:
            with self._locked(self.path) as handle:
                self._check_lines(handle)
        else:
            self._read_array()

    def _read_text(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MtnsailsError(f"{self.path}: existing chat log is not UTF-8 text; choose another log file") from None

    def _check_lines(self, handle) -> None:
        """Check every line of an existing .jsonl log (under its lock); cut off a torn last line."""
        raw = handle.read()
        lines = self._read_text(raw).splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            if number == len(lines) and not raw.endswith(b"\n"):
                try:
                    json.loads(line)
                except json.JSONDecodeError:  # a record whose write was cut short by a crash
                    handle.truncate(raw.rindex(b"\n") + 1 if b"\n" in raw else 0)
                    print(
                        f"warning: {self.path}: line {number} is cut short (an interrupted write); dropped it",
                        file=sys.stderr,
                    )
                    return
                # a whole last line without its newline (another tool's) must not swallow ours
                self._pending = b"\n"
                return
            self._check_record(self._parse(line, f"line {number}"), f"line {number}")

    def _read_array(self) -> list:
        """The records of the .json log as it is on disk now ([] when it is missing or empty)."""
        try:
            text = self._read_text(self.path.read_bytes())
        except FileNotFoundError:
            return []
        if not text.strip():
            return []
        data = self._parse(text, "the file")
        if not isinstance(data, list):
            raise MtnsailsError(
                f"{self.path}: existing chat log is not a JSON array of conversations; choose another log file"
            )
        for index, record in enumerate(data):
            self._check_record(record, f"record {index}")
        return data

    def _check_record(self, record, where: str) -> None:
        """Refuse a file whose records are no conversations: appending would mix two kinds."""
        try:
            normalize_record(record, where)
        except DataFormatError as error:
            raise MtnsailsError(
                f"{self.path}: existing file is not a chat log ({error}); choose another log file"
            ) from None

    def _parse(self, text: str, where: str):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise MtnsailsError(
                f"{self.path}: existing chat log is not valid JSON ({where}: "
                f"{error.msg} at line {error.lineno}, column {error.colno}); "
                "fix it or choose another log file"
            ) from None

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        taken = 0  # records taken off the queue so far
        stopping = False
        while not stopping:
            with self._condition:
                while not self._queue:
                    self._condition.wait(self.flush_interval)
                batch, self._queue = self._queue, []
            records = [item for item in batch if item is not _STOP]
            stopping = len(records) < len(batch)
            taken += len(records)
            error = self._write(records)
            with self._condition:
                if error is not None and self._error is None:
                    print(
                        f"warning: {self.path}: cannot write the chat log ({error}); will retry with the next exchange",
                        file=sys.stderr,
                    )
                self._error = error
                self._attempted = taken
                if error is None:
                    self._written = taken
                self._condition.notify_all()

    def _write(self, records: list[tuple[str, str]]) -> Exception | None:
        """Put `records` ((exchange id, text) pairs) and any left from a failed write on disk;
        return the failure if any."""
        try:
            if self.jsonl:
                self._pending += "".join(text + "\n" for _, text in records).encode("utf-8")
                self._append_pending()
            else:
                self._unwritten.extend(records)
                self._rewrite_array()
        except Exception as error:  # noqa: BLE001 - reported by flush()/close(), never dropped
            return error
        return None

    def _append_pending(self) -> None:
        """Append the pending bytes whole, or not at all: a failure part-way (disk full, a
        file-size limit) cuts the file back, so no reader ever meets half a record."""
        created = not self.path.exists()
        with self._locked(self.path) as handle:
            size = os.fstat(handle.fileno()).st_size
            try:
                written = 0
                while written < len(self._pending):  # a short write is followed by the rest
                    written += os.write(handle.fileno(), self._pending[written:])
                os.fsync(handle.fileno())
            except BaseException:
                os.ftruncate(handle.fileno(), size)
                raise
            self._pending = b""
        if created:
            _fsync_directory(self.path.parent)

    def _rewrite_array(self) -> None:
        """Rewrite the .json array as it is on disk now plus the unwritten records, under the
        lock, so that records another process added meanwhile are kept. A new version of an
        exchange on disk (`amend`) takes its place."""
        lock = self.path.with_name(f".{self.path.name}.lock")
        with self._locked(lock):
            on_disk = self._read_array()
            records = [json.dumps(record, ensure_ascii=False) for record in on_disk]
            place = {
                record[EXCHANGE_ID]: index
                for index, record in enumerate(on_disk)
                if isinstance(record, dict) and isinstance(record.get(EXCHANGE_ID), str)
            }
            for exchange_id, text in self._unwritten:
                if exchange_id in place:
                    records[place[exchange_id]] = text
                else:
                    place[exchange_id] = len(records)
                    records.append(text)
            body = ",\n".join("  " + record for record in records)
            atomic_write_text(self.path, f"[\n{body}\n]\n" if records else "[]\n")
            _fsync_directory(self.path.parent)  # make the rename itself durable
        self._unwritten = []

    @staticmethod
    @contextlib.contextmanager
    def _locked(path: Path):
        """`path` opened for reading and appending (created private if missing), with an
        exclusive flock."""
        with open(os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600), "a+b") as handle:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file closes
            handle.seek(0)
            yield handle

    # -- shutdown --------------------------------------------------------------------------

    def _failure(self, missing: int) -> MtnsailsError:
        reason = self._error if self._error is not None else "the writer thread stopped"
        return MtnsailsError(f"{self.path}: {missing} logged exchange(s) not saved: {reason}")

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except MtnsailsError as error:
            print(f"error: {error}", file=sys.stderr)


def check_log_path(path: str | os.PathLike) -> None:
    """Raise MtnsailsError when `path` cannot be a chat log file (a directory, or below a file)."""
    path = Path(path)
    if path.is_dir():
        raise MtnsailsError(f"{path}: is a directory, expected a chat log file")
    above = next((folder for folder in path.parents if folder.exists()), None)
    if above is not None and not above.is_dir():
        raise MtnsailsError(f"{path}: {above} is a file, so the chat log cannot be created there")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
