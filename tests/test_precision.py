"""Mixed precision (``--amp``): the choice per device and CPU, and bf16 through every path that
runs a model (LM and classifier training, lm-eval, predict, evaluate, explain, the server's
info), with weights, optimizer state and losses kept in fp32.

bf16 is asked for explicitly where a test needs it, so these run on any CPU (without bf16 units
PyTorch emulates it, slower but correct)."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import REPO  # noqa: F401  (conftest puts the repo on the path)
from test_predict import tiny_models
from test_train import make_lm_learner

from ulmfit.cli import main
from ulmfit.config import AWDLSTMConfig
from ulmfit.errors import UserError
from ulmfit.lm_eval import lm_eval
from ulmfit.models.awd_lstm import LanguageModel
from ulmfit.precision import cpu_bf16_flag, describe, resolve_precision
from ulmfit.predict import Predictor, predict_logits

X86 = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n\nprocessor\t: 1\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
YES, NO = (True, "this CPU has avx512_bf16"), (False, "this CPU has no bf16 units")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory)


# -- the choice ----------------------------------------------------------------------------


def test_cpu_flags_are_read_from_cpuinfo():
    assert cpu_bf16_flag(X86) == "avx512_bf16"
    assert cpu_bf16_flag(X86.replace("avx512_vnni", "amx_bf16 amx_tile")) == "amx_bf16"
    assert cpu_bf16_flag(ARM) == "bf16"
    assert cpu_bf16_flag(X86.replace("avx512_bf16", "avx512bw")) is None
    assert cpu_bf16_flag("") is None


def test_auto_takes_bf16_only_where_the_device_has_it():
    cpu_yes = resolve_precision("cpu", "auto", YES)
    assert cpu_yes.dtype == torch.bfloat16 and not cpu_yes.use_scaler
    assert cpu_yes.record() == {"amp": "auto", "precision": "bf16", "reason": f"auto: {YES[1]}"}
    assert resolve_precision("cpu", "auto", NO).dtype is None
    assert resolve_precision("cpu", "auto", NO).name == "fp32"
    assert resolve_precision("cuda", "auto", YES).dtype == torch.bfloat16
    fp16 = resolve_precision("cuda", "auto", NO)
    assert fp16.dtype == torch.float16 and fp16.use_scaler and fp16.name == "fp16"
    assert resolve_precision("mps", "auto").dtype is None


def test_explicit_modes():
    for bf16 in (YES, NO):
        assert resolve_precision("cpu", "off", bf16).dtype is None
        assert resolve_precision("cuda", "off", bf16).dtype is None
        assert resolve_precision("cpu", "bf16", bf16).dtype == torch.bfloat16
        assert resolve_precision("cuda", "fp16", bf16).use_scaler
    assert "slower than fp32" in resolve_precision("cpu", "bf16", NO).reason
    assert describe(resolve_precision("cpu", "off").record()) == "fp32 (--amp off)"


@pytest.mark.parametrize(
    "device, mode, words",
    [
        ("cpu", "fp16", "--amp fp16 is for GPUs"),
        ("mps", "bf16", "--amp bf16 on mps"),
        ("cpu", "fp8", "--amp must be one of auto, bf16, fp16, off"),
    ],
)
def test_refused_modes_say_why_in_one_line(device, mode, words):
    with pytest.raises(UserError, match=words) as e:
        resolve_precision(device, mode, YES)
    assert "\n" not in str(e.value)


# -- training ------------------------------------------------------------------------------


def test_lm_training_in_bf16_keeps_fp32_weights_and_state(tmp_path):
    learner = make_lm_learner(tmp_path, device="cpu", amp="bf16")
    assert learner.amp.dtype == torch.bfloat16 and not learner.scaler.is_enabled()
    model = learner.model
    with learner._autocast():  # the weight-dropped LSTMs and the tied decoder run in bf16
        model.reset()
        assert model(torch.randint(0, model.vocab_sz, (2, 5))).dtype == torch.bfloat16
    learner.fit_one_cycle(3, 3e-2)
    hist = learner.history
    assert all(math.isfinite(h["train_loss"]) for h in hist)
    assert hist[-1]["valid_loss"] < hist[0]["valid_loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    raw = model.encoder.rnns[0].lstm.weight_hh_l0  # DropConnect's raw weights get the gradient
    state = learner.opt.state[raw]
    assert state["exp_avg"].dtype == torch.float32 and state["exp_avg"].abs().sum() > 0


def test_bf16_and_fp32_training_agree(tmp_path):
    """Three epochs of the tiny LM: the validation loss in bf16 within 2% of fp32's."""
    losses = {}
    for mode in ("off", "bf16"):
        learner = make_lm_learner(tmp_path / mode, device="cpu", amp=mode)
        learner.fit_one_cycle(3, 3e-2)
        losses[mode] = learner.history[-1]["valid_loss"]
    assert abs(losses["bf16"] - losses["off"]) / losses["off"] < 0.02, losses


