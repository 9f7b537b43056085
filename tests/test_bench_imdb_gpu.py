"""bench/imdb_gpu.py: a bundle travels in parts and comes back bit for bit (a changed part is
refused), and ``run --quick`` goes from the parts through ``ulmfit fit`` and ``ulmfit
evaluate`` on exported dataset folders (the CPU rehearsal of the GPU run, with a tiny LM)."""

import importlib.util
import json
import os
import sys

import pytest
from conftest import REPO, tiny_lms, write_csv

_spec = importlib.util.spec_from_file_location("imdb_gpu", REPO / "bench" / "imdb_gpu.py")
imdb_gpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(imdb_gpu)


def test_parts_are_stashed_joined_and_checked(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(4000))  # incompressible: several parts
    (src / "sub" / "b.txt").write_text("b" * 5000)
    parts = imdb_gpu.pack(src, tmp_path / "parts", part_bytes=1000)
    assert len(parts) > 1  # cut: every part at most 1000 bytes
    assert all((p / "chunk").stat().st_size <= 1000 for p in parts)
    stash = tmp_path / "stash"
    for p in parts:  # one device call each
        assert imdb_gpu.main(["stash", str(p), "--to", str(stash)]) == 0
    got = imdb_gpu.unpack(stash, tmp_path / "got")
    assert (got / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    assert (got / "sub" / "b.txt").read_text() == "b" * 5000
    (stash / "chunk-00").write_bytes(b"x" + (stash / "chunk-00").read_bytes()[1:])
    with pytest.raises(SystemExit, match="SHA-256"):
        imdb_gpu.unpack(stash, tmp_path / "again")
    (parts[0] / "chunk").write_bytes(b"changed")
    with pytest.raises(SystemExit, match="SHA-256"):
        imdb_gpu.main(["stash", str(parts[0]), "--to", str(stash)])


def _reviews(n: int, labelled: bool) -> list[dict]:
    good, bad = "a wonderful moving film , loved it", "a dull boring mess , hated it"
    rows = [{"text": f"{good if i % 2 else bad} number {i} ."} for i in range(n)]
    if labelled:
        for i, r in enumerate(rows):
            r["label"] = "positive" if i % 2 else "negative"
    return rows


def test_quick_run_fits_and_evaluates_exported_folders(tmp_path, monkeypatch):
    files = {
        s: tmp_path / f"{s}.csv" for s in imdb_gpu.SPLITS
    }  # train and test labelled, unsup not
    for split, f in files.items():
        write_csv(f, _reviews(40, labelled=split != "unsup"))
    tiny_lms(tmp_path, [r["text"] for r in _reviews(40, False)])
    parts = imdb_gpu.make_bundle(files, tmp_path / "pre_fwd", None, tmp_path / "parts")
    assert [p.name for p in parts] == ["part-00"]
    monkeypatch.setitem(sys.modules, "spacy", None)  # as on the GPU machine
    out = tmp_path / "out"
    argv = ["run", "--parts", str(tmp_path / "parts"), "--out", str(out), "--device", "cpu"]
    assert imdb_gpu.main([*argv, "--quick"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert "error" not in r and r["lm_probe"]["tokens_per_s"] > 0
    fit, ev = r["steps"]["fit"], r["steps"]["evaluate"]
    assert "--dry-run" in fit["command"] and "--unlabelled" in fit["command"]
    assert fit["report"]["lm"]["before"]["tokens"] > 0 and fit["seconds"] > 0
    assert ev["report"]["n"] == 40 and 0 <= ev["report"]["error_rate"] <= 1
    assert "Test error" in (out / "results.md").read_text()
