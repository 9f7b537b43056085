"""Using a trained classifier: ulmfit.load(...).predict and `ulmfit predict`, in input order,
for a single model and a fwd + bwd ensemble, and every label kind.

``tiny_models`` trains the models once per session (a dry-run ``fit --direction both`` from tiny
LMs on 80 TREC-6 rows); test_serve, test_explain and test_page use it too."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, tiny_lms
from conftest import trec_rows as _rows
from conftest import write_csv as _write

import ulmfit
from ulmfit.cli import main
from ulmfit.config import ClassifierConfig
from ulmfit.data.sources import SourceSpec
from ulmfit.errors import UserError
from ulmfit.predict import Predictor, softmax
from ulmfit.tasks.classifier import evaluate
from ulmfit.tasks.run import fit

_BUILT: dict = {}


def tiny_models(tmp_path_factory) -> dict:
    """A forward classifier (``single``: RUN/fwd) and the fwd + bwd ensemble (``ensemble``:
    RUN), trained once per session, and the test rows (classes seen in training)."""
    if _BUILT:
        return _BUILT
    d = tmp_path_factory.mktemp("use")
    train_rows = _rows(80)
    seen = {r["label"] for r in train_rows}
    test_rows = [r for r in _rows(200, 80) if r["label"] in seen][:20]
    tiny_lms(d, [r["text"] for r in train_rows])
    train = _write(d / "train.csv", train_rows)
    cfg = ClassifierConfig(
        dry_run=True, device="cpu", workers=1, bs=16, verbose=False, cache_dir=d / "cache"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ULMFIT_CACHE", str(d / "cache"))
        fit(
            SourceSpec(path=train, label_cols=["label"]),
            d / "pre_fwd",
            d / "run",
            cfg=cfg,
            direction="both",
            pretrained_bwd=d / "pre_bwd",
        )
    _BUILT.update(
        {
            "single": d / "run" / "fwd",
            "ensemble": d / "run",
            "test": _write(d / "test.csv", test_rows),
            "texts": [r["text"] for r in test_rows],
        }
    )
    return _BUILT


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _texts(models) -> list[str]:
    """Test questions, one of them long, so that length-sorting reorders them."""
    texts = list(models["texts"])
    texts[3] = " ".join([texts[3]] * 12)  # several bptt chunks
    return texts


def test_model_dir_is_self_contained_and_pickle_free(models):
    files = {p.name for p in (models["single"] / "model").iterdir()}
    assert files == {"config.json", "vocab.json", "model.safetensors"}
    config = json.loads((models["single"] / "model" / "config.json").read_text())
    assert config["task"] == "classifier" and config["classes"]
    assert {"architecture", "tokenizer", "ulmfit_version", "label_kind"} <= set(config)


def test_predict_keeps_input_order(models):
    p = ulmfit.load(models["single"], device="cpu")
    texts = _texts(models)
    preds = p.predict(texts)
    assert len(preds) == len(texts)
    for pred in preds:
        assert pred["label"] in p.classes
        assert abs(sum(pred["probabilities"].values()) - 1) < 1e-6
        assert pred["label"] == max(pred["probabilities"], key=pred["probabilities"].get)
    # each text alone, the reversed list, and small blocks all give the same answers
    alone = [p.predict([t])[0] for t in texts[:5]]
    for a, b in zip(alone, preds[:5]):
        assert a["label"] == b["label"]
        assert np.allclose(list(a["probabilities"].values()), list(b["probabilities"].values()))
    assert np.allclose(p.scores(texts[::-1]), p.scores(texts)[::-1], atol=1e-6)
    small = Predictor.load(models["single"], device="cpu", bs=3, block=7)
    assert np.allclose(small.scores(texts), p.scores(texts), atol=1e-6)
    assert p.predict([]) == []


def test_predictions_match_evaluate_for_single_and_ensemble(models):
    spec = SourceSpec(path=models["test"])
    for key in ("single", "ensemble"):
        p = ulmfit.load(models[key], device="cpu")
        ev = evaluate(models[key], spec, device="cpu")
        assert [x["label"] for x in p.predict(models["texts"])] == ev["predictions"]


def test_ensemble_averages_its_members(models):
    ens = ulmfit.load(models["ensemble"], device="cpu")
    assert [m[2]["direction"] for m in ens.members] == ["fwd", "bwd"]
    fwd = Predictor.load(models["ensemble"] / "model" / "fwd", device="cpu")
    bwd = Predictor.load(models["ensemble"] / "model" / "bwd", device="cpu")
    texts = _texts(models)
    mean = (fwd.scores(texts) + bwd.scores(texts)) / 2
    assert np.allclose(ens.scores(texts), mean, atol=1e-5)
    # the backward member reads every text reversed
    x = bwd.encode(texts[:1])
    ids, _ = bwd.member_ids(0, x)
    fids, _ = fwd.member_ids(0, x)
    assert list(ids) == list(fids[::-1])


def test_multi_label_and_regression_outputs(models):
    base = Predictor.load(models["single"], device="cpu")
    classes, n = base.classes, base.n_out
    logits = base.logits(models["texts"][:4])
    thr = {c: 0.5 for c in classes}
    multi = Predictor({**base.config, "label_kind": "multi", "thresholds": thr}, base.members)
    for pred, row in zip(multi.predict(models["texts"][:4]), logits):
        probs = 1 / (1 + np.exp(-row))
        assert pred["labels"] == [c for c, q in zip(classes, probs) if q >= 0.5]
        assert np.allclose(list(pred["probabilities"].values()), probs, atol=1e-6)
    targets = [f"t{k}" for k in range(n)]
    reg = Predictor({**base.config, "label_kind": "float", "targets": targets}, base.members)
    pred = reg.predict(models["texts"][:1])[0]
    assert list(pred["values"]) == targets
    assert np.allclose(list(pred["values"].values()), logits[0], atol=1e-5)
    one = Predictor(
        {**base.config, "label_kind": "float", "targets": ["y"], "n_out": 1}, base.members
    )
    assert one.describe(np.array([2.5])) == {"value": 2.5}
    with pytest.raises(UserError, match="thresholds"):
        Predictor({**base.config, "label_kind": "multi"}, base.members)
    assert np.allclose(softmax(np.array([[0.0, 0.0]])), 0.5)


def test_predict_refuses_what_is_not_a_list_of_texts(models):
    p = ulmfit.load(models["single"], device="cpu")
    with pytest.raises(UserError, match="list of texts"):
        p.predict("one text")
    with pytest.raises(UserError, match="item 1 is int"):
        p.predict(["fine", 3])


def test_progress_bar_on_long_inputs(models, capsys):
    p = Predictor.load(models["single"], device="cpu", block=8)
    p.predict(models["texts"], progress=True)
    assert "20/20" in capsys.readouterr().err
    p.predict(models["texts"])  # not a terminal: no bar
    assert capsys.readouterr().err == ""


def test_predict_cli_texts_json_and_table(models, capsys):
    code, out, err = run(
        capsys, "predict", models["single"], "--text", "What is a cat ?", "--text", "Who won ?",
        "--json", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    res = json.loads(out)
    assert res["label_kind"] == "single" and [x["row"] for x in res["predictions"]] == [1, 2]
    api = ulmfit.load(models["single"], device="cpu").predict(["What is a cat ?", "Who won ?"])
    assert [x["label"] for x in res["predictions"]] == [x["label"] for x in api]
    code, out, err = run(capsys, "predict", models["single"], "--text", "Who won ?")
    assert code == 0 and out.startswith("1\t") and "Who won ?" in out, err


def test_predict_cli_file_to_csv_in_input_order(models, tmp_path, capsys):
    texts = _texts(models)
    rows = [{"id": k, "question": t} for k, t in enumerate(texts)]
    rows.insert(5, {"id": "empty", "question": "  "})
    src = _write(tmp_path / "in.csv", rows)
    out = tmp_path / "preds.csv"
    argv = ["predict", models["ensemble"], src, "--text-col", "question", "--out", out]
    code, stdout, err = run(capsys, *argv, "--device", "cpu")
    assert code == 0, err
    assert "wrote 20 predictions" in stdout and "1 row(s) without text skipped: 6" in err
    with open(out, newline="", encoding="utf-8") as f:
        got = list(csv.DictReader(f))
    p = ulmfit.load(models["ensemble"], device="cpu")
    want = p.predict(texts)
    assert [g["text"] for g in got] == texts
    assert [int(g["row"]) for g in got] == [k + 1 for k in range(5)] + list(range(7, 22))
    assert [g["label"] for g in got] == [w["label"] for w in want]
    for g, w in zip(got, want):
        for c, q in w["probabilities"].items():
            assert abs(float(g[f"p_{c}"]) - q) < 1e-5
    # --json with --out: a summary (--overwrite: the file is there now)
    code, stdout, err = run(capsys, *argv, "--json", "--overwrite")
    assert code == 0 and json.loads(stdout)["n"] == 20, err


def test_predict_cli_errors(models, tmp_path, capsys):
    code, _, err = run(capsys, "predict", models["single"])
    assert code == 2 and "--text" in err
    code, _, err = run(capsys, "predict", models["single"], models["test"], "--text", "x")
    assert code == 2 and "not both" in err
    code, _, err = run(capsys, "predict", tmp_path, "--text", "x")
    assert code == 2 and "not a classifier" in err
    code, _, err = run(capsys, "predict", models["single"], tmp_path / "missing.csv")
    assert code == 2 and "missing.csv" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    code, _, err = run(capsys, "predict", tmp_path / "bad", "--text", "x")
    assert code == 2 and "not valid JSON" in err and err.count("\n") == 1


def test_import_ulmfit_stays_light():
    code = "import sys, ulmfit; assert callable(ulmfit.load); print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def test_tokenizer_is_renewed_past_its_cap(models, monkeypatch):
    import ulmfit.predict as predict_mod

    p = Predictor.load(models["single"], device="cpu")
    want = p.scores(models["texts"])
    first = p._tok
    monkeypatch.setattr(predict_mod, "MAX_TOKENIZER_TOKENS", 10)
    assert np.allclose(p.scores(models["texts"]), want, atol=1e-6)
    assert p._tok is not first  # a long-running server's memory stays bounded


def _one_line_error(code: int, out: str, err: str, needle: str) -> None:
    lines = err.strip("\n").splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("ulmfit: error: ") and needle in lines[0], err


@pytest.mark.parametrize("command", ["predict", "explain"])
def test_bad_out_paths_are_one_line_errors(models, tmp_path, capsys, command):
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain").write_text("x")
    argv = [command, models["single"], "--text", "Who wrote Hamlet ?", "--device", "cpu"]
    model_file = models["single"] / "model" / "config.json"
    before = model_file.read_bytes()
    for target, needle in [
        (tmp_path / "folder", "is a folder"),
        ("/", "is a folder"),
        (tmp_path / "no-such" / "o.csv", "no such folder"),
        (tmp_path / "plain" / "o.csv", "is not a folder"),
        (model_file, "would overwrite the input"),  # the model, even with --overwrite
    ]:
        code, out, err = run(capsys, *argv, "--out", target, "--overwrite")
        _one_line_error(code, out, err, needle)
    assert model_file.read_bytes() == before
    # a write that fails (a read-only folder, a full disk): one line, nothing left behind
    import ulmfit.atomic

    def refused(*a, **k):
        raise PermissionError(13, "Permission denied")

    target = tmp_path / "o.out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ulmfit.atomic, "open", refused, raising=False)
        code, out, err = run(capsys, *argv, "--out", target)
    _one_line_error(code, out, err, "Permission denied")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "plain"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_predict_into_a_read_only_folder(models, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        argv = ["predict", models["single"], "--text", "Who ?", "--out", ro / "p.csv"]
        _one_line_error(*run(capsys, *argv), "permission denied")
    finally:
        ro.chmod(0o755)


def test_predict_out_never_replaces_its_input_or_an_existing_file(models, tmp_path, capsys):
    src = _write(tmp_path / "in.csv", [{"text": t} for t in models["texts"][:3]])
    before = open(src, "rb").read()
    argv = ["predict", models["single"], src, "--device", "cpu", "--out"]
    code, out, err = run(capsys, *argv, src, "--overwrite")
    _one_line_error(code, out, err, "would overwrite the input")
    assert open(src, "rb").read() == before
    # an existing file is kept without --overwrite; a user's F.tmp survives the write
    target = tmp_path / "p.csv"
    target.write_text("mine")
    (tmp_path / "p.csv.tmp").write_text("keep")
    code, out, err = run(capsys, *argv, target)
    _one_line_error(code, out, err, "--overwrite")
    assert target.read_text() == "mine"
    code, out, err = run(capsys, *argv, target, "--overwrite")
    assert code == 0, err
    assert len(list(csv.DictReader(open(target, newline="", encoding="utf-8")))) == 3
    assert (tmp_path / "p.csv.tmp").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "p.csv", "p.csv.tmp"]
    # explain too
    page = tmp_path / "e.html"
    page.write_text("mine")
    ex = ["explain", models["single"], "--text", "Who ?", "--device", "cpu", "--out", page]
    _one_line_error(*run(capsys, *ex), "--overwrite")
    assert page.read_text() == "mine"
    code, out, err = run(capsys, *ex, "--overwrite")
    assert code == 0 and "<html" in page.read_text().lower(), err
