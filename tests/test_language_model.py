"""Model directories (safetensors, no pickle), exact document-wise LM evaluation, pretrain /
finetune-lm dry runs and the CLI's handling of bad input."""

import json
import pickle
import struct

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import DATA, FIXTURES, SHARED, need

from ulmfit.cli import main
from ulmfit.config import AWDLSTMConfig
from ulmfit.corpus import gather_docs, read_token_corpus, reverse_docs, split_docs
from ulmfit.errors import UserError
from ulmfit.lm_eval import doc_losses, lm_eval, model_docs
from ulmfit.models.awd_lstm import LanguageModel
from ulmfit.models.io import (
    CONFIG_FILE,
    MODEL_FILE,
    VOCAB_FILE,
    is_tied,
    load_lm,
    load_model_dir,
    save_model_dir,
)
from ulmfit.text.tokenize import Tokenizer

LM = FIXTURES / "fastai_lm"
WIKI = SHARED / "models" / "wiki30k_fwd"
TINY = AWDLSTMConfig(emb_sz=8, n_hid=12, n_layers=2)
ALLOWED_SUFFIXES = {".safetensors", ".json", ".jsonl", ".png"}


def tiny_model(vocab_size: int = 40, cfg: AWDLSTMConfig = TINY, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    model = LanguageModel(vocab_size, cfg)
    with torch.no_grad():  # the decoder bias starts at zero: make the round trip see it
        model.decoder.decoder.bias.normal_()
    return model.eval()


def vocab_of(n: int) -> list[str]:
    return [f"tok{i}" for i in range(n)]


def logits(model: LanguageModel, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    model.reset()
    with torch.no_grad():
        return model(x)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2, err
    assert out == ""
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ulmfit: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def assert_no_pickle(folder) -> None:
    """Only safetensors / JSON / PNG files, and the weights really are safetensors."""
    for p in folder.rglob("*"):
        if p.is_file():
            assert p.suffix in ALLOWED_SUFFIXES, p
    blob = (folder / MODEL_FILE).read_bytes()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    assert isinstance(header, dict) and "encoder.encoder.weight" in header
    assert not blob.startswith(b"PK") and not blob.startswith(b"\x80")
    json.loads((folder / CONFIG_FILE).read_text())
    assert all(isinstance(t, str) for t in json.loads((folder / VOCAB_FILE).read_text()))


def snapshot(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def env_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "default-cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def fixture_lm():
    return load_lm(need(LM / "lm_v2.pth"), need(LM / "itos.pkl"))


# ---------------------------------------------------------------------------------------------
# Model directories


@pytest.mark.parametrize("tie", [True, False])
def test_model_dir_round_trip(tmp_path, tie):
    cfg = AWDLSTMConfig(emb_sz=8, n_hid=12, n_layers=2, tie_weights=tie)
    model = tiny_model(cfg=cfg)
    vocab = vocab_of(40)
    out = save_model_dir(tmp_path / "m", model, vocab, {"note": "ü"}, direction="bwd")
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_FILE, MODEL_FILE, VOCAB_FILE]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folder left
    assert_no_pickle(out)

    loaded, vocab2, config = load_model_dir(out)
    assert vocab2 == vocab
    assert config["task"] == "language_model" and config["direction"] == "bwd"
    assert config["vocab_size"] == 40 and config["meta"] == {"note": "ü"}
    assert config["architecture"]["emb_sz"] == 8 and config["architecture"]["tie_weights"] is tie
    assert config["tokenizer"]["rules"][0] == "fix_html" and config["tokenizer"]["spacy"]
    assert is_tied(loaded) is tie
    if tie:
        assert loaded.decoder.decoder.weight is loaded.encoder.encoder.weight
        assert loaded.encoder.encoder_dp.emb.weight is loaded.encoder.encoder.weight
    x = torch.randint(0, 40, (3, 11))
    assert torch.equal(logits(model, x), logits(loaded, x))
    # the embedding is stored once when tied
    from safetensors import safe_open

    with safe_open(str(out / MODEL_FILE), "pt") as f:
        keys = set(f.keys())
    assert ("decoder.decoder.weight" in keys) is (not tie)
    assert "encoder.encoder_dp.emb.weight" not in keys


def test_loaded_model_trains_with_tied_weights(tmp_path):
    out = save_model_dir(tmp_path / "m", tiny_model(), vocab_of(40))
    model, _, _ = load_model_dir(out)
    model.train()
    model.reset()
    x = torch.randint(0, 40, (2, 6))
    loss = F.cross_entropy(model(x).reshape(-1, 40), x.reshape(-1))
    loss.backward()
    with torch.no_grad():
        model.encoder.encoder.weight -= 0.1 * model.encoder.encoder.weight.grad
    assert torch.equal(model.decoder.decoder.weight, model.encoder.encoder.weight)


def test_refuses_to_overwrite(tmp_path):
    model, vocab = tiny_model(), vocab_of(40)
    target = save_model_dir(tmp_path / "m", model, vocab)
    before = snapshot(target)
    with pytest.raises(UserError, match="not empty"):
        save_model_dir(target, tiny_model(seed=1), vocab)
    assert snapshot(target) == before
    # an empty folder is fine; overwrite=True replaces a model directory
    (tmp_path / "empty").mkdir()
    save_model_dir(tmp_path / "empty", model, vocab)
    save_model_dir(target, tiny_model(seed=1), vocab, overwrite=True)
    assert snapshot(target) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "m"]
    # ... but never a folder that is not a model directory, nor a file
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a model directory"):
        save_model_dir(other, model, vocab, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        save_model_dir(tmp_path / "file", model, vocab, overwrite=True)


def test_failed_save_leaves_nothing(tmp_path):
    def boom(_):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_model_dir(tmp_path / "m", tiny_model(), vocab_of(40), extra=boom)
    assert list(tmp_path.iterdir()) == []


def _corrupt(folder, name, how):
    p = folder / name
    if how == "truncate":
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif how == "delete":
        p.unlink()
    else:
        p.write_text(how)


@pytest.mark.parametrize(
    "name, how, needle",
    [
        (MODEL_FILE, "truncate", "safetensors"),
        (MODEL_FILE, "delete", "model.safetensors missing"),
        (MODEL_FILE, "not safetensors at all", "safetensors"),
        (CONFIG_FILE, "{not json", "not valid JSON"),
        (CONFIG_FILE, "[1, 2]", "JSON object"),
        (CONFIG_FILE, "delete", "config.json missing"),
        (VOCAB_FILE, '{"a": 1}', "list of strings"),
        (VOCAB_FILE, "[1, 2, 3]", "list of strings"),
        (VOCAB_FILE, "not json", "JSON"),
        (VOCAB_FILE, json.dumps(vocab_of(39)), "vocab_size 40"),
    ],
)
def test_corrupt_files_are_user_errors(tmp_path, name, how, needle):
    out = save_model_dir(tmp_path / "m", tiny_model(), vocab_of(40))
    _corrupt(out, name, how)
    with pytest.raises(UserError, match=needle):
        load_model_dir(out)


@pytest.mark.parametrize(
    "edit, needle",
    [
        ({"emb_sz": 10}, "shape"),
        ({"n_layers": 3}, "missing"),
        ({"tie_weights": False}, "missing decoder.decoder.weight"),
        ({"n_hid": "big"}, "positive integer"),
    ],
)
def test_config_that_disagrees_with_the_weights(tmp_path, edit, needle):
    out = save_model_dir(tmp_path / "m", tiny_model(), vocab_of(40))
    config = json.loads((out / CONFIG_FILE).read_text())
    config["architecture"].update(edit)
    (out / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UserError, match=needle):
        load_model_dir(out)


def test_wrong_task_is_refused(tmp_path):
    out = save_model_dir(tmp_path / "m", tiny_model(), vocab_of(40))
    config = json.loads((out / CONFIG_FILE).read_text())
    config["task"] = "classifier"
    (out / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UserError, match="language_model"):
        load_model_dir(out)


def test_load_lm_sources(tmp_path, fixture_lm):
    model, itos, info = fixture_lm
    assert info["kind"] == "fastai" and len(itos) == model.vocab_sz == 2008
    with pytest.raises(UserError, match="--vocab"):
        load_lm(LM / "lm_v2.pth")
    with pytest.raises(UserError, match="no such"):
        load_lm(tmp_path / "nothing")
    short = tmp_path / "short.pkl"
    short.write_bytes(pickle.dumps(itos[:-8]))
    with pytest.raises(UserError, match="2000 tokens"):
        load_lm(LM / "lm_v2.pth", short)
    # fastai file -> our directory -> the same logits; a directory refuses --vocab
    out = save_model_dir(tmp_path / "m", model, itos)
    again, itos2, info2 = load_lm(out)
    assert itos2 == itos and info2["kind"] == "model_dir"
    x = torch.randint(0, 2008, (2, 9))
    assert torch.equal(logits(model, x), logits(again, x))
    with pytest.raises(UserError, match="own vocab.json"):
        load_lm(out, LM / "itos.pkl")
    # drop_mult rebuilds fastai's dropouts, scaled
    scaled, _, _ = load_lm(out, drop_mult=0.5)
    assert scaled.cfg.output_p == pytest.approx(0.05) and scaled.cfg.emb_sz == 32


# ---------------------------------------------------------------------------------------------
# Evaluation


def one_by_one(model: LanguageModel, doc: np.ndarray) -> tuple[float, int]:
    """Summed loss of one document read alone, in a single call (the definition)."""
    x = torch.as_tensor(doc, dtype=torch.int64)[None]
    out = logits(model, x[:, :-1])[0]
    return float(F.cross_entropy(out, x[0, 1:], reduction="sum")), len(doc) - 1


def test_doc_losses_match_fastai(fixture_lm):
    model, itos, _ = fixture_lm
    exp = json.loads(need(LM / "expected.json").read_text())
    df = pd.read_csv(need(DATA / "imdb_sample" / "texts.csv"), keep_default_na=False)
    stoi = {t: i for i, t in enumerate(itos)}
    tok = Tokenizer()
    docs = [np.array([stoi.get(t, 0) for t in tok(df.text[c["row"]])]) for c in exp["cases"]]
    assert [len(d) for d in docs] == [c["n_tokens"] for c in exp["cases"]]
    want = np.array([c["loss"] for c in exp["cases"]])
    for bs, bptt in [(64, 200), (3, 17), (1, 10_000)]:
        got = doc_losses(model, docs, bs=bs, bptt=bptt, amp="off")  # fastai's are fp32
        assert np.abs(got.loss - want).max() < 1e-4, (bs, bptt)
        assert got.tokens.tolist() == [len(d) - 1 for d in docs]


def test_lm_eval_is_exact_over_documents(fixture_lm):
    model, itos, _ = fixture_lm
    from ulmfit.data.sources import SourceSpec

    corpus = read_token_corpus(
        [SourceSpec(need(DATA / "imdb_sample" / "texts.csv"))], limit_docs=20
    )
    assert len(corpus) == 20
    docs, _ = model_docs(corpus, itos)
    sums, counts = zip(*(one_by_one(model, d) for d in docs))
    want = sum(sums) / sum(counts)
    for bs, bptt in [(64, 200), (4, 33)]:
        m = lm_eval(model, itos, corpus, bs=bs, bptt=bptt, amp="off")
        assert m["docs"] == 20 and m["tokens"] == sum(counts)
        assert m["loss"] == pytest.approx(want, rel=1e-6, abs=1e-6)
        assert m["perplexity"] == pytest.approx(np.exp(want), rel=1e-5)
        assert 0 < m["accuracy"] < 1
    # the mean over documents is token-weighted, not a mean of means
    per_doc = doc_losses(model, docs, amp="off")
    assert m["loss"] == pytest.approx(
        float((per_doc.loss * per_doc.tokens).sum() / per_doc.tokens.sum()), rel=1e-9
    )
    # the model's vocabulary decides the ids, whatever the corpus numbered them
    assert corpus.vocab != itos
    shuffled = lm_eval(model, itos, [d for d in docs[::-1]], amp="off")
    assert shuffled["loss"] == pytest.approx(m["loss"], rel=1e-6)


def test_lm_eval_skips_single_token_docs_and_errors_when_empty(fixture_lm):
    model, itos, _ = fixture_lm
    m = lm_eval(model, itos, [np.array([2, 10, 11]), np.array([2])])
    assert m["docs"] == 1 and m["docs_skipped"] == 1 and m["tokens"] == 2
    with pytest.raises(UserError, match="nothing to evaluate"):
        lm_eval(model, itos, [np.array([2])])
    with pytest.raises(UserError, match="outside"):
        lm_eval(model, itos, [np.array([2, 5000])])


def test_corpus_helpers():
    ids = np.arange(10, dtype=np.uint16)
    offsets = np.array([0, 3, 3, 7, 10])
    assert reverse_docs(ids, offsets).tolist() == [2, 1, 0, 6, 5, 4, 3, 9, 8, 7]
    sub, off = gather_docs(ids, offsets, np.array([3, 0]))
    assert sub.tolist() == [7, 8, 9, 0, 1, 2] and off.tolist() == [0, 3, 6]
    assert sub.dtype == np.uint16
    train, valid = split_docs(100, 0.1, seed=3)
    assert len(valid) == 10 and len(train) == 90
    assert sorted(np.concatenate([train, valid]).tolist()) == list(range(100))
    assert np.array_equal(split_docs(100, 0.1, seed=3)[1], valid)
    assert len(split_docs(5, 0.1, seed=0)[1]) == 1  # at least one held out
    with pytest.raises(UserError):
        split_docs(1, 0.1, seed=0)


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_lm_eval_wiki30k_on_trec6(capsys, env_cache):
    weights, itos = need(WIKI / "lstm_fwd.pth"), need(WIKI / "itos.pkl")
    data = need(DATA / "trec6" / "test.csv")
    code, out, err = run(
        capsys, "lm-eval", weights, data, "--vocab", itos, "--json", "--limit-docs", 50
    )
    assert code == 0, err
    m = json.loads(out)
    assert m["docs"] == 50 and m["tokens"] > 300
    assert np.isfinite(m["perplexity"]) and 1 < m["perplexity"] < 30008
    assert m["loss"] == pytest.approx(np.log(m["perplexity"]))
    assert 0 < m["accuracy"] < 1 and m["unk_rate"] < 0.2


def test_cli_lm_eval_text_output_fixture(capsys, env_cache):
    code, out, err = run(
        capsys,
        "lm-eval",
        need(LM / "lm_v1.pth"),
        need(DATA / "imdb_sample" / "texts.csv"),
        "--vocab",
        LM / "itos.pkl",
        "--limit-docs",
        5,
    )
    assert code == 0, err
    assert out.startswith("loss ") and "perplexity" in out and "5 documents" in out


def test_finetune_lm_dry_run(capsys, env_cache, tmp_path):
    out = tmp_path / "ft"
    argv = ["finetune-lm", need(DATA / "imdb_sample" / "texts.csv")]
    argv += ["--pretrained", need(LM / "lm_v2.pth"), "--vocab", LM / "itos.pkl"]
    argv += ["--out", out, "--dry-run", "--json", "--cache-dir", env_cache, "--workers", 1]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    res = json.loads(stdout)
    for key in ("before", "after"):
        assert np.isfinite(res[key]["perplexity"]) and res[key]["docs"] >= 1
    assert 0 < res["vocab_remap"]["coverage"] <= 1
    assert_no_pickle(out)
    assert (out / "report.json").exists() and (out / "train" / "metrics.jsonl").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["pretrained"]["kind"] == "fastai" and report["dry_run"] is True
    assert report["config"]["drop_mult"] == 0.3 and report["config"]["moms"] == [0.8, 0.7, 0.8]
    assert [r["stage"] for r in report["history"]] == [0, 1]  # frozen, then unfrozen
    model, vocab, config = load_model_dir(out)
    assert config["meta"]["trained"] == "finetune_lm" and model.vocab_sz == len(vocab)
    assert vocab == json.loads((out / VOCAB_FILE).read_text())
    # the result is a MODEL for lm-eval, and evaluating it gives a finite number
    code, stdout, err = run(
        capsys, "lm-eval", out, DATA / "imdb_sample" / "texts.csv", "--limit-docs", 3, "--json"
    )
    assert code == 0, err
    assert np.isfinite(json.loads(stdout)["loss"])
    # a second run does not overwrite it
    before = snapshot(out)
    code, stdout, err = run(capsys, *argv)
    assert_user_error(code, stdout, err, "not empty")
    assert snapshot(out) == before


def test_pretrain_dry_run_backwards_then_finetune_from_it(capsys, env_cache, tmp_path):
    corpus = need(DATA / "wikipedia_en" / "valid.txt")
    out = tmp_path / "pt"
    argv = ["pretrain", corpus, "--out", out, "--dry-run", "--backwards", "--json"]
    argv += ["--emb-sz", 16, "--n-hid", 24, "--n-layers", 2, "--cache-dir", env_cache]
    argv += ["--workers", 1]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    res = json.loads(stdout)
    assert np.isfinite(res["after"]["loss"])
    assert_no_pickle(out)
    model, vocab, config = load_model_dir(out)
    assert config["direction"] == "bwd" and config["architecture"]["n_hid"] == 24
    assert model.encoder.cfg.n_layers == 2
    # fine-tuning a backward model stays backward
    ft = tmp_path / "ft"
    argv = ["finetune-lm", need(DATA / "trec6" / "test.csv"), "--pretrained", out]
    argv += ["--out", ft, "--dry-run", "--json", "--cache-dir", env_cache, "--workers", 1]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    assert load_model_dir(ft)[2]["direction"] == "bwd"
    assert json.loads((ft / "report.json").read_text())["pretrained"]["kind"] == "model_dir"


def test_bad_input_is_one_line_and_overwrites_nothing(capsys, env_cache, tmp_path):
    texts = need(DATA / "imdb_sample" / "texts.csv")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    fresh = tmp_path / "fresh"
    common = ["--cache-dir", env_cache, "--workers", 1, "--dry-run"]

    # a fastai .pth without its vocabulary
    code, o, e = run(
        capsys, "finetune-lm", texts, "--pretrained", LM / "lm_v2.pth", "--out", fresh, *common
    )
    assert_user_error(code, o, e, "--vocab")
    code, o, e = run(capsys, "lm-eval", LM / "lm_v2.pth", texts)
    assert_user_error(code, o, e, "--vocab")

    # vocabularies that are not a list of str
    bad_pkl = tmp_path / "bad.pkl"
    bad_pkl.write_bytes(pickle.dumps({"a": 1}))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("[1, 2, 3]")
    for bad in (bad_pkl, bad_json):
        code, o, e = run(
            capsys,
            "finetune-lm",
            texts,
            "--pretrained",
            LM / "lm_v2.pth",
            "--vocab",
            bad,
            "--out",
            fresh,
            *common,
        )
        assert_user_error(code, o, e, str(bad))

    # a corpus with no text
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n,a\n  ,b\n")
    code, o, e = run(capsys, "pretrain", empty, "--out", fresh, *common)
    assert_user_error(code, o, e, "no text")
    code, o, e = run(
        capsys,
        "finetune-lm",
        empty,
        "--pretrained",
        LM / "lm_v2.pth",
        "--vocab",
        LM / "itos.pkl",
        "--out",
        fresh,
        *common,
    )
    assert_user_error(code, o, e, "no text")
    assert not fresh.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    # an existing folder is never written into, with or without --overwrite
    code, o, e = run(capsys, "pretrain", texts, "--out", out, *common)
    assert_user_error(code, o, e, "not empty")
    code, o, e = run(capsys, "pretrain", texts, "--out", out, "--overwrite", *common)
    assert_user_error(code, o, e, "not a model directory")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    # settings out of range
    code, o, e = run(capsys, "pretrain", texts, "--out", fresh, "--bs", 0, *common)
    assert_user_error(code, o, e, "argument --bs: must be 1 or more")
    code, o, e = run(
        capsys,
        "finetune-lm",
        texts,
        "--pretrained",
        LM / "lm_v2.pth",
        "--vocab",
        LM / "itos.pkl",
        "--out",
        fresh,
        "--valid-pct",
        0,
        *common,
    )
    assert_user_error(code, o, e, "argument --valid-pct: must be above 0")


def test_lm_commands_parse_without_heavy_imports():
    import subprocess
    import sys

    from conftest import REPO

    code = (
        "import sys, ulmfit.cli\n"
        "p = ulmfit.cli.build_parser()\n"
        "p.parse_args(['lm-eval', 'm', 'x.csv', '--vocab', 'i.pkl', '--limit-docs', '5'])\n"
        "p.parse_args(['pretrain', 'c.txt', '--out', 'o', '--backwards', '--dry-run'])\n"
        "p.parse_args(['finetune-lm', 'a.csv', 'b.csv', '--pretrained', 'm', '--out', 'o'])\n"
        "print(sorted(m for m in ('torch', 'spacy', 'thinc') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
