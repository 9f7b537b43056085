"""Language models on the command line: ``lm-eval``, ``pretrain``, ``finetune-lm``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ulmfit import options
from ulmfit.cli.common import (
    add_amp_option,
    add_command,
    add_compile_option,
    add_device_option,
    add_input_options,
    add_vocab_size_options,
    specs,
)
from ulmfit.cli.fields import add_config_options, add_field_option, add_option, given_settings
from ulmfit.config import FinetuneLMConfig, LRFindConfig, PretrainConfig
from ulmfit.errors import UserError


def _print_metrics(label: str, m: dict) -> None:
    print(
        f"{label}loss {m['loss']:.4f}  perplexity {m['perplexity']:.2f}  "
        f"accuracy {100 * m['accuracy']:.2f}%  ({m['tokens']:,} tokens predicted in "
        f"{m['docs']:,} documents; {100 * m['unk_rate']:.2f}% of tokens unknown to the model)"
    )


def cmd_lm_eval(args: argparse.Namespace) -> int:
    """Each document is read alone from a fresh hidden state; its tokens 2..n are predicted from
    their prefixes. MODEL: a model directory, or a fastai .pth with --vocab ITOS.pkl."""
    from ulmfit.corpus import read_token_corpus
    from ulmfit.lm_eval import lm_eval
    from ulmfit.models.io import load_lm

    inputs = specs(args)
    from ulmfit.devices import resolve_device

    model, vocab, info = load_lm(args.model, args.vocab)
    model.to(resolve_device(args.device))
    corpus = read_token_corpus(
        inputs,
        limit_docs=args.limit_docs,
        workers=args.workers,
        cache_dir=args.cache_dir,
        progress=False if args.json else None,
    )
    m = lm_eval(
        model,
        vocab,
        corpus,
        bs=args.bs,
        bptt=args.bptt,
        backwards=info["direction"] == "bwd",
        amp=args.amp,
    )
    m = {**m, "model": info["path"], "direction": info["direction"]}
    if args.json:
        print(json.dumps(m))
    else:
        _print_metrics("", m)
    return 0


def _lm_config(args: argparse.Namespace, cls):
    """A PretrainConfig / FinetuneLMConfig from the options given (others keep the defaults)."""
    given = given_settings(args, cls)
    if args.json:
        given["progress"] = False
    return cls(**given)


def kept_note(result: dict) -> str:
    """``  (kept epoch 2 of 4: best valid_loss ...)`` for a stage that watched validation;
    nothing for the default (every epoch, the last kept), whose output stays as it was."""
    kept = result.get("kept") or {}
    return f"  (kept {kept['reason']})" if kept.get("monitor") else ""


def _print_training(result: dict) -> None:
    if result.get("vocab_remap"):
        print(f"vocabulary: {result['vocab_remap']['summary']}")
    for key, label in (("before", "before: "), ("after", "after:  ")):
        if result.get(key):
            _print_metrics(label, result[key])
    resumed = "  (resumed an unfinished run)" if result.get("resumed") else ""
    print(f"model written to {result['out']}  (report: {result['report']}){resumed}")
    if note := kept_note(result):
        print(note.strip())


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


def _lr_find_config(args: argparse.Namespace) -> LRFindConfig:
    if args.resume:
        raise UserError("--lr-find trains nothing, so there is nothing to --resume; drop one")
    return LRFindConfig(
        plot=args.lr_find_plot, stage=getattr(args, "lr_find_stage", LRFindConfig.stage)
    )


def _train(args: argparse.Namespace, run) -> int:
    """Run a training command; on Ctrl-C say where the resumable state is."""
    from ulmfit.tasks.lm_partial import partial_dir

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
    """Build the vocabulary from CORPUS, hold out documents (or use --valid) and train an AWD-LSTM
    language model with one-cycle; writes a model directory."""
    from ulmfit.tasks.language_model import pretrain, pretrain_lr_find

    valid = None
    if args.valid:
        valid = specs(argparse.Namespace(**{**vars(args), "inputs": [args.valid]}))
    cfg = _lm_config(args, PretrainConfig)
    if args.lr_find:
        find = _lr_find_config(args)
        result = pretrain_lr_find(specs(args), args.out, cfg, valid=valid, find=find)
        _print_lr_find(result, args.json)
        return 0
    return _train(
        args, lambda: pretrain(specs(args), args.out, cfg, valid=valid, resume=args.resume)
    )


def cmd_finetune_lm(args: argparse.Namespace) -> int:
    """Vocabulary from DATA (labelled and unlabelled files alike, text only), pretrained rows
    remapped onto it, validation perplexity before and after; freeze + one-cycle, then unfreeze
    + one-cycle, as fastai does."""
    from ulmfit.tasks.language_model import finetune_lm, finetune_lm_lr_find

    cfg = _lm_config(args, FinetuneLMConfig)
    if args.lr_find:
        find = _lr_find_config(args)
        result = finetune_lm_lr_find(
            specs(args), args.pretrained, args.out, cfg, vocab=args.vocab, find=find
        )
        _print_lr_find(result, args.json)
        return 0
    return _train(
        args,
        lambda: finetune_lm(
            specs(args), args.pretrained, args.out, cfg, vocab=args.vocab, resume=args.resume
        ),
    )


def _add_run_options(p: argparse.ArgumentParser, finetune: bool) -> None:
    """Where a training run goes and what it does: overwrite, dry run, resume, lr-find."""
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
    if finetune:
        add_field_option(p, LRFindConfig, "stage", flag="--lr-find-stage", filled=True)


def _add_training_options(p: argparse.ArgumentParser, cls: type) -> None:
    """Every option field of ``cls`` (PretrainConfig / FinetuneLMConfig), then the
    vocabulary, device and run options."""
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="model directory")
    add_config_options(p, cls)
    add_vocab_size_options(p)
    add_device_option(p)
    add_compile_option(p)
    _add_run_options(p, finetune=cls is FinetuneLMConfig)


_RUN_EPILOG = (
    "Training runs in DIR.partial next to --out DIR (run.json: the settings; "
    "train/checkpoint.pt: replaced atomically after every epoch; train/metrics.jsonl, "
    "steps.jsonl, loss.png: the logs). When it finishes, DIR is published in one rename with "
    "the logs in DIR/train (no checkpoint: model directories hold no pickle) and DIR.partial "
    "is removed. If the run is interrupted, repeat the same command with --resume; without "
    "--resume an existing DIR.partial is an error, never deleted."
)


def add_pretrained_vocab_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
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


def _add_lm_eval_command(sub) -> None:
    p = add_command(
        sub,
        "lm-eval",
        cmd_lm_eval,
        "perplexity and next-token accuracy of a language model on text",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("inputs", nargs="+", metavar="DATA")
    p.add_argument("--vocab", metavar="ITOS.pkl", help="vocabulary of a fastai .pth")
    add_device_option(p)
    add_amp_option(p)
    p.add_argument(
        "--limit-docs", type=options.int_at_least(1), metavar="N", help="only the first N documents"
    )
    add_option(p, "--bs", type=options.int_at_least(1), default=64, help="documents per batch")
    add_option(p, "--bptt", type=options.int_at_least(1), default=200, help="tokens per chunk")
    add_input_options(p, labels=False)


def _add_lm_training_command(sub, name: str, func, help: str, cls: type, data: str):
    """pretrain / finetune-lm: the data, every option of ``cls`` and the input options."""
    p = add_command(sub, name, func, help, epilog=_RUN_EPILOG)
    p.add_argument("inputs", nargs="+", metavar=data)
    _add_training_options(p, cls)
    add_input_options(p, labels=False)
    return p


def add_lm_commands(sub) -> None:
    _add_lm_eval_command(sub)
    help = "train a language model from scratch on a corpus"
    p = _add_lm_training_command(sub, "pretrain", cmd_pretrain, help, PretrainConfig, "CORPUS")
    p.add_argument("--valid", metavar="FILE", help="validation corpus (default: held-out docs)")
    p.add_argument("--backwards", action="store_true", help="a backward model (tokens reversed)")

    help = "fine-tune a pretrained language model on target text (ULMFiT stage 2)"
    p = _add_lm_training_command(
        sub, "finetune-lm", cmd_finetune_lm, help, FinetuneLMConfig, "DATA"
    )
    p.add_argument("--pretrained", required=True, metavar="MODEL", help="model dir or fastai .pth")
    p.add_argument("--vocab", metavar="ITOS.pkl", help="vocabulary of a fastai .pth")
    add_pretrained_vocab_options(p)
