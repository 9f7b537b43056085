"""Types for the command line's options: each checks its value's range as argparse reads it,
so a bad setting is refused before any work starts, with the flag's name in the message
(``argument --lm-epochs: must be 1 or more, got 0``). Torch-free, like the parser itself."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is a :class:`UserError` (one line, ``ulmfit: error:
    ...``, exit 2) rather than the whole usage text, like every other mistake."""

    def error(self, message: str):  # type: ignore[override]
        from ulmfit.errors import UserError

        raise UserError(f"{message} (see '{self.prog} --help')")


def _number(kind: type, text: str):
    try:
        return kind(text)
    except ValueError:
        name = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {name}, got {text!r}") from None


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer option that must be ``low`` or more."""

    def parse(text: str) -> int:
        value = _number(int, text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        return value

    return parse


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An integer option in ``[low, high]`` (a port)."""

    def parse(text: str) -> int:
        value = _number(int, text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    """A rate: above 0 (and finite)."""
    value = _number(float, text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """A weight decay or a dropout scale: 0 or more (and finite)."""
    value = _number(float, text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def fraction(low_open: bool) -> Callable[[str], float]:
    """A share of the rows: in [0, 1), or in (0, 1) where a validation set is required."""

    def parse(text: str) -> float:
        value = _number(float, text)
        ok = (0 < value < 1) if low_open else (0 <= value < 1)
        if not ok:
            bounds = "above 0 and below 1" if low_open else "at least 0 and below 1"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


def device(text: str) -> str:
    """A device this machine has; checked as the options are read (this imports torch, so
    only commands that take --device pay for it, and only when it is given)."""
    from ulmfit.devices import resolve_device
    from ulmfit.errors import UserError

    try:
        return resolve_device(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--device ")) from None


def stdout_closed() -> int:
    """The reader of our output went away (``ulmfit predict ... | head``): stop quietly, as
    a Unix tool does, instead of a BrokenPipeError traceback. Python's documented recipe:
    point stdout at /dev/null so that the interpreter's final flush cannot fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it


__all__ = [
    "Parser",
    "device",
    "fraction",
    "int_at_least",
    "int_between",
    "nonnegative_float",
    "positive_float",
    "stdout_closed",
]
