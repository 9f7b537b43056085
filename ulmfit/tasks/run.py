"""``ulmfit fit``: the whole ULMFiT chain in one run folder, each stage cached.

Stages, per direction (``fwd``, ``bwd``, or ``both``)::

    RUN/lm/  RUN/lm_bwd/        language model fine-tuned on every text (train, valid and
                                --unlabelled), from --pretrained / --pretrained-bwd
    RUN/model/  RUN/report/     the classifier (one direction) -- or, with both:
    RUN/fwd/{model,report}/     each direction's classifier, and RUN/model/ the ensemble
    RUN/bwd/{model,report}/     (hard links of both, probabilities averaged), RUN/report/
                                the ensemble's metrics
    RUN/stages.json             the key of every finished stage

A stage's key is a SHA-256 over everything its result depends on: the bytes of its input
files, the pretrained weights and vocabulary, its settings, and the key of the stage before
it. A re-run of ``fit`` into the same RUN reuses each stage whose key is unchanged (the
tokenized texts come from the content-addressed cache as well), so changing nothing re-does
only the test evaluation. An interrupted stage continues from its last epoch checkpoint on
the next run with the same key (the LM in ``RUN/lm.partial``, a classifier in
``.classifier-train`` inside its folder).

A finished run is never replaced without ``overwrite``: before any work, a run whose key for
a *finished* stage differs (other settings, other files, another --direction, another test
file) is refused with one line naming the stage and what changed; a stage folder that this
run did not record (somebody's own ``RUN/lm``) is refused too. With ``overwrite`` the stages
whose keys changed are trained again and replace their folders. A stage that never finished
is not protected: an interrupted one continues when its key is unchanged, and is started
over (its partial state discarded) when it changed. When an earlier stage finished and a
later one did not, the finished one is protected as above and the unfinished one is not.
A re-run continuing an attempt that ``overwrite`` started (its interrupted stage carries the
new key) needs no second ``overwrite``, for that stage and the ones built on it.
The pretrained models and vocabularies must lie outside RUN (``check_inputs_outside``).

A dry run (``ulmfit fit --dry-run``) is pointed by the command at a scratch run folder of its
own, ``dry_run_dir(RUN)`` = ``RUN.dry-run``, with ``overwrite``: RUN is never touched.

Under ``torchrun`` every rank runs the chain and trains each stage together; rank 0 alone
reads and writes RUN (stages.json, the stage folders, the reports) and broadcasts what it
found, so the other ranks follow the same path. The classifier stage loads the language
model rank 0 published: with several machines RUN must be on a shared file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ulmfit.config import ClassifierConfig, FinetuneLMConfig
from ulmfit.data.labels import read_labels
from ulmfit.errors import UserError
from ulmfit.metrics import SUMMARY_KEYS, predictions_of, sigmoid, tune_thresholds
from ulmfit.models.model_dir import MODEL_DIR
from ulmfit.report import write_report_files
from ulmfit.tasks.classifier import (
    _STAGE_FILE,
    LM_DIR,
    REPORT_DIR,
    WORK_DIR,
    _check_config,
    check_training_labels,
    clear_report,
    evaluate,
    fit_classifier,
    last_stage_track,
)
from ulmfit.tasks.lm_partial import partial_dir
from ulmfit.train.checkpoint import StageFolder, result_settings, setting_of

STAGES_FILE = "stages.json"
DRY_RUN_SUFFIX = ".dry-run"
DIRECTIONS = ("fwd", "bwd", "both")
_KEY_FORMAT = 1
_CLASSIFIER_RECIPE = 2  # 2: the stage rates became fastai's (lr/2, lr/4, lr/20)


def lm_config_for(cfg: ClassifierConfig, **changes):
    """The language-model fine-tuning settings that go with a classifier run: same device,
    precision, seed, workers, cache and output, fastai's LM defaults otherwise (``changes``
    override)."""
    return FinetuneLMConfig(
        device=cfg.device,
        amp=cfg.amp,
        compile=cfg.compile,
        dry_run=cfg.dry_run,
        progress=cfg.progress,
        verbose=cfg.verbose,
        workers=cfg.workers,
        cache_dir=cfg.cache_dir,
        seed=cfg.seed,
        **changes,
    )


def _say(cfg: ClassifierConfig, msg: str) -> None:
    if cfg.verbose:
        print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# Stage keys
# ----------------------------------------------------------------------------------------


def _digest(obj: object) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _settings(cfg) -> dict:
    from ulmfit.tasks.language_model import _jsonable

    return result_settings(_jsonable(cfg))


def _spec_key(spec) -> dict:
    from ulmfit.data.sources import file_fingerprint

    return {
        "sha256": file_fingerprint(spec),
        "text_cols": spec.text_cols,
        "label_cols": spec.label_cols,
        "label_delim": spec.label_delim,
        "fmt": spec.fmt,
        "encoding": spec.encoding,
        "corpus_mode": spec.corpus_mode,
    }


def _model_key(pretrained: Path | str, vocab: Path | str | None) -> dict:
    """The bytes of a pretrained model: its weights and vocabulary files."""
    from ulmfit.cache import file_sha256
    from ulmfit.models.io import MODEL_FILE, VOCAB_FILE

    path = Path(pretrained)
    if not path.exists():
        raise UserError(f"{path}: no such model directory or weights file")
    if path.is_dir():
        files = [path / MODEL_FILE, path / VOCAB_FILE, path / "config.json"]
    else:
        files = [path] + ([Path(vocab)] if vocab is not None else [])
    out = {}
    for f in files:
        try:
            out[f.name] = file_sha256(f)
        except OSError as e:
            raise UserError(f"{f}: cannot read ({e.strerror})") from None
    return out


def _records(out_dir: Path) -> dict[str, dict]:
    """The finished stages of a run folder, name -> {"key", "parts", "folders"} (empty when
    unreadable; a bare key, as older runs wrote, has no parts and its default folders)."""
    stages: object = {}
    with contextlib.suppress(OSError, ValueError):
        stages = json.loads((out_dir / STAGES_FILE).read_text(encoding="utf-8"))
    if not isinstance(stages, dict):
        return {}
    out = {}
    for name, rec in stages.items():
        rec = {"key": rec} if isinstance(rec, str) else rec
        if isinstance(rec, dict) and isinstance(rec.get("key"), str):
            out[name] = {"folders": list(_default_folders(name)), "parts": None, **rec}
    return out


def read_stages(out_dir: Path) -> dict[str, str]:
    """The keys of the finished stages of a run folder (empty when unreadable)."""
    return {name: rec["key"] for name, rec in _records(out_dir).items()}


def _default_folders(name: str) -> tuple[str, ...]:
    """What a stage publishes, relative to RUN (for records that do not say)."""
    if name.startswith(LM_DIR):
        return (name,)
    if name == "test":
        return (f"{REPORT_DIR}/test.json",)
    sub = name.partition("_")[2]  # classifier_fwd -> fwd/model, fwd/report
    return tuple(f"{sub}/{f}" if sub else f for f in (MODEL_DIR, REPORT_DIR))


def _record_stage(out_dir: Path, stage: _Stage) -> None:
    """Record ``stage`` as finished; the records of what its folders replaced go (another
    stage that published there, and the test score of a report folder it replaced)."""
    from ulmfit.atomic import atomic_write

    mine = set(stage.folders)
    gone = {n for n, r in _records(out_dir).items() if mine & set(r["folders"])}
    if REPORT_DIR in mine:
        gone.add("test")
    stages = {n: r for n, r in _records(out_dir).items() if n not in gone}
    stages[stage.name] = {"key": stage.key, "parts": stage.parts, "folders": list(stage.folders)}
    text = json.dumps(stages, indent=1)
    atomic_write(out_dir / STAGES_FILE, lambda f: f.write(text), "w")


def _done(out_dir: Path, name: str, key: str, *files: Path) -> bool:
    return read_stages(out_dir).get(name) == key and all(f.is_file() for f in files)


# ----------------------------------------------------------------------------------------
# A finished run is never replaced without overwrite
# ----------------------------------------------------------------------------------------


@dataclass
class _Stage:
    """One stage as this run would make it: its key and what the key is made of (``parts``,
    to name what changed), the folders it publishes (relative to RUN), the file holding the
    key of its interrupted attempt and the folder of that attempt (a StageFolder's stamp and
    path), and the stages it is built on."""

    name: str
    key: str
    parts: dict
    folders: tuple[str, ...]
    attempt: str | None = None
    attempt_folder: str | None = None
    after: tuple[str, ...] = ()


def _attempt_key(out_dir: Path, stage: _Stage) -> str | None:
    if stage.attempt is None:
        return None
    return StageFolder(out_dir / stage.attempt_folder, out_dir / stage.attempt).key()


def _what_changed(old: dict | None, new: dict) -> str:
    """How a stage's key differs from the finished one's, in words: the first part of it."""
    for part, value in new.items() if old else ():
        was = old.get(part)
        if was == value:
            continue
        if part == "settings" and isinstance(was, dict):
            k = next(k for k in [*value, *was] if was.get(k) != value.get(k))
            there, now = (json.dumps(setting_of(d, k)) for d in (was, value))
            shown = f"{there} there, now {now}"
            return f"was made with other settings ({k}: {shown})"
        return f"was made from another {part}"
    return "was made from other inputs or settings"


def _refusal(out_dir: Path, folder: str, stage: _Stage, old_name: str | None) -> UserError:
    old = _records(out_dir).get(old_name) if old_name else None
    folder = out_dir / folder
    if old_name is None:
        what = f"{folder} exists and is not a finished stage of this run"
    elif old_name != stage.name:
        what = (
            f"its finished {old_name} stage ({folder}) would be replaced by the {stage.name} stage"
        )
    else:
        changed = _what_changed(old.get("parts") if old else None, stage.parts)
        what = f"its finished {stage.name} stage ({folder}) {changed}"
    return UserError(f"{out_dir}: {what}; pass --overwrite to replace it, or choose another --out")


def _check_replaces(out_dir: Path, stages: list[_Stage], overwrite: bool) -> None:
    """Before any work: refuse (see the module docstring) a run that would retrain a
    finished stage of ``out_dir`` and so replace its folders, unless ``overwrite``."""
    if overwrite or not out_dir.is_dir():
        return
    records = _records(out_dir)
    consented: set[str] = set()
    for stage in stages:  # in order: a stage comes after those it is built on
        if consented & set(stage.after) or _attempt_key(out_dir, stage) == stage.key:
            consented.add(stage.name)  # continues what an earlier --overwrite started
            continue
        for folder in stage.folders:
            if not (out_dir / folder).exists():
                continue  # nothing there to replace
            owners = [n for n, r in records.items() if folder in r["folders"]]
            if any(n != stage.name or records[n]["key"] != stage.key for n in owners):
                old = owners[0] if stage.name not in owners else stage.name
                raise _refusal(out_dir, folder, stage, old)
            if not owners and stage.name != "test":
                raise _refusal(out_dir, folder, stage, None)


def check_inputs_outside(out_dir: Path | str, models: dict[str, Path | str | None]) -> None:
    """The pretrained models (and vocabularies) must not lie inside the run folder: a stage
    that is trained again replaces its folder, and ``RUN/lm`` is the fine-tuned LM's."""
    from ulmfit.atomic import is_within

    for flag, path in models.items():
        if path is not None and is_within(path, out_dir):
            raise UserError(
                f"{flag} {path}: inside --out {out_dir}, which this run writes; copy it "
                "elsewhere or choose another --out"
            )


