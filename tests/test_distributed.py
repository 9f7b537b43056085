"""Data-parallel training under torchrun: 2 CPU processes (gloo) against 1 process on the
same global batch, rank-0-only files, --resume with 2 ranks, and the classifier shards.

The language-model runs use ``--drop-mult 0``: with dropout the two set-ups draw different
masks (each rank seeds its own), so only the dropout-free curves can match step for step."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import REPO, trec_rows, write_csv

from ulmfit.loaders import ClassifierLoader, shard_batches
from ulmfit.train.jsonl import read_jsonl
from ulmfit.train.learner import CHECKPOINT

TORCHRUN = Path(sys.executable).with_name("torchrun")
ULMFIT = Path(sys.executable).with_name("ulmfit")
TINY = ["--emb-sz", "8", "--n-hid", "16", "--n-layers", "2", "--bptt", "8", "--drop-mult", "0"]


def _env(cache: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "ULMFIT_CACHE": str(cache)}


def _pretrain_argv(root: Path, out: str, bs: int, epochs: int, *extra: str) -> list[str]:
    return [
        "pretrain",
        str(root / "corpus.csv"),
        "--out",
        str(root / out),
        "--bs",
        str(bs),
        "--epochs",
        str(epochs),
        *TINY,
        "--min-freq",
        "1",
        "--workers",
        "1",
        "--cache-dir",
        str(root / "cache"),
        "--json",
        # fp32: one process and two must agree to float rounding (bf16 rounding would hide a
        # real difference in the order the gradients are summed)
        "--amp",
        "off",
        *extra,
    ]


def _run(root: Path, argv: list[str], nproc: int = 1, **kw) -> subprocess.CompletedProcess:
    cmd = [str(ULMFIT), *argv]
    if nproc > 1:
        cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(nproc), *cmd]
    return subprocess.run(
        cmd, cwd=REPO, env=_env(root / "cache"), capture_output=True, text=True, timeout=300, **kw
    )


@pytest.fixture(scope="module")
def lm_runs(tmp_path_factory):
    """The same pretraining twice: 1 process with bs 4, 2 processes with bs 2 each."""
    if not TORCHRUN.exists():
        pytest.skip("torchrun not found next to the Python interpreter")
    root = tmp_path_factory.mktemp("ddp")
    write_csv(root / "corpus.csv", trec_rows(200))
    one = _run(root, _pretrain_argv(root, "one", 4, 3))
    assert one.returncode == 0, one.stderr
    two = _run(root, _pretrain_argv(root, "two", 2, 3), nproc=2)
    assert two.returncode == 0, two.stderr
    return root, one, two


def test_two_processes_follow_the_loss_curve_of_one(lm_runs):
    root, _, _ = lm_runs
    one = read_jsonl(root / "one" / "train" / "steps.jsonl")
    two = read_jsonl(root / "two" / "train" / "steps.jsonl")
    assert len(one) == len(two) > 100
    a = np.array([r["loss"] for r in one])
    b = np.array([r["loss"] for r in two])
    # same batches, same weights: only the order of float additions differs
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    assert a[-10:].mean() < a[:10].mean()  # it learned something
    va = [r["valid_loss"] for r in read_jsonl(root / "one" / "train" / "metrics.jsonl")]
    vb = [r["valid_loss"] for r in read_jsonl(root / "two" / "train" / "metrics.jsonl")]
    np.testing.assert_allclose(vb, va, rtol=1e-4)


def test_only_rank_0_writes_and_reports(lm_runs):
    root, _, two = lm_runs
    # one JSON report on stdout (rank 1's is silenced), naming the published model
    lines = [json.loads(x) for x in two.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1 and lines[0]["out"] == str(root / "two")
    # each epoch logged once, each step once: a second writer would double the lines
    assert len(read_jsonl(root / "two" / "train" / "metrics.jsonl")) == 3
    steps = read_jsonl(root / "two" / "train" / "steps.jsonl")
    assert [r["global_step"] for r in steps] == list(range(1, len(steps) + 1))
    assert not (root / "two.partial").exists()
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("two")) == ["two"]


def test_resume_with_two_processes(lm_runs):
    """SIGKILL both ranks after the first epoch checkpoint, resume with torchrun, finish: the
    model and the curve are those of the uninterrupted 2-process run."""
    root, _, _ = lm_runs
    argv = _pretrain_argv(root, "res", 2, 3)
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(ULMFIT), *argv]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=_env(root / "cache"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    ckpt = root / "res.partial" / "train" / CHECKPOINT
    metrics = root / "res.partial" / "train" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if ckpt.exists() and len(read_jsonl(metrics)) >= 1:
            # torchrun and every worker (they may sit in process groups of their own)
            tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(True))]
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    if not ckpt.exists() or len(read_jsonl(metrics)) >= 3:
        pytest.skip("the run finished before it could be killed (machine too fast)")
    assert not (root / "res").exists()
    again = _run(root, [*argv, "--resume"], nproc=2)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["resumed"] is True
    a = [r["loss"] for r in read_jsonl(root / "two" / "train" / "steps.jsonl")]
    b = [r["loss"] for r in read_jsonl(root / "res" / "train" / "steps.jsonl")]
    np.testing.assert_allclose(b, a, rtol=1e-6)
    wa = (root / "two" / "model.safetensors").read_bytes()
    wb = (root / "res" / "model.safetensors").read_bytes()
    assert wa == wb


# The command, with a look at this process's threads just before ulmfit leaves the process
# group at exit and once more after (atexit runs the last registered first).
_EXIT_PROBE = """
import atexit, json, os, sys

