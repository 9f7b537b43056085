"""Language models: pretrain from scratch, fine-tune on target text (ULMFiT stage 2).

Training uses the engine in :mod:`ulmfit.train`; the model and data it trains on (vocabulary,
held-out split, backward order, vocabulary remap of pretrained weights) come from
:mod:`ulmfit.tasks.lm_setup`, the before/after figures from :mod:`ulmfit.lm_eval`. This module
holds the settings, the ULMFiT schedule and the run folder, and writes the model directory
with a ``report.json``.

Resumable runs. Training happens in ``DIR.partial`` next to the target ``DIR``: ``run.json``
(the command, the settings that change the weights, content hashes of the data and of the
pretrained model), ``before.json`` (fine-tuning: held-out metrics of the untrained model,
measured once) and ``train/`` (the engine's ``checkpoint.pt``, replaced atomically after every
epoch, and its logs). With ``resume=True`` a run continues there -- finished stages are skipped
and the interrupted one continues from its last checkpoint on the same schedule, so the result
equals an uninterrupted run's -- after checking that ``run.json`` matches (else a UserError
naming the setting). Without it an existing ``DIR.partial`` is an error, never deleted. On
success the model directory is published in one rename, with the logs (not the checkpoint, a
pickle) in ``DIR/train``, and ``DIR.partial`` is removed. ``pretrain_lr_find`` and
``finetune_lm_lr_find`` run the learning-rate range test on the same model and data instead.

Several processes (``torchrun ... ulmfit pretrain``, see :mod:`ulmfit.train.distributed`):
every rank prepares the data (from the shared cache) and trains on its own contiguous slice
of the streams (``bs`` rows per rank, ``bs * world_size`` rows in all); rank 0 alone decides
whether to resume, writes ``DIR.partial``, evaluates, and publishes the model directory. The
other ranks return once training is over.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from ulmfit.config import (
    AWDLSTMConfig,
    FinetuneLMConfig,
    LMTrainConfig,
    LRFindConfig,
    PretrainConfig,
)
from ulmfit.devices import resolve_device
from ulmfit.errors import UserError
from ulmfit.lm_eval import lm_eval
from ulmfit.models.awd_lstm import LanguageModel
from ulmfit.precision import precision_for
from ulmfit.tasks.lm_partial import (
    BEFORE_FILE,
    check_same,
    create_partial,
    lr_find_plot_path,
    open_partial,
    run_settings,
)
from ulmfit.tasks.lm_setup import (
    LMSetup,
    finetune_setup,
    lm_learner,
    load_pretrained,
    pretrain_setup,
)

# ----------------------------------------------------------------------------------------
# Training settings
# ----------------------------------------------------------------------------------------


def _check_config(cfg: LMTrainConfig) -> None:
    bad = []
    for name in ("bs", "bptt", "epochs", "max_vocab", "min_freq"):
        if getattr(cfg, name) < 1:
            bad.append(f"{name} must be 1 or more, got {getattr(cfg, name)}")
    if getattr(cfg, "frozen_epochs", 0) < 0:
        bad.append(f"frozen_epochs must be 0 or more, got {cfg.frozen_epochs}")
    for name in ("lr", "frozen_lr"):
        if hasattr(cfg, name) and not getattr(cfg, name) > 0:
            bad.append(f"{name} must be positive, got {getattr(cfg, name)}")
    if problem := AWDLSTMConfig().drop_mult_problem(cfg.drop_mult):
        bad.append(problem)
    if not cfg.wd >= 0:
        bad.append(f"wd must be 0 or more, got {cfg.wd}")
    if cfg.clip is not None and not cfg.clip > 0:
        bad.append(f"clip must be positive (or None), got {cfg.clip}")
    if not 0 <= cfg.valid_pct < 1:
        bad.append(f"valid_pct must be in [0, 1), got {cfg.valid_pct}")
    if cfg.workers < 0:
        bad.append("workers must be 0 (all cores) or more")
    for name in ("emb_sz", "n_hid", "n_layers"):
        if hasattr(cfg, name) and getattr(cfg, name) < 1:
            bad.append(f"{name} must be 1 or more, got {getattr(cfg, name)}")
    if bad:
        raise UserError("; ".join(bad))
    _track(cfg)
    precision_for(resolve_device(cfg.device), cfg.amp)  # a refused --amp, before any work


def _track(cfg: LMTrainConfig):
    """The last stage's Track: the held-out loss, kept best and / or with a patience
    (``None`` for the defaults, keep-last and every epoch); a bad setting is a UserError."""
    from ulmfit.train.tracker import track_of

    return track_of(cfg.keep, cfg.patience, "valid_loss")


def _check_finetune(cfg: FinetuneLMConfig) -> None:
    _check_config(cfg)
    if cfg.valid_pct <= 0:
        raise UserError("fine-tuning reports held-out perplexity: valid_pct must be above 0")


TRAIN_LOG_DIR = "train"  # metrics.jsonl, steps.jsonl, loss.png inside the model directory
REPORT_FILE = "report.json"


def _result(out: Path, report: dict) -> dict:
    return {
        "out": str(out),
        "report": str(out / REPORT_FILE),
        "before": report.get("before"),
        "after": report.get("after"),
        "vocab_remap": report.get("vocab_remap"),
        "training_log": str(out / TRAIN_LOG_DIR / "metrics.jsonl"),
        "kept": report.get("kept"),
        "resumed": report.get("resumed", False),
        "seconds": report["seconds"],
    }


def _worker_result(out: Path, resumed: bool, t0: float) -> dict:
    """What a rank other than 0 returns: it trained, rank 0 writes and reports."""
    from ulmfit.train import distributed

    return {
        "out": str(out),
        "report": str(out / REPORT_FILE),
        "rank": distributed.rank(),
        "resumed": resumed,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _jsonable(cfg) -> dict:
    from dataclasses import asdict

    d = asdict(cfg)
    return {
        k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
        for k, v in d.items()
    }


def _say(cfg: LMTrainConfig, msg: str) -> None:
    if cfg.verbose:
        print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# Starting and publishing a run in DIR.partial (the folder itself: ulmfit.tasks.lm_partial)
# ----------------------------------------------------------------------------------------


def _begin_run(kind: str, cfg, out_dir, resume: bool):
    """What ``pretrain`` and ``finetune_lm`` start with: the process group, this rank's
    config (quiet off rank 0), the clock, the run's settings and, decided on rank 0, the
    target folder, its ``.partial`` folder and the unfinished run's record (or ``None``)."""
    from ulmfit.models.io import check_target
    from ulmfit.train import distributed

    distributed.init(cfg.device)
    main = distributed.is_main()
    cfg = cfg if main else replace(cfg, verbose=False, progress=False)
    t0 = time.perf_counter()
    run = run_settings(kind, _jsonable(cfg))

    def open_run() -> tuple[Path, Path, dict | None]:
        out = check_target(Path(out_dir), cfg.overwrite)
        return (out, *open_partial(out, run, resume, cfg.verbose))

    return cfg, main, t0, run, distributed.on_main(open_run)


