"""Using a trained classifier: texts in, labels and probabilities out, in input order.

:class:`Predictor` wraps the model directory ``ulmfit fit`` writes (``RUN/model``: a single
classifier, or the fwd + bwd ensemble of ``--direction both``). Loading it runs no code from
the directory: config.json and vocab.json are JSON, the weights safetensors.

Texts are tokenized exactly as in training (fastai rules + spaCy), mapped to each member's
vocabulary (unknown words -> xxunk), reversed for a backward member, batched by length inside
blocks of ``block`` texts (little padding, bounded memory for any number of texts) and put
back in input order. An ensemble averages its members' probabilities (regression: values).

What one prediction is, per label kind:

* single-label: ``{"label": "pos", "probabilities": {"neg": 0.08, "pos": 0.92}}``
  (softmax; the label is the most probable class);
* multi-label: ``{"labels": ["joy"], "probabilities": {...}}`` (a sigmoid per label; the
  labels are those at or above the threshold tuned for them at training, in
  ``config["thresholds"]``);
* regression: ``{"value": 3.2}`` for one target, ``{"values": {"a": 1.0, "b": 2.5}}`` for
  several (the names of the training columns).

A Predictor is not thread-safe (one tokenizer, models with state): a server runs it on one
thread (see :mod:`ulmfit.serve`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ulmfit.errors import UserError

BLOCK = 1024  # texts tokenized and predicted together: the unit of length-sorting and progress
# The tokenizer numbers every distinct token it meets; past this many it is replaced by a
# fresh one, and it memoises at most MAX_MEMO distinct pieces, so that a long-running server
# fed unique junk keeps a bounded memory.
MAX_TOKENIZER_TOKENS = 500_000
MAX_MEMO = 200_000


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def predict_logits(
    model, docs, bs: int = 64, device: str | None = None, amp: str = "auto"
) -> np.ndarray:
    """Logits ``(n_docs, n_out)`` of documents (``docs.ids``, ``docs.offsets``: a
    TokenCorpus or LabelledDocs) in input order (sorted batches, order restored). The
    forward pass runs in the precision ``amp`` gives the device (the same rule as training,
    :mod:`ulmfit.precision`: bf16 on a CPU with bf16 units or a bf16 GPU), with batches
    copied ahead of use; the logits come back as fp32."""
    import torch

    from ulmfit.loaders import ClassifierLoader, restore_order
    from ulmfit.precision import resolve_precision
    from ulmfit.train.prefetch import device_batches

    dev = torch.device(device or next(model.parameters()).device)
    autocast = resolve_precision(dev.type, amp).autocast(dev.type)
    model.to(dev).eval()
    loader = ClassifierLoader(docs.ids, docs.offsets, None, bs=bs, train=False, max_len=None)
    out = []
    with torch.inference_mode(), autocast:
        for x, _, idx in device_batches(loader, dev):
            out.append((idx, model(x).float().cpu()))
    return restore_order(out, len(docs)).numpy()


class Predictor:
    """A loaded classifier or ensemble: ``predict(texts)`` -> one dict per text, in order.

    Build it with :meth:`load` (or ``ulmfit.load(path)``)."""

    def __init__(
        self,
        config: dict,
        members: list[tuple],
        path: Path | str = "",
        *,
        bs: int = 64,
        device: str | None = None,
        block: int = BLOCK,
        amp: str = "auto",
    ) -> None:
        from ulmfit.devices import resolve_device
        from ulmfit.precision import precision_for

        if bs < 1 or block < 1:
            raise UserError(f"bs and block must be 1 or more, got {bs} and {block}")
        self.config = config
        self.members = members
        self.path = str(path)
        self.bs, self.block = bs, block
        self.device = resolve_device(device)
        self.amp = amp
        self.precision = precision_for(self.device, amp)
        self.kind: str = config.get("label_kind", "single")
        self.classes: list[str] = list(config.get("classes") or [])
        self.n_out: int = int(config.get("n_out") or len(self.classes))
        if self.kind == "multi" and not isinstance(config.get("thresholds"), dict):
            raise UserError(f"{self.path}: multi-label model without thresholds in config.json")
        if self.kind == "multi":
            missing = [c for c in self.classes if c not in config["thresholds"]]
            if missing:
                raise UserError(f"{self.path}: no threshold for label(s) {', '.join(missing)}")
        self.thresholds = (
            np.asarray([config["thresholds"][c] for c in self.classes], dtype=np.float64)
            if self.kind == "multi"
            else None
        )
        targets = list(config.get("targets") or [])
        self.targets: list[str] = (
            targets if len(targets) == self.n_out else [f"value_{k}" for k in range(self.n_out)]
        )
        for model, _, _ in members:
            model.to(self.device).eval()
        self._tok = None
        self._tables: list[np.ndarray] = []

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        device: str | None = None,
        bs: int = 64,
        block: int = BLOCK,
        amp: str = "auto",
    ) -> Predictor:
        """A run folder of ``ulmfit fit`` or a model directory (single or ensemble); a bad
        directory is a UserError saying what is wrong with it. ``amp``: the precision the
        models run in (:mod:`ulmfit.precision`; ``auto``: bf16 where the device has it)."""
        from ulmfit.devices import resolve_device
        from ulmfit.models.model_dir import load_members
        from ulmfit.precision import precision_for

        device = resolve_device(device)  # a missing GPU is said before the model is read
        precision_for(device, amp)  # so is an --amp the device lacks
        config, members = load_members(path)
        return cls(config, members, path, bs=bs, device=device, block=block, amp=amp)

    # -- texts -> ids ----------------------------------------------------------------------
    def _tokenizer(self):
        from ulmfit.text.tokenize import Tokenizer

        if self._tok is None or len(self._tok.itos_) > MAX_TOKENIZER_TOKENS:
            self._tok = Tokenizer(max_memo=MAX_MEMO)
            self._tables = [np.zeros(0, dtype=np.int64) for _ in self.members]
        return self._tok

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Tokenizer-local ids of each text (see :meth:`tokens_of`)."""
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise UserError(
                f"texts must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}"
            )
        return self._tokenizer().encode_batch(list(texts))

    def tokens_of(self, local: Sequence[int]) -> list[str]:
        """The fastai token strings of tokenizer-local ids."""
        itos = self._tok.itos_
        return [itos[i] for i in local]

    def member_ids(self, k: int, local: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, offsets)`` of tokenized texts in member ``k``'s vocabulary (unknown -> 0),
        each document reversed for a backward member."""
        from ulmfit.corpus import reverse_docs, vocab_map

        itos = self._tok.itos_
        table = self._tables[k]
        if len(table) < len(itos):  # tokens this tokenizer met since the last call
            new = vocab_map(itos[len(table) :], self.members[k][1])
            table = self._tables[k] = np.concatenate([table, new])
        offsets = np.zeros(len(local) + 1, dtype=np.int64)
        np.cumsum([len(d) for d in local], out=offsets[1:])
        flat = np.fromiter((i for d in local for i in d), dtype=np.int64, count=int(offsets[-1]))
        ids = table[flat]
        if self.members[k][2].get("direction", "fwd") == "bwd":
            ids = reverse_docs(ids, offsets)
        return ids, offsets

    # -- prediction ------------------------------------------------------------------------
    def logits(self, texts: Sequence[str], progress: bool | None = None) -> np.ndarray:
        """The combined outputs ``(n, n_out)`` in input order (an ensemble's as
        :func:`~ulmfit.models.model_dir.mean_outputs` gives them)."""
        from tqdm.auto import tqdm

        from ulmfit.corpus import TokenCorpus
        from ulmfit.models.model_dir import mean_outputs

        n = len(texts)
        if n == 0:
            return np.zeros((0, self.n_out), dtype=np.float32)
        if progress is None:
            progress = n > self.block and sys.stderr.isatty()
        out = []
        with tqdm(total=n, unit="doc", file=sys.stderr, disable=not progress) as bar:
            for start in range(0, n, self.block):
                chunk = texts[start : start + self.block]
                local = self.encode(chunk)
                outputs = []
                for k, (model, _, _) in enumerate(self.members):
                    ids, offsets = self.member_ids(k, local)
                    docs = TokenCorpus(ids, offsets, [])
                    outputs.append(
                        predict_logits(model, docs, bs=self.bs, device=self.device, amp=self.amp)
                    )
                out.append(mean_outputs(self.kind, outputs))
                bar.update(len(chunk))
        return np.concatenate(out)

    def scores(self, texts: Sequence[str], progress: bool | None = None) -> np.ndarray:
        """``(n, n_out)`` in input order: class probabilities (single-label: softmax),
        per-label probabilities (multi-label: sigmoid) or the predicted values (regression)."""
        return self.scores_of(self.logits(self.texts_of(texts), progress))

    def scores_of(self, logits: np.ndarray) -> np.ndarray:
        from ulmfit.metrics import sigmoid

        if self.kind == "single":
            return softmax(logits)
        if self.kind == "multi":
            return sigmoid(logits)
        return np.asarray(logits, dtype=np.float64)

    def predict(self, texts: Sequence[str], progress: bool | None = None) -> list[dict]:
        """One prediction per text, in input order (see the module docstring for their
        shape). ``progress``: a bar on stderr (default: for long inputs on a terminal)."""
        return [self.describe(row) for row in self.scores(texts, progress)]

    def texts_of(self, texts) -> list[str]:
        """``texts`` as a list of str: a list (or any sequence) of strings, a pandas Series,
        or a DataFrame read by the text columns of training (joined as in training) -- one
        text per row, never the column names a DataFrame iterates over."""
        if isinstance(texts, str):
            raise UserError("predict takes a list of texts; for one text use predict([text])")
        pandas = sys.modules.get("pandas")  # a DataFrame means pandas is loaded already
        if pandas is not None and isinstance(texts, pandas.DataFrame):
            from ulmfit.data.sources import frame_texts

            return frame_texts(texts, self.config.get("text_cols") or None)
        if pandas is not None and isinstance(texts, pandas.Series):
            return texts.tolist()
        return list(texts)

    def describe(self, row: np.ndarray) -> dict:
        """The prediction of one row of :meth:`scores`."""
        if self.kind == "float":
            if self.n_out == 1:
                return {"value": float(row[0])}
            return {"values": {t: float(v) for t, v in zip(self.targets, row)}}
        probs = {c: float(p) for c, p in zip(self.classes, row)}
        if self.kind == "multi":
            labels = [c for c, p, t in zip(self.classes, row, self.thresholds) if p >= t]
            return {"labels": labels, "probabilities": probs}
        return {"label": self.classes[int(np.argmax(row))], "probabilities": probs}

    def info(self) -> dict:
        """What a client needs to read the predictions: label kind, classes or targets,
        thresholds, the members' directions, the precision the models run in."""
        out = {
            "model": self.path,
            "label_kind": self.kind,
            "members": [m[2].get("direction", "fwd") for m in self.members],
            "precision": self.precision.record(),
        }
        if self.kind == "float":
            out["targets"] = self.targets
        else:
            out["classes"] = self.classes
        if self.kind == "multi":
            out["thresholds"] = dict(zip(self.classes, self.thresholds.tolist()))
        return out

    def explain(self, text: str, target: str | None = None) -> dict:
        """Which words drove the prediction: see :func:`ulmfit.explain.explain`."""
        from ulmfit.explain import explain

        return explain(self, text, target)


def load(
    path: Path | str, *, device: str | None = None, bs: int = 64, amp: str = "auto"
) -> Predictor:
    """The classifier (or ensemble) of a run folder or model directory, ready to predict."""
    return Predictor.load(path, device=device, bs=bs, amp=amp)


__all__ = ["BLOCK", "Predictor", "load", "predict_logits", "softmax"]
