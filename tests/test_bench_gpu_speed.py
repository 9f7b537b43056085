"""bench/gpu_speed.py without a GPU, fastai or ../shared: our contenders (``ulmfit pretrain``,
``fit`` and ``evaluate`` on exported dataset folders) run in this process on a tiny synthetic
bundle, through the run's planning, budget and report code (the subprocess launcher is
replaced); a budget too small for anything skips every job and says so."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_csv

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def gs():
    spec = importlib.util.spec_from_file_location("gpu_speed_under_test", BENCH / "gpu_speed.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def _rows(n: int) -> list[dict]:
    words = ["good", "fine", "great", "bad", "poor", "awful", "film", "plot", "actor"]
    rng = np.random.default_rng(n)
    return [
        {"label": ["negative", "positive"][i % 2], "text": " ".join(rng.choice(words, 12))}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def bundle(gs, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("speed")
    out = tmp / "bundle"
    wiki = tmp / "wiki.txt"
    wiki.write_text("\n".join(r["text"] for r in _rows(200)) + "\n")
    exports = {"wiki": gs.export([wiki], out / "wiki", False)}
    for split, n in (("train", 30), ("test", 12)):
        f = Path(write_csv(tmp / f"{split}.csv", _rows(n)))
        exports[f"clas_{split}"] = gs.export([f], out / f"clas_{split}", True)
    np.save(out / "lm_ids.npy", np.arange(5000, dtype=np.uint16) % 60)
    clas = {"train": {"docs": 30}, "test": {"docs": 12}}
    manifest = {"created": "test", "lm": {"tokens": 5000}, "exports": exports, "clas": clas}
    (out / "manifest.json").write_text(json.dumps({**manifest, "bytes": 0}))
    offsets = np.arange(31, dtype=np.int64) * 5
    np.savez(out / "clas.npz", train_offsets=offsets)
    return out


def _args(gs, bundle: Path, out: Path, *extra: str):
    a = gs._parser().parse_args(
        ["run", "--bundle", str(bundle), "--out", str(out), "--device", "cpu", "--quick",
         "--only", "clas,pred", "--contenders", "ours", "--clas-bs", "4", "--pred-bs", "4",
         *extra]
    )  # fmt: skip
    return gs.resolve(a)


def _in_process(gs, calls: list):
    def run_job(a, job, timeout, log_dir, attempt):
        calls.append(job.key)
        res = gs.CONTENDERS[(job.kind, job.name)](job.spec, {})
        return {"status": "ok", "wall_s": 0.1, **res}

    return run_job


def test_ours_is_the_library_commands(gs, bundle, tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(gs, "_run_job", _in_process(gs, calls))
    monkeypatch.setattr(gs, "DEVICE", "cpu")
    out = tmp_path / "out"
    gs.run(_args(gs, bundle, out))
    assert calls == ["pretrain/bs64/ours", "clas_train/bs4/ours", "predict/bs4/ours"]
    res = json.loads((out / "results.json").read_text())
    assert res["finished"]
    runs = {j["key"]: j["runs"][0] for j in res["jobs"]}
    assert runs["pretrain/bs64/ours"]["value"] > 0
    train = runs["clas_train/bs4/ours"]
    assert train["status"] == "ok" and train["timed_docs"] == 27 * (3 + 1)  # 90%, 1+1+1+1
    pred = runs["predict/bs4/ours"]
    assert pred["timed_docs"] == 12 and 0 <= pred["accuracy"] <= 1
    md = (out / "results.md").read_text()
    assert "Dry run, not a benchmark" in md and "### Classifier prediction" in md


def test_budget_skips_what_does_not_fit(gs, bundle, tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(gs, "_run_job", _in_process(gs, calls))
    out = tmp_path / "out"
    gs.run(_args(gs, bundle, out, "--budget-s", "5"))
    assert calls == []
    res = json.loads((out / "results.json").read_text())
    assert all(r["status"] == "skipped" for j in res["jobs"] for r in j["runs"])
    assert "budget" in (out / "results.md").read_text()
