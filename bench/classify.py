"""ULMFiT classifiers against NB-SVM and TF-IDF + LR on the shared datasets (CPU).

For one dataset: `ulmfit baseline` and `ulmfit fit` from wiki30k_fwd on the same train/test
files, each test set scored once, settings chosen on train/validation only. Appends a section
to bench/RESULTS.md with the exact commands, the wall time of each, and the metrics.

    .venv/bin/python bench/classify.py DATASET [--run-dir DIR] [--train-rows N] [--test-rows N]
        [--no-write] [-- FIT OPTIONS...]

Datasets: trec6 (official 5,452 / 500 split; validation = 10% of train, seeded), sst2
(official train / valid / test), mr (no official split: a fixed seeded split written next to
the run folder, see SPLITS), goemotions (official valid / test, all or --train-rows of train;
multi-label, macro-F1), imdb (--train-rows / --test-rows sampled from the official sets).
Everything after `--` is passed to `ulmfit fit` (e.g. `--lm-epochs 4 --keep-pretrained-vocab`).
"""

from __future__ import annotations

import os
import sys

# bench/ holds tokenize.py (named by the issue), which would shadow the standard library's
# tokenize module: this folder goes to the end of the import path (benchlib is found there).
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE] + [_HERE]

import argparse  # noqa: E402
import csv  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

from benchlib import REPO, append_results, cpu_description, utc_now, versions  # noqa: E402
from benchlib import run_ulmfit as run  # noqa: E402

SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
MODEL = SHARED / "models" / "wiki30k_fwd"

# Fixed splits of the datasets without a usable official one (seed 0, Python's random).
SPLITS = {
    "mr": "all 10,662 rows shuffled with random.Random(0); the last 1,066 (10%) are the test "
    "set, the other 9,596 the training set (validation: 10% of those, as fit's --valid-pct)",
    "imdb": "random.Random(0) samples {train} rows of the official train set, then {test} of "
    "the official test set (not balanced by design); no unlabelled reviews (CPU time)",
    "goemotions": "official valid and test; the training set is {train} rows sampled with "
    "random.Random(0) from the official 43,410 (CPU time)",
}


