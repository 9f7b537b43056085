"""The IMDb headline on one GPU: ULMFiT from wiki30k_fwd on all 100,000 IMDb texts, in one run.

Issue 5 item 4 (and issue 3 item 5c): fine-tune the pretrained language model on every IMDb
text (25k train + 25k test + 50k unlabelled, as fastai's IMDb example does; 10% of the
documents held out), report held-out perplexity and next-token accuracy before and after, then
train the classifier on the 25k labelled training reviews with gradual unfreezing as
``ulmfit fit`` does it, and report the error on the 25k test reviews -- all in one run of at
most 10 minutes on one GPU, with the wall time of every stage.

The GPU machine has no spaCy, no ../shared and no network, and each call to it carries at most
64 MiB, so the work is split in two:

``bundle`` (here, on the CPU): tokenizes the three IMDb files with the library's cached
pipeline and builds the vocabulary exactly as ``ulmfit fit`` does for its language model
(``FinetuneLMConfig`` defaults: max_vocab 60000, min_freq 3, from the target texts only --
``keep_pretrained_vocab=False``, fit's default), with the test texts among the LM texts
(like ``ulmfit fit --unlabelled test.csv.gz --unlabelled unsup.csv.gz``). Writes

- ``.gpu/imdb/`` (``--out-dir``): ``corpus.npz`` (uint16 ids of every document, offsets,
  the split and label of each document) and ``manifest.json``;
- ``.gpu/imdb_model/`` (``--model-dir``): the wiki30k weights remapped to that vocabulary as
  ``finetune_lm`` remaps them, stored compactly: the LSTM tensors in float16 (the pretrained
  file's own precision, checked lossless), the pretrained embedding rows and decoder biases
  of the vocabulary entries the pretrained model knows (float16, lossless), and the mean row
  and mean bias every other entry starts from (float32, as ``remap_vocab`` computes them).
  The run rebuilds the remapped state bit for bit (checked here when the bundle is made).

Each folder is under 63 MiB; together they are not, hence two device calls (the device
plan is in bench/RESULTS.md, section "IMDb headline on one GPU").

``stash SRC DST`` (device call 1): copies a bundle folder to DST (e.g. /tmp/imdb_model, which
outlives the call while the machine stays warm) and checks every file's SHA-256.

``run`` (device call 2): the recipe on numbers through the library's building blocks --
``LanguageModel``, ``LMLoader``, ``Learner`` with ``LMTask`` and ``ClassifierTask``,
``lm_eval``, ``build_classifier`` / ``load_encoder``, ``ClassifierLoader``, ``predict_logits``
-- because ``finetune_lm`` and ``fit_classifier`` take text files and tokenize them (the
library has no entry point for numericalized corpora). The settings are those of
``finetune_lm`` (FinetuneLMConfig: drop_mult 0.3, wd 0.01, clip 0.1, AR/TAR 2/1, moms
0.8/0.7/0.8, frozen lr 2e-2, lr 2e-3) with fastai's IMDb batches (bs 128, bptt 80), and of
``fit_classifier`` (ClassifierConfig: its four stages, lr 2e-2, bs 64, drop_mult 0.5, ...).
A time budget (``--budget-s``, from the start of the script) sizes the language model's
epochs: short probes time a few training steps of each model, the classifier's time is
reserved, and the language model gets the rest (one frozen epoch, then as many unfrozen
epochs as fit, at most ``--lm-max-epochs``); the classifier's last stage runs
``--clf-epochs`` (fit's 2) or 1 if time is short. Every training epoch also stops early at
a deadline, so a slower GPU still ends inside the budget (the results then say so). Writes
``results.json`` (after every stage) and ``results.md`` into ``--out``, with the loss plots.

    .venv/bin/python bench/imdb_gpu.py bundle                              # .gpu/imdb{,_model}
    .venv/bin/python bench/imdb_gpu.py bundle --limit 300 --out-dir /tmp/imdb_small
    .venv/bin/python bench/imdb_gpu.py run --bundle /tmp/imdb_small --model /tmp/imdb_small_model \\
        --out /tmp/imdb_run --device cpu --quick                           # CPU dry run
    python3 bench/imdb_gpu.py stash .gpu/imdb_model /tmp/imdb_model         # device call 1
    python3 bench/imdb_gpu.py run --bundle .gpu/imdb --model /tmp/imdb_model --out $OUT  # call 2
"""

from __future__ import annotations

import os
import sys
import time

T_START = time.monotonic()  # the budget of ``run`` counts from here

# bench/ holds tokenize.py (named by the issue), which would shadow the standard library's
# tokenize module for anything run from this folder: move the folder to the end of the
# import path (after the standard library; benchlib is found there).
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE] + [_HERE]
_REPO = os.path.dirname(_HERE)
if _REPO not in sys.path:  # the GPU machine runs the carried tree, with no ulmfit installed
    sys.path.insert(0, _REPO)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass, fields, replace  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from benchlib import git_commit, torch_environment  # noqa: E402

REPO = Path(_REPO)
SHARED = REPO.parent / "shared"
IMDB = SHARED / "data" / "imdb"
PRETRAINED = SHARED / "models" / "wiki30k_fwd"
FORMAT = 1
CORPUS = "corpus.npz"
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
VOCAB = "vocab.json"
CONFIG = "config.json"
SPLITS = ("train", "test", "unsup")
CARRY_LIMIT = 63 * 2**20  # what one carried folder may weigh (64 MiB per call, tree included)
# where the run looks for the model folder: stashed by device call 1, or still in the carried
# tree (a warm machine keeps ignored paths an earlier call carried)
DEFAULT_MODELS = [Path("/tmp/imdb_model"), REPO / ".gpu" / "imdb_model"]
_EMB = "encoder.encoder.weight"
_BIAS = "decoder.decoder.bias"


def _say(msg: str) -> None:
    print(f"[{time.monotonic() - T_START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _command() -> str:
    return shlex.join([Path(sys.executable).name, *sys.argv])


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _manifest_files(folder: Path) -> dict:
    return {
        f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)}
        for f in sorted(folder.iterdir())
        if f.is_file() and f.name != MANIFEST
    }


def check_folder(folder: Path) -> dict:
    """The manifest of a bundle folder, after checking every file's size and SHA-256."""
    from ulmfit.errors import UserError

    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder}: no {MANIFEST} (not a bundle folder, or not copied whole)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: format {manifest.get('format')}, this script reads {FORMAT}")
    for name, want in manifest["files"].items():
        f = folder / name
        if not f.is_file() or f.stat().st_size != want["bytes"] or _sha256(f) != want["sha256"]:
            raise UserError(f"{f}: missing or not the file the manifest names (size or SHA-256)")
    return manifest


# ----------------------------------------------------------------------------------------
# bundle (here): tokens, vocabulary, ids, and the remapped pretrained weights
# ----------------------------------------------------------------------------------------


