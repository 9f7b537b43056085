"""One-shot GPU speed benchmark: ours vs fastai 2.8, language model and classifier, one run.

What it measures, each contender in its own subprocess (its own timeout: one failure or
out-of-memory loses only that measurement), after warm-up, with ``torch.cuda.synchronize()``
around every timed region, and the peak GPU memory of each subprocess
(``torch.cuda.max_memory_allocated``):

- **language-model training, tokens/s** at bs 64 / 128 / 256, bptt 80, in mixed precision:
  the contenders of bench/lm_train.py (imported from it, not copied): ours = ``Learner`` +
  ``LMTask`` with ``TrainConfig(amp="auto")`` (bf16 autocast on a bf16 GPU); fastai =
  ``language_model_learner(...).to_fp16()``; plain = ``nn.LSTM`` x 3 under bf16 autocast.
  Extras when time allows: ours and plain in fp16 (``amp="fp16"``, a GradScaler), and
  ours with ``TrainConfig(compile=True)`` where the library has that field.
- **classifier training, documents/s**: IMDb reviews (real text, tokenized here with our
  tokenizer, wiki30k ids), fastai's recipe on both sides: AWD-LSTM encoder with the
  classifier dropouts (drop_mult 0.5), BPTT chunks of 72, gradients through the last
  max_len = 72 x 20 tokens, concat pooling, AR/TAR (2, 1), one-cycle with discriminative
  rates over the unfrozen model, bs 64. Ours: ``ClassifierLoader`` (sortish batches) +
  ``build_classifier`` + ``Learner`` with ``ClassifierTask``, as ``fit_classifier`` builds
  them; fastai: ``SortedDL`` + ``Pad_Chunk`` (what ``TextBlock`` gives a classifier) and
  ``text_classifier_learner(..., pretrained=False).to_fp16()``. Two epochs: the first is the
  warm-up, the second (its training steps, validation excluded) is timed; the documents/s
  count the documents of the timed steps (on CUDA our Learner reads one batch ahead, so its
  last step falls outside the timed window and is not counted either).
- **classifier prediction, documents/s** over IMDb test reviews, length-sorted batches of 64:
  ours = ``ulmfit.predict.predict_logits`` (what ``evaluate`` and ``ulmfit.load(...)
  .predict`` run: on a GPU under the training's mixed precision, ``amp="auto"``), ours_fp32 =
  the same call with ``amp="off"``, fastai = ``learn.get_preds(dl=...)`` with ``to_fp16()``.
  One warm-up pass, then one timed pass.

Weights are random (speed does not depend on them). Step 1, on a machine with ../shared
(tokenizes the texts, downloads fastai's wheels; no GPU needed)::

    .venv/bin/python bench/gpu_speed.py bundle            # writes .gpu/speed/ (about 10.5 MiB)

Step 2, on the GPU machine (Python 3.12 with torch, numpy, pandas, ...; no fastai, no spaCy,
no ../shared), with ``.gpu/speed`` carried along, in one call of at most 8 minutes::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/speed/whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
    python3 bench/gpu_speed.py run --bundle .gpu/speed --out $OUT

It keeps to ``--budget-s`` (default 450 s) from its own start: a job that would not fit in
what is left is skipped and listed as skipped; later rounds (``--repeat``, default 3; medians
reported) run only while time remains. ``DIR/results.json``, ``DIR/results.md`` (a section
for bench/RESULTS.md) and ``DIR/logs/*.log`` (each subprocess's stderr) are rewritten after
every job, so a run cut short still leaves what it measured.

A CPU dry run of every code path (fastai included), not a benchmark::

    .venv/bin/python bench/gpu_speed.py run --bundle .gpu/speed --out /tmp/x --device cpu \\
        --quick --fastai-python bench/.venv-fastai/bin/python

spaCy is made unimportable in every subprocess (``sys.modules["spacy"] = None``), as on the
GPU machine: fastai.text imports it only inside its spaCy tokenizer, which token ids never need.
"""

from __future__ import annotations

import os
import sys

