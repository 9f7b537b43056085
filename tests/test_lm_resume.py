"""Resumable language-model training (DIR.partial, --resume after SIGKILL mid-epoch gives the
model an uninterrupted run gives) and --lr-find, through the ``ulmfit`` command."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DATA, REPO, need
from safetensors.torch import load_file

from ulmfit.cli import main
from ulmfit.config import AWDLSTMConfig
from ulmfit.models.awd_lstm import LanguageModel
from ulmfit.models.io import MODEL_FILE, save_model_dir
from ulmfit.text.rules import SPECIAL_TOKENS
from ulmfit.train.jsonl import read_jsonl
from ulmfit.train.learner import CHECKPOINT

ROWS = 60
TINY = AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2)
WORDS = ["?", "what", "the", "is", "of", "how", "a", "in", "who", "name"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """60 rows of TREC-6 and a tiny random "pretrained" model directory."""
    root = tmp_path_factory.mktemp("lm_resume")
    rows = pd.read_csv(need(DATA / "trec6" / "train.csv"), nrows=ROWS)
    rows.to_csv(root / "tiny.csv", index=False)
    rows[1:].to_csv(root / "other.csv", index=False)
    vocab = [*SPECIAL_TOKENS, *WORDS]
    for seed, name in ((0, "base"), (1, "other_base")):
        torch.manual_seed(seed)
        save_model_dir(root / name, LanguageModel(len(vocab), TINY), vocab)
    return root


def finetune_argv(root, out, *extra) -> list[str]:
    # bs 2 x bptt 2 on ~700 tokens: ~170 steps, a fraction of a second per epoch
    argv = ["finetune-lm", root / "tiny.csv", "--pretrained", root / "base", "--out", out]
    argv += ["--frozen-epochs", 1, "--epochs", 3, "--bs", 2, "--bptt", 2, "--min-freq", 1]
    argv += ["--workers", 1, "--cache-dir", root / "cache", "--json", *extra]
    return [str(a) for a in argv]


def spawn(root, argv) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ULMFIT_CACHE": str(root / "cache")}
    return subprocess.Popen(
        [sys.executable, "-m", "ulmfit.cli", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def snapshot(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2, err
    assert out == ""
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ulmfit: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def kill_mid_epoch(proc: subprocess.Popen, logs) -> None:
    """SIGKILL once the unfrozen stage's first epoch is checkpointed and a few steps of its
    second epoch are done (learner epoch 3 of 4): mid-epoch, mid-stage, after a finished stage."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"finished (rc {proc.returncode}) before it could be killed: {err[-2000:]}")
        if len(read_jsonl(logs / "metrics.jsonl")) >= 2:
            steps = read_jsonl(logs / "steps.jsonl")
            if sum(1 for r in steps if (r["stage"], r["epoch"]) == (1, 1)) >= 5:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                assert proc.returncode == -signal.SIGKILL
                return
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the run never reached its third epoch")


