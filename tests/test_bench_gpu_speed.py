"""bench/gpu_speed.py without a GPU, fastai or ../shared: our classifier contenders (training
and prediction) run in this process on a tiny synthetic bundle and a tiny model, through the
run's planning, budget and report code (the subprocess launcher is replaced)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
TINY = {"arch": {"emb_sz": 8, "n_hid": 16}, "vocab_size": 60}


@pytest.fixture(scope="module")
def gs():
    spec = importlib.util.spec_from_file_location("gpu_speed_under_test", BENCH / "gpu_speed.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def _docs(rng, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lens = rng.integers(3, 200, n)  # some longer than max_len 144: the no-grad chunks run
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    ids = rng.integers(2, TINY["vocab_size"], int(offsets[-1])).astype(np.uint16)
    return ids, offsets, rng.integers(0, 2, n).astype(np.int8)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    tr, te = _docs(rng, 10), _docs(rng, 6)
    np.savez(
        tmp_path / "clas.npz",
        train_ids=tr[0], train_offsets=tr[1], train_labels=tr[2],
        test_ids=te[0], test_offsets=te[1], test_labels=te[2],
    )  # fmt: skip
    np.save(tmp_path / "lm_ids.npy", rng.integers(0, 60, 5000).astype(np.uint16))
    manifest = {"created": "test", "lm": {"tokens": 5000}, "clas": {}, "bytes": 0}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def _args(gs, bundle: Path, out: Path, *extra: str):
    a = gs._parser().parse_args(
        ["run", "--bundle", str(bundle), "--out", str(out), "--device", "cpu", "--quick",
         "--only", "clas,pred", "--contenders", "ours,ours_fp32", "--clas-docs", "10",
         "--clas-valid-docs", "3", "--pred-docs", "6", "--clas-bs", "4", "--pred-bs", "4",
         *extra]
    )  # fmt: skip
    return gs.resolve(a)


def _in_process(gs, calls: list):
    def run_job(a, job, timeout, log_dir, attempt):
        calls.append(job.key)
        spec = {**job.spec, **TINY}
        data = gs._clas_data(Path(spec["bundle"]), spec)
        if job.name == "ours_fp32":
            return {"status": "failed", "reason": "boom", "wall_s": 0.1}
        res = gs.CLASSIFIER_CONTENDERS[(job.kind, job.name)](spec, data)
        return {"status": "ok", "wall_s": 0.1, **res}

    return run_job


def test_ours_classifier_training_and_prediction_report(gs, bundle, tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(gs, "_run_job", _in_process(gs, calls))
    monkeypatch.setattr(gs, "_parent_env", lambda device: ({"python": "3", "torch": "t"}, "n/a"))
    monkeypatch.setattr(gs, "DEVICE", "cpu")
    out = tmp_path / "out"
    gs.run(_args(gs, bundle, out))
    assert calls == ["clas_train/bs4/ours", "predict/bs4/ours", "predict/bs4/ours_fp32"]
    res = json.loads((out / "results.json").read_text())
    assert res["finished"]
    jobs = {j["key"]: j for j in res["jobs"]}
    train = jobs["clas_train/bs4/ours"]["runs"][0]
    # the CPU reads no batch ahead: the timed (second) epoch holds every training document
    assert train["status"] == "ok" and train["timed_docs"] == 10 and train["value"] > 0
    pred = jobs["predict/bs4/ours"]["runs"][0]
    assert pred["status"] == "ok" and pred["timed_docs"] == 6 and pred["value"] > 0
    md = (out / "results.md").read_text()
    assert "Dry run, not a benchmark" in md
    assert "### Classifier training" in md and "### Classifier prediction" in md
    assert "predict/bs4/ours_fp32 run 1: failed: boom" in md


def test_budget_skips_what_does_not_fit(gs, bundle, tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(gs, "_run_job", _in_process(gs, calls))
    monkeypatch.setattr(gs, "_parent_env", lambda device: ({"python": "3", "torch": "t"}, "n/a"))
    out = tmp_path / "out"
    gs.run(_args(gs, bundle, out, "--budget-s", "5"))
    assert calls == []
    res = json.loads((out / "results.json").read_text())
    assert all(r["status"] == "skipped" for j in res["jobs"] for r in j["runs"])
    assert "budget" in (out / "results.md").read_text()
