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

from ulmfit.devices import resolve_device
from ulmfit.errors import UserError
from ulmfit.models.awd_lstm import CLASSIFIER_CONFIG

MODEL_DIR = "model"
LM_DIR = "lm"
REPORT_DIR = "report"
TASK = "classifier"
FORMAT_VERSION = 1
DRY_RUN_ROWS = 64  # rows read from each input by a dry run
DRY_RUN_BATCHES = 2  # optimizer steps per epoch in a dry run
_EMB_DP = "encoder.module.encoder_dp.emb.weight"
_EMB = "encoder.module.encoder.weight"


@dataclass
class ClassifierConfig:
    """fastai's IMDb classifier recipe (``text_classifier_learner``, gradual unfreezing)."""

    lr: float = 2e-2  # peak rate of the first (head-only) stage
    epochs: int = 2  # epochs of the last, unfrozen stage
    bs: int = 64
    drop_mult: float = 0.5
    wd: float = 0.01
    moms: tuple[float, float, float] = (0.8, 0.7, 0.8)
    alpha: float = 2.0  # AR on the encoder outputs of real tokens (fastai's TextLearner)
    beta: float = 1.0  # TAR on them
    bptt: int = 72
    max_len: int = 72 * 20
    valid_pct: float = 0.1  # used when no validation file is given
    seed: int = 42
    workers: int = 0
    cache_dir: Path | None = None
    device: str | None = None
    compile: bool = False  # train through torch.compile (GPU; the first steps compile)
    label_kind: str | None = None  # "single" | "multi" | "float"; None: inferred
    dry_run: bool = False
    progress: bool | None = None
    verbose: bool = True


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
    if bad:
        raise UserError("; ".join(bad))
    resolve_device(cfg.device)


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


def _label_col(spec) -> str | list[str]:
    cols = spec.label_cols or []
    if len(cols) > 1:
        return list(cols)
    return cols[0] if cols else "folder"


def _known(value, known: set[str]) -> bool:
    """Whether every label of a raw value (one label, or a list of them) is in ``known``."""
    from ulmfit.data.labels import _class_name, _is_missing

    items = value if isinstance(value, (list, tuple)) else [value]
    return all(_is_missing(v) or _class_name(v) in known for v in items)


def read_labels(
    spec,
    classes: list[str] | None = None,
    limit: int | None = None,
    kind: str | None = None,
):
    """``(texts, LabelSet, rows, dropped)`` of ``spec``, checked: a label outside ``classes``
    is a UserError naming it and its row. ``kind`` forces the kind of target (default:
    inferred). ``limit`` keeps a sample of ``limit`` rows (dry runs, see
    :func:`dry_run_sample`; then rows of classes outside ``classes`` are dropped rather than
    refused, as a small sample rarely has every class)."""
    from ulmfit.baselines import _read
    from ulmfit.data.labels import encode_labels, infer_label_kind

    texts, raw, rows, _ = _read(spec)
    kind = infer_label_kind(spec, kind, raw=raw)
    if kind == "none":
        raise UserError(f"{spec.path}: no labels (give the label column, e.g. --label-col)")
    if kind == "float":
        classes = None
    dropped = 0
    if limit is not None:
        keep = dry_run_sample(raw, kind, limit)
        texts, raw, rows = [texts[i] for i in keep], [raw[i] for i in keep], [rows[i] for i in keep]
        several = len(spec.label_cols or []) > 1
        if classes is not None and not several:
            known = set(classes)
            keep = [i for i, v in enumerate(raw) if _known(v, known)]
            dropped = len(raw) - len(keep)
            texts, raw, rows = (
                [texts[i] for i in keep],
                [raw[i] for i in keep],
                [rows[i] for i in keep],
            )
    if not texts:
        raise UserError(f"{spec.path}: no rows with text")
    labels = encode_labels(raw, kind, rows, str(spec.path), _label_col(spec), classes=classes)
    return texts, labels, rows, dropped


