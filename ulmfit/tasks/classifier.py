"""Text classifiers: ULMFiT stage 3 (``fit_classifier``), evaluation, and the whole chain.

``fit_classifier`` numericalizes the labelled texts with the *fine-tuned language model's*
vocabulary (unknown tokens -> xxunk = 0), builds a :class:`~ulmfit.models.classifier.
TextClassifier` with the LM's shapes and fastai's classifier dropouts (``awd_lstm_clas_config``
scaled by ``drop_mult`` 0.5), copies the LM's encoder into it and trains it with fastai's IMDb
recipe of gradual unfreezing::

    freeze_to(-1); fit_one_cycle(1, lr)
    freeze_to(-2); fit_one_cycle(1, slice(lr / 2 / 2.6**4, lr / 2))
    freeze_to(-3); fit_one_cycle(1, slice(lr / 4 / 2.6**4, lr / 4))
    unfreeze();    fit_one_cycle(epochs, slice(lr / 20 / 2.6**4, lr / 20))

(fastai's 2e-2, 1e-2, 5e-3, 1e-3) with lr 2e-2, moms (0.8, 0.7, 0.8), bs 64, wd 0.01 and no gradient clipping (fastai's
``text_classifier_learner`` adds none). Training batches come from ``ClassifierLoader`` (sortish),
validation batches sorted by length; predictions are put back in input order.

The run folder::

    RUN/lm/       the fine-tuned language model (``ulmfit fit`` only; see ulmfit.tasks.run)
    RUN/model/    the exported classifier: model.safetensors, vocab.json, config.json
                  (task "classifier", label kind, classes, architecture); no pickle
    RUN/report/   metrics.json (validation metrics, history, settings), per_class.csv,
                  confusion.png, train/ (metrics.jsonl, steps.jsonl, loss.png), and
                  test.json after ``ulmfit fit --test``

``evaluate(RUN, TEST)`` gives n, accuracy, error_rate, macro_f1, per_class, confusion and the
predictions in input order. A test label never seen in training is a UserError naming it and
its row; training data with a single class is a UserError too.

AR/TAR: as fastai's ``RNNRegularizer`` on a classifier (alpha 2, beta 1), but over the encoder
outputs of real tokens only (fastai's also count the padded positions of the first chunk).
A backward LM gives a backward classifier: every document is read in reverse, in training
and at prediction (``config.json`` says ``"direction": "bwd"``). An interrupted classifier
run with a ``stage_key`` continues from its last epoch checkpoint (``ulmfit fit`` passes one;
see ``ulmfit.tasks.run``).

Multi-label targets (``--label-delim`` in one column, or several 0/1 columns): one output per
label trained with BCE-with-logits; after training one threshold per label is tuned on the
validation set (the grid 0.05, 0.10 ... 0.95 maximizing that label's F1; 0.5 for a label with no
positive validation row) and stored in ``config.json`` (``thresholds``). ``evaluate`` then gives
micro_f1, macro_f1, roc_auc (mean over the labels with both classes present) and per-label
precision / recall / F1 / support with those thresholds. Regression (``label_kind`` "float", one
or several numeric columns): one output per target trained with MSE; ``evaluate`` gives mae and
rmse (and ``per_target`` when there are several).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ulmfit.config import CLASSIFIER_CONFIG, CLASSIFIER_MONITORS, ClassifierConfig
from ulmfit.devices import resolve_device
from ulmfit.errors import UserError
from ulmfit.metrics import SUMMARY_KEYS, predictions_of, sigmoid, tune_thresholds
from ulmfit.models.io import staged_dir
from ulmfit.models.model_dir import (
    MODEL_DIR,
    VALID_OUTPUTS,
    load_members,
    mean_outputs,
    model_dir_of,
    write_classifier_files,
)
from ulmfit.precision import precision_for
from ulmfit.predict import predict_logits
from ulmfit.report import write_report_files

LM_DIR = "lm"
REPORT_DIR = "report"
DRY_RUN_ROWS = 64  # rows read from each input by a dry run
DRY_RUN_BATCHES = 2  # optimizer steps per epoch in a dry run


# fastai's IMDb recipe of gradual unfreezing: (layer groups trained, None = all; peak rate as a
# share of ``lr``) per stage, each stage one epoch but the last
UNFREEZING_STAGES: tuple[tuple[int | None, float], ...] = (
    (-1, 1.0),
    (-2, 1 / 2),
    (-3, 1 / 4),
    (None, 1 / 20),
)
LR_SPREAD = 2.6**4  # discriminative rates: slice(rate / 2.6**4, rate) over the layer groups


def _say(cfg: ClassifierConfig, msg: str) -> None:
    if cfg.verbose:
        print(msg, file=sys.stderr, flush=True)


def _check_config(cfg: ClassifierConfig) -> None:
    bad = [f"{n} must be 1 or more" for n in ("epochs", "bs", "bptt") if getattr(cfg, n) < 1]
    if not cfg.lr > 0:
        bad.append(f"lr must be positive, got {cfg.lr}")
    if not 0 <= cfg.valid_pct < 1:
        bad.append(f"valid_pct must be in [0, 1), got {cfg.valid_pct}")
    if cfg.max_len < cfg.bptt:
        bad.append(f"max_len ({cfg.max_len}) must be at least bptt ({cfg.bptt})")
    if problem := CLASSIFIER_CONFIG.drop_mult_problem(cfg.drop_mult):
        bad.append(problem)
    if not cfg.wd >= 0:
        bad.append(f"wd must be 0 or more, got {cfg.wd}")
    if cfg.monitor not in CLASSIFIER_MONITORS:
        bad.append(f"monitor must be one of {', '.join(CLASSIFIER_MONITORS)}, got {cfg.monitor!r}")
    if bad:
        raise UserError("; ".join(bad))
    last_stage_track(cfg)
    precision_for(resolve_device(cfg.device), cfg.amp)  # a refused --amp, before any work


# what each kind of target's validation reports, so what --monitor may watch
_MONITORS_OF = {
    "single": CLASSIFIER_MONITORS,
    "multi": ("valid_loss", "macro_f1"),
    "float": ("valid_loss",),
}


def last_stage_track(cfg: ClassifierConfig, kind: str | None = None):
    """The Track of the last stage (``None``: keep-last, every epoch, as fastai's recipe);
    with the target's ``kind``, a UserError for a monitor its validation does not report."""
    from ulmfit.train.tracker import track_of

    track = track_of(cfg.keep, cfg.patience, cfg.monitor)
    if track is not None and kind is not None and cfg.monitor not in _MONITORS_OF[kind]:
        raise UserError(
            f"--monitor {cfg.monitor}: a {kind} target's validation reports "
            f"{', '.join(_MONITORS_OF[kind])}"
        )
    return track


# ----------------------------------------------------------------------------------------
# Labelled data in a model's vocabulary
# ----------------------------------------------------------------------------------------


@dataclass
class LabelledDocs:
    """Documents as ids of a model's vocabulary, with encoded labels, in input order."""

    ids: np.ndarray  # int64, flat
    offsets: np.ndarray  # int64, n_docs + 1
    labels: np.ndarray  # single: int64 codes; multi: uint8 [n, k]; float: float32 [n] or [n, k]
    classes: list[str]  # empty for a float target
    rows: np.ndarray  # 0-based input row of each document
    path: str
    unk_rate: float
    dropped: int = 0  # dry runs only: rows whose class training never saw
    kind: str = "single"
    cols: list[str] | None = None  # the label column(s)

    def __len__(self) -> int:
        return len(self.offsets) - 1


def check_training_labels(labels, path: str) -> None:
    """A LabelSet or LabelledDocs of training rows: see
    :func:`ulmfit.data.labels.check_training_labels`."""
    from ulmfit.data.labels import check_training_labels as check

    values = labels.labels if isinstance(labels, LabelledDocs) else labels.values
    cols = getattr(labels, "cols", None) or ["label"]
    check(getattr(labels, "kind", "single"), list(labels.classes), values, path, cols[0])


def read_labelled(
    spec,
    vocab: list[str],
    cfg: ClassifierConfig,
    classes: list[str] | None = None,
    limit: int | None = None,
    direction: str = "fwd",
) -> LabelledDocs:
    """Read, tokenize (cached) and label ``spec`` (see :func:`read_labels`); ids in
    ``vocab`` (unknown -> 0), each document reversed for a backward model."""
    from ulmfit.corpus import (
        TokenCorpus,
        read_token_corpus,
        reverse_docs,
        tokenize_texts,
        vocab_map,
    )
    from ulmfit.data.labels import read_labels
    from ulmfit.export import texts_tokens
    from ulmfit.prepare import is_dataset

    texts, labels, rows, dropped = read_labels(spec, classes, limit, kind=cfg.label_kind)
    if limit is not None and is_dataset(spec):  # a dataset folder: its tokens, no spaCy
        corpus = TokenCorpus(*texts_tokens(spec, texts))
    elif limit is not None:
        corpus = tokenize_texts(texts)
    else:
        corpus = read_token_corpus([spec], workers=cfg.workers, cache_dir=cfg.cache_dir)
        if len(corpus) != len(texts) or not np.array_equal(np.asarray(corpus.rows), rows):
            raise UserError(f"{spec.path}: changed while it was read; try again")
    table = vocab_map(corpus.vocab, vocab)
    offsets = np.asarray(corpus.offsets, dtype=np.int64)
    ids = table[np.asarray(corpus.ids[offsets[0] : offsets[-1]], dtype=np.int64)]
    offsets = offsets - offsets[0]
    if direction == "bwd":
        ids = reverse_docs(ids, offsets)
    return LabelledDocs(
        ids=ids,
        offsets=offsets,
        labels=labels.values,
        classes=list(labels.classes),
        rows=np.asarray(rows, dtype=np.int64),
        path=str(spec.path),
        unk_rate=round(float(np.count_nonzero(ids == 0)) / max(1, len(ids)), 6),
        dropped=dropped,
        kind=labels.kind,
        cols=list(labels.cols),
    )


def n_outputs(d: LabelledDocs) -> int:
    """Outputs of the classifier: one per class or label, or one per numeric target."""
    if d.kind == "float":
        return 1 if d.labels.ndim == 1 else int(d.labels.shape[1])
    return len(d.classes)


def bce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Multi-label loss: BCE-with-logits on the multi-hot targets (cast to float)."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float())


def mse_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Regression loss: MSE; a one-column target ``[n]`` is compared with the ``[n, 1]`` output."""
    return torch.nn.functional.mse_loss(out, y.float().reshape(out.shape))


def loss_for(kind: str):
    return {"single": torch.nn.functional.cross_entropy, "multi": bce_loss, "float": mse_loss}[kind]


def _subset(d: LabelledDocs, idx: np.ndarray) -> LabelledDocs:
    from ulmfit.corpus import gather_docs

    ids, off = gather_docs(d.ids, d.offsets, idx)
    return replace(d, ids=ids, offsets=off, labels=d.labels[idx], rows=d.rows[idx])


# ----------------------------------------------------------------------------------------
# The classifier model
# ----------------------------------------------------------------------------------------


def classifier_arch(lm_arch: dict):
    """fastai's ``awd_lstm_clas_config`` dropouts with the language model's shapes."""
    keys = ("emb_sz", "n_hid", "n_layers", "pad_token")
    return replace(CLASSIFIER_CONFIG, **{k: lm_arch[k] for k in keys if k in lm_arch})


def build_classifier(vocab_sz: int, n_out: int, arch, cfg: ClassifierConfig):
    from ulmfit.models.classifier import TextClassifier

    return TextClassifier(
        vocab_sz, n_out, arch, drop_mult=cfg.drop_mult, bptt=cfg.bptt, max_len=cfg.max_len
    )


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------


WORK_DIR = ".classifier-train"  # checkpoint and logs while a classifier trains
_STAGE_FILE = "stage_key"


def _open_work(work: Path, stage_key: str | None, cfg: ClassifierConfig) -> bool:
    """Whether to resume the interrupted training in ``work`` (same ``stage_key``, and a
    checkpoint); otherwise ``work`` is emptied and stamped with the key (if any)."""
    from ulmfit.train.checkpoint import StageFolder
    from ulmfit.train.learner import CHECKPOINT

    if stage_key is None:
        if work.exists():
            shutil.rmtree(work)
        return False
    if StageFolder(work, work / _STAGE_FILE).open(stage_key, needs=work / CHECKPOINT) == "resume":
        _say(cfg, f"classifier: continuing the interrupted training in {work}")
        return True
    return False


def clear_report(out_dir: Path, overwrite: bool) -> bool:
    """With ``overwrite``, remove a previous report folder of ``out_dir`` (one holding
    metrics.json, nothing else is touched) so the new one can take its place."""
    rep = out_dir / REPORT_DIR
    if overwrite and rep.is_dir() and (rep / "metrics.json").is_file():
        shutil.rmtree(rep)
    return False


def _check_target(out_dir: Path) -> None:
    for name in (MODEL_DIR, REPORT_DIR):
        p = out_dir / name
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise UserError(f"{p}: exists and is not empty; choose another --out")


def fit_classifier(
    train_spec,
    lm_dir: Path | str,
    out_dir: Path | str,
    cfg: ClassifierConfig | None = None,
    *,
    valid_spec=None,
    overwrite: bool = False,
    stage_key: str | None = None,
) -> dict:
    """Train a classifier on ``train_spec`` from the fine-tuned LM in ``lm_dir``; write
    ``out_dir/model`` and ``out_dir/report`` (see the module docstring). Validation is
    ``valid_spec``, or ``cfg.valid_pct`` of the training rows (seeded). Returns a summary.

    A backward LM gives a backward classifier (every document read in reverse). Training runs
    in ``out_dir/.classifier-train`` with a checkpoint per epoch; when ``stage_key`` (a digest
    of everything the result depends on) is given and an interrupted run with the same key is
    found there, it continues from its last checkpoint instead of starting over."""
    from ulmfit.models.classifier import load_encoder
    from ulmfit.models.io import load_model_dir
    from ulmfit.train import distributed
    from ulmfit.train.learner import CHECKPOINT

    cfg = cfg or ClassifierConfig()
    _check_config(cfg)
    dist = distributed.init(cfg.device)
    main = dist.rank == 0
    cfg = cfg if main else replace(cfg, verbose=False, progress=False)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if not overwrite:
        distributed.on_main(lambda: _check_target(out_dir))
    lm, vocab, lm_config = load_model_dir(lm_dir)
    direction = lm_config.get("direction", "fwd")
    train, valid = _read_train_valid(train_spec, valid_spec, vocab, cfg, direction)
    track = last_stage_track(cfg, train.kind)
    _say(
        cfg,
        f"classifier ({direction}): {len(train)} training, {len(valid)} validation documents, "
        f"{train.kind} target, {n_outputs(train)} outputs, unknown tokens {100 * train.unk_rate:.2f}%",
    )
    loaders = _loaders(train, valid, cfg, dist)
    torch.manual_seed(cfg.seed)
    arch = classifier_arch(lm_config["architecture"])
    model = build_classifier(len(vocab), n_outputs(train), arch, cfg)
    load_encoder(model, lm)
    del lm
    dev = str(distributed.device_for(cfg.device, dist.local_rank))
    work = out_dir / WORK_DIR
    resume = distributed.on_main(lambda: _open_work(work, stage_key, cfg))
    learn = _learner(model, loaders, train.kind, work, dev, cfg, track)
    fit = _Fit(train_spec, valid_spec, lm_dir, out_dir, overwrite, cfg, train, valid, vocab, arch)
    finished = False
    try:
        _train_stages(learn, cfg, resume, track)
        result = distributed.on_main(lambda: _finish(fit, model, learn, direction, t0))
        finished = True
    finally:
        # an interrupted run with a key keeps its checkpoint for the next attempt
        if main and (finished or stage_key is None or not (work / CHECKPOINT).exists()):
            shutil.rmtree(work, ignore_errors=True)
    return result


def _read_train_valid(train_spec, valid_spec, vocab: list[str], cfg: ClassifierConfig, direction):
    """The training and validation documents: ``valid_spec`` read with the training classes,
    or a seeded ``cfg.valid_pct`` of the training rows."""
    from ulmfit.corpus import split_docs

    limit = DRY_RUN_ROWS if cfg.dry_run else None
    train = read_labelled(train_spec, vocab, cfg, limit=limit, direction=direction)
    check_training_labels(train, train.path)
    if valid_spec is not None:
        vcfg = replace(cfg, label_kind=train.kind)
        valid = read_labelled(
            valid_spec, vocab, vcfg, classes=train.classes, limit=limit, direction=direction
        )
        if train.kind == "float" and n_outputs(valid) != n_outputs(train):
            raise UserError(
                f"{valid.path}: {n_outputs(valid)} target column(s), but the training file "
                f"has {n_outputs(train)}"
            )
    else:
        if cfg.valid_pct <= 0:
            raise UserError("give a validation file or a valid_pct above 0")
        tr_idx, va_idx = split_docs(len(train), cfg.valid_pct, cfg.seed)
        train, valid = _subset(train, tr_idx), _subset(train, va_idx)
    return train, valid


def _loaders(train: LabelledDocs, valid: LabelledDocs, cfg: ClassifierConfig, dist) -> tuple:
    """Sortish training batches (a few of them in a dry run) and length-sorted validation
    batches, each rank its share."""
    from ulmfit.loaders import ClassifierLoader, FewBatches

    each = {"bs": cfg.bs, "max_len": None, "rank": dist.rank, "world_size": dist.world_size}
    train_loader = ClassifierLoader(
        train.ids, train.offsets, train.labels, train=True, seed=cfg.seed, **each
    )
    valid_loader = ClassifierLoader(valid.ids, valid.offsets, valid.labels, train=False, **each)
    if cfg.dry_run:
        train_loader = FewBatches(train_loader, DRY_RUN_BATCHES)
    return train_loader, valid_loader


def _learner(model, loaders: tuple, kind: str, work: Path, dev: str, cfg: ClassifierConfig, track):
    """The Learner of the classifier stage: fastai's classifier settings (no clipping), AR/TAR
    on the encoder outputs (and macro-F1 when ``track`` watches it), its checkpoint and logs
    in ``work``."""
    from ulmfit.config import engine_config
    from ulmfit.train import ClassifierTask, Learner

    f1 = kind if track is not None and track.monitor == "macro_f1" else None
    tc = engine_config(cfg, clip=None, device=dev)
    return Learner(
        model,
        *loaders,
        ClassifierTask(loss_for(kind), alpha=cfg.alpha, beta=cfg.beta, f1=f1),
        out_dir=work,
        config=tc,
    )


def _train_stages(learn, cfg: ClassifierConfig, resume: bool, track=None) -> None:
    """fastai's gradual unfreezing (:data:`UNFREEZING_STAGES`); ``resume`` continues an
    interrupted run from its checkpoint. The last stage is tracked with ``track``."""
    moms, n_groups = tuple(cfg.moms), len(learn.groups)
    for frozen, share in UNFREEZING_STAGES:
        rate = cfg.lr * share
        if frozen is None:
            learn.unfreeze()
            epochs = 1 if cfg.dry_run else cfg.epochs
            lrs = slice(rate / LR_SPREAD, rate)
            learn.fit_one_cycle(epochs, lrs, moms=moms, track=track, resume=resume)
        elif frozen == -1:  # the head alone: one rate
            learn.freeze_to(-1)
            learn.fit_one_cycle(1, rate, moms=moms, resume=resume)
        elif n_groups > -frozen:  # (a shallower model has fewer stages)
            learn.freeze_to(frozen)
            learn.fit_one_cycle(1, slice(rate / LR_SPREAD, rate), moms=moms, resume=resume)


@dataclass
class _Fit:
    """What the end of a classifier run reports and publishes."""

    train_spec: object
    valid_spec: object
    lm_dir: Path | str
    out_dir: Path
    overwrite: bool
    cfg: ClassifierConfig
    train: LabelledDocs
    valid: LabelledDocs
    vocab: list[str]
    arch: object


def _finish(fit: _Fit, model, learn, direction: str, t0: float) -> dict:
    """Rank 0: predict the validation set, report and publish; the other ranks wait."""
    train, valid = fit.train, fit.valid
    precision = precision_for(str(next(model.parameters()).device), fit.cfg.amp).record()
    logits = predict_logits(model, valid, bs=fit.cfg.bs, amp=fit.cfg.amp)
    extra = _label_settings(fit.train_spec, train, valid, logits)
    m, _ = predictions_of(train.kind, logits, valid.labels, {"classes": train.classes, **extra})
    headline = {k: m[k] for k in SUMMARY_KEYS[train.kind]}
    report = {**_report_json(fit, m, learn.history, direction, t0), "precision": precision}
    report["kept"] = learn.kept
    meta = {
        "trained": "fit_classifier",
        "lm": str(fit.lm_dir),
        "valid": headline,
        "precision": precision,
    }
    fit.out_dir.mkdir(parents=True, exist_ok=True)
    with staged_dir(fit.out_dir / MODEL_DIR, overwrite=fit.overwrite) as tmp:
        write_classifier_files(
            tmp,
            model,
            fit.vocab,
            train.classes,
            fit.arch,
            _config_json(fit.cfg),
            meta,
            kind=train.kind,
            n_out=n_outputs(train),
            extra=extra,
            direction=direction,
        )
    with staged_dir(
        fit.out_dir / REPORT_DIR, overwrite=clear_report(fit.out_dir, fit.overwrite)
    ) as tmp:
        _write_report(tmp, report, valid, logits, m, fit.out_dir / WORK_DIR)
    return {
        "out": str(fit.out_dir),
        "model": str(fit.out_dir / MODEL_DIR),
        "report": str(fit.out_dir / REPORT_DIR / "metrics.json"),
        "label_kind": train.kind,
        "classes": train.classes,
        **({"thresholds": extra["thresholds"]} if "thresholds" in extra else {}),
        "valid": headline,
        "kept": report["kept"],
        "seconds": report["seconds"],
    }


def _label_settings(train_spec, train: LabelledDocs, valid: LabelledDocs, logits) -> dict:
    """What config.json says about the labels: the columns of training, and the thresholds
    tuned on the validation set (multi-label) or the target names (regression)."""
    extra: dict = {
        "label_cols": list(train_spec.label_cols or []),
        "label_delim": train_spec.label_delim,
        "text_cols": list(train_spec.text_cols or []),
    }
    if train.kind == "multi":
        # one threshold per label, tuned on the validation set; the metrics use them
        thr = tune_thresholds(valid.labels, sigmoid(logits))
        extra["thresholds"] = {c: float(t) for c, t in zip(train.classes, thr)}
    elif train.kind == "float":
        extra["targets"] = list(train.cols or [])
    return extra


def _report_json(fit: _Fit, m: dict, history: list, direction: str, t0: float) -> dict:
    """The report's metrics.json: data, validation metrics, history and settings."""
    train, valid, cfg = fit.train, fit.valid, fit.cfg
    return {
        "task": "fit_classifier",
        "lm": str(fit.lm_dir),
        "train": {"path": train.path, "docs": len(train), "unk_rate": train.unk_rate},
        "valid": {
            "path": valid.path if fit.valid_spec is not None else f"{cfg.valid_pct} of train",
            "docs": len(valid),
            "dropped_unseen_class": valid.dropped,
        },
        "direction": direction,
        "label_kind": train.kind,
        "classes": train.classes,
        "valid_metrics": m,
        "history": history,
        "config": _config_json(cfg),
        "dry_run": cfg.dry_run,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _write_report(tmp: Path, report: dict, valid: LabelledDocs, logits, m: dict, work: Path):
    """Fill the staged report folder: metrics.json, the raw validation outputs (so that an
    ensemble can be scored without re-predicting), the tables and plots, and the training
    logs of ``work`` (not its checkpoint, a pickle)."""
    (tmp / "metrics.json").write_text(json.dumps(report, indent=1), "utf-8")
    np.savez(tmp / VALID_OUTPUTS, rows=valid.rows, logits=logits, labels=valid.labels)
    write_report_files(tmp, m)
    (tmp / "train").mkdir()
    for f in work.iterdir():
        if f.suffix != ".pt":  # the checkpoint is a pickle: not kept
            shutil.move(str(f), tmp / "train" / f.name)


def _config_json(cfg: ClassifierConfig) -> dict:
    from ulmfit.tasks.language_model import _jsonable

    return _jsonable(cfg)


def _read_for(config: dict, test_spec, vocab, classes, kind, dry_run: bool) -> LabelledDocs:
    """The labelled documents of ``test_spec`` as the model of ``config`` reads them."""
    cfg = ClassifierConfig(verbose=False, label_kind=kind)
    return read_labelled(
        test_spec,
        vocab,
        cfg,
        classes=classes,
        limit=DRY_RUN_ROWS if dry_run else None,
        direction=config.get("direction", "fwd"),
    )


def with_saved_columns(spec, config: dict):
    """``spec`` with the text / label columns and label delimiter of training where it leaves
    them unset, so that a test file laid out like the training file needs no options."""
    changes = {}
    if spec.label_cols is None:
        changes["label_cols"] = list(config.get("label_cols") or []) or ["label"]
    if spec.text_cols is None and config.get("text_cols"):
        changes["text_cols"] = list(config["text_cols"])
    cols = changes.get("label_cols", spec.label_cols) or []
    if config.get("label_kind") == "multi" and spec.label_delim is None and len(cols) == 1:
        changes["label_delim"] = config.get("label_delim")
    return replace(spec, **changes) if changes else spec


def evaluate(
    run: Path | str,
    test_spec,
    *,
    bs: int = 64,
    device: str | None = None,
    amp: str = "auto",
    dry_run: bool = False,
    label_kind: str | None = None,
) -> dict:
    """Metrics of the classifier in ``run`` on ``test_spec`` (labels checked against the
    training classes) and its predictions in input order (``predictions``, ``rows``). Columns
    ``test_spec`` leaves unset are those of training. An ensemble (``ulmfit fit --direction
    both``) averages its members' probabilities.

    Single-label: accuracy, error_rate, macro_f1, per_class, confusion. Multi-label (with the
    thresholds stored at training): micro_f1, macro_f1, roc_auc, per_class, per_class_f1.
    Regression: mae, rmse (and per_target). The model runs in the precision ``amp`` gives
    its device (:mod:`ulmfit.precision`; ``precision`` in the result)."""
    dev = resolve_device(device)
    precision = precision_for(dev, amp)
    config, members = load_members(run)
    classes = config["classes"]
    kind = config.get("label_kind", "single")
    if label_kind is not None and label_kind != kind:
        raise UserError(f"{run}: the model was trained on {kind} labels, not {label_kind}")
    if kind == "multi" and "thresholds" not in config:
        raise UserError(f"{model_dir_of(run)}/config.json: multi-label model without thresholds")
    test_spec = with_saved_columns(test_spec, config)
    outputs, docs = [], None
    for model, vocab, mconfig in members:
        docs = _read_for(mconfig, test_spec, vocab, classes, kind, dry_run)
        if kind == "float" and n_outputs(docs) != config["n_out"]:
            raise UserError(
                f"{docs.path}: {n_outputs(docs)} target column(s), but the model predicts "
                f"{config['n_out']}"
            )
        outputs.append(predict_logits(model, docs, bs=bs, device=dev, amp=amp))
    logits = mean_outputs(kind, outputs)
    m, predictions = predictions_of(kind, logits, docs.labels, config)
    return {
        "path": docs.path,
        "label_kind": kind,
        **m,
        "unk_rate": docs.unk_rate,
        "predictions": predictions,
        "rows": (docs.rows + 1).tolist(),  # 1-based input rows, as in error messages
        "precision": precision.record(),
        **({"dropped_unseen_class": docs.dropped} if dry_run else {}),
    }


__all__ = [
    "ClassifierConfig",
    "evaluate",
    "fit_classifier",
    "read_labelled",
]
