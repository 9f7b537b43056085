"""Which words drove a prediction: fastai v1's "intrinsic attention", and its HTML rendering.

fastai v1 (``TextClassificationInterpretation.intrinsic_attention``) embeds the text, runs the
encoder on the embeddings in one call, and back-propagates the predicted class's softmax
probability to the embedding vectors; a token's importance is the sum of the absolute values
of its gradient, divided by the largest over the text (so the most important token is 1).
:func:`explain` does the same on our classifier, in eval mode (no dropout):

* the score differentiated is the target class's softmax probability (single-label), the
  target label's sigmoid probability (multi-label; by default the most probable label) or the
  target value (regression; by default the first target);
* the document is read in one call, as in fastai v1 (gradients reach every token; the
  prediction is the same as the chunked one, whose hidden state is carried across chunks);
* an ensemble explains each member (a backward member's importances are put back in reading
  order) and averages their normalised importances, normalised again.

Importance is per fastai token (``xxbos``, ``xxmaj``, ...). For people, :func:`segments`
lays the importances over the text as typed: a marker that describes the next word (``xxmaj``,
``xxup``, ``xxrep 4 !``) gives its importance to that word (the larger of the two),
``xxbos`` / ``xxfld`` are not shown, and every word is found back in the original text, so the
segments, joined, are exactly the text (a token the rules changed beyond recognition, such as
``&amp;``, stays unshaded). :func:`render_html` escapes every piece of text it writes.
"""

from __future__ import annotations

import html

import numpy as np

from ulmfit.errors import UserError
from ulmfit.text.rules import BOS, EOS, FLD, PAD, TK_MAJ, TK_REP, TK_UP, TK_WREP

METHOD = (
    "intrinsic attention (fastai v1): |d score / d embedding| summed over the embedding, "
    "divided by its maximum over the text"
)
_HIDDEN = {BOS, EOS, PAD, FLD}  # not shown; their importance is not carried
_PREFIX = {TK_MAJ, TK_UP}  # describe the next token: their importance goes to it
_WINDOW = 32  # characters a word may be found past the previous one (markup the rules removed)


def embed(model, ids):
    """The embedding vectors of ``ids`` (1-D), as a leaf tensor ``(1, n, emb_sz)`` whose
    gradient is the explanation (in eval mode, embedding dropout is a plain lookup)."""
    return model.encoder.module.encoder_dp(ids[None]).detach().requires_grad_(True)