# bench/ holds tokenize.py (named by the issue), which would shadow the standard library's
# tokenize module for anything run from this folder: move the folder to the end of the
# import path (after the standard library; benchlib is found there).
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE] + [_HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

from benchlib import git_commit, torch_environment  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
SHARED = REPO.parent / "shared"
FASTAI_VENV = BENCH / ".venv-fastai"
DEFAULT_BUNDLE = REPO / ".gpu" / "speed"
PIP_LINE = (
    "python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/speed/whl/*.whl"
    " && export PYTHONPATH=/tmp/site:$PWD"
)
VOCAB_SIZE = 30008  # wiki30k
PAD = 1
MAX_BUNDLE_MB = 48  # the device call carries at most 64 MiB, the repository included

# fastai 2.8's runtime imports that the GPU machine lacks (found by importing fastai.text.all
# in a fresh virtualenv holding only torch and the GPU machine's packages); versions pinned
# to those in bench/.venv-fastai.
WHEELS = [
    "fastai",
    "fastcore",
    "fasttransform",
    "fastprogress",
    "fastdownload",
    "plum-dispatch",
    "beartype",
    "python-fasthtml",  # fastprogress imports fasthtml.common
    "starlette",
    "anyio",
    "itsdangerous",
    "python-multipart",
    "requests",
    "urllib3",
    "idna",
    "certifi",
    "charset-normalizer",
    "cloudpickle",
    "pyyaml",
]
# on the GPU machine already (its packages and what they depend on)
GPU_HAS = {
    "torch", "numpy", "pandas", "matplotlib", "scikit-learn", "safetensors", "rich", "tqdm",
    "psutil", "pyarrow", "typing-extensions", "sympy", "networkx", "jinja2", "fsspec",
    "filelock", "setuptools", "python-dateutil", "tzdata", "pillow", "packaging", "pyparsing",
    "kiwisolver", "cycler", "fonttools", "contourpy", "scipy", "joblib", "threadpoolctl",
    "narwhals", "markdown-it-py", "pygments", "mdurl", "six", "markupsafe", "mpmath",
}  # fmt: skip
# declared by the bundled wheels but never imported on this benchmark's path
NOT_NEEDED = {
    "spacy": "fastai's spaCy tokenizer only; the benchmark feeds token ids",
    "torchvision": "fastai.vision only",
    "uvicorn": "fasthtml's web server; fastprogress does not start it",
    "httpx2": "fasthtml's client; not imported by fasthtml.common",
    "oauthlib": "fasthtml's OAuth; not imported by fasthtml.common",
    "beautifulsoup4": "fasthtml's HTML parsing; not imported by fasthtml.common",
    "sniffio": "not required by anyio 4.16",
    "exceptiongroup": "Python < 3.11 only",
}


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _lm_train():
    """bench/lm_train.py as a module (its contenders and helpers are reused, not copied)."""
    import importlib.util

    mod = sys.modules.get("lm_train")
    if mod is None:
        spec = importlib.util.spec_from_file_location("lm_train", BENCH / "lm_train.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["lm_train"] = mod
        spec.loader.exec_module(mod)
    return mod


# ============================================================================================
# Step 1: the bundle (run here, with ../shared and the network)
# ============================================================================================


def _tokenize_ids(texts: list[str], stoi: dict[str, int]) -> tuple:
    import numpy as np

    from ulmfit.text.tokenize import Tokenizer

    tok, docs = Tokenizer(), []
    for i in range(0, len(texts), 500):
        for toks in tok.tokenize_batch(texts[i : i + 500]):
            docs.append(np.fromiter((stoi.get(t, 0) for t in toks), dtype=np.uint16))
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in docs], out=offsets[1:])
    return np.concatenate(docs), offsets


def _imdb(split: str, n: int, seed: int):
    """``n`` reviews of IMDb's ``split`` (a seeded sample, both classes), as (ids, offsets,
    labels) with labels 0 = negative, 1 = positive."""
    import numpy as np
    import pandas as pd

    from ulmfit.models.pretrained import read_itos

    df = pd.read_csv(SHARED / "data" / "imdb" / f"{split}.csv.gz")
    df = df.sample(n=min(n, len(df)), random_state=seed).reset_index(drop=True)
    itos = read_itos(SHARED / "models" / "wiki30k_fwd" / "itos.pkl")
    ids, offsets = _tokenize_ids(
        df["text"].astype(str).tolist(), {t: i for i, t in enumerate(itos)}
    )
    labels = (df["label"].astype(str) == "positive").to_numpy().astype(np.int8)
    return ids, offsets, labels


