import numpy as np
import pytest
import torch

from ulmfit import loaders as loaders_mod
from ulmfit.errors import UserError
from ulmfit.loaders import (
    ClassifierLoader,
    LMLoader,
    SortedSampler,
    SortishSampler,
    pad_batch,
    restore_order,
)

BOS, PAD = 2, 1


def make_corpus(n_docs=50, lo=1, hi=40, seed=0, dtype=np.uint16):
    """Docs of random length; each starts with xxbos and holds globally unique token values
    (after the bos) so any misplaced token is detectable."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(lo, hi, size=n_docs)
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lens)
    ids = np.arange(offsets[-1], dtype=np.int64) % 60000 + 10
    ids[offsets[:-1]] = BOS
    return ids.astype(dtype), offsets


def docs_of(ids, offsets):
    return [ids[offsets[i] : offsets[i + 1]].astype(np.int64) for i in range(len(offsets) - 1)]


def rows_from_batches(loader):
    xs, ys = zip(*list(loader), strict=True)
    return torch.cat(xs, dim=1).numpy(), torch.cat(ys, dim=1).numpy()


# ---------------------------------------------------------------- LM loader


@pytest.mark.parametrize("bs,bptt", [(4, 7), (3, 10), (1, 5), (8, 100)])
def test_lm_rows_reproduce_stream(bs, bptt):
    ids, offsets = make_corpus(60)
    dl = LMLoader(ids, offsets, bs=bs, bptt=bptt)
    stream = ids.astype(np.int64)
    L = len(stream)
    row_len = (L - 1) // bs
    assert dl.row_len == row_len
    assert len(dl) == -(-row_len // bptt)
    batches = list(dl)
    assert len(batches) == len(dl)
    for k, (x, y) in enumerate(batches):
        assert x.dtype == torch.int64 and y.dtype == torch.int64
        assert x.shape == y.shape
        assert x.shape[0] == bs
        assert x.shape[1] == (bptt if k < len(dl) - 1 else row_len - bptt * (len(dl) - 1))
    X, Y = rows_from_batches(dl)
    assert X.shape == (bs, row_len)  # bs streams of equal length
    for r in range(bs):
        np.testing.assert_array_equal(X[r], stream[r * row_len : (r + 1) * row_len])
        np.testing.assert_array_equal(Y[r], stream[r * row_len + 1 : (r + 1) * row_len + 1])
    # y is x shifted by one within each row
    np.testing.assert_array_equal(X[:, 1:], Y[:, :-1])


def test_lm_shuffle_deterministic_permutation_of_docs():
    ids, offsets = make_corpus(80)
    docs = docs_of(ids, offsets)
    kw = dict(bs=1, bptt=13, shuffle=True, seed=3)
    a, b = LMLoader(ids, offsets, **kw), LMLoader(ids, offsets, **kw)
    Xa, _ = rows_from_batches(a)
    Xb, _ = rows_from_batches(b)
    np.testing.assert_array_equal(Xa, Xb)  # same seed, same epoch
    # with bs=1 the row is the whole permuted stream minus the final token
    order = a.doc_order()
    assert sorted(order.tolist()) == list(range(len(docs)))
    assert order.tolist() != list(range(len(docs)))
    expected = np.concatenate([docs[i] for i in order])
    np.testing.assert_array_equal(Xa[0], expected[:-1])
    # multiset of tokens preserved
    assert np.array_equal(np.sort(expected), np.sort(ids.astype(np.int64)))
    # reproducible per epoch, different between epochs and seeds
    a.set_epoch(1)
    b.set_epoch(1)
    X1a, _ = rows_from_batches(a)
    np.testing.assert_array_equal(X1a, rows_from_batches(b)[0])
    assert not np.array_equal(X1a, Xa)
    a.set_epoch(0)
    np.testing.assert_array_equal(rows_from_batches(a)[0], Xa)
    c = LMLoader(ids, offsets, bs=1, bptt=13, shuffle=True, seed=4)
    assert not np.array_equal(rows_from_batches(c)[0], Xa)


@pytest.mark.parametrize("chunk", [None, 7])
def test_lm_shuffle_rows_and_targets_consistent(chunk, monkeypatch):
    """The shuffled stream is the documents in ``doc_order``; with ``chunk`` the cumulative
    lengths are built 7 documents at a time (as tens of millions are, 4M at a time)."""
    if chunk:
        monkeypatch.setattr(loaders_mod, "_CHUNK", chunk)
    ids, offsets = make_corpus(80)
    dl = LMLoader(ids, offsets, bs=5, bptt=9, shuffle=True, seed=1)
    dl.set_epoch(2)
    order = dl.doc_order()
    stream = np.concatenate([docs_of(ids, offsets)[i] for i in order])
    X, Y = rows_from_batches(dl)
    n = dl.row_len
    for r in range(5):
        np.testing.assert_array_equal(X[r], stream[r * n : (r + 1) * n])
        np.testing.assert_array_equal(Y[r], stream[r * n + 1 : (r + 1) * n + 1])


def test_lm_shuffle_with_empty_docs():
    ids, offsets = make_corpus(30)
    # insert empty docs by duplicating some offsets
    offsets = np.sort(np.concatenate([offsets, offsets[[3, 3, 10, 29]]]))
    dl = LMLoader(ids, offsets, bs=2, bptt=6, shuffle=True, seed=0)
    stream = np.concatenate([docs_of(ids, offsets)[i] for i in dl.doc_order()])
    X, _ = rows_from_batches(dl)
    n = dl.row_len
    for r in range(2):
        np.testing.assert_array_equal(X[r], stream[r * n : (r + 1) * n])


def test_lm_rank_slices():
    ids, offsets = make_corpus(200)
    ws, bs = 3, 2
    for shuffle in (False, True):
        kw = dict(bptt=8, shuffle=shuffle, seed=7)
        full = LMLoader(ids, offsets, bs=bs * ws, **kw)
        parts = [LMLoader(ids, offsets, bs=bs, rank=r, world_size=ws, **kw) for r in range(ws)]
        for p in parts:
            p.set_epoch(1)
        full.set_epoch(1)
        assert all(len(p) == len(full) for p in parts)
        for batches in zip(full, *parts, strict=True):
            (fx, fy), rest = batches[0], batches[1:]
            np.testing.assert_array_equal(torch.cat([x for x, _ in rest]), fx)
            np.testing.assert_array_equal(torch.cat([y for _, y in rest]), fy)
        # disjoint: token values are unique apart from xxbos, so no value may occur on two ranks
        seen = [set(rows_from_batches(p)[0].ravel().tolist()) - {BOS} for p in parts]
        for i in range(ws):
            for j in range(i + 1, ws):
                assert not seen[i] & seen[j]


def test_lm_memmap_and_too_small(tmp_path):
    ids, offsets = make_corpus(40)
    np.save(tmp_path / "ids.npy", ids)
    mm = np.load(tmp_path / "ids.npy", mmap_mode="r")
    assert mm.dtype == np.uint16
    a = rows_from_batches(LMLoader(mm, offsets, bs=4, bptt=9, shuffle=True))[0]
    b = rows_from_batches(LMLoader(ids, offsets, bs=4, bptt=9, shuffle=True))[0]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError):
        LMLoader(ids[:5], np.array([0, 5]), bs=8)


# ---------------------------------------------------------------- classification


def spread(batches, lengths):
    return np.mean([lengths[b].max() - lengths[b].min() for b in batches])


def test_sortish_sampler():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1000, size=1003)
    bs = 8
    s = SortishSampler(lengths, bs, seed=1, chunk_batches=10)
    batches = list(s)
    assert len(batches) == len(s) == -(-1003 // bs)
    allidx = np.concatenate(batches)
    assert sorted(allidx.tolist()) == list(range(1003))
    assert lengths[batches[0]].max() == lengths.max()  # longest batch first
    assert sum(len(b) < bs for b in batches) == 1  # only one short batch
    random_batches = np.array_split(rng.permutation(1003), len(batches))
    assert spread(batches, lengths) < 0.25 * spread(random_batches, lengths)
    # deterministic per seed/epoch, changes across epochs
    s2 = SortishSampler(lengths, bs, seed=1, chunk_batches=10)
    assert all(np.array_equal(a, b) for a, b in zip(batches, s2, strict=True))
    s2.set_epoch(1)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, s2, strict=True))
    s.set_epoch(1)
    s2b = list(s2)
    assert all(np.array_equal(a, b) for a, b in zip(s, s2b, strict=True))


def test_sorted_sampler():
    lengths = np.array([3, 9, 1, 9, 5, 7, 2])
    batches = list(SortedSampler(lengths, 3))
    flat = np.concatenate(batches)
    assert flat.tolist() == [1, 3, 5, 4, 0, 6, 2]
    assert np.all(np.diff(lengths[flat]) <= 0)
    assert [len(b) for b in batches] == [3, 3, 1]


def test_pad_batch_pad_first_and_last():
    ids = np.array([2, 10, 11, 2, 20, 2, 30, 31, 32], dtype=np.uint16)
    offsets = np.array([0, 3, 5, 9])
    x = pad_batch(ids, offsets, [2, 1, 0], pad_id=PAD, pad_first=True)
    assert x.dtype == torch.int64
    assert x.tolist() == [[2, 30, 31, 32], [1, 1, 2, 20], [1, 2, 10, 11]]
    x = pad_batch(ids, offsets, [1, 0], pad_id=PAD, pad_first=False)
    assert x.tolist() == [[2, 20, 1], [2, 10, 11]]
    x = pad_batch(ids, offsets, [2, 1], pad_id=PAD, max_len=2)
    assert x.tolist() == [[31, 32], [2, 20]]


@pytest.mark.parametrize("train", [True, False])
def test_classifier_loader_epoch(train):
    ids, offsets = make_corpus(230, hi=80)
    docs = docs_of(ids, offsets)
    labels = np.arange(230) % 3
    dl = ClassifierLoader(ids, offsets, labels, bs=16, train=train, seed=2)
    seen = []
    for x, y, idx in dl:
        assert x.dtype == torch.int64 and y.dtype == torch.int64 and idx.dtype == torch.int64
        assert x.shape[0] == len(idx) == len(y)
        np.testing.assert_array_equal(y.numpy(), labels[idx.numpy()])
        for row, i in zip(x.numpy(), idx.numpy(), strict=True):
            d = docs[i]
            np.testing.assert_array_equal(row[x.shape[1] - len(d) :], d)  # doc right-aligned
            assert np.all(row[: x.shape[1] - len(d)] == PAD)  # padding on the left
            assert row[-1] != PAD
        assert x.shape[1] == max(len(docs[i]) for i in idx.numpy())
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(230))  # each doc exactly once
    assert len(dl) == -(-230 // 16)
    if not train:
        lens = np.array([len(docs[i]) for i in seen])
        assert np.all(np.diff(lens) <= 0)  # eval sorted descending


def test_classifier_labels_dtypes_and_none():
    ids, offsets = make_corpus(20)
    multi = np.random.default_rng(0).integers(0, 2, size=(20, 4)).astype(bool)
    for labels, dtype, shape in [
        (multi, torch.float32, (4,)),
        (np.linspace(0, 1, 20), torch.float32, ()),
        (list(range(20)), torch.int64, ()),
    ]:
        for _x, y, idx in ClassifierLoader(ids, offsets, labels, bs=6):
            assert y.dtype == dtype and tuple(y.shape[1:]) == shape
            np.testing.assert_allclose(y.numpy(), np.asarray(labels, dtype=np.float64)[idx.numpy()])
    for _x, y, _idx in ClassifierLoader(ids, offsets, bs=6, train=False):
        assert y is None
    with pytest.raises(UserError):
        ClassifierLoader(ids, offsets, np.zeros(3))


def test_restore_order():
    ids, offsets = make_corpus(57)
    dl = ClassifierLoader(ids, offsets, bs=8, train=True, seed=9)
    # "model": predicts (last token of the doc, its own index), both checkable after reordering
    collected = [(idx, torch.stack([x[:, -1], idx], 1).float()) for x, _y, idx in dl]
    out = restore_order(collected, 57)
    assert isinstance(out, torch.Tensor) and out.shape == (57, 2)
    assert out[:, 1].tolist() == list(range(57))
    last = ids[offsets[1:] - 1].astype(np.float32)
    np.testing.assert_array_equal(out[:, 0].numpy(), last)
    # numpy in, numpy out
    out_np = restore_order([(i.numpy(), p.numpy()) for i, p in collected], 57)
    assert isinstance(out_np, np.ndarray)
    np.testing.assert_array_equal(out_np, out.numpy())
    with pytest.raises(ValueError):
        restore_order(collected[:-1], 57)
    with pytest.raises(ValueError):
        restore_order(collected + collected[:1], 57)


def test_classifier_memmap(tmp_path):
    ids, offsets = make_corpus(40)
    np.save(tmp_path / "ids.npy", ids)
    mm = np.load(tmp_path / "ids.npy", mmap_mode="r")
    assert isinstance(mm, np.memmap) and mm.dtype == np.uint16
    a = [(x, i) for x, _, i in ClassifierLoader(mm, offsets, bs=7, seed=1)]
    b = [(x, i) for x, _, i in ClassifierLoader(ids, offsets, bs=7, seed=1)]
    for (xa, ia), (xb, ib) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ia, ib)


def test_classifier_max_len_keeps_tail():
    ids, offsets = make_corpus(30, lo=5, hi=50)
    docs = docs_of(ids, offsets)
    for x, _y, idx in ClassifierLoader(ids, offsets, bs=5, max_len=10, train=False):
        assert x.shape[1] <= 10
        for row, i in zip(x.numpy(), idx.numpy(), strict=True):
            tail = docs[i][-10:]
            np.testing.assert_array_equal(row[x.shape[1] - len(tail) :], tail)


def test_lm_offsets_checked_slice_by_slice(monkeypatch):
    """A decrease anywhere, also across the boundary of two checked slices, is refused."""
    monkeypatch.setattr(loaders_mod, "_CHUNK", 3)
    ids = np.arange(40, dtype=np.int64)
    good = np.array([0, 4, 8, 12, 16, 20, 24, 28, 40])
    LMLoader(ids, good, bs=2, bptt=4)
    for at in (3, 4, 7):  # inside a slice, on the boundary (3 -> 4), in the last slice
        bad = good.copy()
        bad[at] = bad[at - 1] - 1
        with pytest.raises(UserError, match="non-decreasing"):
            LMLoader(ids, bad, bs=2, bptt=4)
