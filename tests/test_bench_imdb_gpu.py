"""bench/imdb_gpu.py: the compact weights rebuild ``remap_vocab``'s state exactly, a bundle
folder is checked file by file, and ``run --quick`` goes through every stage of the recipe
on a synthetic bundle with a tiny model (the CPU rehearsal of the GPU run, in seconds)."""

import importlib.util
import json
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO

_spec = importlib.util.spec_from_file_location("imdb_gpu", REPO / "bench" / "imdb_gpu.py")
imdb_gpu = importlib.util.module_from_spec(_spec)
sys.modules["imdb_gpu"] = imdb_gpu  # its dataclasses look their module up
_spec.loader.exec_module(imdb_gpu)


def _tiny_pretrained(folder, n_words: int = 40, seed: int = 0) -> list[str]:
    from ulmfit.config import AWDLSTMConfig
    from ulmfit.models.awd_lstm import LanguageModel
    from ulmfit.models.io import save_model_dir
    from ulmfit.text.rules import SPECIAL_TOKENS

    vocab = list(SPECIAL_TOKENS) + [f"w{i}" for i in range(n_words)]
    torch.manual_seed(seed)
    lm = LanguageModel(len(vocab), AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=3))
    with torch.no_grad():  # float16 values, as in the shared wiki30k file ...
        for p in lm.parameters():
            p.copy_(p.half().float())
        lm.encoder.rnns[0].lstm.bias_ih_l0[0] = 1 + 2**-20  # ... but one tensor not
    save_model_dir(folder, lm, vocab)
    return vocab


def test_compact_weights_rebuild_the_remapped_state(tmp_path):
    from ulmfit.models.io import load_lm, stored_state
    from ulmfit.models.pretrained import remap_vocab

    old = _tiny_pretrained(tmp_path / "pre")
    new = old[:9] + [f"w{i}" for i in range(20, 60)] + ["new"]  # half the words known
    base, itos, _ = load_lm(tmp_path / "pre")
    state = stored_state(base)
    want, report = remap_vocab(state, itos, new)
    tensors = imdb_gpu.compact_state(state, itos, new)
    assert tensors["emb.rows"].dtype == torch.float16
    assert tensors["emb.rows"].shape[0] == report.found == 9 + 20
    assert tensors["keep.encoder.rnns.0.lstm.bias_ih_l0"].dtype == torch.float32  # not lossless
    assert tensors["keep.encoder.rnns.1.lstm.bias_ih_l0"].dtype == torch.float16
    got = imdb_gpu.expand_state(tensors, len(new))
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def _synthetic_corpus(vocab: list[str], n: int, seed: int = 0) -> dict:
    """``n`` documents per split; a positive review uses the first half of the words more."""
    rng = np.random.default_rng(seed)
    words = np.arange(9, len(vocab))
    half = len(words) // 2
    docs, split, labels = [], [], []
    for k in range(3):
        for i in range(n):
            y = i % 2 if k < 2 else -1
            p = np.where(np.arange(len(words)) < half, 3.0 if y == 1 else 1.0, 1.0)
            body = rng.choice(words, size=int(rng.integers(5, 90)), p=p / p.sum())
            docs.append(np.concatenate([[2], body]).astype(np.uint16))  # xxbos first
            split.append(k)
            labels.append(y)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    return {"ids": np.concatenate(docs), "offsets": offsets, "split": split, "labels": labels}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle")
    old = _tiny_pretrained(tmp / "pre")
    new = old[:9] + [f"w{i}" for i in range(20, 60)]
    corpus = _synthetic_corpus(new, 40)
    classes = ["negative", "positive"]
    imdb_gpu.write_bundle(
        tmp / "imdb", tmp / "imdb_model", corpus, new, classes, tmp / "pre", None, {}
    )
    return tmp


def test_a_bundle_folder_is_checked_file_by_file(bundle, tmp_path):
    from ulmfit.errors import UserError

    m = imdb_gpu.check_folder(bundle / "imdb")
    assert m["docs"] == {"train": 40, "test": 40, "unsup": 40}
    assert imdb_gpu.main(["stash", str(bundle / "imdb_model"), str(tmp_path / "m")]) == 0
    imdb_gpu.check_folder(tmp_path / "m")
    with open(tmp_path / "m" / imdb_gpu.VOCAB, "ab") as f:
        f.write(b" ")
    with pytest.raises(UserError, match="SHA-256"):
        imdb_gpu.check_folder(tmp_path / "m")


def test_quick_run_goes_through_every_stage(bundle, tmp_path):
    out = tmp_path / "out"
    argv = ["run", "--bundle", str(bundle / "imdb"), "--model", str(bundle / "imdb_model")]
    argv += ["--out", str(out), "--device", "cpu", "--quick", "--lm-bs", "4", "--bptt", "8"]
    assert imdb_gpu.main([*argv, "--clf-bs", "8"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert not r["partial"] and "error" not in r
    for stage in ("load", "lm_eval_before", "lm_frozen", "lm_unfrozen", "lm_eval_after"):
        assert stage in r["stages"]
    assert [f"clf_stage{k}" in r["stages"] for k in (1, 2, 3, 4)] == [True] * 4
    assert "test_predict" in r["stages"] and r["stages"]["total"] > 0
    assert r["test"]["n"] == 40 and 0 <= r["test"]["error_rate"] <= 1
    assert r["lm_before"]["tokens"] == r["lm_after"]["tokens"] > 0
    assert r["lm_after"]["loss"] != r["lm_before"]["loss"]  # the LM was trained
    assert r["data"]["lm_train_docs"] + r["data"]["lm_valid_docs"] == 120
    assert len(r["clf_history"]) == 4  # 1 + 1 + 1 + 1 epochs (--quick)
    assert "Test error" in (out / "results.md").read_text()
    assert (out / "lm_loss.png").is_file() and (out / "clf_loss.png").is_file()


def test_a_run_past_its_budget_still_scores_the_test_reviews(bundle, tmp_path):
    """A device far slower than planned: every training epoch ends at its deadline, the
    evaluations still run and the results say what was cut."""
    out = tmp_path / "out"
    argv = ["run", "--bundle", str(bundle / "imdb"), "--model", str(bundle / "imdb_model")]
    argv += ["--out", str(out), "--device", "cpu", "--budget-s", "1", "--lm-bs", "4"]
    assert imdb_gpu.main([*argv, "--bptt", "8", "--clf-bs", "8"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert not r["partial"] and not r["within_budget"]
    assert r["lm_cut"]["epochs"] >= 1 and r["clf_cut"]["epochs"] >= 1
    assert r["test"]["n"] == 40 and r["lm_after"]["tokens"] > 0
    assert "Deadline cuts" in (out / "results.md").read_text()


def test_paced_ends_an_epoch_at_its_deadline():
    paced = imdb_gpu.Paced(list(range(10)), n=4)
    assert len(paced) == 4 and len(list(paced)) == 4
    paced.deadline = time.monotonic() - 1
    assert list(paced) == [] and paced.cut_epochs == 1 and paced.cut_batches == 4
