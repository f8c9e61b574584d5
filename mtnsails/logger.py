"""Crash-safe conversation logging: chat exchanges become training data without slowing the chat.

`log()` only serialises the record and queues it; a background thread writes it at once
(while the chat generates its next answer):

- `.jsonl` / `.ndjson`: one JSON object per line, appended with a single `write` + `fsync`;
- anything else (`.json`, the original default `./chat_history.json`): a JSON array, rewritten
  through a temp file + `fsync` + `os.replace` per batch, so the file on disk is a complete,
  valid array at every instant, also after `kill -9` in the middle of a write. That costs
  O(log size) per batch, which is nothing next to generating an answer.

Both formats hold records `{"input", "output", "timestamp", **extra}` that
`ConversationDataHandler` loads and `train` uses directly. One process per `.json` log: two
processes rewriting the same array would drop each other's records (JSON Lines files may be
shared, appends do not clash).

>>> with ConversationLogger(tmp / "chat.jsonl") as log:       # doctest: +SKIP
...     log.log("What is ONNX?", "An open format for models.")
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

from mtnsails.data import JSONL_SUFFIXES
from mtnsails.errors import MtnsailsError
from mtnsails.files import atomic_write_text

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
        # .json: every record's serialised text (the whole array is rewritten per batch);
        # .jsonl: only the bytes not yet appended.
        self._pending = b""
        self._records: list[str] = self._read_existing()
        self._queue: list[str | object] = []
        self._condition = threading.Condition()
        self._queued = 0  # records accepted by log()
        self._attempted = 0  # of those, records the writer has tried to write
        self._written = 0  # of those, records on disk (fsynced)
        self._error: BaseException | None = None  # last write failure, cleared by a success
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"log-writer:{self.path.name}",
                                        daemon=True)
        self._thread.start()
        atexit.register(self._close_at_exit)

    # -- public API ------------------------------------------------------------------------

    def log(self, user_input: str, output: str, **extra) -> None:
        """Queue one exchange for the writer. `extra` (JSON-serialisable) joins the record.

        Returns at once unless the previous exchange is still being written (see the class
        docstring); a failed write does not block it (`flush()` reports failures).
        """
        if not isinstance(user_input, str) or not isinstance(output, str):
            raise TypeError("log() takes the user input and the answer as strings")
        if "input" in extra:
            raise ValueError("log(): 'input' is the first argument, not an extra field")
        record = {"input": user_input, "output": output,
                  "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
        record.update(extra)
        text = json.dumps(record, ensure_ascii=False)  # here, so a bad extra fails the caller
        with self._condition:
            while self._attempted < self._queued and self._thread.is_alive() and not self._closed:
                self._condition.wait(self.flush_interval)
            if self._closed:  # checked after waiting: close() may have come meanwhile
                raise ValueError(f"{self.path}: the conversation logger is closed")
            self._queue.append(text)
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

    def __enter__(self) -> "ConversationLogger":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- reading what is there -------------------------------------------------------------

    def _read_existing(self) -> list[str]:
        """Check an existing log (so it is never overwritten by mistake) and load a JSON array."""
        if not self.path.exists():
            return []
        if self.path.is_dir():
            raise MtnsailsError(f"{self.path}: is a directory, expected a chat log file")
        try:
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise MtnsailsError(f"{self.path}: existing chat log is not UTF-8 text; "
                                "choose another log file") from None
        if self.jsonl:
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    self._parse(line, f"line {number}")
            # a last line without its newline (written by another tool) must not swallow ours
            self._pending = b"\n" if text and not text.endswith("\n") else b""
            return []
        if not text.strip():
            return []
        data = self._parse(text, "the file")
        if not isinstance(data, list):
            raise MtnsailsError(f"{self.path}: existing chat log is not a JSON array "
                                "of conversations; choose another log file")
        return [json.dumps(record, ensure_ascii=False) for record in data]

    def _parse(self, text: str, where: str):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise MtnsailsError(f"{self.path}: existing chat log is not valid JSON ({where}: "
                                f"{error.msg} at line {error.lineno}, column {error.colno}); "
                                "fix it or choose another log file") from None

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
                    print(f"warning: {self.path}: cannot write the chat log ({error}); "
                          "will retry with the next exchange", file=sys.stderr)
                self._error = error
                self._attempted = taken
                if error is None:
                    self._written = taken
                self._condition.notify_all()

    def _write(self, records: list[str]) -> Exception | None:
        """Put `records` and any left from a failed write on disk; return the failure if any."""
        try:
            if self.jsonl:
                self._pending += "".join(record + "\n" for record in records).encode("utf-8")
                self._append_pending()
            else:
                self._records.extend(records)
                atomic_write_text(self.path, self._array_text())
                _fsync_directory(self.path.parent)  # make the rename itself durable
        except Exception as error:  # noqa: BLE001 - reported by flush()/close(), never dropped
            return error
        return None

    def _append_pending(self) -> None:
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            while self._pending:
                count = os.write(fd, self._pending)
                self._pending = self._pending[count:]  # a short write keeps only the rest
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_directory(self.path.parent)

    def _array_text(self) -> str:
        if not self._records:
            return "[]\n"
        return "[\n" + ",\n".join("  " + record for record in self._records) + "\n]\n"

    # -- shutdown --------------------------------------------------------------------------

    def _failure(self, missing: int) -> MtnsailsError:
        reason = self._error if self._error is not None else "the writer thread stopped"
        return MtnsailsError(f"{self.path}: {missing} logged exchange(s) not saved: {reason}")

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except MtnsailsError as error:
            print(f"error: {error}", file=sys.stderr)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