def _subset_files(limit: int, folder: Path, seed: int) -> dict[str, Path]:
    """``limit`` rows of each IMDb file (a seeded sample, in file order: the files list all
    negative reviews before the positive ones), written as CSV into ``folder``."""
    import pandas as pd

    out = {}
    for k, split in enumerate(SPLITS):
        df = pd.read_csv(IMDB / f"{split}.csv.gz", dtype=str, keep_default_na=False)
        rng = np.random.default_rng([seed, k])
        idx = np.sort(rng.choice(len(df), size=min(limit, len(df)), replace=False))
        out[split] = folder / f"{split}.csv"
        df.iloc[idx].to_csv(out[split], index=False)
    return out


def _specs(files: dict[str, Path]) -> tuple[list, list]:
    """``(labelled specs of train and test, LM text specs of train, test, unsup)``: the specs
    ``ulmfit fit --train`` / ``--test`` / ``--unlabelled`` make, labels stripped for the LM."""
    from ulmfit.data.sources import SourceSpec

    labelled = [SourceSpec(path=files[s], label_cols=["label"]) for s in ("train", "test")]
    texts = [replace(s, label_cols=None, label_delim=None) for s in labelled]
    texts.append(SourceSpec(path=files["unsup"]))
    return labelled, texts


def compact_state(state: dict, old_vocab: list[str], new_vocab: list[str]) -> dict:
    """The tensors from which :func:`expand_state` rebuilds ``remap_vocab(state, old_vocab,
    new_vocab)``: every tensor but the embedding and the decoder bias as it is, float16 where
    that is lossless; of those two, the rows of the entries ``old_vocab`` has (``known``:
    their new ids) and the mean row the others start from."""
    import torch

    def small(t: torch.Tensor) -> torch.Tensor:
        h = t.half()
        return h if torch.equal(h.float(), t) else t

    index = {t: i for i, t in enumerate(old_vocab)}
    src = np.array([index.get(t, -1) for t in new_vocab], dtype=np.int64)
    known = np.flatnonzero(src >= 0)
    out = {f"keep.{k}": small(v) for k, v in state.items() if k not in (_EMB, _BIAS)}
    out["known"] = torch.from_numpy(known.astype(np.int32))
    for key, name in ((_EMB, "emb"), (_BIAS, "bias")):
        if key in state:
            old = state[key]
            out[f"{name}.rows"] = small(old[torch.from_numpy(src[known])])
            out[f"{name}.mean"] = old.mean(0)  # as remap_vocab computes it
    return {k: v.contiguous() for k, v in out.items()}


def expand_state(tensors: dict, vocab_size: int) -> dict:
    """The remapped float32 state (no aliases) from :func:`compact_state`'s tensors."""
    state = {k[len("keep.") :]: v.float() for k, v in tensors.items() if k.startswith("keep.")}
    known = tensors["known"].long()
    for key, name in ((_EMB, "emb"), (_BIAS, "bias")):
        if f"{name}.mean" not in tensors:
            continue
        mean = tensors[f"{name}.mean"].float()
        new = mean.expand(vocab_size, *mean.shape).clone()
        new[known] = tensors[f"{name}.rows"].float()
        state[key] = new
    return state


def write_model_folder(
    folder: Path, pretrained: Path, pretrained_vocab: Path | None, vocab: list[str], counts
) -> dict:
    """The pretrained LM (a fastai .pth with its itos, or one of our model directories)
    remapped to ``vocab`` as finetune_lm does it, stored compactly and checked to rebuild
    ``remap_vocab``'s state exactly. Returns config.json's content with the manifest."""
    import torch
    from safetensors.torch import save_file

    from ulmfit.models.io import MODEL_FILE, load_lm, stored_state
    from ulmfit.models.pretrained import remap_vocab

    base, old_vocab, source = load_lm(pretrained, pretrained_vocab)  # unscaled dropouts
    state = stored_state(base)
    remapped, report = remap_vocab(state, old_vocab, vocab, counts)
    tensors = compact_state(state, old_vocab, vocab)
    rebuilt = expand_state(tensors, len(vocab))
    if set(rebuilt) != set(remapped) or not all(
        torch.equal(rebuilt[k], remapped[k]) for k in remapped
    ):
        raise RuntimeError("the compact weights do not rebuild remap_vocab's state exactly")
    folder.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.is_file():
            f.unlink()
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "imdb_gpu compact remap"})
    (folder / VOCAB).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    weights = Path(pretrained) / MODEL_FILE if Path(pretrained).is_dir() else Path(pretrained)
    config = {
        "architecture": base.cfg.to_dict(),  # dropouts unscaled: the run scales them by 0.3
        "vocab_size": len(vocab),
        "direction": source["direction"],
        "pretrained": {
            "weights": str(pretrained),
            "vocab": str(source["vocab"]),
            "weights_sha256": _sha256(weights),
            "vocab_sha256": _sha256(Path(source["vocab"])),
            "vocab_size": len(old_vocab),
        },
        "vocab_remap": {
            "target_size": report.target_size,
            "found": report.found,
            "coverage": report.coverage,
            "token_coverage": report.token_coverage,
            "summary": report.summary(),
        },
        "dtypes": {k: str(v.dtype).replace("torch.", "") for k, v in tensors.items()},
    }
    _write_json(folder / CONFIG, config)
    manifest = {
        "format": FORMAT,
        "kind": "model",
        "vocab_sha256": _sha256(folder / VOCAB),
        "files": _manifest_files(folder),
    }
    _write_json(folder / MANIFEST, manifest)
    return {**config, "manifest": manifest}


def write_bundle(
    out_dir: Path,
    model_dir: Path,
    corpus: dict,
    vocab: list[str],
    classes: list[str],
    pretrained: Path,
    pretrained_vocab: Path | None,
    meta: dict,
) -> dict:
    """The two folders the GPU run reads. ``corpus``: ``ids`` (uint16, every document in a
    row), ``offsets`` (int64), ``split`` (uint8: 0 train, 1 test, 2 unsup) and ``labels``
    (int8 class codes into ``classes``; -1 unlabelled) of each document. Returns the corpus
    manifest (with ``meta`` in it)."""
    ids, offsets = np.asarray(corpus["ids"]), np.asarray(corpus["offsets"], dtype=np.int64)
    split = np.asarray(corpus["split"], dtype=np.uint8)
    labels = np.asarray(corpus["labels"], dtype=np.int8)
    if ids.dtype != np.uint16 or len(offsets) != len(split) + 1 or len(labels) != len(split):
        raise ValueError("corpus: uint16 ids, and offsets / split / labels of every document")
    counts = np.bincount(ids, minlength=len(vocab))
    model = write_model_folder(model_dir, pretrained, pretrained_vocab, vocab, counts)
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in out_dir.iterdir():
        if f.is_file():
            f.unlink()
    t = time.perf_counter()
    np.savez_compressed(out_dir / CORPUS, ids=ids, offsets=offsets, split=split, labels=labels)
    lengths = np.diff(offsets)
    manifest = {
        "format": FORMAT,
        "kind": "corpus",
        "created": _now(),
        "commit": git_commit(),
        "command": _command(),
        **meta,
        "vocab": {
            **meta.get("vocab", {}),
            "size": len(vocab),
            "sha256": model["manifest"]["vocab_sha256"],
        },
        "classes": list(classes),
        "docs": {s: int((split == k).sum()) for k, s in enumerate(SPLITS)},
        "tokens": {s: int(lengths[split == k].sum()) for k, s in enumerate(SPLITS)},
        "tokens_total": int(offsets[-1]),
        "write_seconds": round(time.perf_counter() - t, 1),
        "model": {
            "folder": str(model_dir),
            "vocab_remap": model["vocab_remap"],
            "weights_sha256": model["manifest"]["files"][WEIGHTS]["sha256"],
        },
    }
    manifest["files"] = _manifest_files(out_dir)
    _write_json(out_dir / MANIFEST, manifest)
    return manifest