@contextmanager
def _keep_if_resumable(partial: Path, created: bool) -> Iterator[None]:
    """A run that fails before its first checkpoint leaves nothing behind (if it created
    ``DIR.partial``); after that, ``DIR.partial`` stays for ``--resume``."""
    from ulmfit.train.learner import CHECKPOINT

    try:
        yield
    except BaseException:
        if created and not (partial / TRAIN_LOG_DIR / CHECKPOINT).exists():
            shutil.rmtree(partial, ignore_errors=True)
        raise


def _publish_run(
    partial: Path,
    out_dir: Path,
    overwrite: bool,
    model: LanguageModel,
    vocab: list[str],
    meta: dict,
    direction: str,
    report: dict,
) -> None:
    """The model directory, with the training logs (not the checkpoint: a torch pickle) and
    the report, published in one rename; then ``DIR.partial`` is removed."""
    from ulmfit.models.io import staged_dir, write_model_files
    from ulmfit.train.learner import LOSS_PLOT, METRICS, STEPS

    with staged_dir(out_dir, overwrite) as tmp:
        write_model_files(tmp, model, vocab, meta, direction)
        logs = tmp / TRAIN_LOG_DIR
        logs.mkdir()
        for name in (METRICS, STEPS, LOSS_PLOT):
            src = partial / TRAIN_LOG_DIR / name
            if src.is_file():
                shutil.copyfile(src, logs / name)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1), encoding="utf-8")
    shutil.rmtree(partial, ignore_errors=True)


# ----------------------------------------------------------------------------------------
# Pretraining
# ----------------------------------------------------------------------------------------


