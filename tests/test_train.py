"""Training engine: schedules, discriminative rates, freezing, the fit loop, logs,
checkpoints, resume after SIGKILL, lr_find, AMP plumbing. Tiny models, a few seconds."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ulmfit.config import AWDLSTMConfig, TrainConfig
from ulmfit.errors import UserError
from ulmfit.loaders import ClassifierLoader, LMLoader
from ulmfit.models.awd_lstm import LanguageModel
from ulmfit.train import (
    ClassifierTask,
    Learner,
    LMTask,
    Schedule,
    discriminative_lrs,
    one_cycle,
    read_jsonl,
    stlr,
    ulmfit_lrs,
)
from ulmfit.train import optim as optim_mod
from ulmfit.train.lr_find import lr_find, steepest, valley

TESTS = Path(__file__).resolve().parent
VOCAB = 50
EPOCHS = 3


@pytest.fixture(autouse=True)
def one_thread():
    """Same thread count as the subprocess in the resume test, so sums reduce identically."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- helpers (also imported by the subprocess of the resume test) ----------------------------


def corpus(reps: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A perfectly repetitive stream 2, 3, ..., 49, 2, 3, ...: the next token is predictable."""
    ids = np.tile(np.arange(2, VOCAB), reps).astype(np.int64)
    return ids, np.array([0, len(ids)], dtype=np.int64)


def make_lm_learner(out_dir, task=None, **config) -> Learner:
    torch.manual_seed(0)
    cfg = AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2).scaled(0.2)
    model = LanguageModel(VOCAB, cfg)
    ids, off = corpus()
    train = LMLoader(ids, off, bs=8, bptt=10, shuffle=True, seed=1)
    valid = LMLoader(ids[:480], np.array([0, 480]), bs=4, bptt=10)
    config = {"progress": False, "verbose": False, "plot": False, **config}
    return Learner(
        model, train, valid, task or LMTask(), out_dir=out_dir, config=TrainConfig(**config)
    )


class KillSwitchTask(LMTask):
    """LMTask that, at training step ``at``, drops a marker file and hangs (to be SIGKILLed)."""

    def __init__(self, marker: str, at: int) -> None:
        super().__init__()
        self.marker, self.at, self.calls = marker, at, 0

    def train_step(self, model, batch):
        self.calls += 1
        if self.calls == self.at:
            Path(self.marker).write_text("mid-epoch")
            time.sleep(120)
        return super().train_step(model, batch)


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- schedules -------------------------------------------------------------------------------


def test_one_cycle_shape():
    total = 1000
    assert one_cycle(0, total) == pytest.approx((1 / 25, 0.8))
    assert one_cycle(250, total) == pytest.approx((1.0, 0.7))  # peak at pct_start = 0.25
    assert one_cycle(total, total) == pytest.approx((1e-5, 0.8))
    vals = [one_cycle(s, total) for s in range(total + 1)]
    lrs, moms = [v[0] for v in vals], [v[1] for v in vals]
    assert all(a < b for a, b in zip(lrs[:250], lrs[1:251]))  # warm-up rises
    assert all(a > b for a, b in zip(lrs[250:-1], lrs[251:]))  # then anneals
    assert min(moms) == pytest.approx(0.7) and max(moms) == pytest.approx(0.8)
    assert moms[125] == pytest.approx(0.75)  # cosine half-way
    # custom settings
    lr, mom = one_cycle(0, 10, div=10, pct_start=0.5, moms=(0.95, 0.85, 0.95))
    assert (lr, mom) == pytest.approx((0.1, 0.95))
    assert one_cycle(5, 10, pct_start=0.5, moms=(0.95, 0.85, 0.95)) == pytest.approx((1.0, 0.85))
    with pytest.raises(ValueError):
        one_cycle(11, 10)


def test_stlr_shape():
    total = 1000
    assert stlr(0, total) == pytest.approx((1 / 32, 0.7))
    assert stlr(100, total)[0] == pytest.approx(1.0)  # peak at cut_frac = 0.1
    assert stlr(50, total)[0] == pytest.approx((1 + 0.5 * 31) / 32)  # linear rise
    assert stlr(total, total)[0] == pytest.approx(1 / 32)
    assert stlr(550, total)[0] == pytest.approx((1 + 0.5 * 31) / 32)  # linear decay
    assert {stlr(s, total)[1] for s in range(0, total, 37)} == {0.7}
    assert Schedule("stlr", moms=(0.8, 0.75, 0.8))(3, 10)[1] == 0.75
    with pytest.raises(ValueError):
        Schedule("cosine")


def test_config_defaults_agree_with_module_defaults():
    """TrainConfig is the visible place for defaults; the lower modules repeat them."""
    c, s = TrainConfig(), Schedule()
    for f in fields(Schedule):
        if f.name != "name":
            assert getattr(c, f.name) == getattr(s, f.name), f.name
    assert (c.moms[0], c.beta2, c.eps, c.wd) == (
        optim_mod.BETA1,
        optim_mod.BETA2,
        optim_mod.EPS,
        optim_mod.WD,
    )


# -- discriminative learning rates, parameter groups, freezing ------------------------------


def test_discriminative_lrs():
    assert discriminative_lrs(1e-3, 3) == [1e-3] * 3
    assert discriminative_lrs(slice(1e-4, 1e-2), 3) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert discriminative_lrs(slice(1e-2), 3) == pytest.approx([1e-3, 1e-3, 1e-2])
    assert discriminative_lrs([1, 2], 2) == [1.0, 2.0]
    lrs = discriminative_lrs(ulmfit_lrs(0.01, 4), 4)
    assert lrs[-1] == pytest.approx(0.01)
    assert [b / a for a, b in zip(lrs, lrs[1:])] == pytest.approx([2.6] * 3)
    with pytest.raises(ValueError):
        discriminative_lrs([1, 2], 3)


def test_optimizer_is_fused_where_available_and_updates_like_default_adamw():
    """make_optimizer picks the fused kernel (CPU on PyTorch >= 2.4) for speed; it must take the
    same steps as the plain AdamW with fastai's hyper-parameters, empty groups included."""
    torch.manual_seed(0)
    a, b = nn.Linear(6, 5), nn.Linear(6, 5)
    b.load_state_dict(a.state_dict())
    start = a.weight.detach().clone()
    fused = optim_mod.make_optimizer([[a.weight], [], [a.bias]])
    plain = torch.optim.AdamW(
        [{"params": [b.weight]}, {"params": []}, {"params": [b.bias]}],
        lr=0.0,
        betas=(optim_mod.BETA1, optim_mod.BETA2),
        eps=optim_mod.EPS,
        weight_decay=optim_mod.WD,
    )
    assert fused.defaults.get("fused") is True  # torch in our requirements has the CPU kernel
    for step in range(5):
        x = torch.randn(4, 6)
        for m, opt in ((a, fused), (b, plain)):
            optim_mod.set_hypers(opt, [1e-2 * (step + 1), 0.0, 3e-3], beta1=0.8 - 0.02 * step)
            opt.zero_grad()
            m(x).pow(2).sum().backward()
            opt.step()
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.bias, b.bias, rtol=1e-5, atol=1e-6)
    assert (a.weight - start).abs().min() > 1e-3  # every entry moved: the steps were real


