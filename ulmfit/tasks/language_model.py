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
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from ulmfit.devices import resolve_device
from ulmfit.errors import UserError
from ulmfit.lm_eval import lm_eval
from ulmfit.models.awd_lstm import AWDLSTMConfig, LanguageModel
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


@dataclass
class LMTrainConfig:
    """Settings shared by pretraining and fine-tuning (fastai's defaults unless noted)."""

    bs: int = 64  # streams per batch
    bptt: int = 70  # tokens per step
    lr: float = 2e-3  # peak learning rate of the (last) one-cycle
    epochs: int = 10
    drop_mult: float = 0.3  # scales AWD-LSTM's dropouts
    wd: float = 0.01  # decoupled weight decay
    moms: tuple[float, float, float] = (0.8, 0.7, 0.8)
    clip: float | None = 0.1  # max gradient norm
    alpha: float = 2.0  # activation regularisation (AR)
    beta: float = 1.0  # temporal activation regularisation (TAR)
    seed: int = 42
    valid_pct: float = 0.1  # share of documents held out (seeded)
    max_vocab: int = 60000
    min_freq: int = 3
    workers: int = 0  # tokenizer processes (0 = all cores)
    cache_dir: Path | None = None  # None = $ULMFIT_CACHE or ~/.cache/ulmfit
    device: str | None = None  # None = cuda if available
    compile: bool = False  # train through torch.compile (GPU; the first steps compile)
    overwrite: bool = False  # replace an existing model directory at the target
    dry_run: bool = False  # every stage on a handful of rows, a few steps per epoch
    progress: bool | None = None  # None = bars only when stderr is a terminal
    verbose: bool = True  # one line per epoch on stderr


@dataclass
class FinetuneLMConfig(LMTrainConfig):
    """ULMFiT stage 2 as in fastai's IMDb example: ``freeze(); fit_one_cycle(1, 2e-2)``, then
    ``unfreeze(); fit_one_cycle(10, 2e-3)``, moms (0.8, 0.7, 0.8), drop_mult 0.3."""

    frozen_epochs: int = 1
    frozen_lr: float = 2e-2
    # False: fastai's vocabulary, from the target texts only. True: every pretrained token
    # too, so words the target texts never (or rarely) show keep their pretrained rows.
    keep_pretrained_vocab: bool = False
    # the pretrained model's direction; None: its own (a fastai file: "bwd" in its name)
    direction: str | None = None


@dataclass
class PretrainConfig(LMTrainConfig):
    """A language model from scratch. Architecture: fastai's ``awd_lstm_lm_config``. Training
    as fastai's WT103 script (one-cycle, wd 0.1, clip 0.1), with drop_mult 0.3 and peak lr
    5e-3 at bs 64 (the shared wiki30k model used 1e-2 at bs 256 on the same corpus)."""

    lr: float = 5e-3
    wd: float = 0.1
    emb_sz: int = 400
    n_hid: int = 1152
    n_layers: int = 3
    backwards: bool = False


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
    resolve_device(cfg.device)


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
# The training folder DIR.partial: resumable until the model directory is published
# ----------------------------------------------------------------------------------------

PARTIAL_SUFFIX = ".partial"
RUN_FILE = "run.json"  # the settings a --resume must repeat
BEFORE_FILE = "before.json"  # fine-tuning: held-out metrics of the untrained model
LR_FIND_SUFFIX = ".lr_find.png"
_RUN_FORMAT = 1
# Settings that do not change the trained weights; a resumed run may use other values.
_FREE_SETTINGS = ("workers", "cache_dir", "device", "overwrite", "progress", "verbose")
_WHAT_DIFFERS = {
    "format": "it was written by another version of ulmfit",
    "data": "the training data differ (other files or contents, text columns, or vocabulary "
    "settings)",
    "valid": "the --valid corpus differs",
    "pretrained": "the --pretrained model (or its --vocab) differs",
}


def partial_dir(out_dir: Path | str) -> Path:
    """``DIR.partial`` next to the target ``DIR``: where a run keeps its run.json, checkpoint
    and logs until the model directory is published."""
    p = Path(out_dir)
    if p.name in ("", ".", ".."):
        p = Path(os.path.abspath(p))
    return p.with_name(p.name + PARTIAL_SUFFIX)


