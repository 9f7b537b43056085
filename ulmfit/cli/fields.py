"""Command-line options made from the fields of :mod:`ulmfit.config`, so that an option's
type, its default and the default ``--help`` prints all come from the one field that defines
the setting (no copy of a default in the CLI can drift from the config's)."""

from __future__ import annotations

import argparse
from dataclasses import Field, fields
from typing import Any


def shown(value: Any) -> str:
    """A default as ``--help`` prints it: 60000 -> ``60,000``, 8000 -> ``8000``, 0.005 ->
    ``0.005``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def with_default(text: str, default: Any) -> str:
    """``text (default X)``; None (a default the help explains in words) and flags add nothing."""
    if default is None or isinstance(default, bool):
        return text
    return f"{text} (default {shown(default)})"


def option_fields(cls: type) -> list[Field]:
    """The fields of a config that are command-line options (declared with ``setting``)."""
    return [f for f in fields(cls) if "help" in f.metadata]


def config_field(cls: type, name: str) -> Field:
    for f in option_fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__}.{name} is not an option field")


def add_field_option(
    p: argparse.ArgumentParser,
    cls: type,
    name: str,
    *,
    flag: str | None = None,
    help: str | None = None,
    filled: bool = False,
    **kwargs: Any,
) -> None:
    """The option of field ``name`` of config ``cls``. Unless ``filled`` its parsed value is
    None when it is not given, so that only the options given override the config (whose
    default the help shows); ``filled``: argparse fills in the field's default itself.
    ``flag``/``help`` replace the field's own (the same setting under another name)."""
    f = config_field(cls, name)
    meta = f.metadata
    if flag is None:
        flag = meta.get("flag", "--" + name.replace("_", "-"))
        kwargs.setdefault("dest", name)
    for key in ("type", "metavar", "choices"):
        if meta.get(key) is not None:
            kwargs.setdefault(key, meta[key])
    p.add_argument(
        flag,
        default=f.default if filled else None,
        help=with_default(help or meta["help"], f.default),
        **kwargs,
    )


def add_config_options(p: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """An option for every option field of ``cls`` (a new field is a new option)."""
    for f in option_fields(cls):
        if f.name not in skip:
            add_field_option(p, cls, f.name)


def given_settings(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that the options set (the others keep the config's defaults)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def add_option(p: argparse.ArgumentParser, flag: str, *, default: Any, help: str, **kwargs) -> None:
    """An option that is not a config field, its default shown from the value it has."""
    p.add_argument(flag, default=default, help=with_default(help, default), **kwargs)
