"""ulmfit fit / evaluate: the whole chain on a few TREC-6 rows with a tiny pretrained LM."""

import json

import numpy as np
import pytest
import torch
from conftest import trec_rows as _rows
from conftest import write_csv as _write

from ulmfit.cli import main
from ulmfit.config import AWDLSTMConfig, ClassifierConfig
from ulmfit.corpus import tokenize_texts
from ulmfit.data.sources import SourceSpec
from ulmfit.errors import UserError
from ulmfit.models.awd_lstm import LanguageModel
from ulmfit.models.io import save_model_dir
from ulmfit.models.model_dir import load_classifier
from ulmfit.predict import predict_logits
from ulmfit.tasks.run import dry_run_dir, fit
from ulmfit.text.rules import SPECIAL_TOKENS


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """80 training rows, 20 test rows of seen classes, and a tiny pretrained LM directory."""
    d = tmp_path_factory.mktemp("cls")
    train_rows = _rows(80)
    seen = {r["label"] for r in train_rows}
    test_rows = [r for r in _rows(200, 80) if r["label"] in seen][:20]
    vocab = list(SPECIAL_TOKENS)
    vocab += [t for t in tokenize_texts([r["text"] for r in train_rows]).vocab if t not in vocab]
    torch.manual_seed(0)
    lm = LanguageModel(len(vocab), AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2))
    save_model_dir(d / "pretrained", lm, vocab)
    return {
        "dir": d,
        "train": _write(d / "train.csv", train_rows),
        "test": _write(d / "test.csv", test_rows),
        "test_rows": test_rows,
        "pretrained": str(d / "pretrained"),
    }


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_fit_then_evaluate(capsys, setup, tmp_path, monkeypatch):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = ["fit", "--train", setup["train"], "--test", setup["test"]]
    argv += ["--pretrained", setup["pretrained"], "--out", out, "--dry-run", "--json"]
    argv += ["--workers", 1, "--device", "cpu", "--bs", 16]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    res = json.loads(stdout)
    assert 0 <= res["test"]["accuracy"] <= 1 and res["test"]["n"] == 20
    out = dry_run_dir(out)  # where a dry run writes
    # RUN layout: the fine-tuned LM, the exported classifier (no pickle), the report
    assert (out / "lm" / "config.json").is_file()
    assert sorted(p.name for p in (out / "model").iterdir()) == [
        "config.json",
        "model.safetensors",
        "vocab.json",
    ]
    for name in ("metrics.json", "per_class.csv", "confusion.png", "test.json"):
        assert (out / "report" / name).is_file(), name
    assert (out / "report" / "train" / "metrics.jsonl").is_file()
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["task"] == "classifier" and config["label_kind"] == "single"
    assert config["classes"] == sorted({r["label"] for r in _rows(80)})  # every class sampled
    assert config["architecture"]["n_hid"] == 16 and config["architecture"]["output_p"] == 0.4
    report = json.loads((out / "report" / "metrics.json").read_text())
    # gradual unfreezing (4 groups: embedding, 2 LSTMs, head): -1, -2, -3, then unfrozen
    assert [r["stage"] for r in report["history"]] == [0, 1, 2, 3]
    # fastai's stage rates 2e-2, 1e-2, 5e-3, 1e-3: the same one-cycle shape scaled per stage
    from ulmfit.train.jsonl import read_jsonl

    steps = read_jsonl(out / "report" / "train" / "steps.jsonl")
    lrs = [[r["lr"] for r in steps if r["stage"] == k] for k in range(4)]
    assert len({len(x) for x in lrs}) == 1 and len(lrs[0]) > 1  # one epoch each (dry run)
    for k, scale in enumerate([1, 1 / 2, 1 / 4, 1 / 20]):
        np.testing.assert_allclose(np.array(lrs[k]) / np.array(lrs[0]), scale, rtol=1e-9)
    # evaluate: every key, predictions in input order, and the same as the model's own argmax
    code, stdout, err = run(capsys, "evaluate", out, setup["test"], "--json", "--device", "cpu")
    assert code == 0, err
    ev = json.loads(stdout)
    for key in ("n", "accuracy", "error_rate", "macro_f1", "per_class", "confusion"):
        assert key in ev
    assert ev["n"] == 20 and ev["rows"] == list(range(1, 21))
    assert np.array(ev["confusion"]).sum() == 20
    assert abs(ev["accuracy"] + ev["error_rate"] - 1) < 1e-9
    model, vocab, cfg = load_classifier(out)
    from ulmfit.tasks.classifier import read_labelled

    spec = SourceSpec(path=setup["test"], label_cols=["label"])
    docs = read_labelled(spec, vocab, ClassifierConfig(), classes=cfg["classes"])
    alone = [
        cfg["classes"][int(model(torch.from_numpy(docs.ids[a:b])[None]).argmax())]
        for a, b in zip(docs.offsets[:-1], docs.offsets[1:])
    ]
    assert ev["predictions"] == alone
    assert predict_logits(model, docs).shape == (20, len(cfg["classes"]))
    acc = np.mean([p == r["label"] for p, r in zip(ev["predictions"], setup["test_rows"])])
    assert abs(ev["accuracy"] - acc) < 1e-9
    # text output
    code, stdout, err = run(capsys, "evaluate", out, setup["test"], "--device", "cpu")
    assert code == 0 and "accuracy" in stdout and "macro F1" in stdout


def test_bad_labels_are_user_errors(capsys, setup, tmp_path, monkeypatch):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    rows = _rows(30)
    one = _write(tmp_path / "one.csv", [{**r, "label": "DESC"} for r in rows])
    argv = ["--pretrained", setup["pretrained"], "--dry-run", "--workers", 1, "--device", "cpu"]
    code, _, err = run(capsys, "fit", "--train", one, "--out", tmp_path / "a", *argv)
    assert code == 2 and "same class" in err and "'DESC'" in err
    assert not dry_run_dir(tmp_path / "a").exists()  # refused before any training
    bad = [dict(r) for r in _rows(10, 80)]
    bad[3]["label"] = "NOVEL"
    test = _write(tmp_path / "bad.csv", bad)
    code, _, err = run(
        capsys, "fit", "--train", setup["train"], "--test", test, "--out", tmp_path / "b", *argv
    )
    assert code == 2 and "'NOVEL'" in err and "row 4" in err, err
    with pytest.raises(UserError, match="same class"):
        fit(SourceSpec(path=one, label_cols=["label"]), setup["pretrained"], tmp_path / "c")


def test_evaluate_unseen_label_names_it_and_its_row(capsys, setup, tmp_path, monkeypatch):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    # a classifier model dir written straight from a fine-tuned LM is not needed: fit one
    # quickly through the API on the tiny LM as if it were the fine-tuned one
    from ulmfit.tasks.classifier import fit_classifier

    out = tmp_path / "run"
    cfg = ClassifierConfig(dry_run=True, device="cpu", workers=1, bs=16, verbose=False)
    res = fit_classifier(
        SourceSpec(path=setup["train"], label_cols=["label"]), setup["pretrained"], out, cfg
    )
    assert res["valid"]["n"] >= 1
    bad = [dict(r) for r in setup["test_rows"][:5]]
    bad[2]["label"] = "NOVEL"
    code, _, err = run(capsys, "evaluate", out, _write(tmp_path / "bad.csv", bad))
    assert code == 2 and "'NOVEL'" in err and "row 3" in err, err
    # a second fit into the same run folder is refused
    with pytest.raises(UserError, match="not empty"):
        fit_classifier(
            SourceSpec(path=setup["train"], label_cols=["label"]), setup["pretrained"], out, cfg
        )
