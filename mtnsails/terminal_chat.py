"""`TerminalChat`: the chat loop of the `chat` command, over a `ChatInterface`.

In a terminal answers stream as they are generated; with piped stdin each line is one question
and each answer one line of stdout, so scripts can drive a chat. The engine knows nothing of
terminals: this module is the only one that reads a keyboard.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from mtnsails.chat import ChatInterface

EXIT_COMMANDS = {"/exit", "exit", "quit", "/quit"}


class TerminalChat:
    """Run a conversation with `chat` on stdin/stdout (closes `chat`'s log when it ends)."""

    def __init__(self, chat: ChatInterface, stdin: TextIO | None = None,
                 stdout: TextIO | None = None) -> None:
        self.chat = chat
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout

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
        """Handle /reset and the exit words: True = stop, False = handled, None = not a command."""
        if line in EXIT_COMMANDS:
            return True
        if line == "/reset":
            self.chat.reset()
            if echo:
                self._say("(conversation reset)")
            return False
        return None

    def _interactive(self) -> None:
        self._say(f"Chatting with {self.chat.path} ({self.chat.precision}). /reset starts over; "
                  "/exit, exit, quit or Ctrl-D leaves.")
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

            def show(piece: str) -> None:
                shown.append(piece)
                self._say(piece, end="")

            try:
                answer = self.chat.reply(line, on_text=show)
            except KeyboardInterrupt:
                self._say()
                return
            printed = "".join(shown)
            if len(printed) > len(answer) and "\n" not in printed[len(answer):]:
                extra = len(printed) - len(answer)  # erase the half sentence the limit cut
                print("\b \b" * extra, end="", file=self.stdout)
            self._say()

    def _scripted(self) -> None:
        for raw in self.stdin:
            line = raw.strip()
            if not line:
                continue
            command = self._command(line, echo=False)
            if command:
                return
            if command is None:
                self._say(self.chat.reply(line).replace("\n", " "))
