"""AWD-LSTM (Merity et al. 2017) as fastai builds it, in plain PyTorch.

One regulariser per small module: :class:`EmbeddingDropout` drops whole words of the embedding
matrix, :class:`RNNDropout` is locked (variational) dropout with one mask per sequence, and
:class:`WeightDropLSTM` applies DropConnect to the hidden-to-hidden weights. The dropped matrix
reaches ``nn.LSTM`` through ``torch.func.functional_call`` — a public API — instead of by
patching the module's internals, which broke fastai and salesforce/awd-lstm-lm on PyTorch
upgrades. Dropout defaults are fastai's and scale with ``drop_mult``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ulmfit.config import AWDLSTMConfig


def _drop_mask(x: Tensor, shape: tuple[int, ...], p: float) -> Tensor:
    """Each entry 0 with probability ``p``, else ``1 / (1 - p)``, in ``x``'s dtype and device.

    Drawn as ``uniform >= p`` in float32 rather than with ``bernoulli_``: the same distribution,
    but on the CPU uniform numbers come about twice as fast, and the weight-dropped LSTM
    matrices (5.3M entries each at hidden 1152) need a fresh mask every step."""
    if p >= 1.0:
        return x.new_zeros(shape)
    return torch.rand(shape, device=x.device).ge_(p).div_(1 - p).to(x.dtype)


class RNNDropout(nn.Module):
    """Locked dropout: the same units are dropped at every time step of a sequence."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:  # x: (bs, seq_len, features)
        if not self.training or self.p == 0.0:
            return x
        return x * _drop_mask(x, (x.size(0), 1, x.size(2)), self.p)


class EmbeddingDropout(nn.Module):
    """Drops whole words of the vocabulary (every occurrence in the batch), rescaling the others.

    Same result and gradients as masking the rows of the embedding matrix (fastai's way), but
    the mask is applied to the looked-up vectors only, not to the whole vocab x emb matrix at
    every step.
    """

    def __init__(self, emb: nn.Embedding, p: float) -> None:
        super().__init__()
        self.emb, self.p = emb, p

    def forward(self, words: Tensor) -> Tensor:
        w = self.emb.weight
        out = F.embedding(words, w, self.emb.padding_idx)
        if self.training and self.p != 0.0:
            keep = _drop_mask(w, (w.size(0),), self.p)
            out = out * keep[words].unsqueeze(-1).to(out.dtype)
        return out


class WeightDropLSTM(nn.Module):
    """A one-layer ``nn.LSTM`` whose hidden-to-hidden matrix gets DropConnect in training.

    ``lstm.weight_hh_l0`` holds the raw (undropped) weights; in training the dropped copy is
    passed for that one call with ``functional_call``, so autograd reaches the raw weights.
    """

    def __init__(self, n_in: int, n_out: int, weight_p: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_in, n_out, 1, batch_first=True)
        self.weight_p = weight_p

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if not self.training or self.weight_p == 0.0:
            return self.lstm(x, state)
        raw = self.lstm.weight_hh_l0
        dropped = raw * _drop_mask(raw, raw.shape, self.weight_p)
        return functional_call(self.lstm, {"weight_hh_l0": dropped}, (x, state))


