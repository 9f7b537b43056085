"""The ``ulmfit`` command. Imports stay inside the commands so that ``--help`` and a cached
``prepare`` never wait for spaCy or PyTorch to load."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ulmfit import options
from ulmfit.errors import UserError
from ulmfit.text.rules import SPECIAL_TOKENS  # light: str rules only


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


def cmd_export(args: argparse.Namespace) -> int:
    """``prepare --export DIR``: a dataset folder that trains without spaCy."""
    from ulmfit.export import export_dataset

    result = export_dataset(_specs(args), _config(args), args.export, overwrite=args.overwrite)
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
    from ulmfit.prepare import prepare

    if args.export is not None:
        return cmd_export(args)
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

    result = write_tokens_jsonl(_specs(args), _config(args), args.out, overwrite=args.overwrite)
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


def _add_column_options(p: argparse.ArgumentParser, labels: bool, formats: list[str]) -> None:
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
            help="label column (default label; repeat for several 0/1 columns or numeric targets)",
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
    p.add_argument("--encoding", default="utf-8", help="text encoding of the input (default utf-8)")


def _add_vocab_size_options(p: argparse.ArgumentParser) -> None:
    """The vocabulary's size limits (prepare and the LM commands build a vocabulary)."""
    p.add_argument(
        "--max-vocab",
        type=options.int_at_least(len(SPECIAL_TOKENS)),
        default=60000,
        help="vocabulary size cap (fastai: 60000)",
    )
    p.add_argument(
        "--min-freq",
        type=options.int_at_least(1),
        default=3,
        help="minimum count to enter the vocabulary",
    )


def _add_device_option(p: argparse.ArgumentParser) -> None:
    """--device, checked against this machine as the options are read."""
    p.add_argument(
        "--device", type=options.device, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )


