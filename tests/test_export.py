"""Dataset folders (``ulmfit prepare --export DIR``): read wherever text files are, with the
same ids, labels and losses as the files, checked against their manifest, and without spaCy."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, tiny_lms, trec_rows, write_csv

from ulmfit.cli import main
from ulmfit.data.sources import ReadReport, SourceSpec, file_fingerprint, iter_source
from ulmfit.errors import UserError
from ulmfit.export import export_dataset
from ulmfit.prepare import PrepareConfig, prepare
from ulmfit.tasks.language_model import read_token_corpus

# ``import spacy`` fails in a process started with this on PYTHONPATH, as on a GPU machine
# that has PyTorch but not spaCy.
NO_SPACY = 'import sys\nsys.modules["spacy"] = None\n'


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """120 TREC-6 training rows (two with no text), 30 more as a second file, tiny LMs, and
    the first file's dataset folder."""
    d = tmp_path_factory.mktemp("export")
    rows = trec_rows(120)
    rows[5]["text"], rows[17]["text"] = "", "   "
    os.environ["ULMFIT_CACHE"] = str(d / "cache")
    try:
        vocab = tiny_lms(d, [r["text"] for r in rows])
        train = write_csv(d / "train.csv", rows)
        more = write_csv(d / "more.csv", trec_rows(30, 200))
        cfg = PrepareConfig(workers=1, cache_dir=d / "cache")
        export_dataset([SourceSpec(train, label_cols=["label"])], cfg, d / "train_ds")
        export_dataset([SourceSpec(more, label_cols=["label"])], cfg, d / "more_ds")
    finally:
        del os.environ["ULMFIT_CACHE"]
    return {"dir": d, "train": train, "more": more, "vocab": vocab, "cfg": cfg}


def _read(spec: SourceSpec):
    report = ReadReport()
    texts, labels, rows = [], [], []
    for b in iter_source(spec, chunk_rows=7, report=report):
        texts += b.texts
        labels += b.labels or []
        rows += b.rows
    return texts, labels, rows, report.rows_read, report.skipped_empty


def test_folder_reads_as_the_file_it_was_exported_from(data):
    csv, folder = (
        SourceSpec(data["train"], label_cols=["label"]),
        SourceSpec(data["dir"] / "train_ds"),
    )
    assert folder.fmt == "dataset" and folder.label_cols == ["label"] and folder.text_cols is None
    # the columns are the folder's, whatever a command asks or defaults to
    asked = SourceSpec(data["dir"] / "train_ds", text_cols=["body"], label_cols=None)
    assert (asked.text_cols, asked.label_cols) == (None, ["label"])
    assert _read(folder) == _read(csv)
    assert _read(folder)[4] == [5, 17]  # the rows with no text, skipped as in the file
    a = read_token_corpus([csv], workers=1, cache_dir=data["cfg"].cache_dir)
    b = read_token_corpus([folder], workers=1, cache_dir=data["cfg"].cache_dir)
    assert a.vocab == b.vocab and np.array_equal(a.ids, b.ids)
    assert np.array_equal(a.offsets, b.offsets) and np.array_equal(a.rows, b.rows)


def test_prepare_on_folders_equals_prepare_on_files(data):
    cfg = data["cfg"]
    files = [SourceSpec(data["train"], label_cols=["label"]), SourceSpec(data["more"], label_cols=["label"])]  # fmt: skip
    folders = [SourceSpec(data["dir"] / "train_ds"), SourceSpec(data["dir"] / "more_ds")]
    # one folder (its own entry), two folders and a folder with a file (numbered afresh)
    for given, like in (
        (folders[:1], files[:1]),
        (folders, files),
        ([folders[0], files[1]], files),
    ):
        a, b = prepare(like, cfg), prepare(given, cfg)
        assert a.vocab == b.vocab and np.array_equal(a.ids, b.ids)
        assert np.array_equal(a.offsets, b.offsets) and np.array_equal(a.labels, b.labels)
        assert a.classes == b.classes and a.meta["unk_rate"] == b.meta["unk_rate"]


