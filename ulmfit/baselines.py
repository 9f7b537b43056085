"""Strong linear baselines, so that every report shows the bar a deep model has to clear.

Two models are fitted on the training file and scored on the test file:

- ``nbsvm``: NB-SVM (Wang & Manning 2012) in its common "NBSVM-LR" form: binarized uni+bigram
  counts, the log-count ratio ``r = log((p/|p|_1) / (q/|q|_1))`` with alpha = 1 per class, the
  features ``x * r``, then an L2 logistic regression (liblinear, C = 4, as in J. Howard's
  "NB-SVM strong linear baseline"; the original paper's SVM with weight interpolation is not
  used). More than two classes: one-vs-rest, one binary model with its own r per class, the
  class with the highest decision score wins. Multi-label: one binary model per label, a label
  is predicted where its decision score is > 0 (probability > 0.5).
- ``tfidf_lr``: TF-IDF of uni+bigrams (sublinear tf, l2 rows) + logistic regression with the
  default C = 1 (no tuning): multinomial (saga) for single-label, one binary model per label
  (liblinear) for multi-label, and a Ridge regression (alpha = 1) for a numeric target.

Texts are lower-cased; tokens are runs of word characters and single punctuation marks, so
"!" and "?" count (they matter for sentiment and questions). Both models see the same texts.
Nothing is tuned on the test set.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ulmfit.data.labels import (
    LabelSet,
    check_training_labels,
    encode_labels,
    infer_label_kind,
    label_col,
    read_rows,
)
from ulmfit.data.sources import ReadReport, SourceSpec
from ulmfit.errors import UserError
from ulmfit.metrics import multi_label_metrics, regression_metrics, sigmoid, single_label_metrics

TOKEN_PATTERN = r"(?u)\b\w+\b|[^\w\s]"
NGRAMS = (1, 2)
NB_ALPHA = 1.0
NB_C = 4.0
TFIDF_C = 1.0
RIDGE_ALPHA = 1.0


@dataclass
class SplitData:
    """Texts and encoded labels of one file, and what reading it skipped."""

    texts: list[str]
    labels: LabelSet
    rows: list[int]
    report: ReadReport


@dataclass
class BaselineData:
    train: SplitData
    test: SplitData
    kind: str  # "single" | "multi" | "float"
    classes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Reading


def load_data(train: SourceSpec, test: SourceSpec, kind: str | None = None) -> BaselineData:
    """Read and encode both files; test labels are checked against the training classes."""
    tr_texts, tr_raw, tr_rows, tr_report = read_rows(train)
    kind = infer_label_kind(train, kind, raw=tr_raw)
    if kind == "none":
        raise UserError(f"{train.path}: no labels (give the label column, e.g. --label-col)")
    tr_labels = encode_labels(tr_raw, kind, tr_rows, str(train.path), label_col(train))
    check_training_labels(
        kind, tr_labels.classes, tr_labels.values, str(train.path), label_col(train)
    )
    te_texts, te_raw, te_rows, te_report = read_rows(test)
    classes = tr_labels.classes if kind != "float" else None
    te_labels = encode_labels(
        te_raw, kind, te_rows, str(test.path), label_col(test), classes=classes
    )
    if kind == "float" and _width(te_labels.values) != _width(tr_labels.values):
        raise UserError(
            f"{test.path}: {_width(te_labels.values)} target column(s), but the training file "
            f"has {_width(tr_labels.values)}"
        )
    return BaselineData(
        SplitData(tr_texts, tr_labels, tr_rows, tr_report),
        SplitData(te_texts, te_labels, te_rows, te_report),
        kind,
        list(tr_labels.classes),
    )


def _width(values: np.ndarray) -> int:
    return 1 if values.ndim == 1 else values.shape[1]


# ---------------------------------------------------------------------------------------------
# Models


def _count_vectorizer():
    from sklearn.feature_extraction.text import CountVectorizer

    return CountVectorizer(
        ngram_range=NGRAMS, binary=True, token_pattern=TOKEN_PATTERN, lowercase=True
    )


def _tfidf_vectorizer():
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        ngram_range=NGRAMS, sublinear_tf=True, token_pattern=TOKEN_PATTERN, lowercase=True
    )


def log_count_ratio(x, y: np.ndarray, alpha: float = NB_ALPHA) -> np.ndarray:
    """r = log((p / |p|_1) / (q / |q|_1)), p = alpha + sum of positive rows, q of negative rows."""
    y = np.asarray(y).astype(bool)
    p = alpha + np.asarray(x[y].sum(axis=0)).ravel()
    q = alpha + np.asarray(x[~y].sum(axis=0)).ravel()
    return np.log((p / p.sum()) / (q / q.sum()))


def _binary_scores(x_train, y: np.ndarray, x_test, model) -> np.ndarray:
    """Decision scores of one binary problem; a constant target gives a constant +-inf score."""
    y = np.asarray(y).astype(int)
    if y.min() == y.max():
        return np.full(x_test.shape[0], math.inf if y[0] else -math.inf)
    model.fit(x_train, y)
    return model.decision_function(x_test)


def _nb_scores(x_train, y: np.ndarray, x_test) -> np.ndarray:
    from scipy.sparse import diags
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return np.full(x_test.shape[0], math.inf if y.all() else -math.inf)
    r = diags(log_count_ratio(x_train, y))
    model = LogisticRegression(C=NB_C, solver="liblinear", dual=True, max_iter=1000)
    return _binary_scores(x_train @ r, y, x_test @ r, model)


def nbsvm_scores(train_texts: list[str], y: np.ndarray, test_texts: list[str], kind: str):
    """NBSVM-LR decision scores [n_test, n_classes] (one binary model per class or label).

    For two single-label classes one model is fitted (class 1 vs class 0) and the scores are
    returned as [-s, s], so that argmax and the per-label threshold 0 agree."""
    vec = _count_vectorizer()
    x_train = vec.fit_transform(train_texts)
    x_test = vec.transform(test_texts)
    if kind == "single":
        n_classes = int(y.max()) + 1 if len(y) else 0
        if n_classes == 2:
            s = _nb_scores(x_train, y == 1, x_test)
            return np.stack([-s, s], axis=1)
        return np.stack([_nb_scores(x_train, y == k, x_test) for k in range(n_classes)], axis=1)
    return np.stack([_nb_scores(x_train, y[:, k], x_test) for k in range(y.shape[1])], axis=1)


def tfidf_scores(train_texts: list[str], y: np.ndarray, test_texts: list[str], kind: str):
    """TF-IDF + logistic regression: class probabilities [n_test, n_classes] for single- and
    multi-label targets, predictions [n_test] or [n_test, k] (Ridge) for a numeric one."""
    from sklearn.linear_model import LogisticRegression, Ridge

    vec = _tfidf_vectorizer()
    x_train = vec.fit_transform(train_texts)
    x_test = vec.transform(test_texts)
    if kind == "float":
        return Ridge(alpha=RIDGE_ALPHA).fit(x_train, y).predict(x_test)
    if kind == "single":
        model = LogisticRegression(C=TFIDF_C, solver="saga", max_iter=1000)
        model.fit(x_train, y)
        proba = np.zeros((x_test.shape[0], int(y.max()) + 1))
        proba[:, model.classes_] = model.predict_proba(x_test)
        return proba
    cols = []
    for k in range(y.shape[1]):
        model = LogisticRegression(C=TFIDF_C, solver="liblinear", dual=True, max_iter=1000)
        s = _binary_scores(x_train, y[:, k], x_test, model)
        with np.errstate(over="ignore"):
            cols.append(sigmoid(s))
    return np.stack(cols, axis=1)


# ---------------------------------------------------------------------------------------------
# Both baselines


def run_nbsvm(data: BaselineData) -> dict | None:
    """NBSVM-LR test metrics and seconds; None for a numeric target (not a classifier)."""
    if data.kind == "float":
        return None
    start = time.perf_counter()
    y = data.train.labels.values
    scores = nbsvm_scores(data.train.texts, y, data.test.texts, data.kind)
    truth = data.test.labels.values
    if data.kind == "single":
        m = single_label_metrics(truth, scores.argmax(axis=1), data.classes)
    else:
        m = multi_label_metrics(truth, scores > 0, scores, data.classes)
    return {"model": "NBSVM-LR (uni+bigrams, liblinear C=4)", **m, "seconds": _since(start)}


def run_tfidf(data: BaselineData) -> dict:
    """TF-IDF + logistic regression (Ridge for a numeric target): test metrics and seconds."""
    start = time.perf_counter()
    y = data.train.labels.values
    out = tfidf_scores(data.train.texts, y, data.test.texts, data.kind)
    truth = data.test.labels.values
    if data.kind == "float":
        m = regression_metrics(truth, out)
        name = f"TF-IDF (uni+bigrams, sublinear) + Ridge alpha={RIDGE_ALPHA:g}"
    elif data.kind == "single":
        m = single_label_metrics(truth, out.argmax(axis=1), data.classes)
        name = f"TF-IDF (uni+bigrams, sublinear) + LR (saga, multinomial, C={TFIDF_C:g})"
    else:
        m = multi_label_metrics(truth, out > 0.5, out, data.classes)
        name = f"TF-IDF (uni+bigrams, sublinear) + LR per label (liblinear, C={TFIDF_C:g})"
    return {"model": name, **m, "seconds": _since(start)}


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def run_baselines(train: SourceSpec, test: SourceSpec, kind: str | None = None) -> dict:
    """Read both files, fit both baselines on train, score them on test.

    Returns {"nbsvm": {...} or None, "tfidf_lr": {...}, "n_train", "n_test", "kind",
    "classes", "skipped": {"train": [...], "test": [...]}, "reports": {...}} where skipped
    lists the 0-based rows dropped for having no text.
    """
    data = load_data(train, test, kind)
    return {
        "nbsvm": run_nbsvm(data),
        "tfidf_lr": run_tfidf(data),
        "n_train": len(data.train.texts),
        "n_test": len(data.test.texts),
        "kind": data.kind,
        "classes": data.classes,
        "skipped": {
            "train": list(data.train.report.skipped_empty),
            "test": list(data.test.report.skipped_empty),
        },
        "reports": {"train": data.train.report.summary(), "test": data.test.report.summary()},
    }


def format_report(result: dict) -> str:
    """Human-readable lines for `ulmfit baseline`."""
    lines = [
        f"{result['kind']} target, {result['n_train']:,} training and {result['n_test']:,} test "
        "rows",
        f"  train: {result['reports']['train']}",
        f"  test:  {result['reports']['test']}",
    ]
    for key in ("nbsvm", "tfidf_lr"):
        m = result[key]
        if m is None:
            lines.append(f"{key}: not applicable to a numeric target")
            continue
        lines.append(f"{key}: {m['model']}  ({m['seconds']:.2f} s)")
        if "accuracy" in m:
            lines.append(
                f"  accuracy {100 * m['accuracy']:.2f}%  error {100 * m['error_rate']:.2f}%  "
                f"macro F1 {m['macro_f1']:.4f}"
            )
        elif "micro_f1" in m:
            lines.append(
                f"  micro F1 {m['micro_f1']:.4f}  macro F1 {m['macro_f1']:.4f}  "
                f"mean ROC AUC {m['mean_auc']:.4f} (over {m['auc_labels']} labels)"
            )
        else:
            lines.append(f"  MAE {m['mae']:.4f}  RMSE {m['rmse']:.4f}")
        if "per_class_f1" in m:
            lines.append(
                "  F1 per class: " + ", ".join(f"{c} {f:.3f}" for c, f in m["per_class_f1"].items())
            )
    return "\n".join(lines)