def dry_run_dir(out_dir: Path | str) -> Path:
    """The scratch run folder of ``fit --dry-run --out RUN``: ``RUN.dry-run`` beside it."""
    out_dir = Path(out_dir)
    if not out_dir.name:  # "." or ".."
        out_dir = out_dir.resolve()
    if not out_dir.name:
        raise UserError(f"--out {out_dir}: a dry run needs a run folder with a name beside it")
    return out_dir.with_name(out_dir.name + DRY_RUN_SUFFIX)


# ----------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------


def _lm_stage(texts, pretrained, vocab, run_dir: Path, stage: _Stage, lm_cfg, cfg) -> dict:
    """Fine-tune (or reuse, or continue) the language model of one direction."""
    from ulmfit.tasks.language_model import _result, finetune_lm
    from ulmfit.train import distributed

    name, key = stage.name, stage.key
    target = run_dir / name
    report = target / "report.json"
    # RUN/<name>.partial, stamped with the key of the run that owns it
    attempt = StageFolder(run_dir / stage.attempt_folder, run_dir / stage.attempt)

    def plan() -> tuple[dict | None, bool]:  # rank 0: (reused result, or None; resume?)
        if _done(run_dir, name, key, target / "config.json", report):
            _say(cfg, f"{target}: unchanged inputs and settings, reused")
            rep = json.loads(report.read_text(encoding="utf-8"))
            return {**_result(target, rep), "reused": True}, False
        opened = attempt.open(key)
        if opened == "replaced":
            _say(cfg, f"{attempt.path}: an unfinished run with other inputs or settings, removed")
        return None, opened == "resume"

    reused, resume = distributed.on_main(plan)
    if reused is not None:
        return reused
    res = finetune_lm(
        texts, pretrained, target, replace(lm_cfg, overwrite=True), vocab=vocab, resume=resume
    )

    def record() -> dict:  # after rank 0 published the model: the others may load it
        _record_stage(run_dir, stage)
        attempt.stamp.unlink(missing_ok=True)
        return {**res, "reused": False}

    return distributed.on_main(record)