def forward_from_embeddings(model, emb):
    """fastai v1's forward from the embeddings: the logits ``(1, n_out)`` of a document read
    in one call, pooled over the positions the sentence encoder keeps (the last ``max_len``
    tokens, in whole chunks), so they are the logits of ``model(ids)``."""
    import torch

    from ulmfit.models.classifier import masked_concat_pool

    sent = model.encoder
    enc = sent.module
    enc.reset()
    out, _ = enc(emb, from_embeds=True)
    enc.reset()
    n = emb.shape[1]
    keep = 0 if sent.max_len is None else max(n - sent.max_len, 0)
    keep = -(-keep // sent.bptt) * sent.bptt
    out = out[:, keep:]
    mask = torch.zeros(out.shape[:2], dtype=torch.bool, device=out.device)
    return model.head(masked_concat_pool(out, mask))


def _score(kind: str, logits, target: int):
    if kind == "single":
        return logits.softmax(-1)[0, target]
    if kind == "multi":
        return logits.sigmoid()[0, target]
    return logits[0, target]


def _normalised(a: np.ndarray) -> np.ndarray:
    top = float(a.max()) if a.size else 0.0
    return a / top if top > 0 else a


def _target_index(predictor, scores: np.ndarray, target: str | None) -> int:
    names = predictor.targets if predictor.kind == "float" else predictor.classes
    if target is None:
        return 0 if predictor.kind == "float" else int(np.argmax(scores))
    if target not in names:
        raise UserError(f"{target!r} is not one of the model's outputs ({', '.join(names)})")
    return names.index(target)


def explain(predictor, text: str, target: str | None = None) -> dict:
    """The prediction for ``text`` and each token's importance for ``target`` (default: the
    predicted class; multi-label: the most probable label; regression: the first target).

    Returns ``{"text", "prediction", "target", "tokens", "weights", "known", "segments",
    "method"}``: ``weights[i]`` in [0, 1] is the importance of ``tokens[i]``; ``known[i]``
    says whether the model's vocabulary has that token (else it read xxunk); ``segments``
    (see :func:`segments`) is the text as typed with the importance of each word."""
    import torch

    from ulmfit.models.model_dir import mean_outputs

    if not isinstance(text, str):
        raise UserError(f"the text must be a string, got {type(text).__name__}")
    local = predictor.encode([text])
    tokens = predictor.tokens_of(local[0])
    n = len(tokens)
    runs = []
    with torch.enable_grad():
        for k, (model, _, mconfig) in enumerate(predictor.members):
            ids, _ = predictor.member_ids(k, local)
            # a pad id typed in the text is padding to the sentence encoder: left out here too
            real = np.flatnonzero(ids != model.encoder.pad_idx)
            x = torch.as_tensor(ids[real], dtype=torch.long, device=predictor.device)
            emb = embed(model, x) if len(real) else None
            with predictor.precision.autocast(x.device.type):
                logits = forward_from_embeddings(model, emb) if len(real) else None
            runs.append((logits, emb, real, mconfig.get("direction", "fwd") == "bwd"))
        outs = [
            r[0].detach().float().cpu().numpy()
            if r[0] is not None
            else np.zeros((1, predictor.n_out), dtype=np.float32)
            for r in runs
        ]
        scores = predictor.scores_of(mean_outputs(predictor.kind, outs))[0]
        t = _target_index(predictor, scores, target)
        attn = np.zeros(n, dtype=np.float64)
        for logits, emb, real, backward in runs:
            a = np.zeros(n, dtype=np.float64)
            if logits is not None:
                (grad,) = torch.autograd.grad(_score(predictor.kind, logits, t), [emb])
                a[real] = grad[0].abs().sum(-1).double().cpu().numpy()
            if backward:  # the member read the document reversed
                a = a[::-1]
            attn += _normalised(a)
    weights = _normalised(attn / max(1, len(runs)))
    names = predictor.targets if predictor.kind == "float" else predictor.classes
    ids0 = predictor.member_ids(0, local)[0]
    if runs[0][3]:
        ids0 = ids0[::-1]
    known = (ids0 != 0) | np.asarray([tok == "xxunk" for tok in tokens], dtype=bool)
    return {
        "text": text,
        "prediction": predictor.describe(scores),
        "target": names[t],
        "tokens": tokens,
        "weights": [round(float(w), 4) for w in weights],
        "known": [bool(x) for x in known],
        "segments": segments(text, tokens, weights),
        "method": METHOD,
    }


# ----------------------------------------------------------------------------------------
# Tokens -> the words as typed
# ----------------------------------------------------------------------------------------


def word_units(tokens: list[str], weights) -> list[tuple[str, float]]:
    """``(word as it appears in the lowercased text, importance)`` for the tokens a person
    would see: markers folded into the word they describe, whitespace and xxbos left out."""
    units: list[tuple[str, float]] = []
    carry, i, n = 0.0, 0, len(tokens)
    limit = sum(len(t) for t in tokens) + n  # a count can never exceed the text's length
    while i < n:
        tok, w = tokens[i], float(weights[i])
        if tok in _HIDDEN:
            i += 1
            continue
        if tok in _PREFIX:
            carry = max(carry, w)
            i += 1
            continue
        if tok in (TK_REP, TK_WREP) and i + 2 < n and tokens[i + 1].isdigit():
            count = int(tokens[i + 1]) if len(tokens[i + 1]) < 9 else limit + 1
            if count <= limit:
                w = max(carry, w, float(weights[i + 1]), float(weights[i + 2]))
                if tok == TK_REP:
                    units.append((tokens[i + 2] * count, w))
                else:
                    units.extend([(tokens[i + 2], w)] * count)
                carry = 0.0
                i += 3
                continue
        shown = tok.replace("▁", " ")
        if shown.strip():
            units.append((shown, max(carry, w)))
            carry = 0.0
        i += 1
    return units


def _lowered(text: str) -> tuple[str, list[int]]:
    """``text.lower()`` character by character, with the index in ``text`` of every lowered
    character (and ``len(text)`` at the end): a few characters lower to two."""
    parts, src = [], []
    for k, ch in enumerate(text):
        low = ch.lower()
        parts.append(low)
        src.extend([k] * len(low))
    src.append(len(text))
    return "".join(parts), src


def segments(text: str, tokens: list[str], weights) -> list[dict]:
    """The text as typed, cut into ``{"text", "weight"}`` pieces: a word's importance
    (normalised so the most important shown word is 1), ``None`` between words. Joined, the
    pieces give ``text`` exactly."""
    units = word_units(tokens, weights)
    top = max((w for _, w in units), default=0.0)
    low, src = _lowered(text)
    out: list[dict] = []
    cur = 0
    for word, w in units:
        needle = word.lower()
        pos = low.find(needle, cur, cur + _WINDOW + len(needle))
        if pos < 0 or not needle:
            continue  # changed by the rules beyond recognition: left unshaded
        end = pos + len(needle)
        if src[pos] > src[cur]:
            out.append({"text": text[src[cur] : src[pos]], "weight": None})
        if src[end] > src[pos]:
            out.append(
                {"text": text[src[pos] : src[end]], "weight": round(w / top, 4) if top else 0.0}
            )
        cur = end
    if src[cur] < len(text):
        out.append({"text": text[src[cur] :], "weight": None})
    return out


# ----------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------

_SHADE = "245, 158, 11"  # amber; the alpha is the importance


def _shade(w: float | None) -> str:
    if w is None:
        return ""
    return f' style="background: rgba({_SHADE}, {w:.3f})" title="{w:.2f}"'


def _bars(prediction: dict, info: dict) -> str:
    if "probabilities" not in prediction:
        values = prediction.get("values") or {
            info.get("targets", ["value"])[0]: prediction["value"]
        }
        rows = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td class=num>{v:.4f}</td></tr>"
            for k, v in values.items()
        )
        return f"<table>{rows}</table>"
    thresholds = info.get("thresholds") or {}
    rows = []
    for c, p in sorted(prediction["probabilities"].items(), key=lambda kv: -kv[1]):
        t = thresholds.get(c)
        mark = f" (threshold {t:.2f})" if t is not None else ""
        rows.append(
            f'<tr><td>{html.escape(c)}</td><td class=bar><div style="width: {100 * p:.1f}%">'
            f"</div></td><td class=num>{p:.3f}{html.escape(mark)}</td></tr>"
        )
    return f"<table>{''.join(rows)}</table>"


