"""Vocabulary from token counts, with fastai's rules so that its vocabularies and ours agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ulmfit.config import VocabConfig
from ulmfit.errors import UserError
from ulmfit.text.rules import SPECIAL_TOKENS


def build_vocab(
    strings: list[str],
    counts: np.ndarray,
    cfg: VocabConfig = VocabConfig(),
    special_tokens: list[str] = SPECIAL_TOKENS,
) -> list[str]:
    """fastai's ``make_vocab``: most frequent first, ties in order of first appearance.

    ``strings`` must be in order of first appearance in the corpus (as the tokenizer numbers
    them), which is what makes the order deterministic. Special tokens go first (xxunk = 0,
    xxpad = 1, ...), and the list is padded with ``xxfake`` to a multiple of 8 (fastai adds 8
    when it already is one, and so do we, so that vocabulary sizes match fastai's).
    """
    order = np.argsort(-np.asarray(counts, dtype=np.int64), kind="stable")[: cfg.max_vocab]
    vocab = [strings[i] for i in order if counts[i] >= cfg.min_freq]
    specials = set(special_tokens)
    vocab = list(special_tokens) + [t for t in vocab if t not in specials]
    vocab = vocab[: cfg.max_vocab]
    return vocab + ["xxfake"] * (8 - len(vocab) % 8)


def save_vocab(vocab: list[str], path: Path) -> None:
    path.write_text(json.dumps(vocab, ensure_ascii=False))


def load_vocab(path: Path) -> list[str]:
    """Read a ``vocab.json`` (a JSON list of str), refusing anything else with a clear error."""
    try:
        vocab = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: vocabulary file not found") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a JSON vocabulary ({e})") from None
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
        raise UserError(f"{path}: a vocabulary must be a JSON list of strings")
    return vocab


def id_dtype(vocab_size: int) -> np.dtype:
    """uint16 while the vocabulary fits (halves the corpus on disk and in memory)."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)