def read_imdb(args, files: dict[str, Path]) -> tuple[dict, list[str], list[str], dict]:
    """``(corpus, vocab, classes, meta)`` of the three IMDb files: the LM corpus and its
    vocabulary as fit -> finetune_lm makes them (train + test + unsup texts, labels unused),
    with each document's split and label."""
    from ulmfit.config import FinetuneLMConfig
    from ulmfit.tasks.classifier import ClassifierConfig, read_labelled, read_labels
    from ulmfit.tasks.lm_setup import prepare_corpus

    labelled, texts = _specs(files)
    lm_cfg = FinetuneLMConfig(workers=args.workers, cache_dir=args.cache_dir)
    _say(f"prepare: {', '.join(str(f) for f in files.values())}")
    t = time.perf_counter()
    data = prepare_corpus(texts, lm_cfg)
    prepare_s = time.perf_counter() - t
    vocab = list(data.vocab)
    ids = np.asarray(data.ids)
    offsets = np.asarray(data.offsets, dtype=np.int64)
    rows = np.asarray(data.rows)
    split = np.asarray(data.sources).astype(np.uint8)  # the inputs' order: train, test, unsup
    _say(
        f"prepare: {len(data):,} docs, {int(offsets[-1]):,} tokens, vocabulary "
        f"{len(vocab):,}, {prepare_s:.1f} s ({'cached' if data.cached else 'tokenized'})"
    )

    # the labels of the same documents
    _, tr, tr_rows, _ = read_labels(labelled[0])
    _, te, te_rows, _ = read_labels(labelled[1], list(tr.classes))
    labels = np.full(len(data), -1, dtype=np.int8)
    for k, (ls, lrows) in enumerate(((tr, tr_rows), (te, te_rows))):
        mine = np.flatnonzero(split == k)
        if not np.array_equal(rows[mine], np.asarray(lrows)):
            raise RuntimeError(f"{SPLITS[k]}: the LM corpus and the labels disagree on rows")
        labels[mine] = np.asarray(ls.values, dtype=np.int8)
    verify_s = None
    if args.verify:
        # what fit_classifier feeds its classifier: each file tokenized (cached) and
        # numericalized with the LM's vocabulary; it must equal our slices of the LM corpus
        t = time.perf_counter()
        ccfg = ClassifierConfig(workers=args.workers, cache_dir=args.cache_dir, verbose=False)
        for k, spec in enumerate(labelled):
            docs = read_labelled(spec, vocab, ccfg, classes=list(tr.classes))
            mine = np.flatnonzero(split == k)
            flat = np.concatenate([ids[offsets[i] : offsets[i + 1]] for i in mine])
            if not (
                np.array_equal(np.diff(docs.offsets), np.diff(offsets)[mine])
                and np.array_equal(docs.ids, flat.astype(np.int64))
                and np.array_equal(docs.labels, labels[mine])
            ):
                raise RuntimeError(f"{SPLITS[k]}: read_labelled gives other ids or labels")
        verify_s = time.perf_counter() - t
        _say(f"verify: read_labelled gives the same ids and labels ({verify_s:.1f} s)")
    meta = {
        "inputs": {
            s: {"path": str(f), "sha256": _sha256(f), "bytes": f.stat().st_size}
            for s, f in files.items()
        },
        "lm_texts": "train + test + unsup texts (labels unused), in that order",
        "vocab": {
            "max_vocab": lm_cfg.max_vocab,
            "min_freq": lm_cfg.min_freq,
            "keep_pretrained_vocab": lm_cfg.keep_pretrained_vocab,
            "unk_rate": data.meta["unk_rate"],
        },
        "prepare_seconds": round(prepare_s, 1),
        "prepare_cached": bool(data.cached),
        "prepare_workers": args.workers or os.cpu_count(),
        "verify_seconds": None if verify_s is None else round(verify_s, 1),
    }
    corpus = {"ids": ids, "offsets": offsets, "split": split, "labels": labels}
    return corpus, vocab, list(tr.classes), meta


def cmd_bundle(args) -> int:
    t_all = time.perf_counter()
    out_dir = Path(args.out_dir)
    model_dir = Path(args.model_dir) if args.model_dir else Path(f"{out_dir}_model")
    with tempfile.TemporaryDirectory(prefix="imdb_gpu-") as scratch:
        if args.limit is not None:
            files = _subset_files(args.limit, Path(scratch), args.seed)
        else:
            files = {s: IMDB / f"{s}.csv.gz" for s in SPLITS}
        corpus, vocab, classes, meta = read_imdb(args, files)
        meta.update(limit=args.limit, seed=args.seed)
        _say(f"bundle: remapping {args.pretrained}, writing {out_dir} and {model_dir}")
        m = write_bundle(
            out_dir, model_dir, corpus, vocab, classes, args.pretrained, args.vocab, meta
        )
    sizes = {str(d): _folder_bytes(d) for d in (out_dir, model_dir)}
    summary = {
        "docs": m["docs"],
        "tokens": m["tokens"],
        "tokens_total": m["tokens_total"],
        "vocab_size": len(vocab),
        "vocab_remap": m["model"]["vocab_remap"]["summary"],
        "prepare_seconds": m["prepare_seconds"],
        "prepare_cached": m["prepare_cached"],
        "verify_seconds": m["verify_seconds"],
        "write_seconds": m["write_seconds"],
        "seconds": round(time.perf_counter() - t_all, 1),
        "folder_bytes": sizes,
        "folder_mib": {k: round(v / 2**20, 2) for k, v in sizes.items()},
    }
    print(json.dumps(summary, indent=1))
    too_big = [k for k, v in sizes.items() if v > CARRY_LIMIT]
    if too_big:
        print(f"too big to carry (> 63 MiB): {', '.join(too_big)}", file=sys.stderr)
        return 1
    return 0