def pretrain(
    specs: list,
    out_dir: Path | str,
    cfg: PretrainConfig | None = None,
    *,
    valid: list | None = None,
    resume: bool = False,
) -> dict:
    """Train an AWD-LSTM language model from scratch on the corpus ``specs`` and save it in
    ``out_dir``. Vocabulary from the corpus (max_vocab, min_freq); validation on ``valid``
    (read with the model's vocabulary) or on ``valid_pct`` of the documents held out.
    ``cfg.backwards`` reverses each document (a backward model, direction "bwd").

    Training runs in ``DIR.partial`` (see :func:`partial_dir`) with a checkpoint per epoch;
    ``resume`` continues an unfinished run there (same settings and data, else UserError)."""
    from ulmfit.train import distributed

    cfg = cfg or PretrainConfig()
    _check_config(cfg)
    cfg, main, t0, run, (out_dir, partial, previous) = _begin_run("pretrain", cfg, out_dir, resume)
    s = pretrain_setup(specs, cfg, valid)
    run.update(s.keys)
    track = _track(cfg)
    if track is not None and s.valid_loader is None:
        raise UserError(
            "--keep best and --patience watch the held-out loss: give --valid or a "
            "--valid-pct above 0"
        )

    def start_run() -> None:
        if previous is not None:
            check_same(partial, previous, run, ("data", "valid"))
            _say(cfg, f"--resume: continuing the unfinished run in {partial}")
        else:
            create_partial(partial, run)

    distributed.on_main(start_run)
    with _keep_if_resumable(partial, created=previous is None and main):
        learn = lm_learner(s.model, s.train_loader, s.valid_loader, cfg, partial / TRAIN_LOG_DIR)
        epochs = 1 if cfg.dry_run else cfg.epochs
        learn.fit_one_cycle(
            epochs,
            cfg.lr,
            moms=tuple(cfg.moms),
            wd=cfg.wd,
            track=track,
            resume=previous is not None,
        )
        if not main:  # rank 0 evaluates and publishes
            return _worker_result(out_dir, previous is not None, t0)
        after = lm_eval(s.model, s.vocab, s.valid_docs, amp=cfg.amp) if s.valid_docs else None
        report = {
            "task": "pretrain",
            "direction": s.direction,
            **s.report,
            "config": _jsonable(cfg),
            "precision": learn.amp.record(),
            "after": after,
            "history": learn.history,
            "kept": learn.kept,
            "training_log": f"{TRAIN_LOG_DIR}/metrics.jsonl",
            "dry_run": cfg.dry_run,
            "resumed": previous is not None,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        meta = {
            "trained": "pretrain",
            "config": _jsonable(cfg),
            "precision": learn.amp.record(),
            "valid": after,
        }
        _publish_run(partial, out_dir, cfg.overwrite, s.model, s.vocab, meta, s.direction, report)
    return _result(out_dir, report)


# ----------------------------------------------------------------------------------------
# Fine-tuning (ULMFiT stage 2)
# ----------------------------------------------------------------------------------------


def _fit_finetune_stages(learn, cfg: FinetuneLMConfig, resume: bool) -> None:
    """ULMFiT stage 2's two one-cycles: the last layer group alone (``frozen_epochs`` at
    ``frozen_lr``; none when 0), then every group (``epochs`` at ``lr``). A dry run trains
    at most one epoch of each. ``resume`` skips what the run's checkpoint shows finished.
    The second one keeps the epoch of ``cfg.keep`` and stops after ``cfg.patience``."""
    moms = tuple(cfg.moms)
    frozen_epochs = min(cfg.frozen_epochs, 1) if cfg.dry_run else cfg.frozen_epochs
    if frozen_epochs:
        learn.freeze()
        learn.fit_one_cycle(frozen_epochs, cfg.frozen_lr, moms=moms, wd=cfg.wd, resume=resume)
    learn.unfreeze()
    epochs = 1 if cfg.dry_run else cfg.epochs
    learn.fit_one_cycle(epochs, cfg.lr, moms=moms, wd=cfg.wd, track=_track(cfg), resume=resume)


def finetune_lm(
    specs: list,
    pretrained: str | Path,
    out_dir: Path | str,
    cfg: FinetuneLMConfig | None = None,
    *,
    vocab: str | Path | None = None,
    resume: bool = False,
) -> dict:
    """Fine-tune the language model ``pretrained`` (a model directory, or a fastai ``.pth``
    with ``vocab``) on the texts of ``specs`` and save it in ``out_dir`` with a report.

    The target vocabulary is built from the target texts; pretrained rows are copied for the
    tokens both share and new tokens start at the mean row. ``valid_pct`` of the documents
    are held out (seeded) and evaluated document by document before and after training.

    Training runs in ``DIR.partial`` with a checkpoint per epoch; ``resume`` continues an
    unfinished run there: the finished stage is skipped, the interrupted one continues from its
    last checkpoint, and the "before" metrics are the ones measured when the run started."""
    from ulmfit.train import distributed

    cfg = cfg or FinetuneLMConfig()
    _check_finetune(cfg)
    cfg, main, t0, run, (out_dir, partial, previous) = _begin_run(
        "finetune_lm", cfg, out_dir, resume
    )
    loaded = load_pretrained(pretrained, vocab, cfg)
    run["pretrained"] = loaded[3]
    if previous is not None:
        distributed.on_main(lambda: check_same(partial, previous, run, ("pretrained",)))
    s = finetune_setup(specs, loaded, cfg)
    del loaded
    run.update(s.keys)

    def start_run() -> dict | None:
        before = None
        if previous is not None:
            check_same(partial, previous, run, ("data",))
            with contextlib.suppress(OSError, ValueError):
                before = json.loads((partial / BEFORE_FILE).read_text(encoding="utf-8"))
        if before is None:  # a fresh run (or a before.json removed by hand)
            before = lm_eval(s.model, s.vocab, s.valid_docs, amp=cfg.amp)
        if previous is None:
            create_partial(partial, run, before)
        else:
            _say(cfg, f"--resume: continuing the unfinished run in {partial}")
        return before

    before = distributed.on_main(start_run)  # rank 0 measures, the others wait
    with _keep_if_resumable(partial, created=previous is None and main):
        learn = lm_learner(s.model, s.train_loader, s.valid_loader, cfg, partial / TRAIN_LOG_DIR)
        again = previous is not None
        _fit_finetune_stages(learn, cfg, resume=again)
        if not main:  # rank 0 evaluates and publishes
            return _worker_result(out_dir, again, t0)
        after = lm_eval(s.model, s.vocab, s.valid_docs, amp=cfg.amp)
        report = {
            "task": "finetune_lm",
            "direction": s.direction,
            **s.report,
            "config": _jsonable(cfg),
            "precision": learn.amp.record(),
            "before": before,
            "after": after,
            "history": learn.history,
            "kept": learn.kept,
            "training_log": f"{TRAIN_LOG_DIR}/metrics.jsonl",
            "dry_run": cfg.dry_run,
            "resumed": previous is not None,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        meta = {
            "trained": "finetune_lm",
            "pretrained": s.report["pretrained"]["path"],
            "config": _jsonable(cfg),
            "precision": learn.amp.record(),
            "valid_before": before,
            "valid_after": after,
        }
        _publish_run(partial, out_dir, cfg.overwrite, s.model, s.vocab, meta, s.direction, report)
    return _result(out_dir, report)


# ----------------------------------------------------------------------------------------
# Learning-rate range test on the model and data training would use
# ----------------------------------------------------------------------------------------


def _lr_find(s: LMSetup, cfg: LMTrainConfig, find: LRFindConfig, plot: Path, freeze: bool) -> dict:
    import tempfile

    from ulmfit.train import distributed
    from ulmfit.train.lr_find import lr_find

    if distributed.env_world()[1] > 1:
        raise UserError("--lr-find runs in one process: start it with python, not torchrun")

    with tempfile.TemporaryDirectory(prefix="ulmfit-lr-find-") as logs:
        learn = lm_learner(s.model, s.train_loader, None, cfg, Path(logs))
        if freeze:
            learn.freeze()
        res = lr_find(
            learn, start_lr=find.start_lr, end_lr=find.end_lr, num_it=find.num_it, plot=plot
        )
    return {
        "suggestion": res.suggestion,
        "steep": res.steep,
        "minimum": res.minimum,
        "plot": str(res.plot),
        "points": len(res.lrs),
    }


def pretrain_lr_find(
    specs: list,
    out_dir: Path | str,
    cfg: PretrainConfig | None = None,
    *,
    valid: list | None = None,
    find: LRFindConfig | None = None,
) -> dict:
    """The learning-rate range test on the freshly initialised model and the training split
    :func:`pretrain` would use; writes the plot only (nothing in ``out_dir`` or
    ``DIR.partial``). Returns ``suggestion`` (valley rule), ``steep``, ``minimum`` (the
    minimum's rate / 10), ``plot`` and ``points``."""
    cfg = cfg or PretrainConfig()
    find = find or LRFindConfig()
    _check_config(cfg)
    plot = Path(find.plot) if find.plot is not None else lr_find_plot_path(out_dir)
    s = pretrain_setup(specs, cfg, valid)
    return _lr_find(s, cfg, find, plot, freeze=False)


def finetune_lm_lr_find(
    specs: list,
    pretrained: str | Path,
    out_dir: Path | str,
    cfg: FinetuneLMConfig | None = None,
    *,
    vocab: str | Path | None = None,
    find: LRFindConfig | None = None,
) -> dict:
    """The range test on the remapped pretrained model and the training split
    :func:`finetune_lm` would use, frozen as its first stage (``find.stage == "frozen"``) or
    not; writes the plot only. Returns as :func:`pretrain_lr_find`, plus ``stage``."""
    cfg = cfg or FinetuneLMConfig()
    find = find or LRFindConfig()
    _check_finetune(cfg)
    if find.stage not in ("frozen", "unfrozen"):
        raise UserError(f"lr_find stage must be frozen or unfrozen, got {find.stage!r}")
    plot = Path(find.plot) if find.plot is not None else lr_find_plot_path(out_dir)
    s = finetune_setup(specs, load_pretrained(pretrained, vocab, cfg), cfg)
    return {**_lr_find(s, cfg, find, plot, freeze=find.stage == "frozen"), "stage": find.stage}
