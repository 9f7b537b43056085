"""The ULMFiT classifier: chunked sentence encoder, masked concat pooling, head, layer groups,
encoder loading, and a tiny end-to-end training run. Tiny models, a few seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ulmfit.config import CLASSIFIER_CONFIG, AWDLSTMConfig, TrainConfig
from ulmfit.errors import UserError
from ulmfit.loaders import ClassifierLoader
from ulmfit.models.awd_lstm import LanguageModel
from ulmfit.models.classifier import (
    PoolingLinearClassifier,
    SentenceEncoder,
    TextClassifier,
    load_encoder,
    masked_concat_pool,
)
from ulmfit.train import ClassifierTask, Learner
from ulmfit.train import optim as optim_mod

VOCAB = 30
PAD = 1
CFG = AWDLSTMConfig(emb_sz=8, n_hid=12, n_layers=3)


def tiny(n_out: int = 3, **kw) -> TextClassifier:
    torch.manual_seed(0)
    kw = {"cfg": CFG, "bptt": 5, "max_len": 20, **kw}
    return TextClassifier(VOCAB, n_out, **kw)


def pad_first(docs: list[list[int]], width: int | None = None) -> torch.Tensor:
    width = width or max(len(d) for d in docs)
    return torch.tensor([[PAD] * (width - len(d)) + d for d in docs])


def test_shapes_dropouts_and_head_structure():
    m = TextClassifier(VOCAB, 4, cfg=CFG, drop_mult=0.5)
    assert m.cfg.output_p == pytest.approx(0.05) and m.cfg.weight_p == pytest.approx(0.1)
    assert m.n_features == 24
    x = torch.randint(2, VOCAB, (6, 17))
    x[:2, :5] = PAD
    assert m(x).shape == (6, 4)
    out, mask = m.encoder(x)
    assert out.shape[:2] == mask.shape and out.shape[2] == 8
    assert masked_concat_pool(out, mask, 72).shape == (6, 24)
    # fastai defaults: 3*emb -> 50 -> n_out, dropouts [output_p * drop_mult, 0.1], no bias
    d = TextClassifier(VOCAB, 2, drop_mult=0.5)
    blocks = list(d.head.layers)
    assert [
        b[-1].in_features if isinstance(b[-1], nn.Linear) else b[-2].in_features for b in blocks
    ] == [1200, 50]
    assert [m_.p for b in blocks for m_ in b if isinstance(m_, nn.Dropout)] == pytest.approx(
        [CLASSIFIER_CONFIG.output_p * 0.5, 0.1]
    )
    assert isinstance(blocks[0][-1], nn.ReLU) and isinstance(blocks[1][-1], nn.Linear)
    assert blocks[1][-1].bias is None and blocks[0][0].bias[0].item() == pytest.approx(1e-3)
    with pytest.raises(ValueError):
        PoolingLinearClassifier([24, 2], [0.1, 0.1])


def test_pooling_ignores_pads():
    out = torch.randn(2, 6, 3)
    mask = torch.tensor([[True, True, False, False, False, False], [False] * 5 + [True]])
    pooled = masked_concat_pool(out, mask)
    torch.testing.assert_close(pooled[0, :3], out[0, 5])
    torch.testing.assert_close(pooled[0, 3:6], out[0, 2:].max(0).values)
    torch.testing.assert_close(pooled[0, 6:], out[0, 2:].mean(0))
    torch.testing.assert_close(pooled[1, :3], out[1, 4])  # last real token, pad after it
    torch.testing.assert_close(pooled[1, 6:], out[1, :5].mean(0))
    empty = masked_concat_pool(out[:1], torch.ones(1, 6, dtype=torch.bool))
    assert torch.equal(empty, torch.zeros(1, 9))


def test_doc_alone_or_padded_in_a_batch_gives_the_same_features():
    m = tiny().eval()
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(2, VOCAB, (n,), generator=g).tolist() for n in (3, 7, 12, 26, 1)]
    batch = pad_first(docs, width=31)  # extra padding too
    with torch.no_grad():
        together = m.features(batch)
        logits = m(batch)
        for i, d in enumerate(docs):
            alone = m.features(torch.tensor([d]))
            torch.testing.assert_close(together[i], alone[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(logits[i], m(torch.tensor([d]))[0], rtol=1e-5, atol=1e-6)
        # pad-last batches give the same features as pad-first ones
        last = torch.tensor([d + [PAD] * (31 - len(d)) for d in docs])
        torch.testing.assert_close(m.features(last), together)


def test_long_input_keeps_last_chunks_and_their_gradients_only():
    torch.manual_seed(0)
    enc_model = TextClassifier(VOCAB + 20, 2, cfg=CFG, bptt=72, max_len=144)
    enc = enc_model.encoder
    x = torch.randint(2, VOCAB, (2, 300))
    x[:, 216:] = torch.randint(VOCAB, VOCAB + 20, (2, 84))  # these tokens only in kept chunks
    x[:, 0] = 3
    x[:, 216] = 3  # token 3 in both parts
    enc.eval()
    out, mask = enc(x)
    # 300 = 4*72 + 12: as fastai (`i > sl - max_len`), the chunks at 216 and 288 are kept
    assert out.shape[1] == 84 and mask.shape == (2, 84)
    assert not mask.any()
    enc.module.reset()
    whole, _ = enc.module(x)
    torch.testing.assert_close(out[:, :84], whole[:, 216:], rtol=1e-5, atol=1e-6)
    # only the last max_len tokens get gradients (train mode: dropout and all)
    enc_model.train()
    enc_model(x).sum().backward()
    grad = enc.module.encoder.weight.grad
    early_only = set(x[:, :216].flatten().tolist()) - set(x[:, 216:].flatten().tolist())
    assert early_only and all(grad[t].abs().sum() == 0 for t in early_only)
    assert grad[3].abs().sum() > 0
    assert all(grad[t].abs().sum() > 0 for t in set(x[:, 216:].flatten().tolist()))
    with pytest.raises(ValueError):
        SentenceEncoder(enc.module, bptt=72, max_len=50)


def test_layer_groups_cover_every_parameter_once_and_freeze_to():
    m = tiny()
    groups = m.layer_groups()
    assert len(groups) == 5
    params = optim_mod.param_groups(groups, m)  # raises if a parameter is in no group
    flat = [id(p) for g in params for p in g]
    assert len(flat) == len(set(flat)) == len(list(m.parameters()))
    assert params[0] == [m.encoder.module.encoder.weight]
    assert all(any(p is q for q in m.head.parameters()) for p in params[-1])
    for n, first_trained in [(-1, 4), (-2, 3), (-3, 2), (0, 0)]:
        optim_mod.freeze_to(params, n)
        assert [all(p.requires_grad for p in g) for g in params] == [
            i >= first_trained for i in range(5)
        ]
        m.zero_grad()
        m(torch.randint(2, VOCAB, (4, 9))).sum().backward()
        assert [all(p.grad is not None for p in g) for g in params] == [
            i >= first_trained for i in range(5)
        ]


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class 1 iff token 5 appears somewhere in the doc (lengths 4..30)."""
    rng = np.random.default_rng(seed)
    docs, labels = [], []
    for _ in range(n):
        doc = rng.integers(6, VOCAB, rng.integers(4, 31))
        y = int(rng.integers(2))
        if y:
            doc[rng.integers(len(doc))] = 5
        docs.append(doc)
        labels.append(y)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    return np.concatenate(docs).astype(np.int64), offsets, np.array(labels)


