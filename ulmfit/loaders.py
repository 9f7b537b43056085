"""Batching a numericalized corpus for language-model fine-tuning and for classification.

A corpus is one flat integer array ``ids`` (often uint16, often an ``np.memmap``) plus
``offsets`` (int64, ``n_docs + 1``): doc ``i`` is ``ids[offsets[i]:offsets[i + 1]]``.
Nothing here turns the corpus into Python lists or copies it whole: every batch is one
vectorised gather from ``ids``, so a corpus larger than RAM can be streamed from disk.

Two families of loaders follow fastai:

* :class:`LMLoader` -- fastai v2's ``LMDataLoader`` layout: docs are concatenated into one
  stream, cut into ``bs`` equal rows, and read ``bptt`` columns at a time, so each row
  continues in the next batch and the LSTM hidden state can be carried across batches.
* :class:`ClassifierLoader` -- fastai's sortish batching with pad-first collation, so
  each batch holds docs of similar length (little padding) and the last time step of
  every row is a real token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ulmfit.config import ClassifierConfig, LMTrainConfig
from ulmfit.errors import UserError

__all__ = [
    "ClassifierLoader",
    "ClassifierLoaderConfig",
    "LMLoader",
    "LMLoaderConfig",
    "SortedSampler",
    "SortishSampler",
    "doc_lengths",
    "pad_batch",
    "restore_order",
]

# Tags mixed into the seed so that the document shuffle and the sortish batches come from
# independent random streams (changing one never shifts the other). 1 was the variable-BPTT
# draws' tag (removed): the other two keep their numbers, so their draws stay the same.
_TAG_DOC_SHUFFLE = 0
_TAG_SORTISH = 2


@dataclass(frozen=True)
class LMLoaderConfig:
    """Defaults for :class:`LMLoader`."""

    bs: int = LMTrainConfig.bs
    bptt: int = LMTrainConfig.bptt
    shuffle: bool = False
    seed: int = 0


@dataclass(frozen=True)
class ClassifierLoaderConfig:
    """Defaults for :class:`ClassifierLoader`."""

    bs: int = ClassifierConfig.bs
    pad_id: int = 1
    pad_first: bool = True
    max_len: int | None = None
    seed: int = 0
    # fastai sorts chunks of bs * 50 docs: big enough for tight batches, small enough to
    # keep batch composition random from epoch to epoch.
    sortish_chunk_batches: int = 50


_LM = LMLoaderConfig()
_CHUNK = 1 << 22  # documents per slice where a whole-corpus temporary would be needed
_CLS = ClassifierLoaderConfig()


def _rng(seed: int, epoch: int, tag: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), int(tag)])


def _check_corpus(ids: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fail early with a readable message: a bad offsets array otherwise surfaces as garbage batches."""
    if not isinstance(ids, np.ndarray) or ids.ndim != 1:
        raise UserError(f"ids must be a 1-D numpy array, got {type(ids).__name__}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise UserError(f"ids must hold integers, got dtype {ids.dtype}")
    offsets = np.asarray(offsets, dtype=np.int64)  # a mapped int64 file stays mapped
    if offsets.ndim != 1 or len(offsets) < 1:
        raise UserError("offsets must be a 1-D array of length n_docs + 1")
    step = _CHUNK  # checked a slice at a time: no temporary the size of the corpus
    decreasing = any(
        np.any(np.diff(offsets[i : i + step + 1]) < 0) for i in range(0, len(offsets), step)
    )
    if offsets[0] < 0 or offsets[-1] > len(ids) or decreasing:
        raise UserError(
            f"offsets must be non-decreasing within [0, {len(ids)}]; "
            f"got first={offsets[0]}, last={offsets[-1]}"
        )
    return ids, offsets


def doc_lengths(offsets: np.ndarray) -> np.ndarray:
    """Token count per doc (int64), the key both samplers sort on."""
    return np.diff(np.asarray(offsets, dtype=np.int64))


# --------------------------------------------------------------------------------------
# Language-model stream
# --------------------------------------------------------------------------------------


class LMLoader:
    """Contiguous-stream batches ``(x, y)`` for language-model training, fastai v2 layout.

    The concatenated stream (docs in order, or in a seeded per-epoch permutation) is cut into
    ``bs * world_size`` rows of ``row_len`` tokens; this process owns rows
    ``[rank * bs, (rank + 1) * bs)``. Batch ``k`` is columns ``[k*bptt, (k+1)*bptt)`` of those
    rows and ``y`` is the same window one token later, so row ``r`` of batch ``k + 1`` continues
    row ``r`` of batch ``k`` and the hidden state may be carried over. The tail of the stream
    that does not fill every row equally is dropped (fewer than ``bs * world_size`` tokens).

    Shuffling happens at document level (order inside a doc is the signal). Call
    :meth:`set_epoch` before each epoch to get a new, reproducible order; like PyTorch's
    ``DistributedSampler``, iterating twice without it repeats the same epoch. All ranks
    derive the order from ``seed`` and the epoch only, so they stay in lock step without
    communicating.
    """

    def __init__(
        self,
        ids: np.ndarray,
        offsets: np.ndarray,
        bs: int = _LM.bs,
        bptt: int = _LM.bptt,
        shuffle: bool = _LM.shuffle,
        seed: int = _LM.seed,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.ids, self.offsets = _check_corpus(ids, offsets)
        self.cfg = LMLoaderConfig(bs=bs, bptt=bptt, shuffle=shuffle, seed=seed)
        if bs < 1 or bptt < 1:
            raise UserError(f"bs and bptt must be positive, got bs={bs}, bptt={bptt}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.rank, self.world_size = rank, world_size
        # No per-document array is kept: lengths come from the (mapped) offsets a slice at a
        # time when an epoch's order is laid out, so resident memory per document is only that
        # epoch's order and cumulative lengths (12 bytes).
        self.n_docs = len(self.offsets) - 1
        self.n_tokens = int(self.offsets[-1] - self.offsets[0])  # offsets checked ascending
        n_rows_total = bs * world_size
        # "-1": the last input token of the last row still needs a target.
        self.row_len = (self.n_tokens - 1) // n_rows_total if self.n_tokens > 0 else 0
        if self.row_len < 1:
            raise UserError(
                f"corpus of {self.n_tokens} tokens is too small for {n_rows_total} streams "
                f"(bs={bs} x world_size={world_size}); lower bs"
            )
        self.epoch = 0
        self._seq_lens = self._make_seq_lens()

    # -- epoch state -----------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the document order of ``epoch`` (deterministic)."""
        self.epoch = int(epoch)

    def _make_seq_lens(self) -> list[int]:
        """The batch widths: ``bptt`` columns each, the last one narrower."""
        n_full, rest = divmod(self.row_len, self.cfg.bptt)
        return [self.cfg.bptt] * n_full + ([rest] if rest else [])

    def doc_order(self) -> np.ndarray:
        """Order in which docs are concatenated this epoch (identity unless shuffling)."""
        n_docs = self.n_docs
        # int32 where it fits: half the memory for tens of millions of docs. The shuffle draws
        # the same numbers whatever the dtype (Generator.permutation(n) is arange + shuffle).
        dtype = np.int32 if n_docs < 2**31 else np.int64
        order = np.arange(n_docs, dtype=dtype)
        if self.cfg.shuffle:
            _rng(self.cfg.seed, self.epoch, _TAG_DOC_SHUFFLE).shuffle(order)
        return order

    def __len__(self) -> int:
        return len(self._seq_lens)

    # -- iteration -------------------------------------------------------------------
    def _stream_to_flat(self, order: np.ndarray | None) -> Callable[[np.ndarray], np.ndarray]:
        """A function mapping stream positions to indices into ``ids``.

        Unshuffled, the stream *is* ``ids[offsets[0]:offsets[-1]]``, so this is a shift. Shuffled,
        a position is located in the permuted cumulative lengths (binary search), which avoids
        materialising a shuffled copy of the corpus: only the tokens of the current batch are
        ever gathered.
        """
        base = int(self.offsets[0])
        if order is None:
            return lambda pos: pos + base
        cum = np.zeros(len(order) + 1, dtype=np.int64)
        step = _CHUNK  # a slice at a time: no shuffled copy of all the lengths
        for i in range(0, len(order), step):
            docs = order[i : i + step]
            part = np.cumsum(self.offsets[docs + 1] - self.offsets[docs])
            cum[i + 1 : i + 1 + len(part)] = part + cum[i]
        offsets = self.offsets

        def to_flat(pos: np.ndarray) -> np.ndarray:
            k = np.searchsorted(cum, pos, side="right") - 1  # skips empty docs
            return offsets[order[k]] + (pos - cum[k])

        return to_flat

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.doc_order() if self.cfg.shuffle else None
        to_flat = self._stream_to_flat(order)
        bs = self.cfg.bs
        rows = np.arange(self.rank * bs, (self.rank + 1) * bs, dtype=np.int64)
        row_starts = rows * self.row_len
        col = 0
        for sl in self._seq_lens:
            pos = row_starts[:, None] + (col + np.arange(sl + 1, dtype=np.int64))[None, :]
            win = np.asarray(self.ids[to_flat(pos)], dtype=np.int64)
            # contiguous copies: callers .view(-1) the targets for the loss
            yield (
                torch.from_numpy(np.ascontiguousarray(win[:, :-1])),
                torch.from_numpy(np.ascontiguousarray(win[:, 1:])),
            )
            col += sl


# --------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------


class SortedSampler:
    """Evaluation batches: longest docs first, so padding is minimal and the first batch reveals
    out-of-memory problems immediately rather than at the end of a long evaluation."""

    def __init__(self, lengths: Sequence[int] | np.ndarray, bs: int) -> None:
        if bs < 1:
            raise UserError(f"bs must be positive, got {bs}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.bs = bs

    def set_epoch(self, epoch: int) -> None:
        """No-op, so training loops can treat every sampler alike."""

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.bs)

    def __iter__(self) -> Iterator[np.ndarray]:
        # stable sort on -length: ties keep input order, so evaluation order is reproducible.
        order = np.argsort(-self.lengths, kind="stable")
        for i in range(0, len(order), self.bs):
            yield order[i : i + self.bs]


class SortishSampler:
    """Training batches of similar-length docs that still differ from epoch to epoch (fastai).

    Shuffle, sort chunks of ``bs * chunk_batches`` docs by length, cut into batches, put the
    batch holding the longest doc first (so an out-of-memory error shows up at step one), and
    shuffle the rest. Yields whole batches rather than a flat index list, so a short final
    batch cannot shift the batch boundaries of everything after it (a flaw of fastai v1).
    With ``shuffle=False`` it degenerates to :class:`SortedSampler` order.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        bs: int,
        shuffle: bool = True,
        seed: int = 0,
        chunk_batches: int = _CLS.sortish_chunk_batches,
    ) -> None:
        if bs < 1 or chunk_batches < 1:
            raise UserError(f"bs and chunk_batches must be positive, got {bs}, {chunk_batches}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.bs, self.shuffle, self.seed, self.chunk_batches = bs, shuffle, seed, chunk_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the (deterministic) batch order of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.bs)

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches of doc indices, in the order they will be yielded."""
        n, bs = len(self.lengths), self.bs
        if not self.shuffle:
            return list(SortedSampler(self.lengths, bs))
        rng = _rng(self.seed, self.epoch, _TAG_SORTISH)
        idx = rng.permutation(n)
        sz = bs * self.chunk_batches
        sorted_idx = np.concatenate(
            [
                c[np.argsort(-self.lengths[c], kind="stable")]
                for c in np.split(idx, range(sz, n, sz))
            ]
        )
        # sz is a multiple of bs, so no batch straddles two chunks except possibly the very last.
        batches = [sorted_idx[i : i + bs] for i in range(0, n, bs)]
        if len(batches) <= 1:
            return batches
        longest = int(np.argmax([self.lengths[b[0]] for b in batches]))
        batches[0], batches[longest] = batches[longest], batches[0]
        rest = rng.permutation(len(batches) - 1) + 1
        return [batches[0]] + [batches[i] for i in rest]

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches())


def pad_batch(
    ids: np.ndarray,
    offsets: np.ndarray,
    idx: np.ndarray,
    pad_id: int = _CLS.pad_id,
    pad_first: bool = _CLS.pad_first,
    max_len: int | None = _CLS.max_len,
) -> torch.Tensor:
    """Gather and pad docs ``idx`` into one (B, T) int64 tensor with a single fancy-index read.

    Pad-first (fastai's classifier default) puts every doc's last token in the last column, so
    the final hidden state the pooling layer sees is a real token for all rows. ``max_len`` keeps
    the *last* ``max_len`` tokens of longer docs, the part the classifier's pooling reads.
    """
    idx = np.asarray(idx, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    starts = offsets[idx].astype(np.int64)
    ends = offsets[idx + 1].astype(np.int64)
    lens = ends - starts
    if max_len is not None:
        lens = np.minimum(lens, max_len)
        starts = ends - lens
    bsz = len(idx)
    width = max(int(lens.max()) if bsz else 0, 1)
    x = np.full((bsz, width), pad_id, dtype=np.int64)
    total = int(lens.sum())
    if total:
        row = np.repeat(np.arange(bsz), lens)
        within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
        src = np.repeat(starts, lens) + within
        col = within + np.repeat(width - lens, lens) if pad_first else within
        x[row, col] = ids[src]
    return torch.from_numpy(x)


def _labels_array(labels: object, n_docs: int) -> np.ndarray | None:
    """Integer codes stay int64 (cross-entropy targets); anything else (multi-hot, regression)
    becomes float32 (BCE / MSE targets)."""
    if labels is None:
        return None
    arr = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if len(arr) != n_docs:
        raise UserError(f"{len(arr)} labels for {n_docs} documents")
    if arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if arr.dtype.kind not in "biuf":
        raise UserError(f"labels must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float32)


def shard_batches(
    batches: list[np.ndarray], rank: int, world_size: int, train: bool
) -> list[np.ndarray]:
    """This rank's part of a list of batches, every doc in exactly one rank's part.

    Training (``batches`` of ``bs * world_size`` docs): every batch is split into
    ``world_size`` near-equal contiguous pieces and this rank gets piece ``rank`` of each, so
    all ranks take the same number of steps (DDP needs that) and the union of one step's
    pieces is the batch one process with ``bs * world_size`` would see. A final batch with fewer
    docs than ranks is merged into the batch before it, so no piece is empty and no doc is
    dropped or repeated. Evaluation: batch ``k`` goes to rank ``k % world_size`` (ranks may
    get one batch more or less; validation needs no equal step counts).
    """
    if world_size == 1:
        return batches
    if not train:
        return batches[rank::world_size]
    batches = list(batches)
    short = [i for i, b in enumerate(batches) if len(b) < world_size]
    for i in reversed(short):
        if len(batches) == 1:
            raise UserError(
                f"{len(batches[0])} training documents cannot be shared by {world_size} "
                "processes; use fewer processes"
            )
        j = i - 1 if i > 0 else 1
        batches[j] = np.concatenate([batches[j], batches[i]])
        del batches[i]
    return [np.array_split(b, world_size)[rank] for b in batches]


class ClassifierLoader:
    """Padded classification batches ``(x, y, idx)``; ``idx`` maps rows back to input order.

    Training uses :class:`SortishSampler` (similar lengths, random composition), evaluation
    :class:`SortedSampler` (longest first). Because both reorder docs, every batch carries the
    original indices; :func:`restore_order` uses them to put predictions back in input order.
    ``y`` is ``None`` when no labels were given (prediction on unlabelled text).

    With ``world_size > 1`` (data-parallel training) each process gets its shard of every
    batch, ``bs`` documents per process, as :func:`shard_batches` says; every process derives
    the same global order from ``seed`` and the epoch, without communicating.
    """

    def __init__(
        self,
        ids: np.ndarray,
        offsets: np.ndarray,
        labels: np.ndarray | Sequence | torch.Tensor | None = None,
        bs: int = _CLS.bs,
        train: bool = True,
        pad_id: int = _CLS.pad_id,
        pad_first: bool = _CLS.pad_first,
        max_len: int | None = _CLS.max_len,
        seed: int = _CLS.seed,
        *,
        sortish_chunk_batches: int = _CLS.sortish_chunk_batches,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.ids, self.offsets = _check_corpus(ids, offsets)
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.rank, self.world_size = rank, world_size
        self.cfg = ClassifierLoaderConfig(
            bs=bs,
            pad_id=pad_id,
            pad_first=pad_first,
            max_len=max_len,
            seed=seed,
            sortish_chunk_batches=sortish_chunk_batches,
        )
        if max_len is not None and max_len < 1:
            raise UserError(f"max_len must be positive or None, got {max_len}")
        self.train = train
        self.n_docs = len(self.offsets) - 1
        self.labels = _labels_array(labels, self.n_docs)
        lengths = doc_lengths(self.offsets)
        if max_len is not None:
            lengths = np.minimum(lengths, max_len)
        self.lengths = lengths
        gbs = bs * world_size if train else bs  # training: one global batch per step
        self.sampler: SortishSampler | SortedSampler = (
            SortishSampler(
                lengths, gbs, shuffle=True, seed=seed, chunk_batches=sortish_chunk_batches
            )
            if train
            else SortedSampler(lengths, bs)
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the (deterministic) batch order of ``epoch``; no effect in evaluation mode."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        w = self.world_size
        if w == 1:
            return len(self.sampler)
        if not self.train:  # batches rank, rank + w, ...
            return len(range(self.rank, len(self.sampler), w))
        n, gbs = self.n_docs, self.cfg.bs * w
        full, rest = divmod(n, gbs)
        return full + (1 if rest >= w or (full == 0 and rest) else 0)  # tail < w: merged

    def batch_indices(self) -> list[np.ndarray]:
        """This epoch's batches of doc indices for this rank, in order."""
        batches = (
            self.sampler.batches()
            if isinstance(self.sampler, SortishSampler)
            else list(self.sampler)
        )
        return shard_batches(batches, self.rank, self.world_size, self.train)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        c = self.cfg
        for idx in self.batch_indices():
            x = pad_batch(self.ids, self.offsets, idx, c.pad_id, c.pad_first, c.max_len)
            y = None if self.labels is None else torch.from_numpy(self.labels[idx])
            yield x, y, torch.from_numpy(np.asarray(idx, dtype=np.int64))


def restore_order(
    batches_preds: Sequence[tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]],
    n: int,
) -> torch.Tensor | np.ndarray:
    """Undo the sampler's reordering: row ``i`` of the result is the prediction for input doc ``i``.

    ``batches_preds`` is ``[(idx, preds), ...]`` as collected from :class:`ClassifierLoader`
    batches. Every index in ``0..n-1`` must occur exactly once -- a missing or repeated doc
    means predictions would be silently misaligned, so it is an error. Returns a tensor if the
    predictions are tensors, else a numpy array.
    """
    if not batches_preds:
        raise ValueError(f"no batches to restore, expected {n} predictions")
    as_torch = isinstance(batches_preds[0][1], torch.Tensor)

    def to_np(a: torch.Tensor | np.ndarray) -> np.ndarray:
        return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)

    idx = np.concatenate([to_np(i).reshape(-1).astype(np.int64) for i, _ in batches_preds])
    preds = np.concatenate([to_np(p) for _, p in batches_preds])
    if len(idx) != len(preds):
        raise ValueError(f"{len(idx)} indices but {len(preds)} prediction rows")
    if len(idx) != n or np.any(idx < 0) or np.any(idx >= n) or len(np.unique(idx)) != n:
        raise ValueError(f"indices are not a permutation of 0..{n - 1}")
    out = np.empty_like(preds)
    out[idx] = preds
    return torch.from_numpy(out) if as_torch else out


class FewBatches:
    """A loader cut to its first ``n`` batches: every stage runs, briefly (``--dry-run``)."""

    def __init__(self, loader, n: int) -> None:
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return min(self.n, len(self.loader))

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= self.n:
                return
            yield batch
