"""prepare(): sources -> tokens -> numbers, cached; real data from ../shared/data, the rest synthetic."""

import json
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, need

from ulmfit.config import PrepareConfig, VocabConfig
from ulmfit.data.sources import SourceSpec
from ulmfit.errors import UserError
from ulmfit.prepare import Prepared, prepare, tokenize_stage
from ulmfit.text.rules import SPECIAL_TOKENS
from ulmfit.text.tokenize import Tokenizer

BOS_ID = 2


def config(cache: Path, **kw) -> PrepareConfig:
    kw.setdefault("workers", 1)
    return PrepareConfig(cache_dir=cache, progress=False, **kw)


def entries(cache: Path, stage: str) -> list[Path]:
    """Entry folders of a stage (not the lock files, not hidden temporary folders)."""
    folder = cache / stage
    if not folder.exists():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def all_folders(cache: Path) -> list[Path]:
    """Every folder below the stage folders, hidden ones (.tmp-*, .trash-*) included."""
    if not cache.exists():
        return []
    return [p for p in cache.rglob("*") if p.is_dir() and p.parent != cache]


def read_csv(path: Path, **kw) -> pd.DataFrame:
    """The CSV as the reader sees it: every cell a string, empty cells ""."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, **kw)


def check_structure(d: Prepared) -> None:
    """Invariants every prepared corpus must satisfy."""
    n = len(d)
    assert d.offsets.dtype == np.int64 and d.offsets.shape == (n + 1,)
    assert d.offsets[0] == 0 and d.offsets[-1] == len(d.ids) == d.meta["tokens"]
    assert np.all(np.diff(d.offsets) >= 1)  # every document has at least xxbos
    assert np.all(d.ids[d.offsets[:-1]] == BOS_ID)  # every document starts with xxbos
    assert d.vocab[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    assert d.vocab[0] == "xxunk" and d.vocab[1] == "xxpad" and d.vocab[2] == "xxbos"
    assert len(d.vocab) % 8 == 0 and len(d.vocab) == d.meta["vocab_size"]
    assert len(set(d.vocab) - {"xxfake"}) == len([t for t in d.vocab if t != "xxfake"])
    assert isinstance(d.ids, np.memmap) and d.ids.dtype == np.uint16
    assert int(d.ids.max()) < len(d.vocab)
    assert d.rows.shape == (n,) and d.sources.shape == (n,)
    assert np.all(np.diff(d.rows) > 0)  # input order
    assert d.meta["docs"] == n


def decode(d: Prepared, i: int) -> list[str]:
    return [d.vocab[j] for j in d.doc(i)]


def expected_tokens(d: Prepared, texts: list[str]) -> list[list[str]]:
    """The tokens the corpus should hold for `texts`: out-of-vocabulary tokens become xxunk."""
    known = set(d.vocab)
    return [
        [t if t in known else "xxunk" for t in toks] for toks in Tokenizer().tokenize_batch(texts)
    ]


# ---------------------------------------------------------------------------------------------
# Real data


def test_trec6_train(tmp_path):
    path = need(DATA / "trec6" / "train.csv")
    cache = tmp_path / "cache"
    spec = SourceSpec(path, label_cols=["label"])

    t0 = time.perf_counter()
    d = prepare([spec], config(cache))
    first = time.perf_counter() - t0
    assert not d.cached
    assert len(d) == 5452
    check_structure(d)
    df = read_csv(path)
    assert d.label_kind == "single"
    assert (
        d.classes == sorted(df["label"].unique()) == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    )
    assert d.labels.dtype == np.int64 and d.labels.shape == (5452,)
    assert np.array_equal(d.rows, np.arange(5452))
    # label codes aligned with the rows, everywhere
    assert np.array_equal(np.asarray(d.classes)[d.labels], df["label"].to_numpy()[d.rows])
    # and the ids of a few documents are the tokens of their rows
    picks = [0, 1, 2, 777, 2718, 5451]
    for i, toks in zip(picks, expected_tokens(d, [df["text"][d.rows[i]] for i in picks])):
        assert decode(d, i) == toks
    assert decode(d, 0)[:3] == ["xxbos", "xxmaj", "how"]  # "How did serfdom develop ..."
    s = d.summary()
    assert s["docs"] == 5452 and s["class_counts"]["DESC"] == int((df["label"] == "DESC").sum())
    assert sum(s["class_counts"].values()) == 5452
    assert d.meta["inputs"][0]["rows_read"] == 5452 and d.meta["inputs"][0]["skipped_empty"] == 0

    t0 = time.perf_counter()
    again = prepare([spec], config(cache))
    second = time.perf_counter() - t0
    assert again.cached and again.path == d.path
    assert second < 1.0, f"cached prepare took {second:.2f} s (first: {first:.2f} s)"
    assert np.array_equal(again.ids, d.ids) and np.array_equal(again.labels, d.labels)
    assert again.vocab == d.vocab and again.classes == d.classes
    assert len(entries(cache, "tokens")) == 1 and len(entries(cache, "numbers")) == 1


def test_cached_entry_files_are_intact(tmp_path):
    """Damage the numbers entry behind prepare()'s back: it is rebuilt, never used."""
    path = need(DATA / "trec6" / "test.csv")
    cache = tmp_path / "cache"
    spec = SourceSpec(path, label_cols=["label"])
    d = prepare([spec], config(cache))
    good = np.array(d.ids)
    del d
    ids_file = entries(cache, "numbers")[0] / "ids.npy"
    raw = bytearray(ids_file.read_bytes())
    raw[-1] ^= 0xFF
    ids_file.write_bytes(bytes(raw))
    again = prepare([spec], config(cache))
    assert np.array_equal(np.asarray(again.ids), good)
    assert len(entries(cache, "numbers")) == 1 and len(entries(cache, "tokens")) == 1


