"""The IMDb headline on one GPU: ``ulmfit fit`` from wiki30k_fwd on all 100,000 IMDb texts.

Issue 5 item 4 (and issue 3 item 5c): the library's own chain, timed (``fit``'s recipe and
defaults; only ``--lm-epochs`` is chosen here, to fit the budget); bench/RESULTS.md ("IMDb
headline on one GPU") has the procedure. ``bundle`` (here): ``ulmfit prepare FILE --export
DIR`` for each IMDb file and wiki30k's weights, packed into parts of at most 60 MiB (one
device call carries 64 MiB); ``stash PART`` (each device call): checks a part and copies it
to /tmp/imdb_parts; ``run`` (the last call): joins, checks and unpacks the parts, sizes the
LM epochs from the budget (a few steps of bench/lm_train.py's ``run_ours``), then runs
``ulmfit fit`` and ``ulmfit evaluate`` in this process (``ulmfit.cli.main``), timing each,
with the peak GPU memory, into ``--out``/results.json and results.md.

    .venv/bin/python bench/imdb_gpu.py bundle                       # .gpu/imdb/part-NN
    .venv/bin/python bench/imdb_gpu.py bundle --limit 300 --out-dir /tmp/imdb_small
    .venv/bin/python bench/imdb_gpu.py run --parts /tmp/imdb_small --out /tmp/imdb_run \\
        --device cpu --quick                                        # CPU dry run
    python3 bench/imdb_gpu.py stash .gpu/imdb/part-00               # device call 1 (, 2)
    python3 bench/imdb_gpu.py stash .gpu/imdb/part-02 && python3 bench/imdb_gpu.py run --out $OUT
"""

from __future__ import annotations

import os
import sys
import time

T_START = time.monotonic()  # the budget of ``run`` counts from here

# bench/ holds tokenize.py, which would shadow the standard library's tokenize module for
# anything run from this folder: move the folder to the end of the import path.
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE] + [_HERE]
_REPO = os.path.dirname(_HERE)
if _REPO not in sys.path:  # the GPU machine runs the carried tree, with no ulmfit installed
    sys.path.insert(0, _REPO)

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from benchlib import (  # noqa: E402
    bench_module,
    cli_json,
    dataset,
    export,
    git_commit,
    sha256,
    torch_environment,
    utc_now,
    write_json,
)

REPO = Path(_REPO)
SHARED = REPO.parent / "shared"
IMDB = SHARED / "data" / "imdb"
PRETRAINED = SHARED / "models" / "wiki30k_fwd"
SPLITS = ("train", "test", "unsup")
PART_BYTES = 60 * 2**20  # one carried folder (64 MiB per call, the tree included)
PART = "part.json"
STASH = Path("/tmp/imdb_parts")
BUNDLE = "bundle.json"