def _classifier_stage(train_spec, valid_spec, lm_dir: Path, run_dir: Path, stage: _Stage,
                      cfg) -> dict:  # fmt: skip
    """Train (or reuse, or continue) the classifier of one direction."""
    from ulmfit.train import distributed

    name, key = stage.name, stage.key
    out = (run_dir / stage.folders[0]).parent  # RUN, or RUN/fwd, RUN/bwd
    metrics = out / REPORT_DIR / "metrics.json"

    def reused() -> dict | None:
        if _done(run_dir, name, key, out / MODEL_DIR / "config.json", metrics):
            _say(cfg, f"{out / MODEL_DIR}: unchanged inputs and settings, reused")
            return _summary(out, json.loads(metrics.read_text(encoding="utf-8")), reused=True)
        return None

    done = distributed.on_main(reused)
    if done is not None:
        return done
    res = fit_classifier(
        train_spec, lm_dir, out, cfg, valid_spec=valid_spec, overwrite=True, stage_key=key
    )
    distributed.on_main(lambda: _record_stage(run_dir, stage))
    return {**res, "reused": False}


def _summary(out: Path, report: dict, reused: bool) -> dict:
    kind = report["label_kind"]
    return {
        "out": str(out),
        "model": str(out / MODEL_DIR),
        "report": str(out / REPORT_DIR / "metrics.json"),
        "label_kind": kind,
        "classes": report["classes"],
        "valid": {k: report["valid_metrics"][k] for k in SUMMARY_KEYS[kind]},
        "kept": report.get("kept"),
        "seconds": report["seconds"],
        "reused": reused,
    }