def test_tiny_classifier_learns_a_separable_task(tmp_path):
    torch.manual_seed(0)
    m = TextClassifier(
        VOCAB,
        2,
        cfg=AWDLSTMConfig(emb_sz=16, n_hid=32, n_layers=2),
        drop_mult=0.1,
        bptt=8,
        max_len=40,
    )
    ids, off, y = synthetic(384, 0)
    vids, voff, vy = synthetic(128, 1)
    train = ClassifierLoader(ids, off, y, bs=32, seed=0)
    valid = ClassifierLoader(vids, voff, vy, bs=64, train=False)
    cfg = TrainConfig(progress=False, verbose=False, plot=False, device="cpu")
    learner = Learner(m, train, valid, ClassifierTask(), out_dir=tmp_path, config=cfg)
    learner.fit_one_cycle(6, 2e-2)
    assert learner.history[-1]["accuracy"] >= 0.9, learner.history


def test_load_encoder_copies_lm_weights():
    torch.manual_seed(1)
    lm = LanguageModel(VOCAB, CFG)
    clf = tiny()
    load_encoder(clf, lm.state_dict())
    a, b = lm.encoder.state_dict(), clf.encoder.module.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert clf.encoder.module.encoder_dp.emb.weight is clf.encoder.module.encoder.weight
    # the stored form (no word-dropout alias, no decoder) and a module work too
    clf2 = tiny()
    stored = {k: v for k, v in lm.state_dict().items() if k != "encoder.encoder_dp.emb.weight"}
    load_encoder(clf2, stored)
    assert torch.equal(clf2.encoder.module.encoder.weight, lm.encoder.encoder.weight)
    load_encoder(tiny(), lm)
    with pytest.raises(UserError, match="vocabulary of 30 tokens but the classifier 31"):
        load_encoder(TextClassifier(VOCAB + 1, 2, cfg=CFG), lm.state_dict())
    with pytest.raises(UserError, match="shape"):
        load_encoder(TextClassifier(VOCAB, 2, cfg=AWDLSTMConfig(emb_sz=8, n_hid=10)), lm)
    with pytest.raises(UserError, match="missing"):
        load_encoder(
            TextClassifier(VOCAB, 2, cfg=AWDLSTMConfig(emb_sz=8, n_hid=12, n_layers=4)), lm
        )
    with pytest.raises(UserError, match="no encoder"):
        load_encoder(clf, {"decoder.decoder.weight": torch.zeros(3)})


def test_custom_head():
    head = nn.Sequential(nn.Linear(24, 7), nn.Tanh(), nn.Linear(7, 5))
    m = tiny(n_out=5, head=head)
    assert m.head is head and m.n_features == 24
    assert m(torch.randint(2, VOCAB, (3, 11))).shape == (3, 5)
    groups = optim_mod.param_groups(m.layer_groups(), m)
    assert [id(p) for p in groups[-1]] == [id(p) for p in head.parameters()]
