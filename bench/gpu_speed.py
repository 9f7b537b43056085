"""One-shot GPU speed benchmark: ours vs fastai 2.8, language model and classifier, one run.

What each job measures (LM training tokens/s with bench/lm_train.py's contenders and their
fp16 / compile extras, ``ulmfit pretrain``, ``ulmfit fit``'s classifier stage and ``ulmfit
evaluate`` beside fastai's) and the procedure are in bench/RESULTS.md, "GPU benchmarks". Each
contender runs in its own subprocess with its own timeout, ``torch.cuda.synchronize()`` around
every timed region, with its peak GPU memory; spaCy is unimportable in every subprocess.

    .venv/bin/python bench/gpu_speed.py bundle       # here: writes .gpu/speed/ (< 48 MiB)
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/speed/whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
    python3 bench/gpu_speed.py run --bundle .gpu/speed --out $OUT     # the GPU, <= 8 min
    .venv/bin/python bench/gpu_speed.py run --bundle .gpu/speed --out /tmp/x --device cpu \\
        --quick --fastai-python bench/.venv-fastai/bin/python          # CPU dry run

The run keeps to ``--budget-s`` (450 s): a job that would not fit is skipped and listed;
``--repeat`` rounds (3; medians) run while time remains; results.json, results.md and logs/
are rewritten after every job.
"""

from __future__ import annotations

import os
import sys

