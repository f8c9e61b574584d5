"""`TerminalChat`: the chat loop of the `chat` command, over a `ChatSession`.

In a terminal answers stream as they are generated; with piped stdin each line is one question
and each answer one line of stdout, so scripts can drive a chat. The engine knows nothing of
terminals: this module is the only one that reads a keyboard.

`/good`, `/bad` and `/fix TEXT` give the last answer a verdict (`ChatSession.feedback`), each
acknowledged by one line in parentheses once it is saved; with `ask_feedback` the chat asks
after every answer (Enter = good, b = bad, any other text = the right answer; piped, the line
after each question is that reply).
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, TextIO

from mtnsails.core.errors import MtnsailsError
from mtnsails.inference.answer_text import one_line

if TYPE_CHECKING:
    from mtnsails.inference.session import ChatSession

EXIT_COMMANDS = {"/exit", "exit", "quit", "/quit"}
COMMANDS = (
    "/good, /bad or /fix TEXT rate the last answer; /reset starts over; /reload opens a replaced model; /exit leaves"
)
SLASH_WORD = re.compile(r"/[A-Za-z]+")  # what a command looks like; a path such as /usr/bin does not
FEEDBACK_PROMPT = "Feedback (Enter = keep, b = bad, or type the right answer): "
ACKNOWLEDGED = {"good": "marked good", "bad": "marked bad", "fixed": "answer fixed"}


def system_line(chat: ChatSession) -> str:
    """Which system prompt is in effect, for the user: "system prompt: '...'" or "... none"."""
    return f"system prompt: {chat.system!r}" if chat.system else "system prompt: none"


def announce_system(chat: ChatSession) -> None:
    """Say on stderr which system prompt is in effect, when there is one (stdout holds answers)."""
    if chat.system:
        print(system_line(chat), file=sys.stderr, flush=True)


def note_answer(chat: ChatSession, question: str) -> None:
    """Say on stderr what the user needs to know of the last answer to `question`: the trained
    question it was asked as, when the words differ (so a wrong match shows), and a token limit
    that stopped it."""
    match = chat.last_match
    if match is not None and match.question.casefold().strip() != question.casefold().strip():
        print(f"note: asked as the trained question {match.question!r}", file=sys.stderr, flush=True)
    if chat.last_stats is not None and chat.last_stats.truncated:
        print(
            f"note: the answer reached the limit of {chat.generation.max_new_tokens} new tokens "
            "and may be missing its end; raise --max-tokens for longer answers",
            file=sys.stderr,
            flush=True,
        )


class TerminalChat:
    """Run a conversation with `chat` on stdin/stdout (closes `chat`'s log when it ends)."""

    def __init__(
        self, chat: ChatSession, stdin: TextIO | None = None, stdout: TextIO | None = None, ask_feedback: bool = False
    ) -> None:
        self.chat = chat
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.ask_feedback = ask_feedback

    def run(self, interactive: bool = True) -> None:
        """Streamed turns when `interactive` and stdin is a terminal, else one answer per line."""
        try:
            if interactive and self.stdin.isatty():
                self._interactive()
            else:
                self._scripted()
        finally:
            self.chat.close()

    def _say(self, *text: str, end: str = "\n") -> None:
        print(*text, end=end, file=self.stdout, flush=True)

    def _command(self, line: str, echo: bool) -> bool | None:
        """Handle /reset, /reload, the verdicts and the exit words (in any case): True = stop,
        False = handled, None = not a command. Any other line that is one "/word" is refused with
        the list of commands: a mistyped command must not reach the model, nor the log as training
        data (a question that starts with a path, "/tmp is full: what now?", is asked)."""
        name, _, text = line.partition(" ")
        if SLASH_WORD.fullmatch(name):
            name = name.lower()
        if line.lower() in EXIT_COMMANDS or (name in EXIT_COMMANDS and name.startswith("/")):
            return True
        if name == "/reload":  # e.g. after `promote` or `watch` replaced the model directory
            try:
                self.chat.reload()
            except MtnsailsError as error:
                print(f"reload failed, still the previous model: {error}", file=sys.stderr)
            else:
                if echo:
                    self._say(f"(reloaded {self.chat.engine.path}, {self.chat.engine.precision})")
            return False
        if name == "/reset":
            self.chat.reset()
            if echo:
                self._say("(conversation reset)")
            return False
        if name in ("/good", "/bad"):
            self._give(name[1:])
            return False
        if name == "/fix":
            self._give("fixed", text.strip())
            return False
        if SLASH_WORD.fullmatch(line):
            self._say(f"(unknown command {name}: {COMMANDS})")
            return False
        return None

    def _give(self, verdict: str, correction: str | None = None) -> None:
        """Give the verdict and say so once it is saved (or why it was not given)."""
        if verdict == "fixed" and not correction:
            self._say("(a fix needs the right answer: /fix TEXT)")
            return
        try:
            self.chat.feedback(verdict, correction)
        except MtnsailsError as error:
            self._say(f"({error})")
            return
        # Name the flag: a user who rates answers in an unlogged chat needs it to keep them.
        unsaved = (
            "" if self.chat.logger is not None else "; not saved: start chat with --log-conversations to keep feedback"
        )
        self._say(f"({ACKNOWLEDGED[verdict]}{unsaved})")

    def _reply_to_question(self, line: str | None, echo: bool) -> bool:
        """Act on the reply to the feedback question; True = leave the chat."""
        if line is None:
            return True
        command = self._command({"": "/good", "b": "/bad"}.get(line.lower(), line), echo)
        if command is None:
            self._give("fixed", line)
            return False
        return command

    def _interactive(self) -> None:
        self._say(
            f"Chatting with {self.chat.engine.path} ({self.chat.engine.precision}; {system_line(self.chat)}). "
            f"{COMMANDS} (so do exit, quit or Ctrl-D)."
        )
        while True:
            try:
                line = input("You: ").strip()
            except (EOFError, KeyboardInterrupt):
                self._say()
                return
            if not line:
                continue
            command = self._command(line, echo=True)
            if command is not None:
                if command:
                    return
                continue
            self._say("Assistant: ", end="")
            shown: list[str] = []

            def show(piece: str, shown: list[str] = shown) -> None:  # this answer's list
                shown.append(piece)
                self._say(piece, end="")

            try:
                answer = self.chat.reply(line, on_text=show)
            except KeyboardInterrupt:
                self._say()
                return
            printed = "".join(shown)
            if len(printed) > len(answer) and "\n" not in printed[len(answer) :]:
                extra = len(printed) - len(answer)  # erase the half sentence the limit cut
                print("\b \b" * extra, end="", file=self.stdout)
            self._say()
            note_answer(self.chat, line)
            if self.ask_feedback:
                try:
                    reply = input(FEEDBACK_PROMPT).strip()
                except (EOFError, KeyboardInterrupt):
                    self._say()
                    return
                if self._reply_to_question(reply, echo=True):
                    return

    def _scripted(self) -> None:
        announce_system(self.chat)
        lines = (raw.strip() for raw in self.stdin)
        for line in lines:
            if not line:
                continue
            command = self._command(line, echo=False)
            if command:
                return
            if command is None:
                self._say(one_line(self.chat.reply(line)))
                note_answer(self.chat, line)
                if self.ask_feedback and self._reply_to_question(next(lines, None), echo=False):
                    return
