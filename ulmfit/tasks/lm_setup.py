"""The model and data a language-model run trains on, shared by training and ``--lr-find``.

``pretrain_setup`` (a fresh AWD-LSTM, vocabulary from the corpus) and ``finetune_setup`` (the
pretrained weights remapped to the target vocabulary) each return an :class:`LMSetup`: the
model, its vocabulary, the loaders of both splits, the held-out documents that ``lm_eval``
reads, and what ``report.json`` and a resumed run's ``run.json`` record about the data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ulmfit.config import (
    AWDLSTMConfig,
    FinetuneLMConfig,
    LMTrainConfig,
    PrepareConfig,
    PretrainConfig,
    VocabConfig,
    engine_config,
)
from ulmfit.corpus import (
    TokenCorpus,
    concat_docs,
    corpus_folder,
    gather_docs,
    head_specs,
    read_token_corpus,
    reverse_docs,
    split_docs,
    train_stream,
    union_vocab,
    vocab_map,
)
from ulmfit.errors import UserError
from ulmfit.lm_eval import model_docs
from ulmfit.models.awd_lstm import LanguageModel

DRY_RUN_ROWS = 16  # rows read from each input by --dry-run
DRY_RUN_BATCHES = 4  # optimizer steps per epoch in a dry run


def prepare_corpus(specs: list, cfg: LMTrainConfig):
    """The inputs numericalized by ``prepare`` (cached) with the run's vocabulary settings."""
    from ulmfit.prepare import prepare

    return prepare(
        specs,
        PrepareConfig(
            workers=cfg.workers,
            vocab=VocabConfig(max_vocab=cfg.max_vocab, min_freq=cfg.min_freq),
            cache_dir=cfg.cache_dir,
            progress=cfg.progress,
        ),
    )


def lm_loader(ids: np.ndarray, offsets: np.ndarray, cfg: LMTrainConfig, train: bool):
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


def device_of(cfg: LMTrainConfig) -> torch.device:
    """``cfg.device`` (default cuda if available); under torchrun a bare ``cuda`` is this
    process's GPU (``LOCAL_RANK``)."""
    from ulmfit.train import distributed

    return distributed.device_for(cfg.device, distributed.info().local_rank)


def lm_learner(model, train_loader, valid_loader, cfg: LMTrainConfig, log_dir: Path):
    """The engine's Learner with the LM loss (AR/TAR) and the run's optimizer settings."""
    from ulmfit.train import Learner, LMTask

    tc = engine_config(cfg, clip=cfg.clip, device=str(device_of(cfg)))
    return Learner(
        model,
        train_loader,
        valid_loader,
        LMTask(alpha=cfg.alpha, beta=cfg.beta),
        out_dir=log_dir,
        config=tc,
    )


def corpus_summary(data) -> dict:
    """What report.json says about a prepared corpus."""
    m = data.meta
    return {
        "inputs": [i["path"] for i in m["inputs"]],
        "docs": m["docs"],
        "tokens": m["tokens"],
        "vocab_size": m["vocab_size"],
        "unk_rate": m["unk_rate"],
    }


@dataclass
class LMSetup:
    """Everything a run trains and evaluates on (see the module's docstring)."""

    model: LanguageModel
    vocab: list[str]
    train_loader: object
    valid_loader: object | None
    valid_docs: list[np.ndarray]
    direction: str
    keys: dict  # what a resumed run must match besides the settings (content hashes)
    report: dict  # report.json's description of the data and model


def pretrain_setup(specs: list, cfg: PretrainConfig, valid: list | None) -> LMSetup:
    """A fresh model (seeded) on the corpus ``specs``; held out: ``valid`` (or a corpus
    folder's valid file) read with the corpus's vocabulary, else ``valid_pct`` of the docs."""
    import tempfile

    from ulmfit.data.sources import file_fingerprint

    specs, folder_valid = corpus_folder(specs)
    valid = valid if valid is not None else folder_valid
    device = device_of(cfg)
    with tempfile.TemporaryDirectory(prefix="ulmfit-dry-") as scratch:
        if cfg.dry_run:
            specs = head_specs(specs, DRY_RUN_ROWS, Path(scratch))
            if valid is not None:
                valid = head_specs(valid, DRY_RUN_ROWS, Path(scratch) / "v")
        data = prepare_corpus(specs, cfg)
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
    train_loader = lm_loader(train_ids, train_off, cfg, train=True)
    valid_loader = lm_loader(*concat_docs(valid_docs), cfg, train=False) if valid_docs else None
    report = {
        "corpus": corpus_summary(data),
        "split": {
            "train_docs": int(len(train_idx)),
            "valid_docs": len(valid_docs),
            "valid": [str(s.path) for s in valid] if valid is not None else None,
            "valid_pct": None if valid is not None else cfg.valid_pct,
            "seed": cfg.seed,
        },
    }
    return LMSetup(
        model=model,
        vocab=vocab,
        train_loader=train_loader,
        valid_loader=valid_loader,
        valid_docs=valid_docs,
        direction="bwd" if cfg.backwards else "fwd",
        keys={"data": data.path.name, "valid": valid_keys},
        report=report,
    )


def load_pretrained(pretrained: str | Path, vocab: str | Path | None, cfg: FinetuneLMConfig):
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


def finetune_setup(specs: list, loaded: tuple, cfg: FinetuneLMConfig) -> LMSetup:
    """The pretrained model ``loaded`` (from :func:`load_pretrained`) remapped to the target
    vocabulary, with ``valid_pct`` of the target documents held out."""
    import tempfile

    from ulmfit.models.io import stored_state
    from ulmfit.models.pretrained import remap_vocab, with_aliases

    base, old_vocab, source, digest = loaded
    device = device_of(cfg)
    backwards = source["direction"] == "bwd"
    with tempfile.TemporaryDirectory(prefix="ulmfit-dry-") as scratch:
        if cfg.dry_run:
            specs = head_specs(specs, DRY_RUN_ROWS, Path(scratch))
        data = prepare_corpus(specs, cfg)
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
        "data": corpus_summary(data),
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
    return LMSetup(
        model=model,
        vocab=new_vocab,
        train_loader=lm_loader(train_ids, train_off, cfg, train=True),
        valid_loader=lm_loader(valid_ids, valid_off, cfg, train=False),
        valid_docs=valid_docs,
        direction=source["direction"],
        keys={"pretrained": digest, "data": data.path.name},
        report=report,
    )