# bench/ holds tokenize.py, which would shadow the standard library's tokenize module for
# anything run from this folder: move the folder to the end of the import path.
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE] + [_HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from benchlib import (  # noqa: E402
    bench_module,
    cli_json,
    cpu_description,
    dataset,
    export,
    git_commit,
    sha256,
    torch_environment,
    utc_now,
)

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
MAX_BUNDLE_MB = 48  # the device call carries at most 64 MiB, the repository included
# fastai 2.8's runtime imports that the GPU machine lacks (found by importing fastai.text.all
# in a fresh virtualenv holding only torch and the GPU machine's packages; fastprogress
# imports fasthtml.common), pinned to the versions in bench/.venv-fastai
WHEELS = (
    "fastai fastcore fasttransform fastprogress fastdownload plum-dispatch beartype "
    "python-fasthtml starlette anyio itsdangerous python-multipart requests urllib3 idna "
    "certifi charset-normalizer cloudpickle pyyaml"
).split()


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


def download_wheels(whl: Path, python: Path) -> dict[str, str]:
    """fastai's wheels for the GPU machine (cp312 manylinux), at the versions of ``python``."""
    code = "import importlib.metadata as m, json, sys; print(json.dumps({d: m.version(d) for d in sys.argv[1:]}))"
    out = subprocess.run([str(python), "-c", code, *WHEELS], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(
            f"{python}: no fastai (bash bench/setup_fastai_env.sh)\n{out.stderr[-2000:]}"
        )
    pins = json.loads(out.stdout)
    plat = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(whl)]  # fmt: skip
    cmd += [x for p in plat for x in ("--platform", p)] + [f"{n}=={v}" for n, v in pins.items()]
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit("pip download failed")
    return pins


def _sample(split: str, n: int, seed: int, folder: Path):
    """``n`` reviews of IMDb's ``split`` (a seeded sample, both classes): written as CSV into
    ``folder`` (for ``ulmfit prepare --export``), and as wiki30k ids, offsets and labels (0
    negative, 1 positive) for fastai."""
    import numpy as np
    import pandas as pd

    from ulmfit.models.pretrained import read_itos

    df = pd.read_csv(SHARED / "data" / "imdb" / f"{split}.csv.gz")
    df = df.sample(n=min(n, len(df)), random_state=seed).reset_index(drop=True)
    df.to_csv(folder / f"{split}.csv", index=False)
    itos = read_itos(SHARED / "models" / "wiki30k_fwd" / "itos.pkl")
    ids, offsets = _tokenize_ids(
        df["text"].astype(str).tolist(), {t: i for i, t in enumerate(itos)}
    )
    labels = (df["label"].astype(str) == "positive").to_numpy().astype(np.int8)
    return ids, offsets, labels


def bundle(a) -> None:
    """``lm_ids.npy`` (Wikipedia, wiki30k ids: the LM contenders), ``wiki/`` (the Wikipedia
    validation text exported: ``ulmfit pretrain``), ``clas_train/`` and ``clas_test/`` (IMDb
    samples exported: ``ulmfit fit`` / ``evaluate``), ``clas.npz`` (the same reviews as wiki30k
    ids: fastai), ``whl/`` (fastai's wheels) and ``manifest.json``."""
    import numpy as np

    out: Path = a.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    _say(f"bundle: tokenizing {a.lm_tokens:,} Wikipedia tokens (bench/lm_train.py's _ids)")
    ids = np.asarray(bench_module("lm_train")._ids(a.lm_tokens), dtype=np.uint16)
    np.save(out / "lm_ids.npy", ids)
    exports = {"wiki": export([SHARED / "data" / "wikipedia_en" / "valid.txt"], out / "wiki",
                              False, raw=a.raw)}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        data = {}
        for split, n in (("train", a.clas_train), ("test", a.clas_test)):
            _say(f"bundle: {n:,} IMDb {split} reviews")
            data[split] = _sample(split, n, a.seed, Path(tmp))
            exports[f"clas_{split}"] = export([Path(tmp) / f"{split}.csv"], out / f"clas_{split}",
                                              True, raw=a.raw)  # fmt: skip
    np.savez(out / "clas.npz", **{f"{s}_{k}": v for s, d in data.items()
                                  for k, v in zip(("ids", "offsets", "labels"), d)})  # fmt: skip
    pins = {} if a.no_wheels else download_wheels(out / "whl", a.fastai_venv / "bin" / "python")
    files = {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(out.rglob("*")) if p.is_file()}  # fmt: skip
    total = sum(f["bytes"] for f in files.values())
    manifest = {
        "created": utc_now(),
        "ulmfit_commit": git_commit(),
        "lm": {"file": "lm_ids.npy", "tokens": int(len(ids)), "source": "../shared/data/"
               "wikipedia_en valid.txt then train.txt.gz, our tokenizer, wiki30k ids"},
        "exports": exports,
        "clas": {s: {"docs": len(d[2]), "tokens": int(d[1][-1]), "positive": int(d[2].sum())}
                 for s, d in data.items()},
        "fastai_pins": pins,
        "files": files,
        "bytes": total,
    }  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    mb = total / 2**20
    _say(f"bundle: {out} holds {mb:.1f} MiB in {len(files)} files")
    if mb > MAX_BUNDLE_MB:
        raise SystemExit(f"the bundle is {mb:.1f} MiB, over the {MAX_BUNDLE_MB} MiB allowed")


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
    """fastai's documents from clas.npz: the first 90% of ``train_docs`` training reviews to
    train on and the rest to validate (fit's share), and ``pred_docs`` test reviews."""
    import numpy as np

    c = np.load(bundle_dir / "clas.npz")

    def take(split: str, idx) -> tuple:
        ids, off = c[f"{split}_ids"], c[f"{split}_offsets"]
        docs = [ids[off[i] : off[i + 1]][-spec.get("max_doc_tokens") or 0 :] for i in idx]
        offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum([len(d) for d in docs], out=offsets[1:])
        flat = np.concatenate(docs) if docs else np.zeros(0, dtype=np.uint16)
        return flat, offsets, c[f"{split}_labels"][list(idx)].astype(np.int64)

    nt = min(spec["train_docs"], len(c["train_offsets"]) - 1)
    n_valid = max(1, round(0.1 * nt))
    npred = min(spec["pred_docs"], len(c["test_offsets"]) - 1)
    return {
        "train": take("train", range(nt - n_valid)),
        "valid": take("train", range(nt - n_valid, nt)),
        "test": take("test", range(npred)),
    }


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
    """fastai's IMDb schedule (its lr 2e-2, 1e-2, 5e-3, 1e-3 over 2.6**4), timed whole."""
    import torch

    torch.manual_seed(42)
    learn, train = _fastai_clas_learner(spec, data)
    d, moms = 2.6**4, (0.8, 0.7, 0.8)
    _sync()
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.freeze_to(-1)
        learn.fit_one_cycle(1, 2e-2, moms=moms)
        for k, lr in ((2, 1e-2), (3, 5e-3)):
            learn.freeze_to(-k)
            learn.fit_one_cycle(1, slice(lr / d, lr), moms=moms)
        learn.unfreeze()
        learn.fit_one_cycle(spec["epochs"], slice(1e-3 / d, 1e-3), moms=moms)
    _sync()
    secs, epochs = time.perf_counter() - t0, 3 + spec["epochs"]
    docs = len(data["train"][1]) - 1
    return {"value": docs * epochs / secs, "unit": "docs/s", "timed_docs": docs * epochs,
            "timed_s": secs, "num_workers": train.num_workers}  # fmt: skip


def _exported(spec: dict, name: str) -> str:
    return dataset(Path(spec["bundle"]) / name)


def pretrain_ours(spec: dict, data: dict) -> dict:
    """``ulmfit pretrain`` for one epoch on the exported Wikipedia text, into the work folder
    (the classifier jobs start from it); tokens/s of the whole command."""
    lm = Path(spec["work"]) / "lm"
    args = ["pretrain", _exported(spec, "wiki"), "--out", str(lm), "--epochs", "1"]
    args += ["--bs", str(spec["bs"]), "--device", DEVICE, "--overwrite"]
    args += ["--emb-sz", "16", "--n-hid", "32", "--n-layers", "2", "--dry-run"] * spec["quick"]
    _, secs, _ = cli_json(args)
    tokens = spec["wiki_tokens"]
    return {"value": tokens / secs, "unit": "tokens/s", "timed_tokens": tokens, "timed_s": secs}


def clas_train_ours(spec: dict, data: dict, compile: bool = False) -> dict:
    """``ulmfit fit`` from the pretrained LM (``--lm-epochs 1``): its classifier stage."""
    run = Path(spec["work"]) / f"fit_bs{spec['bs']}{'_compile' * compile}"
    shutil.rmtree(run, ignore_errors=True)
    args = ["fit", "--train", _exported(spec, "clas_train"), "--out", str(run), "--lm-epochs", "1"]
    args += ["--pretrained", str(Path(spec["work"]) / "lm"), "--epochs", str(spec["epochs"])]
    args += ["--bs", str(spec["bs"]), "--device", DEVICE] + ["--compile"] * compile
    res, _, _ = cli_json(args + (["--dry-run"] if spec["quick"] else []))
    secs, epochs = res["classifier"]["seconds"], 3 + spec["epochs"]
    docs = round(0.9 * spec["exported_train_docs"])  # fit's 10% validation
    return {"value": docs * epochs / secs, "unit": "docs/s", "timed_docs": docs * epochs,
            "timed_s": secs, "lm_s": res["lm"]["seconds"]}  # fmt: skip


def predict_ours(spec: dict, data: dict) -> dict:
    """``ulmfit evaluate`` of the first ``fit`` run: the second of two calls is timed."""
    run = Path(spec["work"]) / f"fit_bs{spec['fit_bs']}"
    run = run.with_name(run.name + ".dry-run") if spec["quick"] else run
    args = ["evaluate", str(run), _exported(spec, "clas_test"), "--bs", str(spec["bs"])]
    cli_json(args + ["--device", DEVICE])
    res, secs, _ = cli_json(args + ["--device", DEVICE])
    return {"value": res["n"] / secs, "unit": "docs/s", "timed_docs": res["n"], "timed_s": secs,
            "accuracy": res["accuracy"]}  # fmt: skip


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


CONTENDERS = {
    ("pretrain", "ours"): pretrain_ours,
    ("clas_train", "ours"): clas_train_ours,
    ("clas_train", "ours_compile"): lambda s, d: clas_train_ours(s, d, compile=True),
    ("clas_train", "fastai"): clas_train_fastai,
    ("predict", "ours"): predict_ours,
    ("predict", "fastai"): predict_fastai,
}


def _lm_runner(name: str):
    import functools

    lm = bench_module("lm_train")
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
            data = _clas_data(bundle_dir, spec) if name.startswith("fastai") else {}
            res = CONTENDERS[(kind, name)](spec, data)
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
PRIOR_S = {"cuda": {"lm": 25, "pretrain": 40, "clas_train": 90, "predict": 30},
           "cpu": {"lm": 20, "pretrain": 40, "clas_train": 60, "predict": 20}}  # fmt: skip
RESERVE_S = 8  # kept for writing the results at the end


@dataclass
class Job:
    kind: str  # lm | pretrain | clas_train | predict
    name: str  # contender
    bs: int
    spec: dict
    extra: bool = False  # run once, after every main job of round 1, if time allows
    runs: list = field(default_factory=list)  # one record per attempt

    @property
    def key(self) -> str:
        return f"{self.kind}/bs{self.bs}/{self.name}"


def _plan(a, bundle_dir: Path, manifest: dict, work: Path) -> list[Job]:
    base = {"device": a.device, "threads": a.threads, "bundle": str(bundle_dir)}
    base.update(work=str(work), quick=a.quick)
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
    clas = {**base, "max_len": a.clas_max_len, "train_docs": a.clas_docs, "pred_docs": a.pred_docs,
            "max_doc_tokens": a.max_doc_tokens, "fit_bs": a.clas_bs[0],
            "exported_train_docs": manifest["exports"]["clas_train"]["docs"]}  # fmt: skip
    if a.only & {"clas", "pred"}:  # the LM that fit starts from
        spec = {**base, "kind": "pretrain", "name": "ours", "bs": 64}
        spec["wiki_tokens"] = manifest["exports"]["wiki"]["tokens"]
        jobs.append(Job("pretrain", "ours", 64, spec))
    if "clas" in a.only:
        for bs in a.clas_bs:
            spec = {**clas, "kind": "clas_train", "bs": bs, "epochs": a.clas_epochs}
            for name in ("ours", "fastai"):
                jobs.append(Job("clas_train", name, bs, {**spec, "name": name}))
    if "pred" in a.only:
        for bs in a.pred_bs:
            spec = {**clas, "kind": "predict", "bs": bs, "warm": 1, "timed": a.pred_passes}
            for name in ("ours", "fastai"):
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
    res = {**meta, "finished": final, "elapsed_s": round(time.perf_counter() - meta["t0"], 1)}
    res["jobs"] = [{"key": j.key, "kind": j.kind, "name": j.name, "bs": j.bs, "extra": j.extra,
                    "spec": j.spec, "median": _median(j), "runs": j.runs} for j in jobs]  # fmt: skip
    (out_dir / "results.json").write_text(json.dumps(res, indent=1, default=str))
    env, fa = meta.get("env") or {}, meta.get("fastai_env", {})
    ex, clas = meta["bundle"]["exports"], meta["clas"]
    workers = next((r["num_workers"] for j in jobs for r in j.runs if "num_workers" in r), "?")
    lines = [
        f"\n## {'GPU speed: ours vs fastai 2.8' if gpu else 'gpu_speed.py dry run on the CPU'}"
        f" ({meta['date']})\n",
        *(["**Dry run, not a benchmark**.\n"] if not gpu or a.quick else []),
        f"- Machine: {env.get('gpu') or 'no GPU'} (driver, memory: {meta['driver']}); "
        f"{meta['cpu']}; {a.threads} torch thread(s) per subprocess on a CPU",
        f"- Versions: python {env.get('python')}, torch {env.get('torch')}, CUDA "
        f"{env.get('cuda')}, cuDNN {env.get('cudnn')}; fastai {fa.get('fastai', '?')} (fastcore "
        f"{fa.get('fastcore', '?')}); ulmfit {meta['commit']}",
        f"- Command: `{meta['command']}`" + (f" (after `{PIP_LINE}`)" if gpu else ""),
        f"- Budget {a.budget_s:.0f} s; elapsed {res['elapsed_s']:.0f} s"
        + ("" if final else " (still running when this was written)"),
        f"- LM: vocab 30,008, AWD-LSTM 400/1152/3, fastai's LM dropouts, bptt {a.bptt}, "
        f"{a.lm_warm} warm-up + up to {a.lm_batches} timed batches of Wikipedia text. On a GPU: "
        "ours amp='auto' = bf16 autocast, fastai to_fp16() = fp16 + GradScaler, plain bf16 "
        "autocast; *_fp16 rows: fp16 autocast + GradScaler. `ulmfit pretrain`: "
        f"{ex['wiki']['tokens']:,} exported Wikipedia tokens, 1 epoch, the whole command.",
        f"- Classifier: IMDb reviews, gradual unfreezing 1+1+1+{a.clas_epochs} epochs timed "
        f"whole, validation included; ours `ulmfit fit` ({ex['clas_train']['docs']} exported "
        f"reviews, fit's 10% validation) from that pretrained LM; fastai "
        f"{clas['train_docs']} reviews (wiki30k ids, 10% validation), random weights, its "
        f"DataLoader workers ({workers}). Prediction: ours `ulmfit evaluate` on "
        f"{ex['clas_test']['docs']} exported test reviews (loading included), fastai "
        f"`get_preds` on {clas['pred_docs']}; the second of two passes.",
        "- peak memory: the whole subprocess (model, optimizer, warm-up included).",
    ]
    titles = {"lm": ("Language-model training", "tokens/s"), "pretrain": ("`ulmfit pretrain`",
              "tokens/s"), "clas_train": ("Classifier training", "docs/s"),
              "predict": ("Classifier prediction", "docs/s")}  # fmt: skip
    for kind, (title, unit) in titles.items():
        lines += ["", f"### {title}", "", *_table(jobs, kind, unit, gpu)]
    notes = [f"- {j.key} run {k + 1}: {r['status']}: {r.get('reason', '')}"
             for j in jobs for k, r in enumerate(j.runs) if r["status"] != "ok"]  # fmt: skip
    lines += ["", "### Not measured", "", *notes, ""] if notes else [""]
    (out_dir / "results.md").write_text("\n".join(lines))


def _driver(device: str) -> str:
    if not device.startswith("cuda"):
        return "n/a"
    q = ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"]
    try:
        return subprocess.run(q, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def _attempt(a, job: Job, rnd: int, meta: dict, measured: dict, deadline: float) -> None:
    """One run of ``job`` if what is left of the budget allows its (measured) time."""
    left = deadline - time.perf_counter() - RESERVE_S
    est = measured.get(
        (job.kind, job.name), PRIOR_S["cuda" if "cuda" in a.device else "cpu"][job.kind]
    )
    elapsed = f"[{time.perf_counter() - meta['t0']:5.0f} s] {job.key}"
    if left < est:
        job.runs.append({"status": "skipped", "reason": f"budget: {left:.0f} s left, about "
                         f"{est:.0f} s needed (round {rnd + 1})"})  # fmt: skip
        _say(f"{elapsed}: skipped (budget)")
        return
    timeout = min(a.job_timeout_s if not job.extra else a.extra_timeout_s, left)
    rec = _run_job(a, job, timeout, a.out / "logs", len(job.runs) + 1)
    job.runs.append({**rec, "round": rnd + 1})
    if rec["status"] in ("ok", "timeout"):
        k = (job.kind, job.name)
        measured[k] = max(measured.get(k, 0.0), rec["wall_s"])
    if rec["status"] == "ok":
        meta["fastai_env" if job.name.startswith("fastai") else "env"] = rec.get("env", {})
    val = f"{_fmt(rec['value'])} {rec['unit']}" if rec["status"] == "ok" else rec["reason"]
    mem = rec.get("peak_gpu_mib", rec.get("peak_rss_mib"))
    _say(f"{elapsed}: {rec['status']}: {val} (wall {rec['wall_s']:.0f} s, peak {_fmt(mem)} MiB)")


def run(a) -> None:
    t0 = time.perf_counter()
    manifest = json.loads((a.bundle / "manifest.json").read_text())
    (a.out / "logs").mkdir(parents=True, exist_ok=True)
    import numpy as np

    tr_len = np.diff(np.load(a.bundle / "clas.npz")["train_offsets"])[: a.clas_docs]
    meta = {
        "t0": t0,
        "date": utc_now(),
        "command": shlex.join([sys.executable, "bench/gpu_speed.py", *sys.argv[1:]]),
        "commit": git_commit(),
        "cpu": cpu_description(),
        "driver": _driver(a.device),
        "bundle": {k: manifest[k] for k in ("created", "lm", "exports", "clas", "bytes")},
        "clas": {"train_docs": int(len(tr_len)), "train_mean": float(tr_len.mean()),
                 "pred_docs": int(min(a.pred_docs, manifest["clas"]["test"]["docs"]))},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
    }  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="gpu_speed-work-"))  # run folders: not brought back
    jobs, measured = _plan(a, a.bundle, manifest, work), {}
    for rnd in range(a.repeat):
        for job in jobs:
            if job.extra or (rnd > 0 and not any(r["status"] == "ok" for r in job.runs)):
                continue  # extras once, below; failed or skipped in round 1: not again
            _attempt(a, job, rnd, meta, measured, t0 + a.budget_s)
            _report(a, jobs, meta, a.out, final=False)
        for job in [j for j in jobs if j.extra and rnd == 0]:
            _attempt(a, job, rnd, meta, measured, t0 + a.budget_s)
    shutil.rmtree(work, ignore_errors=True)
    _report(a, jobs, meta, a.out, final=True)
    _say(f"gpu_speed: done in {time.perf_counter() - t0:.0f} s; {a.out}/results.md:")
    print((a.out / "results.md").read_text())


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
    b.add_argument("--raw", action="store_true", help="copy the files, no --export (CPU)")
    r = sub.add_parser("run", help="run the benchmark from a bundle (on the GPU machine)")
    r.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run")
    r.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of every path")
    r.add_argument("--fastai-python", default=sys.executable, help="python with fastai 2.8")
    r.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    r.add_argument("--only", default="lm,clas,pred", help="subset of lm,clas,pred")
    r.add_argument("--contenders", help="e.g. ours,fastai (default: all)")
    r.add_argument("--no-extras", dest="extras", action="store_false",
                   help="skip the fp16 / compile variants")  # fmt: skip
    for name in FULL:  # sizes: FULL on a GPU, QUICK with --quick
        many = isinstance(FULL[name], list)
        kind = float if name.endswith("_s") else int
        r.add_argument("--" + name.replace("_", "-"), type=kind, nargs="+" if many else None)
    return p