def cmd_stash(args) -> int:
    """Device call 1: copy a bundle folder where the next call finds it, checked."""
    t = time.perf_counter()
    src, dst = Path(args.src), Path(args.dst)
    check_folder(src)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    manifest = check_folder(dst)
    print(
        f"stash: {src} -> {dst}: {len(manifest['files'])} files, "
        f"{_folder_bytes(dst) / 2**20:.1f} MiB, checked, {time.perf_counter() - t:.1f} s"
    )
    return 0


# ----------------------------------------------------------------------------------------
# run (the GPU machine): the recipe on numbers
# ----------------------------------------------------------------------------------------


class Paced:
    """A training loader cut to ``n`` batches an epoch (None: all of them) that ends an epoch
    early once ``deadline`` (``time.monotonic()``) has passed. It notes when each batch is
    handed out and its shape, for the step time. The Learner syncs with the GPU at every step
    (it reads the loss), so the gaps between hand-outs are step times."""

    def __init__(self, loader, n: int | None = None, deadline: float | None = None) -> None:
        self.loader, self.n, self.deadline = loader, n, deadline
        self.stamps: list[float] = []
        self.shapes: list[tuple[int, ...]] = []
        self.cut_epochs = 0  # epochs ended by the deadline
        self.cut_batches = 0  # batches they left out

    def __len__(self) -> int:
        full = len(self.loader)
        return full if self.n is None else max(1, min(self.n, full))

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        self.stamps, self.shapes = [], []
        n = len(self)
        for i, batch in enumerate(self.loader):
            if i >= n:
                return
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.cut_epochs += 1
                self.cut_batches += n - i
                return
            self.stamps.append(time.perf_counter())
            first = batch[0] if isinstance(batch, tuple | list) else batch
            self.shapes.append(tuple(getattr(first, "shape", ())))
            yield batch

    def step_seconds(self, skip: int) -> float:
        """The median gap between hand-outs after the first ``skip`` batches."""
        gaps = np.diff(self.stamps[skip:])
        return float(np.median(gaps)) if len(gaps) else math.nan


@dataclass
class Plan:
    """What the run does: the recipe's settings and the budget's decisions."""

    lm_bs: int = 128
    bptt: int = 80
    lm_max_epochs: int = 10
    lm_valid_pct: float = 0.1
    eval_bs: int = 128
    clf_bs: int = 64
    clf_epochs: int = 2
    test_bs: int = 128
    seed: int = 42
    quick: bool = False
    quick_batches: int = 2
    # decided during the run
    lm_frozen_batches: int | None = None
    lm_epochs: int | None = None
    lm_epoch_batches: int | None = None
    clf_last_epochs: int | None = None
    clf_epoch_batches: int | None = None


class Run:
    """results.json, rewritten after every stage; the stage clocks."""

    def __init__(self, out: Path, budget_s: float, device: str) -> None:
        self.out, self.budget_s, self.device = out, budget_s, device
        self.deadline = T_START + budget_s
        self.res: dict = {
            "task": "IMDb headline on one GPU (issue 5 item 4; issue 3 item 5c)",
            "partial": True,
            "date": _now(),
            "command": _command(),
            "commit": git_commit(),
            "budget_s": budget_s,
            "stages": {},
            "estimates": {},
        }
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def stage(self, name: str):
        _say(f"{name} ...")
        t = time.perf_counter()
        yield
        self.sync()
        s = round(time.perf_counter() - t, 2)
        self.res["stages"][name] = s
        _say(f"{name}: {s:.1f} s ({self.left():.0f} s of the budget left)")
        self.save()

    def save(self) -> None:
        self.res["elapsed_s"] = round(time.monotonic() - T_START, 2)
        _write_json(self.out / "results.json", self.res)


def _environment(device: str) -> dict:
    return {**torch_environment(device), "host_cpus": os.cpu_count()}


def load_bundle(bundle: Path, models: list[Path], limit: int | None, seed: int):
    """``(corpus dict, tensors, vocab, model config, manifests)`` of ``bundle`` and the first
    folder of ``models`` that exists, checked against each other; ``limit``: a seeded sample
    of that many documents of each split."""
    from safetensors.torch import load_file

    from ulmfit.errors import UserError

    model_dir = next((m for m in models if m.is_dir()), None)
    if model_dir is None:
        raise UserError(
            f"no model folder ({', '.join(map(str, models))}). On the GPU machine device call 1 "
            "('stash') leaves it in /tmp; it must run on the same warm machine just before this"
        )
    _say(f"load: {bundle} and {model_dir}")
    cm, mm = check_folder(bundle), check_folder(model_dir)
    if cm["vocab"]["sha256"] != mm["vocab_sha256"]:
        raise UserError(f"{bundle} and {model_dir} were made with different vocabularies")
    with np.load(bundle / CORPUS) as z:
        corpus = {k: z[k] for k in ("ids", "offsets", "split", "labels")}
    vocab = json.loads((model_dir / VOCAB).read_text(encoding="utf-8"))
    config = json.loads((model_dir / CONFIG).read_text(encoding="utf-8"))
    tensors = load_file(str(model_dir / WEIGHTS))
    if limit is not None:
        keep = []
        for k in range(len(SPLITS)):
            mine = np.flatnonzero(corpus["split"] == k)
            rng = np.random.default_rng([seed, k])
            keep.append(np.sort(rng.choice(mine, size=min(limit, len(mine)), replace=False)))
        corpus = subset_corpus(corpus, np.sort(np.concatenate(keep)))
    return corpus, tensors, vocab, config, {"corpus": cm, "model": mm}


def subset_corpus(corpus: dict, idx: np.ndarray) -> dict:
    from ulmfit.corpus import gather_docs

    ids, off = gather_docs(corpus["ids"], corpus["offsets"], idx)
    return {
        "ids": ids,
        "offsets": off,
        "split": corpus["split"][idx],
        "labels": corpus["labels"][idx],
    }


def _train_config(args, device: str, *, clip: float | None, wd: float, moms, plot: bool = True):
    from ulmfit.config import TrainConfig
    from ulmfit.errors import UserError

    extra = {}
    if args.compile:
        if "compile" not in {f.name for f in fields(TrainConfig)}:
            raise UserError("--compile: this checkout's TrainConfig has no compile field")
        extra["compile"] = True
    return TrainConfig(
        moms=tuple(moms),
        wd=wd,
        clip=clip,
        seed=args.seed,
        device=device,
        progress=False,
        verbose=True,
        plot=plot,
        **extra,
    )


