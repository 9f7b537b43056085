"""Classifiers on the command line: ``baseline``, ``fit`` (the whole ULMFiT chain) and
``evaluate``."""

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
    add_labelled_file_options,
    label_spec,
)
from ulmfit.cli.fields import add_config_options, add_field_option, add_option, given_settings
from ulmfit.cli.lm import add_pretrained_vocab_options, kept_note
from ulmfit.config import ClassifierConfig, FinetuneLMConfig
from ulmfit.errors import UserError

# ---------------------------------------------------------------------------------------------
# Linear baselines: the bar a deep model has to clear on the same data


def cmd_baseline(args: argparse.Namespace) -> int:
    """Fit two linear baselines on --train and score them on --test: NBSVM-LR (binarized uni+bigrams
    scaled by the log-count ratio, logistic regression, one-vs-rest or one model per label) and
    TF-IDF uni+bigrams + logistic regression (Ridge for a numeric target). Prints accuracy /
    error / macro and per-class F1 (single-label), micro / macro F1 and mean ROC AUC
    (multi-label) or MAE / RMSE (numeric), and the seconds each took."""
    from ulmfit.baselines import format_report, run_baselines

    result = run_baselines(
        label_spec(args, args.train, ["label"]),
        label_spec(args, args.test, ["label"]),
        kind=args.label_kind,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(format_report(result))
    return 0


def _add_baseline_command(sub) -> None:
    p = add_command(
        sub,
        "baseline",
        cmd_baseline,
        "NB-SVM and TF-IDF + logistic regression test metrics (the bar to clear)",
    )
    p.add_argument("--train", required=True, metavar="FILE", help="training file")
    p.add_argument("--test", required=True, metavar="FILE", help="test file")
    add_labelled_file_options(p)


# ---------------------------------------------------------------------------------------------
# Classifiers: fit (the whole ULMFiT chain) and evaluate


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
        valid_spec=label_spec(args, args.valid, ["label"]) if args.valid else None,
        test_spec=label_spec(args, args.test, ["label"]) if args.test else None,
        unlabelled=unlabelled,
        cfg=cfg,
        lm_cfg=lm_cfg,
        direction=args.direction,
        pretrained_bwd=args.pretrained_bwd,
        vocab_bwd=args.vocab_bwd,
        baseline=args.baseline,
        overwrite=args.overwrite or args.dry_run,
    )


def _fit_configs(args: argparse.Namespace):
    """The ClassifierConfig and the LM fine-tuning config of the options given."""
    from ulmfit.tasks.run import lm_config_for

    if args.valid and args.valid_pct is not None:
        raise UserError("give --valid or --valid-pct, not both")
    cfg = ClassifierConfig(
        **{
            **given_settings(args, ClassifierConfig),
            "label_kind": args.label_kind,
            "dry_run": args.dry_run,
            "progress": False if args.json else None,
        }
    )
    lm_given = {
        k: v
        for k, v in (
            ("epochs", args.lm_epochs),
            ("lr", args.lm_lr),
            ("keep", args.lm_keep),
            ("patience", args.lm_patience),
            ("keep_pretrained_vocab", args.keep_pretrained_vocab),
        )
        if v is not None
    }
    return cfg, lm_config_for(cfg, **lm_given)


def _print_fit(args: argparse.Namespace, result: dict) -> None:
    kind = result["classifier"]["label_kind"]
    if result["dry_run"]:
        print(
            f"dry run into {result['out']} ({args.out} untouched): a few rows and steps per "
            "stage; its scores are not comparable with a real run's or the baselines'"
        )
    for key in ("lm", "lm_bwd"):
        if key in result:
            print(f"language model: {result[key]['out']}{kept_note(result[key])}")
    print(
        f"classifier: {result['classifier']['model']}  (report: {result['classifier']['report']})"
        + kept_note(result["classifier"])
    )
    _print_classifier_metrics("validation: ", {**result["classifier"]["valid"], "label_kind": kind})
    if "test" in result:
        _print_classifier_metrics("test: ", {**result["test"], "label_kind": kind})
    names = {"nbsvm": "NB-SVM", "tfidf_lr": "TF-IDF + LR"}
    for key, m in result.get("baselines", {}).items():
        _print_classifier_metrics(f"test, {names[key]}: ", {**m, "label_kind": kind})