def render_html(exp: dict, info: dict | None = None) -> str:
    """A self-contained HTML page of an explanation: the prediction, the probabilities as
    bars, the text with every word shaded by its importance, and the fastai tokens."""
    info = info or {}
    pred = exp["prediction"]
    if "label" in pred:
        head = html.escape(pred["label"])
    elif "labels" in pred:
        head = html.escape(", ".join(pred["labels"]) or "(no label above its threshold)")
    else:
        head = ", ".join(f"{v:.4f}" for v in (pred.get("values") or {"": pred["value"]}).values())
    text = "".join(
        f"<span{_shade(s['weight'])}>{html.escape(s['text'])}</span>" for s in exp["segments"]
    )
    toks = " ".join(
        f"<span{_shade(w)}>{html.escape(t)}</span>" for t, w in zip(exp["tokens"], exp["weights"])
    )
    model = html.escape(str(info.get("model", "")))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>ulmfit explanation: {head}</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
.text {{ white-space: pre-wrap; border: 1px solid #ddd; border-radius: 6px; padding: 1rem; }}
.tokens {{ font-family: ui-monospace, monospace; font-size: 14px; }}
table {{ border-collapse: collapse; }} td {{ padding: 2px 8px; }}
td.bar {{ width: 20rem; }} td.bar div {{ background: #3b82f6; height: 12px; }}
td.num {{ font-variant-numeric: tabular-nums; }}
.note {{ color: #666; font-size: 14px; }}
</style></head><body>
<h1>Prediction: <span id="label">{head}</span></h1>
{_bars(pred, info)}
<h2>Words that drove the prediction of {html.escape(str(exp["target"]))}</h2>
<div class="text">{text}</div>
<p class="note">Shading: {html.escape(exp["method"])}. Model: {model}</p>
<details><summary>fastai tokens</summary><p class="tokens">{toks}</p></details>
</body></html>
"""


__all__ = [
    "METHOD",
    "embed",
    "explain",
    "forward_from_embeddings",
    "render_html",
    "segments",
    "word_units",
]