def test_tied_weights_appear_once(tmp_path):
    model = LanguageModel(VOCAB, AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2))
    assert model.decoder.decoder.weight is model.encoder.encoder.weight
    groups = optim_mod.param_groups(model.layer_groups(), model)
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert len(groups) == 3
    assert any(p is model.encoder.encoder.weight for p in groups[-1])
    learner = make_lm_learner(tmp_path)
    opt_ids = [id(p) for g in learner.opt.param_groups for p in g["params"]]
    assert len(opt_ids) == len(set(opt_ids)) == len(list(learner.model.parameters()))
    g = learner.opt.param_groups[0]
    assert (g["betas"], g["eps"], g["weight_decay"]) == ((0.8, 0.99), 1e-5, 0.01)
    with pytest.raises(ValueError, match="no layer group"):
        optim_mod.param_groups([[model.encoder.rnns[0]]], model)


@pytest.mark.parametrize(
    ("action", "trained"),
    [
        ("freeze", [False, False, True]),
        ("freeze_to(-2)", [False, True, True]),
        ("freeze_to(1)", [False, True, True]),
        ("unfreeze", [True, True, True]),
    ],
)
def test_freezing_controls_which_params_change(tmp_path, action, trained):
    learner = make_lm_learner(tmp_path)
    learner.freeze()  # start frozen so that unfreeze has something to undo
    if action.startswith("freeze_to"):
        learner.freeze_to(int(action[len("freeze_to(") : -1]))
    else:
        getattr(learner, action)()
    before = [[p.detach().clone() for p in g] for g in learner.groups]
    learner.fit_one_cycle(1, 1e-2)
    for i, (group, old) in enumerate(zip(learner.groups, before)):
        changed = [not torch.equal(p, o) for p, o in zip(group, old)]
        assert all(changed) if trained[i] else not any(changed), (action, i, changed)
        assert all(p.requires_grad == trained[i] for p in group)
    assert learner.frozen_idx == trained.index(True)


