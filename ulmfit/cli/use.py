"""Using a trained classifier on the command line: ``predict``, ``explain``, ``serve``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ulmfit import options
from ulmfit.cli.common import (
    add_amp_option,
    add_command,
    add_device_option,
    add_json_option,
    add_overwrite_option,
    input_path,
)
from ulmfit.cli.fields import add_config_options, add_field_option, add_option, given_settings
from ulmfit.config import ServeLimits, ServeSettings
from ulmfit.errors import UserError


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
        path=input_path(args.input),
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
    from ulmfit.models.model_dir import model_dir_of

    inputs = [model_dir_of(args.model)]
    if getattr(args, "input", None) is not None:
        inputs.append(input_path(args.input))
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
    """Predict the texts given with --text, or every row of INPUT_FILE (CSV/TSV/JSONL/Parquet: text
    columns as in training unless --text-col; .txt: one text per line). Batched by length
    inside; the results keep the input order (rows without text are skipped and listed on
    stderr). Prints one line per text, or with --out a CSV (row, text, label or labels or
    values, p_CLASS per class)."""
    from ulmfit.predict import Predictor

    if args.input is not None and not Path(args.input).exists():
        input_path(args.input)  # a clear error before the model is loaded
    _check_out_file(args)
    predictor = Predictor.load(args.model, device=args.device, bs=args.bs, amp=args.amp)
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
    """The prediction for TEXT and every word's importance: fastai v1's intrinsic attention (the
    gradient of the predicted class's probability with respect to the word embeddings,
    normalised per text). Prints the most important words; --out writes a page with the text
    shaded word by word."""
    from ulmfit.atomic import write_output
    from ulmfit.explain import render_html
    from ulmfit.predict import Predictor

    _check_out_file(args)
    predictor = Predictor.load(args.model, device=args.device, amp=args.amp)
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
    """POST /predict {"texts": [...]} -> {"predictions": [...]} in order; POST /explain {"text":
    ...}; GET /health; GET / a page to type a text and see its label, probabilities and shaded
    words. Over-limit requests get 413, malformed ones 422, non-JSON bodies 415, other hosts
    400, all with a JSON error body."""
    from ulmfit.serve import run

    run(
        args.model,
        host=args.host,
        port=args.port,
        limits=ServeLimits(**given_settings(args, ServeLimits)),
        device=args.device,
        amp=args.amp,
        log_level=args.log_level,
        threads=args.threads,
        allowed_hosts=args.allowed_hosts.split(",") if args.allowed_hosts else None,
    )
    return 0


_MODEL_HELP = "a run folder of 'ulmfit fit' or its model directory (single or ensemble)"


def _add_predict_command(sub) -> None:
    p = add_command(
        sub, "predict", cmd_predict, "labels and probabilities of new texts, in input order"
    )
    p.add_argument("model", type=Path, metavar="MODEL", help=_MODEL_HELP)
    p.add_argument("input", nargs="?", metavar="INPUT_FILE", help="file of texts")
    p.add_argument("--text", action="append", metavar="TEXT", help="a text (repeatable)")
    p.add_argument("--text-col", action="append", metavar="COL", help="text column of INPUT_FILE")
    p.add_argument(
        "--format",
        choices=["csv", "tsv", "jsonl", "parquet", "txt"],
        help="format of INPUT_FILE (default: from its name)",
    )
    add_option(p, "--encoding", default="utf-8", help="text encoding of INPUT_FILE")
    p.add_argument("--out", type=Path, metavar="FILE.csv", help="write the predictions as CSV")
    add_overwrite_option(p)
    add_json_option(p, "print one JSON object: the predictions (with --out: a summary)")
    add_option(p, "--bs", type=options.int_at_least(1), default=64, help="texts per batch")
    add_device_option(p)
    add_amp_option(p)


def _add_explain_command(sub) -> None:
    p = add_command(
        sub,
        "explain",
        cmd_explain,
        "which words drove a prediction (intrinsic attention), as an HTML page",
    )
    p.add_argument("model", type=Path, metavar="MODEL", help=_MODEL_HELP)
    p.add_argument("--text", required=True, metavar="TEXT", help="the text to explain")
    p.add_argument("--out", type=Path, metavar="FILE.html", help="write the explanation page")
    add_overwrite_option(p)
    p.add_argument(
        "--target",
        metavar="CLASS",
        help="explain this class (default: the predicted one; multi-label: the most probable)",
    )
    add_json_option(p, "print the explanation as JSON")
    add_device_option(p)
    add_amp_option(p)


def _add_serve_command(sub) -> None:
    p = add_command(
        sub, "serve", cmd_serve, "serve a classifier over HTTP, with a web page to try it"
    )
    p.add_argument("model", type=Path, metavar="MODEL", help=_MODEL_HELP)
    add_field_option(p, ServeSettings, "host", filled=True)
    add_field_option(p, ServeSettings, "port", filled=True)
    add_config_options(p, ServeLimits)
    p.add_argument(
        "--allowed-hosts",
        metavar="HOST[,HOST...]",
        help="Host headers answered, others get 400 (*.example.com matches subdomains; "
        "default: --host and localhost; with --host 0.0.0.0 name the hosts clients use)",
    )
    add_device_option(p)
    add_amp_option(p)
    add_field_option(p, ServeSettings, "threads")
    add_field_option(p, ServeSettings, "log_level", filled=True)


def add_use_commands(sub) -> None:
    _add_predict_command(sub)
    _add_explain_command(sub)
    _add_serve_command(sub)
