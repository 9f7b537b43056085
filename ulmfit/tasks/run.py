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
tokenized texts come from the content-addressed cache as well), so changing only a classifier
setting retrains only the classifier, and changing nothing re-does only the test evaluation.
A stage whose key changed is trained again and replaces its folder. An interrupted stage
continues from its last epoch checkpoint on the next run with the same key (the LM in
``RUN/lm.partial``, a classifier in ``.classifier-train`` inside its folder).

Under ``torchrun`` every rank runs the chain and trains each stage together; rank 0 alone
reads and writes RUN (stages.json, the stage folders, the reports) and broadcasts what it
found, so the other ranks follow the same path. The classifier stage loads the language
model rank 0 published: with several machines RUN must be on a shared file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from ulmfit.errors import UserError
from ulmfit.tasks.classifier import (
    LM_DIR,
    MODEL_DIR,
    REPORT_DIR,
    SUMMARY_KEYS,
    ClassifierConfig,
    _check_config,
    check_training_labels,
    clear_report,
    evaluate,
    fit_classifier,
    predictions_of,
    read_labels,
    sigmoid,
    tune_thresholds,
    write_report_files,
)

STAGES_FILE = "stages.json"
DIRECTIONS = ("fwd", "bwd", "both")
_KEY_FORMAT = 1
_CLASSIFIER_RECIPE = 2  # 2: the stage rates became fastai's (lr/2, lr/4, lr/20)
# settings that do not change a stage's result
_FREE = ("workers", "cache_dir", "device", "compile", "overwrite", "progress", "verbose")


def lm_config_for(cfg: ClassifierConfig, **changes):
    """The language-model fine-tuning settings that go with a classifier run: same device,
    seed, workers, cache and output, fastai's LM defaults otherwise (``changes`` override)."""
    from ulmfit.tasks.language_model import FinetuneLMConfig

    return FinetuneLMConfig(
        device=cfg.device,
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

    return {k: v for k, v in _jsonable(cfg).items() if k not in _FREE}


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


def read_stages(out_dir: Path) -> dict:
    """The keys of the finished stages of a run folder (empty when unreadable)."""
    with contextlib.suppress(OSError, ValueError):
        stages = json.loads((out_dir / STAGES_FILE).read_text(encoding="utf-8"))
        if isinstance(stages, dict):
            return stages
    return {}


def _record_stage(out_dir: Path, name: str, key: str) -> None:
    stages = read_stages(out_dir)
    stages[name] = key
    tmp = out_dir / f".{STAGES_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(stages, indent=1), encoding="utf-8")
    os.replace(tmp, out_dir / STAGES_FILE)


def _done(out_dir: Path, name: str, key: str, *files: Path) -> bool:
    return read_stages(out_dir).get(name) == key and all(f.is_file() for f in files)


# ----------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------


def _lm_stage(texts, pretrained, vocab, run_dir: Path, name: str, key: str, lm_cfg, cfg) -> dict:
    """Fine-tune (or reuse, or continue) the language model of one direction."""
    from ulmfit.tasks.language_model import _result, finetune_lm, partial_dir
    from ulmfit.train import distributed

    target = run_dir / name
    report = target / "report.json"
    attempt = run_dir / f".{name}.key"  # the key of the run that owns RUN/<name>.partial

    def plan() -> tuple[dict | None, bool]:  # rank 0: (reused result, or None; resume?)
        if _done(run_dir, name, key, target / "config.json", report):
            _say(cfg, f"{target}: unchanged inputs and settings, reused")
            rep = json.loads(report.read_text(encoding="utf-8"))
            return {**_result(target, rep), "reused": True}, False
        partial = partial_dir(target)
        resume = False
        if partial.exists():
            with contextlib.suppress(OSError):
                resume = attempt.read_text(encoding="utf-8").strip() == key
            if not resume:
                _say(cfg, f"{partial}: an unfinished run with other inputs or settings, removed")
                shutil.rmtree(partial)
        attempt.write_text(key, encoding="utf-8")
        return None, resume

    reused, resume = distributed.on_main(plan)
    if reused is not None:
        return reused
    res = finetune_lm(
        texts, pretrained, target, replace(lm_cfg, overwrite=True), vocab=vocab, resume=resume
    )

    def record() -> dict:  # after rank 0 published the model: the others may load it
        _record_stage(run_dir, name, key)
        attempt.unlink(missing_ok=True)
        return {**res, "reused": False}

    return distributed.on_main(record)


def _classifier_stage(train_spec, valid_spec, lm_dir: Path, run_dir: Path, out: Path,
                      name: str, key: str, cfg) -> dict:  # fmt: skip
    """Train (or reuse, or continue) the classifier of one direction into ``out``."""
    from ulmfit.train import distributed

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
    distributed.on_main(lambda: _record_stage(run_dir, name, key))
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
        "seconds": report["seconds"],
        "reused": reused,
    }


