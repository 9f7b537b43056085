"""fastai's published language-model files (v1 and v2 layouts) and their vocabularies.

A fastai ``lstm_fwd.pth`` is a state_dict read with ``torch.load(weights_only=True)`` (no code
runs); its ``itos_wt103.pkl`` is a pickled list of str, read with an unpickler that refuses
every class, so a hostile pickle cannot run code either. Keys are mapped by name, never by
position, and every shape is checked before anything is copied.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ulmfit.config import AWDLSTMConfig
from ulmfit.errors import UserError, one_line
from ulmfit.models.awd_lstm import LanguageModel

_RNN_KEY = re.compile(
    r"0\.rnns\.(\d+)\.(weight_hh_l0_raw|module\.(weight_ih_l0|weight_hh_l0|bias_ih_l0|bias_hh_l0))$"
)


class _NoClasses(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # a list of str needs no class at all
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_itos(path: Path | str) -> list[str]:
    """A fastai vocabulary pickle, accepted only if it is a plain list of str."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: vocabulary file not found") from None
    try:
        itos = _NoClasses(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as e:
        raise UserError(f"{path}: not a vocabulary (a pickled list of str): {e}") from None
    if not isinstance(itos, list) or not all(isinstance(t, str) for t in itos):
        raise UserError(
            f"{path}: a vocabulary must be a pickled list of str, got {type(itos).__name__}"
        )
    return itos


def _refused_pickle(message: str) -> str:
    """Why torch's safe loader refused a file, without its advice to load it unsafely
    (``weights_only=False`` runs whatever code the file holds)."""
    import re

    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if found:
        return (
            f"holds a pickled Python object ({found[1]}), not only tensors; refused, since "
            "unpickling it could run code. Save the model's state_dict() instead"
        )
    return "cannot read PyTorch weights (not a file of plain tensors)"


def read_fastai_state(path: Path | str) -> dict[str, Tensor]:
    """The tensors of a fastai weights file: a flat state_dict or ``{'model': state_dict}``."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: weights file not found")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles before refusing them
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # a pickle with classes, or bytes that are no pickle
        raise UserError(f"{path}: {_refused_pickle(str(e))}") from None
    except Exception as e:  # truncated zip, an empty file
        raise UserError(
            f"{path}: cannot read PyTorch weights ({type(e).__name__}: {one_line(e)})"
        ) from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{path}: expected a state_dict of tensors")
    return obj


@dataclass
class FastaiWeights:
    """A fastai language model mapped to our parameter names, with the config it implies."""

    state: dict[str, Tensor]  # our names, float32
    cfg: AWDLSTMConfig
    vocab_size: int


def from_fastai(
    state: dict[str, Tensor], path: str = "weights", expect: AWDLSTMConfig | None = None
) -> FastaiWeights:
    """Map a fastai v1 or v2 AWD-LSTM language-model state_dict to ours, checking shapes."""
    if "0.encoder.weight" not in state:
        raise UserError(
            f"{path}: not a fastai AWD-LSTM language model (no '0.encoder.weight'; keys: {', '.join(list(state)[:5])} ...)"
        )
    ours: dict[str, Tensor] = {}
    emb = state["0.encoder.weight"].float()
    vocab_size, emb_sz = emb.shape
    ours["encoder.encoder.weight"] = emb
    layers: dict[int, dict[str, Tensor]] = {}
    unknown = []
    for key, t in state.items():
        m = _RNN_KEY.match(key)
        if m:
            name = "weight_hh_l0" if m[2] == "weight_hh_l0_raw" else m[3]
            if m[2] == "module.weight_hh_l0":  # v1 keeps the last dropped copy too: ignore it
                continue
            layers.setdefault(int(m[1]), {})[name] = t.float()
        elif key not in (
            "0.encoder.weight",
            "0.encoder_dp.emb.weight",
            "1.decoder.weight",
            "1.decoder.bias",
        ):
            unknown.append(key)
    if unknown:
        raise UserError(f"{path}: unexpected keys for a fastai AWD-LSTM: {', '.join(unknown[:5])}")
    n_layers = len(layers)
    if n_layers < 1 or sorted(layers) != list(range(n_layers)):
        raise UserError(f"{path}: LSTM layers missing or not numbered 0..n")
    n_hid = layers[0]["weight_hh_l0"].shape[1]
    sizes = [emb_sz] + [n_hid] * (n_layers - 1) + [emb_sz]
    for i in range(n_layers):
        want = {
            "weight_ih_l0": (4 * sizes[i + 1], sizes[i]),
            "weight_hh_l0": (4 * sizes[i + 1], sizes[i + 1]),
            "bias_ih_l0": (4 * sizes[i + 1],),
            "bias_hh_l0": (4 * sizes[i + 1],),
        }
        for name, shape in want.items():
            t = layers[i].get(name)
            if t is None:
                raise UserError(f"{path}: layer {i} has no {name}")
            if tuple(t.shape) != shape:
                raise UserError(
                    f"{path}: layer {i} {name} has shape {tuple(t.shape)}, expected {shape}"
                )
            ours[f"encoder.rnns.{i}.lstm.{name}"] = t
    bias = state.get("1.decoder.bias")
    if bias is not None:
        if tuple(bias.shape) != (vocab_size,):
            raise UserError(
                f"{path}: decoder bias has shape {tuple(bias.shape)}, expected ({vocab_size},)"
            )
        ours["decoder.decoder.bias"] = bias.float()
    dec = state.get("1.decoder.weight")
    if dec is not None and tuple(dec.shape) != (vocab_size, emb_sz):
        raise UserError(
            f"{path}: decoder weight has shape {tuple(dec.shape)}, expected {(vocab_size, emb_sz)}"
        )
    cfg = AWDLSTMConfig(emb_sz=emb_sz, n_hid=n_hid, n_layers=n_layers, out_bias=bias is not None)
    if expect is not None:
        for field in ("emb_sz", "n_hid", "n_layers"):
            if getattr(expect, field) != getattr(cfg, field):
                hint = (
                    " (fastai v0.7 weights use 1150)"
                    if field == "n_hid" and getattr(cfg, field) == 1150
                    else ""
                )
                raise UserError(
                    f"{path}: {field} is {getattr(cfg, field)}, expected {getattr(expect, field)}{hint}"
                )
        cfg = AWDLSTMConfig(**{**expect.to_dict(), "out_bias": bias is not None})
    return FastaiWeights(ours, cfg, vocab_size)


def load_fastai_lm(
    weights: Path | str, drop_mult: float = 1.0, expect: AWDLSTMConfig | None = None
) -> LanguageModel:
    """A :class:`LanguageModel` with a fastai file's weights (vocabulary as in the file)."""
    fw = from_fastai(read_fastai_state(weights), str(weights), expect)
    model = LanguageModel(fw.vocab_size, fw.cfg.scaled(drop_mult))
    missing, unexpected = model.load_state_dict(with_aliases(fw.state), strict=False)
    if missing or unexpected:
        raise UserError(f"{weights}: could not map {missing or unexpected}")
    return model


def with_aliases(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Add the names under which the shared embedding matrix also appears in our state_dict
    (the word-dropout wrapper and the tied decoder hold the very same tensor)."""
    emb = state["encoder.encoder.weight"]
    return {"encoder.encoder_dp.emb.weight": emb, "decoder.decoder.weight": emb, **state}


@dataclass
class RemapReport:
    """How much of the target vocabulary the pretrained one covered."""

    target_size: int
    found: int
    coverage: float  # share of target tokens with a pretrained row
    token_coverage: float | None = None  # share of corpus tokens, if counts were given

    def summary(self) -> str:
        s = f"{self.found:,} of {self.target_size:,} vocabulary entries found in the pretrained vocabulary ({100 * self.coverage:.1f}%)"
        if self.token_coverage is not None:
            s += f"; they cover {100 * self.token_coverage:.1f}% of the corpus tokens"
        return s


def remap_vocab(
    state: dict[str, Tensor],
    old_itos: list[str],
    new_itos: list[str],
    counts: np.ndarray | None = None,
) -> tuple[dict[str, Tensor], RemapReport]:
    """Rows of known tokens copied; new tokens get the mean embedding row and mean decoder bias."""
    old_index = {t: i for i, t in enumerate(old_itos)}
    src = torch.tensor([old_index.get(t, -1) for t in new_itos])
    known = src >= 0
    out = dict(state)
    for key in ("encoder.encoder.weight", "decoder.decoder.bias", "decoder.decoder.weight"):
        if key not in state:
            continue
        old = state[key]
        mean = old.mean(0)
        new = mean.expand(len(new_itos), *old.shape[1:]).clone()
        new[known] = old[src[known]]
        out[key] = new
    found = int(known.sum())
    token_cov = None
    if counts is not None and counts.sum() > 0:
        token_cov = float(counts[known.numpy()[: len(counts)]].sum() / counts.sum())
    return out, RemapReport(len(new_itos), found, found / max(1, len(new_itos)), token_cov)