def _fastai_pins(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "print(json.dumps({d: m.version(d) for d in sys.argv[1:]}))"
    )
    out = subprocess.run([str(python), "-c", code, *WHEELS], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(
            f"cannot read the versions in {python} (run bash bench/setup_fastai_env.sh):\n"
            + out.stderr[-2000:]
        )
    return json.loads(out.stdout)


def _wheel_dist(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return _canon(name), version


def _requires(path: Path) -> list[str]:
    """The non-extra Requires-Dist names of a wheel (markers for other Pythons dropped)."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    out = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        req, _, marker = req.partition(";")
        if "extra ==" in marker or "extra==" in marker:
            continue
        if "python_version >= '3.14'" in marker or "python_version < '3.11'" in marker:
            continue
        out.append(_canon(re.split(r"[\s<>=!~\[(]", req.strip(), maxsplit=1)[0]))
    return sorted(set(out))


def download_wheels(whl: Path, pins: dict[str, str]) -> list[dict]:
    whl.mkdir(parents=True, exist_ok=True)
    have = {_wheel_dist(p): p for p in whl.glob("*.whl")}
    for stale in [p for (n, v), p in have.items() if pins.get(n) not in (None, v)]:
        stale.unlink()  # an older pin
    have = {_wheel_dist(p)[0] for p in whl.glob("*.whl")}
    for name, version in pins.items():
        if _canon(name) in have:
            continue
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp",
               "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
               "--platform", "manylinux2014_x86_64", "-d", str(whl), f"{name}=={version}"]  # fmt: skip
        _say("bundle: " + shlex.join(cmd[2:]))
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"pip download {name}=={version} failed:\n{out.stderr[-2000:]}")
    wheels = sorted(whl.glob("*.whl"))
    bundled = {_wheel_dist(p)[0] for p in wheels}
    report, missing = [], []
    for p in wheels:
        reqs = _requires(p)
        status = {}
        for r in reqs:
            if r in bundled:
                status[r] = "bundled"
            elif r in GPU_HAS:
                status[r] = "on the GPU machine"
            elif r in NOT_NEEDED:
                status[r] = "not needed: " + NOT_NEEDED[r]
            else:
                status[r] = "MISSING"
                missing.append(f"{p.name} needs {r}")
        report.append({"wheel": p.name, "bytes": p.stat().st_size, "requires": status})
    for m in missing:
        _say(f"bundle: WARNING: {m}, which is neither bundled nor known to be on the GPU")
    return report


def bundle(a) -> None:
    import hashlib

    import numpy as np

    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lm_file = out / "lm_ids.npy"
    if not lm_file.exists() or len(np.load(lm_file, mmap_mode="r")) < a.lm_tokens:
        _say(f"bundle: tokenizing {a.lm_tokens:,} Wikipedia tokens (bench/lm_train.py's _ids)")
        ids = np.asarray(_lm_train()._ids(a.lm_tokens), dtype=np.uint16)
        if len(ids) < a.lm_tokens:
            raise SystemExit(f"only {len(ids):,} tokens of Wikipedia text found")
        np.save(lm_file, ids)
    clas_file = out / "clas.npz"
    key = {"train": a.clas_train, "test": a.clas_test, "seed": a.seed}
    old = (
        json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    )
    if not clas_file.exists() or old.get("clas_key") != key:
        _say(f"bundle: tokenizing {a.clas_train:,} + {a.clas_test:,} IMDb reviews")
        tr = _imdb("train", a.clas_train, a.seed)
        te = _imdb("test", a.clas_test, a.seed)
        np.savez(
            clas_file,
            train_ids=tr[0], train_offsets=tr[1], train_labels=tr[2],
            test_ids=te[0], test_offsets=te[1], test_labels=te[2],
        )  # fmt: skip
    wheels = []
    pins = {}
    if not a.no_wheels:
        pins = _fastai_pins(Path(a.fastai_venv) / "bin" / "python")
        wheels = download_wheels(out / "whl", pins)
    lm_ids = np.load(lm_file, mmap_mode="r")
    c = np.load(clas_file)
    lens = {s: np.diff(c[f"{s}_offsets"]) for s in ("train", "test")}
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            files[str(p.relative_to(out))] = {
                "bytes": p.stat().st_size,
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            }
    total = sum(f["bytes"] for f in files.values())
    manifest = {
        "created": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "ulmfit_commit": git_commit(),
        "lm": {
            "file": "lm_ids.npy",
            "tokens": int(len(lm_ids)),
            "source": "../shared/data/wikipedia_en valid.txt then train.txt.gz, our tokenizer, "
            "wiki30k vocabulary (30,008)",
        },
        "clas": {
            "file": "clas.npz",
            "source": "IMDb (../shared/data/imdb train.csv.gz / test.csv.gz), seeded sample, "
            "our tokenizer, wiki30k ids (unknown -> 0)",
            **{
                s: {
                    "docs": int(len(lens[s])),
                    "tokens": int(lens[s].sum()),
                    "mean_tokens": round(float(lens[s].mean()), 1),
                    "median_tokens": int(np.median(lens[s])),
                    "max_tokens": int(lens[s].max()),
                    "positive": int(c[f"{s}_labels"].sum()),
                }
                for s in ("train", "test")
            },
        },
        "clas_key": key,
        "fastai_pins": pins,
        "wheels": wheels,
        "files": files,
        "bytes": total,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    mb = total / 2**20
    _say(
        f"bundle: {out} holds {mb:.1f} MiB in {len(files)} files ({time.perf_counter() - t0:.0f} s)"
    )
    if mb > MAX_BUNDLE_MB:
        raise SystemExit(f"the bundle is {mb:.1f} MiB, over the {MAX_BUNDLE_MB} MiB allowed")
    print(json.dumps({k: manifest[k] for k in ("lm", "clas", "bytes")}, indent=1))


# ============================================================================================
# The contenders (each runs in a subprocess: `python gpu_speed.py _child SPEC_JSON`)
# ============================================================================================

DEVICE = "cpu"


class Skip(Exception):
    """The contender cannot run here (exit code 3: reported as skipped, not failed)."""


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _clas_data(bundle_dir: Path, spec: dict) -> dict:
    """Train / valid / test documents of the bundle, cut as the spec says."""
    import numpy as np

    c = np.load(bundle_dir / "clas.npz")

    def take(split: str, idx) -> tuple:
        ids, off = c[f"{split}_ids"], c[f"{split}_offsets"]
        docs = [ids[off[i] : off[i + 1]] for i in idx]
        if spec.get("max_doc_tokens"):
            docs = [d[-spec["max_doc_tokens"] :] for d in docs]
        offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum([len(d) for d in docs], out=offsets[1:])
        flat = np.concatenate(docs) if docs else np.zeros(0, dtype=np.uint16)
        return flat, offsets, c[f"{split}_labels"][list(idx)].astype(np.int64)

    n_train = len(c["train_offsets"]) - 1
    n_test = len(c["test_offsets"]) - 1
    nt = min(spec["train_docs"], n_train)
    nv = min(spec["valid_docs"], n_test)
    npred = min(spec["pred_docs"], n_test)
    return {
        "train": take("train", range(nt)),
        "valid": take("test", range(nv)),
        "test": take("test", range(npred)),
    }


class _DocCount:
    """A Task that counts the documents of the training steps it has begun."""

    def __init__(self, task):
        self.task, self.docs = task, 0

    def __getattr__(self, name):
        return getattr(self.task, name)

    def train_step(self, model, batch):
        self.docs += len(batch[1])
        return self.task.train_step(model, batch)


class _EpochTimer:
    """A training loader that times each epoch from its first batch to its end (synchronized
    at both ends; validation and checkpoints fall outside), with the documents of the steps
    done by then. The Learner may read one batch ahead (on CUDA it copies the next batch
    while the current one trains): the loader then runs out before the last step, which is
    neither timed nor counted."""

    def __init__(self, loader, count: _DocCount):
        self.loader, self.count, self.epochs = loader, count, []

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        _sync()
        t0, docs0 = time.perf_counter(), self.count.docs
        yield from self.loader
        _sync()
        self.epochs.append((time.perf_counter() - t0, self.count.docs - docs0))


def _our_classifier(spec: dict, cc):
    """``fit_classifier``'s model for the wiki30k LM's shapes (``spec["arch"]`` may shrink
    it: the tests do)."""
    from ulmfit.config import AWDLSTMConfig
    from ulmfit.tasks.classifier import build_classifier, classifier_arch

    arch = classifier_arch({**AWDLSTMConfig().to_dict(), **spec.get("arch", {})})
    return build_classifier(spec.get("vocab_size", VOCAB_SIZE), 2, arch, cc)


def clas_train_ours(spec: dict, data: dict, compile: bool = False) -> dict:
    """``fit_classifier``'s loaders, model and Learner (its last, unfrozen stage)."""
    import dataclasses
    import tempfile

    import torch

    from ulmfit.config import ClassifierConfig, TrainConfig
    from ulmfit.loaders import ClassifierLoader
    from ulmfit.train import ClassifierTask, Learner

    extra: dict = {}
    if compile:
        if "compile" not in {f.name for f in dataclasses.fields(TrainConfig)}:
            raise Skip("this ulmfit's TrainConfig has no compile field")
        extra["compile"] = True
    cc = ClassifierConfig(bs=spec["bs"], bptt=72, max_len=spec["max_len"])
    torch.manual_seed(cc.seed)
    model = _our_classifier(spec, cc)
    (tr_ids, tr_off, tr_y), (va_ids, va_off, va_y) = data["train"], data["valid"]
    task = _DocCount(
        ClassifierTask(torch.nn.functional.cross_entropy, alpha=cc.alpha, beta=cc.beta)
    )
    train = _EpochTimer(
        ClassifierLoader(tr_ids, tr_off, tr_y, bs=cc.bs, train=True, seed=cc.seed, max_len=None),
        task,
    )
    valid = ClassifierLoader(va_ids, va_off, va_y, bs=cc.bs, train=False, max_len=None)
    tc = TrainConfig(
        moms=tuple(cc.moms), wd=cc.wd, clip=None, seed=cc.seed, device=DEVICE,
        progress=False, verbose=False, plot=False, **extra,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        learn = Learner(model, train, valid, task, out_dir=out, config=tc)
        learn.unfreeze()
        lr, d = cc.lr, 2.6**4
        learn.fit_one_cycle(spec["epochs"], slice(lr / 10 / d, lr / 10), moms=tuple(cc.moms))
    secs, docs = train.epochs[-1]
    return {"value": docs / secs, "unit": "docs/s", "timed_docs": docs, "timed_s": secs}


def _fastai_items(split: tuple) -> tuple[list, list[int]]:
    import torch
    from fastai.text.all import TensorCategory, TensorText

    ids, off, y = split
    items = [
        (
            TensorText(torch.from_numpy(ids[off[i] : off[i + 1]].astype("int64"))),
            TensorCategory(int(y[i])),
        )
        for i in range(len(off) - 1)
    ]
    return items, [int(n) for n in (off[1:] - off[:-1])]


def _fastai_clas_learner(spec: dict, data: dict):
    """fastai's text classifier as ``TextDataLoaders`` + ``text_classifier_learner`` build it,
    fed token ids: ``SortedDL`` with ``Pad_Chunk(seq_len=72)`` (training: shuffled, last
    partial batch dropped; fastai's default workers)."""
    from fastai.text.all import (
        AWD_LSTM,
        CrossEntropyLossFlat,
        DataLoaders,
        Pad_Chunk,
        SortedDL,
        text_classifier_learner,
    )

    tr, tr_len = _fastai_items(data["train"])
    va, va_len = _fastai_items(data["valid"])
    bs = spec["bs"]
    train = SortedDL(tr, res=tr_len, bs=bs, shuffle=True, drop_last=True,
                     before_batch=Pad_Chunk(seq_len=72))  # fmt: skip
    valid = SortedDL(va, res=va_len, bs=bs, shuffle=False, before_batch=Pad_Chunk(seq_len=72))
    dls = DataLoaders(train, valid)
    dls.vocab = [f"t{i}" for i in range(VOCAB_SIZE)]
    dls.c = 2
    if DEVICE.startswith("cuda"):
        dls = dls.to(DEVICE)
    learn = text_classifier_learner(
        dls, AWD_LSTM, seq_len=72, max_len=spec["max_len"], drop_mult=0.5, pretrained=False,
        metrics=[], loss_func=CrossEntropyLossFlat(),
    )  # fmt: skip
    if DEVICE.startswith("cuda"):
        learn = learn.to_fp16()
    return learn, train


def clas_train_fastai(spec: dict, data: dict) -> dict:
    import torch
    from fastai.text.all import Callback

    class EpochTimer(Callback):
        order = 99

        def before_fit(self):
            self.epochs = []

        def before_train(self):
            _sync()
            self.t0, self.docs = time.perf_counter(), 0

        def after_batch(self):
            if self.training:
                self.docs += int(self.yb[0].shape[0])

        def after_train(self):
            _sync()
            self.epochs.append((time.perf_counter() - self.t0, self.docs))

    torch.manual_seed(42)
    learn, train = _fastai_clas_learner(spec, data)
    timer = EpochTimer()
    lr, d = 2e-2, 2.6**4
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(spec["epochs"], slice(lr / 10 / d, lr / 10), moms=(0.8, 0.7, 0.8),
                            cbs=[timer])  # fmt: skip
    secs, docs = timer.epochs[-1]
    return {
        "value": docs / secs,
        "unit": "docs/s",
        "timed_docs": docs,
        "timed_s": secs,
        "num_workers": train.num_workers,
    }


def _timed_passes(fn, warm: int, timed: int, n_docs: int) -> dict:
    for _ in range(warm):
        fn()
    secs = []
    for _ in range(timed):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        secs.append(time.perf_counter() - t0)
    s = statistics.median(secs)
    return {"value": n_docs / s, "unit": "docs/s", "timed_docs": n_docs, "timed_s": s}


def predict_ours(spec: dict, data: dict, amp: str = "auto") -> dict:
    import torch

    from ulmfit.corpus import TokenCorpus
    from ulmfit.tasks.classifier import ClassifierConfig, predict_logits

    torch.manual_seed(42)
    cc = ClassifierConfig(bs=spec["bs"], bptt=72, max_len=spec["max_len"])
    model = _our_classifier(spec, cc)
    model.to(DEVICE).eval()
    ids, off, _ = data["test"]
    docs = TokenCorpus(ids, off, [])

    def run():
        out = predict_logits(model, docs, bs=spec["bs"], device=DEVICE, amp=amp)
        assert out.shape == (len(docs), 2)

    return _timed_passes(run, spec["warm"], spec["timed"], len(docs))


def predict_fastai(spec: dict, data: dict) -> dict:
    import torch
    from fastai.text.all import Pad_Chunk, SortedDL

    torch.manual_seed(42)
    learn, _ = _fastai_clas_learner({**spec, "bs": spec["bs"]}, {**data, "train": data["valid"]})
    te, te_len = _fastai_items(data["test"])
    dl = SortedDL(te, res=te_len, bs=spec["bs"], shuffle=False,
                  before_batch=Pad_Chunk(seq_len=72), device=DEVICE)  # fmt: skip
    n = len(te)

    def run():
        preds, _ = learn.get_preds(dl=dl)
        assert tuple(preds.shape) == (n, 2)

    with learn.no_bar(), learn.no_logging():
        return _timed_passes(run, spec["warm"], spec["timed"], n)


CLASSIFIER_CONTENDERS = {
    ("clas_train", "ours"): clas_train_ours,
    ("clas_train", "ours_compile"): lambda s, d: clas_train_ours(s, d, compile=True),
    ("clas_train", "fastai"): clas_train_fastai,
    ("predict", "ours"): predict_ours,
    ("predict", "ours_fp32"): lambda s, d: predict_ours(s, d, amp="off"),
    ("predict", "fastai"): predict_fastai,
}


def _lm_runner(name: str):
    import functools

    lm = _lm_train()
    lm.DEVICE = DEVICE
    runners = {
        "ours": lm.run_ours,
        "ours_fp16": functools.partial(lm.run_ours, amp="fp16"),
        "ours_compile": functools.partial(lm.run_ours, compile=True),
        "fastai": lm.run_fastai,
        "plain": lm.run_plain,
        "plain_fp16": functools.partial(lm.run_plain, dtype="fp16"),
    }
    return lm, runners[name]


def _env() -> dict:
    env = torch_environment(DEVICE)
    if "fastai" in sys.modules:
        env["fastai"] = sys.modules["fastai"].__version__
        import fastcore

        env["fastcore"] = fastcore.__version__
    return env


def _child(spec: dict) -> None:
    sys.modules["spacy"] = None  # as on the GPU machine: `import spacy` fails
    import resource

    import numpy as np
    import torch

    global DEVICE
    DEVICE = spec["device"]
    if DEVICE == "cpu":
        torch.set_num_threads(spec["threads"])
    if DEVICE.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    bundle_dir = Path(spec["bundle"])
    kind, name = spec["kind"], spec["name"]
    try:
        if name.startswith("fastai"):
            import fastai.text.all  # noqa: F401  (import errors are failures, reported)
        if kind == "lm":
            lm, runner = _lm_runner(name)
            ids = np.load(bundle_dir / "lm_ids.npy").astype(np.int64)
            try:
                tps = runner(ids, spec["bs"], spec["bptt"], spec["warm"], spec["timed"])
            except lm.Unsupported as e:
                raise Skip(str(e)) from None
            res = {"value": tps, "unit": "tokens/s"}
        else:
            data = _clas_data(bundle_dir, spec)
            res = CLASSIFIER_CONTENDERS[(kind, name)](spec, data)
    except Skip as e:
        print(json.dumps({"skip": str(e)}))
        sys.exit(3)
    res["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if DEVICE.startswith("cuda"):
        res["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        res["peak_gpu_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    res["env"] = _env()
    print(json.dumps(res))


# ============================================================================================
# Step 2: the run (jobs, budget, results)
# ============================================================================================

# first guesses of a job's wall time (s), replaced by measurements of the same contender
PRIOR_S = {"cuda": {"lm": 25, "clas_train": 60, "predict": 30}, "cpu": {"lm": 20, "clas_train": 40, "predict": 20}}  # fmt: skip
RESERVE_S = 8  # kept for writing the results at the end


@dataclass
class Job:
    kind: str  # lm | clas_train | predict
    name: str  # contender
    bs: int
    spec: dict
    extra: bool = False  # run once, after every main job of round 1, if time allows
    runs: list = field(default_factory=list)  # one record per attempt

    @property
    def key(self) -> str:
        return f"{self.kind}/bs{self.bs}/{self.name}"


def _plan(a, bundle_dir: Path, manifest: dict) -> list[Job]:
    base = {"device": a.device, "threads": a.threads, "bundle": str(bundle_dir)}
    jobs: list[Job] = []
    lm_tokens = manifest["lm"]["tokens"]
    if "lm" in a.only:
        for bs in a.lm_bs:
            timed = a.lm_batches
            most = (lm_tokens - 8) // bs // a.bptt - a.lm_warm - 1  # what the ids allow
            if most < timed:
                _say(f"lm bs {bs}: the bundle's tokens allow {most} timed batches, not {timed}")
                timed = most
            spec = {**base, "kind": "lm", "bs": bs, "bptt": a.bptt, "warm": a.lm_warm,
                    "timed": timed}  # fmt: skip
            for name in ("ours", "fastai", "plain"):
                jobs.append(Job("lm", name, bs, {**spec, "name": name}))
    clas = {**base, "max_len": a.clas_max_len, "train_docs": a.clas_docs, "valid_docs": a.clas_valid_docs,
            "pred_docs": a.pred_docs, "max_doc_tokens": a.max_doc_tokens}  # fmt: skip
    if "clas" in a.only:
        for bs in a.clas_bs:
            spec = {**clas, "kind": "clas_train", "bs": bs, "epochs": a.clas_epochs}
            for name in ("ours", "fastai"):
                jobs.append(Job("clas_train", name, bs, {**spec, "name": name}))
    if "pred" in a.only:
        for bs in a.pred_bs:
            spec = {**clas, "kind": "predict", "bs": bs, "warm": 1, "timed": a.pred_passes}
            for name in ("ours", "ours_fp32", "fastai"):
                jobs.append(Job("predict", name, bs, {**spec, "name": name}))
    if a.extras:
        if "lm" in a.only:
            bs = max(a.lm_bs)
            for name in ("ours_fp16", "plain_fp16", "ours_compile"):
                ref = next(j for j in jobs if j.kind == "lm" and j.bs == bs)
                jobs.append(Job("lm", name, bs, {**ref.spec, "name": name}, extra=True))
        if "clas" in a.only:
            ref = next(j for j in jobs if j.kind == "clas_train")
            spec = {**ref.spec, "name": "ours_compile"}
            jobs.append(Job("clas_train", "ours_compile", ref.bs, spec, extra=True))
    if a.contenders:
        keep = set(a.contenders.split(","))
        jobs = [j for j in jobs if j.name in keep]
    return jobs


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run_job(a, job: Job, timeout: float, log_dir: Path, attempt: int) -> dict:
    py = a.fastai_python if job.name.startswith("fastai") else sys.executable
    cmd = [py, str(Path(__file__).resolve()), "_child", json.dumps(job.spec)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    if a.device == "cpu":
        env["OMP_NUM_THREADS"] = str(a.threads)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=max(timeout, 1))
        status = None
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        status = "timeout"
    _kill_group(proc)  # dataloader workers left behind, if any
    wall = time.perf_counter() - t0
    log = log_dir / f"{job.key.replace('/', '_')}_run{attempt}.log"
    log.write_text(f"$ {shlex.join(cmd)}\n\n--- stdout\n{out}\n--- stderr\n{err}")
    rec: dict = {"wall_s": round(wall, 1), "log": str(log.relative_to(log_dir.parent))}
    last = out.strip().splitlines()[-1] if out.strip() else ""
    if status == "timeout":
        rec.update(status="timeout", reason=f"killed after {timeout:.0f} s")
    elif proc.returncode == 3 and last.startswith("{"):
        rec.update(status="skipped", reason=json.loads(last).get("skip", "unsupported"))
    elif proc.returncode != 0 or not last.startswith("{"):
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        rec.update(
            status="failed", reason=(lines[-1] if lines else f"exit {proc.returncode}")[:300]
        )
    else:
        rec.update(status="ok", **json.loads(last))
    return rec


def _jsonable(v):
    return sorted(v) if isinstance(v, set) else str(v)


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "–"
    return (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}") + unit


def _median(job: Job) -> float | None:
    vals = [r["value"] for r in job.runs if r.get("status") == "ok"]
    return statistics.median(vals) if vals else None


def _peak(job: Job, key: str) -> float | None:
    vals = [r[key] for r in job.runs if r.get(key) is not None]
    return max(vals) if vals else None


def _table(jobs: list[Job], kind: str, unit: str, gpu: bool) -> list[str]:
    rows = [j for j in jobs if j.kind == kind]
    if not rows:
        return []
    mem = "peak GPU MiB (allocated)" if gpu else "peak RSS MiB"
    out = [
        f"| bs | contender | {unit} (median) | runs | vs fastai | {mem} | wall s/run | status |",
        "|---|---|--:|---|--:|--:|--:|---|",
    ]
    for j in rows:
        m = _median(j)
        ref = next((r for r in rows if r.bs == j.bs and r.name == "fastai"), None)
        rm = _median(ref) if ref else None
        vs = f"{m / rm:.2f}x" if m and rm else "–"
        each = ", ".join(_fmt(r["value"]) for r in j.runs if r.get("status") == "ok") or "–"
        peak = _peak(j, "peak_gpu_mib" if gpu else "peak_rss_mib")
        walls = [r["wall_s"] for r in j.runs if "wall_s" in r]
        wall = f"{statistics.median(walls):.0f}" if walls else "–"
        st = ", ".join(sorted({r["status"] for r in j.runs})) or "not run"
        out.append(
            f"| {j.bs} | {j.name} | {_fmt(m)} | {each} | {vs} | {_fmt(peak)} | {wall} | {st} |"
        )
    return out


def _report(a, jobs: list[Job], meta: dict, out_dir: Path, final: bool) -> None:
    gpu = a.device.startswith("cuda")
    res = {
        **meta,
        "finished": final,
        "elapsed_s": round(time.perf_counter() - meta["_t0"], 1),
        "jobs": [
            {"key": j.key, "kind": j.kind, "name": j.name, "bs": j.bs, "extra": j.extra,
             "spec": j.spec, "median": _median(j), "runs": j.runs}
            for j in jobs
        ],
    }  # fmt: skip
    res.pop("_t0", None)
    (out_dir / "results.json").write_text(json.dumps(res, indent=1, default=_jsonable))
    env = meta.get("env") or {}
    fastai_v = meta.get("fastai_env", {}).get("fastai", "?")
    dry = not gpu or a.quick
    title = "GPU speed: ours vs fastai 2.8" if gpu else "gpu_speed.py dry run on the CPU"
    workers = next(
        (r["num_workers"] for j in jobs for r in j.runs if r.get("num_workers") is not None),
        "?",
    )
    lines = [
        f"\n## {title} ({meta['date']})\n",
        *(
            ["**Dry run, not a benchmark**: tiny batch counts to exercise every code path.\n"]
            if dry
            else []
        ),
        (
            f"- Machine: {env.get('gpu')} ({env.get('gpu_count')} visible, one used; driver, "
            f"memory: {meta.get('driver', '?')}); {meta['cpu']}"
            if gpu
            else f"- Machine: {meta['cpu']}, {a.threads} torch thread(s) per subprocess"
        ),
        f"- Versions: python {env.get('python', '?')}, torch {env.get('torch', '?')}, CUDA "
        f"{env.get('cuda')}, cuDNN {env.get('cudnn')}; fastai {fastai_v} "
        f"(fastcore {meta.get('fastai_env', {}).get('fastcore', '?')}); ulmfit {meta['commit']}",
        f"- Command: `{meta['command']}`" + (f" (after `{PIP_LINE}`)" if gpu else ""),
        f"- Budget {a.budget_s:.0f} s; elapsed {res['elapsed_s']:.0f} s"
        + ("" if final else " (still running when this was written)"),
        f"- LM: vocab 30,008, AWD-LSTM 400/1152/3, fastai's LM dropouts, bptt {a.bptt}, "
        f"{a.lm_warm} warm-up + up to {a.lm_batches} timed batches; Wikipedia text "
        f"({meta['bundle']['lm']['tokens']:,} tokens bundled). Mixed precision on a GPU: ours "
        "TrainConfig(amp='auto') = bf16 autocast, fastai to_fp16() = fp16 + GradScaler, "
        "plain bf16 autocast; *_fp16 rows: fp16 autocast + GradScaler.",
        f"- Classifier: IMDb reviews, {meta['clas']['train_docs']} training documents (mean "
        f"{meta['clas']['train_mean']:.0f} tokens), {a.clas_epochs} epochs, the last timed "
        f"(validation excluded); bptt 72, max_len {a.clas_max_len}, unfrozen, AR/TAR. "
        f"Prediction: {meta['clas']['pred_docs']} test reviews, 1 warm-up pass + "
        f"{a.pred_passes} timed. Random weights. fastai's DataLoader workers: its default "
        f"({workers}).",
        "- peak memory: the whole subprocess (model, optimizer, warm-up included).",
        "",
        "### Language-model training",
        "",
        *_table(jobs, "lm", "tokens/s", gpu),
        "",
        "### Classifier training",
        "",
        *_table(jobs, "clas_train", "docs/s", gpu),
        "",
        "### Classifier prediction",
        "",
        *_table(jobs, "predict", "docs/s", gpu),
        "",
    ]
    targets = []
    for j in jobs:
        if j.kind == "lm" and j.name == "ours":
            f = next(
                (r for r in jobs if r.kind == "lm" and r.bs == j.bs and r.name == "fastai"), None
            )
            m, fm = _median(j), _median(f) if f else None
            if m and fm:
                verdict = "met" if m >= 1.5 * fm else "not met"
                targets.append(
                    f"- LM bs {j.bs}: ours {m / fm:.2f}x fastai (target 1.5x): {verdict}"
                )
    if targets and not dry:
        lines += ["### Targets (issue 3 item 5b)", "", *targets, ""]
    notes = []
    for j in jobs:
        for k, r in enumerate(j.runs):
            if r["status"] != "ok":
                notes.append(f"- {j.key} run {k + 1}: {r['status']}: {r.get('reason', '')}")
    if notes:
        lines += ["### Not measured", "", *notes, ""]
    (out_dir / "results.md").write_text("\n".join(lines))


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


def _parent_env(device: str) -> tuple[dict, str]:
    code = (
        "import json, torch, platform\n"
        "d = {'python': platform.python_version(), 'torch': torch.__version__, "
        "'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version() "
        "if torch.backends.cudnn.is_available() else None}\n"
        f"if {device.startswith('cuda')!r}:\n"
        "    d.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(), "
        "bf16_supported=torch.cuda.is_bf16_supported())\n"
        "print(json.dumps(d))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"torch is not usable here:\n{out.stderr[-2000:]}")
    env = json.loads(out.stdout.strip().splitlines()[-1])
    if device.startswith("cuda") and "gpu" not in env:
        raise SystemExit("no CUDA device: use --device cpu (with --quick) for a dry run")
    driver = "n/a"
    if device.startswith("cuda"):
        try:
            q = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20,
            )  # fmt: skip
            driver = q.stdout.strip().splitlines()[0] if q.returncode == 0 else "?"
        except (OSError, subprocess.TimeoutExpired, IndexError):
            driver = "?"
    return env, driver


def run(a) -> None:
    t_start = time.perf_counter()
    deadline = t_start + a.budget_s
    bundle_dir: Path = a.bundle
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    for name in ("lm_ids.npy", "clas.npz"):
        if not (bundle_dir / name).is_file():
            raise SystemExit(f"{bundle_dir / name}: missing; run `gpu_speed.py bundle` first")
    out_dir: Path = a.out
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    env, driver = _parent_env(a.device)
    _say(f"gpu_speed: {env}; budget {a.budget_s:.0f} s")
    import numpy as np

    c = np.load(bundle_dir / "clas.npz")
    tr_len = np.diff(c["train_offsets"])[: a.clas_docs]
    if a.max_doc_tokens:
        tr_len = np.minimum(tr_len, a.max_doc_tokens)
    argv = [sys.executable, "bench/gpu_speed.py", *sys.argv[1:]]
    meta = {
        "_t0": t_start,
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "command": shlex.join(argv),
        "commit": git_commit(),
        "cpu": _cpu_name(),
        "driver": driver,
        "env": env,
        "fastai_env": {},
        "bundle": {k: manifest[k] for k in ("created", "lm", "clas", "bytes")},
        "clas": {
            "train_docs": int(len(tr_len)),
            "train_mean": float(tr_len.mean()),
            "pred_docs": int(min(a.pred_docs, len(c["test_offsets"]) - 1)),
        },
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
    }
    jobs = _plan(a, bundle_dir, manifest)
    prior = PRIOR_S["cuda" if a.device.startswith("cuda") else "cpu"]
    measured: dict[tuple[str, str], float] = {}

    def attempt(job: Job, rnd: int) -> None:
        left = deadline - time.perf_counter() - RESERVE_S
        est = measured.get((job.kind, job.name), prior[job.kind])
        if left < est:
            job.runs.append({"status": "skipped", "reason": f"budget: {left:.0f} s left, about "
                             f"{est:.0f} s needed (round {rnd + 1})"})  # fmt: skip
            _say(f"[{time.perf_counter() - t_start:5.0f} s] {job.key}: skipped (budget)")
            return
        timeout = min(a.job_timeout_s if not job.extra else a.extra_timeout_s, left)
        rec = _run_job(a, job, timeout, out_dir / "logs", len(job.runs) + 1)
        rec["round"] = rnd + 1
        job.runs.append(rec)
        if rec["status"] in ("ok", "timeout"):
            k = (job.kind, job.name)
            measured[k] = max(measured.get(k, 0.0), rec["wall_s"])
        if rec["status"] == "ok" and job.name.startswith("fastai"):
            meta["fastai_env"] = rec.get("env", {})
        if rec["status"] == "ok" and not meta["env"].get("from_child") and "env" in rec:
            meta["env"] = {**rec["env"], "from_child": True}
        val = f"{_fmt(rec['value'])} {rec['unit']}" if rec["status"] == "ok" else rec["reason"]
        mem = rec.get("peak_gpu_mib", rec.get("peak_rss_mib"))
        _say(f"[{time.perf_counter() - t_start:5.0f} s] {job.key}: {rec['status']}: {val}"
             f" (wall {rec['wall_s']:.0f} s, peak {_fmt(mem)} MiB)")  # fmt: skip
        try:
            _report(a, jobs, meta, out_dir, final=False)
        except Exception:  # a report bug must not stop the measurements
            import traceback

            _say("gpu_speed: writing the interim report failed:\n" + traceback.format_exc())

    for rnd in range(a.repeat):
        for job in jobs:
            if job.extra:
                continue
            if rnd > 0 and not any(r["status"] == "ok" for r in job.runs):
                continue  # failed or skipped in round 1: not tried again
            attempt(job, rnd)
        if rnd == 0:
            for job in jobs:
                if job.extra:
                    attempt(job, rnd)
    _report(a, jobs, meta, out_dir, final=True)
    _say(f"gpu_speed: done in {time.perf_counter() - t_start:.0f} s; {out_dir}/results.md:")
    print((out_dir / "results.md").read_text())


# ============================================================================================
# CLI
# ============================================================================================


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bundle", help="write the GPU run's data and wheels (needs ../shared)")
    b.add_argument("--out", type=Path, default=DEFAULT_BUNDLE)
    b.add_argument("--lm-tokens", type=int, default=1_300_000)
    b.add_argument("--clas-train", type=int, default=5000, help="IMDb training reviews")
    b.add_argument("--clas-test", type=int, default=2000, help="IMDb test reviews")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--fastai-venv", type=Path, default=FASTAI_VENV, help="pins come from here")
    b.add_argument("--no-wheels", action="store_true", help="data only")

    r = sub.add_parser("run", help="run the benchmark from a bundle (on the GPU machine)")
    r.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run")
    r.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of every path")
    r.add_argument("--budget-s", type=float, default=450.0, help="total time budget")
    r.add_argument("--job-timeout-s", type=float, default=None, help="per subprocess")
    r.add_argument("--extra-timeout-s", type=float, default=None, help="per fp16/compile job")
    r.add_argument("--repeat", type=int, default=None, help="rounds (median reported)")
    r.add_argument("--fastai-python", default=sys.executable, help="python with fastai 2.8")
    r.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    r.add_argument("--only", default="lm,clas,pred", help="subset of lm,clas,pred")
    r.add_argument("--contenders", help="e.g. ours,fastai (default: all)")
    r.add_argument("--no-extras", dest="extras", action="store_false",
                   help="skip the fp16 / compile variants")  # fmt: skip
    r.add_argument("--lm-bs", type=int, nargs="+")
    r.add_argument("--bptt", type=int)
    r.add_argument("--lm-warm", type=int)
    r.add_argument("--lm-batches", type=int, help="timed LM batches")
    r.add_argument("--clas-bs", type=int, nargs="+")
    r.add_argument("--clas-docs", type=int, help="training documents")
    r.add_argument("--clas-valid-docs", type=int)
    r.add_argument("--clas-epochs", type=int, help="the last one is timed")
    r.add_argument("--clas-max-len", type=int)
    r.add_argument("--max-doc-tokens", type=int, help="keep the last N tokens of each review")
    r.add_argument("--pred-bs", type=int, nargs="+")
    r.add_argument("--pred-docs", type=int)
    r.add_argument("--pred-passes", type=int, help="timed passes (after one warm-up pass)")
    return p


# full-size (GPU) and --quick (CPU dry run) defaults of the run's sizes
FULL = dict(lm_bs=[64, 128, 256], bptt=80, lm_warm=10, lm_batches=50, clas_bs=[64],
            clas_docs=5000, clas_valid_docs=64, clas_epochs=2, clas_max_len=72 * 20,
            max_doc_tokens=None, pred_bs=[64], pred_docs=2000, pred_passes=1, repeat=3,
            job_timeout_s=180.0, extra_timeout_s=120.0)  # fmt: skip
QUICK = dict(lm_bs=[4, 8], bptt=16, lm_warm=1, lm_batches=2, clas_bs=[8], clas_docs=24,
             clas_valid_docs=8, clas_epochs=2, clas_max_len=144, max_doc_tokens=200,
             pred_bs=[8], pred_docs=24, pred_passes=1, repeat=1, job_timeout_s=300.0,
             extra_timeout_s=300.0)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    a = _parser().parse_args(argv)
    if a.cmd == "bundle":
        bundle(a)
        return
    run(resolve(a))


def resolve(a: argparse.Namespace) -> argparse.Namespace:
    """The run's arguments with the full-size or --quick defaults filled in."""
    for k, v in (QUICK if a.quick else FULL).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.only = set(a.only.split(","))
    return a


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        _child(json.loads(sys.argv[2]))
    else:
        main()