# -- the fit loop ----------------------------------------------------------------------------


def test_lm_learns_and_writes_logs_plot_checkpoint(tmp_path, capsys):
    learner = make_lm_learner(tmp_path, plot=True, verbose=True)
    learner.fit_one_cycle(5, 3e-2)
    summary = capsys.readouterr().err.splitlines()
    assert summary[0].startswith("training in ")  # the precision and why
    assert len(summary) == 6 and summary[-1].startswith("epoch 5/5  train_loss ")
    assert "valid_loss" in summary[-1] and "perplexity" in summary[-1]
    hist = learner.history
    assert [h["epoch"] for h in hist] == list(range(5))
    assert hist[0]["train_loss"] == pytest.approx(math.log(VOCAB), abs=0.1)
    assert hist[-1]["valid_loss"] < hist[0]["valid_loss"] - 0.5
    assert hist[-1]["perplexity"] == pytest.approx(math.exp(hist[-1]["valid_loss"]))
    assert 0.0 <= hist[-1]["accuracy"] <= 1.0

    assert read_jsonl(tmp_path / "metrics.jsonl") == hist
    steps = read_jsonl(tmp_path / "steps.jsonl")
    n = len(learner.train_loader)
    assert [s["global_step"] for s in steps] == list(range(1, 5 * n + 1))
    # the logged schedule is the one-cycle schedule with moms (0.8, 0.7, 0.8)
    assert steps[0]["lr"] == pytest.approx(3e-2 / 25) and steps[0]["mom"] == pytest.approx(0.8)
    assert max(s["lr"] for s in steps) == pytest.approx(3e-2, rel=1e-2)
    assert all(s["grad_norm"] >= 0 for s in steps)
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (ckpt["stage"], ckpt["stage_epoch"], ckpt["epoch"]) == (0, 5, 5)
    assert ckpt["global_step"] == 5 * n
    assert ckpt["plan"]["schedule"]["moms"] == [0.8, 0.7, 0.8]
    assert ckpt["frozen_idx"] == 0
    assert set(ckpt) >= {"model", "optimizer", "scaler", "rng", "config"}
    for k, v in learner.model.state_dict().items():
        assert torch.equal(ckpt["model"][k], v)
    assert not list(tmp_path.glob(".*tmp*"))  # no temp files left behind


def test_stlr_schedule_and_discriminative_groups_in_optimizer(tmp_path):
    learner = make_lm_learner(tmp_path)
    learner.fit_one_cycle(1, ulmfit_lrs(1e-2, 3), schedule="stlr")
    n = len(learner.train_loader)
    steps = read_jsonl(tmp_path / "steps.jsonl")
    assert steps[0]["lr"] == pytest.approx(1e-2 / 32)
    mult, _ = stlr(n - 1, n)
    lrs = [g["lr"] for g in learner.opt.param_groups]
    assert lrs == pytest.approx([1e-2 * mult / 2.6**2, 1e-2 * mult / 2.6, 1e-2 * mult])
    assert {g["betas"][0] for g in learner.opt.param_groups} == {0.7}


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    run, ref = tmp_path / "run", tmp_path / "ref"
    marker = tmp_path / "marker"
    n = len(make_lm_learner(tmp_path / "probe").train_loader)
    at = n + n // 2  # a step in the middle of the second epoch
    child = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(TESTS)!r})
        from test_train import make_lm_learner, KillSwitchTask
        torch.set_num_threads(1)
        task = KillSwitchTask({str(marker)!r}, at={at})
        make_lm_learner({str(run)!r}, task=task).fit_one_cycle({EPOCHS}, 3e-2)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and (run / "checkpoint.pt").exists()):
            if proc.poll() is not None:
                pytest.fail(f"child exited early: {proc.stderr.read().decode()}")
            assert time.monotonic() < deadline, "child never reached the kill point"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["stage_epoch"] == 1  # killed in epoch 2: the checkpoint is epoch 1's
    assert len(read_jsonl(run / "steps.jsonl")) > n  # partial epoch logged before the kill

    resumed = make_lm_learner(run).fit_one_cycle(EPOCHS, 3e-2, resume=True)
    uninterrupted = make_lm_learner(ref).fit_one_cycle(EPOCHS, 3e-2)

    a, b = params(resumed.model), params(uninterrupted.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    ha, hb = resumed.history, uninterrupted.history
    assert [h["epoch"] for h in ha] == list(range(EPOCHS))
    for x, y in zip(ha, hb):
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-6)
        assert x["valid_loss"] == pytest.approx(y["valid_loss"], abs=1e-6)
    steps_a, steps_b = read_jsonl(run / "steps.jsonl"), read_jsonl(ref / "steps.jsonl")
    assert [s["global_step"] for s in steps_a] == list(range(1, EPOCHS * n + 1))
    for x, y in zip(steps_a, steps_b):  # same lr / mom at every step, same losses
        assert (x["lr"], x["mom"]) == pytest.approx((y["lr"], y["mom"]))
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
    assert read_jsonl(run / "metrics.jsonl") == ha


