"""Corpora larger than memory: ``ulmfit prepare`` and a few pretraining steps keep a flat peak
memory as the corpus grows, and the training ids stay memory-mapped.

The corpus is generated (bench/big_corpus.py). ``ULMFIT_BIG_CORPUS_MB`` sets the larger of
the two sizes (default 16: tokenizing it takes ~15 s on two busy cores); the smaller is a
quarter of it. Memory is the peak anonymous RSS of the process tree (see the bench), so if
either command held the corpus in RAM the larger run would need ~4x the corpus-dependent part.
The multi-GB run is ``sudo python bench/big_corpus.py --gb 8 --cgroup-gb 2``."""

import importlib.util
import os

import numpy as np
import pytest
from conftest import REPO

_spec = importlib.util.spec_from_file_location("big_corpus", REPO / "bench" / "big_corpus.py")
big_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(big_corpus)

BIG_MB = float(os.environ.get("ULMFIT_BIG_CORPUS_MB", "16"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name, mb in (("small", BIG_MB / 4), ("big", BIG_MB)):
        work = tmp_path_factory.mktemp(name)
        out[name] = big_corpus.run(int(mb * 2**20), work, steps=5)
        for stage in ("prepare", "pretrain_steps"):
            assert out[name][stage]["rc"] == 0, out[name][stage].get("stderr")
    return out


def test_prepare_memory_does_not_grow_with_the_corpus(runs):
    small, big = runs["small"]["prepare"], runs["big"]["prepare"]
    assert runs["big"]["corpus_mb"] > 3.5 * runs["small"]["corpus_mb"]
    # the corpus-dependent part (per-document arrays) is a few bytes per document
    assert big["peak_anon_mb"] < 1.25 * small["peak_anon_mb"] + 32, (small, big)


def test_pretraining_reads_a_memory_mapped_corpus(runs):
    small, big = runs["small"]["pretrain_steps"], runs["big"]["pretrain_steps"]
    assert small["memmap"] and big["memmap"]
    assert big["tokens"] > 3.5 * small["tokens"]
    assert big["peak_anon_mb"] < 1.25 * small["peak_anon_mb"] + 32, (small, big)


def test_a_held_out_split_is_copied_to_a_memory_mapped_stream(tmp_path):
    """pretrain's valid_pct split and backward order: a memory-mapped cache entry, equal to
    the documents gathered in memory."""
    from types import SimpleNamespace

    from ulmfit.corpus import gather_docs, reverse_docs, train_stream

    rng = np.random.default_rng(0)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(0, 40, 500))]).astype(np.int64)
    ids = rng.integers(0, 1000, int(offsets[-1])).astype(np.uint16)
    (tmp_path / "entry").mkdir()
    data = SimpleNamespace(ids=ids, offsets=offsets, path=tmp_path / "entry")
    idx = np.sort(rng.choice(500, 400, replace=False))
    for backwards in (False, True):
        got, off = train_stream(data, idx, backwards, tmp_path / "cache")
        want, want_off = gather_docs(ids, offsets, idx)
        if backwards:
            want = reverse_docs(want, want_off)
        assert isinstance(got, np.memmap)
        np.testing.assert_array_equal(off, want_off)
        np.testing.assert_array_equal(got, want)
    same, _ = train_stream(data, np.arange(500), False, tmp_path / "cache")
    assert same is ids  # every document forwards: the corpus itself, no copy
