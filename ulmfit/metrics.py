"""Metrics and decision thresholds, for the baselines and the ULMFiT classifiers alike.

The baselines report :func:`single_label_metrics`, :func:`multi_label_metrics` and
:func:`regression_metrics` of their test predictions; a classifier's validation and test
reports (:func:`predictions_of`) build on the same functions and add per-class precision /
recall / support, the confusion matrix and, for multi-label targets, the per-label thresholds
tuned on the validation set (:func:`tune_thresholds`). NumPy and scikit-learn only: no torch.
"""

from __future__ import annotations

import numpy as np

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)
SUMMARY_KEYS = {
    "single": ("n", "accuracy", "error_rate", "macro_f1"),
    "multi": ("n", "micro_f1", "macro_f1", "roc_auc"),
    "float": ("n", "mae", "rmse"),
}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def single_label_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    labels = list(range(len(classes)))
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    present = sorted(set(np.asarray(y_true).tolist()))
    accuracy = float(accuracy_score(y_true, y_pred))
    return {
        "accuracy": accuracy,
        "error_rate": 1.0 - accuracy,
        # macro F1 over the classes the test set has (a class absent from the test set has no F1)
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        ),
        "per_class_f1": {classes[k]: float(per_class[k]) for k in labels},
    }


def multi_label_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray, classes: list[str]
) -> dict:
    from sklearn.metrics import f1_score, roc_auc_score

    y_true = np.asarray(y_true).astype(int)
    y_pred = np.asarray(y_pred).astype(int)
    aucs = []
    for k in range(y_true.shape[1]):
        col = y_true[:, k]
        if 0 < col.sum() < len(col):
            finite = np.nan_to_num(scores[:, k], posinf=1e300, neginf=-1e300)
            aucs.append(float(roc_auc_score(col, finite)))
    per_label = f1_score(y_true, y_pred, average=None, zero_division=0)
    return {
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "mean_auc": float(np.mean(aucs)) if aucs else float("nan"),
        "auc_labels": len(aucs),  # labels with both classes in the test set
        "per_class_f1": {c: float(f) for c, f in zip(classes, per_label)},
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    err = np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean()))}


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


__all__ = [
    "SUMMARY_KEYS",
    "THRESHOLD_GRID",
    "confusion",
    "metrics_of",
    "multi_label_metrics",
    "multi_metrics",
    "predictions_of",
    "regression_metrics",
    "regression_of",
    "sigmoid",
    "single_label_metrics",
    "tune_thresholds",
]
