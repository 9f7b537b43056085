import csv
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, need
from scipy.sparse import csr_matrix

from ulmfit import cli
from ulmfit.baselines import log_count_ratio, run_baselines
from ulmfit.data.sources import SourceSpec
from ulmfit.errors import UserError


def _spec(path, label="label", **kw) -> SourceSpec:
    return SourceSpec(path=path, label_cols=[label], **kw)


def _write(path, rows, header=("label", "text")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _toy(n=40, seed=0):
    rng = np.random.default_rng(seed)
    pos = ["great", "lovely", "superb", "fine"]
    neg = ["awful", "bad", "dull", "poor"]
    filler = ["the", "film", "was", "plot", "acting", "and"]
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = list(rng.choice(filler, 4)) + list(rng.choice(pos if i % 2 else neg, 2))
        rows.append((label, " ".join(words)))
    return rows


# ---------------------------------------------------------------------------------------------
# Real data


def test_trec6_both_baselines_clear_the_band():
    d = need(DATA / "trec6")
    r = run_baselines(_spec(d / "train.csv"), _spec(d / "test.csv"))
    assert (r["n_train"], r["n_test"], r["kind"]) == (5452, 500, "single")
    assert r["classes"] == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    for key in ("nbsvm", "tfidf_lr"):
        m = r[key]
        assert m["accuracy"] > 0.80, (key, m["accuracy"])
        assert m["error_rate"] == pytest.approx(1 - m["accuracy"])
        assert 0 < m["macro_f1"] <= 1
        assert set(m["per_class_f1"]) == set(r["classes"])
        assert m["seconds"] >= 0


def test_sst2_both_baselines_clear_the_band():
    d = need(DATA / "sst2")
    r = run_baselines(_spec(d / "train.csv"), _spec(d / "test.csv"))
    assert (r["n_train"], r["n_test"]) == (6920, 1821)
    assert r["nbsvm"]["accuracy"] > 0.75
    assert r["tfidf_lr"]["accuracy"] > 0.75


def test_goemotions_multi_label_subset(tmp_path):
    d = need(DATA / "goemotions")
    train = tmp_path / "train.csv"
    pd.read_csv(d / "train.csv", nrows=5000, keep_default_na=False).to_csv(train, index=False)
    r = run_baselines(
        _spec(train, "labels", label_delim=" "), _spec(d / "test.csv", "labels", label_delim=" ")
    )
    assert (r["kind"], r["n_train"], r["n_test"]) == ("multi", 5000, 5427)
    assert len(r["classes"]) == 28
    for key in ("nbsvm", "tfidf_lr"):
        m = r[key]
        for name in ("micro_f1", "macro_f1", "mean_auc"):
            assert 0 < m[name] < 1, (key, name, m[name])
        assert m["mean_auc"] > 0.6
        assert 0 < m["auc_labels"] <= 28


# ---------------------------------------------------------------------------------------------
# Synthetic data


def test_log_count_ratio_alpha_one():
    x = csr_matrix(np.array([[1, 0], [1, 1], [0, 1]]))
    r = log_count_ratio(x, np.array([1, 1, 0]))
    p, q = np.array([3.0, 2.0]), np.array([1.0, 2.0])  # alpha + column sums
    np.testing.assert_allclose(r, np.log((p / p.sum()) / (q / q.sum())))


def test_toy_binary_and_skipped_rows(tmp_path):
    rows = _toy()
    train = _write(tmp_path / "train.csv", [*rows, ("pos", "  ")])
    test = _write(tmp_path / "test.csv", _toy(20, seed=1))
    r = run_baselines(_spec(train), _spec(test))
    assert r["nbsvm"]["accuracy"] == 1.0
    assert r["tfidf_lr"]["accuracy"] == 1.0
    assert r["skipped"] == {"train": [40], "test": []}
    assert "skipped 1 row with no text (rows 41)" in r["reports"]["train"]


def test_toy_three_classes_one_vs_rest(tmp_path):
    words = {"a": "alpha apple", "b": "bravo banana", "c": "charlie cherry"}
    rows = [(k, f"{v} item {i}") for i in range(10) for k, v in words.items()]
    train = _write(tmp_path / "train.csv", rows)
    test = _write(tmp_path / "test.csv", [(k, f"the {v}") for k, v in words.items()])
    r = run_baselines(_spec(train), _spec(test))
    assert r["classes"] == ["a", "b", "c"]
    assert r["nbsvm"]["accuracy"] == 1.0 and r["tfidf_lr"]["accuracy"] == 1.0


def test_toy_regression(tmp_path):
    rng = np.random.default_rng(0)

    def rows(n):
        out = []
        for _ in range(n):
            k = int(rng.integers(0, 5))
            out.append((str(k), " ".join(["good"] * k + ["film"] * (5 - k))))
        return out

    train = _write(tmp_path / "train.csv", rows(60), ("score", "text"))
    test = _write(tmp_path / "test.csv", rows(20), ("score", "text"))
    r = run_baselines(_spec(train, "score"), _spec(test, "score"), kind="float")
    assert r["kind"] == "float" and r["nbsvm"] is None
    m = r["tfidf_lr"]
    assert "Ridge" in m["model"]
    y = pd.read_csv(test)["score"].to_numpy(float)
    assert 0 <= m["mae"] <= m["rmse"] < np.abs(y - y.mean()).mean()


def test_unknown_test_label_names_label_and_row(tmp_path):
    train = _write(tmp_path / "train.csv", _toy())
    test = _write(tmp_path / "test.csv", [("pos", "great"), ("meh", "so so")])
    with pytest.raises(UserError, match=r"row 2, column 'label': label 'meh' is not one"):
        run_baselines(_spec(train), _spec(test))


def test_single_class_in_train(tmp_path):
    train = _write(tmp_path / "train.csv", [("pos", "great"), ("pos", "fine")])
    test = _write(tmp_path / "test.csv", [("pos", "great")])
    with pytest.raises(UserError, match="same class"):
        run_baselines(_spec(train), _spec(test))


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_json(tmp_path, capsys):
    train = _write(tmp_path / "train.csv", _toy())
    test = _write(tmp_path / "test.csv", _toy(20, seed=1))
    assert cli.main(["baseline", "--train", str(train), "--test", str(test), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["n_train"], out["n_test"], out["kind"]) == (40, 20, "single")
    assert out["nbsvm"]["accuracy"] == 1.0 and out["tfidf_lr"]["seconds"] >= 0


def test_cli_text_and_error(tmp_path, capsys):
    train = _write(tmp_path / "train.csv", [(text, y) for y, text in _toy()], ("body", "y"))
    test = _write(tmp_path / "test.csv", [("great", "pos"), ("so so", "meh")], ("body", "y"))
    argv = ["baseline", "--train", str(train), "--test", str(test)]
    argv += ["--text-col", "body", "--label-col", "y"]
    assert cli.main(argv[:4] + [str(train)] + argv[5:]) == 0
    out = capsys.readouterr().out
    assert "nbsvm: NBSVM-LR" in out and "accuracy 100.00%" in out
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "label 'meh'" in err and "row 2" in err


def test_parser_does_not_import_sklearn():
    code = (
        "import sys, ulmfit.cli\n"
        "ulmfit.cli.build_parser()\n"
        "print(sorted(m for m in ('sklearn', 'scipy', 'torch') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
