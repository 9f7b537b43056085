"""Our AWD-LSTM against the golden losses and logits fastai 2.8 computed for the same weights."""

import json
import pickle

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import DATA, FIXTURES, need

from ulmfit.config import AWDLSTMConfig
from ulmfit.errors import UserError
from ulmfit.models.awd_lstm import LanguageModel, ar_tar_loss
from ulmfit.models.pretrained import (
    from_fastai,
    load_fastai_lm,
    read_fastai_state,
    read_itos,
    remap_vocab,
)
from ulmfit.text.tokenize import Tokenizer

LM = FIXTURES / "fastai_lm"


def _cases():
    exp = json.loads(need(LM / "expected.json").read_text())
    itos = read_itos(LM / "itos.pkl")
    stoi = {t: i for i, t in enumerate(itos)}
    df = pd.read_csv(need(DATA / "imdb_sample" / "texts.csv"), keep_default_na=False)
    tok = Tokenizer()
    for case in exp["cases"]:
        ids = torch.tensor([[stoi.get(t, 0) for t in tok(df.text[case["row"]])]])
        assert ids.shape[1] == case["n_tokens"]
        yield case, ids


def _losses(model):
    model.eval()
    out = []
    for case, ids in _cases():
        model.reset()
        with torch.no_grad():
            logits = model(ids[:, :-1])[0]
        out.append((case, F.cross_entropy(logits, ids[0, 1:]).item(), logits[:3, :8]))
    return out


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_reproduces_fastai_losses_and_logits(layout):
    model = load_fastai_lm(need(LM / f"lm_{layout}.pth"))
    for case, loss, first in _losses(model):
        assert loss == pytest.approx(case["loss"], abs=1e-4)
        assert torch.allclose(first, torch.tensor(case["first_logits"]), atol=1e-4)


def test_a_wrong_gate_order_would_show():
    model = load_fastai_lm(need(LM / "lm_v2.pth"))
    for rnn in model.encoder.rnns:  # read the gates as (i, f, o, g) instead of (i, f, g, o)
        for p in rnn.lstm.parameters():
            h = p.shape[0] // 4
            p.data[2 * h :] = torch.cat([p.data[3 * h :], p.data[2 * h : 3 * h]])
    case, loss, _ = _losses(model)[0]
    assert abs(loss - case["loss"]) > 1e-2


def test_fp16_and_wrapped_state_dicts_load(tmp_path):
    state = read_fastai_state(need(LM / "lm_v1.pth"))
    path = tmp_path / "wrapped.pth"
    torch.save({"model": {k: v.half() for k, v in state.items()}}, path)
    model = load_fastai_lm(path)
    case, loss, _ = _losses(model)[0]
    assert loss == pytest.approx(case["loss"], abs=2e-2)  # fp16 rounding of the weights


def test_shared_pretrained_model_loads():
    path = need(SHARED_MODEL := FIXTURES.parent / "models" / "wiki30k_fwd" / "lstm_fwd.pth")
    model = load_fastai_lm(path)
    assert model.vocab_sz == 30008
    assert model.cfg.n_hid == 1152 and model.cfg.emb_sz == 400 and model.cfg.n_layers == 3
    assert len(read_itos(SHARED_MODEL.parent / "itos.pkl")) == 30008


def test_truncated_and_garbage_weights_are_clear_errors(tmp_path):
    data = need(LM / "lm_v2.pth").read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated.pth"):
        load_fastai_lm(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(UserError, match="cannot read"):
        load_fastai_lm(junk)
    with pytest.raises(UserError, match="not found"):
        load_fastai_lm(tmp_path / "missing.pth")


def test_v07_hidden_size_is_refused_against_1152(tmp_path):
    cfg = AWDLSTMConfig(emb_sz=16, n_hid=1150, n_layers=2)
    m = LanguageModel(50, cfg)
    sd = {"0.encoder.weight": m.encoder.encoder.weight.data}
    for i, r in enumerate(m.encoder.rnns):
        sd[f"0.rnns.{i}.weight_hh_l0_raw"] = r.lstm.weight_hh_l0.data
        for n in ("weight_ih_l0", "bias_ih_l0", "bias_hh_l0"):
            sd[f"0.rnns.{i}.module.{n}"] = getattr(r.lstm, n).data
    sd["1.decoder.bias"] = m.decoder.decoder.bias.data
    with pytest.raises(UserError, match="1150"):
        from_fastai(sd, "v07.pth", expect=AWDLSTMConfig(emb_sz=16, n_hid=1152, n_layers=2))
    bad = dict(sd)
    bad["0.rnns.0.module.bias_ih_l0"] = torch.zeros(7)
    with pytest.raises(UserError, match="shape"):
        from_fastai(bad, "bad.pth")


def test_itos_must_be_a_plain_list_of_str(tmp_path):
    good = tmp_path / "itos.pkl"
    good.write_bytes(pickle.dumps(["xxunk", "xxpad", "the"]))
    assert read_itos(good) == ["xxunk", "xxpad", "the"]
    ints = tmp_path / "ints.pkl"
    ints.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(UserError, match="list of str"):
        read_itos(ints)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UserError, match="refusing"):
        read_itos(evil)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_remap_copies_known_rows_and_averages_new_ones():
    emb = torch.arange(12.0).reshape(4, 3)
    state = {
        "encoder.encoder.weight": emb,
        "decoder.decoder.bias": torch.tensor([1.0, 2.0, 3.0, 6.0]),
    }
    new, report = remap_vocab(state, ["a", "b", "c", "d"], ["c", "zz", "a"])
    assert torch.equal(new["encoder.encoder.weight"][0], emb[2])
    assert torch.equal(new["encoder.encoder.weight"][1], emb.mean(0))
    assert torch.equal(new["encoder.encoder.weight"][2], emb[0])
    assert new["decoder.decoder.bias"].tolist() == [3.0, 3.0, 1.0]
    assert report.found == 2 and report.coverage == pytest.approx(2 / 3)