def lr_find_plot_path(out_dir: Path | str) -> Path:
    """Default plot of ``--lr-find``: ``DIR.lr_find.png`` next to the target ``DIR``."""
    p = partial_dir(out_dir)
    return p.with_name(p.name[: -len(PARTIAL_SUFFIX)] + LR_FIND_SUFFIX)


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
    run = _run_settings(kind, cfg)

    def open_run() -> tuple[Path, Path, dict | None]:
        out = check_target(Path(out_dir), cfg.overwrite)
        return (out, *_open_partial(out, run, resume, cfg))

    return cfg, main, t0, run, distributed.on_main(open_run)


def _run_settings(command: str, cfg: LMTrainConfig) -> dict:
    config = {k: v for k, v in _jsonable(cfg).items() if k not in _FREE_SETTINGS}
    return {"format": _RUN_FORMAT, "command": command, "config": config}


def _show(v: object) -> str:
    return "unset" if v is None else json.dumps(v)


def _check_same(partial: Path, old: dict, new: dict, keys: Sequence[str]) -> None:
    """UserError naming the first setting of ``keys`` where ``new`` differs from ``old``."""
    new = json.loads(json.dumps(new))  # tuples -> lists, as stored
    for key in keys:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "config" and isinstance(a, dict) and isinstance(b, dict):
            k = next(k for k in [*b, *a] if a.get(k) != b.get(k))
            what = f"--{k.replace('_', '-')} was {_show(a.get(k))} there, now {_show(b.get(k))}"
        elif key == "command":
            what = f"it is an unfinished {_show(a)} run, this is {_show(b)}"
        else:
            what = _WHAT_DIFFERS.get(key, f"{key} differs")
        raise UserError(
            f"cannot resume {partial}: {what}; repeat the original settings with --resume, "
            f"or remove {partial} to start over"
        )


def _read_run(partial: Path) -> dict:
    file = partial / RUN_FILE
    if not partial.is_dir():
        raise UserError(f"{partial}: exists and is not a folder; remove it to start over")
    try:
        run = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"{partial}: no {RUN_FILE}, not a ulmfit training folder; remove it to start over"
        ) from None
    except (OSError, ValueError) as e:
        raise UserError(f"{file}: cannot read ({e}); remove {partial} to start over") from None
    if not isinstance(run, dict):
        raise UserError(f"{file}: expected a JSON object; remove {partial} to start over")
    return run


def _open_partial(
    out_dir: Path, run: dict, resume: bool, cfg: LMTrainConfig
) -> tuple[Path, dict | None]:
    """Before any heavy work: ``(DIR.partial, its run.json)`` to resume, or ``(DIR.partial,
    None)`` to start fresh. An unfinished run is never discarded silently."""
    partial = partial_dir(out_dir)
    exists = partial.exists() or partial.is_symlink()
    if not resume:
        if exists:
            raise UserError(
                f"{partial}: an unfinished training run for --out {out_dir} is there; pass "
                "--resume to continue it, or remove that folder to start over"
            )
        return partial, None
    if not exists:
        _say(cfg, f"--resume: no unfinished run in {partial}; starting fresh")
        return partial, None
    previous = _read_run(partial)
    _check_same(partial, previous, run, ("format", "command", "config"))
    return partial, previous


