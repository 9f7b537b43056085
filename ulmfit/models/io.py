"""Language-model directories: ``model.safetensors`` + ``vocab.json`` + ``config.json``, nothing pickled.

The classifier and ensemble directory (``RUN/model``) is :mod:`ulmfit.models.model_dir`; it
shares the safetensors reading and shape check here.

A directory is written under a temporary name next to its target and renamed into place in
one step, so an interrupted save leaves no half directory. An existing non-empty target is
never touched unless ``overwrite=True``, and even then only if it is a model directory
(it holds a ``config.json``), so a typo in ``--out`` cannot wipe an unrelated folder.

The tied embedding/decoder matrix is stored once (safetensors refuses tensors that share
memory) and re-tied on load by building the model from its config. ``load_lm`` opens either
one of our directories or a fastai weights file (``.pth``) with its ``itos`` pickle.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from torch import Tensor

from ulmfit.atomic import staged_folder
from ulmfit.config import AWDLSTMConfig
from ulmfit.errors import UserError, one_line
from ulmfit.models.awd_lstm import LanguageModel

MODEL_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
TASK = "language_model"
DIRECTIONS = ("fwd", "bwd")

# Names under which the embedding matrix appears a second (third) time in a state_dict.
_EMB = "encoder.encoder.weight"
_EMB_DP = "encoder.encoder_dp.emb.weight"
_DEC = "decoder.decoder.weight"


def tokenizer_settings() -> dict:
    """What decides the tokens a model was trained on (fastai rule names, spaCy version)."""
    from importlib.metadata import PackageNotFoundError, version

    from ulmfit.text.rules import DEFAULT_RULES, SPECIAL_TOKENS

    try:
        spacy_version = version("spacy")
    except PackageNotFoundError:  # pragma: no cover - spaCy is a dependency
        spacy_version = None
    return {
        "rules": [r.__name__ for r in DEFAULT_RULES],
        "special_tokens": list(SPECIAL_TOKENS),
        "spacy": spacy_version,
        "lang": "en",
    }


def _package_version() -> str:
    from ulmfit.version import __version__

    return __version__


def is_tied(model: LanguageModel) -> bool:
    return model.decoder.decoder.weight is model.encoder.encoder.weight


def _unshared(model: LanguageModel) -> dict[str, Tensor]:
    """The model's state_dict with every shared tensor kept once (the model's own tensors)."""
    state = model.state_dict()
    state.pop(_EMB_DP, None)  # the word-dropout wrapper holds the embedding module itself
    if is_tied(model):
        state.pop(_DEC, None)
    return state


def stored_state(model: LanguageModel) -> dict[str, Tensor]:
    """The model's tensors with every shared tensor kept once (contiguous CPU copies)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in _unshared(model).items()}


