"""`chat`: talk to an ONNX model in the terminal, answer one --prompt, or answer piped lines."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from mtnsails.core import settings
from mtnsails.core.errors import MtnsailsError
from mtnsails.inference.generation_config import GenerationConfig
from mtnsails.model_dir.metadata import DEFAULT_LOG_FILE

if TYPE_CHECKING:
    from mtnsails.inference.chat import ChatInterface

HELP = "chat with an ONNX model"
PRECISIONS = ("auto", "fp32", "int8", "int4")  # --precision of chat and serve
PROMPT_TOKENS = 256  # default --max-length: prompt tokens (history + question) given to the model


def add_precision_argument(group: argparse._ActionsContainer) -> None:
    """--precision, as chat, serve and evaluate take it."""
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="which model file to run; auto = the fastest present: int4, then int8, then fp32 (default: auto)",
    )


def add_arguments(parser: argparse.ArgumentParser, standalone: bool = True) -> None:
    """`standalone=False` (pipeline) leaves out --model-path, --max-length and --seed, which train declares."""
    group = parser.add_argument_group("chat")
    if standalone:
        group.add_argument("--model-path", required=True, help="ONNX model directory (from convert)")
        group.add_argument(
            "--max-length",
            type=int,
            default=PROMPT_TOKENS,
            help=f"most prompt tokens (history + question) given to the model (default: {PROMPT_TOKENS})",
        )
    group.add_argument("--prompt", help="answer this one prompt and exit")
    group.add_argument(
        "--system",
        help='system prompt that opens every prompt; "" = none (default: the one the model was trained with, if any)',
    )
    group.add_argument(
        "--no-question-matching",
        action="store_true",
        help="ask every question in the user's words (default: a question that "
        "matches a trained one in other words is asked as the trained one)",
    )
    settings.add_arguments(group, GenerationConfig, skip=() if standalone else ("seed",))
    add_precision_argument(group)
    group.add_argument(
        "--threads",
        type=int,
        help="onnxruntime threads; fewer can be faster on a busy machine (default: physical cores)",
    )
    group.add_argument(
        "--log-conversations", action="store_true", help="append every exchange to --log-file (training format)"
    )
    group.add_argument(
        "--log-file",
        default=DEFAULT_LOG_FILE,
        help=f"conversation log, .json array or .jsonl (default: {DEFAULT_LOG_FILE})",
    )
    if standalone:
        group.add_argument(
            "--feedback",
            action="store_true",
            help="after each answer ask: Enter keeps it (good), b marks it bad, "
            "other text is the right answer; turns on --log-conversations",
        )


def check_prompt(args: argparse.Namespace) -> None:
    """Refuse a blank --prompt before any work: there is no question to answer or log."""
    if args.prompt is None:
        return
    if not args.prompt.strip():
        raise MtnsailsError("--prompt is blank: give the question to answer (or leave --prompt out to chat)")
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError as error:  # argv bytes that are not UTF-8 arrive as U+DC80..U+DCFF
        byte = ord(args.prompt[error.start]) - 0xDC00
        raise MtnsailsError(
            f"--prompt is not valid UTF-8 text (byte 0x{byte:02x} at character "
            f"{error.start + 1}); give the question as UTF-8"
        ) from None


def open_chat(args: argparse.Namespace, model_path: str | None = None) -> ChatInterface:
    """The chat that `args` describe (the caller closes it)."""
    from mtnsails.inference.chat import ChatInterface

    return ChatInterface(
        model_path or args.model_path,
        max_length=args.max_length,
        log_conversations=args.log_conversations,
        log_file=args.log_file,
        precision=args.precision,
        generation=settings.from_args(GenerationConfig, args),
        threads=args.threads,
        system=args.system,
        match_questions=not args.no_question_matching,
    )


def run(args: argparse.Namespace) -> int:
    """Answer --prompt once, or chat (streamed in a terminal, one answer per line when piped); exit 0."""
    from mtnsails.inference.terminal_chat import TerminalChat, announce_system, note_answer

    check_prompt(args)
    if args.feedback:
        if args.prompt is not None:
            raise MtnsailsError("--feedback asks after each answer of a chat; it does not go with --prompt")
        args.log_conversations = True  # a verdict is only worth giving when it is saved
    chat = open_chat(args)
    if args.prompt is None:
        if hasattr(sys.stdin, "reconfigure"):
            # A line that is not UTF-8 reads with U+FFFD for each bad byte, and the chat goes on.
            sys.stdin.reconfigure(errors="replace")
        TerminalChat(chat, ask_feedback=args.feedback).run()
        return 0
    with chat:
        announce_system(chat)
        print(chat.reply(args.prompt), flush=True)
        note_answer(chat, args.prompt)
    return 0
