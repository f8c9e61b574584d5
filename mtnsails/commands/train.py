"""`train`: check the data's quality, fine-tune a model on it, save the model directory."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mtnsails.core import settings
from mtnsails.train.augment import AugmentConfig
from mtnsails.train.config import TrainingConfig

if TYPE_CHECKING:  # a command imports what it runs only when it runs (see cli.py)
    from mtnsails.train.trainer import LLMTrainer

HELP = "fine-tune a causal language model on conversations"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare `train`'s flags (the pipeline declares them too) in a "training" group."""
    group = parser.add_argument_group("training")
    group.add_argument(
        "--data-file",
        nargs="+",
        metavar="DATA_FILE",
        help="training conversations: one or more files (.json, .jsonl, .csv, .tsv or "
        ".parquet; formats may differ); a conversation already in an earlier file is "
        "dropped (default: the packaged example conversations)",
    )
    group.add_argument("--force", action="store_true", help="train even when the data quality score is below 50%%")
    settings.add_arguments(group, TrainingConfig)
    settings.add_arguments(group, AugmentConfig)


def make_trainer(args: argparse.Namespace) -> LLMTrainer:
    """The trainer `args` describe, its settings checked (nothing loaded yet)."""
    from mtnsails.train.trainer import LLMTrainer

    augment = settings.from_args(AugmentConfig, args)
    return LLMTrainer(config=settings.from_args(TrainingConfig, args, augment=augment))  # validates


def train(
    args: argparse.Namespace, next_step: bool = True, trainer: LLMTrainer | None = None
) -> tuple[str, list[dict]]:
    """Run the quality gate and training that `args` describe (with `trainer`, made by
    `make_trainer(args)`: the pipeline asks it which model it trains before this starts).

    Returns the model directory and the conversations read (the pipeline's demo asks some).
    `next_step=False` leaves out the "Next: convert" hint (the pipeline converts by itself)."""
    from mtnsails.core.ranks import finish_distributed
    from mtnsails.data.handler import ConversationDataHandler
    from mtnsails.quality.validator import quality_gate
    from mtnsails.train.trainer import packaged_example_data

    trainer = trainer or make_trainer(args)
    data_files = args.data_file or [packaged_example_data()]
    handler = ConversationDataHandler.from_files(data_files)
    if handler.sources_report() and not args.quiet and trainer.is_main_process:
        print(handler.sources_report())
    conversations = handler.conversations
    quality_gate(conversations, force=args.force, quiet=args.quiet)
    result = trainer.train_conversations(conversations, data_file=data_files)
    path = trainer.save_model()
    if trainer.is_main_process:
        print(result.summary(path, next_step))
    finish_distributed()
    return path, conversations


def run(args: argparse.Namespace) -> int:
    """`train`: check the data, train, save the model; 0 on success (errors raise MtnsailsError)."""
    train(args)
    return 0