def model_config(
    model: LanguageModel, vocab: list[str], meta: dict | None = None, direction: str = "fwd"
) -> dict:
    """``config.json``'s content for ``model``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    arch = model.cfg.to_dict()
    arch["tie_weights"] = is_tied(model)
    return {
        "format_version": FORMAT_VERSION,
        "task": TASK,
        "architecture": {"name": "AWD_LSTM", **arch},
        "vocab_size": len(vocab),
        "direction": direction,
        "tokenizer": tokenizer_settings(),
        "ulmfit_version": _package_version(),
        "meta": meta or {},
    }


def write_model_files(
    folder: Path,
    model: LanguageModel,
    vocab: list[str],
    meta: dict | None = None,
    direction: str = "fwd",
) -> dict:
    """Write the three files into an existing ``folder`` (no atomicity: see ``staged_dir``)."""
    from safetensors.torch import save_file

    if model.vocab_sz != len(vocab):
        raise ValueError(f"model has {model.vocab_sz} output rows but the vocabulary {len(vocab)}")
    if not all(isinstance(t, str) for t in vocab):
        raise ValueError("vocab must be a list of str")
    config = model_config(model, vocab, meta, direction)
    folder = Path(folder)
    save_file(stored_state(model), str(folder / MODEL_FILE), metadata={"format": "pt"})
    (folder / VOCAB_FILE).write_text(json.dumps(list(vocab), ensure_ascii=False), encoding="utf-8")
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=1), encoding="utf-8")
    return config


def check_target(path: Path | str, overwrite: bool = False) -> Path:
    """Fail early (before hours of training) if ``path`` cannot receive a model directory."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise UserError(f"{path}: exists and is not a folder; choose another --out")
        if any(path.iterdir()):
            if not overwrite:
                raise UserError(
                    f"{path}: folder exists and is not empty; choose another --out "
                    "or pass --overwrite to replace a previous model directory"
                )
            if not (path / CONFIG_FILE).is_file():
                raise UserError(
                    f"{path}: not a model directory (no {CONFIG_FILE}); refusing to replace it "
                    "even with --overwrite"
                )
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{parent}: not a folder")
    return path


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``path`` (replacing an empty folder, or with
    ``overwrite`` a previous model directory, which is moved aside first)."""
    check_target(path, overwrite)
    trash = None
    if path.is_dir() and any(path.iterdir()):
        trash = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(path, trash)
    try:
        os.replace(tmp, path)  # rename(2) replaces an empty folder
    except OSError as e:
        if trash is not None:
            os.rename(trash, path)
        raise UserError(f"{path}: cannot move the new model directory into place: {e}") from None
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


@contextmanager
def staged_dir(path: Path | str, overwrite: bool = False):
    """Yield a temporary folder next to ``path``; on success it becomes ``path`` in one rename,
    on any error (or Ctrl-C) it is removed and ``path`` is left as it was."""
    path = check_target(Path(path), overwrite)
    with staged_folder(path) as tmp:
        yield tmp
        _publish(tmp, path, overwrite)


def save_model_dir(
    path: Path | str,
    model: LanguageModel,
    vocab: list[str],
    meta: dict | None = None,
    *,
    direction: str = "fwd",
    overwrite: bool = False,
    extra: Callable[[Path], Any] | None = None,
) -> Path:
    """Write ``model.safetensors``, ``vocab.json`` and ``config.json`` to the folder ``path``
    atomically. ``extra(tmp)`` may add files (a report) before the folder is published."""
    path = Path(path)
    with staged_dir(path, overwrite) as tmp:
        write_model_files(tmp, model, vocab, meta, direction)
        if extra is not None:
            extra(tmp)
    return path


# ----------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------

_ARCH_FIELDS = {f.name: f.type for f in fields(AWDLSTMConfig)}
_SHAPE_FIELDS = ("emb_sz", "n_hid", "n_layers", "pad_token", "tie_weights", "out_bias")


def _read_config(path: Path) -> dict:
    file = path / CONFIG_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: not a model directory ({CONFIG_FILE} missing)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{file}: cannot read: {e}") from None
    try:
        config = json.loads(text)
    except ValueError as e:
        raise UserError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"{file}: expected a JSON object")
    task = config.get("task")
    if task != TASK:
        raise UserError(f"{file}: task is {task!r}, expected {TASK!r} (a language model)")
    arch = config.get("architecture")
    if not isinstance(arch, dict) or arch.get("name", "AWD_LSTM") != "AWD_LSTM":
        raise UserError(f"{file}: 'architecture' must describe an AWD_LSTM")
    missing = [k for k in _SHAPE_FIELDS if k not in arch]
    if missing:
        raise UserError(f"{file}: architecture lacks {', '.join(missing)}")
    for k in ("emb_sz", "n_hid", "n_layers"):
        if not isinstance(arch[k], int) or isinstance(arch[k], bool) or arch[k] < 1:
            raise UserError(f"{file}: architecture.{k} must be a positive integer, got {arch[k]!r}")
    vs = config.get("vocab_size")
    if not isinstance(vs, int) or isinstance(vs, bool) or vs < 1:
        raise UserError(f"{file}: vocab_size must be a positive integer, got {vs!r}")
    if config.get("direction", "fwd") not in DIRECTIONS:
        raise UserError(f"{file}: direction must be one of {', '.join(DIRECTIONS)}")
    config.setdefault("direction", "fwd")
    return config


def arch_config(config: dict, drop_mult: float | None = None) -> AWDLSTMConfig:
    """The stored architecture; with ``drop_mult``, its shapes with fastai's default dropouts
    scaled by ``drop_mult`` instead of the stored dropouts (what fine-tuning wants)."""
    arch = {k: v for k, v in config["architecture"].items() if k in _ARCH_FIELDS}
    if drop_mult is None:
        return AWDLSTMConfig(**arch)
    shapes = {k: arch[k] for k in _SHAPE_FIELDS if k in arch}
    return AWDLSTMConfig(**shapes).scaled(drop_mult)


def read_tensors(file: Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file, or a one-line UserError for a missing, truncated,
    empty or foreign (a pickle, a bogus header) file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.is_file():
        raise UserError(f"{file.parent}: not a model directory ({file.name} missing)")
    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{file}: not a readable safetensors file ({one_line(e)})") from None


def check_shapes(expected: dict, tensors: dict, file: Path) -> None:
    """The stored ``tensors`` are exactly the ``expected`` names and shapes (a model's
    ``state_dict()`` built on the meta device gives them without allocating)."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        what = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing[:3])}" if missing else "",
                f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
            )
            if part
        )
        raise UserError(f"{file}: tensors do not match config.json ({what})")
    for name, t in expected.items():
        if tuple(tensors[name].shape) != tuple(t.shape):
            raise UserError(
                f"{file}: {name} has shape {tuple(tensors[name].shape)}, but config.json "
                f"implies {tuple(t.shape)}"
            )
        if tensors[name].is_floating_point() != t.is_floating_point():
            kind = "a floating-point" if t.is_floating_point() else "an integer"
            raise UserError(f"{file}: {name} should be {kind} tensor")


