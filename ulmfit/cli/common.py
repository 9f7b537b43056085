"""What several commands share: reading the input options into SourceSpecs and configs, and
the option groups (columns, vocabulary size, device, tokenizer processes, ...)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ulmfit import options
from ulmfit.cli.fields import add_field_option, add_option
from ulmfit.config import PrepareConfig, TrainConfig, VocabConfig
from ulmfit.errors import UserError


def input_path(value: str) -> Path:
    """A file or folder, or the name of a known public dataset (found in ../shared or downloaded)."""
    path = Path(value)
    if path.exists():
        return path
    from ulmfit.data import download

    if value in download.REGISTRY:
        return download.locate(value)
    raise UserError(
        f"{value}: no such file or folder (known dataset names: {', '.join(sorted(download.REGISTRY))})"
    )


def specs(args: argparse.Namespace) -> list:
    from ulmfit.data.sources import SourceSpec

    return [
        SourceSpec(
            path=input_path(p),
            text_cols=args.text_col,
            label_cols=getattr(args, "label_col", None),
            label_delim=getattr(args, "label_delim", None),
            fmt=args.format,
            encoding=args.encoding,
            corpus_mode=args.corpus_mode,
        )
        for p in args.inputs
    ]


def label_spec(args: argparse.Namespace, path: str, default_label: list[str] | None = None):
    """The SourceSpec of a labelled file; ``default_label=None`` leaves an unset label column
    unset (evaluate: the column of training)."""
    from ulmfit.data.sources import SourceSpec

    return SourceSpec(
        path=input_path(path),
        text_cols=args.text_col,
        label_cols=args.label_col or default_label,
        label_delim=args.label_delim,
        fmt=args.format,
        encoding=args.encoding,
    )


def prepare_config(args: argparse.Namespace) -> PrepareConfig:
    """The PrepareConfig of the options given (a command without vocabulary options keeps
    VocabConfig's defaults)."""
    sizes = {k: getattr(args, k) for k in ("max_vocab", "min_freq") if hasattr(args, k)}
    return PrepareConfig(
        workers=args.workers,
        chunk_docs=args.chunk_docs,
        vocab=VocabConfig(**sizes),
        label_kind=getattr(args, "label_kind", None),
        cache_dir=args.cache_dir,
        progress=False if args.json else None,
    )


def add_column_options(p: argparse.ArgumentParser, labels: bool, formats: list[str]) -> None:
    """Where the text (and labels) are in the input files, and how to read them."""
    p.add_argument(
        "--text-col",
        action="append",
        metavar="COL",
        help="text column (repeat for several, joined with xxfld markers; default: text)",
    )
    if labels:
        p.add_argument(
            "--label-col",
            action="append",
            metavar="COL",
            help="label column (default: label; repeat for several 0/1 columns or numeric targets)",
        )
        p.add_argument(
            "--label-delim",
            metavar="SEP",
            help="several labels in one column separated by SEP (multi-label; e.g. ' ')",
        )
        p.add_argument(
            "--label-kind",
            choices=["single", "multi", "float"],
            help="force the kind of target (default: inferred; float: regression)",
        )
    p.add_argument(
        "--format", choices=formats, help="input format of every file (default: from the names)"
    )
    add_option(p, "--encoding", default="utf-8", help="text encoding of the input")


def add_vocab_size_options(p: argparse.ArgumentParser) -> None:
    """The vocabulary's size limits (prepare and the LM commands build a vocabulary)."""
    add_field_option(p, VocabConfig, "max_vocab", filled=True)
    add_field_option(p, VocabConfig, "min_freq", filled=True)


def add_device_option(p: argparse.ArgumentParser) -> None:
    """--device, checked against this machine as the options are read."""
    p.add_argument(
        "--device", type=options.device, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )


def add_amp_option(p: argparse.ArgumentParser) -> None:
    """--amp for the commands that run a trained model (the training commands have it as a
    field of their config); the one field that defines it is the engine's."""
    add_field_option(p, TrainConfig, "amp", filled=True)


def add_compile_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="train through torch.compile (for GPUs; compiling costs the first steps)",
    )


def add_json_option(p: argparse.ArgumentParser, help: str = "print one JSON object") -> None:
    p.add_argument("--json", action="store_true", help=help)


def add_overwrite_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (never an input)"
    )


def add_input_options(p: argparse.ArgumentParser, labels: bool) -> None:
    add_column_options(p, labels, ["csv", "tsv", "jsonl", "parquet", "txt", "folder"])
    add_option(
        p,
        "--corpus-mode",
        default="auto",
        choices=["auto", "lines", "wikitext"],
        help="for .txt corpora: one document per line, or ' = Title = ' articles",
    )
    add_field_option(p, PrepareConfig, "workers", filled=True)
    add_field_option(p, PrepareConfig, "chunk_docs", filled=True)
    add_field_option(p, PrepareConfig, "cache_dir")
    add_json_option(p)


def add_labelled_file_options(p: argparse.ArgumentParser) -> None:
    """Options of the commands that read labelled files (baseline, fit, evaluate)."""
    add_column_options(p, True, ["csv", "tsv", "jsonl", "parquet", "folder"])
    add_json_option(p)


def add_command(sub, name: str, func, help: str, **kwargs) -> argparse.ArgumentParser:
    """The subcommand ``name`` run by ``func``, whose docstring is its ``--help`` description
    (what the command does, written once, beside the code that does it)."""
    p = sub.add_parser(name, help=help, description=func.__doc__, **kwargs)
    p.set_defaults(func=func)
    return p