def dry_run_sample(raw: list, kind: str, limit: int, seed: int = 0) -> list[int]:
    """The rows a dry run reads, in input order. Single-label: up to ``limit`` rows spread
    over every class (one row of each class in turn, each class's rows in a seeded random
    order), because files are often sorted by class (IMDb, any folder per class) and their
    first rows would all have one class. Multi-label and numeric targets: a seeded random
    sample. Either way the same rows every time."""
    from ulmfit.data.labels import _class_name

    n = len(raw)
    if n <= limit:
        return list(range(n))
    rng = np.random.default_rng(seed)
    if kind != "single" or any(isinstance(v, (list, tuple)) for v in raw):
        return sorted(rng.choice(n, size=limit, replace=False).tolist())
    groups: dict[str, list[int]] = {}
    for i, v in enumerate(raw):
        groups.setdefault(_class_name(v) if v is not None else "", []).append(i)
    queues = [rng.permutation(g).tolist() for g in groups.values()]
    picked: list[int] = []
    while len(picked) < limit:
        for q in queues:
            if q and len(picked) < limit:
                picked.append(q.pop())
    return sorted(picked)


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
    from ulmfit.export import texts_tokens
    from ulmfit.prepare import is_dataset
    from ulmfit.tasks.language_model import (
        TokenCorpus,
        read_token_corpus,
        reverse_docs,
        tokenize_texts,
        vocab_map,
    )

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
    from ulmfit.tasks.language_model import gather_docs

    ids, off = gather_docs(d.ids, d.offsets, idx)
    return replace(d, ids=ids, offsets=off, labels=d.labels[idx], rows=d.rows[idx])


# ----------------------------------------------------------------------------------------
# The exported classifier directory
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


def write_classifier_files(
    folder: Path,
    model,
    vocab: list[str],
    classes: list[str],
    arch,
    cfg,
    meta: dict,
    *,
    kind: str = "single",
    n_out: int | None = None,
    extra: dict | None = None,
    direction: str = "fwd",
) -> dict:
    from safetensors.torch import save_file

    from ulmfit.models.io import tokenizer_settings
    from ulmfit.tasks.language_model import _jsonable

    state = model.state_dict()
    state.pop(_EMB_DP, None)  # the same tensor as the embedding
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    from ulmfit import __version__

    config = {
        "format_version": FORMAT_VERSION,
        "task": TASK,
        "label_kind": kind,
        "classes": list(classes),
        "n_out": len(classes) if n_out is None else n_out,
        **(extra or {}),
        "architecture": {"name": "AWD_LSTM", **arch.to_dict()},
        "classifier": {
            "drop_mult": cfg.drop_mult,
            "bptt": cfg.bptt,
            "max_len": cfg.max_len,
            "lin_ftrs": [50],
        },
        "vocab_size": len(vocab),
        "direction": direction,
        "tokenizer": tokenizer_settings(),
        "ulmfit_version": __version__,
        "torch_version": torch.__version__,
        "config": _jsonable(cfg),
        "meta": meta,
    }
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "vocab.json").write_text(json.dumps(list(vocab), ensure_ascii=False), "utf-8")
    (folder / "config.json").write_text(json.dumps(config, indent=1), "utf-8")
    return config


def model_dir_of(path: Path | str) -> Path:
    """A run folder (``RUN/model`` inside) or a classifier model directory itself."""
    path = Path(path)
    if (path / MODEL_DIR / "config.json").is_file():
        return path / MODEL_DIR
    return path