def threads():
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return names

def write(when):
    with open(os.path.join(sys.argv[1], f"{when}.{os.environ['RANK']}.json"), "w") as f:
        json.dump(threads(), f)

if __name__ == "__main__":  # not again in the tokenizing workers (spawned)
    atexit.register(write, "after")  # first registered: runs after ulmfit's cleanup
    from ulmfit.cli import main
    rc = main(sys.argv[2:])
    atexit.register(write, "before")
    sys.exit(rc)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads threads from /proc")
def test_no_gloo_thread_outlives_the_interpreter(lm_runs):
    """gloo's threads end before the interpreter shuts down, on every rank. A worker thread
    still running then may release a finished collective's tensors (Python objects) and
    abort the process at exit ("terminate called without an active exception"), which made
    a run fail at random after its work was done."""
    root, _, _ = lm_runs
    probe = root / "exit_probe.py"
    probe.write_text(_EXIT_PROBE)
    seen = root / "threads"
    seen.mkdir()
    argv = _pretrain_argv(root, "exit", 2, 1)
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(probe), str(seen), *argv]
    done = subprocess.run(
        cmd, cwd=REPO, env=_env(root / "cache"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        before = json.loads((seen / f"before.{rank}.json").read_text())
        after = json.loads((seen / f"after.{rank}.json").read_text())
        assert [n for n in before if "gloo" in n], before  # the probe sees them while alive
        assert not [n for n in after if "gloo" in n], (rank, after)


# ---------------------------------------------------------------------------------------
# Classifier shards (no processes needed: every rank derives its shard alone)
# ---------------------------------------------------------------------------------------


def _corpus(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 30, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(2, 50, int(offsets[-1])).astype(np.uint16)
    return ids, offsets, rng.integers(0, 3, n)


@pytest.mark.parametrize("n", [1, 2, 7, 64, 65, 66, 67, 130, 257])
@pytest.mark.parametrize("world", [2, 3])
def test_validation_shards_cover_every_row_once(n, world):
    ids, offsets, y = _corpus(n)
    seen = []
    for r in range(world):
        loader = ClassifierLoader(ids, offsets, y, bs=8, train=False, rank=r, world_size=world)
        batches = list(loader)
        assert len(batches) == len(loader)
        seen += [int(i) for _, _, idx in batches for i in idx]
    assert sorted(seen) == list(range(n))


@pytest.mark.parametrize("n", [2, 3, 7, 64, 65, 66, 67, 130, 257])
@pytest.mark.parametrize("world", [2, 3])
def test_training_shards_cover_every_row_once_with_equal_steps(n, world):
    if n < world:
        pytest.skip("fewer documents than processes")
    ids, offsets, y = _corpus(n)
    for epoch in (0, 1):
        per_rank = []
        for r in range(world):
            loader = ClassifierLoader(ids, offsets, y, bs=8, rank=r, world_size=world, seed=3)
            loader.set_epoch(epoch)
            per_rank.append([idx.numpy() for _, _, idx in loader])
            assert len(per_rank[-1]) == len(loader)
        assert len({len(b) for b in per_rank}) == 1  # DDP: every rank takes the same steps
        assert all(len(b) > 0 for batches in per_rank for b in batches)
        seen = np.concatenate([b for batches in per_rank for b in batches])
        assert sorted(seen.tolist()) == list(range(n))


def test_training_shards_make_the_single_process_batch():
    """Step k's shards together are step k's batch of one process with bs * world."""
    ids, offsets, y = _corpus(96)
    one = ClassifierLoader(ids, offsets, y, bs=16, seed=5)
    one.set_epoch(2)
    shards = []
    for r in range(2):
        loader = ClassifierLoader(ids, offsets, y, bs=8, seed=5, rank=r, world_size=2)
        loader.set_epoch(2)
        shards.append(loader.batch_indices())
    for k, batch in enumerate(one.batch_indices()):
        np.testing.assert_array_equal(np.concatenate([shards[0][k], shards[1][k]]), batch)


def test_too_few_documents_for_the_processes():
    with pytest.raises(Exception, match="cannot be shared"):
        shard_batches([np.arange(2)], 0, 3, train=True)


def test_fit_with_two_processes(tmp_path):
    """The whole chain (LM fine-tuning, classifier with gradual unfreezing, test scoring) under
    torchrun with 2 gloo processes: one report, one set of files, and a re-run that reuses both
    cached stages. (Loss equality with one process is checked above, stage by stage.)"""
    if not TORCHRUN.exists():
        pytest.skip("torchrun not found next to the Python interpreter")
    from conftest import tiny_lms

    rows = trec_rows(160)
    seen = {r["label"] for r in rows[:120]}
    write_csv(tmp_path / "train.csv", rows[:120])
    test = [r for r in rows[120:] if r["label"] in seen]
    write_csv(tmp_path / "test.csv", test)
    tiny_lms(tmp_path, [r["text"] for r in rows[:120]])
    argv = [
        "fit",
        "--train", str(tmp_path / "train.csv"),
        "--test", str(tmp_path / "test.csv"),
        "--pretrained", str(tmp_path / "pre_fwd"),
        "--out", str(tmp_path / "run"),
        "--lm-epochs", "1", "--epochs", "1", "--bs", "8",
        "--workers", "1", "--device", "cpu", "--json",
    ]  # fmt: skip
    first = _run(tmp_path, argv, nproc=2)
    assert first.returncode == 0, first.stderr[-3000:]
    reports = [json.loads(x) for x in first.stdout.splitlines() if x.startswith("{")]
    assert len(reports) == 1  # rank 1 says nothing
    run = tmp_path / "run"
    assert (run / "model" / "model.safetensors").exists() and (run / "lm").is_dir()
    assert set(json.loads((run / "stages.json").read_text())) >= {"lm", "classifier"}
    assert json.loads((run / "report" / "test.json").read_text())["n"] == len(test)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no leftovers
    again = _run(tmp_path, argv, nproc=2)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = [json.loads(x) for x in again.stdout.splitlines() if x.startswith("{")]
    assert len(rerun) == 1
    assert rerun[0]["lm"]["reused"] and rerun[0]["classifier"]["reused"]
    assert rerun[0]["test"] == reports[0]["test"]