def _ensemble_stage(out_dir: Path, names: list[str], stage: _Stage, cfg: ClassifierConfig) -> dict:
    """RUN/model as the ensemble of RUN/<name>/model, scored on the shared validation rows
    (reused when its members are)."""
    from ulmfit.models.io import staged_dir
    from ulmfit.models.model_dir import aligned_valid, mean_outputs, write_ensemble

    report_file = out_dir / REPORT_DIR / "metrics.json"
    if _done(out_dir, stage.name, stage.key, out_dir / MODEL_DIR / "config.json", report_file):
        _say(cfg, f"{out_dir / MODEL_DIR}: unchanged members, reused")
        report = json.loads(report_file.read_text(encoding="utf-8"))
        config = json.loads((out_dir / MODEL_DIR / "config.json").read_text(encoding="utf-8"))
        return _ensemble_summary(out_dir, report, config.get("thresholds"), reused=True)
    t0 = time.perf_counter()
    reports = [out_dir / n / REPORT_DIR for n in names]
    members = {n: out_dir / n / MODEL_DIR for n in names}
    member_reports = [json.loads((r / "metrics.json").read_text(encoding="utf-8")) for r in reports]
    kind, classes = member_reports[0]["label_kind"], member_reports[0]["classes"]
    logits, labels = aligned_valid(reports)
    mean = mean_outputs(kind, logits)
    member_cfg = json.loads((members[names[0]] / "config.json").read_text(encoding="utf-8"))
    extra: dict = {}
    if kind == "multi":
        thr = tune_thresholds(labels, sigmoid(mean))
        extra["thresholds"] = {c: float(t) for c, t in zip(classes, thr)}
    m, _ = predictions_of(kind, mean, labels, {**member_cfg, **extra})
    with staged_dir(out_dir / MODEL_DIR, overwrite=True) as tmp:
        write_ensemble(tmp, members, extra)
    report = {
        "task": "ensemble",
        "members": names,
        "label_kind": kind,
        "classes": classes,
        "valid_metrics": m,
        "member_valid_metrics": {n: r["valid_metrics"] for n, r in zip(names, member_reports)},
        "seconds": round(time.perf_counter() - t0, 3),  # combining only: members trained apart
    }
    with staged_dir(out_dir / REPORT_DIR, overwrite=clear_report(out_dir, True)) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(report, indent=1), "utf-8")
        write_report_files(tmp, m)
    _record_stage(out_dir, stage)
    _say(cfg, f"ensemble of {' + '.join(names)}: {out_dir / MODEL_DIR}")
    return _ensemble_summary(out_dir, report, extra.get("thresholds"), reused=False)