def test_vocab_settings_make_a_new_numbers_entry_only(tmp_path):
    path = need(DATA / "trec6" / "test.csv")
    cache = tmp_path / "cache"
    spec = SourceSpec(path, label_cols=["label"])
    d3 = prepare([spec], config(cache))
    tok_entry = entries(cache, "tokens")[0]
    tok_manifest = (tok_entry / "manifest.json").read_bytes()

    d1 = prepare([spec], config(cache, vocab=VocabConfig(min_freq=1)))
    assert not d1.cached
    assert entries(cache, "tokens") == [tok_entry]  # reused, not recomputed
    assert (tok_entry / "manifest.json").read_bytes() == tok_manifest
    assert len(entries(cache, "numbers")) == 2
    assert d1.meta["tokens_entry"] == d3.meta["tokens_entry"] == tok_entry.name
    assert len(d1.vocab) > len(d3.vocab)
    assert d1.meta["unk_rate"] == 0.0 < d3.meta["unk_rate"]
    assert np.array_equal(d1.offsets, d3.offsets)
    # with min_freq=1 nothing is unknown: the same documents, spelled out in full
    assert all(
        t3 in (t1, "xxunk")
        for i in (0, 10, 499)
        for t1, t3 in zip(decode(d1, i), decode(d3, i), strict=True)
    )

    small = prepare([spec], config(cache, vocab=VocabConfig(max_vocab=24, min_freq=1)))
    assert len(small.vocab) == 24 + 8  # fastai pads a multiple of 8 with 8 more
    assert len(entries(cache, "tokens")) == 1 and len(entries(cache, "numbers")) == 3
    # each setting is found again
    assert prepare([spec], config(cache, vocab=VocabConfig(min_freq=1))).cached
    assert prepare([spec], config(cache)).cached


def test_changed_data_is_recomputed(tmp_path):
    cache = tmp_path / "cache"
    csv = tmp_path / "small.csv"
    df = pd.DataFrame(
        {"text": ["the cat sat", "a dog ran", "Hello there!"] * 3, "label": ["a", "b", "c"] * 3}
    )
    df.to_csv(csv, index=False)
    spec = SourceSpec(csv, label_cols=["label"])
    first = prepare([spec], config(cache, vocab=VocabConfig(min_freq=1)))
    assert "cat" in first.vocab and "zebra" not in first.vocab

    # same bytes, newer file: still the same entry (content-addressed)
    csv.write_bytes(csv.read_bytes())
    assert prepare([spec], config(cache, vocab=VocabConfig(min_freq=1))).cached

    df.loc[4, "text"] = "a zebra ran"
    df.to_csv(csv, index=False)
    second = prepare([spec], config(cache, vocab=VocabConfig(min_freq=1)))
    assert not second.cached and second.path != first.path
    assert "zebra" in second.vocab
    assert decode(second, 4) == ["xxbos", "a", "zebra", "ran"]
    assert len(entries(cache, "tokens")) == 2

    df.loc[4, "label"] = "c"  # a label alone changes the result too
    df.to_csv(csv, index=False)
    third = prepare([spec], config(cache, vocab=VocabConfig(min_freq=1)))
    assert not third.cached and third.labels[4] == third.classes.index("c")
    assert len(entries(cache, "tokens")) == 3