def _probe(
    run: Run, name: str, learn, loader: Paced, lr, warm: int, timed: int, cap_s: float
) -> int:
    """Train ``learn`` on the first ``warm + timed`` batches of ``loader``, for ``cap_s``
    seconds at most, and put the model's weights back. Returns how many of the first gaps
    between batches to skip as warm-up (fewer when the cap cut the probe short): the step
    time is then ``loader.step_seconds(skip)``."""
    model = learn.model
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loader.n, loader.deadline = warm + timed, time.monotonic() + cap_s
    with run.stage(f"probe_{name}"):
        learn.fit_one_cycle(1, lr)
    model.load_state_dict(saved)
    model.reset()
    loader.n = loader.deadline = None
    loader.cut_epochs = loader.cut_batches = 0
    return max(0, min(warm, len(loader.stamps) - 3))


def _chunks(width: int, bptt: int) -> int:
    return -(-int(width) // bptt)


def _clf_chunk_count(loader, lengths: np.ndarray, bptt: int) -> int:
    """How many bptt-chunk reads (one per batch row group) an epoch of ``loader`` makes."""
    batches = (
        loader.sampler.batches() if hasattr(loader.sampler, "batches") else list(loader.sampler)
    )
    return int(sum(_chunks(lengths[b].max(), bptt) for b in batches if len(b)))


def _docs_of(corpus: dict, k: int):
    """Split ``k``'s documents as a LabelledDocs (ids in the LM's vocabulary, input order)."""
    from ulmfit.corpus import gather_docs
    from ulmfit.tasks.classifier import LabelledDocs

    idx = np.flatnonzero(corpus["split"] == k)
    ids, off = gather_docs(corpus["ids"], corpus["offsets"], idx)
    ids = ids.astype(np.int64)
    return LabelledDocs(
        ids=ids,
        offsets=off,
        labels=corpus["labels"][idx].astype(np.int64),
        classes=[],
        rows=np.arange(len(idx), dtype=np.int64),
        path=SPLITS[k],
        unk_rate=round(float(np.count_nonzero(ids == 0)) / max(1, len(ids)), 6),
    )


def _metrics(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict:
    """The library's metrics_of (it needs scikit-learn), else the same headline figures."""
    try:
        from ulmfit.metrics import metrics_of

        return metrics_of(y, pred, classes)
    except ImportError:
        acc = float(np.mean(y == pred))
        cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
        np.add.at(cm, (y, pred), 1)
        return {
            "n": int(len(y)),
            "accuracy": acc,
            "error_rate": 1.0 - acc,
            "classes": list(classes),
            "confusion": cm.tolist(),
        }


def cmd_run(args) -> int:
    import torch

    from ulmfit.errors import UserError

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no GPU")
    run = Run(Path(args.out), args.budget_s, args.device)
    plan = Plan(
        lm_bs=args.lm_bs,
        bptt=args.bptt,
        lm_max_epochs=args.lm_max_epochs,
        clf_bs=args.clf_bs,
        clf_epochs=args.clf_epochs,
        seed=args.seed,
        quick=args.quick,
    )
    run.res["environment"] = _environment(args.device)
    run.res["plan"] = vars(plan)
    work = Path(tempfile.mkdtemp(prefix="imdb_gpu-work-"))
    try:
        _recipe(run, plan, args, work)
    except BaseException as e:
        run.res["error"] = f"{type(e).__name__}: {e}"
        run.save()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(Exception):
            (run.out / "results.md").write_text(results_md(run.res), encoding="utf-8")
    return 0


def _recipe(run: Run, plan: Plan, args, work: Path) -> None:
    import torch

    from ulmfit.config import AWDLSTMConfig, ClassifierConfig, FinetuneLMConfig
    from ulmfit.corpus import gather_docs, split_docs
    from ulmfit.lm_eval import lm_eval
    from ulmfit.loaders import ClassifierLoader, LMLoader
    from ulmfit.models.awd_lstm import LanguageModel
    from ulmfit.models.classifier import load_encoder
    from ulmfit.models.pretrained import with_aliases
    from ulmfit.predict import predict_logits
    from ulmfit.tasks.classifier import (
        _subset,
        build_classifier,
        classifier_arch,
        loss_for,
    )
    from ulmfit.train import ClassifierTask, Learner, LMTask

    res, dev = run.res, args.device
    lmc = FinetuneLMConfig()  # the fine-tuning recipe's settings (bs / bptt: see Plan)
    ccfg = ClassifierConfig(bs=plan.clf_bs, epochs=plan.clf_epochs, seed=plan.seed)
    res["settings"] = {
        "lm": {
            "bs": plan.lm_bs,
            "bptt": plan.bptt,
            "drop_mult": lmc.drop_mult,
            "wd": lmc.wd,
            "clip": lmc.clip,
            "alpha": lmc.alpha,
            "beta": lmc.beta,
            "moms": list(lmc.moms),
            "frozen_lr": lmc.frozen_lr,
            "lr": lmc.lr,
            "valid_pct": lmc.valid_pct,
        },
        "classifier": {
            k: getattr(ccfg, k)
            for k in ("lr", "bs", "epochs", "drop_mult", "wd", "moms", "alpha", "beta", "bptt")
        }
        | {"max_len": ccfg.max_len, "valid_pct": ccfg.valid_pct, "clip": None},
        "amp": "auto (bf16 autocast on a bf16 GPU, off on the CPU)",
        "compile": bool(args.compile),
    }

    # -- load ------------------------------------------------------------------------------
    with run.stage("load"):
        corpus, tensors, vocab, config, manifests = load_bundle(
            Path(args.bundle), args.model or DEFAULT_MODELS, args.limit, plan.seed
        )
        arch = AWDLSTMConfig(**config["architecture"])
        lm = LanguageModel(len(vocab), arch.scaled(lmc.drop_mult))
        lm.load_state_dict(with_aliases(expand_state(tensors, len(vocab))), strict=True)
        del tensors
        lm.to(dev)
        classes = manifests["corpus"]["classes"]
        n_docs = len(corpus["offsets"]) - 1
        train_idx, valid_idx = split_docs(n_docs, plan.lm_valid_pct, plan.seed)
        tr_ids, tr_off = gather_docs(corpus["ids"], corpus["offsets"], train_idx)
        va_ids, va_off = gather_docs(corpus["ids"], corpus["offsets"], valid_idx)
        valid_docs = [va_ids[va_off[i] : va_off[i + 1]] for i in range(len(valid_idx))]
        lengths = np.diff(corpus["offsets"])
        res["data"] = {
            "bundle": manifests["corpus"]["command"],
            "bundle_commit": manifests["corpus"]["commit"],
            "limit": args.limit,
            "docs": {s: int((corpus["split"] == k).sum()) for k, s in enumerate(SPLITS)},
            "tokens": {s: int(lengths[corpus["split"] == k].sum()) for k, s in enumerate(SPLITS)},
            "vocab_size": len(vocab),
            "vocab_remap": config["vocab_remap"]["summary"],
            "lm_train_docs": int(len(train_idx)),
            "lm_valid_docs": int(len(valid_idx)),
            "lm_train_tokens": int(tr_off[-1]),
            "lm_valid_tokens": int(va_off[-1]),
            "classes": classes,
        }
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    # -- the language model: held-out metrics before ------------------------------------------
    with run.stage("lm_eval_before"):
        res["lm_before"] = lm_eval(lm, vocab, valid_docs, bs=plan.eval_bs)
    t_eval = res["stages"]["lm_eval_before"]
    _say(f"LM before: perplexity {res['lm_before']['perplexity']:.2f}")

    # -- probes: seconds per training step of each model ---------------------------------------
    lm_loader = Paced(
        LMLoader(tr_ids, tr_off, bs=plan.lm_bs, bptt=plan.bptt, shuffle=True, seed=plan.seed)
    )
    lm_valid = LMLoader(
        va_ids, va_off, bs=plan.lm_bs, bptt=plan.bptt, shuffle=False, seed=plan.seed
    )
    warm, timed = (1, 2) if plan.quick else (3, 12)
    probe = Learner(
        lm,
        lm_loader,
        None,
        LMTask(alpha=lmc.alpha, beta=lmc.beta),
        out_dir=work / "probe_lm",
        config=_train_config(args, dev, clip=lmc.clip, wd=lmc.wd, moms=lmc.moms, plot=False),
    )
    cap = max(10.0, 0.03 * run.budget_s)  # per probe
    skip = _probe(run, "lm", probe, lm_loader, lmc.lr, warm, timed, cap)
    lm_step = lm_loader.step_seconds(skip)
    if not math.isfinite(lm_step):  # fewer than two batches in the probe: its whole time
        lm_step = res["stages"]["probe_lm"] / max(1, len(lm_loader.stamps))
    del probe
    shutil.rmtree(work / "probe_lm", ignore_errors=True)

    train_docs, test_docs = _docs_of(corpus, 0), _docs_of(corpus, 1)
    tr_i, va_i = split_docs(len(train_docs), ccfg.valid_pct, ccfg.seed)
    clf_train, clf_valid = _subset(train_docs, tr_i), _subset(train_docs, va_i)
    clf_loader = Paced(
        ClassifierLoader(
            clf_train.ids,
            clf_train.offsets,
            clf_train.labels,
            bs=ccfg.bs,
            train=True,
            seed=ccfg.seed,
            max_len=None,
        )
    )
    clf_valid_loader = ClassifierLoader(
        clf_valid.ids, clf_valid.offsets, clf_valid.labels, bs=ccfg.bs, train=False, max_len=None
    )

    def new_classifier():
        torch.manual_seed(ccfg.seed)
        c = build_classifier(len(vocab), len(classes), classifier_arch(arch.to_dict()), ccfg)
        load_encoder(c, lm)
        return c

    probe = Learner(
        new_classifier(),
        clf_loader,
        None,
        ClassifierTask(loss_for("single"), alpha=ccfg.alpha, beta=ccfg.beta),
        out_dir=work / "probe_clf",
        config=_train_config(args, dev, clip=None, wd=ccfg.wd, moms=ccfg.moms, plot=False),
    )
    probe.unfreeze()
    skip = _probe(run, "classifier", probe, clf_loader, ccfg.lr / 20, warm, timed, cap)
    probe_chunks = sum(_chunks(s[1], ccfg.bptt) for s in clf_loader.shapes[skip:-1])
    gaps = np.diff(clf_loader.stamps[skip:])
    if len(gaps) and probe_chunks:
        chunk_s = float(gaps.sum() / probe_chunks)
    else:  # fewer than two batches in the probe: its whole time
        chunks = sum(_chunks(s[1], ccfg.bptt) for s in clf_loader.shapes)
        chunk_s = res["stages"]["probe_classifier"] / max(1, chunks)
    del probe
    shutil.rmtree(work / "probe_clf", ignore_errors=True)
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()

    # -- the budget ------------------------------------------------------------------------------
    tr_len = np.diff(clf_train.offsets)
    clf_epoch_chunks = _clf_chunk_count(clf_loader.loader, tr_len, ccfg.bptt)
    va_chunks = _clf_chunk_count(clf_valid_loader, np.diff(clf_valid.offsets), ccfg.bptt)
    test_loader = ClassifierLoader(
        test_docs.ids, test_docs.offsets, None, bs=plan.test_bs, train=False, max_len=None
    )
    te_chunks = _clf_chunk_count(test_loader, np.diff(test_docs.offsets), ccfg.bptt)
    fwd = 0.5  # forward only, as a share of a training step (a guess; recorded, see actuals)
    # stages 1..3 train the head, then 1 and 2 LSTM layers more: cheaper than stage 4
    stage_factors = (0.5, 0.65, 0.85) + (1.0,) * plan.clf_epochs
    clf_valid_s = chunk_s * va_chunks * fwd
    clf_est = sum(f * chunk_s * clf_epoch_chunks + clf_valid_s + 2.0 for f in stage_factors)
    # predict_logits at bs test_bs: rows cost as if compute-bound; x1.5 to be safe
    test_est = chunk_s * te_chunks * (plan.test_bs / ccfg.bs) * fwd * 1.5
    margin = 15.0
    lm_epoch_steps = len(lm_loader.loader)
    lm_valid_s = lm_step * len(lm_valid) * fwd
    lm_epoch_est = lm_step * lm_epoch_steps + lm_valid_s + 3.0
    res["estimates"] = {
        "lm_step_s": lm_step,
        "lm_steps_per_epoch": lm_epoch_steps,
        "lm_epoch_s": lm_epoch_est,
        "clf_chunk_s": chunk_s,
        "clf_chunks_per_epoch": clf_epoch_chunks,
        "clf_epoch_s": chunk_s * clf_epoch_chunks + clf_valid_s,
        "classifier_s": clf_est,
        "test_s": test_est,
        "lm_eval_s": t_eval,
        "margin_s": margin,
    }
    lm_end = run.deadline - clf_est - test_est - t_eval - margin
    # estimates far off (or a very slow device): the LM still gets 30% of what is left, and
    # the classifier's epochs end at their deadline instead
    lm_end = max(lm_end, time.monotonic() + 0.3 * (run.left() - margin))
    res["estimates"]["lm_time_s"] = lm_end - time.monotonic()
    _say(
        f"budget: LM step {lm_step * 1e3:.1f} ms x {lm_epoch_steps} steps/epoch "
        f"(~{lm_epoch_est:.0f} s/epoch); classifier ~{clf_est:.0f} s, test ~{test_est:.0f} s; "
        f"the LM gets ~{lm_end - time.monotonic():.0f} s"
    )
    run.save()

    # -- the language model: fine-tuning (finetune_lm's two stages) ---------------------------
    learn = Learner(
        lm,
        lm_loader,
        lm_valid,
        LMTask(alpha=lmc.alpha, beta=lmc.beta),
        out_dir=work / "lm",
        config=_train_config(args, dev, clip=lmc.clip, wd=lmc.wd, moms=lmc.moms),
    )
    moms = tuple(lmc.moms)
    avail = lm_end - time.monotonic()
    if plan.quick:
        plan.lm_frozen_batches = plan.quick_batches
    elif lm_epoch_est <= avail / 3:
        plan.lm_frozen_batches = None  # a whole epoch
    else:  # a slow device: a third of the LM's time at most
        plan.lm_frozen_batches = max(1, int((avail / 3 - lm_valid_s - 3) / lm_step))
    lm_loader.n = plan.lm_frozen_batches
    lm_loader.deadline = None if plan.quick else lm_end  # --quick: every stage runs its batches
    with run.stage("lm_frozen"):
        learn.freeze()
        learn.fit_one_cycle(1, lmc.frozen_lr, moms=moms, wd=lmc.wd)
    frozen_s = res["stages"]["lm_frozen"]
    frac = len(lm_loader) / lm_epoch_steps
    # an unfrozen epoch costs at least what the frozen one did (more gradients); the
    # validation and the checkpoint do not scale with the share of the epoch trained
    fixed = min(frozen_s, lm_valid_s + 3.0)
    epoch_est = max(lm_epoch_est, (frozen_s - fixed) / max(frac, 1e-9) + fixed)
    avail = lm_end - time.monotonic()
    if plan.quick:
        plan.lm_epochs, plan.lm_epoch_batches = 1, plan.quick_batches
    elif epoch_est <= avail:
        plan.lm_epochs = int(min(plan.lm_max_epochs, avail // epoch_est))
        plan.lm_epoch_batches = None
    else:
        plan.lm_epochs = 1
        plan.lm_epoch_batches = max(1, int((avail - lm_valid_s - 3) / lm_step))
    res["plan"] = vars(plan)
    _say(
        f"LM: {plan.lm_epochs} unfrozen epoch(s) of "
        f"{plan.lm_epoch_batches or lm_epoch_steps} steps (~{epoch_est:.0f} s per whole epoch)"
    )
    lm_loader.n = plan.lm_epoch_batches
    # 5% slack: an LM cut mid-cycle is worse than a classifier a little short of its estimate
    lm_loader.deadline = None if plan.quick else lm_end + 0.05 * max(0.0, lm_end - T_START)
    with run.stage("lm_unfrozen"):
        learn.unfreeze()
        learn.fit_one_cycle(plan.lm_epochs, lmc.lr, moms=moms, wd=lmc.wd)
    res["lm_history"] = learn.history
    res["lm_cut"] = {"epochs": lm_loader.cut_epochs, "batches": lm_loader.cut_batches}
    res["stages"]["lm_finetune"] = round(frozen_s + res["stages"]["lm_unfrozen"], 2)
    with contextlib.suppress(OSError):
        shutil.copy(work / "lm" / "loss.png", run.out / "lm_loss.png")
    del learn
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
    with run.stage("lm_eval_after"):
        res["lm_after"] = lm_eval(lm, vocab, valid_docs, bs=plan.eval_bs)
    _say(
        f"LM: perplexity {res['lm_before']['perplexity']:.2f} -> "
        f"{res['lm_after']['perplexity']:.2f}, accuracy {res['lm_before']['accuracy']:.4f} -> "
        f"{res['lm_after']['accuracy']:.4f}"
    )

    # -- the classifier: fit_classifier's gradual unfreezing -------------------------------------
    model = new_classifier()
    clf_end = run.deadline - test_est - margin
    clf_loader.deadline = None if plan.quick else clf_end
    clf_loader.n = plan.quick_batches if plan.quick else None
    learn = Learner(
        model,
        clf_loader,
        clf_valid_loader,
        ClassifierTask(loss_for("single"), alpha=ccfg.alpha, beta=ccfg.beta),
        out_dir=work / "classifier",
        config=_train_config(args, dev, clip=None, wd=ccfg.wd, moms=ccfg.moms),
    )
    from ulmfit.tasks.classifier import LR_SPREAD, UNFREEZING_STAGES

    lr, moms, d = ccfg.lr, tuple(ccfg.moms), LR_SPREAD
    (_, s1), (_, s2), (_, s3), (_, s4) = UNFREEZING_STAGES  # fit_classifier's stages
    n_groups = len(learn.groups)
    t_clf = time.perf_counter()
    with run.stage("clf_stage1"):
        learn.freeze_to(-1)
        learn.fit_one_cycle(1, lr * s1, moms=moms)
    for k, lr_k in ((2, lr * s2), (3, lr * s3)):
        if n_groups > k:
            with run.stage(f"clf_stage{k}"):
                learn.freeze_to(-k)
                learn.fit_one_cycle(1, slice(lr_k / d, lr_k), moms=moms)
    # the last stage: fit's epochs if they fit, else fewer (an unfrozen epoch costs more
    # than the third stage's, which trained all but the embedding)
    last = res["stages"].get("clf_stage3", res["stages"]["clf_stage1"])
    epoch_est = max(last * 1.2, chunk_s * clf_epoch_chunks + clf_valid_s)
    avail = clf_end - time.monotonic()
    if plan.quick:
        plan.clf_last_epochs = 1
    else:
        plan.clf_last_epochs = int(max(1, min(plan.clf_epochs, avail // epoch_est)))
        if epoch_est > avail:
            plan.clf_epoch_batches = max(1, int(len(clf_loader.loader) * avail / epoch_est))
            clf_loader.n = plan.clf_epoch_batches
    res["plan"] = vars(plan)
    with run.stage("clf_stage4"):
        learn.unfreeze()
        learn.fit_one_cycle(plan.clf_last_epochs, slice(lr * s4 / d, lr * s4), moms=moms)
    res["stages"]["classifier"] = round(time.perf_counter() - t_clf, 2)
    res["clf_history"] = learn.history
    res["clf_cut"] = {"epochs": clf_loader.cut_epochs, "batches": clf_loader.cut_batches}
    last_rec = learn.history[-1]
    res["valid"] = {
        "n": len(clf_valid),
        "loss": last_rec.get("valid_loss"),
        "accuracy": last_rec.get("accuracy"),
        "error_rate": None if last_rec.get("accuracy") is None else 1 - last_rec["accuracy"],
    }
    with contextlib.suppress(OSError):
        shutil.copy(work / "classifier" / "loss.png", run.out / "clf_loss.png")
    del learn

    # -- the test reviews, scored once ------------------------------------------------------------
    with run.stage("test_predict"):
        logits = predict_logits(model, test_docs, bs=plan.test_bs, device=dev)
    pred = logits.argmax(1)
    m = _metrics(test_docs.labels, pred, classes)
    res["test"] = {k: m[k] for k in ("n", "accuracy", "error_rate", "confusion") if k in m}
    res["test"]["unk_rate"] = test_docs.unk_rate
    if dev.startswith("cuda"):
        res["gpu_peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    res["stages"]["total"] = round(time.monotonic() - T_START, 2)
    res["within_budget"] = res["stages"]["total"] <= run.budget_s
    res["partial"] = False
    run.save()
    _say(
        f"test error {100 * res['test']['error_rate']:.2f}% on {res['test']['n']:,} reviews; "
        f"total {res['stages']['total']:.0f} s"
    )


def results_md(r: dict) -> str:
    """A short human-readable summary of results.json."""
    env = r.get("environment", {})
    st = r.get("stages", {})
    lines = [
        f"## IMDb headline on one GPU ({r.get('date')})",
        "",
        f"Machine: {env.get('gpu') or env.get('cpu')}; torch {env.get('torch')}, CUDA "
        f"{env.get('cuda')}, cuDNN {env.get('cudnn')}; python {env.get('python')}; "
        f"ulmfit commit {r.get('commit')}.",
        f"Command: `{r.get('command')}` (budget {r.get('budget_s')} s).",
    ]
    if r.get("partial"):
        lines.append(f"**Unfinished run** ({r.get('error', 'stopped before the end')}).")
    d = r.get("data")
    if d:
        each = ", ".join(f"{s} {d['docs'][s]:,} docs / {d['tokens'][s]:,} tokens" for s in SPLITS)
        lines.append(
            f"Data: {each}; vocabulary {d['vocab_size']:,} ({d['vocab_remap']}). LM: "
            f"{d['lm_train_docs']:,} documents ({d['lm_train_tokens']:,} tokens) trained on, "
            f"{d['lm_valid_docs']:,} ({d['lm_valid_tokens']:,} tokens) held out."
        )
    p = r.get("plan", {})
    lines.append(
        f"Plan: LM bs {p.get('lm_bs')} x bptt {p.get('bptt')}, 1 frozen epoch"
        f"{'' if p.get('lm_frozen_batches') is None else ' of ' + str(p['lm_frozen_batches']) + ' steps'}"
        f" + {p.get('lm_epochs')} unfrozen"
        f"{'' if p.get('lm_epoch_batches') is None else ' of ' + str(p['lm_epoch_batches']) + ' steps'}"
        f"; classifier bs {p.get('clf_bs')}, stages 1+1+1+{p.get('clf_last_epochs')}."
    )
    lines += ["", "| stage | wall s |", "|---|--:|"]
    sums = {
        "lm_finetune": "LM fine-tuning (frozen + unfrozen)",
        "classifier": "classifier (stages 1-4)",
        "total": "total (script start to end)",
    }
    lines += [f"| {sums.get(k, k)} | {v:.1f} |" for k, v in st.items()]
    b, a = r.get("lm_before"), r.get("lm_after")
    if b:
        lines += [
            "",
            "| held-out LM | loss | perplexity | next-token accuracy | tokens |",
            "|---|--:|--:|--:|--:|",
        ]
        for name, m in (("before (wiki30k_fwd, remapped)", b), ("after fine-tuning", a)):
            if m:
                lines.append(
                    f"| {name} | {m['loss']:.4f} | {m['perplexity']:.2f} | "
                    f"{100 * m['accuracy']:.2f}% | {m['tokens']:,} |"
                )
    t = r.get("test")
    if t:
        v = r.get("valid", {})
        lines += [
            "",
            f"**Test error {100 * t['error_rate']:.2f}%** (accuracy {100 * t['accuracy']:.2f}%, "
            f"{t['n']:,} reviews); validation accuracy "
            f"{100 * (v.get('accuracy') or 0):.2f}% ({v.get('n')} held-out training reviews). "
            "ULMFiT paper: 5.3% forward only (WT103).",
        ]
    cuts = [
        f"{k}: {c['epochs']} epoch(s) ended by the deadline ({c['batches']} batches left out)"
        for k, c in (("LM", r.get("lm_cut")), ("classifier", r.get("clf_cut")))
        if c and c["epochs"]
    ]
    if cuts:
        lines.append("Deadline cuts: " + "; ".join(cuts) + ".")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------


def _forbid(names: str) -> None:
    """Make ``import NAME`` fail, as on a machine without it (a CPU rehearsal of the GPU
    machine, which has no spaCy)."""
    for name in filter(None, names.split(",")):
        sys.modules[name.strip()] = None  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("bundle", help="tokenize, numericalize, remap the weights (here)")
    b.add_argument("--out-dir", type=Path, default=REPO / ".gpu" / "imdb")
    b.add_argument("--model-dir", type=Path, help="default: OUT_DIR + '_model'")
    b.add_argument("--limit", type=int, help="a seeded sample of N rows of each file")
    b.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    b.add_argument("--workers", type=int, default=0, help="tokenizer processes (0: all cores)")
    b.add_argument("--cache-dir", type=Path)
    b.add_argument("--pretrained", type=Path, default=PRETRAINED / "lstm_fwd.pth")
    b.add_argument("--vocab", type=Path, default=PRETRAINED / "itos.pkl")
    b.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the check that read_labelled (fit_classifier's reader) gives the same ids",
    )
    b.set_defaults(func=cmd_bundle)

    s = sub.add_parser("stash", help="copy a bundle folder and check it (device call 1)")
    s.add_argument("src", type=Path)
    s.add_argument("dst", type=Path)
    s.set_defaults(func=cmd_stash)

    r = sub.add_parser("run", help="the recipe on a bundle (device call 2)")
    r.add_argument("--bundle", type=Path, default=REPO / ".gpu" / "imdb")
    r.add_argument(
        "--model",
        type=Path,
        action="append",
        help="the model folder; repeat it to name fallbacks, the first that exists is used "
        "(default: /tmp/imdb_model, then .gpu/imdb_model)",
    )
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--budget-s", type=float, default=570.0, help="from the script's start")
    r.add_argument("--device", help="default: cuda if available")
    r.add_argument("--limit", type=int, help="a seeded sample of N documents of each split")
    r.add_argument("--quick", action="store_true", help="2 batches an epoch, 1 epoch a stage")
    r.add_argument("--lm-bs", type=int, default=128)
    r.add_argument("--bptt", type=int, default=80)
    r.add_argument("--lm-max-epochs", type=int, default=10)
    r.add_argument("--clf-bs", type=int, default=64)
    r.add_argument("--clf-epochs", type=int, default=2, help="the last stage's (fit's 2)")
    r.add_argument("--seed", type=int, default=42)
    r.add_argument("--compile", action="store_true", help="TrainConfig(compile=True)")
    r.add_argument("--forbid-imports", default="", help="e.g. spacy,sklearn (CPU rehearsal)")
    r.set_defaults(func=cmd_run)

    args = p.parse_args(argv)
    if getattr(args, "forbid_imports", ""):
        _forbid(args.forbid_imports)
    from ulmfit.errors import UserError

    try:
        return args.func(args)
    except UserError as e:
        print(f"imdb_gpu: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