def load_classifier(path: Path | str):
    """``(model, vocab, config)`` of an exported classifier (a run folder or its model dir).
    config.json is checked field by field and against the stored tensors' shapes before the
    model is built, so a damaged or edited directory is one line, never a traceback."""
    from ulmfit.models.awd_lstm import AWDLSTMConfig
    from ulmfit.models.dirs import check_classifier_config, check_shapes
    from ulmfit.models.io import read_tensors
    from ulmfit.text.vocab import load_vocab

    folder = model_dir_of(path)
    file = folder / "config.json"
    if not file.is_file():
        raise UserError(f"{path}: not a classifier run or model directory (no {file.name})")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{file}: cannot read ({e})") from None
    except ValueError as e:
        raise UserError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("task") != TASK:
        task = config.get("task") if isinstance(config, dict) else None
        raise UserError(f"{file}: task is {task!r}, expected {TASK!r}")
    check_classifier_config(config, file)
    vocab = load_vocab(folder / "vocab.json")
    if len(vocab) != config["vocab_size"]:
        raise UserError(
            f"{folder}: vocab.json has {len(vocab)} tokens, config.json {config['vocab_size']}"
        )
    try:
        arch = AWDLSTMConfig(**{k: v for k, v in config["architecture"].items() if k != "name"})
    except TypeError as e:
        raise UserError(f"{file}: bad architecture ({e})") from None
    c = config["classifier"]
    if problem := arch.drop_mult_problem(c["drop_mult"]):
        raise UserError(f"{file}: classifier.{problem}")
    cfg = ClassifierConfig(drop_mult=c["drop_mult"], bptt=c["bptt"], max_len=c["max_len"])
    with torch.device("meta"):  # the shapes config.json implies, allocating nothing
        expected = build_classifier(len(vocab), config["n_out"], arch, cfg).state_dict()
    expected.pop(_EMB_DP, None)
    tensors = read_tensors(folder / "model.safetensors")
    check_shapes(expected, tensors, folder / "model.safetensors")
    model = build_classifier(len(vocab), config["n_out"], arch, cfg)
    model.load_state_dict({**tensors, _EMB_DP: tensors[_EMB]}, strict=True)
    model.eval()
    return model, vocab, config


# ----------------------------------------------------------------------------------------
# Prediction and metrics
# ----------------------------------------------------------------------------------------


def predict_logits(
    model, docs: LabelledDocs, bs: int = 64, device: str | None = None, amp: str = "auto"
):
    """Logits ``(n_docs, n_out)`` in input order (sorted batches, order restored). On a GPU
    the forward pass runs under the same mixed precision as training (``amp``, see
    :func:`ulmfit.train.learner.amp_plan`), with batches copied ahead of use; on a CPU in
    full precision."""
    import contextlib

    from ulmfit.loaders import ClassifierLoader, restore_order
    from ulmfit.train.learner import amp_plan, device_batches

    dev = torch.device(device or next(model.parameters()).device)
    model.to(dev).eval()
    loader = ClassifierLoader(docs.ids, docs.offsets, None, bs=bs, train=False, max_len=None)
    dtype = amp_plan(dev.type, amp).dtype
    autocast = (
        torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )
    out = []
    with torch.inference_mode(), autocast:
        for x, _, idx in device_batches(loader, dev):
            out.append((idx, model(x).float().cpu()))
    return restore_order(out, len(docs)).numpy()


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """``m[i, j]``: documents of true class i predicted as class j."""
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def _per_class(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Precision, recall, F1 and support of each class (or label, for 0/1 matrices)."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(len(classes))), average=None, zero_division=0
    )
    return {
        c: {
            "precision": float(p[k]),
            "recall": float(r[k]),
            "f1": float(f[k]),
            "support": int(s[k]),
        }
        for k, c in enumerate(classes)
    }


def metrics_of(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """n, accuracy, error_rate, macro_f1, per_class (precision, recall, f1, support) and the
    confusion matrix (rows: true class, columns: predicted), names as in ``classes``."""
    from ulmfit.baselines import single_label_metrics

    m = single_label_metrics(y_true, y_pred, classes)
    per_class = _per_class(y_true, y_pred, classes)
    return {
        "n": int(len(y_true)),
        "accuracy": m["accuracy"],
        "error_rate": m["error_rate"],
        "macro_f1": m["macro_f1"],
        "per_class": per_class,
        "classes": list(classes),
        "confusion": confusion(y_true, y_pred, len(classes)).tolist(),
    }


THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)
SUMMARY_KEYS = {
    "single": ("n", "accuracy", "error_rate", "macro_f1"),
    "multi": ("n", "micro_f1", "macro_f1", "roc_auc"),
    "float": ("n", "mae", "rmse"),
}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray, grid=THRESHOLD_GRID) -> np.ndarray:
    """One threshold per label: the grid value maximizing that label's F1 (ties: the one
    closest to 0.5; a label with no positive row keeps 0.5)."""
    y = np.asarray(y_true).astype(bool)
    out = np.full(y.shape[1], 0.5)
    order = sorted((float(t) for t in grid), key=lambda t: (abs(t - 0.5), t))
    for k in range(y.shape[1]):
        if not y[:, k].any():
            continue
        best, best_f = 0.5, -1.0
        for t in order:
            pred = probs[:, k] >= t
            tp = int(np.sum(pred & y[:, k]))
            wrong = int(np.sum(pred != y[:, k]))
            f = 2 * tp / (2 * tp + wrong) if tp else 0.0
            if f > best_f + 1e-12:
                best, best_f = t, f
        out[k] = best
    return out


