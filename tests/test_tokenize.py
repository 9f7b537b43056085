"""Our tokens against fastai 2.8's own output, and against spaCy called the plain way."""

import json

import pandas as pd
import pytest
from conftest import DATA, FIXTURES, need

from ulmfit.text.rules import apply_rules, text_wide_rules, word_rules
from ulmfit.text.tokenize import _SIMPLE, Tokenizer, _tokens_by_piece, pieces, spacy_tokenizer


def _fixture(name: str) -> list[dict]:
    path = need(FIXTURES / "tokens" / f"{name}.jsonl")
    with open(path, encoding="utf-8") as f:  # not splitlines(): texts hold U+2028 etc.
        return [json.loads(line) for line in f]


def _reference(texts: list[str]) -> list[list[str]]:
    """fastai's way: all rules on the whole text, then one spaCy call per text."""
    tok = spacy_tokenizer()
    return [[t.text.replace(" ", "▁") for t in tok(apply_rules(x))] for x in texts]


def test_edge_cases_identical_to_fastai():
    rows = _fixture("edge_cases")
    got = Tokenizer().tokenize_batch([r["text"] for r in rows])
    for r, toks in zip(rows, got):
        assert toks == r["tokens"], r["text"]


def test_trec6_test_identical_to_fastai():
    rows = _fixture("trec6_test")
    texts = pd.read_csv(need(DATA / "trec6" / "test.csv"), keep_default_na=False).text.tolist()
    got = Tokenizer().tokenize_batch([texts[r["row"]] for r in rows])
    assert [r["tokens"] for r in rows] == got


@pytest.mark.parametrize("one_by_one", [False, True])
def test_imdb_sample_identical_to_fastai(one_by_one):
    rows = _fixture("imdb_sample")
    df = pd.read_csv(need(DATA / "imdb_sample" / "texts.csv"), keep_default_na=False)
    texts = [df.text[r["row"]] for r in rows]
    tok = Tokenizer()
    got = [tok(t) for t in texts] if one_by_one else tok.tokenize_batch(texts)
    mismatches = [r["row"] for r, toks in zip(rows, got) if toks != r["tokens"]]
    # The issue asks for >= 99.5%; every row matches today, so hold on to that.
    assert mismatches == []


def test_same_as_plain_spacy_on_imdb_reviews():
    df = pd.read_csv(need(DATA / "imdb" / "test.csv.gz"), nrows=3000)
    texts = df.text.tolist()
    assert Tokenizer().tokenize_batch(texts) == _reference(texts)


def test_plain_word_shortcut_matches_spacy_on_every_imdb_piece():
    df = pd.read_csv(need(DATA / "imdb" / "train.csv.gz"), nrows=8000)
    words = set()
    for t in df.text:
        words.update(word_rules(p) for p in pieces(text_wide_rules(t)))
    simple = sorted(w for w in words if _SIMPLE.fullmatch(w))
    assert len(simple) > 10000
    tok = Tokenizer()
    tok("warm up")
    fast, hard = tok._tokens(simple)
    assert len(hard) < len(simple) // 10  # only words a special case touches
    assert fast == _tokens_by_piece(tok._spacy, simple)


def test_special_case_across_pieces():
    # spaCy merges "''" and resolves overlaps over the whole text: fastai gives ' ' here.
    text = "After ''Empire strikes back'' ''Return of the Jedi'' is my favorite"
    tok = Tokenizer()
    assert tok(text) == _reference([text])[0]
    assert tok.fallbacks_ >= 1


def test_empty_and_whitespace_texts():
    tok = Tokenizer()
    assert tok.tokenize_batch(["", "   ", "\n\n", "a  b\n c"]) == _reference(
        ["", "   ", "\n\n", "a  b\n c"]
    )
    assert tok("") == ["xxbos"]


def test_small_memo_gives_the_same_tokens():
    df = pd.read_csv(need(DATA / "imdb_sample" / "texts.csv"), keep_default_na=False)
    texts = df.text.tolist()[:200]
    assert Tokenizer(max_memo=500).tokenize_batch(texts) == Tokenizer().tokenize_batch(texts)


def test_custom_rules_take_the_generic_path():
    rules = [str.lower]
    tok = Tokenizer(rules=rules)
    assert tok("Hello World!") == ["hello", "world", "!"]


def test_multi_field_marker_is_one_token():
    from ulmfit.data.sources import join_fields

    toks = Tokenizer()(join_fields(["Title here", "Body text"]))
    assert toks[:4] == ["xxbos", "xxfld", "1", "xxmaj"]
    assert toks.count("xxfld") == 2