def cmd_fit(args: argparse.Namespace) -> int:
    """Fine-tune --pretrained on the texts of --train, --valid and --unlabelled into RUN/lm, train a
    classifier (single-label, multi-label or regression) from it with gradual unfreezing
    (fastai's IMDb recipe) into RUN/model (safetensors + vocab.json + config.json) with metrics
    in RUN/report, then evaluate on --test if given. --direction bwd / both: the same with a
    backward LM (RUN/lm_bwd), both averaging the two classifiers. Each stage is cached:
    re-running into the same RUN reuses the finished stages and continues an interrupted one
    from its last epoch; a re-run that would retrain a finished stage (other inputs or settings)
    is refused unless --overwrite."""
    from dataclasses import replace

    from ulmfit.tasks.run import fit

    cfg, lm_cfg = _fit_configs(args)
    train = label_spec(args, args.train, ["label"])
    unlabelled = [replace(label_spec(args, u), label_cols=None) for u in args.unlabelled or []]
    try:
        result = _fit(args, fit, train, unlabelled, cfg, lm_cfg)
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
    _print_fit(args, result)
    return 0


def _print_per_class(res: dict, thresholds: bool) -> None:
    """The per-class table of evaluate (multi-label: with each label's tuned threshold)."""
    name = "label" if thresholds else "class"
    head = f"  {name:<20} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"
    print(head + (" thresh" if thresholds else ""))
    for c, m in res["per_class"].items():
        print(
            f"  {c:<20} {m['precision']:>9.4f} {m['recall']:>9.4f} {m['f1']:>9.4f} "
            f"{m['support']:>8}" + (f" {m['threshold']:.2f}" if thresholds else "")
        )


def cmd_evaluate(args: argparse.Namespace) -> int:
    """RUN: a run folder of 'ulmfit fit' (or its model directory). Test labels must be classes seen
    in training. --json adds the predictions in input order."""
    from ulmfit.tasks.classifier import evaluate

    res = evaluate(
        args.run,
        label_spec(args, args.test),  # unset columns: those of training
        bs=args.bs,
        device=args.device,
        amp=args.amp,
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
        _print_per_class(res, thresholds=True)
        return 0
    print(
        f"{res['path']}: n={res['n']}, accuracy {res['accuracy']:.4f}, error rate "
        f"{res['error_rate']:.4f}, macro F1 {res['macro_f1']:.4f}"
    )
    _print_per_class(res, thresholds=False)
    return 0


def _add_fit_inputs(p: argparse.ArgumentParser) -> None:
    """fit's files: the labelled data, the pretrained models and the run folder."""
    p.add_argument("--train", required=True, metavar="FILE", help="labelled training file")
    p.add_argument("--valid", metavar="FILE", help="labelled validation file")
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
    add_option(
        p,
        "--direction",
        choices=["fwd", "bwd", "both"],
        default="fwd",
        help="forward classifier, backward (documents read in reverse, from "
        "--pretrained-bwd), or both with their probabilities averaged",
    )
    p.add_argument(
        "--pretrained-bwd",
        metavar="MODEL",
        help="backward LM ('ulmfit pretrain --backwards', or fastai's lstm_bwd.pth)",
    )
    p.add_argument(
        "--vocab-bwd",
        metavar="ITOS.pkl",
        help="vocabulary of a backward fastai .pth (default: --vocab)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="RUN", help="run folder")


def _add_fit_settings(p: argparse.ArgumentParser) -> None:
    """fit's settings: every option field of ClassifierConfig, and the LM fine-tuning ones."""
    add_config_options(p, ClassifierConfig)
    lm = FinetuneLMConfig
    add_field_option(p, lm, "epochs", flag="--lm-epochs", help="LM fine-tuning epochs, unfrozen")
    add_field_option(p, lm, "lr", flag="--lm-lr", help="LM fine-tuning peak rate, unfrozen")
    add_field_option(
        p,
        lm,
        "keep",
        flag="--lm-keep",
        help="which epoch's weights LM fine-tuning's unfrozen stage ends on: its last, or the "
        "one with the best held-out loss (--lm-epochs is then a maximum)",
    )
    add_field_option(
        p,
        lm,
        "patience",
        flag="--lm-patience",
        help="stop LM fine-tuning after this many epochs without a better held-out loss "
        "(default: run every epoch)",
    )
    add_pretrained_vocab_options(p, prefix="lm")
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


def add_classifier_commands(sub) -> None:
    _add_baseline_command(sub)
    p = add_command(
        sub,
        "fit",
        cmd_fit,
        "the whole ULMFiT chain: fine-tune the LM on the texts, then train a classifier",
    )
    _add_fit_inputs(p)
    _add_fit_settings(p)
    add_labelled_file_options(p)
    add_device_option(p)
    add_compile_option(p)

    p = add_command(
        sub,
        "evaluate",
        cmd_evaluate,
        "metrics of a classifier on a test file (accuracy / F1, multi-label F1 / AUC, MAE)",
    )
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("test", metavar="TEST_FILE")
    add_option(p, "--bs", type=options.int_at_least(1), default=64, help="documents per batch")
    add_labelled_file_options(p)
    add_device_option(p)
    add_amp_option(p)
