"""Evaluating a language model (``ulmfit lm-eval``, and the before/after figures of training).

Evaluation reads every document on its own, from a fresh hidden state, and predicts its
tokens 2..n from their prefixes, so the figures do not depend on batch size or on which
documents happen to share a stream. Documents are still batched for speed: sorted by length,
padded at the end (the LSTM is causal, so end padding cannot change an earlier output) and
read in ``bptt``-token chunks with the hidden state carried; rows whose document has ended
are dropped from the batch as the chunks advance, so little is computed on padding.
Text is always numericalized with the *model's* vocabulary (unknown tokens -> xxunk = 0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ulmfit.corpus import reverse_docs, vocab_map
from ulmfit.errors import UserError
from ulmfit.models.awd_lstm import LanguageModel


def model_docs(
    data: object,
    model_vocab: Sequence[str],
    *,
    backwards: bool = False,
) -> tuple[list[np.ndarray], int]:
    """Documents as int64 arrays of the model's ids, and how many tokens became xxunk.

    ``data``: anything with ``ids``, ``offsets`` and ``vocab`` (a :class:`TokenCorpus` or a
    ``Prepared``), re-mapped through its vocabulary strings to the model's vocabulary; or a
    sequence of id arrays already in the model's vocabulary.
    """
    if hasattr(data, "ids") and hasattr(data, "offsets") and hasattr(data, "vocab"):
        offsets = np.asarray(data.offsets, dtype=np.int64)
        n = len(offsets) - 1
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
    if backwards:
        docs = [d[::-1].copy() for d in docs]
    vs = len(model_vocab)
    for i, d in enumerate(docs):
        if len(d) and (d.min() < 0 or d.max() >= vs):
            raise UserError(f"document {i}: token ids outside the model's vocabulary of {vs}")
    return docs, int(sum(np.count_nonzero(d == 0) for d in docs))


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
    amp: str = "auto",
) -> DocLosses:
    """Each document's next-token loss read alone from a fresh hidden state (``model.reset()``):
    ``model(doc[:-1])`` against ``doc[1:]``. Batched ``bs`` documents at a time (sorted by
    length, end-padded, padded targets ignored) in chunks of ``bptt`` tokens; exact up to
    float rounding. ``decode_rows`` caps the positions decoded at once (memory: rows x vocab).
    ``amp``: the model runs in that precision (:mod:`ulmfit.precision`), the losses in fp32."""
    from ulmfit.precision import resolve_precision

    if bs < 1 or bptt < 1:
        raise UserError(f"bs and bptt must be positive, got bs={bs}, bptt={bptt}")
    n = len(docs)
    pred = np.array([max(len(d) - 1, 0) for d in docs], dtype=np.int64)
    loss_sum = np.zeros(n, dtype=np.float64)
    correct = np.zeros(n, dtype=np.int64)
    order = np.argsort(-pred, kind="stable")
    order = order[pred[order] > 0]
    device = _device(model)
    autocast = resolve_precision(device.type, amp).autocast(device.type)
    was_training = model.training
    model.eval()
    enc, dec = model.encoder, model.decoder.decoder
    try:
        with torch.inference_mode(), autocast:
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
    backwards: bool = False,
    amp: str = "auto",
) -> dict:
    """Next-token ``loss`` (mean cross-entropy over every predicted token of every document),
    ``perplexity`` = exp(loss), top-1 ``accuracy``, ``tokens`` predicted, ``docs`` read and
    ``unk_rate`` (share of the text's tokens unknown to the model's vocabulary).

    ``data`` as for :func:`model_docs`; ``backwards`` reverses every document first (for a
    backward model). Each document is read alone from a fresh hidden state, in the precision
    ``amp`` gives the model's device (see :mod:`ulmfit.precision`)."""
    if len(vocab) != model.vocab_sz:
        raise UserError(
            f"the vocabulary has {len(vocab)} tokens but the model {model.vocab_sz} output rows"
        )
    t0 = time.perf_counter()
    docs, unk = model_docs(data, vocab, backwards=backwards)
    res = doc_losses(model, docs, bs=bs, bptt=bptt, amp=amp)
    n_tok = int(res.tokens.sum())
    if n_tok == 0:
        raise UserError("nothing to evaluate: no document has two tokens or more")
    loss = float(res.loss_sum.sum() / n_tok)
    from ulmfit.precision import resolve_precision

    precision = resolve_precision(_device(model).type, amp).record()
    total = int(sum(len(d) for d in docs))
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else math.inf,
        "accuracy": float(res.correct.sum() / n_tok),
        "tokens": n_tok,
        "docs": int(np.count_nonzero(res.tokens)),
        "docs_skipped": int(np.count_nonzero(res.tokens == 0)),
        "unk_rate": round(unk / max(1, total), 6),
        "precision": precision,
        "seconds": round(time.perf_counter() - t0, 3),
    }