def _ensemble_stage(out_dir: Path, names: list[str], cfg: ClassifierConfig) -> dict:
    """RUN/model as the ensemble of RUN/<name>/model, scored on the shared validation rows."""
    from ulmfit.models.io import staged_dir
    from ulmfit.tasks.ensemble import aligned_valid, mean_outputs, write_ensemble

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
    _say(cfg, f"ensemble of {' + '.join(names)}: {out_dir / MODEL_DIR}")
    return {
        **_summary(out_dir, report, reused=False),
        "members": {n: report["member_valid_metrics"][n] for n in names},
        **({"thresholds": extra["thresholds"]} if "thresholds" in extra else {}),
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
) -> dict:
    """The whole ULMFiT chain (see the module docstring): LM fine-tuning on every text, the
    classifier with gradual unfreezing, per direction; with ``direction="both"`` the two
    classifiers' probabilities averaged; then ``test_spec`` scored once, if given
    (``RUN/report/test.json``, ``test_per_class.csv``, ``test_confusion.png``). ``baseline``
    also fits NB-SVM and TF-IDF + LR on the same files and scores them on the test file
    (``RUN/report/baselines.json``), the bar the classifier has to clear."""
    from ulmfit.train import distributed

    cfg = cfg or ClassifierConfig()
    _check_config(cfg)
    distributed.init(cfg.device)
    if not distributed.is_main():
        cfg = replace(cfg, verbose=False, progress=False)
    if direction not in DIRECTIONS:
        raise UserError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    dirs = ["fwd", "bwd"] if direction == "both" else [direction]
    sources = {"fwd": (pretrained, vocab), "bwd": (pretrained_bwd, vocab_bwd or vocab)}
    for d in dirs:
        if sources[d][0] is None:
            flag = "--pretrained" if d == "fwd" else "--pretrained-bwd"
            raise UserError(f"--direction {direction} needs a {flag} language model")
    out_dir = Path(out_dir)
    distributed.on_main(lambda: _check_run_folder(out_dir))
    lm_cfg = lm_cfg or lm_config_for(cfg)
    texts = [
        replace(s, label_cols=None, label_delim=None)
        for s in (train_spec, valid_spec, *unlabelled)
        if s is not None
    ]
    # every label file is checked in full (dry runs too) before anything is trained
    _, labels, _, _ = read_labels(train_spec, kind=cfg.label_kind)
    check_training_labels(labels, str(train_spec.path))
    for spec in (valid_spec, test_spec):
        if spec is not None:
            read_labels(spec, labels.classes, kind=labels.kind)
    cfg = replace(cfg, label_kind=labels.kind)
    distributed.on_main(lambda: out_dir.mkdir(parents=True, exist_ok=True))

    text_keys = [_spec_key(s) for s in texts]
    label_keys = [_spec_key(s) if s is not None else None for s in (train_spec, valid_spec)]
    result: dict = {"direction": direction}
    for d in dirs:
        weights, itos = sources[d]
        dcfg = replace(lm_cfg, direction=d)
        lm_name = LM_DIR if d == "fwd" else f"{LM_DIR}_{d}"
        lm_key = _digest(
            [_KEY_FORMAT, "lm", d, _model_key(weights, itos), text_keys, _settings(dcfg)]
        )
        lm = _lm_stage(texts, weights, itos, out_dir, lm_name, lm_key, dcfg, cfg)
        clf_key = _digest(
            [_KEY_FORMAT, "classifier", _CLASSIFIER_RECIPE, lm_key, label_keys, _settings(cfg)]
        )
        sub = out_dir if len(dirs) == 1 else out_dir / d
        name = "classifier" if len(dirs) == 1 else f"classifier_{d}"
        clf = _classifier_stage(
            train_spec, valid_spec, out_dir / lm_name, out_dir, sub, name, clf_key, cfg
        )
        suffix = "" if d == "fwd" else f"_{d}"
        result[f"lm{suffix}"], result[f"classifier{suffix}"] = lm, clf

    def finish() -> dict:  # rank 0 alone: the ensemble, the test score, the baselines
        if len(dirs) > 1:
            ens = _ensemble_stage(out_dir, dirs, cfg)
            result["classifier"] = {**ens, "fwd": result["classifier"]}
        if test_spec is not None:
            t = evaluate(out_dir, test_spec, bs=cfg.bs, device=cfg.device, dry_run=cfg.dry_run)
            rep = out_dir / REPORT_DIR
            (rep / "test.json").write_text(json.dumps(t, indent=1), "utf-8")
            write_report_files(rep, t, prefix="test_")
            result["test"] = {k: t[k] for k in SUMMARY_KEYS[t["label_kind"]]}
            if baseline:
                result["baselines"] = _baselines(train_spec, test_spec, cfg, rep)
        result["out"] = str(out_dir)
        return result

    return distributed.on_main(finish)


__all__ = ["fit", "lm_config_for", "read_stages"]
