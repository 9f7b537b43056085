"""The ULMFiT text classifier as fastai v2 builds it (``get_text_classifier``), in plain PyTorch.

``TextClassifier`` = :class:`SentenceEncoder` (an :class:`AWDLSTM` reading the document in
BPTT chunks) -> :func:`masked_concat_pool` ([last hidden state, max pool, mean pool] over the
real tokens) -> a head (by default :class:`PoolingLinearClassifier`: BatchNorm -> Dropout ->
Linear blocks, ``3*emb_sz -> 50 -> n_out``).

Padding. Batches may be padded anywhere (``ClassifierLoader`` pads at the start). The sentence
encoder lays each row out as fastai's ``pad_input_chunk`` does: the document starts on a chunk
boundary (whole chunks of padding before it, fewer than ``bptt`` pads after it), and a row is
not run through the LSTM before its document starts, so it starts from a zero state, like a
document read alone (fastai's ``real_bs`` trick, without needing the batch sorted by length).
Pads after the document cannot change its outputs (the LSTM is causal) and pooling masks them.
So a document gets the same features alone or in any batch. Pad id tokens inside a text are
treated as padding.

Long documents. Every chunk is read (the hidden state is carried across chunks), but only the
outputs of the chunks in the last ``max_len`` positions are kept, and earlier chunks run under
``torch.no_grad()``: gradients reach the model only through the last ``max_len`` tokens, as in
fastai (where the encoder detaches its hidden state between chunks).

Custom heads. ``TextClassifier(..., head=my_head)`` puts any module on the encoder; it receives
the pooled features ``(bs, model.n_features)`` (``n_features = 3 * emb_sz``) and returns the
logits, e.g. ``TextClassifier(v, 2, head=nn.Sequential(nn.Linear(1200, 2)))``. It is the last
layer group, so ``freeze()`` trains only it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ulmfit.config import CLASSIFIER_CONFIG, AWDLSTMConfig
from ulmfit.errors import UserError
from ulmfit.models.awd_lstm import AWDLSTM

__all__ = [
    "PoolingLinearClassifier",
    "SentenceEncoder",
    "TextClassifier",
    "load_encoder",
    "masked_concat_pool",
]


class SentenceEncoder(nn.Module):
    """Reads a padded batch ``(bs, seq_len)`` in chunks of ``bptt`` tokens, left to right.

    Returns ``(outputs, mask)``: the last LSTM layer's outputs ``(bs, kept_len, emb_sz)`` for
    the kept chunks (those within the last ``max_len`` positions; ``None``: all) and the
    matching padding mask (``True`` where pad). Rows are re-laid out as described in the module
    docstring (the batch is as wide as its longest text, as in fastai), so the kept part can
    hold pads at both ends; only ``mask`` says which positions are real tokens.
    """

    def __init__(
        self, encoder: AWDLSTM, bptt: int = 72, max_len: int | None = 72 * 20, pad_idx: int = 1
    ) -> None:
        super().__init__()
        if bptt < 1:
            raise ValueError(f"bptt must be positive, got {bptt}")
        if max_len is not None and max_len < bptt:
            raise ValueError(f"max_len ({max_len}) must be at least bptt ({bptt}) or None")
        self.module, self.bptt, self.max_len, self.pad_idx = encoder, bptt, max_len, pad_idx

    def reset(self) -> None:
        self.module.reset()

    def layout(self, x: Tensor) -> Tensor:
        """Each row's real tokens, in order, starting on a multiple of ``bptt`` with fewer
        than ``bptt`` pads after them; width = the longest row (as fastai's
        ``pad_input_chunk``: short texts are not padded up to a whole chunk)."""
        real = x != self.pad_idx
        lens = real.sum(1)
        bptt = self.bptt
        width = max(int(lens.max().item()) if len(lens) else 0, 1)
        start = (width - lens) // bptt * bptt
        pos = torch.where(real, start[:, None] + real.cumsum(1) - 1, width)
        out = x.new_full((x.size(0), width + 1), self.pad_idx)
        out.scatter_(1, pos, x)  # pads all land in the spare last column
        return out[:, :width]

    def _run(self, chunk: Tensor, active: Tensor, n_active: int) -> Tensor:
        """The encoder on the rows of ``chunk`` whose document has started (the others keep
        their zero state and get zero outputs)."""
        enc, bs = self.module, chunk.size(0)
        if enc.hidden is None or enc.hidden[0][0].size(1) != bs:
            enc.hidden = enc._zero_state(bs, enc.encoder.weight)
        if n_active == bs:
            return enc(chunk)[0]
        idx = active.nonzero().squeeze(1)
        full = enc.hidden
        enc.hidden = [(h[:, idx], c[:, idx]) for h, c in full]
        out = enc(chunk[idx])[0]
        enc.hidden = [
            (h.to(nh.dtype).index_copy(1, idx, nh), c.to(nc.dtype).index_copy(1, idx, nc))
            for (h, c), (nh, nc) in zip(full, enc.hidden)
        ]
        return out.new_zeros((bs, *out.shape[1:])).index_copy(0, idx, out)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.reset()
        x = self.layout(x)
        bs, width = x.shape
        mask = x == self.pad_idx
        started = (~mask).cumsum(1) > 0  # rows whose document has started, per position
        keep_from = 0 if self.max_len is None else max(width - self.max_len, 0)
        keep_from = -(-keep_from // self.bptt) * self.bptt
        starts = list(range(0, width, self.bptt))
        ends = [min(i + self.bptt, width) - 1 for i in starts]
        # rows reading each chunk, counted for all chunks at once: one host sync per batch
        n_actives = started[:, ends].sum(0).tolist()
        outs = []
        for i, end, n_active in zip(starts, ends, n_actives):
            chunk = x[:, i : i + self.bptt]
            active = started[:, end]
            if n_active == 0:  # only all-empty rows: nothing to read
                if i >= keep_from:
                    emb = self.module.encoder.weight
                    outs.append(emb.new_zeros(bs, chunk.size(1), self.module.cfg.emb_sz))
                continue
            if i >= keep_from:
                outs.append(self._run(chunk, active, n_active))
            else:
                with torch.no_grad():
                    self._run(chunk, active, n_active)
        return torch.cat(outs, dim=1), mask[:, keep_from:]


def masked_concat_pool(output: Tensor, mask: Tensor, bptt: int | None = None) -> Tensor:
    """fastai's concat pooling: ``[last real token's output, max pool, mean pool]`` over the
    positions where ``mask`` is False -> ``(bs, 3 * emb)``. ``bptt`` is accepted for fastai's
    signature but unused: the last real token is found from the mask, whatever the padding
    layout. A row with no real token pools to zeros."""
    real = ~mask
    lens = real.sum(1)
    pos = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    last = torch.where(real, pos, -1).max(1).values.clamp(min=0)
    last_hidden = output[torch.arange(output.size(0), device=output.device), last]
    last_hidden = last_hidden.masked_fill((lens == 0)[:, None], 0.0)
    avg_pool = output.masked_fill(mask[:, :, None], 0).sum(1)
    avg_pool = avg_pool / lens.clamp(min=1).to(avg_pool.dtype)[:, None]
    max_pool = output.masked_fill(mask[:, :, None], float("-inf")).max(1).values
    max_pool = max_pool.masked_fill((lens == 0)[:, None], 0.0)
    return torch.cat([last_hidden, max_pool, avg_pool], 1)


class LinBnDrop(nn.Sequential):
    """fastai's ``LinBnDrop``: BatchNorm1d (weight 1, bias 1e-3), Dropout (if ``p``), Linear
    without bias (the BatchNorm's shift plays that role), then ``act``."""

    def __init__(self, n_in: int, n_out: int, p: float = 0.0, act: nn.Module | None = None):
        bn = nn.BatchNorm1d(n_in)
        bn.weight.data.fill_(1.0)
        bn.bias.data.fill_(1e-3)
        layers: list[nn.Module] = [bn]
        if p != 0:
            layers.append(nn.Dropout(p))
        layers.append(nn.Linear(n_in, n_out, bias=False))
        if act is not None:
            layers.append(act)
        super().__init__(*layers)


def masked_ar_tar(out: Tensor, pad: Tensor, alpha: float, beta: float) -> Tensor:
    """fastai's AR/TAR penalties on a classifier's encoder outputs ``(bs, seq, emb)``, over
    real tokens only: ``pad`` marks padding, whose outputs carry no signal to regularise.
    AR: ``alpha`` times the mean squared activation; TAR: ``beta`` times the mean squared
    step between consecutive real positions."""
    real = (~pad).unsqueeze(-1).to(out.dtype)
    loss = out.new_zeros((), dtype=torch.float32)
    n = real.sum() * out.size(-1)
    if alpha and n > 0:
        loss = loss + alpha * (out.float().pow(2) * real).sum() / n
    if beta and out.size(1) > 1:
        both = real[:, 1:] * real[:, :-1]
        m = both.sum() * out.size(-1)
        if m > 0:
            loss = loss + beta * ((out[:, 1:] - out[:, :-1]).float().pow(2) * both).sum() / m
    return loss


class PoolingLinearClassifier(nn.Module):
    """fastai's classifier head on pooled features: one :class:`LinBnDrop` block per pair of
    ``dims`` with dropout ``ps[i]``, ReLU after every block but the last."""

    def __init__(self, dims: Sequence[int], ps: Sequence[float]) -> None:
        super().__init__()
        if len(ps) != len(dims) - 1:
            raise ValueError(f"need {len(dims) - 1} dropout values for dims {list(dims)}")
        n = len(dims) - 1
        self.layers = nn.Sequential(
            *(
                LinBnDrop(i, o, p, nn.ReLU(inplace=True) if k < n - 1 else None)
                for k, (i, o, p) in enumerate(zip(dims[:-1], dims[1:], ps))
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class TextClassifier(nn.Module):
    """fastai's ``get_text_classifier(AWD_LSTM, vocab_sz, n_out, drop_mult=0.5)``.

    The encoder's dropouts are ``cfg.scaled(drop_mult)``; the default head's dropouts are
    ``[cfg.output_p * drop_mult] + ps`` with ``ps = [0.1] * len(lin_ftrs)`` (not scaled, as in
    fastai). ``forward`` returns logits ``(bs, n_out)``; the kept encoder outputs of the last
    call stay in ``raw_out`` / ``out`` (both the same tensor, as fastai's classifier returns
    them) for an optional AR/TAR penalty, and their padding mask in ``out_mask``.
    """

    def __init__(
        self,
        vocab_sz: int,
        n_out: int,
        cfg: AWDLSTMConfig = CLASSIFIER_CONFIG,
        drop_mult: float = 0.5,
        bptt: int = 72,
        max_len: int | None = 72 * 20,
        head: nn.Module | None = None,
        lin_ftrs: Sequence[int] = (50,),
        ps: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg.scaled(drop_mult)
        self.vocab_sz, self.n_out = vocab_sz, n_out
        self.n_features = 3 * cfg.emb_sz
        self.encoder = SentenceEncoder(
            AWDLSTM(vocab_sz, self.cfg), bptt=bptt, max_len=max_len, pad_idx=cfg.pad_token
        )
        if head is None:
            ps = [0.1] * len(lin_ftrs) if ps is None else list(ps)
            dims = [self.n_features, *lin_ftrs, n_out]
            head = PoolingLinearClassifier(dims, [self.cfg.output_p, *ps])
        self.head = head
        self.raw_out: Tensor | None = None
        self.out: Tensor | None = None
        self.out_mask: Tensor | None = None

    def reset(self) -> None:
        self.encoder.reset()

    def features(self, x: Tensor) -> Tensor:
        """The pooled document features ``(bs, n_features)`` the head reads."""
        out, mask = self.encoder(x)
        self.raw_out = self.out = out
        self.out_mask = mask
        return masked_concat_pool(out, mask, self.encoder.bptt)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def layer_groups(self) -> list[list[nn.Module]]:
        """fastai's ``awd_lstm_clas_split``: embedding, one group per LSTM layer, the head.
        Gradual unfreezing: ``freeze_to(-1)``, ``freeze_to(-2)``, ``freeze_to(-3)``,
        ``unfreeze()``."""
        enc = self.encoder.module
        groups: list[list[nn.Module]] = [[enc.encoder, enc.encoder_dp]]
        groups += [[rnn, dp] for rnn, dp in zip(enc.rnns, enc.hidden_dps)]
        groups.append([self.head])
        return groups


_EMB_DP = "encoder_dp.emb.weight"


def load_encoder(model: TextClassifier, lm_state: Mapping[str, Tensor] | nn.Module) -> None:
    """Copy a language model's encoder (the ``encoder.*`` tensors of a ``LanguageModel``'s
    state_dict, or the model itself) into ``model``'s encoder. The vocabularies must be the
    same (remap the LM's embedding first otherwise); any mismatch is a one-line UserError."""
    if isinstance(lm_state, nn.Module):
        lm_state = lm_state.state_dict()
    state = {k[len("encoder.") :]: v for k, v in lm_state.items() if k.startswith("encoder.")}
    if not state:
        raise UserError("no encoder.* tensors in the language model's state")
    if "encoder.weight" not in state and _EMB_DP in state:
        state["encoder.weight"] = state[_EMB_DP]
    state.pop(_EMB_DP, None)
    enc = model.encoder.module
    target = {k: v for k, v in enc.state_dict().items() if k != _EMB_DP}
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    if missing or unexpected:
        what = "; ".join(
            s
            for s in (
                f"missing encoder.{', encoder.'.join(missing[:4])}" if missing else "",
                f"unexpected encoder.{', encoder.'.join(unexpected[:4])}" if unexpected else "",
            )
            if s
        )
        raise UserError(f"the language model's encoder does not match the classifier's ({what})")
    lm_vocab, vocab = state["encoder.weight"].shape[0], target["encoder.weight"].shape[0]
    if lm_vocab != vocab:
        raise UserError(
            f"the language model has a vocabulary of {lm_vocab} tokens but the classifier "
            f"{vocab}: build the classifier with the language model's vocabulary"
        )
    for k, v in target.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise UserError(
                f"encoder.{k} has shape {tuple(state[k].shape)} in the language model but "
                f"{tuple(v.shape)} in the classifier (different emb_sz / n_hid / n_layers?)"
            )
    with torch.no_grad():
        for k, v in enc.state_dict().items():
            src = state["encoder.weight" if k == _EMB_DP else k]
            v.copy_(src.to(v.dtype))