def test_reading_settings_are_part_of_the_key(tmp_path):
    cache = tmp_path / "cache"
    csv = tmp_path / "two.csv"
    pd.DataFrame({"text": ["one two", "three"], "title": ["A", "B"], "label": ["x y", "y"]}).to_csv(
        csv, index=False
    )
    single = prepare([SourceSpec(csv, label_cols=["label"])], config(cache))
    multi = prepare([SourceSpec(csv, label_cols=["label"], label_delim=" ")], config(cache))
    fields = prepare([SourceSpec(csv, text_cols=["title", "text"])], config(cache))
    assert not multi.cached and not fields.cached
    assert single.label_kind == "single" and single.classes == ["x y", "y"]
    assert multi.label_kind == "multi" and multi.classes == ["x", "y"]
    assert multi.labels.tolist() == [[1, 1], [0, 1]]
    assert fields.label_kind == "none" and fields.labels is None
    assert len(entries(cache, "tokens")) == 3


def test_workers_give_identical_files(tmp_path):
    """1 worker in one chunk vs 2 workers in 28 chunks of 37 documents: the same bytes."""
    path = need(DATA / "imdb_sample" / "texts.csv")
    spec = SourceSpec(path, label_cols=["label"])
    results = {}
    for workers, chunk_docs in ((1, 1000), (2, 37)):
        cache = tmp_path / f"cache{workers}"
        d = prepare([spec], config(cache, workers=workers, chunk_docs=chunk_docs))
        assert len(d) == 1000 and d.meta["workers"] == workers
        check_structure(d)
        results[workers] = d
    one, two = results[1].path, results[2].path
    assert one.name == two.name  # the key does not depend on the number of workers
    for name in ("ids.npy", "vocab.json", "offsets.npy", "labels.npy", "rows.npy"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    tok1, tok2 = (
        entries(tmp_path / "cache1", "tokens")[0],
        entries(tmp_path / "cache2", "tokens")[0],
    )
    for name in ("ids.i32", "strings.json", "counts.npy"):
        assert (tok1 / name).read_bytes() == (tok2 / name).read_bytes(), name
    df = read_csv(path)
    assert results[1].classes == ["negative", "positive"]
    assert np.array_equal(np.asarray(results[1].classes)[results[1].labels], df["label"].to_numpy())


def test_wikitext_corpus(tmp_path):
    path = need(DATA / "wikipedia_en" / "valid.txt")
    d = prepare([SourceSpec(path)], config(tmp_path / "cache"))
    assert len(d) == 723
    check_structure(d)
    assert d.label_kind == "none" and d.labels is None and d.classes == []
    assert d.meta["tokens"] > 200_000
    # documents are articles: each starts with its " = Title = " line
    assert decode(d, 0)[1] == "="
    assert d.summary()["docs"] == 723 and "class_counts" not in d.summary()


# ---------------------------------------------------------------------------------------------
# Kinds of target


def test_multi_label_synthetic(tmp_path):
    csv = tmp_path / "emo.csv"
    pd.DataFrame(
        {
            "text": ["I love it", "meh", "so angry and sad", "wow", "fine"],
            "labels": ["joy love", "neutral", "anger sadness", "surprise", "neutral "],
        }
    ).to_csv(csv, index=False)
    d = prepare(
        [SourceSpec(csv, label_cols=["labels"], label_delim=" ")], config(tmp_path / "cache")
    )
    check_structure(d)
    assert d.label_kind == "multi"
    assert d.classes == ["anger", "joy", "love", "neutral", "sadness", "surprise"]
    assert d.labels.dtype == np.uint8 and d.labels.shape == (5, 6)
    assert d.labels.tolist() == [
        [0, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [1, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 1],
        [0, 0, 0, 1, 0, 0],
    ]
    assert "class_counts" not in d.summary()


def test_multi_label_goemotions(tmp_path):
    path = need(DATA / "goemotions" / "valid.csv")
    df = read_csv(path, nrows=300)
    csv = tmp_path / "go.csv"
    df.to_csv(csv, index=False)
    d = prepare(
        [SourceSpec(csv, label_cols=["labels"], label_delim=" ")], config(tmp_path / "cache")
    )
    check_structure(d)
    assert len(d) == 300 and d.label_kind == "multi"
    names = [set(s.split()) for s in df["labels"]]
    assert d.classes == sorted(set().union(*names))
    got = [{d.classes[k] for k in np.flatnonzero(row)} for row in d.labels]
    assert got == [names[r] for r in d.rows]
    assert d.labels.sum() == sum(len(n) for n in names)


def test_float_target(tmp_path):
    csv = tmp_path / "scores.csv"
    scores = ["0.5", "1.25", "-3", "2e-1", "7"]
    pd.DataFrame({"text": ["a b", "c", "d e f", "g", "h"], "score": scores}).to_csv(
        csv, index=False
    )
    spec = SourceSpec(csv, label_cols=["score"])
    d = prepare([spec], config(tmp_path / "cache", label_kind="float"))
    assert d.label_kind == "float" and d.classes == []
    assert d.labels.dtype == np.float32
    assert np.allclose(d.labels, [float(s) for s in scores])
    # without label_kind one column is read as classes: a different entry
    single = prepare([spec], config(tmp_path / "cache"))
    assert single.label_kind == "single" and not single.cached
    assert single.classes == ["-3", "2e-1", "0.5", "1.25", "7"]

    # several numeric columns, not all 0/1: a float target per column, inferred
    csv2 = tmp_path / "two.csv"
    pd.DataFrame({"text": ["x", "y", "z"], "a": ["0.5", "1", "0"], "b": ["3", "4", "5"]}).to_csv(
        csv2, index=False
    )
    d2 = prepare([SourceSpec(csv2, label_cols=["a", "b"])], config(tmp_path / "cache"))
    assert d2.label_kind == "float" and d2.labels.shape == (3, 2)
    assert d2.labels.tolist() == [[0.5, 3.0], [1.0, 4.0], [0.0, 5.0]]


def test_empty_rows_are_skipped_and_reported(tmp_path):
    csv = tmp_path / "gaps.csv"
    csv.write_text('text,label\nfirst one,a\n,b\n"  ",a\nsecond one,b\n"\n",a\nthird,a\n')
    d = prepare(
        [SourceSpec(csv, label_cols=["label"])],
        config(tmp_path / "cache", vocab=VocabConfig(min_freq=1)),
    )
    check_structure(d)
    assert len(d) == 3
    assert d.rows.tolist() == [0, 3, 5]
    assert [d.classes[k] for k in d.labels] == ["a", "b", "a"]
    info = d.meta["inputs"][0]
    assert info["rows_read"] == 6 and info["skipped_empty"] == 3
    assert "skipped 3 rows" in info["report"] and "2, 3, 5" in info["report"]
    assert decode(d, 1) == ["xxbos", "second", "one"]


def test_several_inputs(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    pd.DataFrame({"text": ["one", "two"], "label": ["x", "y"]}).to_csv(a, index=False)
    pd.DataFrame({"text": ["three", "", "four"], "label": ["y", "x", "z"]}).to_csv(b, index=False)
    d = prepare(
        [SourceSpec(a, label_cols=["label"]), SourceSpec(b, label_cols=["label"])],
        config(tmp_path / "cache", vocab=VocabConfig(min_freq=1)),
    )
    assert len(d) == 4
    assert d.sources.tolist() == [0, 0, 1, 1] and d.rows.tolist() == [0, 1, 0, 2]
    assert [decode(d, i)[1] for i in range(4)] == ["one", "two", "three", "four"]
    assert [d.classes[k] for k in d.labels] == ["x", "y", "y", "z"]
    assert [i["skipped_empty"] for i in d.meta["inputs"]] == [0, 1]


def test_tokenize_stage_is_cached(tmp_path):
    csv = tmp_path / "t.csv"
    pd.DataFrame({"text": ["hello world", "again"]}).to_csv(csv, index=False)
    cfg = config(tmp_path / "cache")
    entry, built = tokenize_stage([SourceSpec(csv)], cfg)
    assert built
    again, built = tokenize_stage([SourceSpec(csv)], cfg)
    assert again == entry and not built
    assert json.loads((entry / "strings.json").read_text())[:3] == ["xxbos", "hello", "world"]


def test_large_single_document(tmp_path):
    """A 10 MB document in one CSV cell: read, tokenized and numbered in one piece."""
    rng = random.Random(0)
    words = ["the", "cat", "Sat", "on", "a", "mat", "and", "BIG", "dog", "ran", "quickly", "x-ray"]
    parts: list[str] = []
    size = n_words = 0
    while size < 10_000_000:
        sentence = " ".join(rng.choice(words) for _ in range(12))
        sentence += rng.choice([". ", ", ", "! ", "? ", "\n"])
        parts.append(sentence)
        size += len(sentence)
        n_words += 12
    text = "".join(parts)
    csv = tmp_path / "big.csv"
    pd.DataFrame({"text": [text]}).to_csv(csv, index=False)

    t0 = time.perf_counter()
    d = prepare([SourceSpec(csv)], config(tmp_path / "cache", workers=1))
    took = time.perf_counter() - t0
    assert took < 60, f"{took:.1f} s for a 10 MB document"
    assert len(d) == 1
    check_structure(d)
    # xxbos + words + one mark per sentence + xxmaj/xxup before Sat/BIG + "x", "-", "ray"
    expected = 1 + n_words + len(parts) + text.count("Sat") + text.count("BIG")
    expected += 2 * text.count("x-ray")
    assert abs(d.meta["tokens"] - expected) < 0.02 * expected, (d.meta["tokens"], expected)
    vocab = set(d.vocab)
    assert {"xxmaj", "xxup", "sat", "big", "x", "-", "ray", "\n", ".", "?"} <= vocab
    assert "Sat" not in vocab and "BIG" not in vocab


# ---------------------------------------------------------------------------------------------
# Bad input: a UserError, and nothing in the cache


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_INPUTS = {
    "missing-file": (lambda t: SourceSpec(t / "nope.csv", label_cols=["label"]), "no such file"),
    "missing-text-column": (
        lambda t: SourceSpec(_write(t / "c.csv", b"body,label\nhi,a\n"), label_cols=["label"]),
        "no column 'text'",
    ),
    "missing-label-column": (
        lambda t: SourceSpec(_write(t / "c.csv", b"text,label\nhi,a\n"), label_cols=["tag"]),
        "no column 'tag'",
    ),
    "empty-file": (
        lambda t: SourceSpec(_write(t / "c.csv", b""), label_cols=["label"]),
        "empty",
    ),
    "header-only": (
        lambda t: SourceSpec(_write(t / "c.csv", b"text,label\n"), label_cols=["label"]),
        "no data rows",
    ),
    "all-empty-texts": (
        lambda t: SourceSpec(
            _write(t / "c.csv", b'text,label\n,a\n"  ",b\n'), label_cols=["label"]
        ),
        "no text",
    ),
    "non-utf8": (
        lambda t: SourceSpec(
            _write(t / "c.csv", b"text,label\nfine,a\ncaf\xe9 au lait,b\n"), label_cols=["label"]
        ),
        "not valid utf-8 at line 3",
    ),
    "mixed-type-labels": (
        lambda t: SourceSpec(
            _write(t / "c.csv", b"text,label\na,1\nb,2\nc,cat\nd,3\n"), label_cols=["label"]
        ),
        "one type",
    ),
    "missing-label": (
        lambda t: SourceSpec(_write(t / "c.csv", b"text,label\na,x\nb,\n"), label_cols=["label"]),
        "no label",
    ),
    "non-numeric-float": (
        lambda t: SourceSpec(_write(t / "c.csv", b"text,y\na,1.5\nb,high\n"), label_cols=["y"]),
        "not a number",
    ),
    "unknown-format": (lambda t: SourceSpec(_write(t / "c.xlsx", b"PK")), "format"),
    "bad-jsonl": (lambda t: SourceSpec(_write(t / "c.jsonl", b'{"text": "a"}\n{oops\n')), "JSON"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_user_error_and_caches_nothing(tmp_path, case):
    make, message = BAD_INPUTS[case]
    spec = make(tmp_path)
    cache = tmp_path / "cache"
    label_kind = "float" if case == "non-numeric-float" else None
    with pytest.raises(UserError) as err:
        prepare([spec], config(cache, label_kind=label_kind))
    text = str(err.value)
    assert "\n" not in text
    assert message.lower() in text.lower(), text
    assert str(spec.path) in text or case == "unknown-format" and "c.xlsx" in text
    assert all_folders(cache) == []  # no entry, no temporary folder


def test_no_input_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        prepare([], config(tmp_path / "cache"))


def test_failure_in_the_second_input_caches_nothing(tmp_path):
    good = _write(tmp_path / "good.csv", b"text,label\nhello,a\n")
    bad = _write(tmp_path / "bad.csv", b"text,label\nhello,a\nbye,\n")
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="bad.csv"):
        prepare(
            [SourceSpec(good, label_cols=["label"]), SourceSpec(bad, label_cols=["label"])],
            config(cache),
        )
    assert all_folders(cache) == []


def test_copy_of_a_file_reports_its_own_path(tmp_path):
    src = need(DATA / "trec6" / "test.csv")
    copy = tmp_path / "copy.csv"
    copy.write_bytes(src.read_bytes())
    cfg = PrepareConfig(workers=1, cache_dir=tmp_path / "cache", progress=False)
    prepare([SourceSpec(copy, label_cols=["label"])], cfg)
    again = prepare([SourceSpec(src, label_cols=["label"])], cfg)
    assert again.cached
    assert again.meta["inputs"][0]["path"] == str(src)
    assert str(src) in again.meta["inputs"][0]["report"]


def test_per_document_arrays_stream_through_disk_in_chunks(tmp_path, monkeypatch):
    """Lengths become offsets and rows an .npy a chunk at a time (here 7 items): the running
    sum carries across chunks, and nothing is held for the whole corpus."""
    from ulmfit import prepare as prep

    monkeypatch.setattr(prep, "_NPY_CHUNK", 7)
    lengths = np.random.default_rng(0).integers(1, 50, 100).astype(np.int64)
    (tmp_path / "lengths.raw").write_bytes(lengths.tobytes())
    prep._raw_to_npy(tmp_path / "lengths.raw", np.int64, tmp_path / "offsets.npy", cumulative=True)
    np.testing.assert_array_equal(np.load(tmp_path / "offsets.npy"), np.r_[0, np.cumsum(lengths)])
    src = np.arange(23, dtype=np.int32)
    (tmp_path / "s.raw").write_bytes(src.tobytes())
    prep._raw_to_npy(tmp_path / "s.raw", np.int32, tmp_path / "s.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), src)
    assert not list(tmp_path.glob("*.raw"))
    (tmp_path / "empty.raw").write_bytes(b"")
    prep._raw_to_npy(tmp_path / "empty.raw", np.int64, tmp_path / "e.npy", cumulative=True)
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), [0])


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_killed_prepare_leaves_no_workers(tmp_path, sig):
    """``ulmfit prepare`` stopped by SIGTERM (exit 130, pool stopped) or SIGKILL (workers see
    their parent gone): no tokenizer process is left running, no cache entry is published."""
    import os
    import signal
    import subprocess
    import sys

    import psutil

    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    with open(tmp_path / "corpus.txt", "w") as f:
        for _ in range(300_000):
            f.write(" ".join(rng.choices(words, k=20)) + " .\n")
    ulmfit = os.path.join(os.path.dirname(sys.executable), "ulmfit")
    cmd = [ulmfit, "prepare", str(tmp_path / "corpus.txt"), "--workers", "2"]
    cmd += ["--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    deadline = time.time() + 60
    workers: list = []
    while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
        workers = [
            p for p in parent.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())
        ]
        time.sleep(0.2)
    assert len(workers) == 2, "the workers did not start"
    time.sleep(1.0)  # mid-run
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == "SIGTERM" else -signal.SIGKILL), err
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"workers still running after {sig}: {[p.pid for p in alive]}"
    entries = list((tmp_path / "cache").glob("*/*/manifest.json"))
    assert not entries