def test_lm_eval_in_bf16_is_close_and_recorded():
    torch.manual_seed(0)
    lm = LanguageModel(40, AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2))
    vocab = [f"w{i}" for i in range(40)]
    docs = [np.random.default_rng(k).integers(0, 40, 30) for k in range(6)]
    full = lm_eval(lm, vocab, docs, amp="off")
    half = lm_eval(lm, vocab, docs, amp="bf16")
    assert full["precision"]["precision"] == "fp32" and half["precision"]["precision"] == "bf16"
    assert abs(half["loss"] - full["loss"]) / full["loss"] < 0.02


def test_fit_records_its_precision(models):
    report = json.loads((models["single"] / "report" / "metrics.json").read_text())
    config = json.loads((models["single"] / "model" / "config.json").read_text())
    assert report["config"]["amp"] == "auto"
    expected = resolve_precision("cpu", "auto").record()
    assert report["precision"] == expected
    assert config["meta"]["precision"] == expected


# -- using the model -----------------------------------------------------------------------


def test_prediction_in_bf16_matches_fp32(models):
    full = Predictor.load(models["single"], device="cpu", amp="off")
    half = Predictor.load(models["single"], device="cpu", amp="bf16")
    assert half.info()["precision"]["precision"] == "bf16"
    texts = models["texts"]
    a = np.array([list(p["probabilities"].values()) for p in full.predict(texts)])
    b = np.array([list(p["probabilities"].values()) for p in half.predict(texts)])
    assert np.abs(a - b).max() < 0.05
    model = full.members[0][0]
    ids, offsets = full.member_ids(0, full.encode(texts[:4]))
    logits = predict_logits(model, _Docs(ids, offsets), bs=2, device="cpu", amp="bf16")
    assert logits.dtype == np.float32 and np.isfinite(logits).all()


class _Docs:
    """Token ids as predict_logits reads them (ids + offsets)."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray) -> None:
        self.ids, self.offsets = ids, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1


def test_explain_in_bf16(models):
    half = Predictor.load(models["single"], device="cpu", amp="bf16")
    out = half.explain(models["texts"][0])
    w = np.asarray(out["weights"])
    assert np.isfinite(w).all() and w.max() == pytest.approx(1.0) and w.min() >= 0


def test_commands_take_amp_and_refuse_fp16_on_cpu(models, capsys):
    code = main(["predict", str(models["single"]), "--text", "what is it ?", "--amp", "fp16"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("ulmfit: error: --amp fp16 is for GPUs")
    assert len(err.splitlines()) == 1
    code = main(["evaluate", str(models["single"]), models["test"], "--amp", "off", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["precision"]["precision"] == "fp32"


def test_classifier_training_step_in_bf16():
    """BPT3C chunks (bptt 4 over 11 tokens), masked pooling over padding, the BatchNorm head and
    AR/TAR: a training step under bf16 autocast gives a finite fp32 loss and fp32 gradients."""
    from ulmfit.models.classifier import TextClassifier
    from ulmfit.train.tasks import ClassifierTask

    torch.manual_seed(0)
    cfg = AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2)
    model = TextClassifier(50, 3, cfg=cfg, bptt=4, max_len=8).train()
    x = torch.randint(2, 50, (4, 11))
    x[0, :5] = 1  # a shorter document, padded at the front as the loader pads
    y = torch.tensor([0, 1, 2, 1])
    task = ClassifierTask(alpha=2.0, beta=1.0)
    with resolve_precision("cpu", "bf16").autocast("cpu"):
        out = task.train_step(model, (x, y))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss.detach())
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("command", ["finetune-lm", "fit"])
def test_training_refuses_fp16_on_cpu_before_any_work(tmp_path, capsys, command):
    from conftest import tiny_lms, trec_rows, write_csv

    rows = trec_rows(20)
    tiny_lms(tmp_path, [r["text"] for r in rows])
    train = write_csv(tmp_path / "train.csv", rows)
    data = [train] if command == "finetune-lm" else ["--train", train]
    argv = [command, *data, "--pretrained", str(tmp_path / "pre_fwd"), "--out", str(tmp_path / "o")]
    code = main([*argv, "--device", "cpu", "--amp", "fp16", "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("ulmfit: error: --amp fp16 is for GPUs"), err
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()
