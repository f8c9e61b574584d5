"""One module per subcommand: `HELP`, `add_arguments(parser)` and `run(args) -> int`.

Top-level imports stay light (argparse, the settings dataclasses): `--help` must not load torch.
"""