def test_several_label_columns_and_delimited_labels_keep_their_raw_values(data, tmp_path):
    rows = [{"text": f"question {i} ?", "a": str(i % 2), "b": str(1 - i % 2), "tags": "x y" if i % 3 else "y"} for i in range(12)]  # fmt: skip
    path = write_csv(tmp_path / "multi.csv", rows)
    for kw in ({"label_cols": ["a", "b"]}, {"label_cols": ["tags"], "label_delim": " "}):
        out = tmp_path / kw["label_cols"][0]
        export_dataset([SourceSpec(path, **kw)], data["cfg"], out)
        assert _read(SourceSpec(out)) == _read(SourceSpec(path, **kw))
        assert prepare([SourceSpec(out)], data["cfg"]).label_kind == "multi"


def test_a_folder_per_class_and_typed_json_labels(data, tmp_path):
    src = tmp_path / "reviews"
    for i, r in enumerate(trec_rows(12)):
        (src / r["label"]).mkdir(parents=True, exist_ok=True)
        (src / r["label"] / f"{i}.txt").write_text(r["text"] if i != 3 else " ")
    jsonl = tmp_path / "typed.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"q {i}", "y": [1, 10, 2][i % 3]}) + "\n" for i in range(9)))  # fmt: skip
    for spec in (SourceSpec(src), SourceSpec(jsonl, label_cols=["y"])):
        out = tmp_path / f"{spec.path.name}_ds"
        export_dataset([spec], data["cfg"], out)
        assert _read(SourceSpec(out)) == _read(spec)
    a = prepare([SourceSpec(src)], data["cfg"])
    b = prepare([SourceSpec(tmp_path / "reviews_ds")], data["cfg"])
    assert a.label_kind == b.label_kind == "single" and a.classes == b.classes
    assert np.array_equal(a.labels, b.labels)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_changed_or_missing_file_is_one_error(data, tmp_path, capsys):
    out = tmp_path / "ds"
    code, _, _ = run(capsys, "prepare", data["train"], "--export", out, "--workers", "1", "--cache-dir", tmp_path / "c")  # fmt: skip
    assert code == 0 and SourceSpec(out).fmt == "dataset"
    texts = (out / "texts.jsonl").read_bytes()
    (out / "texts.jsonl").write_bytes(texts.replace(b"What", b"Whot", 1))
    code, _, err = run(capsys, "prepare", out, "--cache-dir", tmp_path / "c")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"ulmfit: error: {out}: texts.jsonl has changed (its SHA-256 differs")
    (out / "texts.jsonl").unlink()
    code, _, err = run(capsys, "prepare", out, "--cache-dir", tmp_path / "c")
    assert code == 2 and err == f"ulmfit: error: {out}: texts.jsonl is missing; export the dataset folder again\n"  # fmt: skip


def test_export_refuses_an_existing_folder_unless_overwrite(data, tmp_path, capsys):
    out = tmp_path / "ds"
    opts = ["--label-col", "label", "--workers", "1", "--cache-dir", data["cfg"].cache_dir]
    assert run(capsys, "prepare", data["more"], "--export", out, *opts)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run(capsys, "prepare", data["train"], "--export", out, *opts)
    assert code == 2 and "exists; pass --overwrite" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert run(capsys, "prepare", data["train"], "--export", out, "--overwrite", *opts)[0] == 0
    assert _read(SourceSpec(out)) == _read(SourceSpec(data["train"], label_cols=["label"]))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = run(capsys, "prepare", data["train"], "--export", mine, "--overwrite", *opts)
    assert code == 2 and "refusing to replace it" in err and (mine / "notes.txt").exists()
    code, _, err = run(capsys, "prepare", data["train"], "--export", Path(data["train"]).parent, "--overwrite", *opts)  # fmt: skip
    assert code == 2 and "would overwrite the input" in err


def test_an_interrupted_export_leaves_nothing(data, tmp_path, monkeypatch):
    import ulmfit.export as export

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "_finish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_dataset([SourceSpec(data["more"])], data["cfg"], tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []


def test_fingerprint_is_the_manifests(data):
    folder = SourceSpec(data["dir"] / "train_ds")
    assert file_fingerprint(folder) == file_fingerprint(SourceSpec(data["dir"] / "train_ds"))
    with pytest.raises(UserError, match="not a dataset folder"):
        file_fingerprint(SourceSpec(data["dir"], fmt="dataset"))