def multi_metrics(
    y_true: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, classes: list[str]
) -> dict:
    """n, micro_f1, macro_f1, roc_auc (mean over labels with both classes present, None if
    none), per_class (precision, recall, f1, support, threshold) and per_class_f1."""
    from ulmfit.baselines import multi_label_metrics

    y_true = np.asarray(y_true).astype(int)
    pred = (probs >= np.asarray(thresholds)[None, :]).astype(int)
    m = multi_label_metrics(y_true, pred, probs, classes)
    per_class = _per_class(y_true, pred, classes)
    for k, c in enumerate(classes):
        per_class[c]["threshold"] = float(thresholds[k])
    auc = m["mean_auc"]
    return {
        "n": int(len(y_true)),
        "micro_f1": m["micro_f1"],
        "macro_f1": m["macro_f1"],
        "roc_auc": None if np.isnan(auc) else auc,
        "auc_labels": m["auc_labels"],
        "per_class": per_class,
        "per_class_f1": m["per_class_f1"],
        "classes": list(classes),
    }


def regression_of(y_true: np.ndarray, pred: np.ndarray, targets: list[str]) -> dict:
    """n, mae, rmse over every target, and per_target when there are several."""
    from ulmfit.baselines import regression_metrics

    m = {"n": int(len(y_true)), **regression_metrics(y_true, pred), "targets": list(targets)}
    if y_true.ndim == 2 and y_true.shape[1] > 1:
        m["per_target"] = {
            t: regression_metrics(y_true[:, j], pred[:, j]) for j, t in enumerate(targets)
        }
    return m


def predictions_of(kind: str, logits: np.ndarray, labels: np.ndarray, config: dict):
    """``(metrics, predictions)`` of a model's outputs, as its ``config`` says to read them."""
    classes = config["classes"]
    if kind == "multi":
        thr = np.asarray([config["thresholds"][c] for c in classes], dtype=np.float64)
        probs = sigmoid(logits)
        m = multi_metrics(labels, probs, thr, classes)
        hits = probs >= thr[None, :]
        return m, [[c for c, h in zip(classes, row) if h] for row in hits]
    if kind == "float":
        pred = logits[:, 0] if labels.ndim == 1 else logits
        m = regression_of(labels, pred, config.get("targets") or [])
        return m, pred.tolist()
    pred = logits.argmax(1)
    return metrics_of(labels, pred, classes), [classes[k] for k in pred]