def test_resume_after_sigkill_gives_the_uninterrupted_model(work, capsys):
    ref, out = work / "ref", work / "ft"
    partial = work / "ft.partial"
    # the reference: uninterrupted; --resume without DIR.partial starts fresh and says so
    reference = spawn(work, finetune_argv(work, ref, "--resume"))
    victim = spawn(work, finetune_argv(work, out))
    kill_mid_epoch(victim, partial / "train")
    code, stdout, err = finish(reference)
    assert code == 0, err
    assert "no unfinished run" in err and "starting fresh" in err
    assert json.loads(stdout)["resumed"] is False
    assert not (work / "ref.partial").exists()

    # what the kill left: the partial folder with its last epoch checkpoint, no model
    assert not out.exists()
    assert (partial / "run.json").is_file() and (partial / "before.json").is_file()
    assert (partial / "train" / CHECKPOINT).is_file()
    assert len(read_jsonl(partial / "train" / "metrics.jsonl")) == 2
    left = snapshot(partial)
    before = json.loads((partial / "before.json").read_text())

    # the same command without --resume refuses, and touches nothing
    code, o, e = run(capsys, *finetune_argv(work, out))
    assert_user_error(code, o, e, str(partial), "--resume")
    # --resume with another setting refuses, naming it, and touches nothing
    code, o, e = run(capsys, *finetune_argv(work, out, "--resume", "--lr", "0.004"))
    assert_user_error(code, o, e, "cannot resume", "--lr", "0.002", "0.004")
    code, o, e = run(capsys, *finetune_argv(work, out, "--resume", "--seed", "7"))
    assert_user_error(code, o, e, "--seed")
    # ... or another pretrained model, or other data (compared by content), or command
    argv = finetune_argv(work, out, "--resume")
    other = [str(work / "other_base") if a == str(work / "base") else a for a in argv]
    code, o, e = run(capsys, *other)
    assert_user_error(code, o, e, "cannot resume", "--pretrained model")
    other = [str(work / "other.csv") if a == str(work / "tiny.csv") else a for a in argv]
    code, o, e = run(capsys, *other)
    assert_user_error(code, o, e, "cannot resume", "training data differ")
    code, o, e = run(capsys, "pretrain", work / "tiny.csv", "--out", out, "--resume")
    assert_user_error(code, o, e, 'unfinished "finetune_lm" run, this is "pretrain"')
    assert not out.exists()
    assert snapshot(partial) == left

    # --resume continues to the end
    code, stdout, err = finish(spawn(work, finetune_argv(work, out, "--resume")))
    assert code == 0, err
    assert "stage 0: finished in the checkpoint, skipped" in err
    assert "at epoch 1/3" in err  # the unfrozen stage continues after its first epoch
    res = json.loads(stdout)
    assert res["resumed"] is True
    assert not partial.exists()

    # the published model equals the uninterrupted run's
    a, b = load_file(ref / MODEL_FILE), load_file(out / MODEL_FILE)
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k
    # ... and so do the logs, the "before" (measured once, when the run started) and "after"
    ra = json.loads((ref / "report.json").read_text())
    rb = json.loads((out / "report.json").read_text())
    assert rb["before"] == before  # measured when the run started, not re-measured
    drop = lambda m: {k: v for k, v in m.items() if k != "seconds"}  # noqa: E731
    assert drop(rb["before"]) == drop(ra["before"])
    assert np.isclose(rb["after"]["loss"], ra["after"]["loss"], rtol=0, atol=1e-6)
    for name, keys in (("metrics.jsonl", ("train_loss", "valid_loss")), ("steps.jsonl", ("loss",))):
        la, lb = read_jsonl(ref / "train" / name), read_jsonl(out / "train" / name)
        assert [(r["stage"], r["epoch"]) for r in la] == [(r["stage"], r["epoch"]) for r in lb]
        for k in keys:
            assert np.allclose([r[k] for r in la], [r[k] for r in lb], rtol=0, atol=1e-6), name
    assert len(read_jsonl(out / "train" / "metrics.jsonl")) == 4
    # the published folders hold no checkpoint (a pickle), only the logs
    for folder in (ref, out):
        assert sorted(p.name for p in (folder / "train").iterdir()) == [
            "loss.png",
            "metrics.jsonl",
            "steps.jsonl",
        ]
    assert not [p for p in work.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_lr_find_writes_a_plot_and_publishes_nothing(work, capsys, tmp_path):
    out = tmp_path / "pt"
    argv = ["pretrain", work / "tiny.csv", "--out", out, "--lr-find", "--json"]
    argv += ["--emb-sz", 8, "--n-hid", 16, "--n-layers", 2, "--bs", 4, "--bptt", 8]
    argv += ["--min-freq", 1, "--workers", 1, "--cache-dir", work / "cache"]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    res = json.loads(stdout)
    for key in ("suggestion", "steep", "minimum"):
        assert np.isfinite(res[key]) and 1e-7 <= res[key] <= 10, res
    plot = tmp_path / "pt.lr_find.png"
    assert res["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pt.lr_find.png"]  # nothing else

    # fine-tuning, unfrozen, plot where asked, text output
    plot2 = tmp_path / "plots" / "ft.png"
    argv = finetune_argv(work, tmp_path / "ft", "--lr-find", "--lr-find-stage", "unfrozen")
    argv = [a for a in argv if a != "--json"] + ["--lr-find-plot", str(plot2)]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    assert stdout.startswith("suggested learning rate (unfrozen stage): ")
    assert f"plot: {plot2}" in stdout and plot2.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots", "pt.lr_find.png"]

    # --lr-find does not train, so --resume makes no sense
    code, o, e = run(capsys, *argv, "--resume")
    assert_user_error(code, o, e, "--lr-find", "--resume")
