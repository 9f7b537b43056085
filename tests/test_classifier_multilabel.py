"""Multi-label (BCE, per-label thresholds) and regression (MSE) classifiers on synthetic data
with a tiny language model; dry-run-sized settings so each test takes seconds."""

import csv
import json
import random

import numpy as np
import pytest
import torch

from ulmfit.cli import main
from ulmfit.config import AWDLSTMConfig, ClassifierConfig
from ulmfit.corpus import tokenize_texts
from ulmfit.data.sources import SourceSpec
from ulmfit.errors import UserError
from ulmfit.metrics import tune_thresholds
from ulmfit.models.awd_lstm import LanguageModel
from ulmfit.models.io import save_model_dir
from ulmfit.models.model_dir import load_classifier
from ulmfit.tasks.classifier import evaluate, fit_classifier
from ulmfit.text.rules import SPECIAL_TOKENS

MARKERS = {"joy": "sunny", "anger": "storm", "fear": "shadow"}
FILLER = "the a of and to in it is was on for with as at by this that".split()


def _rows(n: int, seed: int) -> list[dict]:
    """Texts of filler words plus marker tokens; a row's labels are the markers it holds."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        labels = [lab for lab in MARKERS if rng.random() < 0.4] or [rng.choice(list(MARKERS))]
        words = rng.choices(FILLER, k=rng.randint(4, 10)) + [MARKERS[lab] for lab in labels]
        rng.shuffle(words)
        score = float(len(labels)) + 0.1 * (i % 3)
        rows.append(
            {
                "text": " ".join(words),
                "labels": " ".join(labels),
                "score": f"{score:.2f}",
                "len": str(len(words)),
            }
        )
    return rows


def _write(path, rows) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("multi")
    train = _rows(60, 0)
    vocab = list(SPECIAL_TOKENS)
    vocab += [t for t in tokenize_texts([r["text"] for r in train]).vocab if t not in vocab]
    torch.manual_seed(0)
    lm = LanguageModel(len(vocab), AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2))
    save_model_dir(d / "lm", lm, vocab)
    return {
        "train": _write(d / "train.csv", train),
        "valid": _write(d / "valid.csv", _rows(30, 1)),
        "test": _write(d / "test.csv", _rows(20, 2)),
        "lm": str(d / "lm"),
    }


def _cfg(**kw):
    return ClassifierConfig(dry_run=True, device="cpu", workers=1, bs=16, verbose=False, **kw)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_tune_thresholds_per_label():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    probs = np.array([[0.9, 0.1], [0.3, 0.2], [0.1, 0.15], [0.05, 0.1]])
    thr = tune_thresholds(y, probs)
    assert thr[0] <= 0.3 and thr[0] > 0.1  # catches both positives of label 0, not row 3
    assert 0.1 < thr[1] <= 0.15
    assert tune_thresholds(np.zeros((3, 1)), np.full((3, 1), 0.9))[0] == 0.5


def test_multilabel_fit_and_evaluate(capsys, setup, tmp_path, monkeypatch):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    spec = SourceSpec(path=setup["train"], label_cols=["labels"], label_delim=" ")
    valid = SourceSpec(path=setup["valid"], label_cols=["labels"], label_delim=" ")
    res = fit_classifier(spec, setup["lm"], out, _cfg(), valid_spec=valid)
    assert res["label_kind"] == "multi" and res["classes"] == sorted(MARKERS)
    assert set(res["valid"]) == {"n", "micro_f1", "macro_f1", "roc_auc"}
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["label_kind"] == "multi" and config["n_out"] == 3
    assert set(config["thresholds"]) == set(MARKERS)
    assert all(0.05 <= t <= 0.95 for t in config["thresholds"].values())
    assert config["label_delim"] == " "
    model, _, _ = load_classifier(out)
    assert model.n_out == 3
    assert (out / "report" / "per_class.csv").is_file()

    # evaluate through the CLI: the stored thresholds, per-label F1, predictions as label lists
    argv = ["evaluate", out, setup["test"], "--label-col", "labels", "--label-delim", " "]
    code, stdout, err = _run(capsys, *argv, "--json", "--device", "cpu")
    assert code == 0, err
    ev = json.loads(stdout)
    for key in ("micro_f1", "macro_f1", "roc_auc", "per_class", "per_class_f1"):
        assert key in ev, key
    assert ev["n"] == 20 and ev["label_kind"] == "multi"
    assert 0 <= ev["micro_f1"] <= 1 and 0 <= ev["roc_auc"] <= 1
    assert {c: m["threshold"] for c, m in ev["per_class"].items()} == config["thresholds"]
    assert all(set(p) <= set(MARKERS) for p in ev["predictions"])
    # the delimiter is taken from the model when not given; text output
    code, stdout, err = _run(capsys, "evaluate", out, setup["test"], "--label-col", "labels")
    assert code == 0 and "micro F1" in stdout and "joy" in stdout, err

    # a label never seen in training is a UserError naming it and its row
    bad = _rows(5, 3)
    bad[2]["labels"] = "joy surprise"
    bad_spec = SourceSpec(
        path=_write(tmp_path / "bad.csv", bad), label_cols=["labels"], label_delim=" "
    )
    with pytest.raises(UserError, match=r"row 3.*'surprise'"):
        evaluate(out, bad_spec)


def test_regression_fit_and_evaluate(capsys, setup, tmp_path, monkeypatch):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    spec = SourceSpec(path=setup["train"], label_cols=["score"])
    res = fit_classifier(spec, setup["lm"], out, _cfg(label_kind="float"))
    assert res["label_kind"] == "float" and set(res["valid"]) == {"n", "mae", "rmse"}
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["label_kind"] == "float" and config["n_out"] == 1
    ev = evaluate(out, SourceSpec(path=setup["test"], label_cols=["score"]), device="cpu")
    assert ev["n"] == 20 and ev["mae"] >= 0 and ev["rmse"] >= ev["mae"]
    assert len(ev["predictions"]) == 20 and isinstance(ev["predictions"][0], float)
    # several numeric targets: one output each, metrics per target
    out2 = tmp_path / "run2"
    two = SourceSpec(path=setup["train"], label_cols=["score", "len"])
    res = fit_classifier(two, setup["lm"], out2, _cfg())
    assert res["label_kind"] == "float"
    assert json.loads((out2 / "model" / "config.json").read_text())["n_out"] == 2
    argv = ["evaluate", out2, setup["test"], "--label-col", "score", "--label-col", "len"]
    code, stdout, err = _run(capsys, *argv, "--json", "--device", "cpu")
    assert code == 0, err
    ev = json.loads(stdout)
    assert set(ev["per_target"]) == {"score", "len"} and "rmse" in ev["per_target"]["len"]
    # a test file with another number of targets, or a forced other kind, is refused
    with pytest.raises(UserError, match="target column"):
        evaluate(out2, SourceSpec(path=setup["test"], label_cols=["score"]))
    code, _, err = _run(capsys, *argv, "--label-kind", "multi")
    assert code == 2 and "float" in err
