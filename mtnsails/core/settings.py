"""Settings dataclasses declare their command-line flags once, in the field itself.

A field made with `setting(default, "help text")` carries its help (and, where it differs from the
field name, its flag) in `field.metadata`; `add_arguments` turns such fields into argparse
options whose defaults are the dataclass defaults, and `from_args` builds the dataclass back from
the parsed namespace. So every default and every help text is written in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")
# Seeds run from 0 to 2**32 - 1: numpy's global seeding (transformers' set_seed) takes no other.
MAX_SEED = 2**32 - 1


def setting(default: Any, help: str, *, flag: str | None = None, choices: Iterable[str] | None = None) -> Any:
    """A dataclass field that is also a command-line option.

    `help` leaves out the default: "(default: X)" is appended from `default` unless it is None or
    False (then the help says what None means). `flag` overrides the `--field-name` spelling."""
    metadata = {"help": help, "flag": flag, "choices": tuple(choices) if choices else None}
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(field: dataclasses.Field) -> str:
    """The option that sets `field`, e.g. "--max-tokens" for `max_new_tokens`."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def option_fields(settings: type) -> list[dataclasses.Field]:
    """The fields of a settings dataclass that are command-line options (made with `setting`)."""
    return [f for f in dataclasses.fields(settings) if "help" in f.metadata]


def finite_float(text: str) -> float:
    """argparse type: a float that is neither inf nor nan (they would poison training or sampling)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def non_finite(settings: Any) -> dataclasses.Field | None:
    """The first float field of a settings dataclass instance that holds inf or nan, if any."""
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            return field
    return None


def _value_type(settings: type, field: dataclasses.Field) -> type:
    hint = typing.get_type_hints(settings)[field.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def add_arguments(group: argparse._ActionsContainer, settings: type, skip: Iterable[str] = ()) -> None:
    """Declare one option per `setting` field of `settings` (except the field names in `skip`)."""
    skipped = set(skip)
    for field in option_fields(settings):
        if field.name in skipped:
            continue
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = field.metadata["help"]
        if default is not None and default is not False:
            help_text += f" (default: {default})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        kind = _value_type(settings, field)
        if kind is bool:
            group.add_argument(flag_of(field), dest=field.name, action="store_true", help=help_text)
            continue
        flag = flag_of(field)
        group.add_argument(
            flag,
            dest=field.name,
            default=default,
            metavar=flag[2:].upper().replace("-", "_"),
            type=finite_float if kind is float else kind,
            choices=field.metadata["choices"],
            help=help_text,
        )


def from_args(settings: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build `settings` from the options `add_arguments` declared (those present in `args`)."""
    values = {f.name: getattr(args, f.name) for f in option_fields(settings) if hasattr(args, f.name)}
    return settings(**{**values, **overrides})
