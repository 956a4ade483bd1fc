"""Pieces every command shares: the one-line-error parser, argument types, options generated from Config."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Iterable

from ..core.config import FIELDS, parse_pairs, parse_value
from ..core.errors import ConfigError


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def int_in(low: int, high: int):
    """An argparse type: an integer in [low, high] (every count a command takes has an upper limit, so a typo
    is one line and exit 2, not an endless run). Say the range in the option's help."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {value}")
        return value
    convert.__name__ = "int"
    return convert


# ---------------------------------------------------------------------------- options from Config fields

def flag(name: str) -> str:
    """The option of Config field `name`: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def _field_type(name: str):
    """An argparse type that parses the text as Config field `name` (config.parse_value)."""
    def convert(text: str) -> Any:
        try:
            return parse_value(name, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = FIELDS[name].type.__name__
    return convert


def _shown(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value) if value == "" else str(value)


def add_field_option(p, name: str, help: str | None = None, default_shown: Any = None) -> None:
    """Add the option of Config field `name`, typed, with its choices and help from the field's metadata.

    Its default is None, so a command can tell the options given from those left out (`explicit_overrides`).
    Booleans get --name/--no-name."""
    spec = FIELDS[name]
    text = help or spec.help
    if spec.range and spec.type is not bool:
        text += f"; {spec.range.text()}"
    if default_shown is not None:
        text += f" (default: {_shown(default_shown)})"
    text = text.replace("%", "%%")  # argparse formats help with %
    if spec.type is bool:
        p.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        return
    metavar = spec.metavar or (None if spec.choices else {int: "N", float: "X"}.get(spec.type, "TEXT"))
    p.add_argument(flag(name), dest=name, type=_field_type(name), choices=spec.choices, default=None,
                   metavar=metavar, help=text)


def add_config_options(p, names: Iterable[str], defaults: Any = None) -> None:
    """One option per Config field in `names`; `defaults` (a Config) gives the default shown in the help."""
    for name in names:
        add_field_option(p, name, default_shown=getattr(defaults, name) if defaults is not None else None)


def add_set_option(p, help: str = "any config field (see 'python -m cvlab presets --fields'); repeatable, "
                                  "applied after the options above") -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def explicit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The Config fields the user gave on the command line, typed: options that were given (not None),
    then `--set key=value` pairs (which win). `--preset` chooses the starting point and is not among them."""
    values = {name: getattr(args, name) for name in FIELDS
              if name != "preset" and getattr(args, name, None) is not None}
    return {**values, **parse_pairs(getattr(args, "set", None) or [])}


def add_data_options(p: argparse.ArgumentParser) -> None:
    add_field_option(p, "data_root")
    add_field_option(p, "synthetic")


def path_text(text: str) -> str:
    """An argparse type for a path option: an empty value is refused, not taken as the default."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got ''")
    return text


def float_in(low: float, high: float, low_allowed: bool = False):
    """An argparse type for a finite number above `low` (or equal, with `low_allowed`) and at most `high`:
    nan, inf and negatives are refused at parse time, before anything starts."""
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        above = value >= low if low_allowed else value > low
        if not (above and value <= high):  # also false for nan
            shown = lambda x: f"{x:.0f}" if float(x).is_integer() else f"{x:g}"  # noqa: E731
            bound = f"{'at least' if low_allowed else 'more than'} {shown(low)}"
            raise argparse.ArgumentTypeError(f"expected a number {bound} and at most {shown(high)}, got {text}")
        return value
    return convert


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value