def test_dropouts_are_active_in_training_only_and_ar_tar():
    torch.manual_seed(0)
    model = LanguageModel(100, AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2))
    x = torch.randint(0, 100, (4, 12))
    model.train()
    a, b = model(x), (model.reset(), model(x))[1]
    assert not torch.allclose(a, b)  # different dropout masks
    model.eval()
    model.reset()
    c = model(x)
    model.reset()
    assert torch.allclose(c, model(x))
    assert ar_tar_loss(model.raw_out, model.out).item() > 0
    model.train()
    model.reset()
    loss = F.cross_entropy(model(x).flatten(0, 1), x.flatten()) + ar_tar_loss(
        model.raw_out, model.out
    )
    loss.backward()
    assert model.encoder.rnns[0].lstm.weight_hh_l0.grad is not None  # through the dropped copy


def test_embedding_dropout_equals_masking_the_matrix():
    from ulmfit.models.awd_lstm import EmbeddingDropout, _drop_mask

    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 6, padding_idx=1)
    words = torch.randint(0, 50, (4, 9))
    drop = EmbeddingDropout(emb, 0.3).train()
    torch.manual_seed(1)
    ours = drop(words)
    ours.sum().backward()
    grad = emb.weight.grad.clone()
    emb.weight.grad = None
    torch.manual_seed(1)
    mask = _drop_mask(emb.weight, (50,), 0.3)
    ref = F.embedding(words, emb.weight * mask.unsqueeze(1), 1)
    ref.sum().backward()
    assert (mask == 0).any() and torch.allclose(ours, ref)
    assert torch.allclose(grad, emb.weight.grad)


def test_drop_masks_drop_at_rate_p_and_rescale():
    """The masks behind every AWD-LSTM dropout: zero with probability p, else 1/(1-p), so the
    expected activation is unchanged; p=0 keeps all, p=1 drops all (no division by zero)."""
    from ulmfit.models.awd_lstm import _drop_mask

    torch.manual_seed(0)
    ref = torch.empty(0)
    mask = _drop_mask(ref, (400, 1000), 0.3)
    assert mask.shape == (400, 1000) and mask.dtype == torch.float32
    assert mask.unique().tolist() == [0.0, pytest.approx(1 / 0.7)]
    assert (mask == 0).float().mean().item() == pytest.approx(0.3, abs=0.005)
    assert mask.mean().item() == pytest.approx(1.0, abs=0.01)
    assert torch.equal(_drop_mask(ref, (5,), 0.0), torch.ones(5))
    assert torch.equal(_drop_mask(ref, (5,), 1.0), torch.zeros(5))
    assert _drop_mask(ref.bfloat16(), (3,), 0.5).dtype == torch.bfloat16


def test_weight_drop_masks_the_raw_matrix_and_its_gradient():
    """DropConnect: the LSTM runs with the masked hidden-to-hidden matrix, and the raw matrix's
    gradient is the masked one's gradient times the same mask."""
    from ulmfit.models.awd_lstm import WeightDropLSTM, _drop_mask

    torch.manual_seed(0)
    layer = WeightDropLSTM(4, 6, 0.5).train()
    x = torch.randn(2, 5, 4)
    state = (torch.zeros(1, 2, 6), torch.zeros(1, 2, 6))
    torch.manual_seed(7)
    out, _ = layer(x, state)
    out.sum().backward()
    grad = layer.lstm.weight_hh_l0.grad.clone()
    torch.manual_seed(7)
    mask = _drop_mask(layer.lstm.weight_hh_l0, layer.lstm.weight_hh_l0.shape, 0.5)
    dropped = (layer.lstm.weight_hh_l0.detach() * mask).requires_grad_()
    ref, _ = torch.func.functional_call(layer.lstm, {"weight_hh_l0": dropped}, (x, state))
    ref.sum().backward()
    assert (mask == 0).any() and torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(grad, dropped.grad * mask, atol=1e-6)
    layer.eval()  # no dropout at inference: the raw matrix
    assert torch.allclose(layer(x, state)[0], layer.lstm(x, state)[0])
