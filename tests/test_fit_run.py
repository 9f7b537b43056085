"""ulmfit fit as a chain of cached stages; backward classifiers and the fwd+bwd ensemble;
evaluate with the columns of training; AR/TAR on the classifier."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_lms
from conftest import trec_rows as _rows
from conftest import write_csv as _write

from ulmfit.cli import main
from ulmfit.config import ClassifierConfig
from ulmfit.corpus import reverse_docs
from ulmfit.data.labels import dry_run_sample
from ulmfit.data.sources import SourceSpec
from ulmfit.errors import UserError
from ulmfit.models.awd_lstm import ar_tar_loss
from ulmfit.models.classifier import masked_ar_tar
from ulmfit.models.model_dir import load_classifier, load_members, mean_outputs
from ulmfit.predict import predict_logits
from ulmfit.tasks import classifier as clf_mod
from ulmfit.tasks.run import dry_run_dir, fit, read_stages


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """80 training rows, 20 test rows of seen classes, tiny forward and backward LMs."""
    d = tmp_path_factory.mktemp("run")
    train_rows = _rows(80)
    seen = {r["label"] for r in train_rows}
    test_rows = [r for r in _rows(200, 80) if r["label"] in seen][:20]
    vocab = tiny_lms(d, [r["text"] for r in train_rows])
    return {
        "dir": d,
        "train": _write(d / "train.csv", train_rows),
        "test": _write(d / "test.csv", test_rows),
        "unlabelled": _write(
            d / "unsup.csv", [{"text": r["text"]} for r in _rows(40, 300)], ["text"]
        ),
        "fwd": str(d / "pre_fwd"),
        "bwd": str(d / "pre_bwd"),
        "vocab": vocab,
    }


def _cfg(**kw) -> ClassifierConfig:
    return ClassifierConfig(dry_run=True, device="cpu", workers=1, bs=16, verbose=False, **kw)


def _spec(path) -> SourceSpec:
    return SourceSpec(path=path, label_cols=["label"])


def _snapshot(folder) -> dict:
    """Every file under ``folder`` (hidden ones too) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_rerun_reuses_unchanged_stages(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    first = fit(
        _spec(setup["train"]), setup["fwd"], out, test_spec=_spec(setup["test"]), cfg=_cfg()
    )
    assert not first["lm"]["reused"] and not first["classifier"]["reused"]
    assert set(read_stages(out)) == {"lm", "classifier", "test"}
    weights = (out / "model" / "model.safetensors").stat().st_mtime_ns
    lm_weights = (out / "lm" / "model.safetensors").stat().st_mtime_ns
    # nothing changed: both stages reused, the test scored again with the same result
    again = fit(
        _spec(setup["train"]), setup["fwd"], out, test_spec=_spec(setup["test"]), cfg=_cfg()
    )
    assert again["lm"]["reused"] and again["classifier"]["reused"]
    assert again["test"] == first["test"]
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == weights
    # a classifier setting changed: refused, nothing touched; with overwrite the LM is
    # reused and the classifier retrained in place
    before = _snapshot(out)
    with pytest.raises(
        UserError, match=r"classifier stage .*other settings \(lr: 0.02 there, now 0.001\)"
    ):
        fit(_spec(setup["train"]), setup["fwd"], out, cfg=_cfg(lr=1e-3))
    assert _snapshot(out) == before
    other = fit(_spec(setup["train"]), setup["fwd"], out, cfg=_cfg(lr=1e-3), overwrite=True)
    assert other["lm"]["reused"] and not other["classifier"]["reused"]
    assert (out / "lm" / "model.safetensors").stat().st_mtime_ns == lm_weights
    assert json.loads((out / "model" / "config.json").read_text())["config"]["lr"] == 1e-3
    assert json.loads((out / "report" / "metrics.json").read_text())["config"]["lr"] == 1e-3
    assert "test" not in read_stages(out)  # the report it scored was replaced
    # an LM input changed (more texts): refused, then both stages again
    unlabelled = [SourceSpec(path=setup["unlabelled"])]
    with pytest.raises(UserError, match="its finished lm stage .* another set of texts"):
        fit(_spec(setup["train"]), setup["fwd"], out, unlabelled=unlabelled, cfg=_cfg(lr=1e-3))
    more = fit(_spec(setup["train"]), setup["fwd"], out, unlabelled=unlabelled,
               cfg=_cfg(lr=1e-3), overwrite=True)  # fmt: skip
    assert not more["lm"]["reused"] and not more["classifier"]["reused"]
    # the fine-tuned LM read the unlabelled texts too (dry run: 16 rows of each file)
    lm_report = json.loads((out / "lm" / "report.json").read_text())
    assert lm_report["data"]["docs"] == 32  # 16 training + 16 unlabelled rows


def test_interrupted_classifier_continues_from_its_checkpoint(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    clean = fit(_spec(setup["train"]), setup["fwd"], tmp_path / "clean", cfg=_cfg())
    out = tmp_path / "run"
    real = clf_mod.predict_logits

    def crash(*a, **k):  # after every training epoch, before the model is written
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(clf_mod, "predict_logits", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        fit(_spec(setup["train"]), setup["fwd"], out, cfg=_cfg())
    assert (out / ".classifier-train" / "checkpoint.pt").is_file()
    assert not (out / "model").exists()
    monkeypatch.setattr(clf_mod, "predict_logits", real)
    res = fit(_spec(setup["train"]), setup["fwd"], out, cfg=_cfg())
    assert res["lm"]["reused"]  # the LM stage had finished
    assert not (out / ".classifier-train").exists()
    # every stage was in the checkpoint: same model as the uninterrupted run
    assert res["classifier"]["valid"] == clean["classifier"]["valid"]
    a = load_classifier(out)[0].state_dict()
    b = load_classifier(tmp_path / "clean")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_backward_classifier_reads_documents_in_reverse(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bwd"
    res = fit(
        _spec(setup["train"]),
        None,
        out,
        test_spec=_spec(setup["test"]),
        cfg=_cfg(),
        direction="bwd",
        pretrained_bwd=setup["bwd"],
    )
    assert (out / "lm_bwd" / "config.json").is_file() and not (out / "lm").exists()
    model, vocab, config = load_classifier(out)
    assert config["direction"] == "bwd"
    ev = clf_mod.evaluate(out, _spec(setup["test"]), device="cpu")
    assert ev["accuracy"] == res["test"]["accuracy"]
    fwd_docs = clf_mod.read_labelled(_spec(setup["test"]), vocab, _cfg(), classes=config["classes"])
    rev = reverse_docs(fwd_docs.ids, fwd_docs.offsets)
    logits = predict_logits(model, clf_mod.LabelledDocs(**{**fwd_docs.__dict__, "ids": rev}))
    assert ev["predictions"] == [config["classes"][k] for k in logits.argmax(1)]
    # a forward model where a backward one is needed, and a missing backward model
    with pytest.raises(UserError, match="forward language model"):
        fit(_spec(setup["train"]), None, tmp_path / "x", cfg=_cfg(), direction="bwd",
            pretrained_bwd=setup["fwd"])  # fmt: skip
    with pytest.raises(UserError, match="--pretrained-bwd"):
        fit(_spec(setup["train"]), setup["fwd"], tmp_path / "y", cfg=_cfg(), direction="both")


def test_both_directions_average_probabilities(capsys, setup, tmp_path, monkeypatch):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "both"
    argv = ["fit", "--train", setup["train"], "--test", setup["test"], "--out", out]
    argv += ["--pretrained", setup["fwd"], "--pretrained-bwd", setup["bwd"], "--direction", "both"]
    argv += ["--dry-run", "--json", "--workers", 1, "--device", "cpu", "--bs", 16]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    res = json.loads(stdout)
    assert res["dry_run"] is True and res["out"] == str(dry_run_dir(out))
    assert not out.exists()  # a dry run writes only to its own scratch folder
    out = dry_run_dir(out)
    for d in ("fwd", "bwd"):
        assert (out / d / "model" / "config.json").is_file()
        assert (out / "model" / d / "model.safetensors").is_file()  # self-contained copy
    config, members = load_members(out)
    assert config["task"] == "ensemble" and config["directions"] == ["fwd", "bwd"]
    assert [m[2]["direction"] for m in members] == ["fwd", "bwd"]
    # the ensemble's test accuracy is that of the mean of the members' probabilities
    outs = []
    for model, vocab, mcfg in members:
        docs = clf_mod.read_labelled(
            _spec(setup["test"]),
            vocab,
            _cfg(),
            classes=mcfg["classes"],
            direction=mcfg["direction"],
        )
        outs.append(predict_logits(model, docs))
    probs = [np.exp(o) / np.exp(o).sum(1, keepdims=True) for o in outs]
    mean = np.mean(probs, axis=0)
    assert np.allclose(np.exp(mean_outputs("single", outs)), mean, atol=1e-6)
    acc = float(np.mean(mean.argmax(1) == docs.labels))
    assert abs(res["test"]["accuracy"] - acc) < 1e-9
    report = json.loads((out / "report" / "metrics.json").read_text())
    assert set(report["member_valid_metrics"]) == {"fwd", "bwd"}
    code, stdout, err = run(capsys, "evaluate", out, setup["test"], "--json", "--device", "cpu")
    assert code == 0 and json.loads(stdout)["accuracy"] == res["test"]["accuracy"], err


def test_evaluate_uses_the_columns_of_training(capsys, setup, tmp_path, monkeypatch):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    rows = [{"question": r["text"], "category": r["label"]} for r in _rows(80)]
    train = _write(tmp_path / "t.csv", rows, ["category", "question"])
    test = _write(tmp_path / "s.csv", rows[:10], ["category", "question"])
    out = tmp_path / "run"
    argv = ["fit", "--train", train, "--out", out, "--pretrained", setup["fwd"], "--dry-run"]
    argv += ["--text-col", "question", "--label-col", "category", "--workers", 1, "--device", "cpu"]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    code, stdout, err = run(capsys, "evaluate", dry_run_dir(out), test, "--json", "--device", "cpu")
    assert code == 0, err
    assert json.loads(stdout)["n"] <= 10


def test_keep_pretrained_vocab(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    from ulmfit.config import FinetuneLMConfig
    from ulmfit.tasks.language_model import finetune_lm
    from ulmfit.text.vocab import load_vocab

    cfg = FinetuneLMConfig(dry_run=True, device="cpu", workers=1, verbose=False)
    res = finetune_lm([SourceSpec(path=setup["unlabelled"])], setup["fwd"], tmp_path / "a",
                      FinetuneLMConfig(**{**cfg.__dict__, "keep_pretrained_vocab": True}))  # fmt: skip
    vocab = load_vocab(tmp_path / "a" / "vocab.json")
    assert vocab[: len(setup["vocab"])] == setup["vocab"]
    assert res["vocab_remap"]["found"] == len(setup["vocab"])
    finetune_lm([SourceSpec(path=setup["unlabelled"])], setup["fwd"], tmp_path / "b", cfg)
    assert len(load_vocab(tmp_path / "b" / "vocab.json")) < len(vocab)


def test_masked_ar_tar_matches_fastai_without_padding_and_ignores_padding():
    torch.manual_seed(0)
    out = torch.randn(3, 7, 5)
    none = torch.zeros(3, 7, dtype=torch.bool)
    assert torch.allclose(masked_ar_tar(out, none, 2.0, 1.0), ar_tar_loss(out, out, 2.0, 1.0))
    pad = none.clone()
    pad[0, :3] = True  # pad first, as the classifier's batches are laid out
    changed = out.clone()
    changed[0, :3] = 100.0
    assert torch.allclose(masked_ar_tar(out, pad, 2.0, 1.0), masked_ar_tar(changed, pad, 2.0, 1.0))
    assert masked_ar_tar(out, torch.ones_like(pad), 2.0, 1.0) == 0


def test_fit_prints_the_baselines_beside(capsys, setup, tmp_path, monkeypatch):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = ["fit", "--train", setup["train"], "--test", setup["test"], "--baseline"]
    argv += ["--out", out, "--pretrained", setup["fwd"], "--dry-run", "--workers", 1]
    code, stdout, err = run(capsys, *argv, "--device", "cpu")
    assert code == 0, err
    assert "test: accuracy" in stdout and "test, NB-SVM: accuracy" in stdout
    assert "test, TF-IDF + LR: accuracy" in stdout
    assert "dry run" in stdout and "not comparable" in stdout
    saved = json.loads((dry_run_dir(out) / "report" / "baselines.json").read_text())
    assert saved["n_test"] == 20 and 0 <= saved["nbsvm"]["accuracy"] <= 1


def test_test_file_with_other_columns_and_a_very_long_text(capsys, setup, tmp_path, monkeypatch):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    other = _write(
        tmp_path / "o.csv",
        [{"category": r["label"], "question": r["text"]} for r in _rows(5)],
        ["category", "question"],
    )
    argv = ["fit", "--train", setup["train"], "--test", other, "--out", tmp_path / "a"]
    code, _, err = run(capsys, *argv, "--pretrained", setup["fwd"], "--dry-run", "--workers", 1)
    assert code == 2 and "o.csv" in err and "column" in err, err
    assert not dry_run_dir(tmp_path / "a").exists()  # refused before any training
    assert not (tmp_path / "a").exists()
    # a document of ~30,000 tokens is read whole, in bptt chunks, without error
    out = tmp_path / "run"
    fit(_spec(setup["train"]), setup["fwd"], out, cfg=_cfg())
    long = [{"label": r["label"], "text": r["text"]} for r in _rows(2)]
    long[1]["text"] = " ".join([_rows(1)[0]["text"]] * 3_000)
    ev = clf_mod.evaluate(out, _spec(_write(tmp_path / "long.csv", long)), device="cpu")
    assert ev["n"] == 2 and len(ev["predictions"]) == 2


# ----------------------------------------------------------------------------------------
# A finished run is never replaced without --overwrite; a dry run has a folder of its own


def _lines(err: str) -> list[str]:
    return err.strip("\n").splitlines()


def test_dry_run_and_other_settings_leave_a_finished_run_as_it_was(
    capsys, setup, tmp_path, monkeypatch
):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    fit(_spec(setup["train"]), setup["fwd"], out, test_spec=_spec(setup["test"]), cfg=_cfg())
    assert (out / "report" / "test.json").is_file()
    before = _snapshot(out)
    common = ["--train", setup["train"], "--test", setup["test"], "--out", out]
    common += ["--pretrained", setup["fwd"], "--workers", 1, "--device", "cpu", "--bs", 16]
    # a dry run: into RUN.dry-run, RUN byte for byte as it was; it says it is a dry run
    code, stdout, err = run(capsys, "fit", *common, "--dry-run", "--json")
    assert code == 0, err
    res = json.loads(stdout)
    assert res["dry_run"] is True and res["out"] == str(dry_run_dir(out))
    assert (dry_run_dir(out) / "model" / "config.json").is_file()
    code, stdout, err = run(capsys, "fit", *common, "--dry-run", "--lr", 1e-3)
    assert code == 0, err  # the scratch folder is the dry run's own: replaced without asking
    assert "dry run into" in stdout and "not comparable" in stdout
    assert _snapshot(out) == before
    # other settings (here a real run's): refused before any work, naming the stage
    code, stdout, err = run(capsys, "fit", *common, "--lr", 1e-3)
    assert code == 2 and stdout == "" and len(_lines(err)) == 1, err
    assert "finished lm stage" in err and "dry_run" in err and "--overwrite" in err
    # another --direction: the ensemble would replace the finished classifier
    with pytest.raises(UserError, match="finished classifier stage .* by the ensemble stage"):
        fit(_spec(setup["train"]), setup["fwd"], out, cfg=_cfg(), direction="both",
            pretrained_bwd=setup["bwd"])  # fmt: skip
    # another test file: the finished test score would be replaced
    other = _write(tmp_path / "other.csv", _rows(30, 80)[:10])
    with pytest.raises(UserError, match="finished test stage .* another test file"):
        fit(_spec(setup["train"]), setup["fwd"], out, test_spec=_spec(other), cfg=_cfg())
    assert _snapshot(out) == before
    # the same settings again: every stage reused, nothing replaced
    again = fit(
        _spec(setup["train"]), setup["fwd"], out, test_spec=_spec(setup["test"]), cfg=_cfg()
    )
    assert again["lm"]["reused"] and again["classifier"]["reused"]
    assert _snapshot(out) == before


def test_pretrained_inside_out_is_refused_and_the_users_folder_kept(
    capsys, setup, tmp_path, monkeypatch
):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    x = tmp_path / "x"
    shutil.copytree(setup["fwd"], x / "lm")
    (x / "lm" / "notes.txt").write_text("the user's own file")
    before = _snapshot(x)
    common = ["fit", "--train", setup["train"], "--out", x, "--workers", 1, "--device", "cpu"]
    both = ["--pretrained", setup["fwd"], "--direction", "both", "--pretrained-bwd"]
    for flags in (
        ["--pretrained", x / "lm"],
        ["--pretrained", x / "lm", "--overwrite"],
        ["--pretrained", x / "lm", "--dry-run"],
        [*both, x / "lm"],
    ):
        code, stdout, err = run(capsys, *common, *flags)
        assert code == 2 and len(_lines(err)) == 1, err
        assert "inside --out" in err and str(x / "lm") in err
    # a folder RUN/lm that no run of fit made: refused too, without --overwrite
    code, _, err = run(capsys, *common, "--pretrained", setup["fwd"])
    assert code == 2 and len(_lines(err)) == 1 and "not a finished stage" in err, err
    assert _snapshot(x) == before
    assert not dry_run_dir(x).exists()


def test_a_run_interrupted_after_overwrite_continues_without_it(setup, tmp_path, monkeypatch):
    """A finished LM and an interrupted classifier that --overwrite was replacing: the
    finished LM is reused, the classifier continues (its key is the new one)."""
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    fit(_spec(setup["train"]), setup["fwd"], out, cfg=_cfg())
    real = clf_mod.predict_logits

    def crash(*a, **k):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(clf_mod, "predict_logits", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        fit(_spec(setup["train"]), setup["fwd"], out, cfg=_cfg(lr=1e-3), overwrite=True)
    assert json.loads((out / "model" / "config.json").read_text())["config"]["lr"] == 2e-2
    monkeypatch.setattr(clf_mod, "predict_logits", real)
    res = fit(_spec(setup["train"]), setup["fwd"], out, cfg=_cfg(lr=1e-3))
    assert res["lm"]["reused"] and not res["classifier"]["reused"]
    assert json.loads((out / "model" / "config.json").read_text())["config"]["lr"] == 1e-3


def test_dry_run_samples_every_class_of_a_class_sorted_file(capsys, setup, tmp_path, monkeypatch):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    by_class: dict = {}
    for r in _rows(1500):
        by_class.setdefault(r["label"], []).append(r)
    big, *small = sorted(by_class, key=lambda c: -len(by_class[c]))[:3]
    rows = by_class[big][:80] + by_class[small[0]][:15] + by_class[small[1]][:15]  # sorted
    train = _write(tmp_path / "sorted.csv", rows)
    out = tmp_path / "run"
    argv = ["fit", "--train", train, "--out", out, "--pretrained", setup["fwd"], "--dry-run"]
    code, stdout, err = run(capsys, *argv, "--json", "--workers", 1, "--device", "cpu")
    assert code == 0, err
    res = json.loads(stdout)
    assert res["dry_run"] is True
    assert sorted(res["classifier"]["classes"]) == sorted([big, *small])


def test_dry_run_sample_spreads_over_the_classes_in_input_order():
    raw = ["a"] * 100 + ["b"] * 5 + ["c"] * 30
    keep = dry_run_sample(raw, "single", 20)
    assert keep == sorted(keep) and len(keep) == 20 == len(set(keep))
    got = [raw[i] for i in keep]
    assert got.count("b") == 5 and got.count("a") >= 7 and got.count("c") >= 7
    assert dry_run_sample(raw, "single", 20) == keep  # the same rows every time
    assert dry_run_sample(raw[:10], "single", 20) == list(range(10))
    rand = dry_run_sample([0.5] * 100, "float", 16)
    assert rand == sorted(rand) and len(set(rand)) == 16 and rand != list(range(16))


def test_dry_run_dir_is_beside_the_run(tmp_path, monkeypatch):
    assert dry_run_dir(tmp_path / "runs" / "trec") == tmp_path / "runs" / "trec.dry-run"
    monkeypatch.chdir(tmp_path / ".")
    assert dry_run_dir(".") == tmp_path.with_name(tmp_path.name + ".dry-run")
    with pytest.raises(UserError, match="needs a run folder"):
        dry_run_dir("/")
