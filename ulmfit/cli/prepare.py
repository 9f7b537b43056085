"""``ulmfit prepare`` and ``ulmfit tokenize``: the text pipeline on its own."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ulmfit.cli.common import (
    add_command,
    add_input_options,
    add_overwrite_option,
    add_vocab_size_options,
    prepare_config,
    specs,
)


def cmd_export(args: argparse.Namespace) -> int:
    """``prepare --export DIR``: a dataset folder that trains without spaCy."""
    from ulmfit.export import export_dataset

    result = export_dataset(
        specs(args), prepare_config(args), args.export, overwrite=args.overwrite
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"exported in {result['seconds']:.2f} s: {result['docs']:,} documents, "
        f"{result['tokens']:,} tokens, {result['bytes'] / 2**20:,.1f} MiB in {result['out']}"
    )
    for info in result["inputs"]:
        print(f"  {info['report']}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Tokenize (fastai rules + spaCy) on every core, build the vocabulary, numericalize; cached, so
    a re-run over unchanged data is instant. INPUT: CSV/TSV/JSONL/Parquet (.gz too), a folder
    per class, a .txt corpus, or a known dataset name (imdb_sample)."""
    from ulmfit.prepare import prepare

    if args.export is not None:
        return cmd_export(args)
    data = prepare(specs(args), prepare_config(args))
    summary = {**data.summary(), "seconds": data.meta["seconds"]}
    if args.json:
        print(json.dumps(summary))
        return 0
    state = "loaded from cache" if data.cached else "prepared"
    print(
        f"{state} in {summary['seconds']:.2f} s: {summary['docs']:,} documents, "
        f"{summary['tokens']:,} tokens, vocabulary {summary['vocab_size']:,} "
        f"(unknown tokens {100 * summary['unk_rate']:.2f}%)"
    )
    for info in summary["inputs"]:
        print(f"  {info['report']}")
    if summary["label_kind"] != "none":
        print(f"  labels: {summary['label_kind']}, {len(summary['classes'])} classes")
        for name, n in summary.get("class_counts", {}).items():
            print(f"    {name}: {n:,}")
    print(f"  cache: {summary['cache']}")
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    """One JSON list of tokens per input row, in input order."""
    from ulmfit.prepare import write_tokens_jsonl

    result = write_tokens_jsonl(
        specs(args), prepare_config(args), args.out, overwrite=args.overwrite
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"wrote {result['rows']:,} token lists ({result['tokens']:,} tokens) to {result['out']}"
            + (
                f'; {result["skipped_empty"]} rows had no text (written as ["xxbos"])'
                if result["skipped_empty"]
                else ""
            )
        )
    return 0


def add_prepare_commands(sub) -> None:
    p = add_command(sub, "prepare", cmd_prepare, "tokenize, numericalize and cache a dataset")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    add_input_options(p, labels=True)
    add_vocab_size_options(p)
    p.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="write a dataset folder (tokens, texts, labels, manifest) that the training "
        "commands read in place of the files, without spaCy",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace --export DIR if it is a dataset folder"
    )

    p = add_command(sub, "tokenize", cmd_tokenize, "write the tokens of every row as JSON lines")
    p.add_argument("inputs", nargs=1, metavar="INPUT")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.jsonl")
    add_overwrite_option(p)
    add_input_options(p, labels=False)