class AWDLSTM(nn.Module):
    """The encoder: embedding (with word dropout), then ``n_layers`` weight-dropped LSTMs.

    Stateful like fastai's: the hidden state carries over from one call to the next (detached),
    which is how a language model reads a stream in BPTT chunks; ``reset()`` clears it.
    The last layer has ``emb_sz`` units so that the decoder can share the embedding matrix.
    """

    initrange = 0.1

    def __init__(self, vocab_sz: int, cfg: AWDLSTMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.Embedding(vocab_sz, cfg.emb_sz, padding_idx=cfg.pad_token)
        self.encoder.weight.data.uniform_(-self.initrange, self.initrange)
        self.encoder_dp = EmbeddingDropout(self.encoder, cfg.embed_p)
        sizes = [cfg.emb_sz] + [cfg.n_hid] * (cfg.n_layers - 1) + [cfg.emb_sz]
        self.rnns = nn.ModuleList(
            WeightDropLSTM(sizes[i], sizes[i + 1], cfg.weight_p) for i in range(cfg.n_layers)
        )
        self.input_dp = RNNDropout(cfg.input_p)
        self.hidden_dps = nn.ModuleList(RNNDropout(cfg.hidden_p) for _ in range(cfg.n_layers))
        self.hidden: list[tuple[Tensor, Tensor]] | None = None

    def reset(self) -> None:
        """Forget the hidden state (start of a new stream or document)."""
        self.hidden = None

    def _zero_state(self, bs: int, ref: Tensor) -> list[tuple[Tensor, Tensor]]:
        return [
            (ref.new_zeros(1, bs, r.lstm.hidden_size), ref.new_zeros(1, bs, r.lstm.hidden_size))
            for r in self.rnns
        ]

    def forward(self, tokens: Tensor, from_embeds: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Returns the last layer's output (bs, seq_len, emb_sz) and every layer's raw output."""
        x = tokens if from_embeds else self.encoder_dp(tokens)
        bs = x.size(0)
        if self.hidden is None or self.hidden[0][0].size(1) != bs:
            self.hidden = self._zero_state(bs, x)
        x = self.input_dp(x)
        raw_outputs, new_hidden = [], []
        for i, (rnn, hid_dp) in enumerate(zip(self.rnns, self.hidden_dps)):
            x, state = rnn(x, self.hidden[i])
            new_hidden.append((state[0].detach(), state[1].detach()))
            raw_outputs.append(x)
            if i != len(self.rnns) - 1:
                x = hid_dp(x)
        self.hidden = new_hidden
        return x, raw_outputs


class LinearDecoder(nn.Module):
    """Output dropout, then a linear layer to the vocabulary, tied to the embedding."""

    initrange = 0.1

    def __init__(
        self, vocab_sz: int, emb_sz: int, output_p: float, tie: nn.Embedding | None, bias: bool
    ) -> None:
        super().__init__()
        self.decoder = nn.Linear(emb_sz, vocab_sz, bias=bias)
        self.decoder.weight.data.uniform_(-self.initrange, self.initrange)
        if bias:
            self.decoder.bias.data.zero_()
        if tie is not None:
            self.decoder.weight = tie.weight
        self.output_dp = RNNDropout(output_p)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dropped = self.output_dp(x)
        return self.decoder(dropped), dropped


class LanguageModel(nn.Module):
    """AWD-LSTM encoder + tied decoder. ``forward`` returns logits; the last call's last-layer
    outputs before and after output dropout stay in ``raw_out`` / ``out`` for AR and TAR."""

    def __init__(self, vocab_sz: int, cfg: AWDLSTMConfig = AWDLSTMConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_sz = vocab_sz
        self.encoder = AWDLSTM(vocab_sz, cfg)
        tie = self.encoder.encoder if cfg.tie_weights else None
        self.decoder = LinearDecoder(vocab_sz, cfg.emb_sz, cfg.output_p, tie, cfg.out_bias)
        self.raw_out: Tensor | None = None
        self.out: Tensor | None = None

    def reset(self) -> None:
        self.encoder.reset()

    def forward(self, tokens: Tensor) -> Tensor:
        x, _ = self.encoder(tokens)
        logits, dropped = self.decoder(x)
        self.raw_out, self.out = x, dropped
        return logits

    def layer_groups(self) -> list[list[nn.Module]]:
        """fastai's split for discriminative learning rates: one group per LSTM layer, then
        the (tied) embedding and decoder last, so that ``freeze`` trains only them."""
        groups: list[list[nn.Module]] = [[rnn] for rnn in self.encoder.rnns]
        groups.append([self.encoder.encoder, self.decoder])
        return groups


def ar_tar_loss(raw_out: Tensor, out: Tensor, alpha: float = 2.0, beta: float = 1.0) -> Tensor:
    """Activation regularisation (on the dropped output) and temporal activation
    regularisation (on consecutive raw outputs), as fastai's RNNRegularizer computes them."""
    loss = raw_out.new_zeros(())
    if alpha:
        loss = loss + alpha * out.float().pow(2).mean()
    if beta and raw_out.size(1) > 1:
        loss = loss + beta * (raw_out[:, 1:] - raw_out[:, :-1]).float().pow(2).mean()
    return loss
