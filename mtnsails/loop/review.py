"""`LogReview`: walk a chat log one exchange at a time and keep, drop or correct each answer.

The reviewed data set is written to an output file (JSON array, or JSON Lines for `.jsonl`)
after every decision, atomically, so it is complete at every instant: the exchanges decided so
far as decided, every exchange not reviewed yet by default, which is keep unless the chat user
marked it bad (`"feedback": "bad"`: pre-dropped). The decisions live in a small state file
beside the output (`<output>.review.json`: the log's path and one decision per exchange, in log
order), so running the same review again goes on where it stopped, and picks up exchanges the
chat has logged since.

A kept answer keeps its record as logged (a bad mark the reviewer overrides becomes "good"); an
edited one becomes `"feedback": "fixed"` with the new `"output"`, `"model_output"` keeping what
the model said, as a `/fix` in chat would.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TextIO

from mtnsails.core.errors import MtnsailsError
from mtnsails.core.files import atomic_write_text, read_json_object
from mtnsails.data.handler import ConversationDataHandler
from mtnsails.data.records import require_output_directory, write_conversations

STATE_SUFFIX = ".review.json"
ACTIONS = {
    "k": "keep",
    "keep": "keep",
    "d": "drop",
    "drop": "drop",
    "e": "edit",
    "edit": "edit",
    "q": "quit",
    "quit": "quit",
}


def is_utf8(text: str) -> bool:
    """False for text holding undecodable bytes (surrogate escapes), which no file can store."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class LogReview:
    """The review of the chat log `log` into `output`, resumed from its state file if any.

    Raises MtnsailsError (nothing written) when `log` is no readable conversation file, when
    `output` is the log itself, or when `output` exists but is not this log's review.
    """

    def __init__(self, log: str | os.PathLike, output: str | os.PathLike) -> None:
        self.log = Path(log)
        self.output = Path(output)
        self.state_path = self.output.with_name(self.output.name + STATE_SUFFIX)
        if self.output.resolve() == self.log.resolve():
            raise MtnsailsError(
                f"{self.output}: is the log itself; choose another output (review never overwrites the log)"
            )
        require_output_directory(self.output)
        self.records = ConversationDataHandler(self.log).conversations
        self.decisions: list[str | dict] = self._read_state()

    # -- state -----------------------------------------------------------------------------

    def _read_state(self) -> list[str | dict]:
        if not self.state_path.exists():
            if self.output.exists():
                raise MtnsailsError(
                    f"{self.output}: exists and is not a review of {self.log} "
                    f"(no {self.state_path.name} beside it); choose another output"
                )
            return []
        state = read_json_object(self.state_path)
        if state.get("log") != str(self.log.resolve()):
            raise MtnsailsError(
                f"{self.state_path}: is the review of another log ({state.get('log')}); choose another output"
            )
        decisions = state.get("decisions")
        if not isinstance(decisions, list) or not all(
            decision in ("keep", "drop") or (isinstance(decision, dict) and isinstance(decision.get("edit"), str))
            for decision in decisions
        ):
            raise MtnsailsError(
                f'{self.state_path}: \'decisions\' must be a list of "keep", "drop" or {{"edit": TEXT}}'
            )
        if len(decisions) > len(self.records):
            raise MtnsailsError(
                f"{self.state_path}: {len(decisions)} exchanges were reviewed but "
                f"{self.log} now holds {len(self.records)}; the log was changed "
                "since: start a review of it into another output"
            )
        return decisions

    def _save(self) -> None:
        """The state first: should the output then be lost, the next run writes it again."""
        state = {"log": str(self.log.resolve()), "decisions": self.decisions}
        try:
            atomic_write_text(self.state_path, json.dumps(state, ensure_ascii=False, indent=1) + "\n")
            write_conversations(self.output, self.kept())
        except OSError as error:
            raise MtnsailsError(f"{self.output}: cannot be written ({error.strerror})") from None

    # -- decisions -------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """How many exchanges are reviewed (the next one's index)."""
        return len(self.decisions)

    @property
    def done(self) -> bool:
        """Every exchange of the log is reviewed."""
        return self.position >= len(self.records)

    def decide(self, action: str, answer: str | None = None) -> None:
        """Decide on the next exchange: "keep", "drop", or "edit" with the right `answer`; the
        state and the output are written before this returns."""
        if self.done:
            raise ValueError("every exchange is reviewed already")
        if action == "edit":
            if not (answer or "").strip():
                raise MtnsailsError("an edit needs the right answer (it is blank)")
            if not is_utf8(answer):
                raise MtnsailsError("an edit's answer must be valid UTF-8 text")
            self.decisions.append({"edit": answer.strip()})
        elif action in ("keep", "drop"):
            self.decisions.append(action)
        else:
            raise ValueError(f"action {action!r} is not keep, drop or edit")
        self._save()

    def default(self, record: dict) -> str:
        """What happens to an exchange nobody reviewed: drop when marked bad in chat, else keep."""
        return "drop" if record.get("feedback") == "bad" else "keep"

    def kept(self) -> list[dict]:
        """The output's records: decided exchanges as decided, the others by `default`."""
        result = []
        for index, record in enumerate(self.records):
            decision = self.decisions[index] if index < self.position else self.default(record)
            if decision == "drop":
                continue
            if decision == "keep":
                result.append({**record, "feedback": "good"} if record.get("feedback") == "bad" else record)
            else:
                said = record.get("model_output", record["output"])
                result.append({**record, "output": decision["edit"], "feedback": "fixed", "model_output": said})
        return result

    # -- the terminal walk -----------------------------------------------------------------

    def walk(self, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
        """Ask about each exchange not reviewed yet until the end or `q`. In a terminal the
        questions are prompts; piped, each line of stdin is one answer: Enter (the default),
        k, d, "e TEXT" (or e, then the text on the next line) or q. End of input is q."""
        stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
        interactive = stdin.isatty()

        def read(prompt: str) -> str | None:
            if interactive:
                try:
                    return input(prompt).strip()
                except EOFError:
                    print(file=stdout)
                    return None
            print(prompt.rstrip(), file=stdout, flush=True)  # piped: one line, for the transcript
            # Bytes, decoded line by line: a strict text stdin would refuse a bad line and drop the
            # answers it had read ahead with it. Undecodable bytes stay as surrogates (`is_utf8`).
            raw = getattr(stdin, "buffer", None)
            line = raw.readline().decode("utf-8", "surrogateescape") if raw is not None else stdin.readline()
            return line.strip() if line else None

        def say(text: str = "") -> None:
            print(text, file=stdout, flush=True)

        if self.done:
            self._save()  # the log may have changed since: the output follows it
        while not self.done:
            record = self.records[self.position]
            say(self.describe(record))
            default = self.default(record)
            other = "k = keep" if default == "drop" else "d = drop"
            while True:
                reply = read(f"Enter = {default}, {other}, e = edit the answer, q = quit: ")
                if reply is None:
                    reply = "q"
                if not is_utf8(reply):
                    say("(that line is not valid UTF-8 text: answer again)")
                    continue
                name, _, text = reply.partition(" ")
                if not reply:
                    action = default
                elif name.lower() in ACTIONS:
                    action = ACTIONS[name.lower()]
                else:
                    say(f"({reply!r} is no answer here: Enter, k, d, e TEXT or q)")
                    continue
                if action == "edit" and not text.strip():
                    text = read("Right answer: ") or ""
                    if not is_utf8(text):
                        say("(that answer is not valid UTF-8 text: the exchange is not decided)")
                        continue
                    if not text.strip():
                        say("(no answer given: the exchange is not decided)")
                        continue
                break
            if action == "quit":
                self._save()
                say(
                    f"Stopped at {self.position + 1}/{len(self.records)}. {self.summary()} "
                    "Run the same command to go on."
                )
                return
            self.decide(action, text if action == "edit" else None)
        say(f"Reviewed all {len(self.records)} exchanges. {self.summary()}")

    def describe(self, record: dict) -> str:
        """The exchange as the walk shows it, headed by its place ("[3/17]") and verdict."""
        verdict = record.get("feedback")
        lines = [f"[{self.position + 1}/{len(self.records)}]" + (f" marked {verdict} in chat" if verdict else "")]
        if record.get("system"):
            lines.append(f"  system:    {record['system']}")
        if record.get("history"):
            lines.append(f"  ({len(record['history'])} earlier exchange(s) in context)")
        lines.append(f"  You:       {record['input']}")
        lines.append(f"  Assistant: {record['output']}")
        if "model_output" in record:
            lines.append(f"  (the model said: {record['model_output']})")
        return "\n".join(lines)

    def summary(self) -> str:
        """What the output holds, e.g. "Kept 12 of 17 (1 edited); wrote out.json"."""
        kept = self.kept()
        edited = sum(1 for decision in self.decisions if isinstance(decision, dict))
        return (
            f"Kept {len(kept)} of {len(self.records)} ({edited} edited, "
            f"{len(self.records) - self.position} not reviewed); wrote {self.output}."
        )
