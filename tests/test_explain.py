"""Explanations: fastai v1's intrinsic attention on our classifier, the words as typed, the
HTML page (escaped), and `ulmfit explain`."""

import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from test_predict import tiny_models

import ulmfit
from ulmfit.cli import main
from ulmfit.errors import UserError
from ulmfit.explain import (
    _lowered,
    embed,
    forward_from_embeddings,
    render_html,
    segments,
    word_units,
)
from ulmfit.predict import Predictor

TRICKY = (
    "This movie was GREAT!!!! I don't know.<br /><br />Really   good &amp; fun, "
    "İstanbul café\n\nthe end"
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory)


@pytest.fixture(scope="module")
def single(models):
    return ulmfit.load(models["single"], device="cpu")


def test_explanation_of_the_predicted_class(single, models):
    text = models["texts"][0]
    exp = single.explain(text)
    assert exp["tokens"] == single.tokens_of(single.encode([text])[0])
    assert exp["tokens"][0] == "xxbos"
    w = np.asarray(exp["weights"])
    assert len(w) == len(exp["tokens"]) and w.max() == 1.0 and (w >= 0).all()
    pred = single.predict([text])[0]
    assert exp["prediction"]["label"] == pred["label"] == exp["target"]
    for c, p in pred["probabilities"].items():
        assert abs(exp["prediction"]["probabilities"][c] - p) < 1e-5
    assert len(exp["known"]) == len(exp["tokens"]) and all(exp["known"][:1])
    # another class explains differently; an unknown class is refused
    other = next(c for c in single.classes if c != exp["target"])
    assert single.explain(text, other)["target"] == other
    with pytest.raises(UserError, match="not one of"):
        single.explain(text, "no such class")


def test_forward_from_embeddings_is_the_model_and_gradient_is_intrinsic_attention(single):
    model = single.members[0][0]
    ids = single.member_ids(0, single.encode(["What is the capital of France , and why ?" * 20]))[0]
    x = torch.as_tensor(ids)
    old = model.encoder.max_len
    try:
        for max_len in (old, 144):  # the whole text, and only its last chunks kept
            model.encoder.max_len = max_len
            with torch.no_grad():
                want = model(x[None])
            emb = embed(model, x)
            assert torch.allclose(forward_from_embeddings(model, emb), want, atol=1e-5)
    finally:
        model.encoder.max_len = old
    # |d p / d emb| summed over the embedding: a finite difference along the gradient's sign
    emb = embed(model, x).double()
    model.double()
    try:
        p = forward_from_embeddings(model, emb).softmax(-1)[0, 0]
        (g,) = torch.autograd.grad(p, [emb])
        attn = g[0].abs().sum(-1)
        i = int(attn.argmax())
        step = torch.zeros_like(emb)
        step[0, i] = g[0, i].sign() * 1e-6
        with torch.no_grad():
            q = forward_from_embeddings(model, emb + step).softmax(-1)[0, 0]
        assert abs(float(q.detach() - p.detach()) / 1e-6 - float(attn[i])) < 1e-3 * max(
            1.0, float(attn[i])
        )
    finally:
        model.float()


def test_ensemble_averages_its_members_explanations(models):
    ens = ulmfit.load(models["ensemble"], device="cpu")
    text = models["texts"][1]
    exp = ens.explain(text)
    parts = [
        Predictor.load(models["ensemble"] / "model" / d, device="cpu").explain(text, exp["target"])
        for d in ("fwd", "bwd")
    ]
    assert parts[0]["tokens"] == parts[1]["tokens"] == exp["tokens"]
    mean = (np.asarray(parts[0]["weights"]) + np.asarray(parts[1]["weights"])) / 2
    assert np.allclose(exp["weights"], mean / mean.max(), atol=1e-3)


def test_words_as_typed():
    tokens = ["xxbos", "xxmaj", "this", "xxup", "great", "xxrep", "4", "!", "\n\n", "end"]
    weights = [0.9, 0.8, 0.1, 0.2, 0.3, 0.1, 0.5, 0.2, 0.7, 0.4]
    assert word_units(tokens, weights) == [
        ("this", 0.8),
        ("great", 0.3),
        ("!!!!", 0.5),
        ("end", 0.4),
    ]
    segs = segments("This GREAT!!!!\n\nend", tokens, weights)
    assert "".join(s["text"] for s in segs) == "This GREAT!!!!\n\nend"
    shown = [(s["text"], s["weight"]) for s in segs if s["weight"] is not None]
    assert shown == [("This", 1.0), ("GREAT", 0.375), ("!!!!", 0.625), ("end", 0.5)]
    # a repeat count no text could hold is not expanded
    assert word_units(["xxrep", "999999999", "!"], [1, 1, 1]) == [("xxrep", 1.0), ("999999999", 1.0), ("!", 1.0)]  # fmt: skip
    low, src = _lowered("İa")
    assert low == "i̇a" and src == [0, 0, 1, 2]


def test_segments_rebuild_the_text_exactly(single):
    for text in (TRICKY, "", "   ", "<b>bold</b> & 'quoted' …", "xxmaj xxbos literal"):
        exp = single.explain(text)
        assert "".join(s["text"] for s in exp["segments"]) == text
    exp = single.explain(TRICKY)
    words = [s["text"] for s in exp["segments"] if s["weight"] is not None]
    assert {"This", "GREAT", "!!!!", "Really", "İstanbul", "café", "end"} <= set(words)
    assert max(s["weight"] for s in exp["segments"] if s["weight"] is not None) == 1.0


class _Tags(HTMLParser):
    """The tags of a page and the text inside its ``.text`` box."""

    def __init__(self):
        super().__init__()
        self.tags, self.text, self._depth = [], [], 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if self._depth or ("class", "text") in attrs:
            self._depth += 1

    def handle_endtag(self, tag):
        self._depth = max(0, self._depth - 1)

    def handle_data(self, data):
        if self._depth:
            self.text.append(data)


def test_html_is_escaped(single):
    evil = '<script>alert("x")</script> <img src=x onerror=alert(1)> "quoted" & more'
    exp = single.explain(evil)
    page = render_html(exp, {**single.info(), "model": "<b>model</b>"})
    parsed = _Tags()
    parsed.feed(page)
    assert "script" not in parsed.tags and "img" not in parsed.tags and "b" not in parsed.tags
    assert "".join(parsed.text) == evil  # shown as typed, as text
    fake = {**exp, "target": "<i>t</i>", "prediction": {"label": "<u>L</u>", "probabilities": {"<u>L</u>": 1.0}}}  # fmt: skip
    parsed = _Tags()
    parsed.feed(render_html(fake, {}))
    assert "u" not in parsed.tags and "i" not in parsed.tags


def test_explain_cli_writes_html(models, tmp_path, capsys):
    out = tmp_path / "explain.html"
    argv = ["explain", models["ensemble"], "--text", "Who invented the telephone ?", "--out", out]
    assert main([str(a) for a in argv]) == 0
    stdout = capsys.readouterr().out
    assert "prediction:" in stdout and "words that drove" in stdout and "wrote" in stdout
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "telephone" in page and "rgba(" in page
    argv = ["explain", models["single"], "--text", "Who ?", "--json"]
    assert main([str(a) for a in argv]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["tokens"] == ["xxbos", "xxmaj", "who", "?"]
    assert main(["explain", str(models["single"]), "--text", "x", "--target", "nope"]) == 2
    assert "not one of" in capsys.readouterr().err