# full-size (GPU) and --quick (CPU dry run) defaults of the run's sizes
FULL = dict(lm_bs=[64, 128, 256], bptt=80, lm_warm=10, lm_batches=50, clas_bs=[64],
            clas_docs=5000, clas_epochs=2, clas_max_len=72 * 20, max_doc_tokens=None,
            pred_bs=[64], pred_docs=2000, pred_passes=1, repeat=3, job_timeout_s=180.0,
            extra_timeout_s=120.0, budget_s=450.0)  # fmt: skip
QUICK = dict(lm_bs=[4, 8], bptt=16, lm_warm=1, lm_batches=2, clas_bs=[8], clas_docs=24,
             clas_epochs=1, clas_max_len=144, max_doc_tokens=200, pred_bs=[8], pred_docs=24,
             pred_passes=1, repeat=1, job_timeout_s=300.0, extra_timeout_s=300.0, budget_s=1800.0)  # fmt: skip


def resolve(a: argparse.Namespace) -> argparse.Namespace:
    """The run's arguments with the full-size or --quick defaults filled in."""
    for k, v in (QUICK if a.quick else FULL).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.only = set(a.only.split(","))
    return a


def main(argv: list[str] | None = None) -> None:
    a = _parser().parse_args(argv)
    bundle(a) if a.cmd == "bundle" else run(resolve(a))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        _child(json.loads(sys.argv[2]))
    else:
        main()