def _say(msg: str) -> None:
    print(f"[{time.monotonic() - T_START:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# bundle (here): dataset folders and the pretrained model, in parts
# ----------------------------------------------------------------------------------------


def _inputs(limit: int | None, folder: Path, seed: int) -> dict[str, Path]:
    """The IMDb files, or ``limit`` rows of each (a seeded sample in file order)."""
    if limit is None:
        return {s: IMDB / f"{s}.csv.gz" for s in SPLITS}
    import numpy as np
    import pandas as pd

    out = {}
    for k, split in enumerate(SPLITS):
        df = pd.read_csv(IMDB / f"{split}.csv.gz", dtype=str, keep_default_na=False)
        idx = np.random.default_rng([seed, k]).choice(len(df), min(limit, len(df)), False)
        out[split] = folder / f"{split}.csv"
        df.iloc[np.sort(idx)].to_csv(out[split], index=False)
    return out


def pack(src: Path, out: Path, part_bytes: int = PART_BYTES) -> list[Path]:
    """``src`` as one tar.gz cut into ``out/part-NN/chunk`` files of at most ``part_bytes``,
    each with a part.json naming its SHA-256 and that of the whole."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    whole = out / "bundle.tar.gz"
    with tarfile.open(whole, "w:gz", compresslevel=3) as tar:
        tar.add(src, arcname=".")
    n = -(-whole.stat().st_size // part_bytes)
    digest, parts = sha256(whole), []
    with open(whole, "rb") as f:
        for k in range(n):
            part = out / f"part-{k:02d}"
            part.mkdir()
            (part / "chunk").write_bytes(f.read(part_bytes))
            meta = {"index": k, "count": n, "sha256": sha256(part / "chunk"), "whole": digest}
            write_json(part / PART, meta)
            parts.append(part)
    whole.unlink()
    return parts


def _copy_pretrained(weights: Path, vocab: Path, folder: Path) -> list[str]:
    """The pretrained LM into ``folder``: a fastai .pth and its vocabulary, or one of our
    model directories. Returns fit's --pretrained (and --vocab) with paths inside the bundle."""
    if weights.is_dir():
        shutil.copytree(weights, folder, ignore=shutil.ignore_patterns("train"))
        return ["--pretrained", "model"]
    folder.mkdir()
    for f in (weights, vocab):
        shutil.copy(f, folder / f.name)
    return ["--pretrained", f"model/{weights.name}", "--vocab", f"model/{vocab.name}"]


def make_bundle(files: dict[str, Path], pretrained: Path, vocab: Path, out: Path, **meta) -> list:
    """Each of ``files`` (train, test, unsup) exported, the pretrained LM and bundle.json,
    packed into ``out``'s parts (returned)."""
    with tempfile.TemporaryDirectory(prefix="imdb_gpu-") as scratch:
        stage, summary = Path(scratch) / "bundle", {}
        for split, f in files.items():
            _say(f"bundle: ulmfit prepare {f} --export {split}")
            summary[split] = export([f], stage / split, split != "unsup", meta.get("raw", False))
        given = _copy_pretrained(pretrained, vocab, stage / "model")
        meta.update(created=utc_now(), commit=git_commit(), prepare=summary)
        meta["pretrained"] = {"given": given, "from": str(pretrained)}
        write_json(stage / BUNDLE, meta)
        return pack(stage, out)


def cmd_bundle(args) -> int:
    with tempfile.TemporaryDirectory(prefix="imdb_gpu-") as scratch:
        files = _inputs(args.limit, Path(scratch), args.seed)
        command = shlex.join(["python", *sys.argv])
        parts = make_bundle(files, args.pretrained, args.vocab, Path(args.out_dir),
                            command=command, limit=args.limit, raw=args.raw)  # fmt: skip
    sizes = {str(p): round(sum(f.stat().st_size for f in p.iterdir()) / 2**20, 2) for p in parts}
    print(json.dumps({"parts": sizes}))
    return 0


# ----------------------------------------------------------------------------------------
# stash (each device call) and unpack (run)
# ----------------------------------------------------------------------------------------


def _check_part(part: Path) -> dict:
    meta = json.loads((part / PART).read_text(encoding="utf-8"))
    if sha256(part / "chunk") != meta["sha256"]:
        raise SystemExit(f"{part}: the chunk is not the one part.json names (SHA-256)")
    return meta


def cmd_stash(args) -> int:
    """Copy a carried part (checked) to ``--to``, where the next call finds it."""
    part, dest = Path(args.part), Path(args.to)
    meta = _check_part(part)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(part / "chunk", dest / f"chunk-{meta['index']:02d}")
    shutil.copy(part / PART, dest / f"part-{meta['index']:02d}.json")
    have = len(list(dest.glob("chunk-*")))
    print(f"stash: {part} -> {dest} (part {meta['index'] + 1} of {meta['count']}; {have} here)")
    return 0


def unpack(parts: Path, target: Path) -> Path:
    """The bundle from its parts: ``parts`` holds stashed chunks, or the part folders
    ``bundle`` wrote; the joined bytes are checked before they are unpacked."""
    chunks = sorted(parts.glob("chunk-*")) or sorted(parts.glob("part-*/chunk"))
    metas = [json.loads(p.read_text()) for p in sorted(parts.glob("part-*.json"))] or [
        _check_part(p.parent) for p in chunks
    ]
    if not metas or len(chunks) != metas[0]["count"]:
        raise SystemExit(f"{parts}: {len(chunks)} part(s), the bundle has {metas[:1]}")
    joined = target.with_suffix(".tar.gz")
    with open(joined, "wb") as f:
        for c in chunks:
            f.write(c.read_bytes())
    if sha256(joined) != metas[0]["whole"]:
        raise SystemExit(f"{parts}: the joined parts are not the bundle (SHA-256)")
    shutil.rmtree(target, ignore_errors=True)
    with tarfile.open(joined) as tar:
        tar.extractall(target, filter="data")
    joined.unlink()
    return target


# ----------------------------------------------------------------------------------------
# run (the GPU machine): the library's commands, timed
# ----------------------------------------------------------------------------------------


def _lm_epochs(args, bundle: dict, res: dict) -> int:
    """Unfrozen LM epochs that leave ``--clf-reserve-s`` of the budget: one epoch's time from
    a few steps of the library's Learner at fit's LM shapes (after one frozen epoch)."""
    import numpy as np

    if args.lm_epochs is not None:
        return args.lm_epochs
    lm_train = bench_module("lm_train")
    lm_train.DEVICE = args.device
    prep = bundle["prepare"]
    vocab = min(60008, max(r.get("vocab_size", 60008) for r in prep.values()))
    tokens = sum(r["tokens"] for r in prep.values()) * 0.9  # fit holds out 10%
    warm, timed, bs, bptt = (1, 2, 4, 16) if args.quick else (3, 12, 64, 70)
    ids = np.random.default_rng(0).integers(0, vocab, bs * (bptt * (warm + timed) + 2))
    tps = lm_train.run_ours(ids, bs, bptt, warm, timed, vocab=vocab)
    epoch_s = 1.15 * tokens / tps  # + validation and checkpoints
    avail = args.budget_s - (time.monotonic() - T_START) - args.clf_reserve_s
    epochs = int(max(1, min(args.lm_max_epochs, avail // epoch_s - 1)))  # -1: the frozen one
    res["lm_probe"] = {"tokens_per_s": round(tps), "bs": bs, "bptt": bptt, "vocab": vocab}
    res["lm_probe"]["epoch_s"] = round(epoch_s, 1)
    res["lm_probe"].update(avail_s=round(avail, 1), lm_epochs=epochs)
    _say(f"probe: {tps:,.0f} tokens/s, ~{epoch_s:.0f} s an LM epoch: --lm-epochs {epochs}")
    return epochs


def _steps(args, data: Path, work: Path, epochs: int, pretrained: list[str]) -> list:
    fit = ["fit", "--train", dataset(data / "train"), "--out", str(work / "run")]
    for split in ("test", "unsup"):
        fit += ["--unlabelled", dataset(data / split)]
    fit += [a if a.startswith("--") else str(data / a) for a in pretrained]
    fit += ["--lm-epochs", str(epochs), "--epochs", str(args.clf_epochs), "--device", args.device]
    fit += ["--dry-run"] if args.quick else []
    run_dir = work / ("run.dry-run" if args.quick else "run")
    evaluate = ["evaluate", str(run_dir), dataset(data / "test"), "--bs", "128"]
    return [("fit", fit), ("evaluate", evaluate + ["--device", args.device])]


def cmd_run(args) -> int:
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="imdb_gpu-work-"))
    res: dict = {"task": "IMDb headline on one GPU (issue 5 item 4; issue 3 item 5c)"}
    res.update(date=utc_now(), command=shlex.join(["python3", *sys.argv]), commit=git_commit())
    res.update(budget_s=args.budget_s, environment=torch_environment(args.device), steps={})
    try:
        data = unpack(Path(args.parts), work / "data")
        bundle = json.loads((data / BUNDLE).read_text(encoding="utf-8"))
        res["bundle"] = {k: bundle.get(k) for k in ("created", "commit", "limit", "raw", "prepare")}
        res["unpack_s"] = round(time.monotonic() - T_START, 1)
        pretrained = bundle["pretrained"]["given"]
        for name, cmd in _steps(args, data, work, _lm_epochs(args, bundle, res), pretrained):
            _say(f"ulmfit {shlex.join(cmd)}")
            report, secs, peak = cli_json(cmd)
            report.pop("predictions", None), report.pop("rows", None)
            res["steps"][name] = {"command": "ulmfit " + shlex.join(cmd), "seconds": round(secs, 3)}
            res["steps"][name].update(peak_gpu_mib=peak, report=report)
            write_json(out / "results.json", res)
    except BaseException as e:
        res["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        res["total_s"] = round(time.monotonic() - T_START, 1)
        write_json(out / "results.json", res)
        (out / "results.md").write_text(results_md(res), encoding="utf-8")
        shutil.rmtree(work, ignore_errors=True)
    return 0


def results_md(r: dict) -> str:
    """A short human-readable summary of results.json."""
    env, steps = r.get("environment", {}), r.get("steps", {})
    lines = [
        f"## IMDb headline on one GPU ({r['date']})",
        "",
        f"Machine: {env.get('gpu') or env.get('cpu')}; torch {env.get('torch')}, CUDA "
        f"{env.get('cuda')}; ulmfit commit {r['commit']}. Command: `{r['command']}` (budget "
        f"{r['budget_s']:.0f} s; total {r.get('total_s')} s).",
    ]
    if r.get("error"):
        lines.append(f"**Unfinished run** ({r['error']}).")
    if "lm_probe" in r:
        p = r["lm_probe"]
        lines.append(f"LM probe: {p['tokens_per_s']:,} tokens/s at bs {p['bs']} x bptt {p['bptt']} -> "
                     f"--lm-epochs {p['lm_epochs']} (~{p['epoch_s']} s an epoch).")  # fmt: skip
    lines += ["", "| step | wall s | peak GPU MiB | command |", "|---|--:|--:|---|"]
    lines += [f"| {k} | {s['seconds']} | {s['peak_gpu_mib']} | `{s['command']}` |"
              for k, s in steps.items()]  # fmt: skip
    fit = steps.get("fit", {}).get("report", {})
    lm = fit.get("lm", {})
    for when in ("before", "after"):
        if lm.get(when):
            m = lm[when]
            lines.append(f"- LM held out, {when}: perplexity {m['perplexity']:.2f}, next-token "
                         f"accuracy {100 * m['accuracy']:.2f}% ({m['tokens']:,} tokens)")  # fmt: skip
    if fit:
        lines.append(f"- LM {lm.get('seconds')} s, classifier {fit['classifier']['seconds']} s; "
                     f"validation {json.dumps(fit['classifier']['valid'])}")  # fmt: skip
    t = steps.get("evaluate", {}).get("report")
    if t:
        docs_s = t["n"] / steps["evaluate"]["seconds"]
        lines.append(f"- **Test error {100 * t['error_rate']:.2f}%** (accuracy "
                     f"{100 * t['accuracy']:.2f}%, {t['n']:,} reviews; evaluate {docs_s:,.0f} "
                     "docs/s, loading included). ULMFiT paper: 5.3% forward only (WT103).")  # fmt: skip
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bundle", help="dataset folders + pretrained model, in parts (here)")
    b.add_argument("--out-dir", type=Path, default=REPO / ".gpu" / "imdb")
    b.add_argument("--limit", type=int, help="a seeded sample of N rows of each file")
    b.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    b.add_argument("--pretrained", type=Path, default=PRETRAINED / "lstm_fwd.pth",
                   help="a fastai .pth (with --vocab) or a model directory")  # fmt: skip
    b.add_argument("--vocab", type=Path, default=PRETRAINED / "itos.pkl")
    b.add_argument("--raw", action="store_true", help="copy the CSV files, no --export (CPU)")
    b.set_defaults(func=cmd_bundle)
    s = sub.add_parser("stash", help="check a carried part and copy it to /tmp (device)")
    s.add_argument("part", type=Path)
    s.add_argument("--to", type=Path, default=STASH)
    s.set_defaults(func=cmd_stash)
    r = sub.add_parser("run", help="ulmfit fit + evaluate on the bundle, timed (device)")
    r.add_argument("--parts", type=Path, default=STASH, help="stashed parts, or bundle's folder")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--budget-s", type=float, default=570.0, help="from the script's start")
    r.add_argument("--clf-reserve-s", type=float, default=240.0, help="classifier + evaluate")
    r.add_argument("--device", help="default: cuda if available")
    r.add_argument("--quick", action="store_true", help="fit --dry-run: a CPU rehearsal")
    r.add_argument("--lm-epochs", type=int, help="default: sized from the budget")
    r.add_argument("--lm-max-epochs", type=int, default=10)
    r.add_argument("--clf-epochs", type=int, default=2, help="fit's --epochs (its 2)")
    r.add_argument("--forbid-imports", default="", help="e.g. spacy (as on the GPU machine)")
    r.set_defaults(func=cmd_run)
    args = p.parse_args(argv)
    for name in filter(None, getattr(args, "forbid_imports", "").split(",")):
        sys.modules[name.strip()] = None  # type: ignore[assignment]  # import fails
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