def _add_input_options(p: argparse.ArgumentParser, labels: bool) -> None:
    _add_column_options(p, labels, ["csv", "tsv", "jsonl", "parquet", "txt", "folder"])
    p.add_argument(
        "--corpus-mode",
        default="auto",
        choices=["auto", "lines", "wikitext"],
        help="for .txt corpora: one document per line, or ' = Title = ' articles",
    )
    p.add_argument(
        "--workers", type=options.int_at_least(0), default=0, help="processes (default: all cores)"
    )
    p.add_argument(
        "--chunk-docs", type=options.int_at_least(1), default=1000, help="documents per worker task"
    )
    p.add_argument(
        "--cache-dir", type=Path, help="cache folder (default: $ULMFIT_CACHE or ~/.cache/ulmfit)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


# ---------------------------------------------------------------------------------------------
# Language models: lm-eval, pretrain, finetune-lm


def _print_metrics(label: str, m: dict) -> None:
    print(
        f"{label}loss {m['loss']:.4f}  perplexity {m['perplexity']:.2f}  "
        f"accuracy {100 * m['accuracy']:.2f}%  ({m['tokens']:,} tokens predicted in "
        f"{m['docs']:,} documents; {100 * m['unk_rate']:.2f}% of tokens unknown to the model)"
    )


def cmd_lm_eval(args: argparse.Namespace) -> int:
    from ulmfit.models.io import load_lm
    from ulmfit.tasks.language_model import lm_eval, read_token_corpus

    specs = _specs(args)
    from ulmfit.devices import resolve_device

    model, vocab, info = load_lm(args.model, args.vocab)
    model.to(resolve_device(args.device))
    corpus = read_token_corpus(
        specs,
        limit_docs=args.limit_docs,
        workers=args.workers,
        cache_dir=args.cache_dir,
        progress=False if args.json else None,
    )
    m = lm_eval(
        model, vocab, corpus, bs=args.bs, bptt=args.bptt, backwards=info["direction"] == "bwd"
    )
    m = {**m, "model": info["path"], "direction": info["direction"]}
    if args.json:
        print(json.dumps(m))
    else:
        _print_metrics("", m)
    return 0


def _lm_config(args: argparse.Namespace, cls):
    """A PretrainConfig / FinetuneLMConfig from the options given (others keep the defaults)."""
    from dataclasses import fields

    names = {f.name for f in fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if args.json:
        given["progress"] = False
    return cls(**given)


def _print_training(result: dict) -> None:
    if result.get("vocab_remap"):
        print(f"vocabulary: {result['vocab_remap']['summary']}")
    for key, label in (("before", "before: "), ("after", "after:  ")):
        if result.get(key):
            _print_metrics(label, result[key])
    resumed = "  (resumed an unfinished run)" if result.get("resumed") else ""
    print(f"model written to {result['out']}  (report: {result['report']}){resumed}")


def _print_lr_find(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    stage = f" ({result['stage']} stage)" if "stage" in result else ""
    print(
        f"suggested learning rate{stage}: {result['suggestion']:.2e} (valley); steepest "
        f"descent at {result['steep']:.2e}; loss minimum / 10: {result['minimum']:.2e}"
    )
    print(f"plot: {result['plot']}")


def _lr_find_config(args: argparse.Namespace):
    from ulmfit.tasks.language_model import LRFindConfig

    if args.resume:
        raise UserError("--lr-find trains nothing, so there is nothing to --resume; drop one")
    return LRFindConfig(plot=args.lr_find_plot, stage=getattr(args, "lr_find_stage", "frozen"))


def _train(args: argparse.Namespace, run) -> int:
    """Run a training command; on Ctrl-C say where the resumable state is."""
    from ulmfit.tasks.language_model import partial_dir

    try:
        result = run()
    except KeyboardInterrupt:
        partial = partial_dir(args.out)
        if partial.is_dir():  # a fresh run interrupted before its first checkpoint removes it
            print(
                f"ulmfit: interrupted; the run so far is kept in {partial}: repeat the command "
                "with --resume to continue from its last epoch checkpoint",
                file=sys.stderr,
            )
            return 130
        raise
    if args.json:
        print(json.dumps(result))
    else:
        _print_training(result)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from ulmfit.tasks.language_model import PretrainConfig, pretrain, pretrain_lr_find

    valid = None
    if args.valid:
        valid = _specs(argparse.Namespace(**{**vars(args), "inputs": [args.valid]}))
    cfg = _lm_config(args, PretrainConfig)
    if args.lr_find:
        find = _lr_find_config(args)
        result = pretrain_lr_find(_specs(args), args.out, cfg, valid=valid, find=find)
        _print_lr_find(result, args.json)
        return 0
    return _train(
        args, lambda: pretrain(_specs(args), args.out, cfg, valid=valid, resume=args.resume)
    )


def cmd_finetune_lm(args: argparse.Namespace) -> int:
    from ulmfit.tasks.language_model import FinetuneLMConfig, finetune_lm, finetune_lm_lr_find

    cfg = _lm_config(args, FinetuneLMConfig)
    if args.lr_find:
        find = _lr_find_config(args)
        result = finetune_lm_lr_find(
            _specs(args), args.pretrained, args.out, cfg, vocab=args.vocab, find=find
        )
        _print_lr_find(result, args.json)
        return 0
    return _train(
        args,
        lambda: finetune_lm(
            _specs(args), args.pretrained, args.out, cfg, vocab=args.vocab, resume=args.resume
        ),
    )


# Defaults of PretrainConfig / FinetuneLMConfig, repeated here so that --help can show them
# without importing the training code (tests/test_language_model.py keeps them equal).
LM_DEFAULTS = {
    "pretrain": {
        "epochs": 10,
        "lr": 5e-3,
        "bs": 64,
        "bptt": 70,
        "drop_mult": 0.3,
        "wd": 0.1,
        "valid_pct": 0.1,
        "seed": 42,
        "emb_sz": 400,
        "n_hid": 1152,
        "n_layers": 3,
    },
    "finetune-lm": {
        "epochs": 10,
        "lr": 2e-3,
        "frozen_epochs": 1,
        "frozen_lr": 2e-2,
        "bs": 64,
        "bptt": 70,
        "drop_mult": 0.3,
        "wd": 0.01,
        "valid_pct": 0.1,
        "seed": 42,
    },
}


def _add_training_options(p: argparse.ArgumentParser, command: str) -> None:
    d = LM_DEFAULTS[command]
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="model directory")
    if command == "finetune-lm":
        p.add_argument(
            "--frozen-epochs",
            type=options.int_at_least(0),
            help=f"epochs training only the last layer group (default {d['frozen_epochs']})",
        )
        p.add_argument(
            "--frozen-lr",
            type=options.positive_float,
            help=f"peak learning rate while frozen (default {d['frozen_lr']})",
        )
        p.add_argument(
            "--epochs",
            type=options.int_at_least(1),
            help=f"epochs after unfreezing (default {d['epochs']})",
        )
    else:
        p.add_argument(
            "--epochs", type=options.int_at_least(1), help=f"epochs (default {d['epochs']})"
        )
    p.add_argument(
        "--lr",
        type=options.positive_float,
        help=f"peak learning rate of the one-cycle (default {d['lr']})",
    )
    p.add_argument(
        "--bs", type=options.int_at_least(1), help=f"batch size in streams (default {d['bs']})"
    )
    p.add_argument(
        "--bptt", type=options.int_at_least(1), help=f"tokens per step (default {d['bptt']})"
    )
    p.add_argument(
        "--drop-mult",
        type=options.nonnegative_float,
        help=f"scales all of AWD-LSTM's dropouts (default {d['drop_mult']})",
    )
    p.add_argument(
        "--wd", type=options.nonnegative_float, help=f"decoupled weight decay (default {d['wd']})"
    )
    p.add_argument(
        "--valid-pct",
        # fine-tuning reports held-out perplexity, so it needs held-out documents
        type=options.fraction(low_open=command == "finetune-lm"),
        help=f"share of documents held out for validation (default {d['valid_pct']})",
    )
    p.add_argument(
        "--seed",
        type=options.int_at_least(0),
        help=f"seed of the split, shuffles and dropouts (default {d['seed']})",
    )
    _add_vocab_size_options(p)
    _add_device_option(p)
    _add_compile_option(p)
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out if it is a previous model directory"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="smoke test: every stage on a handful of rows, a few steps per stage",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run in DIR.partial (after a crash, Ctrl-C or kill): "
        "finished stages are skipped and the interrupted one continues from its last epoch "
        "checkpoint on the same schedule, giving the model an uninterrupted run gives; the "
        "settings and data must be those of the first run. Without DIR.partial: start fresh",
    )
    p.add_argument(
        "--lr-find",
        action="store_true",
        help="only run the learning-rate range test (fastai's lr_find) on the model and data "
        "training would use, print the suggested peak rate (valley rule) and write the plot; "
        "trains and publishes nothing",
    )
    p.add_argument(
        "--lr-find-plot",
        type=Path,
        metavar="FILE.png",
        help="where --lr-find writes its plot (default: DIR.lr_find.png next to --out DIR)",
    )
    if command == "finetune-lm":
        p.add_argument(
            "--lr-find-stage",
            choices=["frozen", "unfrozen"],
            default="frozen",
            help="--lr-find for the first stage (frozen: only the last layer group trains; "
            "pick --frozen-lr) or with every group trainable (pick --lr); default frozen",
        )


_RUN_EPILOG = (
    "Training runs in DIR.partial next to --out DIR (run.json: the settings; "
    "train/checkpoint.pt: replaced atomically after every epoch; train/metrics.jsonl, "
    "steps.jsonl, loss.png: the logs). When it finishes, DIR is published in one rename with "
    "the logs in DIR/train (no checkpoint: model directories hold no pickle) and DIR.partial "
    "is removed. If the run is interrupted, repeat the same command with --resume; without "
    "--resume an existing DIR.partial is an error, never deleted."
)


def _add_vocab_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument(
        "--keep-pretrained-vocab",
        action="store_true",
        default=None,
        help="keep every token of the pretrained vocabulary (plus the target's own), so words "
        "rare or absent in the target texts keep their pretrained embeddings (default: "
        "fastai's vocabulary from the target texts only)",
    )
    if not prefix:
        p.add_argument(
            "--direction",
            choices=["fwd", "bwd"],
            help="direction of a fastai weights file (default: bwd if its name contains "
            "'bwd'); a model directory knows its own",
        )


def _add_lm_commands(sub) -> None:
    p = sub.add_parser(
        "lm-eval",
        help="perplexity and next-token accuracy of a language model on text",
        description="Each document is read alone from a fresh hidden state; its tokens 2..n "
        "are predicted from their prefixes. MODEL: a model directory, or a fastai .pth with "
        "--vocab ITOS.pkl.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("inputs", nargs="+", metavar="DATA")
    p.add_argument("--vocab", metavar="ITOS.pkl", help="vocabulary of a fastai .pth")
    _add_device_option(p)
    p.add_argument(
        "--limit-docs", type=options.int_at_least(1), metavar="N", help="only the first N documents"
    )
    p.add_argument(
        "--bs", type=options.int_at_least(1), default=64, help="documents per batch (default 64)"
    )
    p.add_argument(
        "--bptt", type=options.int_at_least(1), default=200, help="tokens per chunk (default 200)"
    )
    _add_input_options(p, labels=False)
    p.set_defaults(func=cmd_lm_eval)

    p = sub.add_parser(
        "pretrain",
        help="train a language model from scratch on a corpus",
        description="Build the vocabulary from CORPUS, hold out documents (or use --valid) "
        "and train an AWD-LSTM language model with one-cycle; writes a model directory.",
        epilog=_RUN_EPILOG,
    )
    p.add_argument("inputs", nargs="+", metavar="CORPUS")
    p.add_argument("--valid", metavar="FILE", help="validation corpus (default: held-out docs)")
    p.add_argument("--backwards", action="store_true", help="a backward model (tokens reversed)")
    d = LM_DEFAULTS["pretrain"]
    p.add_argument(
        "--emb-sz", type=options.int_at_least(1), help=f"embedding size (default {d['emb_sz']})"
    )
    p.add_argument(
        "--n-hid", type=options.int_at_least(1), help=f"LSTM hidden size (default {d['n_hid']})"
    )
    p.add_argument(
        "--n-layers", type=options.int_at_least(1), help=f"LSTM layers (default {d['n_layers']})"
    )
    _add_training_options(p, "pretrain")
    _add_input_options(p, labels=False)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "finetune-lm",
        help="fine-tune a pretrained language model on target text (ULMFiT stage 2)",
        description="Vocabulary from DATA (labelled and unlabelled files alike, text only), "
        "pretrained rows remapped onto it, validation perplexity before and after; "
        "freeze + one-cycle, then unfreeze + one-cycle, as fastai does.",
        epilog=_RUN_EPILOG,
    )
    p.add_argument("inputs", nargs="+", metavar="DATA")
    p.add_argument("--pretrained", required=True, metavar="MODEL", help="model dir or fastai .pth")
    p.add_argument("--vocab", metavar="ITOS.pkl", help="vocabulary of a fastai .pth")
    _add_vocab_options(p)
    _add_training_options(p, "finetune-lm")
    _add_input_options(p, labels=False)
    p.set_defaults(func=cmd_finetune_lm)


# ---------------------------------------------------------------------------------------------
# Linear baselines: the bar a deep model has to clear on the same data


def cmd_baseline(args: argparse.Namespace) -> int:
    from ulmfit.baselines import format_report, run_baselines

    result = run_baselines(
        _label_spec(args, args.train, ["label"]),
        _label_spec(args, args.test, ["label"]),
        kind=args.label_kind,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(format_report(result))
    return 0


def _add_baseline_command(sub) -> None:
    p = sub.add_parser(
        "baseline",
        help="NB-SVM and TF-IDF + logistic regression test metrics (the bar to clear)",
        description="Fit two linear baselines on --train and score them on --test: NBSVM-LR "
        "(binarized uni+bigrams scaled by the log-count ratio, logistic regression, one-vs-rest "
        "or one model per label) and TF-IDF uni+bigrams + logistic regression (Ridge for a "
        "numeric target). Prints accuracy / error / macro and per-class F1 (single-label), "
        "micro / macro F1 and mean ROC AUC (multi-label) or MAE / RMSE (numeric), and the "
        "seconds each took.",
    )
    p.add_argument("--train", required=True, metavar="FILE", help="training file")
    p.add_argument("--test", required=True, metavar="FILE", help="test file")
    _add_labelled_file_options(p)
    p.set_defaults(func=cmd_baseline)


# ---------------------------------------------------------------------------------------------
# Classifiers: fit (the whole ULMFiT chain) and evaluate


def _label_spec(args: argparse.Namespace, path: str, default_label: list[str] | None = None):
    """The SourceSpec of a labelled file; ``default_label=None`` leaves an unset label column
    unset (evaluate: the column of training)."""
    from ulmfit.data.sources import SourceSpec

    return SourceSpec(
        path=_input_path(path),
        text_cols=args.text_col,
        label_cols=args.label_col or default_label,
        label_delim=args.label_delim,
        fmt=args.format,
        encoding=args.encoding,
    )


def _print_classifier_metrics(head: str, m: dict) -> None:
    kind = m.get("label_kind", "single")
    if kind == "float":
        print(f"{head}mae {m['mae']:.4f}, rmse {m['rmse']:.4f} (n={m['n']})")
    elif kind == "multi":
        auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
        print(
            f"{head}micro F1 {m['micro_f1']:.4f}, macro F1 {m['macro_f1']:.4f}, "
            f"ROC AUC {auc} (n={m['n']})"
        )
    else:
        print(f"{head}accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f} (n={m['n']})")


def _fit(args: argparse.Namespace, fit, train, unlabelled, cfg, lm_cfg) -> dict:
    """A dry run goes to a scratch run folder of its own (RUN.dry-run, replaced as needed):
    a smoke test must never touch the run it is the rehearsal of."""
    from ulmfit.tasks.run import check_inputs_outside, dry_run_dir

    models = {"--pretrained": args.pretrained, "--vocab": args.vocab}
    models.update({"--pretrained-bwd": args.pretrained_bwd, "--vocab-bwd": args.vocab_bwd})
    check_inputs_outside(args.out, models)
    out = dry_run_dir(args.out) if args.dry_run else args.out
    return fit(
        train,
        args.pretrained,
        out,
        vocab=args.vocab,
        valid_spec=_label_spec(args, args.valid, ["label"]) if args.valid else None,
        test_spec=_label_spec(args, args.test, ["label"]) if args.test else None,
        unlabelled=unlabelled,
        cfg=cfg,
        lm_cfg=lm_cfg,
        direction=args.direction,
        pretrained_bwd=args.pretrained_bwd,
        vocab_bwd=args.vocab_bwd,
        baseline=args.baseline,
        overwrite=args.overwrite or args.dry_run,
    )


def cmd_fit(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ulmfit.tasks.classifier import ClassifierConfig
    from ulmfit.tasks.run import fit, lm_config_for

    if args.valid and args.valid_pct is not None:
        raise UserError("give --valid or --valid-pct, not both")
    given = {
        k: getattr(args, k)
        for k in (
            "lr",
            "epochs",
            "bs",
            "drop_mult",
            "seed",
            "device",
            "compile",
            "workers",
            "cache_dir",
        )
        if getattr(args, k) is not None
    }
    if args.valid_pct is not None:
        given["valid_pct"] = args.valid_pct
    cfg = ClassifierConfig(
        **given,
        label_kind=args.label_kind,
        dry_run=args.dry_run,
        progress=False if args.json else None,
    )
    lm_given = {
        k: v
        for k, v in (
            ("epochs", args.lm_epochs),
            ("lr", args.lm_lr),
            ("keep_pretrained_vocab", args.keep_pretrained_vocab),
        )
        if v is not None
    }
    train = _label_spec(args, args.train, ["label"])
    unlabelled = [replace(_label_spec(args, u), label_cols=None) for u in args.unlabelled or []]
    try:
        result = _fit(args, fit, train, unlabelled, cfg, lm_config_for(cfg, **lm_given))
    except KeyboardInterrupt:
        from ulmfit.tasks.run import dry_run_dir

        where = dry_run_dir(args.out) if args.dry_run else args.out
        print(
            f"ulmfit: interrupted; repeat the same command to continue: finished stages in "
            f"{where} are reused and an interrupted one resumes from its last epoch",
            file=sys.stderr,
        )
        return 130
    if args.json:
        print(json.dumps(result))
        return 0
    kind = result["classifier"]["label_kind"]
    if result["dry_run"]:
        print(
            f"dry run into {result['out']} ({args.out} untouched): a few rows and steps per "
            "stage; its scores are not comparable with a real run's or the baselines'"
        )
    for key in ("lm", "lm_bwd"):
        if key in result:
            print(f"language model: {result[key]['out']}")
    print(
        f"classifier: {result['classifier']['model']}  (report: {result['classifier']['report']})"
    )
    _print_classifier_metrics("validation: ", {**result["classifier"]["valid"], "label_kind": kind})
    if "test" in result:
        _print_classifier_metrics("test: ", {**result["test"], "label_kind": kind})
    names = {"nbsvm": "NB-SVM", "tfidf_lr": "TF-IDF + LR"}
    for key, m in result.get("baselines", {}).items():
        _print_classifier_metrics(f"test, {names[key]}: ", {**m, "label_kind": kind})
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ulmfit.tasks.classifier import evaluate

    res = evaluate(
        args.run,
        _label_spec(args, args.test),  # unset columns: those of training
        bs=args.bs,
        device=args.device,
        label_kind=args.label_kind,
    )
    if args.json:
        print(json.dumps(res))
        return 0
    if res["label_kind"] == "float":
        _print_classifier_metrics(f"{res['path']}: ", res)
        for t, m in res.get("per_target", {}).items():
            print(f"  {t:<20} mae {m['mae']:.4f}  rmse {m['rmse']:.4f}")
        return 0
    if res["label_kind"] == "multi":
        _print_classifier_metrics(f"{res['path']}: ", res)
        print(f"  {'label':<20} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8} thresh")
        for c, m in res["per_class"].items():
            print(
                f"  {c:<20} {m['precision']:>9.4f} {m['recall']:>9.4f} {m['f1']:>9.4f} "
                f"{m['support']:>8} {m['threshold']:.2f}"
            )
        return 0
    print(
        f"{res['path']}: n={res['n']}, accuracy {res['accuracy']:.4f}, error rate "
        f"{res['error_rate']:.4f}, macro F1 {res['macro_f1']:.4f}"
    )
    print(f"  {'class':<20} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
    for c, m in res["per_class"].items():
        print(
            f"  {c:<20} {m['precision']:>9.4f} {m['recall']:>9.4f} {m['f1']:>9.4f} "
            f"{m['support']:>8}"
        )
    return 0


def _add_labelled_file_options(p: argparse.ArgumentParser) -> None:
    """Options of the commands that read labelled files (baseline, fit, evaluate)."""
    _add_column_options(p, True, ["csv", "tsv", "jsonl", "parquet", "folder"])
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _add_compile_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="train through torch.compile (for GPUs; compiling costs the first steps)",
    )


def _add_classifier_input_options(p: argparse.ArgumentParser) -> None:
    _add_labelled_file_options(p)
    _add_device_option(p)


def _add_classifier_commands(sub) -> None:
    p = sub.add_parser(
        "fit",
        help="the whole ULMFiT chain: fine-tune the LM on the texts, then train a classifier",
        description="Fine-tune --pretrained on the texts of --train, --valid and --unlabelled "
        "into RUN/lm, train a classifier (single-label, multi-label or regression) from it "
        "with gradual unfreezing (fastai's IMDb recipe) into RUN/model (safetensors + "
        "vocab.json + config.json) with metrics in RUN/report, then evaluate on --test if "
        "given. --direction bwd / both: the same with a backward LM (RUN/lm_bwd), both "
        "averaging the two classifiers. Each stage is cached: re-running into the same RUN "
        "reuses the finished stages and continues an interrupted one from its last epoch; a "
        "re-run that would retrain a finished stage (other inputs or settings) is refused "
        "unless --overwrite.",
    )
    p.add_argument("--train", required=True, metavar="FILE", help="labelled training file")
    p.add_argument("--valid", metavar="FILE", help="labelled validation file")
    p.add_argument(
        "--valid-pct",
        type=options.fraction(low_open=True),
        help="share of training rows held out (default 0.1)",
    )
    p.add_argument("--test", metavar="FILE", help="labelled test file, evaluated at the end")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="with --test: also NB-SVM and TF-IDF + LR on the same files, printed beside",
    )
    p.add_argument(
        "--unlabelled",
        action="append",
        metavar="FILE",
        help="more texts for LM fine-tuning only (repeatable; its --text-col as the others)",
    )
    p.add_argument("--pretrained", metavar="MODEL", help="forward LM: model dir or fastai .pth")
    p.add_argument("--vocab", metavar="ITOS.pkl", help="vocabulary of a fastai .pth")
    p.add_argument(
        "--direction",
        choices=["fwd", "bwd", "both"],
        default="fwd",
        help="forward classifier, backward (documents read in reverse, from "
        "--pretrained-bwd), or both with their probabilities averaged (default fwd)",
    )
    p.add_argument(
        "--pretrained-bwd",
        metavar="MODEL",
        help="backward LM ('ulmfit pretrain --backwards', or fastai's lstm_bwd.pth)",
    )
    p.add_argument(
        "--vocab-bwd",
        metavar="ITOS.pkl",
        help="vocabulary of a backward fastai .pth (default --vocab)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="RUN", help="run folder")
    p.add_argument(
        "--epochs",
        type=options.int_at_least(1),
        help="classifier epochs after unfreezing (default 2)",
    )
    p.add_argument(
        "--lm-epochs",
        type=options.int_at_least(1),
        help="LM fine-tuning epochs, unfrozen (default 10)",
    )
    p.add_argument(
        "--lm-lr", type=options.positive_float, help="LM fine-tuning peak rate, unfrozen (2e-3)"
    )
    _add_vocab_options(p, prefix="lm")
    p.add_argument(
        "--lr", type=options.positive_float, help="classifier peak rate of the first stage (2e-2)"
    )
    p.add_argument("--bs", type=options.int_at_least(1), help="classifier batch size (default 64)")
    p.add_argument(
        "--drop-mult", type=options.nonnegative_float, help="classifier dropout scale (default 0.5)"
    )
    p.add_argument("--seed", type=options.int_at_least(0), help="seed (default 42)")
    p.add_argument(
        "--workers",
        type=options.int_at_least(0),
        default=0,
        help="tokenizer processes (0: all cores)",
    )
    p.add_argument("--cache-dir", type=Path, help="cache folder")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="smoke test: a few rows of every class, a few steps per stage, written to "
        "RUN.dry-run (RUN is not touched); its scores are not comparable",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the finished stages of RUN whose inputs or settings changed (without "
        "it such a run is refused; an unchanged re-run reuses them either way)",
    )
    _add_classifier_input_options(p)
    _add_compile_option(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser(
        "evaluate",
        help="metrics of a classifier on a test file (accuracy / F1, multi-label F1 / AUC, MAE)",
        description="RUN: a run folder of 'ulmfit fit' (or its model directory). Test labels "
        "must be classes seen in training. --json adds the predictions in input order.",
    )
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("test", metavar="TEST_FILE")
    p.add_argument(
        "--bs", type=options.int_at_least(1), default=64, help="documents per batch (default 64)"
    )
    _add_classifier_input_options(p)
    p.set_defaults(func=cmd_evaluate)


# ---------------------------------------------------------------------------------------------
# Using a trained classifier: predict, explain, serve

# ServeLimits' defaults, repeated so that --help shows them without importing the server
# (tests/test_serve.py keeps them equal).
SERVE_DEFAULTS = {
    "max_texts": 64,
    "max_chars": 20_000,
    "max_explain_chars": 20_000,
    "max_body_bytes": 2_000_000,
    "read_timeout_s": 30,
}


def _texts_to_predict(args: argparse.Namespace, config: dict) -> tuple[list[str], list[int], list]:
    """``(texts, 1-based rows, skipped empty rows)`` from --text or INPUT_FILE (text columns:
    --text-col, else those of training)."""
    from ulmfit.data.sources import ReadReport, SourceSpec, iter_source

    if (args.text is None) == (args.input is None):
        raise UserError("give the texts with --text TEXT (repeatable) or an INPUT_FILE, not both")
    if args.text is not None:  # the rule of files: a text with nothing in it is skipped
        kept = [(i, t) for i, t in enumerate(args.text, 1) if t.strip()]
        if not kept:
            raise UserError("no text to predict: every --text is empty")
        skipped = [i for i, t in enumerate(args.text, 1) if not t.strip()]
        return [t for _, t in kept], [i for i, _ in kept], skipped
    spec = SourceSpec(
        path=_input_path(args.input),
        text_cols=args.text_col or list(config.get("text_cols") or []) or None,
        fmt=args.format,
        encoding=args.encoding,
        corpus_mode="lines",
    )
    report = ReadReport()
    texts, rows = [], []
    for batch in iter_source(spec, report=report):
        texts.extend(batch.texts)
        rows.extend(r + 1 for r in batch.rows)
    return texts, rows, [r + 1 for r in report.skipped_empty]


def _prediction_columns(predictor) -> list[str]:
    if predictor.kind == "float":
        return list(predictor.targets)
    head = ["label"] if predictor.kind == "single" else ["labels"]
    return head + [f"p_{c}" for c in predictor.classes]


def _prediction_cells(predictor, pred: dict) -> list:
    if predictor.kind == "float":
        values = pred["values"] if "values" in pred else {predictor.targets[0]: pred["value"]}
        return [f"{values[t]:.6g}" for t in predictor.targets]
    if predictor.kind == "single":
        head = [pred["label"]]
    else:
        head = [(predictor.config.get("label_delim") or " ").join(pred["labels"])]
    return head + [f"{pred['probabilities'][c]:.6f}" for c in predictor.classes]


def _write_predictions_csv(args: argparse.Namespace, predictor, texts, rows, preds) -> None:
    import csv

    from ulmfit.atomic import write_output

    def write(f) -> None:
        w = csv.writer(f)
        w.writerow(["row", "text", *_prediction_columns(predictor)])
        for row, text, pred in zip(rows, texts, preds):
            w.writerow([row, text, *_prediction_cells(predictor, pred)])

    write_output(args.out, write, inputs=_predict_inputs(args), overwrite=args.overwrite)


def _predict_inputs(args: argparse.Namespace) -> list:
    """What predict / explain read, so --out can never replace it: the input file and the
    classifier's model directory (a file written beside it in the run folder is fine)."""
    from ulmfit.tasks.classifier import model_dir_of

    inputs = [model_dir_of(args.model)]
    if getattr(args, "input", None) is not None:
        inputs.append(_input_path(args.input))
    return inputs


def _check_out_file(args: argparse.Namespace) -> None:
    """A bad --out path is refused before the model is loaded and the texts predicted."""
    from ulmfit.atomic import check_output

    if args.out is not None:
        check_output(args.out, inputs=_predict_inputs(args), overwrite=args.overwrite)


def _short(pred: dict) -> str:
    if "label" in pred:
        return f"{pred['label']}  ({pred['probabilities'][pred['label']]:.3f})"
    if "labels" in pred:
        return ", ".join(pred["labels"]) or "(none)"
    if "value" in pred:
        return f"{pred['value']:.4f}"
    return ", ".join(f"{k} {v:.4f}" for k, v in pred["values"].items())


def cmd_predict(args: argparse.Namespace) -> int:
    from ulmfit.predict import Predictor

    if args.input is not None and not Path(args.input).exists():
        _input_path(args.input)  # a clear error before the model is loaded
    _check_out_file(args)
    predictor = Predictor.load(args.model, device=args.device, bs=args.bs)
    texts, rows, skipped = _texts_to_predict(args, predictor.config)
    preds = predictor.predict(texts)
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (" ..." if len(skipped) > 10 else "")
        print(f"ulmfit: {len(skipped)} row(s) without text skipped: {shown}", file=sys.stderr)
    if args.out is not None:
        _write_predictions_csv(args, predictor, texts, rows, preds)
    if args.json:
        if args.out is not None:
            print(json.dumps({"out": str(args.out), "n": len(preds), "skipped_empty": skipped}))
        else:
            out = [{"row": r, **p} for r, p in zip(rows, preds)]
            print(json.dumps({**predictor.info(), "predictions": out}))
    elif args.out is not None:
        print(f"wrote {len(preds):,} predictions to {args.out}")
    else:
        for row, text, pred in zip(rows, texts, preds):
            one_line = " ".join(text.split())
            one_line = one_line[:60] + ("…" if len(one_line) > 60 else "")
            print(f"{row}\t{_short(pred)}\t{one_line}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from ulmfit.atomic import write_output
    from ulmfit.explain import render_html
    from ulmfit.predict import Predictor

    _check_out_file(args)
    predictor = Predictor.load(args.model, device=args.device)
    exp = predictor.explain(args.text, args.target)
    if args.out is not None:
        page = render_html(exp, predictor.info())
        write_output(
            args.out,
            lambda f: f.write(page),
            inputs=_predict_inputs(args),
            overwrite=args.overwrite,
        )
    if args.json:
        print(json.dumps(exp if args.out is None else {**exp, "out": str(args.out)}))
        return 0
    print(f"prediction: {_short(exp['prediction'])}")
    words = [s for s in exp["segments"] if s["weight"] is not None]
    top = sorted(words, key=lambda s: -s["weight"])[:10]
    print(f"words that drove {exp['target']}: " + ", ".join(
        f"{s['text']} {s['weight']:.2f}" for s in top))  # fmt: skip
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ulmfit.serve import ServeLimits, run

    given = {k: getattr(args, k) for k in SERVE_DEFAULTS if getattr(args, k) is not None}
    run(
        args.model,
        host=args.host,
        port=args.port,
        limits=ServeLimits(**given),
        device=args.device,
        log_level=args.log_level,
        threads=args.threads,
        allowed_hosts=args.allowed_hosts.split(",") if args.allowed_hosts else None,
    )
    return 0


def _add_use_commands(sub) -> None:
    model_help = "a run folder of 'ulmfit fit' or its model directory (single or ensemble)"
    p = sub.add_parser(
        "predict",
        help="labels and probabilities of new texts, in input order",
        description="Predict the texts given with --text, or every row of INPUT_FILE "
        "(CSV/TSV/JSONL/Parquet: text columns as in training unless --text-col; .txt: one "
        "text per line). Batched by length inside; the results keep the input order (rows "
        "without text are skipped and listed on stderr). Prints one line per text, or with "
        "--out a CSV (row, text, label or labels or values, p_CLASS per class).",
    )
    p.add_argument("model", type=Path, metavar="MODEL", help=model_help)
    p.add_argument("input", nargs="?", metavar="INPUT_FILE", help="file of texts")
    p.add_argument("--text", action="append", metavar="TEXT", help="a text (repeatable)")
    p.add_argument("--text-col", action="append", metavar="COL", help="text column of INPUT_FILE")
    p.add_argument(
        "--format",
        choices=["csv", "tsv", "jsonl", "parquet", "txt"],
        help="format of INPUT_FILE (default: from its name)",
    )
    p.add_argument("--encoding", default="utf-8", help="text encoding of INPUT_FILE")
    p.add_argument("--out", type=Path, metavar="FILE.csv", help="write the predictions as CSV")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (never an input)"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: the predictions (with --out: a summary)",
    )
    p.add_argument(
        "--bs", type=options.int_at_least(1), default=64, help="texts per batch (default 64)"
    )
    _add_device_option(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "explain",
        help="which words drove a prediction (intrinsic attention), as an HTML page",
        description="The prediction for TEXT and every word's importance: fastai v1's "
        "intrinsic attention (the gradient of the predicted class's probability with "
        "respect to the word embeddings, normalised per text). Prints the most important "
        "words; --out writes a page with the text shaded word by word.",
    )
    p.add_argument("model", type=Path, metavar="MODEL", help=model_help)
    p.add_argument("--text", required=True, metavar="TEXT", help="the text to explain")
    p.add_argument("--out", type=Path, metavar="FILE.html", help="write the explanation page")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (never an input)"
    )
    p.add_argument(
        "--target",
        metavar="CLASS",
        help="explain this class (default: the predicted one; multi-label: the most probable)",
    )
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    _add_device_option(p)
    p.set_defaults(func=cmd_explain)

    d = SERVE_DEFAULTS
    p = sub.add_parser(
        "serve",
        help="serve a classifier over HTTP, with a web page to try it",
        description='POST /predict {"texts": [...]} -> {"predictions": [...]} in order; '
        'POST /explain {"text": ...}; GET /health; GET / a page to type a text and see '
        "its label, probabilities and shaded words. Over-limit requests get 413, malformed "
        "ones 422, non-JSON bodies 415, other hosts 400, all with a JSON error body.",
    )
    p.add_argument("model", type=Path, metavar="MODEL", help=model_help)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--max-texts",
        type=options.int_at_least(1),
        help=f"texts per /predict request (default {d['max_texts']})",
    )
    p.add_argument(
        "--max-chars",
        type=options.int_at_least(1),
        help=f"characters per text (default {d['max_chars']:,})",
    )
    p.add_argument(
        "--max-explain-chars",
        type=options.int_at_least(1),
        help=f"characters per /explain text (default {d['max_explain_chars']:,})",
    )
    p.add_argument(
        "--max-body-bytes",
        type=options.int_at_least(1),
        help=f"request body size (default {d['max_body_bytes']:,})",
    )
    p.add_argument(
        "--read-timeout",
        dest="read_timeout_s",
        type=options.int_at_least(1),
        metavar="SECONDS",
        help="time for a client to send a request's head, then its body "
        f"(default {d['read_timeout_s']})",
    )
    p.add_argument(
        "--allowed-hosts",
        metavar="HOST[,HOST...]",
        help="Host headers answered, others get 400 (*.example.com matches subdomains; "
        "default: --host and localhost; with --host 0.0.0.0 name the hosts clients use)",
    )
    _add_device_option(p)
    p.add_argument(
        "--threads",
        type=options.int_at_least(1),
        help="torch threads for the model (default: every core)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default info: one line per request)",
    )
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = options.Parser(
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
    _add_vocab_size_options(p)
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
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "tokenize",
        help="write the tokens of every row as JSON lines",
        description="One JSON list of tokens per input row, in input order.",
    )
    p.add_argument("inputs", nargs=1, metavar="INPUT")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.jsonl")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (never an input)"
    )
    _add_input_options(p, labels=False)
    p.set_defaults(func=cmd_tokenize)
    _add_lm_commands(sub)
    _add_baseline_command(sub)
    _add_classifier_commands(sub)
    _add_use_commands(sub)
    return parser


def _quiet_unless_rank0() -> None:
    """Under torchrun only rank 0 reports: the other ranks' stdout goes nowhere (their
    errors still reach stderr)."""
    if os.environ.get("RANK", "0") != "0" and os.environ.get("WORLD_SIZE", "1") != "1":
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- for the life of the process


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UserError as e:
        print(f"ulmfit: error: {e}", file=sys.stderr)
        return 2
    _quiet_unless_rank0()
    import signal
    import threading

    def terminated(signum, frame):  # SIGTERM (kill, torchrun, a scheduler) like Ctrl-C:
        raise KeyboardInterrupt  # context managers clean up, worker pools are stopped

    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminated) if on_main else None
    try:
        return args.func(args)
    except UserError as e:
        print(f"ulmfit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ulmfit: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return options.stdout_closed()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
