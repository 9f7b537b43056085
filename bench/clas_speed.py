"""Classifier throughput on the CPU: ours (bf16, fp32) vs fastai 2.8, training and prediction.

The same IMDb reviews for every contender (a seeded sample of ../shared/data/imdb: long texts,
where the LSTM's cost shows), tokenized once, up front, by our tokenizer and numericalized with
the wiki30k vocabulary (30,008 ids; unknown -> 0): no tokenization in any timed region, and
both libraries read the same ids. The same model: fastai's AWD-LSTM classifier (emb 400,
hidden 1152, 3 layers, drop_mult 0.5, BPT3C chunks of bptt 72, max_len 1440, concat pooling,
head 1200-50-2), from random weights (speed does not depend on them), bs 64, 2 threads.

- training docs/s: one unfrozen ``fit_one_cycle`` epoch over ``--train-docs`` reviews (sortish
  batches), timed from batch ``--warm`` to the last training batch (validation, one batch of
  reviews, falls outside). Ours: our ``TextClassifier`` (as ``build_classifier`` makes it),
  ``ClassifierLoader`` and the ``Learner`` with ``ClassifierTask`` (AR/TAR 2/1, no clipping,
  fastai's moms and wd, as ``fit_classifier`` sets them) at ``TrainConfig(amp="bf16")`` and
  ``amp="off"``. fastai: ``text_classifier_learner(..., pretrained=False)`` on ``SortedDL`` +
  ``Pad_Chunk`` (bench/gpu_speed.py's builder), fp32 (fastai has no CPU bf16 path).
- prediction docs/s: ``--pred-docs`` test reviews; ours ``ulmfit.predict.predict_logits(...,
  amp="bf16" / "off")``, fastai ``learn.get_preds`` on a sorted ``SortedDL``; one warm-up
  batch first, then one timed pass.

Each contender runs in its own subprocess, the contenders interleaved, ``--repeat`` runs,
medians reported; each child notes the dtypes its LSTM and Linear modules returned ("ran in").

    .venv/bin/python bench/clas_speed.py            # appends a section to bench/RESULTS.md
    .venv/bin/python bench/clas_speed.py --train-docs 32 --pred-docs 32 --bs 16 --warm 1 \\
        --max-words 60 --repeat 1 --no-write   # smoke run (~2 min)
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
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from benchlib import append_results, bench_module, cpu_description, utc_now, versions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FASTAI_PY = REPO / "bench" / ".venv-fastai" / "bin" / "python"
AMP = {"ours_bf16": "bf16", "ours": "off", "fastai": "fp32"}


def _sample(split: str, n: int, seed: int, max_tokens: int | None) -> tuple:
    """``n`` IMDb reviews of ``split`` (seeded), each cut to its first ``max_tokens`` (a smoke
    run's): wiki30k ids, offsets, labels (1 positive)."""
    import numpy as np
    import pandas as pd

    from ulmfit.models.pretrained import read_itos

    df = pd.read_csv(SHARED / "data" / "imdb" / f"{split}.csv.gz")
    df = df.sample(n=min(n, len(df)), random_state=seed).reset_index(drop=True)
    if max_tokens:  # whitespace words: a cut before tokenizing, near enough for a smoke run
        df["text"] = [" ".join(t.split()[:max_tokens]) for t in df["text"].astype(str)]
    itos = read_itos(SHARED / "models" / "wiki30k_fwd" / "itos.pkl")
    stoi = {t: i for i, t in enumerate(itos)}
    ids, offsets = bench_module("gpu_speed")._tokenize_ids(df["text"].astype(str).tolist(), stoi)
    return ids, offsets, (df["label"].astype(str) == "positive").to_numpy().astype(np.int64)


def write_data(path: Path, a) -> dict:
    """The reviews every contender reads, as one .npz (one batch of them to validate on);
    their token counts."""
    import numpy as np

    tr = _sample("train", a.train_docs + a.bs, a.seed, a.max_words)
    te = _sample("test", a.pred_docs, a.seed, a.max_words)
    train_docs = a.train_docs
    np.savez(
        path,
        **{
            f"{s}_{k}": v
            for s, d in (("train", tr), ("test", te))
            for k, v in zip(("ids", "offsets", "labels"), d)
        },
    )
    return {"train_tokens": int(tr[1][train_docs]), "test_tokens": int(te[1][-1])}


def _splits(path: Path, n_valid: int) -> dict:
    """train / valid / test as (ids int64, offsets, labels), the last ``n_valid`` training
    reviews for validation."""
    import numpy as np

    z = np.load(path)

    def take(split: str, lo: int, hi: int) -> tuple:
        off = z[f"{split}_offsets"]
        ids = z[f"{split}_ids"][off[lo] : off[hi]].astype(np.int64)
        return ids, off[lo : hi + 1] - off[lo], z[f"{split}_labels"][lo:hi]

    n_tr, n_te = len(z["train_offsets"]) - 1, len(z["test_offsets"]) - 1
    return {
        "train": take("train", 0, n_tr - n_valid),
        "valid": take("train", n_tr - n_valid, n_tr),
        "test": take("test", 0, n_te),
    }


# --- contenders (each runs in a subprocess: `python clas_speed.py _run SPEC_JSON`) ----------


class _Counted:
    """A training loader for the Learner noting when batch ``warm`` is asked for, when the
    batches run out (CPU: no read-ahead) and how many documents came in between."""

    def __init__(self, loader, warm: int):
        self.loader, self.warm, self.t0, self.t1, self.docs = loader, warm, None, None, 0

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for k, b in enumerate(self.loader):
            if k == self.warm:
                self.t0 = time.perf_counter()
            self.docs += len(b[0]) if k >= self.warm else 0
            yield b
        self.t1 = time.perf_counter()


def _our_model():
    import torch

    from ulmfit.config import ClassifierConfig
    from ulmfit.tasks.classifier import build_classifier, classifier_arch

    torch.manual_seed(0)
    cfg = ClassifierConfig()
    model = build_classifier(30008, 2, classifier_arch({}), cfg)
    bench_module("lm_train")._watch_dtypes(model)
    return model, cfg


def train_ours(spec: dict, data: dict) -> dict:
    """Our Learner on our classifier, one unfrozen epoch, ``TrainConfig.amp = spec["amp"]``."""
    import tempfile
    from dataclasses import replace

    import torch.nn.functional as F

    from ulmfit.config import engine_config
    from ulmfit.loaders import ClassifierLoader
    from ulmfit.train import ClassifierTask, Learner

    model, cfg = _our_model()
    (ids, off, y), (vids, voff, vy) = data["train"], data["valid"]
    train = _Counted(
        ClassifierLoader(ids, off, y, bs=spec["bs"], train=True, max_len=None), spec["warm"]
    )
    valid = ClassifierLoader(vids, voff, vy, bs=spec["bs"], train=False, max_len=None)
    run = replace(cfg, amp=spec["amp"], progress=False, verbose=False)
    tc = replace(engine_config(run, clip=None, device="cpu"), plot=False)  # as fit_classifier
    task = ClassifierTask(F.cross_entropy, alpha=cfg.alpha, beta=cfg.beta)
    with tempfile.TemporaryDirectory() as out:
        Learner(model, train, valid, task, out_dir=out, config=tc).fit_one_cycle(1, 1e-3)
    return {"docs_per_s": train.docs / (train.t1 - train.t0), "docs": train.docs}


def train_fastai(spec: dict, data: dict) -> dict:
    """fastai's classifier learner (bench/gpu_speed.py's builder), one unfrozen epoch."""
    import torch
    from fastai.callback.core import CancelFitException
    from fastai.text.all import Callback

    warm = spec["warm"]

    class Timer(Callback):
        order = 99

        def before_fit(self):
            self.k, self.docs, self.t0, self.t1 = 0, 0, None, None

        def before_batch(self):
            if self.training and self.k == warm:
                self.t0 = time.perf_counter()

        def after_batch(self):
            if self.training:
                self.docs += len(self.learn.yb[0]) if self.k >= warm else 0
                self.k += 1
                if self.k == self.n_iter:
                    self.t1 = time.perf_counter()
                    raise CancelFitException()

    torch.manual_seed(0)
    learn, train = bench_module("gpu_speed")._fastai_clas_learner(spec, data)
    bench_module("lm_train")._watch_dtypes(learn.model)
    timer = Timer()
    with learn.no_bar(), learn.no_logging():
        learn.unfreeze()
        learn.fit_one_cycle(1, 1e-3, moms=(0.8, 0.7, 0.8), cbs=[timer])
    return {
        "docs_per_s": timer.docs / (timer.t1 - timer.t0),
        "docs": timer.docs,
        "num_workers": train.num_workers,
    }


def _timed(fn, warm_fn, n_docs: int) -> dict:
    warm_fn()
    t0 = time.perf_counter()
    fn()
    return {"docs_per_s": n_docs / (time.perf_counter() - t0), "docs": n_docs}


class _Docs:
    """Documents as predict_logits reads them: ``ids``, ``offsets`` and a length."""

    def __init__(self, ids, offsets):
        self.ids, self.offsets = ids, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1


def predict_ours(spec: dict, data: dict) -> dict:
    """``predict_logits`` of our classifier at ``amp = spec["amp"]``."""
    from ulmfit.predict import predict_logits

    model, _ = _our_model()
    ids, off, _ = data["test"]
    n = min(spec["bs"], len(off) - 1)
    docs, first = _Docs(ids, off), _Docs(ids[: off[n]], off[: n + 1])
    kw = {"bs": spec["bs"], "device": "cpu", "amp": spec["amp"]}
    return _timed(
        lambda: predict_logits(model, docs, **kw),
        lambda: predict_logits(model, first, **kw),
        len(docs),
    )


def predict_fastai(spec: dict, data: dict) -> dict:
    """``learn.get_preds`` on a sorted ``SortedDL`` (bench/gpu_speed.py's learner)."""
    import torch
    from fastai.text.all import Pad_Chunk, SortedDL

    gs = bench_module("gpu_speed")
    torch.manual_seed(0)
    learn, _ = gs._fastai_clas_learner(spec, {**data, "train": data["valid"]})
    bench_module("lm_train")._watch_dtypes(learn.model)

    def loader(split: tuple):
        items, lens = gs._fastai_items(split)
        return SortedDL(
            items, res=lens, bs=spec["bs"], shuffle=False, before_batch=Pad_Chunk(seq_len=72)
        )

    ids, off, y = data["test"]
    n = min(spec["bs"], len(off) - 1)
    dl, first = loader(data["test"]), loader((ids[: off[n]], off[: n + 1], y[:n]))
    with learn.no_bar(), learn.no_logging():
        return _timed(
            lambda: learn.get_preds(dl=dl), lambda: learn.get_preds(dl=first), len(off) - 1
        )


RUNNERS = {
    "train": {"ours_bf16": train_ours, "ours": train_ours, "fastai": train_fastai},
    "predict": {"ours_bf16": predict_ours, "ours": predict_ours, "fastai": predict_fastai},
}


def _child(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    res = RUNNERS[spec["kind"]][spec["name"]](spec, _splits(Path(spec["data"]), spec["bs"]))
    seen = bench_module("lm_train").SEEN
    print(json.dumps({**res, "ran": "+".join(sorted(seen)) or "?", "torch": torch.__version__}))


def _run_one(a, kind: str, name: str, data: Path) -> dict:
    py = a.fastai_python if name == "fastai" else sys.executable
    spec = {
        "kind": kind,
        "name": name,
        "data": str(data),
        "bs": a.bs,
        "warm": a.warm,
        "threads": a.threads,
        "amp": AMP[name],
        "max_len": 72 * 20,
    }
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(a.threads)}
    out = subprocess.run(
        [py, __file__, "_run", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if out.returncode != 0:
        raise SystemExit(f"{kind} {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure(a, data: Path) -> dict[tuple[str, str], list[dict]]:
    """Every (kind, contender) ``a.repeat`` times, interleaved."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for rep in range(a.repeat):
        for kind in ("train", "predict"):
            for name in a.contenders.split(","):
                res = _run_one(a, kind, name, data)
                runs.setdefault((kind, name), []).append(res)
                print(
                    f"run {rep + 1} {kind:7s} {name:9s} {res['docs_per_s']:8.2f} docs/s "
                    f"({res['docs']} docs, ran {res['ran']})",
                    file=sys.stderr,
                )
    return runs


def _table(runs: dict) -> list[str]:
    med = {k: statistics.median(r["docs_per_s"] for r in v) for k, v in runs.items()}

    def vs(kind: str, name: str, base: str) -> str:
        return f"{med[(kind, name)] / med[(kind, base)]:.2f}x" if (kind, base) in med else "–"

    out = [
        "| task | contender | amp asked | ran in | docs/s (median) | runs | vs fastai "
        "| vs ours fp32 |",
        "|---|---|---|---|--:|---|--:|--:|",
    ]
    for (kind, name), rs in runs.items():
        ran = ", ".join(sorted({r["ran"] for r in rs}))
        each = ", ".join(f"{r['docs_per_s']:,.2f}" for r in rs)
        out.append(
            f"| {kind} | {name} | {AMP[name]} | {ran} | {med[(kind, name)]:,.2f} | {each} "
            f"| {vs(kind, name, 'fastai')} | {vs(kind, name, 'ours')} |"
        )
    if ("predict", "ours_bf16") in med and ("predict", "ours") in med:
        r = med[("predict", "ours_bf16")] / med[("predict", "ours")]
        out += [
            "",
            f"Target (issue 14): prediction ours bf16 >= 1.5x ours fp32: {r:.2f}x, "
            f"{'met' if r >= 1.5 else 'not met'}.",
        ]
        if not all("bfloat16" in x["ran"] for x in runs[("predict", "ours_bf16")]):
            out[-1] += " (ours_bf16 did not run in bf16 here: no CPU autocast at this commit)"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-docs", type=int, default=1000, help="IMDb training reviews timed")
    p.add_argument("--pred-docs", type=int, default=1000, help="IMDb test reviews predicted")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--warm", type=int, default=2, help="untimed training batches first")
    p.add_argument("--repeat", type=int, default=3, help="runs per contender (median reported)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42, help="of the IMDb sample")
    p.add_argument(
        "--max-words", type=int, help="cut each review to its first N words (smoke runs)"
    )
    p.add_argument("--contenders", default="ours_bf16,ours,fastai")
    p.add_argument("--fastai-python", default=str(FASTAI_PY), help="python with fastai 2.8")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    a = p.parse_args()
    if a.train_docs < (a.warm + 1) * a.bs:
        p.error(f"--train-docs must be at least (--warm + 1) * --bs = {(a.warm + 1) * a.bs}")
    t0 = time.perf_counter()
    data = Path(os.environ.get("TMPDIR", "/tmp")) / f"ulmfit-clas-bench-{os.getpid()}.npz"
    try:
        tokens = write_data(data, a)
        runs = _measure(a, data)
    finally:
        data.unlink(missing_ok=True)
    section = "\n".join(
        [
            f"\n## Classifier training and prediction throughput, {a.threads} CPU threads "
            f"({utc_now()})\n",
            f"Machine: {cpu_description()}; {versions()}; fastai 2.8.12 in bench/.venv-fastai.",
            "Command: `" + " ".join([".venv/bin/python bench/clas_speed.py", *sys.argv[1:]]) + "`"
            f" ({time.perf_counter() - t0:,.0f} s).",
            f"Data: IMDb, {a.train_docs} training reviews ({tokens['train_tokens']:,} tokens; +{a.bs} "
            f"to validate, untimed) and {a.pred_docs} test reviews ({tokens['test_tokens']:,} tokens), "
            f"seed {a.seed}{f', cut to {a.max_words} words' if a.max_words else ''}, tokenized "
            "once by our tokenizer, wiki30k ids for both libraries. Model: "
            f"AWD-LSTM classifier 400/1152/3, drop_mult 0.5, bptt 72, max_len 1440, random weights; "
            f"bs {a.bs}. Training: one unfrozen epoch, timed after {a.warm} batches; prediction: one "
            f"pass after a warm-up batch. {a.repeat} runs, contenders interleaved, medians. "
            '"amp asked": ours\' TrainConfig.amp / predict_logits\' amp; "ran in": the dtypes the '
            "LSTM and Linear modules returned.\n",
            *_table(runs),
            "",
        ]
    )
    print(section)
    if not a.no_write:
        append_results(section[1:], a.results)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_run":
        _child(json.loads(sys.argv[2]))
    else:
        main()
