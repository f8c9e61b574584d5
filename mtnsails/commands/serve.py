"""`serve`: an OpenAI-compatible chat-completions server on an ONNX model directory."""

from __future__ import annotations

import argparse
import os

from mtnsails.commands.chat import PROMPT_TOKENS, add_precision_argument
from mtnsails.core import settings
from mtnsails.inference.generation_config import GenerationConfig
from mtnsails.model_dir.metadata import DEFAULT_SERVE_LOG_FILE

HELP = "serve an ONNX model over the OpenAI chat-completions API (batched decoding)"
API_KEY_VARIABLE = "MTNSAILS_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("serve")
    group.add_argument(
        "--model-path",
        required=True,
        help="ONNX model directory (from convert); replacing it reloads the model between requests, so does SIGHUP",
    )
    group.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 opens it to the network (default: 127.0.0.1)"
    )
    group.add_argument("--port", type=int, default=8000, help="port to listen on; 0 = any free one (default: 8000)")
    group.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_VARIABLE}; unset = no key)",
    )
    add_precision_argument(group)
    group.add_argument(
        "--system",
        help="system prompt for requests without one; '' = none (default: the one the model was trained with, if any)",
    )
    group.add_argument(
        "--max-length",
        type=int,
        default=PROMPT_TOKENS,
        help=f"most prompt tokens (history + question) given to the model (default: {PROMPT_TOKENS})",
    )
    settings.add_arguments(group, GenerationConfig, skip=("seed",))
    group.add_argument(
        "--threads",
        type=int,
        help="onnxruntime threads; fewer can be faster on a busy machine (default: physical cores)",
    )
    group.add_argument("--max-batch", type=int, default=8, help="requests decoded together at most (default: 8)")
    group.add_argument(
        "--max-queue",
        type=int,
        default=32,
        help="requests waiting for a batch slot at most; more get 503 at once (default: 32)",
    )
    group.add_argument(
        "--log-conversations",
        action="store_true",
        help="append every answered exchange to --log-file (training format)",
    )
    group.add_argument(
        "--log-file",
        default=DEFAULT_SERVE_LOG_FILE,
        help=f"conversation log, .jsonl or .json array (default: {DEFAULT_SERVE_LOG_FILE})",
    )
    group.add_argument("--quiet", action="store_true", help="no start-up line on stderr")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or Ctrl-C; exit 0."""
    from mtnsails.inference.engine import ChatEngine, EngineSettings
    from mtnsails.serve.scheduler import BatchScheduler
    from mtnsails.serve.server import ChatServer

    if not 0 <= args.port <= 65535:
        from mtnsails.core.errors import MtnsailsError

        raise MtnsailsError(f"--port {args.port} is not a port: it must be 0 (any free one) to 65535")
    generation = settings.from_args(GenerationConfig, args)
    logger = None
    if args.log_conversations:
        from mtnsails.data.logger import ConversationLogger

        logger = ConversationLogger(args.log_file)

    # The event loop and the decoding thread share the cores with onnxruntime's threads.
    engine_settings = EngineSettings(
        precision=args.precision,
        threads=args.threads,
        spin_threads=False,
        max_length=args.max_length,
        system=args.system,
        generation=generation,
    )

    def open_model() -> ChatEngine:
        engine = ChatEngine(args.model_path, engine_settings)
        engine.load_matcher()  # here, not inside the first request
        return engine

    scheduler = BatchScheduler(open_model, max_batch=args.max_batch, max_queue=args.max_queue)
    ChatServer(scheduler, generation, api_key=args.api_key or None, logger=logger).run(
        args.host, args.port, quiet=args.quiet
    )
    return 0