def load_model_dir(
    path: Path | str, drop_mult: float | None = None
) -> tuple[LanguageModel, list[str], dict]:
    """``(model, vocab, config)`` from one of our model directories; every file is checked
    against the others (vocab size, tensor names and shapes) with a one-line UserError."""
    from ulmfit.text.vocab import load_vocab

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a model directory")
    config = _read_config(path)
    vocab = load_vocab(path / VOCAB_FILE)
    if len(vocab) != config["vocab_size"]:
        raise UserError(
            f"{path}: {VOCAB_FILE} has {len(vocab)} tokens but {CONFIG_FILE} says vocab_size {config['vocab_size']}"
        )
    try:
        cfg = arch_config(config, drop_mult)
    except TypeError as e:
        raise UserError(f"{path / CONFIG_FILE}: bad architecture ({e})") from None
    tensors = read_tensors(path / MODEL_FILE)
    model = LanguageModel(len(vocab), cfg)
    check_shapes(_unshared(model), tensors, path / MODEL_FILE)
    state = dict(tensors)
    state[_EMB_DP] = state[_EMB]
    if cfg.tie_weights:
        state[_DEC] = state[_EMB]
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, vocab, config


def read_vocab_file(path: Path | str) -> list[str]:
    """A vocabulary given with ``--vocab``: a fastai itos pickle, or our JSON list of str."""
    from ulmfit.models.pretrained import read_itos
    from ulmfit.text.vocab import load_vocab

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: --vocab must be a file (an itos .pkl or a vocab .json)")
    if path.suffix.lower() == ".json":
        return load_vocab(path)
    return read_itos(path)


_DIRECTION_NAMES = {"fwd": "forward", "bwd": "backward"}


def load_lm(
    spec: str | Path,
    vocab: str | Path | None = None,
    drop_mult: float | None = None,
    direction: str | None = None,
) -> tuple[LanguageModel, list[str], dict]:
    """``(model, vocab, source_info)`` from a model directory, or a fastai ``.pth`` with
    ``vocab`` (its itos pickle). ``source_info`` says what was loaded (kind, paths, direction,
    architecture) for reports. A fastai file does not say its direction: ``direction``, or
    "bwd" when its name contains "bwd" (fastai's ``lstm_bwd.pth``); a model directory's must
    equal ``direction`` when that is given."""
    if direction is not None and direction not in DIRECTIONS:
        raise UserError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    from ulmfit.models.pretrained import from_fastai, read_fastai_state, with_aliases

    path = Path(spec)
    if not path.exists():
        raise UserError(f"{path}: no such model directory or weights file")
    if path.is_dir():
        if vocab is not None:
            raise UserError(
                f"{path}: a model directory has its own {VOCAB_FILE}; --vocab is only for fastai .pth files"
            )
        model, itos, config = load_model_dir(path, drop_mult)
        if direction is not None and config["direction"] != direction:
            raise UserError(
                f"{path}: a {_DIRECTION_NAMES[config['direction']]} language model, but a "
                f"{_DIRECTION_NAMES[direction]} one is needed here"
            )
        info = {
            "kind": "model_dir",
            "path": str(path),
            "vocab": str(path / VOCAB_FILE),
            "vocab_size": len(itos),
            "direction": config["direction"],
            "architecture": config["architecture"],
        }
        return model, itos, info
    if vocab is None:
        raise UserError(
            f"{path}: a fastai weights file needs its vocabulary: add --vocab ITOS.pkl "
            "(e.g. itos_wt103.pkl next to lstm_fwd.pth)"
        )
    itos = read_vocab_file(vocab)
    fw = from_fastai(read_fastai_state(path), str(path))
    if len(itos) != fw.vocab_size:
        raise UserError(
            f"{vocab}: {len(itos)} tokens, but {path} has {fw.vocab_size} embedding rows; "
            "is it the vocabulary of these weights?"
        )
    cfg = fw.cfg if drop_mult is None else fw.cfg.scaled(drop_mult)
    model = LanguageModel(fw.vocab_size, cfg)
    missing, unexpected = model.load_state_dict(with_aliases(fw.state), strict=False)
    if missing or unexpected:
        raise UserError(f"{path}: could not map {missing or unexpected}")
    model.eval()
    if direction is None:
        direction = "bwd" if "bwd" in path.name.lower() else "fwd"
    info = {
        "kind": "fastai",
        "path": str(path),
        "vocab": str(vocab),
        "vocab_size": len(itos),
        "direction": direction,
        "architecture": {"name": "AWD_LSTM", **cfg.to_dict()},
    }
    return model, itos, info


__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "VOCAB_FILE",
    "arch_config",
    "check_shapes",
    "check_target",
    "is_tied",
    "load_lm",
    "load_model_dir",
    "read_tensors",
    "read_vocab_file",
    "save_model_dir",
    "staged_dir",
    "tokenizer_settings",
    "write_model_files",
]