def _read(path: Path) -> tuple[list[str], list[dict]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


def _write(path: Path, fields: list[str], rows: list[dict]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return str(path)


def dataset(name: str, work: Path, train_rows: int = 0, test_rows: int = 0) -> dict:
    """Files and options of one dataset: train / valid / test / unlabelled, label options,
    the metric reported, and what the split is."""
    if name == "trec6":
        d = DATA / "trec6"
        return {"train": d / "train.csv", "test": d / "test.csv", "split": "official"}
    if name == "sst2":
        d = DATA / "sst2"
        return {
            "train": d / "train.csv",
            "valid": d / "valid.csv",
            "test": d / "test.csv",
            "split": "official (sentence level)",
        }
    if name == "mr":
        fields, rows = _read(DATA / "mr" / "train.csv")
        random.Random(0).shuffle(rows)
        n_test = len(rows) // 10
        return {
            "train": _write(work / "mr_train.csv", fields, rows[:-n_test]),
            "test": _write(work / "mr_test.csv", fields, rows[-n_test:]),
            "split": SPLITS["mr"],
        }
    if name == "goemotions":
        d = DATA / "goemotions"
        ds = {
            "train": d / "train.csv",
            "valid": d / "valid.csv",
            "test": d / "test.csv",
            "label": ["--label-col", "labels", "--label-delim", " "],
            "split": "official",
        }
        if train_rows:
            fields, rows = _read(d / "train.csv")
            rows = random.Random(0).sample(rows, train_rows)
            ds["train"] = _write(work / "goemotions_train.csv", fields, rows)
            ds["split"] = SPLITS["goemotions"].format(train=f"{train_rows:,}")
        return ds
    if name == "imdb":
        d = DATA / "imdb"
        fields, train = _read(d / "train.csv.gz")
        _, test = _read(d / "test.csv.gz")
        rng = random.Random(0)
        train, test = rng.sample(train, train_rows or 1000), rng.sample(test, test_rows or 1000)
        counts = {k: sum(r["label"] == k for r in test) for k in ("negative", "positive")}
        return {
            "train": _write(work / "imdb_train.csv", fields, train),
            "test": _write(work / "imdb_test.csv", fields, test),
            "split": SPLITS["imdb"].format(train=f"{len(train):,}", test=f"{len(test):,}")
            + f" (test: {counts['negative']} negative, {counts['positive']} positive)",
        }
    raise SystemExit(f"unknown dataset {name!r}")


def _headline(kind: str, m: dict) -> str:
    if kind == "multi":
        return f"macro F1 {m['macro_f1']:.4f}, micro F1 {m['micro_f1']:.4f}"
    return f"accuracy {100 * m['accuracy']:.2f}% (error {100 * (1 - m['accuracy']):.2f}%)"


def main() -> None:
    argv = sys.argv[1:]
    fit_extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, fit_extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=["trec6", "sst2", "mr", "goemotions", "imdb"])
    p.add_argument("--run-dir", type=Path, help="run folder (default runs/bench_DATASET)")
    p.add_argument("--no-write", action="store_true", help="print, do not append to RESULTS.md")
    p.add_argument("--train-rows", type=int, default=0, help="goemotions / imdb: a subset")
    p.add_argument("--test-rows", type=int, default=0, help="imdb: a subset")
    a = p.parse_args(argv)
    run_dir = a.run_dir or REPO / "runs" / f"bench_{a.dataset}"
    work = run_dir.with_name(run_dir.name + "_data")
    work.mkdir(parents=True, exist_ok=True)
    ds = dataset(a.dataset, work, a.train_rows, a.test_rows)
    label = ds.get("label", [])
    start = utc_now()

    base = run(["baseline", "--train", str(ds["train"]), "--test", str(ds["test"]), *label])

    args = ["fit", "--train", str(ds["train"]), "--test", str(ds["test"]), *label]
    if "valid" in ds:
        args += ["--valid", str(ds["valid"])]
    args += ["--pretrained", str(MODEL / "lstm_fwd.pth"), "--vocab", str(MODEL / "itos.pkl")]
    args += ["--out", str(run_dir), *fit_extra]
    res, fit_s, fit_cmd = run(args)
    kind = res["classifier"]["label_kind"]

    lines = [
        f"## ULMFiT vs baselines: {a.dataset} ({start})",
        "",
        f"Machine: {cpu_description()}; {versions()}.",
        f"Split: {ds['split']}. Command: `.venv/bin/python bench/classify.py {' '.join(argv)}"
        + (f" -- {' '.join(fit_extra)}" if fit_extra else "")
        + "`, which runs:",
        "",
    ]
    lines.append(f"1. `{base[2]} --json` ({base[1]:.0f} s)")
    lines += [f"2. `{fit_cmd} --json` ({fit_s / 60:.1f} min wall)", ""]
    lines += ["| model | test | validation |", "|---|---|---|"]
    valid = res["classifier"]["valid"]
    lines.append(f"| ULMFiT from wiki30k_fwd | {_headline(kind, res['test'])} | "
                 f"{_headline(kind, valid)} |")  # fmt: skip
    for key, name in (("nbsvm", "NB-SVM (uni+bigrams)"), ("tfidf_lr", "TF-IDF + LR")):
        if base[0].get(key):
            lines.append(f"| {name} | {_headline(kind, base[0][key])} | |")
    stages = []
    for key, what in (("lm", "LM fine-tuning"), ("classifier", "classifier")):
        st = res.get(key, {})
        if "seconds" in st:
            again = " (reused from an earlier run into the same folder)" if st.get("reused") else ""
            stages.append(f"{what} {st['seconds'] / 60:.1f} min{again}")
    lines += ["", "Stage times as recorded in the run's reports: " + "; ".join(stages) + "."]
    lm = res.get("lm", {})
    if lm.get("before") and lm.get("after"):
        b, f = lm["before"], lm["after"]
        lines += [
            "",
            f"LM fine-tuning (held-out 10% of the texts): perplexity {b['perplexity']:.1f} -> "
            f"{f['perplexity']:.1f}, next-token accuracy {100 * b['accuracy']:.2f}% -> "
            f"{100 * f['accuracy']:.2f}%; {lm['vocab_remap']['summary']}.",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps({"fit": res, "baseline": base[0]}), file=sys.stderr)
    if not a.no_write:
        append_results(text)


if __name__ == "__main__":
    main()
