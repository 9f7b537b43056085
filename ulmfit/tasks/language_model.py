"""Language models: evaluate (``lm_eval``), pretrain from scratch, fine-tune on target text.

Evaluation reads every document on its own, from a fresh hidden state, and predicts its
tokens 2..n from their prefixes, so the figures do not depend on batch size or on which
documents happen to share a stream. Documents are still batched for speed: sorted by length,
padded at the end (the LSTM is causal, so end padding cannot change an earlier output) and
read in ``bptt``-token chunks with the hidden state carried; rows whose document has ended
are dropped from the batch as the chunks advance, so little is computed on padding.
Text is always numericalized with the *model's* vocabulary (unknown tokens -> xxunk = 0).

Training uses the engine in :mod:`ulmfit.train`; this module prepares the data (vocabulary,
held-out split, backward order), the model (vocabulary remap of pretrained weights) and the
ULMFiT schedule, and writes the model directory with a ``report.json``.

Resumable runs. Training happens in ``DIR.partial`` next to the target ``DIR``: ``run.json``
(the command, the settings that change the weights, content hashes of the data and of the
pretrained model), ``before.json`` (fine-tuning: held-out metrics of the untrained model,
measured once) and ``train/`` (the engine's ``checkpoint.pt``, replaced atomically after every
epoch, and its logs). With ``resume=True`` a run continues there -- finished stages are skipped
and the interrupted one continues from its last checkpoint on the same schedule, so the result
equals an uninterrupted run's -- after checking that ``run.json`` matches (else a UserError
naming the setting). Without it an existing ``DIR.partial`` is an error, never deleted. On
success the model directory is published in one rename, with the logs (not the checkpoint, a
pickle) in ``DIR/train``, and ``DIR.partial`` is removed. ``pretrain_lr_find`` and
``finetune_lm_lr_find`` run the learning-rate range test on the same model and data instead.

Several processes (``torchrun ... ulmfit pretrain``, see :mod:`ulmfit.train.distributed`):
every rank prepares the data (from the shared cache) and trains on its own contiguous slice
of the streams (``bs`` rows per rank, ``bs * world_size`` rows in all); rank 0 alone decides
whether to resume, writes ``DIR.partial``, evaluates, and publishes the model directory. The
other ranks return once training is over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ulmfit.devices import resolve_device
from ulmfit.errors import UserError
from ulmfit.models.awd_lstm import AWDLSTMConfig, LanguageModel

# ----------------------------------------------------------------------------------------
# Corpora in token strings, and their ids in a model's vocabulary
# ----------------------------------------------------------------------------------------


@dataclass
class TokenCorpus:
    """Documents as flat ids into ``vocab`` (any vocabulary: the corpus's own strings, or a
    :class:`~ulmfit.prepare.Prepared`'s vocabulary). ``Prepared`` has the same three fields."""

    ids: np.ndarray
    offsets: np.ndarray  # int64, n_docs + 1
    vocab: list[str]
    rows: np.ndarray | None = None  # each document's 0-based input row, when known

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def doc(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]


def head_texts(specs: list, n: int) -> list[str]:
    """The first ``n`` texts (rows with text) of the inputs, in order, reading no further."""
    from ulmfit.data.sources import iter_source

    texts: list[str] = []
    for spec in specs:
        for batch in iter_source(spec, chunk_rows=max(1, min(n, 1000))):
            texts.extend(batch.texts[: n - len(texts)])
            if len(texts) >= n:
                return texts
    return texts


def tokenize_texts(texts: Sequence[str]) -> TokenCorpus:
    """Tokenize a few texts in this process (fastai rules + spaCy), no cache."""
    from ulmfit.text.tokenize import Tokenizer

    tok = Tokenizer()
    stoi: dict[str, int] = {}
    flat: list[int] = []
    offsets = [0]
    for toks in tok.tokenize_batch(list(texts)):
        flat.extend(stoi.setdefault(t, len(stoi)) for t in toks)
        offsets.append(len(flat))
    return TokenCorpus(
        np.asarray(flat, dtype=np.int64), np.asarray(offsets, dtype=np.int64), list(stoi)
    )


def read_token_corpus(
    specs: list,
    *,
    limit_docs: int | None = None,
    workers: int = 0,
    cache_dir: Path | None = None,
    progress: bool | None = None,
) -> TokenCorpus:
    """The full token strings of the inputs (no vocabulary cut, so nothing the model knows is
    lost to the corpus's own min_freq). With ``limit_docs`` only that many rows are read and
    tokenized here; otherwise the cached, parallel tokenize stage of ``prepare`` is used."""
    if limit_docs is not None:
        if limit_docs < 1:
            raise UserError(f"--limit-docs must be 1 or more, got {limit_docs}")
        from ulmfit.export import texts_tokens
        from ulmfit.prepare import is_dataset

        if len(specs) == 1 and is_dataset(specs[0]):  # its tokens: no spaCy needed
            return TokenCorpus(*texts_tokens(specs[0], head_texts(specs, limit_docs)))
        return tokenize_texts(head_texts(specs, limit_docs))
    from ulmfit.prepare import PrepareConfig, tokenize_stage

    entry, _ = tokenize_stage(
        specs, PrepareConfig(workers=workers, cache_dir=cache_dir, progress=progress)
    )
    meta = json.loads((entry / "manifest.json").read_text())["meta"]
    strings = json.loads((entry / "strings.json").read_text(encoding="utf-8"))
    ids = (
        np.memmap(entry / "ids.i32", dtype=np.int32, mode="r")
        if meta["tokens"]
        else np.zeros(0, dtype=np.int32)
    )
    return TokenCorpus(ids, np.load(entry / "offsets.npy"), strings, np.load(entry / "rows.npy"))


def vocab_map(src: Sequence[str], dst: Sequence[str]) -> np.ndarray:
    """``table[i]`` = id in ``dst`` of ``src[i]`` (0 = xxunk when ``dst`` lacks it)."""
    stoi = {t: i for i, t in enumerate(dst)}
    return np.fromiter((stoi.get(t, 0) for t in src), dtype=np.int64, count=len(src))


def union_vocab(pretrained: Sequence[str], target: Sequence[str]) -> list[str]:
    """The pretrained vocabulary (same order, so its rows copy one to one) followed by the
    target tokens it lacks, in the target's order."""
    have = set(pretrained)
    return [*pretrained, *(t for t in target if t not in have)]


def reverse_docs(ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Every document's tokens in reverse order (documents stay where they are)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    base = int(offsets[0])
    lengths = np.diff(offsets)
    n = int(lengths.sum())
    if n == 0:
        return np.asarray(ids[base:base], dtype=ids.dtype)
    starts = np.repeat(offsets[:-1], lengths)
    ends = np.repeat(offsets[1:], lengths)
    pos = np.arange(base, base + n, dtype=np.int64)
    return np.asarray(ids)[starts + ends - 1 - pos]


def gather_docs(
    ids: np.ndarray, offsets: np.ndarray, idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Documents ``idx`` (in that order) as a new contiguous ``(ids, offsets)`` pair."""
    offsets = np.asarray(offsets, dtype=np.int64)
    idx = np.asarray(idx, dtype=np.int64)
    starts, ends = offsets[idx], offsets[idx + 1]
    lengths = ends - starts
    new_off = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_off[1:])
    total = int(new_off[-1])
    if total == 0:
        return np.zeros(0, dtype=ids.dtype), new_off
    src = np.repeat(starts - new_off[:-1], lengths) + np.arange(total, dtype=np.int64)
    return np.asarray(ids[src]), new_off


def model_docs(
    data: object,
    model_vocab: Sequence[str],
    *,
    limit_docs: int | None = None,
    backwards: bool = False,
) -> tuple[list[np.ndarray], int]:
    """Documents as int64 arrays of the model's ids, and how many tokens became xxunk.

    ``data``: anything with ``ids``, ``offsets`` and ``vocab`` (a :class:`TokenCorpus` or a
    ``Prepared``), re-mapped through its vocabulary strings to the model's vocabulary; or a
    sequence of id arrays already in the model's vocabulary.
    """
    if hasattr(data, "ids") and hasattr(data, "offsets") and hasattr(data, "vocab"):
        offsets = np.asarray(data.offsets, dtype=np.int64)
        n = len(offsets) - 1 if limit_docs is None else min(limit_docs, len(offsets) - 1)
        offsets = offsets[: n + 1]
        src_vocab = list(data.vocab)
        flat = np.asarray(data.ids[offsets[0] : offsets[-1]], dtype=np.int64)
        rel = offsets - offsets[0]
        if src_vocab != list(model_vocab):
            table = vocab_map(src_vocab, model_vocab)
            unk = int(np.count_nonzero(table[flat] == 0))
            flat = table[flat]
        else:
            unk = int(np.count_nonzero(flat == 0))
        if backwards:
            flat = reverse_docs(flat, rel)
        docs = [flat[rel[i] : rel[i + 1]] for i in range(n)]
        return docs, unk
    docs = [np.asarray(d, dtype=np.int64) for d in data]  # type: ignore[union-attr]
    if limit_docs is not None:
        docs = docs[:limit_docs]
    if backwards:
        docs = [d[::-1].copy() for d in docs]
    vs = len(model_vocab)
    for i, d in enumerate(docs):
        if len(d) and (d.min() < 0 or d.max() >= vs):
            raise UserError(f"document {i}: token ids outside the model's vocabulary of {vs}")
    return docs, int(sum(np.count_nonzero(d == 0) for d in docs))


# ----------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------


@dataclass
class DocLosses:
    """Per document (input order): summed cross-entropy, predicted tokens, correct top-1."""

    loss_sum: np.ndarray  # float64
    tokens: np.ndarray  # int64 (len - 1, or 0 for a document of fewer than two tokens)
    correct: np.ndarray  # int64

    @property
    def loss(self) -> np.ndarray:
        """Mean loss of each document (nan where nothing was predicted)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.loss_sum / self.tokens


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def doc_losses(
    model: LanguageModel,
    docs: Sequence[np.ndarray],
    *,
    bs: int = 64,
    bptt: int = 200,
    pad_id: int = 1,
    decode_rows: int = 4096,
) -> DocLosses:
    """Each document's next-token loss read alone from a fresh hidden state (``model.reset()``):
    ``model(doc[:-1])`` against ``doc[1:]``. Batched ``bs`` documents at a time (sorted by
    length, end-padded, padded targets ignored) in chunks of ``bptt`` tokens; exact up to
    float rounding. ``decode_rows`` caps the positions decoded at once (memory: rows x vocab)."""
    if bs < 1 or bptt < 1:
        raise UserError(f"bs and bptt must be positive, got bs={bs}, bptt={bptt}")
    n = len(docs)
    pred = np.array([max(len(d) - 1, 0) for d in docs], dtype=np.int64)
    loss_sum = np.zeros(n, dtype=np.float64)
    correct = np.zeros(n, dtype=np.int64)
    order = np.argsort(-pred, kind="stable")
    order = order[pred[order] > 0]
    device = _device(model)
    was_training = model.training
    model.eval()
    enc, dec = model.encoder, model.decoder.decoder
    try:
        with torch.inference_mode():
            for b in range(0, len(order), bs):
                idx = order[b : b + bs]
                lens = pred[idx]  # descending
                width = int(lens[0])
                x = np.full((len(idx), width), pad_id, dtype=np.int64)
                y = np.full((len(idx), width), -1, dtype=np.int64)
                for r, i in enumerate(idx):
                    d = docs[i]
                    x[r, : lens[r]] = d[:-1]
                    y[r, : lens[r]] = d[1:]
                xt = torch.from_numpy(x).to(device)
                yt = torch.from_numpy(y).to(device)
                lens_t = torch.from_numpy(lens)
                sums = torch.zeros(len(idx), dtype=torch.float64)
                hits = torch.zeros(len(idx), dtype=torch.int64)
                model.reset()
                for s in range(0, width, bptt):
                    active = int((lens_t > s).sum())  # rows still inside their document
                    if enc.hidden is not None and enc.hidden[0][0].size(1) != active:
                        enc.hidden = [(h[:, :active], c[:, :active]) for h, c in enc.hidden]
                    out, _ = enc(xt[:active, s : s + bptt])
                    ys = yt[:active, s : s + bptt]
                    mask = ys >= 0
                    rows = mask.nonzero()[:, 0].cpu()
                    h, targets = out[mask], ys[mask]
                    for k in range(0, len(targets), decode_rows):
                        logits = dec(h[k : k + decode_rows]).float()
                        t = targets[k : k + decode_rows]
                        ce = F.cross_entropy(logits, t, reduction="none")
                        r = rows[k : k + decode_rows]
                        sums.index_add_(0, r, ce.double().cpu())
                        hits.index_add_(0, r, (logits.argmax(-1) == t).long().cpu())
                loss_sum[idx] = sums.numpy()
                correct[idx] = hits.numpy()
    finally:
        model.reset()
        model.train(was_training)
    return DocLosses(loss_sum, pred, correct)


def lm_eval(
    model: LanguageModel,
    vocab: Sequence[str],
    data: object,
    *,
    bs: int = 64,
    bptt: int = 200,
    limit_docs: int | None = None,
    backwards: bool = False,
) -> dict:
    """Next-token ``loss`` (mean cross-entropy over every predicted token of every document),
    ``perplexity`` = exp(loss), top-1 ``accuracy``, ``tokens`` predicted, ``docs`` read and
    ``unk_rate`` (share of the text's tokens unknown to the model's vocabulary).

    ``data`` as for :func:`model_docs`; ``backwards`` reverses every document first (for a
    backward model). Each document is read alone from a fresh hidden state."""
    if len(vocab) != model.vocab_sz:
        raise UserError(
            f"the vocabulary has {len(vocab)} tokens but the model {model.vocab_sz} output rows"
        )
    t0 = time.perf_counter()
    docs, unk = model_docs(data, vocab, limit_docs=limit_docs, backwards=backwards)
    res = doc_losses(model, docs, bs=bs, bptt=bptt)
    n_tok = int(res.tokens.sum())
    if n_tok == 0:
        raise UserError("nothing to evaluate: no document has two tokens or more")
    loss = float(res.loss_sum.sum() / n_tok)
    total = int(sum(len(d) for d in docs))
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else math.inf,
        "accuracy": float(res.correct.sum() / n_tok),
        "tokens": n_tok,
        "docs": int(np.count_nonzero(res.tokens)),
        "docs_skipped": int(np.count_nonzero(res.tokens == 0)),
        "unk_rate": round(unk / max(1, total), 6),
        "seconds": round(time.perf_counter() - t0, 3),
    }


# ----------------------------------------------------------------------------------------
# Training settings
# ----------------------------------------------------------------------------------------


@dataclass
class LMTrainConfig:
    """Settings shared by pretraining and fine-tuning (fastai's defaults unless noted)."""

    bs: int = 64  # streams per batch
    bptt: int = 70  # tokens per step
    lr: float = 2e-3  # peak learning rate of the (last) one-cycle
    epochs: int = 10
    drop_mult: float = 0.3  # scales AWD-LSTM's dropouts
    wd: float = 0.01  # decoupled weight decay
    moms: tuple[float, float, float] = (0.8, 0.7, 0.8)
    clip: float | None = 0.1  # max gradient norm
    alpha: float = 2.0  # activation regularisation (AR)
    beta: float = 1.0  # temporal activation regularisation (TAR)
    seed: int = 42
    valid_pct: float = 0.1  # share of documents held out (seeded)
    max_vocab: int = 60000
    min_freq: int = 3
    workers: int = 0  # tokenizer processes (0 = all cores)
    cache_dir: Path | None = None  # None = $ULMFIT_CACHE or ~/.cache/ulmfit
    device: str | None = None  # None = cuda if available
    compile: bool = False  # train through torch.compile (GPU; the first steps compile)
    overwrite: bool = False  # replace an existing model directory at the target
    dry_run: bool = False  # every stage on a handful of rows, a few steps per epoch
    progress: bool | None = None  # None = bars only when stderr is a terminal
    verbose: bool = True  # one line per epoch on stderr


@dataclass
class FinetuneLMConfig(LMTrainConfig):
    """ULMFiT stage 2 as in fastai's IMDb example: ``freeze(); fit_one_cycle(1, 2e-2)``, then
    ``unfreeze(); fit_one_cycle(10, 2e-3)``, moms (0.8, 0.7, 0.8), drop_mult 0.3."""

    frozen_epochs: int = 1
    frozen_lr: float = 2e-2
    # False: fastai's vocabulary, from the target texts only. True: every pretrained token
    # too, so words the target texts never (or rarely) show keep their pretrained rows.
    keep_pretrained_vocab: bool = False
    # the pretrained model's direction; None: its own (a fastai file: "bwd" in its name)
    direction: str | None = None


@dataclass
class PretrainConfig(LMTrainConfig):
    """A language model from scratch. Architecture: fastai's ``awd_lstm_lm_config``. Training
    as fastai's WT103 script (one-cycle, wd 0.1, clip 0.1), with drop_mult 0.3 and peak lr
    5e-3 at bs 64 (the shared wiki30k model used 1e-2 at bs 256 on the same corpus)."""

    lr: float = 5e-3
    wd: float = 0.1
    emb_sz: int = 400
    n_hid: int = 1152
    n_layers: int = 3
    backwards: bool = False


DRY_RUN_ROWS = 16  # rows read from each input by --dry-run
DRY_RUN_BATCHES = 4  # optimizer steps per epoch in a dry run


def _check_config(cfg: LMTrainConfig) -> None:
    bad = []
    for name in ("bs", "bptt", "epochs", "max_vocab", "min_freq"):
        if getattr(cfg, name) < 1:
            bad.append(f"{name} must be 1 or more, got {getattr(cfg, name)}")
    if getattr(cfg, "frozen_epochs", 0) < 0:
        bad.append(f"frozen_epochs must be 0 or more, got {cfg.frozen_epochs}")
    for name in ("lr", "frozen_lr"):
        if hasattr(cfg, name) and not getattr(cfg, name) > 0:
            bad.append(f"{name} must be positive, got {getattr(cfg, name)}")
    if problem := AWDLSTMConfig().drop_mult_problem(cfg.drop_mult):
        bad.append(problem)
    if not cfg.wd >= 0:
        bad.append(f"wd must be 0 or more, got {cfg.wd}")
    if cfg.clip is not None and not cfg.clip > 0:
        bad.append(f"clip must be positive (or None), got {cfg.clip}")
    if not 0 <= cfg.valid_pct < 1:
        bad.append(f"valid_pct must be in [0, 1), got {cfg.valid_pct}")
    if cfg.workers < 0:
        bad.append("workers must be 0 (all cores) or more")
    for name in ("emb_sz", "n_hid", "n_layers"):
        if hasattr(cfg, name) and getattr(cfg, name) < 1:
            bad.append(f"{name} must be 1 or more, got {getattr(cfg, name)}")
    if bad:
        raise UserError("; ".join(bad))
    resolve_device(cfg.device)


# ----------------------------------------------------------------------------------------
# Data for training
# ----------------------------------------------------------------------------------------


def split_docs(n_docs: int, valid_pct: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of document indices into (train, valid), both sorted; at least one
    document on each side when there are two or more and ``valid_pct > 0``."""
    if n_docs < 1:
        raise UserError("no documents to train on")
    n_valid = int(round(n_docs * valid_pct)) if valid_pct > 0 else 0
    if valid_pct > 0:
        if n_docs < 2:
            raise UserError("need at least two documents to hold some out for validation")
        n_valid = min(max(n_valid, 1), n_docs - 1)
    perm = np.random.default_rng(seed).permutation(n_docs)
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])


def head_specs(specs: list, n_rows: int, folder: Path) -> list:
    """Each input cut to its first ``n_rows`` texts, written as JSON Lines into ``folder``
    (for ``--dry-run``: the real reading, tokenizing and caching code on little data)."""
    from ulmfit.data.sources import SourceSpec, iter_source
    from ulmfit.export import head_dataset
    from ulmfit.prepare import is_dataset

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, spec in enumerate(specs):
        if is_dataset(spec):  # its tokens, cut: a dry run needs no spaCy either
            out.append(head_dataset(spec, n_rows, folder / f"head{k}"))
            continue
        texts: list[str] = []
        for batch in iter_source(spec, chunk_rows=n_rows):
            texts.extend(batch.texts[: n_rows - len(texts)])
            if len(texts) >= n_rows:
                break
        path = folder / f"head{k}.jsonl"
        path.write_text(
            "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts),
            encoding="utf-8",
        )
        out.append(SourceSpec(path=path, text_cols=["text"], fmt="jsonl"))
    return out


def corpus_folder(specs: list) -> tuple[list, list | None]:
    """A folder holding ``train.txt[.gz]`` (like ``wikipedia_en``) means its train split, with
    its ``valid.txt[.gz]`` for validation; other inputs are returned unchanged."""
    from dataclasses import replace

    out, valid = [], []
    for spec in specs:
        p = Path(spec.path)
        train = next((p / n for n in ("train.txt", "train.txt.gz") if (p / n).is_file()), None)
        if p.is_dir() and train is not None:
            out.append(replace(spec, path=train, fmt=None))
            v = next((p / n for n in ("valid.txt", "valid.txt.gz") if (p / n).is_file()), None)
            if v is not None:
                valid.append(replace(spec, path=v, fmt=None))
        else:
            out.append(spec)
    return out, (valid or None)


def _prepare(specs: list, cfg: LMTrainConfig):
    from ulmfit.prepare import PrepareConfig, prepare
    from ulmfit.text.vocab import VocabConfig

    return prepare(
        specs,
        PrepareConfig(
            workers=cfg.workers,
            vocab=VocabConfig(max_vocab=cfg.max_vocab, min_freq=cfg.min_freq),
            cache_dir=cfg.cache_dir,
            progress=cfg.progress,
        ),
    )


def _lm_loader(ids: np.ndarray, offsets: np.ndarray, cfg: LMTrainConfig, train: bool):
    """fastai v2's LM batches; ``bs`` lowered for a corpus too short to fill ``bs`` rows."""
    from ulmfit.loaders import FewBatches, LMLoader

    n_tok = int(offsets[-1] - offsets[0])
    if n_tok < 2:
        raise UserError(f"the {'training' if train else 'validation'} text has too few tokens")
    from ulmfit.train import distributed

    d = distributed.info()
    if n_tok - 1 < d.world_size:
        raise UserError(f"the {'training' if train else 'validation'} text is too short to share")
    bs = min(cfg.bs, (n_tok - 1) // d.world_size)
    loader = LMLoader(
        ids,
        offsets,
        bs=bs,
        bptt=cfg.bptt,
        shuffle=train,
        seed=cfg.seed,
        rank=d.rank,
        world_size=d.world_size,
    )
    return FewBatches(loader, DRY_RUN_BATCHES) if cfg.dry_run and train else loader


_STREAM_CHUNK = 1 << 24  # tokens copied at a time by train_stream: flat memory


def train_stream(
    data, idx: np.ndarray, backwards: bool, cache_dir: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    """The training documents ``idx`` of a prepared corpus as a memory-mapped ``(ids,
    offsets)`` pair, never a copy in RAM, so a corpus larger than memory can be pretrained on.

    Every document in order, forwards: the prepared corpus itself. Otherwise (a held-out
    split, or a backward model) the documents are copied, reversed if asked, in chunks of
    ``_STREAM_CHUNK`` tokens into a cache entry keyed by the corpus entry, the documents and
    the direction (every rank of a torchrun job, and a resumed run, reuse it)."""
    from ulmfit.cache import Cache, key_of

    offsets = np.asarray(data.offsets, dtype=np.int64)
    idx = np.asarray(idx, dtype=np.int64)
    if not backwards and np.array_equal(idx, np.arange(len(offsets) - 1)):
        return data.ids, offsets
    digest = hashlib.sha256(idx.tobytes()).hexdigest()
    key = key_of({"v": 1, "data": data.path.name, "docs": digest, "backwards": backwards})
    lengths = offsets[idx + 1] - offsets[idx]
    new_off = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_off[1:])
    total = int(new_off[-1])

    def write(tmp: Path) -> dict:
        np.save(tmp / "offsets.npy", new_off)
        if total == 0:
            np.save(tmp / "ids.npy", np.zeros(0, dtype=data.ids.dtype))
            return {"docs": len(idx), "tokens": 0}
        out = np.lib.format.open_memmap(
            tmp / "ids.npy", mode="w+", dtype=data.ids.dtype, shape=(total,)
        )
        a = 0
        while a < len(idx):
            b = int(np.searchsorted(new_off, new_off[a] + _STREAM_CHUNK, side="right")) - 1
            b = min(max(b, a + 1), len(idx))
            ids, off = gather_docs(data.ids, offsets, idx[a:b])
            if backwards:
                ids = reverse_docs(ids, off)
            out[new_off[a] : new_off[b]] = ids
            a = b
        out.flush()
        del out
        return {"docs": len(idx), "tokens": total}

    entry, _ = Cache(cache_dir).build("lm_train", key, write)
    return np.load(entry / "ids.npy", mmap_mode="r"), np.load(entry / "offsets.npy")


def _stream(docs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in docs], out=offsets[1:])
    ids = np.concatenate(docs) if len(docs) else np.zeros(0, dtype=np.int64)
    return ids, offsets


def _device_of(cfg: LMTrainConfig) -> torch.device:
    """``cfg.device`` (default cuda if available); under torchrun a bare ``cuda`` is this
    process's GPU (``LOCAL_RANK``)."""
    from ulmfit.train import distributed

    return distributed.device_for(cfg.device, distributed.info().local_rank)


def _learner(model, train_loader, valid_loader, cfg: LMTrainConfig, log_dir: Path):
    from ulmfit.train import Learner, LMTask, TrainConfig

    tc = TrainConfig(
        moms=tuple(cfg.moms),
        wd=cfg.wd,
        clip=cfg.clip,
        seed=cfg.seed,
        device=str(_device_of(cfg)),
        compile=cfg.compile,
        progress=cfg.progress,
        verbose=cfg.verbose,
    )
    return Learner(
        model,
        train_loader,
        valid_loader,
        LMTask(alpha=cfg.alpha, beta=cfg.beta),
        out_dir=log_dir,
        config=tc,
    )


TRAIN_LOG_DIR = "train"  # metrics.jsonl, steps.jsonl, loss.png inside the model directory
REPORT_FILE = "report.json"


def _corpus_summary(data) -> dict:
    m = data.meta
    return {
        "inputs": [i["path"] for i in m["inputs"]],
        "docs": m["docs"],
        "tokens": m["tokens"],
        "vocab_size": m["vocab_size"],
        "unk_rate": m["unk_rate"],
    }


def _result(out: Path, report: dict) -> dict:
    return {
        "out": str(out),
        "report": str(out / REPORT_FILE),
        "before": report.get("before"),
        "after": report.get("after"),
        "vocab_remap": report.get("vocab_remap"),
        "training_log": str(out / TRAIN_LOG_DIR / "metrics.jsonl"),
        "resumed": report.get("resumed", False),
        "seconds": report["seconds"],
    }


def _worker_result(out: Path, resumed: bool, t0: float) -> dict:
    """What a rank other than 0 returns: it trained, rank 0 writes and reports."""
    from ulmfit.train import distributed

    return {
        "out": str(out),
        "report": str(out / REPORT_FILE),
        "rank": distributed.rank(),
        "resumed": resumed,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _jsonable(cfg) -> dict:
    from dataclasses import asdict

    d = asdict(cfg)
    return {
        k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
        for k, v in d.items()
    }


def _say(cfg: LMTrainConfig, msg: str) -> None:
    if cfg.verbose:
        print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# The training folder DIR.partial: resumable until the model directory is published
# ----------------------------------------------------------------------------------------

PARTIAL_SUFFIX = ".partial"
RUN_FILE = "run.json"  # the settings a --resume must repeat
BEFORE_FILE = "before.json"  # fine-tuning: held-out metrics of the untrained model
LR_FIND_SUFFIX = ".lr_find.png"
_RUN_FORMAT = 1
# Settings that do not change the trained weights; a resumed run may use other values.
_FREE_SETTINGS = ("workers", "cache_dir", "device", "overwrite", "progress", "verbose")
_WHAT_DIFFERS = {
    "format": "it was written by another version of ulmfit",
    "data": "the training data differ (other files or contents, text columns, or vocabulary "
    "settings)",
    "valid": "the --valid corpus differs",
    "pretrained": "the --pretrained model (or its --vocab) differs",
}


def partial_dir(out_dir: Path | str) -> Path:
    """``DIR.partial`` next to the target ``DIR``: where a run keeps its run.json, checkpoint
    and logs until the model directory is published."""
    p = Path(out_dir)
    if p.name in ("", ".", ".."):
        p = Path(os.path.abspath(p))
    return p.with_name(p.name + PARTIAL_SUFFIX)


def lr_find_plot_path(out_dir: Path | str) -> Path:
    """Default plot of ``--lr-find``: ``DIR.lr_find.png`` next to the target ``DIR``."""
    p = partial_dir(out_dir)
    return p.with_name(p.name[: -len(PARTIAL_SUFFIX)] + LR_FIND_SUFFIX)


def _begin_run(kind: str, cfg, out_dir, resume: bool):
    """What ``pretrain`` and ``finetune_lm`` start with: the process group, this rank's
    config (quiet off rank 0), the clock, the run's settings and, decided on rank 0, the
    target folder, its ``.partial`` folder and the unfinished run's record (or ``None``)."""
    from ulmfit.models.io import check_target
    from ulmfit.train import distributed

    distributed.init(cfg.device)
    main = distributed.is_main()
    cfg = cfg if main else replace(cfg, verbose=False, progress=False)
    t0 = time.perf_counter()
    run = _run_settings(kind, cfg)

    def open_run() -> tuple[Path, Path, dict | None]:
        out = check_target(Path(out_dir), cfg.overwrite)
        return (out, *_open_partial(out, run, resume, cfg))

    return cfg, main, t0, run, distributed.on_main(open_run)


def _run_settings(command: str, cfg: LMTrainConfig) -> dict:
    config = {k: v for k, v in _jsonable(cfg).items() if k not in _FREE_SETTINGS}
    return {"format": _RUN_FORMAT, "command": command, "config": config}


def _show(v: object) -> str:
    return "unset" if v is None else json.dumps(v)


def _check_same(partial: Path, old: dict, new: dict, keys: Sequence[str]) -> None:
    """UserError naming the first setting of ``keys`` where ``new`` differs from ``old``."""
    new = json.loads(json.dumps(new))  # tuples -> lists, as stored
    for key in keys:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "config" and isinstance(a, dict) and isinstance(b, dict):
            k = next(k for k in [*b, *a] if a.get(k) != b.get(k))
            what = f"--{k.replace('_', '-')} was {_show(a.get(k))} there, now {_show(b.get(k))}"
        elif key == "command":
            what = f"it is an unfinished {_show(a)} run, this is {_show(b)}"
        else:
            what = _WHAT_DIFFERS.get(key, f"{key} differs")
        raise UserError(
            f"cannot resume {partial}: {what}; repeat the original settings with --resume, "
            f"or remove {partial} to start over"
        )


def _read_run(partial: Path) -> dict:
    file = partial / RUN_FILE
    if not partial.is_dir():
        raise UserError(f"{partial}: exists and is not a folder; remove it to start over")
    try:
        run = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"{partial}: no {RUN_FILE}, not a ulmfit training folder; remove it to start over"
        ) from None
    except (OSError, ValueError) as e:
        raise UserError(f"{file}: cannot read ({e}); remove {partial} to start over") from None
    if not isinstance(run, dict):
        raise UserError(f"{file}: expected a JSON object; remove {partial} to start over")
    return run


def _open_partial(
    out_dir: Path, run: dict, resume: bool, cfg: LMTrainConfig
) -> tuple[Path, dict | None]:
    """Before any heavy work: ``(DIR.partial, its run.json)`` to resume, or ``(DIR.partial,
    None)`` to start fresh. An unfinished run is never discarded silently."""
    partial = partial_dir(out_dir)
    exists = partial.exists() or partial.is_symlink()
    if not resume:
        if exists:
            raise UserError(
                f"{partial}: an unfinished training run for --out {out_dir} is there; pass "
                "--resume to continue it, or remove that folder to start over"
            )
        return partial, None
    if not exists:
        _say(cfg, f"--resume: no unfinished run in {partial}; starting fresh")
        return partial, None
    previous = _read_run(partial)
    _check_same(partial, previous, run, ("format", "command", "config"))
    return partial, previous


def _create_partial(partial: Path, run: dict, before: dict | None = None) -> None:
    """``DIR.partial`` with its run.json (and before.json), created in one rename."""
    from ulmfit.train.learner import _atomic_write

    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{partial.parent}: cannot create the folder: {e.strerror}") from None
    tmp = partial.parent / f".{partial.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        files = {RUN_FILE: run, **({BEFORE_FILE: before} if before is not None else {})}
        for name, obj in files.items():
            text = json.dumps(obj, indent=1)
            _atomic_write(tmp / name, lambda f, text=text: f.write(text), "w")
        os.rename(tmp, partial)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{partial}: cannot create the training folder: {e}") from None


@contextmanager
def _keep_if_resumable(partial: Path, created: bool) -> Iterator[None]:
    """A run that fails before its first checkpoint leaves nothing behind (if it created
    ``DIR.partial``); after that, ``DIR.partial`` stays for ``--resume``."""
    from ulmfit.train.learner import CHECKPOINT

    try:
        yield
    except BaseException:
        if created and not (partial / TRAIN_LOG_DIR / CHECKPOINT).exists():
            shutil.rmtree(partial, ignore_errors=True)
        raise


def _publish_run(
    partial: Path,
    out_dir: Path,
    overwrite: bool,
    model: LanguageModel,
    vocab: list[str],
    meta: dict,
    direction: str,
    report: dict,
) -> None:
    """The model directory, with the training logs (not the checkpoint: a torch pickle) and
    the report, published in one rename; then ``DIR.partial`` is removed."""
    from ulmfit.models.io import staged_dir, write_model_files
    from ulmfit.train.learner import LOSS_PLOT, METRICS, STEPS

    with staged_dir(out_dir, overwrite) as tmp:
        write_model_files(tmp, model, vocab, meta, direction)
        logs = tmp / TRAIN_LOG_DIR
        logs.mkdir()
        for name in (METRICS, STEPS, LOSS_PLOT):
            src = partial / TRAIN_LOG_DIR / name
            if src.is_file():
                shutil.copyfile(src, logs / name)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1), encoding="utf-8")
    shutil.rmtree(partial, ignore_errors=True)


# ----------------------------------------------------------------------------------------
# Model and data as training uses them (shared by training and --lr-find)
# ----------------------------------------------------------------------------------------


@dataclass
class _Setup:
    model: LanguageModel
    vocab: list[str]
    train_loader: object
    valid_loader: object | None
    valid_docs: list[np.ndarray]
    direction: str
    keys: dict  # what a resumed run must match besides the settings (content hashes)
    report: dict  # report.json's description of the data and model


def _pretrain_setup(specs: list, cfg: PretrainConfig, valid: list | None) -> _Setup:
    import tempfile

    from ulmfit.data.sources import file_fingerprint

    specs, folder_valid = corpus_folder(specs)
    valid = valid if valid is not None else folder_valid
    device = _device_of(cfg)
    with tempfile.TemporaryDirectory(prefix="ulmfit-dry-") as scratch:
        if cfg.dry_run:
            specs = head_specs(specs, DRY_RUN_ROWS, Path(scratch))
            if valid is not None:
                valid = head_specs(valid, DRY_RUN_ROWS, Path(scratch) / "v")
        data = _prepare(specs, cfg)
        vocab = data.vocab
        valid_keys = None
        if valid is not None:
            vcorpus = read_token_corpus(
                valid, workers=cfg.workers, cache_dir=cfg.cache_dir, progress=cfg.progress
            )
            valid_keys = [file_fingerprint(s) for s in valid]
            train_idx = np.arange(len(data))
            valid_docs, _ = model_docs(vcorpus, vocab, backwards=cfg.backwards)
        else:
            train_idx, valid_idx = split_docs(len(data), cfg.valid_pct, cfg.seed)
            valid_docs, _ = model_docs(
                TokenCorpus(*gather_docs(data.ids, data.offsets, valid_idx), vocab),
                vocab,
                backwards=cfg.backwards,
            )
        train_ids, train_off = train_stream(data, train_idx, cfg.backwards, cfg.cache_dir)
    torch.manual_seed(cfg.seed)
    arch = AWDLSTMConfig(emb_sz=cfg.emb_sz, n_hid=cfg.n_hid, n_layers=cfg.n_layers)
    model = LanguageModel(len(vocab), arch.scaled(cfg.drop_mult)).to(device)
    train_loader = _lm_loader(train_ids, train_off, cfg, train=True)
    valid_loader = _lm_loader(*_stream(valid_docs), cfg, train=False) if valid_docs else None
    report = {
        "corpus": _corpus_summary(data),
        "split": {
            "train_docs": int(len(train_idx)),
            "valid_docs": len(valid_docs),
            "valid": [str(s.path) for s in valid] if valid is not None else None,
            "valid_pct": None if valid is not None else cfg.valid_pct,
            "seed": cfg.seed,
        },
    }
    return _Setup(
        model=model,
        vocab=vocab,
        train_loader=train_loader,
        valid_loader=valid_loader,
        valid_docs=valid_docs,
        direction="bwd" if cfg.backwards else "fwd",
        keys={"data": data.path.name, "valid": valid_keys},
        report=report,
    )


def _load_pretrained(pretrained: str | Path, vocab: str | Path | None, cfg: FinetuneLMConfig):
    """``(model, vocab, source info, content hash)`` of the pretrained language model."""
    from ulmfit.cache import file_sha256
    from ulmfit.models.io import MODEL_FILE, load_lm

    direction = getattr(cfg, "direction", None)
    base, old_vocab, source = load_lm(pretrained, vocab, cfg.drop_mult, direction)
    path = Path(source["path"])
    weights = path / MODEL_FILE if source["kind"] == "model_dir" else path
    h = hashlib.sha256()
    for f in (weights, Path(source["vocab"])):
        h.update(file_sha256(f).encode())
    return base, old_vocab, source, h.hexdigest()


def _finetune_setup(specs: list, loaded: tuple, cfg: FinetuneLMConfig) -> _Setup:
    import tempfile

    from ulmfit.models.io import stored_state
    from ulmfit.models.pretrained import remap_vocab, with_aliases

    base, old_vocab, source, digest = loaded
    device = _device_of(cfg)
    backwards = source["direction"] == "bwd"
    with tempfile.TemporaryDirectory(prefix="ulmfit-dry-") as scratch:
        if cfg.dry_run:
            specs = head_specs(specs, DRY_RUN_ROWS, Path(scratch))
        data = _prepare(specs, cfg)
        new_vocab, ids = data.vocab, data.ids
        if cfg.keep_pretrained_vocab:
            new_vocab = union_vocab(old_vocab, data.vocab)
            ids = vocab_map(data.vocab, new_vocab)[np.asarray(data.ids)]
        counts = np.bincount(np.asarray(ids), minlength=len(new_vocab))
        train_idx, valid_idx = split_docs(len(data), cfg.valid_pct, cfg.seed)
        train_ids, train_off = gather_docs(ids, data.offsets, train_idx)
        valid_ids, valid_off = gather_docs(ids, data.offsets, valid_idx)
    if backwards:
        train_ids = reverse_docs(train_ids, train_off)
        valid_ids = reverse_docs(valid_ids, valid_off)
    valid_docs = [valid_ids[valid_off[i] : valid_off[i + 1]] for i in range(len(valid_idx))]

    state, remap = remap_vocab(stored_state(base), old_vocab, new_vocab, counts)
    model = LanguageModel(len(new_vocab), base.cfg)
    model.load_state_dict(with_aliases(state), strict=True)
    model.to(device)
    report = {
        "pretrained": source,
        "data": _corpus_summary(data),
        "vocab_remap": {
            "target_size": remap.target_size,
            "found": remap.found,
            "coverage": remap.coverage,
            "token_coverage": remap.token_coverage,
            "summary": remap.summary(),
        },
        "split": {
            "train_docs": int(len(train_idx)),
            "valid_docs": int(len(valid_idx)),
            "valid_pct": cfg.valid_pct,
            "seed": cfg.seed,
        },
    }
    return _Setup(
        model=model,
        vocab=new_vocab,
        train_loader=_lm_loader(train_ids, train_off, cfg, train=True),
        valid_loader=_lm_loader(valid_ids, valid_off, cfg, train=False),
        valid_docs=valid_docs,
        direction=source["direction"],
        keys={"pretrained": digest, "data": data.path.name},
        report=report,
    )


def _check_finetune(cfg: FinetuneLMConfig) -> None:
    _check_config(cfg)
    if cfg.valid_pct <= 0:
        raise UserError("fine-tuning reports held-out perplexity: valid_pct must be above 0")


# ----------------------------------------------------------------------------------------
# Pretraining
# ----------------------------------------------------------------------------------------


def pretrain(
    specs: list,
    out_dir: Path | str,
    cfg: PretrainConfig | None = None,
    *,
    valid: list | None = None,
    resume: bool = False,
) -> dict:
    """Train an AWD-LSTM language model from scratch on the corpus ``specs`` and save it in
    ``out_dir``. Vocabulary from the corpus (max_vocab, min_freq); validation on ``valid``
    (read with the model's vocabulary) or on ``valid_pct`` of the documents held out.
    ``cfg.backwards`` reverses each document (a backward model, direction "bwd").

    Training runs in ``DIR.partial`` (see :func:`partial_dir`) with a checkpoint per epoch;
    ``resume`` continues an unfinished run there (same settings and data, else UserError)."""
    from ulmfit.train import distributed

    cfg = cfg or PretrainConfig()
    _check_config(cfg)
    cfg, main, t0, run, (out_dir, partial, previous) = _begin_run("pretrain", cfg, out_dir, resume)
    s = _pretrain_setup(specs, cfg, valid)
    run.update(s.keys)

    def start_run() -> None:
        if previous is not None:
            _check_same(partial, previous, run, ("data", "valid"))
            _say(cfg, f"--resume: continuing the unfinished run in {partial}")
        else:
            _create_partial(partial, run)

    distributed.on_main(start_run)
    with _keep_if_resumable(partial, created=previous is None and main):
        learn = _learner(s.model, s.train_loader, s.valid_loader, cfg, partial / TRAIN_LOG_DIR)
        epochs = 1 if cfg.dry_run else cfg.epochs
        learn.fit_one_cycle(
            epochs, cfg.lr, moms=tuple(cfg.moms), wd=cfg.wd, resume=previous is not None
        )
        if not main:  # rank 0 evaluates and publishes
            return _worker_result(out_dir, previous is not None, t0)
        after = lm_eval(s.model, s.vocab, s.valid_docs) if s.valid_docs else None
        report = {
            "task": "pretrain",
            "direction": s.direction,
            **s.report,
            "config": _jsonable(cfg),
            "after": after,
            "history": learn.history,
            "training_log": f"{TRAIN_LOG_DIR}/metrics.jsonl",
            "dry_run": cfg.dry_run,
            "resumed": previous is not None,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        meta = {"trained": "pretrain", "config": _jsonable(cfg), "valid": after}
        _publish_run(partial, out_dir, cfg.overwrite, s.model, s.vocab, meta, s.direction, report)
    return _result(out_dir, report)


# ----------------------------------------------------------------------------------------
# Fine-tuning (ULMFiT stage 2)
# ----------------------------------------------------------------------------------------


def finetune_lm(
    specs: list,
    pretrained: str | Path,
    out_dir: Path | str,
    cfg: FinetuneLMConfig | None = None,
    *,
    vocab: str | Path | None = None,
    resume: bool = False,
) -> dict:
    """Fine-tune the language model ``pretrained`` (a model directory, or a fastai ``.pth``
    with ``vocab``) on the texts of ``specs`` and save it in ``out_dir`` with a report.

    The target vocabulary is built from the target texts; pretrained rows are copied for the
    tokens both share and new tokens start at the mean row. ``valid_pct`` of the documents
    are held out (seeded) and evaluated document by document before and after training.

    Training runs in ``DIR.partial`` with a checkpoint per epoch; ``resume`` continues an
    unfinished run there: the finished stage is skipped, the interrupted one continues from its
    last checkpoint, and the "before" metrics are the ones measured when the run started."""
    from ulmfit.train import distributed

    cfg = cfg or FinetuneLMConfig()
    _check_finetune(cfg)
    cfg, main, t0, run, (out_dir, partial, previous) = _begin_run(
        "finetune_lm", cfg, out_dir, resume
    )
    loaded = _load_pretrained(pretrained, vocab, cfg)
    run["pretrained"] = loaded[3]
    if previous is not None:
        distributed.on_main(lambda: _check_same(partial, previous, run, ("pretrained",)))
    s = _finetune_setup(specs, loaded, cfg)
    del loaded
    run.update(s.keys)

    def start_run() -> dict | None:
        before = None
        if previous is not None:
            _check_same(partial, previous, run, ("data",))
            with contextlib.suppress(OSError, ValueError):
                before = json.loads((partial / BEFORE_FILE).read_text(encoding="utf-8"))
        if before is None:  # a fresh run (or a before.json removed by hand)
            before = lm_eval(s.model, s.vocab, s.valid_docs)
        if previous is None:
            _create_partial(partial, run, before)
        else:
            _say(cfg, f"--resume: continuing the unfinished run in {partial}")
        return before

    before = distributed.on_main(start_run)  # rank 0 measures, the others wait
    with _keep_if_resumable(partial, created=previous is None and main):
        learn = _learner(s.model, s.train_loader, s.valid_loader, cfg, partial / TRAIN_LOG_DIR)
        moms, again = tuple(cfg.moms), previous is not None
        frozen_epochs = min(cfg.frozen_epochs, 1) if cfg.dry_run else cfg.frozen_epochs
        if frozen_epochs:
            learn.freeze()
            learn.fit_one_cycle(frozen_epochs, cfg.frozen_lr, moms=moms, wd=cfg.wd, resume=again)
        learn.unfreeze()
        epochs = 1 if cfg.dry_run else cfg.epochs
        learn.fit_one_cycle(epochs, cfg.lr, moms=moms, wd=cfg.wd, resume=again)
        if not main:  # rank 0 evaluates and publishes
            return _worker_result(out_dir, again, t0)
        after = lm_eval(s.model, s.vocab, s.valid_docs)
        report = {
            "task": "finetune_lm",
            "direction": s.direction,
            **s.report,
            "config": _jsonable(cfg),
            "before": before,
            "after": after,
            "history": learn.history,
            "training_log": f"{TRAIN_LOG_DIR}/metrics.jsonl",
            "dry_run": cfg.dry_run,
            "resumed": previous is not None,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        meta = {
            "trained": "finetune_lm",
            "pretrained": s.report["pretrained"]["path"],
            "config": _jsonable(cfg),
            "valid_before": before,
            "valid_after": after,
        }
        _publish_run(partial, out_dir, cfg.overwrite, s.model, s.vocab, meta, s.direction, report)
    return _result(out_dir, report)


# ----------------------------------------------------------------------------------------
# Learning-rate range test on the model and data training would use
# ----------------------------------------------------------------------------------------


@dataclass
class LRFindConfig:
    """``--lr-find``: fastai's range test (rate from ``start_lr`` to ``end_lr`` over ``num_it``
    steps). ``plot``: where the PNG goes (None: ``DIR.lr_find.png`` next to ``--out``).
    ``stage`` (fine-tuning only): ``"frozen"`` tests the first stage (only the last layer group
    trains), ``"unfrozen"`` all groups, both on the remapped pretrained weights."""

    plot: Path | None = None
    stage: str = "frozen"
    start_lr: float = 1e-7
    end_lr: float = 10.0
    num_it: int = 100


def _lr_find(s: _Setup, cfg: LMTrainConfig, find: LRFindConfig, plot: Path, freeze: bool) -> dict:
    import tempfile

    from ulmfit.train import distributed

    if distributed.env_world()[1] > 1:
        raise UserError("--lr-find runs in one process: start it with python, not torchrun")

    with tempfile.TemporaryDirectory(prefix="ulmfit-lr-find-") as logs:
        learn = _learner(s.model, s.train_loader, None, cfg, Path(logs))
        if freeze:
            learn.freeze()
        res = learn.lr_find(
            start_lr=find.start_lr, end_lr=find.end_lr, num_it=find.num_it, plot=plot
        )
    return {
        "suggestion": res.suggestion,
        "steep": res.steep,
        "minimum": res.minimum,
        "plot": str(res.plot),
        "points": len(res.lrs),
    }


def pretrain_lr_find(
    specs: list,
    out_dir: Path | str,
    cfg: PretrainConfig | None = None,
    *,
    valid: list | None = None,
    find: LRFindConfig | None = None,
) -> dict:
    """The learning-rate range test on the freshly initialised model and the training split
    :func:`pretrain` would use; writes the plot only (nothing in ``out_dir`` or
    ``DIR.partial``). Returns ``suggestion`` (valley rule), ``steep``, ``minimum`` (the
    minimum's rate / 10), ``plot`` and ``points``."""
    cfg = cfg or PretrainConfig()
    find = find or LRFindConfig()
    _check_config(cfg)
    plot = Path(find.plot) if find.plot is not None else lr_find_plot_path(out_dir)
    s = _pretrain_setup(specs, cfg, valid)
    return _lr_find(s, cfg, find, plot, freeze=False)


def finetune_lm_lr_find(
    specs: list,
    pretrained: str | Path,
    out_dir: Path | str,
    cfg: FinetuneLMConfig | None = None,
    *,
    vocab: str | Path | None = None,
    find: LRFindConfig | None = None,
) -> dict:
    """The range test on the remapped pretrained model and the training split
    :func:`finetune_lm` would use, frozen as its first stage (``find.stage == "frozen"``) or
    not; writes the plot only. Returns as :func:`pretrain_lr_find`, plus ``stage``."""
    cfg = cfg or FinetuneLMConfig()
    find = find or LRFindConfig()
    _check_finetune(cfg)
    if find.stage not in ("frozen", "unfrozen"):
        raise UserError(f"lr_find stage must be frozen or unfrozen, got {find.stage!r}")
    plot = Path(find.plot) if find.plot is not None else lr_find_plot_path(out_dir)
    s = _finetune_setup(specs, _load_pretrained(pretrained, vocab, cfg), cfg)
    return {**_lr_find(s, cfg, find, plot, freeze=find.stage == "frozen"), "stage": find.stage}