def test_resume_skips_finished_stages_and_checks_settings(tmp_path):
    def script(learner: Learner, resume: bool) -> Learner:
        learner.freeze()
        learner.fit_one_cycle(1, 1e-2, resume=resume)
        learner.unfreeze()
        learner.fit_one_cycle(1, slice(1e-3, 1e-2), resume=resume)
        return learner

    done = script(make_lm_learner(tmp_path), resume=False)
    again = script(make_lm_learner(tmp_path), resume=True)  # nothing left to train
    a, b = params(done.model), params(again.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.epoch == 2 and len(again.history) == 2
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 2

    other = make_lm_learner(tmp_path)
    other.freeze()
    other.fit_one_cycle(1, 1e-2, resume=True)  # skipped: stage 0 is finished
    with pytest.raises(UserError, match="cannot resume"):
        other.fit_one_cycle(1, 5e-3, resume=True)  # stage 1 ran with other settings


def test_classifier_task_on_classifier_loader(tmp_path):
    """(x, y, idx) batches: a bag-of-words model learns whether token 3 occurs."""
    rng = np.random.default_rng(0)
    docs = [rng.integers(4, 20, size=rng.integers(3, 12)) for _ in range(64)]
    labels = rng.integers(0, 2, size=64)
    for d, y in zip(docs, labels):
        if y:
            d[rng.integers(len(d))] = 3
    ids = np.concatenate(docs).astype(np.int64)
    off = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    train = ClassifierLoader(ids, off, labels, bs=16, train=True)
    valid = ClassifierLoader(ids, off, labels, bs=16, train=False)

    class BagOfWords(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.EmbeddingBag(20, 8, mode="max", padding_idx=1)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.emb(x))

        def layer_groups(self):
            return [[self.emb], [self.head]]

    torch.manual_seed(0)
    cfg = TrainConfig(progress=True, verbose=False, plot=False, clip=None)  # tqdm path too
    learner = Learner(BagOfWords(), train, valid, ClassifierTask(), out_dir=tmp_path, config=cfg)
    learner.fit_one_cycle(8, 5e-2)
    hist = learner.history
    assert hist[-1]["valid_loss"] < hist[0]["valid_loss"]
    assert hist[-1]["accuracy"] > 0.8
    assert "grad_norm" not in read_jsonl(tmp_path / "steps.jsonl")[0]  # clip=None: no clipping


# -- lr_find -------------------------------------------------------------------------------


def test_lr_find_suggests_and_restores(tmp_path):
    learner = make_lm_learner(tmp_path)
    learner.fit_one_cycle(1, 1e-2)  # non-empty optimizer state to restore
    before = params(learner.model)
    opt_before = {
        k: {n: v.clone() for n, v in s.items()}
        for k, s in learner.opt.state_dict()["state"].items()
    }
    rng_before = torch.get_rng_state()
    res = lr_find(learner, num_it=40)
    assert 1e-7 <= res.suggestion <= 10 and math.isfinite(res.suggestion)
    assert math.isfinite(res.steep) and math.isfinite(res.minimum)
    assert len(res.lrs) == len(res.losses) == len(res.raw_losses) <= 40
    assert res.lrs[0] == pytest.approx(1e-7)
    assert all(b > a for a, b in zip(res.lrs, res.lrs[1:]))
    after = params(learner.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    for k, s in learner.opt.state_dict()["state"].items():
        assert all(torch.equal(v, opt_before[k][n]) for n, v in s.items())
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert res.plot == tmp_path / "lr_find.png"
    assert res.plot.read_bytes()[:4] == b"\x89PNG"


def test_lr_find_stops_when_loss_diverges(tmp_path):
    learner = make_lm_learner(tmp_path, clip=None)
    res = lr_find(learner, start_lr=1e-3, end_lr=1e4, num_it=100, plot=False)
    assert len(res.lrs) < 100 and res.plot is None
    assert res.losses[-1] > 4 * min(res.losses) or not math.isfinite(res.losses[-1])


def test_suggestion_rules():
    lrs = np.logspace(-6, 0, 30)
    losses = np.concatenate([np.full(5, 3.0), np.linspace(3.0, 1.0, 20), np.linspace(1.2, 5, 5)])
    i = valley(lrs, losses)
    assert 5 <= i < 25  # inside the falling stretch
    assert 4 <= steepest(lrs, losses) < 25
    assert valley(lrs[:3], np.array([1.0, 2.0, 3.0])) == 0  # no valley: stays in range


# -- mixed precision -------------------------------------------------------------------------


def test_amp_code_path_runs_on_cpu(tmp_path):
    """Autocast + GradScaler (scale, unscale for clipping, step, update) on a tiny linear model:
    bf16 autocast on the CPU, and the GradScaler that only fp16 on CUDA gets, forced on."""
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    batches = [(x[i : i + 16], y[i : i + 16], torch.arange(i, i + 16)) for i in range(0, 64, 16)]

    class Batches(list):
        def set_epoch(self, epoch: int) -> None:
            pass

    loader = Batches(batches)
    cfg = TrainConfig(progress=False, verbose=False, plot=False, device="cpu", amp="bf16")
    torch.manual_seed(0)
    learner = Learner(
        nn.Linear(4, 2), loader, loader, ClassifierTask(), out_dir=tmp_path, config=cfg
    )
    assert learner.amp.dtype == torch.bfloat16 and not learner.scaler.is_enabled()
    learner.scaler = torch.amp.GradScaler("cpu", enabled=True)
    learner.fit_one_cycle(2, 1e-1)
    assert all(math.isfinite(h["train_loss"]) for h in learner.history)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["scaler"]["scale"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_amp_on_cuda(tmp_path, mode):
    learner = make_lm_learner(tmp_path, device="cuda", amp=mode)
    assert learner.amp.dtype == (torch.bfloat16 if mode == "bf16" else torch.float16)
    assert learner.scaler.is_enabled() == (mode == "fp16")
    learner.fit_one_cycle(3, 3e-2)
    hist = learner.history
    assert all(math.isfinite(h["train_loss"]) for h in hist)
    assert hist[-1]["valid_loss"] < hist[0]["valid_loss"]


# -- GPU path: asynchronous batch transfer, torch.compile -----------------------------------


def test_device_batches_on_cpu_moves_each_batch_as_reached():
    from ulmfit.train.prefetch import device_batches

    pulled = []

    def batches():
        for k in range(3):
            pulled.append(k)
            yield (torch.full((2, 3), k), [torch.tensor([k])], "meta")

    out = []
    for b in device_batches(batches(), torch.device("cpu")):
        out.append(b)
        assert len(pulled) == len(out)  # CPU: no read-ahead
    assert [int(b[0][0, 0]) for b in out] == [0, 1, 2]
    assert isinstance(out[0][1], list) and out[0][2] == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_batches_on_cuda_prefetches_pinned_copies():
    from ulmfit.train.prefetch import device_batches

    src = [(torch.arange(k, k + 1000), torch.full((4,), k)) for k in range(5)]
    got = []
    for x, y in device_batches(iter(src), torch.device("cuda")):
        assert x.is_cuda and y.is_cuda
        got.append((x.cpu(), y.cpu()))
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got, src))
    assert list(device_batches(iter([]), torch.device("cuda"))) == []


def test_compiled_training_matches_eager(tmp_path, monkeypatch):
    """``compile=True`` trains through torch.compile (a real compilation, on the CPU here)
    and lands on the losses of eager training: same model, same data, same seeds."""
    eager = make_lm_learner(tmp_path / "eager", device="cpu", clip=0.1)
    eager.fit_one_cycle(1, 3e-2)
    from torch._dynamo.utils import counters

    counters.clear()
    # the same random masks as eager (inductor otherwise draws its own, in fused kernels)
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    compiled = make_lm_learner(tmp_path / "compiled", device="cpu", clip=0.1, compile=True)
    assert isinstance(compiled._net()._wrapper, torch._dynamo.eval_frame.OptimizedModule)
    compiled.fit_one_cycle(1, 3e-2)
    assert counters["stats"]["unique_graphs"] > 0  # something was compiled, not only eager
    for a, b in zip(eager.history, compiled.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], rel=1e-4)