def _ensemble_summary(out_dir: Path, report: dict, thresholds: dict | None, reused: bool) -> dict:
    return {
        **_summary(out_dir, report, reused=reused),
        "members": dict(report["member_valid_metrics"]),
        **({"thresholds": thresholds} if thresholds is not None else {}),
    }


# ----------------------------------------------------------------------------------------
# The chain
# ----------------------------------------------------------------------------------------


def _baselines(train_spec, test_spec, cfg: ClassifierConfig, report_dir: Path) -> dict:
    """NB-SVM and TF-IDF + LR on the run's train and test files; their headline metrics."""
    from ulmfit.baselines import run_baselines

    _say(cfg, "baselines: NB-SVM and TF-IDF + LR on the same train / test files")
    res = run_baselines(train_spec, test_spec, kind=cfg.label_kind)
    (report_dir / "baselines.json").write_text(json.dumps(res, indent=1), "utf-8")
    out = {}
    for name in ("nbsvm", "tfidf_lr"):
        m = res[name]
        if m is None:  # NB-SVM has no regression form
            continue
        m = {**m, "n": res["n_test"], "roc_auc": m.get("mean_auc")}
        out[name] = {k: m[k] for k in SUMMARY_KEYS[cfg.label_kind] if k in m}
    return out


def _check_run_folder(out_dir: Path) -> None:
    """A run folder is either new, empty, or one ``fit`` made (it has stages.json or the
    stage folders): never somebody else's folder."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder; choose another --out")
    known = {STAGES_FILE, LM_DIR, "lm_bwd", MODEL_DIR, REPORT_DIR, "fwd", "bwd"}
    names = {p.name for p in out_dir.iterdir()}
    if names and not names & known:
        raise UserError(f"{out_dir}: a folder that is not a ulmfit run; choose another --out")


def _plan(texts, train_spec, valid_spec, test_spec, dirs, sources, lm_cfg, cfg) -> list[_Stage]:
    """Every stage this run makes, in order, with its key (computed before any work, so
    that a run replacing a finished stage is refused first)."""
    text_keys = [_spec_key(s) for s in texts]
    label_keys = [_spec_key(s) if s is not None else None for s in (train_spec, valid_spec)]
    stages: list[_Stage] = []
    for d in dirs:
        weights, itos = sources[d]
        lm_name = LM_DIR if d == "fwd" else f"{LM_DIR}_{d}"
        model, settings = _model_key(weights, itos), _settings(replace(lm_cfg, direction=d))
        lm_key = _digest([_KEY_FORMAT, "lm", d, model, text_keys, settings])
        parts = {"pretrained model": _digest(model), "set of texts": _digest(text_keys)}
        stages.append(_Stage(lm_name, lm_key, _plain({**parts, "settings": settings}), (lm_name,),
                             attempt=f".{lm_name}.key", attempt_folder=partial_dir(lm_name).name))  # fmt: skip
        settings = _settings(cfg)
        key = _digest([_KEY_FORMAT, "classifier", _CLASSIFIER_RECIPE, lm_key, label_keys, settings])
        name = "classifier" if len(dirs) == 1 else f"classifier_{d}"
        parts = {"language model": lm_key, "labelled files": _digest(label_keys)}
        parts = _plain({**parts, "recipe": _CLASSIFIER_RECIPE, "settings": settings})
        folders = _default_folders(name)
        work = Path(folders[0]).parent / WORK_DIR
        stages.append(_Stage(name, key, parts, folders, attempt=str(work / _STAGE_FILE),
                             attempt_folder=str(work), after=(lm_name,)))  # fmt: skip
    if len(dirs) > 1:
        members = {s.name: s.key for s in stages if s.name.startswith("classifier")}
        stages.append(_Stage("ensemble", _digest(["ensemble", members]), {"members": members},
                             _default_folders("ensemble"), after=tuple(members)))  # fmt: skip
    if test_spec is not None:
        top, test = stages[-1], _digest(_spec_key(test_spec))
        parts = {"classifier": top.key, "test file": test, "dry_run": cfg.dry_run}
        stages.append(_Stage("test", _digest(parts), parts, _default_folders("test"), after=(top.name,)))  # fmt: skip
    return stages


def _plain(obj: dict) -> dict:
    return json.loads(json.dumps(obj, default=str))  # as stages.json will hold it


def _check_labels(train_spec, valid_spec, test_spec, cfg: ClassifierConfig) -> ClassifierConfig:
    """Every label file checked in full (dry runs too) before anything is trained; ``cfg``
    with the kind of target found."""
    _, labels, _, _ = read_labels(train_spec, kind=cfg.label_kind)
    check_training_labels(labels, str(train_spec.path))
    for spec in (valid_spec, test_spec):
        if spec is not None:
            read_labels(spec, labels.classes, kind=labels.kind)
    return replace(cfg, label_kind=labels.kind)


def _check_direction(direction: str, sources: dict) -> list[str]:
    if direction not in DIRECTIONS:
        raise UserError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    dirs = ["fwd", "bwd"] if direction == "both" else [direction]
    for d in dirs:
        if sources[d][0] is None:
            flag = "--pretrained" if d == "fwd" else "--pretrained-bwd"
            raise UserError(f"--direction {direction} needs a {flag} language model")
    return dirs


def fit(
    train_spec,
    pretrained: Path | str | None,
    out_dir: Path | str,
    *,
    vocab: Path | str | None = None,
    valid_spec=None,
    test_spec=None,
    unlabelled: list | tuple = (),
    cfg: ClassifierConfig | None = None,
    lm_cfg=None,
    direction: str = "fwd",
    pretrained_bwd: Path | str | None = None,
    vocab_bwd: Path | str | None = None,
    baseline: bool = False,
    overwrite: bool = False,
) -> dict:
    """The whole ULMFiT chain (see the module docstring): LM fine-tuning on every text, the
    classifier with gradual unfreezing, per direction; with ``direction="both"`` the two
    classifiers' probabilities averaged; then ``test_spec`` scored once, if given
    (``RUN/report/test.json``, ``test_per_class.csv``, ``test_confusion.png``). ``baseline``
    also fits NB-SVM and TF-IDF + LR on the same files and scores them on the test file
    (``RUN/report/baselines.json``), the bar the classifier has to clear. A finished stage
    whose inputs or settings changed is replaced only with ``overwrite``."""
    from ulmfit.train import distributed

    cfg = cfg or ClassifierConfig()
    _check_config(cfg)
    distributed.init(cfg.device)
    if not distributed.is_main():
        cfg = replace(cfg, verbose=False, progress=False)
    sources = {"fwd": (pretrained, vocab), "bwd": (pretrained_bwd, vocab_bwd or vocab)}
    dirs = _check_direction(direction, sources)
    out_dir = Path(out_dir)
    models = {"--pretrained": pretrained, "--vocab": vocab, "--pretrained-bwd": pretrained_bwd}
    check_inputs_outside(out_dir, {**models, "--vocab-bwd": vocab_bwd})
    distributed.on_main(lambda: _check_run_folder(out_dir))
    lm_cfg = lm_cfg or lm_config_for(cfg)
    texts = [
        replace(s, label_cols=None, label_delim=None)
        for s in (train_spec, valid_spec, *unlabelled)
        if s is not None
    ]
    cfg = _check_labels(train_spec, valid_spec, test_spec, cfg)
    last_stage_track(cfg, cfg.label_kind)  # a --monitor the target has not: before any work
    stages = _plan(texts, train_spec, valid_spec, test_spec, dirs, sources, lm_cfg, cfg)
    distributed.on_main(lambda: _check_replaces(out_dir, stages, overwrite))
    distributed.on_main(lambda: out_dir.mkdir(parents=True, exist_ok=True))

    by_name = {s.name: s for s in stages}
    result: dict = {"direction": direction, "dry_run": cfg.dry_run}
    for i, d in enumerate(dirs):  # _plan lays out (lm, classifier) per direction first
        lm_stage, clf_stage = stages[2 * i], stages[2 * i + 1]
        weights, itos = sources[d]
        dcfg = replace(lm_cfg, direction=d)
        lm = _lm_stage(texts, weights, itos, out_dir, lm_stage, dcfg, cfg)
        clf = _classifier_stage(
            train_spec, valid_spec, out_dir / lm_stage.name, out_dir, clf_stage, cfg
        )
        suffix = "" if d == "fwd" else f"_{d}"
        result[f"lm{suffix}"], result[f"classifier{suffix}"] = lm, clf

    def finish() -> dict:  # rank 0 alone: the ensemble, the test score, the baselines
        if len(dirs) > 1:
            ens = _ensemble_stage(out_dir, dirs, by_name["ensemble"], cfg)
            result["classifier"] = {**ens, "fwd": result["classifier"]}
        if test_spec is not None:
            t = evaluate(out_dir, test_spec, bs=cfg.bs, device=cfg.device, dry_run=cfg.dry_run)
            rep = out_dir / REPORT_DIR
            (rep / "test.json").write_text(json.dumps(t, indent=1), "utf-8")
            write_report_files(rep, t, prefix="test_")
            _record_stage(out_dir, by_name["test"])
            result["test"] = {k: t[k] for k in SUMMARY_KEYS[t["label_kind"]]}
            if baseline:
                result["baselines"] = _baselines(train_spec, test_spec, cfg, rep)
        result["out"] = str(out_dir)
        return result

    return distributed.on_main(finish)


__all__ = ["check_inputs_outside", "dry_run_dir", "fit", "lm_config_for", "read_stages"]