def _timeless(value):
    """``value`` without its timings (``seconds``), which differ from run to run."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k != "seconds"}
    return [_timeless(v) for v in value] if isinstance(value, list) else value


def test_finetune_lm_and_fit_on_a_folder_equal_the_file(data, tmp_path, monkeypatch):
    from ulmfit.tasks.classifier import ClassifierConfig
    from ulmfit.tasks.language_model import FinetuneLMConfig, finetune_lm
    from ulmfit.tasks.run import fit

    monkeypatch.setenv("ULMFIT_CACHE", str(data["cfg"].cache_dir))
    csv, folder = (
        SourceSpec(data["train"], label_cols=["label"]),
        SourceSpec(data["dir"] / "train_ds"),
    )
    pre = data["dir"] / "pre_fwd"
    for dry in (False, True):
        cfg = FinetuneLMConfig(device="cpu", workers=1, verbose=False, epochs=1, bs=8, dry_run=dry)
        a = finetune_lm([csv], pre, tmp_path / f"lm_csv{dry}", cfg)
        b = finetune_lm([folder], pre, tmp_path / f"lm_ds{dry}", cfg)
        assert a["after"]["loss"] > 0 and _timeless(a["after"]) == _timeless(b["after"])
        assert _timeless(a["before"]) == _timeless(b["before"])
    ccfg = ClassifierConfig(device="cpu", workers=1, bs=16, verbose=False, dry_run=True)
    a = fit(csv, pre, tmp_path / "fit_csv", cfg=ccfg, test_spec=csv, baseline=True)
    b = fit(folder, pre, tmp_path / "fit_ds", cfg=ccfg, test_spec=folder, baseline=True)
    assert _timeless(a["classifier"]["valid"]) == _timeless(b["classifier"]["valid"])
    assert _timeless(a["test"]) == _timeless(b["test"])
    assert _timeless(a["baselines"]) == _timeless(b["baselines"])
    config = [json.loads((tmp_path / r / "model" / "config.json").read_text()) for r in ("fit_csv", "fit_ds")]  # fmt: skip
    for key in ("classes", "label_kind", "label_cols", "text_cols"):
        assert config[0][key] == config[1][key]


def _cli_without_spacy(tmp_path, *argv) -> subprocess.CompletedProcess:
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(NO_SPACY)
    env = {**os.environ, "PYTHONPATH": f"{shim}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    code = "import sys; from ulmfit.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, *map(str, argv)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def test_finetune_lm_and_fit_dry_runs_on_a_folder_need_no_spacy(data, tmp_path):
    cache = ["--cache-dir", tmp_path / "cache", "--device", "cpu", "--workers", "1"]
    pre = data["dir"] / "pre_fwd"
    folder = data["dir"] / "train_ds"
    # the shim works: a text file needs spaCy, and says so
    r = _cli_without_spacy(tmp_path, "finetune-lm", data["train"], "--pretrained", pre, "--out", tmp_path / "x", "--dry-run", *cache)  # fmt: skip
    assert r.returncode != 0 and "spacy" in r.stderr.lower()
    r = _cli_without_spacy(tmp_path, "finetune-lm", folder, "--pretrained", pre, "--out", tmp_path / "lm", "--dry-run", *cache)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = _cli_without_spacy(tmp_path, "fit", "--train", folder, "--test", folder, "--pretrained", pre, "--out", tmp_path / "run", "--dry-run", "--baseline", *cache)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout
    r = _cli_without_spacy(tmp_path, "lm-eval", pre, folder, "--limit-docs", 9, "--json", "--device", "cpu")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["docs"] == 9


def test_lm_eval_on_a_folder_equals_the_file(data, capsys, tmp_path):
    pre, opts = data["dir"] / "pre_fwd", ["--json", "--device", "cpu", "--cache-dir", tmp_path]
    for limit in (["--limit-docs", 9], []):
        got = [run(capsys, "lm-eval", pre, path, *limit, *opts) for path in (data["train"], data["dir"] / "train_ds")]  # fmt: skip
        assert got[0][0] == got[1][0] == 0
        assert _timeless(json.loads(got[0][1])) == _timeless(json.loads(got[1][1]))
