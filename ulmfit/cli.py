"""The ``ulmfit`` command. Imports stay inside the commands so that ``--help`` and a cached
``prepare`` never wait for spaCy or PyTorch to load."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ulmfit.errors import UserError


def _input_path(value: str) -> Path:
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


def _specs(args: argparse.Namespace) -> list:
    from ulmfit.data.sources import SourceSpec

    return [
        SourceSpec(
            path=_input_path(p),
            text_cols=args.text_col,
            label_cols=getattr(args, "label_col", None),
            label_delim=getattr(args, "label_delim", None),
            fmt=args.format,
            encoding=args.encoding,
            corpus_mode=args.corpus_mode,
        )
        for p in args.inputs
    ]


def _config(args: argparse.Namespace):
    from ulmfit.prepare import PrepareConfig
    from ulmfit.text.vocab import VocabConfig

    return PrepareConfig(
        workers=args.workers,
        chunk_docs=args.chunk_docs,
        vocab=VocabConfig(
            max_vocab=getattr(args, "max_vocab", 60000), min_freq=getattr(args, "min_freq", 3)
        ),
        label_kind=getattr(args, "label_kind", None),
        cache_dir=args.cache_dir,
        progress=False if args.json else None,
    )


def cmd_prepare(args: argparse.Namespace) -> int:
    from ulmfit.prepare import prepare

    data = prepare(_specs(args), _config(args))
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
    from ulmfit.prepare import write_tokens_jsonl

    result = write_tokens_jsonl(_specs(args), _config(args), args.out)
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


def _add_input_options(p: argparse.ArgumentParser, labels: bool) -> None:
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
            help="label column (repeat for several 0/1 columns or several float targets)",
        )
        p.add_argument(
            "--label-delim",
            metavar="SEP",
            help="several labels in one column separated by SEP (multi-label)",
        )
        p.add_argument(
            "--label-kind",
            choices=["single", "multi", "float"],
            help="force the kind of target (default: inferred)",
        )
    p.add_argument(
        "--format",
        choices=["csv", "tsv", "jsonl", "parquet", "txt", "folder"],
        help="input format (default: from the file name)",
    )
    p.add_argument("--encoding", default="utf-8", help="text encoding of the input (default utf-8)")
    p.add_argument(
        "--corpus-mode",
        default="auto",
        choices=["auto", "lines", "wikitext"],
        help="for .txt corpora: one document per line, or ' = Title = ' articles",
    )
    p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    p.add_argument("--chunk-docs", type=int, default=1000, help="documents per worker task")
    p.add_argument(
        "--cache-dir", type=Path, help="cache folder (default: $ULMFIT_CACHE or ~/.cache/ulmfit)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ulmfit",
        description="Text classification by transfer learning (ULMFiT): fastai-compatible text "
        "pipeline, AWD-LSTM language models, classifiers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "prepare",
        help="tokenize, numericalize and cache a dataset",
        description="Tokenize (fastai rules + spaCy) on every core, build the "
        "vocabulary, numericalize; cached, so a re-run over unchanged data is instant. "
        "INPUT: CSV/TSV/JSONL/Parquet (.gz too), a folder per class, a .txt corpus, "
        "or a known dataset name (imdb_sample).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    _add_input_options(p, labels=True)
    p.add_argument(
        "--max-vocab", type=int, default=60000, help="vocabulary size cap (fastai: 60000)"
    )
    p.add_argument("--min-freq", type=int, default=3, help="minimum count to enter the vocabulary")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "tokenize",
        help="write the tokens of every row as JSON lines",
        description="One JSON list of tokens per input row, in input order.",
    )
    p.add_argument("inputs", nargs=1, metavar="INPUT")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.jsonl")
    _add_input_options(p, labels=False)
    p.set_defaults(func=cmd_tokenize)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ulmfit.text.rules import SPECIAL_TOKENS  # light: str rules only

    bad = None
    if getattr(args, "workers", 0) < 0:
        bad = "--workers must be 0 (all cores) or more"
    elif getattr(args, "chunk_docs", 1) < 1:
        bad = "--chunk-docs must be 1 or more"
    elif getattr(args, "max_vocab", len(SPECIAL_TOKENS)) < len(SPECIAL_TOKENS):
        bad = f"--max-vocab must be at least {len(SPECIAL_TOKENS)} (the special tokens)"
    if bad:
        print(f"ulmfit: error: {bad}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except UserError as e:
        print(f"ulmfit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ulmfit: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