def _create_partial(partial: Path, run: dict, before: dict | None = None) -> None:
    """``DIR.partial`` with its run.json (and before.json), created in one rename."""
    from ulmfit.train.learner import _atomic_write

    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{partial.parent}: cannot create the folder: {e.strerror}") from None
    tmp = partial.parent / f".{partial.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        files = {RUN_FILE: run, **({BEFORE_FILE: before} if before is not None else {})}
        for name, obj in files.items():
            text = json.dumps(obj, indent=1)
            _atomic_write(tmp / name, lambda f, text=text: f.write(text), "w")
        os.rename(tmp, partial)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{partial}: cannot create the training folder: {e}") from None


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

    def start_run() -> None:
        if previous is not None:
            _check_same(partial, previous, run, ("data", "valid"))
            _say(cfg, f"--resume: continuing the unfinished run in {partial}")
        else:
            _create_partial(partial, run)

    distributed.on_main(start_run)
    with _keep_if_resumable(partial, created=previous is None and main):
        learn = lm_learner(s.model, s.train_loader, s.valid_loader, cfg, partial / TRAIN_LOG_DIR)
        epochs = 1 if cfg.dry_run else cfg.epochs
        learn.fit_one_cycle(
            epochs, cfg.lr, moms=tuple(cfg.moms), wd=cfg.wd, resume=previous is not None
        )
        if not main:  # rank 0 evaluates and publishes
            return _worker_result(out_dir, previous is not None, t0)
        after = lm_eval(s.model, s.vocab, s.valid_docs) if s.valid_docs else None
        report = {
            "task": "pretrain",
            "direction": s.direction,
            **s.report,
            "config": _jsonable(cfg),
            "after": after,
            "history": learn.history,
            "training_log": f"{TRAIN_LOG_DIR}/metrics.jsonl",
            "dry_run": cfg.dry_run,
            "resumed": previous is not None,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        meta = {"trained": "pretrain", "config": _jsonable(cfg), "valid": after}
        _publish_run(partial, out_dir, cfg.overwrite, s.model, s.vocab, meta, s.direction, report)
    return _result(out_dir, report)


# ----------------------------------------------------------------------------------------
# Fine-tuning (ULMFiT stage 2)
# ----------------------------------------------------------------------------------------


def _fit_finetune_stages(learn, cfg: FinetuneLMConfig, resume: bool) -> None:
    """ULMFiT stage 2's two one-cycles: the last layer group alone (``frozen_epochs`` at
    ``frozen_lr``; none when 0), then every group (``epochs`` at ``lr``). A dry run trains
    at most one epoch of each. ``resume`` skips what the run's checkpoint shows finished."""
    moms = tuple(cfg.moms)
    frozen_epochs = min(cfg.frozen_epochs, 1) if cfg.dry_run else cfg.frozen_epochs
    if frozen_epochs:
        learn.freeze()
        learn.fit_one_cycle(frozen_epochs, cfg.frozen_lr, moms=moms, wd=cfg.wd, resume=resume)
    learn.unfreeze()
    epochs = 1 if cfg.dry_run else cfg.epochs
    learn.fit_one_cycle(epochs, cfg.lr, moms=moms, wd=cfg.wd, resume=resume)


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
        distributed.on_main(lambda: _check_same(partial, previous, run, ("pretrained",)))
    s = finetune_setup(specs, loaded, cfg)
    del loaded
    run.update(s.keys)

    def start_run() -> dict | None:
        before = None
        if previous is not None:
            _check_same(partial, previous, run, ("data",))
            with contextlib.suppress(OSError, ValueError):
                before = json.loads((partial / BEFORE_FILE).read_text(encoding="utf-8"))
        if before is None:  # a fresh run (or a before.json removed by hand)
            before = lm_eval(s.model, s.vocab, s.valid_docs)
        if previous is None:
            _create_partial(partial, run, before)
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
        after = lm_eval(s.model, s.vocab, s.valid_docs)
        report = {
            "task": "finetune_lm",
            "direction": s.direction,
            **s.report,
            "config": _jsonable(cfg),
            "before": before,
            "after": after,
            "history": learn.history,
            "training_log": f"{TRAIN_LOG_DIR}/metrics.jsonl",
            "dry_run": cfg.dry_run,
            "resumed": previous is not None,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        meta = {
            "trained": "finetune_lm",
            "pretrained": s.report["pretrained"]["path"],
            "config": _jsonable(cfg),
            "valid_before": before,
            "valid_after": after,
        }
        _publish_run(partial, out_dir, cfg.overwrite, s.model, s.vocab, meta, s.direction, report)
    return _result(out_dir, report)


# ----------------------------------------------------------------------------------------
# Learning-rate range test on the model and data training would use
# ----------------------------------------------------------------------------------------


@dataclass
class LRFindConfig:
    """``--lr-find``: fastai's range test (rate from ``start_lr`` to ``end_lr`` over ``num_it``
    steps). ``plot``: where the PNG goes (None: ``DIR.lr_find.png`` next to ``--out``).
    ``stage`` (fine-tuning only): ``"frozen"`` tests the first stage (only the last layer group
    trains), ``"unfrozen"`` all groups, both on the remapped pretrained weights."""

    plot: Path | None = None
    stage: str = "frozen"
    start_lr: float = 1e-7
    end_lr: float = 10.0
    num_it: int = 100


def _lr_find(s: LMSetup, cfg: LMTrainConfig, find: LRFindConfig, plot: Path, freeze: bool) -> dict:
    import tempfile

    from ulmfit.train import distributed

    if distributed.env_world()[1] > 1:
        raise UserError("--lr-find runs in one process: start it with python, not torchrun")

    with tempfile.TemporaryDirectory(prefix="ulmfit-lr-find-") as logs:
        learn = lm_learner(s.model, s.train_loader, None, cfg, Path(logs))
        if freeze:
            learn.freeze()
        res = learn.lr_find(
            start_lr=find.start_lr, end_lr=find.end_lr, num_it=find.num_it, plot=plot
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