def write_report_files(folder: Path, m: dict, prefix: str = "") -> None:
    """``per_class.csv`` and ``confusion.png`` (best effort) for metrics ``m`` (neither for
    a numeric target; no confusion matrix for multi-label)."""
    import csv

    if "per_class" not in m:
        return

    with open(folder / f"{prefix}per_class.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["class", "precision", "recall", "f1", "support"])
        for c, v in m["per_class"].items():
            w.writerow(
                [c, f"{v['precision']:.4f}", f"{v['recall']:.4f}", f"{v['f1']:.4f}"]
                + [v["support"]]
            )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return
    if "confusion" not in m:
        return
    cm = np.asarray(m["confusion"])
    k = len(m["classes"])
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * k, 1.0 + 0.6 * k))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), m["classes"], rotation=90)
    ax.set_yticks(range(k), m["classes"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / f"{prefix}confusion.png", dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------


WORK_DIR = ".classifier-train"  # checkpoint and logs while a classifier trains
VALID_OUTPUTS = "valid_outputs.npz"  # rows, logits, labels of the validation documents
_STAGE_FILE = "stage_key"


def _open_work(work: Path, stage_key: str | None, cfg: ClassifierConfig) -> bool:
    """Whether to resume the interrupted training in ``work`` (same ``stage_key``);
    otherwise ``work`` is emptied and stamped with the key."""
    from ulmfit.train.learner import CHECKPOINT

    if stage_key is not None and (work / CHECKPOINT).is_file():
        try:
            same = (work / _STAGE_FILE).read_text(encoding="utf-8").strip() == stage_key
        except OSError:
            same = False
        if same:
            _say(cfg, f"classifier: continuing the interrupted training in {work}")
            return True
    if work.exists():
        shutil.rmtree(work)
    if stage_key is not None:
        work.mkdir(parents=True)
        (work / _STAGE_FILE).write_text(stage_key, encoding="utf-8")
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
    from ulmfit.models.io import load_model_dir, staged_dir
    from ulmfit.tasks.language_model import split_docs
    from ulmfit.train import ClassifierTask, Learner, TrainConfig, distributed
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
    _say(
        cfg,
        f"classifier ({direction}): {len(train)} training, {len(valid)} validation documents, "
        f"{train.kind} target, {n_outputs(train)} outputs, unknown tokens {100 * train.unk_rate:.2f}%",
    )

    from ulmfit.loaders import ClassifierLoader, FewBatches

    train_loader = ClassifierLoader(
        train.ids,
        train.offsets,
        train.labels,
        bs=cfg.bs,
        train=True,
        seed=cfg.seed,
        max_len=None,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    valid_loader = ClassifierLoader(
        valid.ids,
        valid.offsets,
        valid.labels,
        bs=cfg.bs,
        train=False,
        max_len=None,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    if cfg.dry_run:
        train_loader = FewBatches(train_loader, DRY_RUN_BATCHES)

    torch.manual_seed(cfg.seed)
    arch = classifier_arch(lm_config["architecture"])
    n_out = n_outputs(train)
    model = build_classifier(len(vocab), n_out, arch, cfg)
    load_encoder(model, lm)
    del lm
    dev = str(distributed.device_for(cfg.device, dist.local_rank))
    work = out_dir / WORK_DIR
    resume = distributed.on_main(lambda: _open_work(work, stage_key, cfg))
    tc = TrainConfig(
        moms=tuple(cfg.moms),
        wd=cfg.wd,
        clip=None,
        seed=cfg.seed,
        device=dev,
        compile=cfg.compile,
        progress=cfg.progress,
        verbose=cfg.verbose,
    )
    learn = Learner(
        model,
        train_loader,
        valid_loader,
        ClassifierTask(loss_for(train.kind), alpha=cfg.alpha, beta=cfg.beta),
        out_dir=work,
        config=tc,
    )
    moms, n_groups = tuple(cfg.moms), len(learn.groups)
    finished = False
    try:
        for frozen, share in UNFREEZING_STAGES:
            rate = cfg.lr * share
            if frozen is None:
                learn.unfreeze()
                epochs = 1 if cfg.dry_run else cfg.epochs
                learn.fit_one_cycle(epochs, slice(rate / LR_SPREAD, rate), moms=moms, resume=resume)
            elif frozen == -1:  # the head alone: one rate
                learn.freeze_to(-1)
                learn.fit_one_cycle(1, rate, moms=moms, resume=resume)
            elif n_groups > -frozen:  # (a shallower model has fewer stages)
                learn.freeze_to(frozen)
                learn.fit_one_cycle(1, slice(rate / LR_SPREAD, rate), moms=moms, resume=resume)

        def finish() -> dict:  # rank 0: predict, report and publish; the others wait
            logits = predict_logits(model, valid, bs=cfg.bs)
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
            m, _ = predictions_of(
                train.kind, logits, valid.labels, {"classes": train.classes, **extra}
            )
            headline = {k: m[k] for k in SUMMARY_KEYS[train.kind]}
            report = {
                "task": "fit_classifier",
                "lm": str(lm_dir),
                "train": {"path": train.path, "docs": len(train), "unk_rate": train.unk_rate},
                "valid": {
                    "path": valid.path if valid_spec is not None else f"{cfg.valid_pct} of train",
                    "docs": len(valid),
                    "dropped_unseen_class": valid.dropped,
                },
                "direction": direction,
                "label_kind": train.kind,
                "classes": train.classes,
                "valid_metrics": m,
                "history": learn.history,
                "config": _config_json(cfg),
                "dry_run": cfg.dry_run,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            meta = {"trained": "fit_classifier", "lm": str(lm_dir), "valid": headline}
            out_dir.mkdir(parents=True, exist_ok=True)
            with staged_dir(out_dir / MODEL_DIR, overwrite=overwrite) as tmp:
                write_classifier_files(
                    tmp,
                    model,
                    vocab,
                    train.classes,
                    arch,
                    cfg,
                    meta,
                    kind=train.kind,
                    n_out=n_out,
                    extra=extra,
                    direction=direction,
                )

            def _report(tmp: Path) -> None:
                (tmp / "metrics.json").write_text(json.dumps(report, indent=1), "utf-8")
                # raw validation outputs, so that an ensemble can be scored without re-predicting
                np.savez(tmp / VALID_OUTPUTS, rows=valid.rows, logits=logits, labels=valid.labels)
                write_report_files(tmp, m)
                (tmp / "train").mkdir()
                for f in work.iterdir():
                    if f.suffix != ".pt":  # the checkpoint is a pickle: not kept
                        shutil.move(str(f), tmp / "train" / f.name)

            with staged_dir(
                out_dir / REPORT_DIR, overwrite=clear_report(out_dir, overwrite)
            ) as tmp:
                _report(tmp)
            return {
                "out": str(out_dir),
                "model": str(out_dir / MODEL_DIR),
                "report": str(out_dir / REPORT_DIR / "metrics.json"),
                "label_kind": train.kind,
                "classes": train.classes,
                **({"thresholds": extra["thresholds"]} if "thresholds" in extra else {}),
                "valid": headline,
                "seconds": report["seconds"],
            }

        result = distributed.on_main(finish)
        finished = True
    finally:
        # an interrupted run with a key keeps its checkpoint for the next attempt
        if main and (finished or stage_key is None or not (work / CHECKPOINT).exists()):
            shutil.rmtree(work, ignore_errors=True)
    return result


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
    dry_run: bool = False,
    label_kind: str | None = None,
) -> dict:
    """Metrics of the classifier in ``run`` on ``test_spec`` (labels checked against the
    training classes) and its predictions in input order (``predictions``, ``rows``). Columns
    ``test_spec`` leaves unset are those of training. An ensemble (``ulmfit fit --direction
    both``) averages its members' probabilities.

    Single-label: accuracy, error_rate, macro_f1, per_class, confusion. Multi-label (with the
    thresholds stored at training): micro_f1, macro_f1, roc_auc, per_class, per_class_f1.
    Regression: mae, rmse (and per_target)."""
    from ulmfit.devices import resolve_device
    from ulmfit.tasks.ensemble import load_members, mean_outputs

    dev = resolve_device(device)
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
        outputs.append(predict_logits(model, docs, bs=bs, device=dev))
    logits = mean_outputs(kind, outputs)
    m, predictions = predictions_of(kind, logits, docs.labels, config)
    return {
        "path": docs.path,
        "label_kind": kind,
        **m,
        "unk_rate": docs.unk_rate,
        "predictions": predictions,
        "rows": (docs.rows + 1).tolist(),  # 1-based input rows, as in error messages
        **({"dropped_unseen_class": docs.dropped} if dry_run else {}),
    }


__all__ = [
    "ClassifierConfig",
    "evaluate",
    "fit_classifier",
    "load_classifier",
    "metrics_of",
    "multi_metrics",
    "tune_thresholds",
    "read_labelled",
]
