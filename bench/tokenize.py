"""Tokenization benchmark: ours (`ulmfit prepare`) vs fastai 2.8's `tokenize_texts` vs spaCy's bare
tokenizer, side by side in one run, on the 100,000 IMDb texts (train + test + unsup).

    bash bench/setup_fastai_env.sh                          # once: fastai in its own venv
    .venv/bin/python bench/tokenize.py                      # full run, appends to bench/RESULTS.md
    .venv/bin/python bench/tokenize.py --limit 2000 --no-write   # quick trial, nothing written
    .venv/bin/python bench/tokenize.py --repeat 3 --json    # medians of 3 runs, figures as JSON

Every contender is a subprocess, its process tree's memory sampled every 50 ms
(benchlib.measure). What "seconds" and "wall s" mean is printed under the table. Token
identity: `ulmfit tokenize` per file against fastai's dump, document by document.
"""
# ruff: noqa: E402
# This file has the name of the standard library's `tokenize` module (which `linecache`,
# `inspect` and so on import), so its own folder must not stay at the front of sys.path.

import os
import sys

_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE] + [_HERE]

import argparse
import contextlib
import csv
import gzip
import itertools
import json
import platform
import shlex
import shutil
import statistics
import tempfile
import time
from importlib import metadata
from pathlib import Path

from benchlib import ULMFIT, append_results, cpu_model, git_commit, measure, utc_now  # noqa: E402

REPO = Path(_HERE).parent
SPLITS = ("train", "test", "unsup")
FULL_DOCS = 100_000
DEFAULT_FASTAI_PY = REPO / "bench" / ".venv-fastai" / "bin" / "python"
DEFAULT_RESULTS = REPO / "bench" / "RESULTS.md"
TARGET_SPEEDUP = 4.0
TARGET_CACHED = 50.0
TARGET_RSS_MIB = 1024.0
SHOW_DIFFS = 5  # differing documents printed


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Contender processes (run as `python bench/tokenize.py _worker KIND ...` with the right Python)
# --------------------------------------------------------------------------------------------


def read_texts(files: list[str]) -> list[str]:
    """The `text` column of each CSV, in order, exactly as written (no NA conversion)."""
    import pandas as pd

    texts: list[str] = []
    for f in files:
        df = pd.read_csv(f, usecols=["text"], dtype=str, keep_default_na=False, na_filter=False)
        texts.extend(df["text"].tolist())
    return texts


def dump_jsonl(token_lists, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for toks in token_lists:
            f.write(json.dumps(list(toks), ensure_ascii=False))
            f.write("\n")


def worker_fastai(files: list[str], workers: int, dump: str | None) -> dict:
    import fastai
    import spacy
    import torch
    from fastai.text.all import tokenize_texts

    texts = read_texts(files)
    t0 = time.perf_counter()
    toks = tokenize_texts(texts, n_workers=workers)
    seconds = time.perf_counter() - t0
    n_tokens = sum(len(t) for t in toks)
    if dump:
        dump_jsonl(toks, dump)
    return {
        "docs": len(toks),
        "tokens": n_tokens,
        "seconds": seconds,
        "versions": {
            "fastai": fastai.__version__,
            "torch": torch.__version__,
            "spacy": spacy.__version__,
            "python": platform.python_version(),
        },
    }


_SPACY_TOK = None


def _spacy_init() -> None:
    global _SPACY_TOK
    import spacy

    _SPACY_TOK = spacy.blank("en").tokenizer


def _spacy_chunk(texts: list[str]) -> list[list[str]]:
    return [[t.text for t in doc] for doc in _SPACY_TOK.pipe(texts)]


def worker_spacy(files: list[str], procs: int) -> dict:
    import spacy

    texts = read_texts(files)
    t0 = time.perf_counter()
    if procs <= 1:
        _spacy_init()
        toks = _spacy_chunk(texts)
    else:
        import multiprocessing as mp

        chunks = [texts[i : i + 1000] for i in range(0, len(texts), 1000)]
        toks = []
        with mp.Pool(procs, initializer=_spacy_init) as pool:
            for part in pool.imap(_spacy_chunk, chunks):
                toks.extend(part)
    seconds = time.perf_counter() - t0
    return {
        "docs": len(toks),
        "tokens": sum(len(t) for t in toks),
        "seconds": seconds,
        "versions": {"spacy": spacy.__version__},
    }


def worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="tokenize.py _worker")
    p.add_argument("kind", choices=["fastai", "spacy"])
    p.add_argument("files", nargs="+")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dump")
    a = p.parse_args(argv)
    if a.kind == "fastai":
        res = worker_fastai(a.files, a.workers, a.dump)
    else:
        res = worker_spacy(a.files, a.workers)
    print(json.dumps(res), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------------


def run_measured(label: str, cmd: list[str], cwd: Path) -> dict:
    """Run `cmd` (benchlib.measure: wall seconds, peak tree RSS and PSS); BenchError if it fails."""
    log(f"[bench] {label}: {shlex.join(cmd)}")
    try:
        r = measure(cmd, pss=True, cwd=cwd)
    except OSError as e:
        raise BenchError(f"{label}: cannot start {cmd[0]}: {e}") from None
    if r["rc"] != 0:
        tail = "\n".join(r["stderr"].strip().splitlines()[-25:])
        raise BenchError(f"{label} failed (exit {r['rc']}): {shlex.join(cmd)}\n{tail}")
    peak, pss = r["peak_rss_mib"], r["peak_pss_mib"]
    log(f"[bench] {label}: {r['wall']:.2f} s wall, peak RSS {peak:.0f} MiB (PSS {pss:.0f} MiB)")
    lines = [ln for ln in r["stdout"].splitlines() if ln.startswith("{")]
    if not lines:
        raise BenchError(f"{label}: no JSON object in its output:\n{r['stdout'][-2000:]}")
    return {**r, "json": json.loads(lines[-1])}


def default_data() -> Path:
    env = os.environ.get("ULMFIT_DATA")
    if env and (Path(env) / "imdb").is_dir():
        return Path(env)
    return REPO.parent / "shared" / "data"


def input_files(data: Path, limit: int | None, work: Path) -> list[Path]:
    """The three IMDb files, or (with --limit) copies of their first `limit` rows."""
    src = [data / "imdb" / f"{s}.csv.gz" for s in SPLITS]
    missing = [str(p) for p in src if not p.is_file()]
    if missing:
        raise BenchError(f"IMDb data not found: {', '.join(missing)} (use --data)")
    if limit is None:
        return src
    out = []
    (work / "input").mkdir()
    for path in src:
        dst = work / "input" / path.name
        with (
            gzip.open(path, "rt", encoding="utf-8", newline="") as f,
            gzip.open(dst, "wt", encoding="utf-8", newline="", compresslevel=1) as g,
        ):
            reader, writer = csv.reader(f), csv.writer(g)  # RFC-4180, CRLF: as the originals
            writer.writerow(next(reader))
            writer.writerows(itertools.islice(reader, limit))
        out.append(dst)
    return out


def machine_info() -> dict:
    import psutil

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "os": f"{platform.system()} {platform.release()}",
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            info["cgroup_memory_limit_gib"] = round(int(limit) / 2**30, 1)
    return info


def pkg_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def median_row(name: str, runs: list[dict]) -> dict:
    return {
        "name": name,
        "docs": runs[0]["docs"],
        "tokens": runs[0]["tokens"],
        "seconds": statistics.median(r["seconds"] for r in runs),
        "wall_seconds": statistics.median(r["wall"] for r in runs),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "peak_pss_mib": max(r["peak_pss_mib"] for r in runs),
        "runs": [
            {k: r[k] for k in ("seconds", "wall", "peak_rss_mib", "peak_pss_mib", "docs", "tokens")}
            for r in runs
        ],
    }


def compare_tokens(ours: list[Path], theirs: Path, show: int) -> dict:
    """Compare our per-file jsonl dumps (concatenated in order) with fastai's, line by line."""
    import difflib

    def short(toks: list[str]) -> str:
        r = repr(toks)
        return r if len(r) <= 160 else r[:157] + "..."

    res = {"compared": 0, "differing": 0, "ours_tokens": 0, "examples": []}
    with open(theirs, encoding="utf-8") as tf:
        their_lines = iter(tf)
        for path in ours:
            split = path.stem.removeprefix("ours-")
            with open(path, encoding="utf-8") as of:
                for row, line in enumerate(of):
                    a = json.loads(line)
                    res["ours_tokens"] += len(a)
                    other = next(their_lines, None)
                    if other is None:
                        res["count_mismatch"] = "fastai has fewer documents than ours"
                        return res
                    res["compared"] += 1
                    if line == other:
                        continue
                    b = json.loads(other)
                    if a == b:
                        continue
                    res["differing"] += 1
                    if len(res["examples"]) < show:
                        sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
                        ops = [op for op in sm.get_opcodes() if op[0] != "equal"][:3]
                        parts = [
                            f"token {i1}: ours {short(a[i1:i2])} vs fastai {short(b[j1:j2])} "
                            f"after {short(a[max(0, i1 - 3) : i1])}"
                            for _, i1, i2, j1, j2 in ops
                        ]
                        res["examples"].append(f"{split} doc {row} (0-based): " + "; ".join(parts))
        extra = sum(1 for _ in their_lines)
    if extra:
        res["count_mismatch"] = f"fastai has {extra:,} more documents than ours"
    return res


def fmt_int(n) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def markdown(fig: dict) -> str:
    m, v = fig["machine"], fig["versions"]
    ram = f", {m['ram_gib']} GiB RAM" if "ram_gib" in m else ""
    if "cgroup_memory_limit_gib" in m:
        ram += f" (cgroup limit {m['cgroup_memory_limit_gib']} GiB)"
    kind = (
        "full run" if fig["limit"] is None else f"TRIAL, first {fig['limit']:,} rows of each file"
    )
    lines = [
        f"## Tokenization benchmark, {fig['date']} ({kind})",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable){ram}, {m['os']}",
        f"- Versions: Python {v['python']}; ulmfit {v['ulmfit']} at commit {v['ulmfit_commit']}; "
        f"spaCy {v['spacy']}, torch {v['torch']}, pandas {v['pandas']} (package env)"
        + (
            f"; fastai {v['fastai']['fastai']} with torch {v['fastai']['torch']}, "
            f"spaCy {v['fastai']['spacy']}, Python {v['fastai']['python']} (bench/.venv-fastai)"
            if v.get("fastai")
            else ""
        ),
        f"- Command: `{fig['command']}`",
        f"- Data: {fig['docs_in']} texts from {', '.join(fig['files'])}; "
        f"{fig['workers']} workers each; {fig['repeat']} repetition(s): median seconds, max peak RSS",
        "",
        "| contender | docs | tokens | seconds | wall s | docs/s | tokens/s | peak RSS MiB "
        "| peak PSS MiB | vs fastai |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in fig["results"]:
        vs = f"{r['vs_fastai']:.2f}x" if r.get("vs_fastai") is not None else "-"
        lines.append(
            f"| {r['name']} | {fmt_int(r['docs'])} | {fmt_int(r['tokens'])} | {r['seconds']:.2f} "
            f"| {r['wall_seconds']:.2f} | {r['docs_per_s']:,.0f} | {r['tokens_per_s']:,.0f} "
            f"| {r['peak_rss_mib']:,.0f} | {r['peak_pss_mib']:,.0f} | {vs} |"
        )
    lines += [
        "",
        "`seconds` is each contender's own time for the work (ours: the `seconds` that "
        "`ulmfit prepare --json` reports; fastai: the `tokenize_texts` call only, not reading the "
        "CSVs nor importing fastai; spaCy: the `tokenizer.pipe` loop); docs/s, tokens/s and "
        "`vs fastai` (docs/s over fastai's) use it. `wall s` is the whole subprocess: interpreter "
        "start, imports, reading, and for fastai also dumping its tokens to JSONL. Peak RSS is "
        "the summed RSS of the process tree (main process + workers, sampled every 50 ms), "
        "which counts pages that forked workers share with their parent once per process; "
        "peak PSS, sampled alongside, splits shared pages among the processes sharing them. Token counts are each tool's own: spaCy's bare "
        "tokenizer applies no fastai rules, so it has no special tokens.",
        "",
    ]
    if fig.get("ours_prepare_json"):
        j = fig["ours_prepare_json"]
        brief = {
            k: v for k, v in j.items() if isinstance(v, (int, float, str, bool)) and k != "cache"
        }
        lines += [f"Ours, first run, from `ulmfit prepare --json`: `{json.dumps(brief)}`", ""]
    ident = fig.get("identity")
    if ident:
        lines.append(
            f"**Token identity** (ours: `ulmfit tokenize` per file, {ident['wall_seconds']:.1f} s "
            f"wall, peak RSS {ident['peak_rss_mib']:,.0f} MiB, PSS {ident['peak_pss_mib']:,.0f} MiB; vs fastai `tokenize_texts`): "
            f"{ident['compared']:,} documents compared, **{ident['differing']:,} differ**"
            + (f"; {ident['count_mismatch']}" if ident.get("count_mismatch") else "")
            + (f"; {ident['note']}" if ident.get("note") else "")
            + "."
        )
        if ident["examples"]:
            lines += ["", "```", *ident["examples"], "```"]
        lines.append("")
    lines.append("**Targets**")
    lines.append("")
    for t in fig["targets"]:
        lines.append(f"- {t['target']}: **{t['verdict']}**. {t['detail']}.")
    lines.append("")
    return "\n".join(lines) + "\n"


def _verdict(ok) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def evaluate_targets(rows: dict, ident: dict | None) -> list[dict]:
    """The issue's three targets (speed vs fastai with identical tokens, the cached re-run,
    peak memory), each with its verdict and the figures behind it."""
    first, cached, fa = rows.get("ours"), rows.get("ours_cached"), rows.get("fastai")
    out = [
        {"target": f"at least {TARGET_SPEEDUP:g}x fastai", "verdict": "n/a", "detail": "not run"}
    ]
    if first and fa:
        sp = first["docs_per_s"] / fa["docs_per_s"]
        sp_wall = fa["wall_seconds"] / first["wall_seconds"] * first["docs"] / fa["docs"]
        same = ident is not None and ident["differing"] == 0 and not ident.get("count_mismatch")
        same = same and ident["compared"] == first["docs"]
        differ = (
            f"{ident['differing']:,} of {ident['compared']:,} documents differ"
            if ident
            else "tokens not compared"
        )
        out[0] = {"target": f"at least {TARGET_SPEEDUP:g}x fastai's throughput with identical tokens",
                  "verdict": _verdict(sp >= TARGET_SPEEDUP and same), "speedup": sp, "speedup_wall": sp_wall,
                  "detail": f"{sp:.2f}x fastai's docs/s by own seconds ({sp_wall:.2f}x by wall time), {differ}"}  # fmt: skip
    out.append({"target": "cached re-run", "verdict": "n/a", "detail": "not run"})
    if first and cached:
        r = first["seconds"] / cached["seconds"] if cached["seconds"] > 0 else float("inf")
        r_wall = first["wall_seconds"] / cached["wall_seconds"]
        ok, ok_wall = r >= TARGET_CACHED, r_wall >= TARGET_CACHED
        one = "met by own seconds only" if ok else "met by wall time only"
        out[1] = {"target": f"cached re-run at least {TARGET_CACHED:g}x faster than the first run",
                  "verdict": _verdict(ok and ok_wall) if ok == ok_wall else one, "ratio": r, "ratio_wall": r_wall,
                  "detail": f"{r:,.1f}x by own seconds ({first['seconds']:.2f} s vs {cached['seconds']:.3f} s); "
                  f"{r_wall:,.1f}x by wall time ({first['wall_seconds']:.2f} s vs "
                  f"{cached['wall_seconds']:.2f} s, interpreter start and imports included)"}  # fmt: skip
    ours_rows = [x for x in (first, cached) if x]
    if ours_rows:
        peak = max(x["peak_rss_mib"] for x in ours_rows)
        pss = max(x["peak_pss_mib"] for x in ours_rows)
        out.append({"target": f"peak RSS at most {TARGET_RSS_MIB:,.0f} MiB", "verdict": _verdict(peak <= TARGET_RSS_MIB),
                    "detail": f"summed RSS {peak:,.0f} MiB (PSS {pss:,.0f} MiB), the larger of ours' first run and cached re-run",
                    "peak_rss_mib": peak, "peak_pss_mib": pss})  # fmt: skip
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Tokenization benchmark: ulmfit prepare vs fastai tokenize_texts vs spaCy.",
    )
    p.add_argument("--data", type=Path, default=None, help="data folder holding imdb/*.csv.gz")
    p.add_argument("--limit", type=int, default=None, help="first N rows of each file (trials)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each contender (medians)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--contenders",
        default="ours,fastai,spacy",
        help="comma-separated subset of ours,fastai,spacy (default: all)",
    )
    p.add_argument(
        "--spacy-procs", default="1,2", help="process counts for the spaCy contender (default 1,2)"
    )
    p.add_argument("--fastai-python", type=Path, default=DEFAULT_FASTAI_PY)
    p.add_argument("--no-identity", action="store_true", help="skip the token comparison")
    p.add_argument(
        "--results", type=Path, default=DEFAULT_RESULTS, help="markdown file to append to"
    )
    p.add_argument(
        "--no-write",
        action="store_true",
        help="do not append to the results file (trials with --limit never append to the "
        "default bench/RESULTS.md)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    a = p.parse_args(argv)
    a.contenders = [c.strip() for c in a.contenders.split(",") if c.strip()]
    bad = set(a.contenders) - {"ours", "fastai", "spacy"}
    if bad:
        p.error(f"unknown contenders: {', '.join(sorted(bad))}")
    a.spacy_procs = [int(x) for x in a.spacy_procs.split(",") if x.strip()]
    if a.limit is not None and a.limit < 1:
        p.error("--limit must be positive")
    if a.repeat < 1:
        p.error("--repeat must be positive")
    return a


def run_ours(a, names: list[str], work: Path, rep: int, runs: dict) -> None:
    """`ulmfit prepare` into an empty cache, then the same command again (the cached re-run)."""
    cache = work / f"cache-{rep}"
    cache.mkdir()
    cmd = [ULMFIT, "prepare", *names, "--text-col", "text", "--workers", str(a.workers)]
    cmd += ["--cache-dir", str(cache), "--json"]
    for key, label in (("ours", "ours: first run"), ("ours_cached", "ours: cached")):
        r = run_measured(label, cmd, work)
        j = r["json"]
        missing = [k for k in ("docs", "tokens", "seconds", "cached") if k not in j]
        if missing:
            raise BenchError(f"{label}: JSON lacks {missing}: {j}")
        if bool(j["cached"]) != (key == "ours_cached"):
            raise BenchError(f"{label}: unexpected cached={j['cached']!r}: {j}")
        r.update(docs=j["docs"], tokens=j["tokens"], seconds=float(j["seconds"]))
        runs.setdefault(key, []).append(r)
    shutil.rmtree(cache, ignore_errors=True)


def run_worker(py: str, kind: str, names: list[str], workers: int, label: str, work: Path,
               dump: Path | None = None) -> dict:  # fmt: skip
    """One run of a contender this file holds (`tokenize.py _worker KIND`) under ``py``."""
    cmd = [py, __file__, "_worker", kind, *names, "--workers", str(workers)]
    r = run_measured(label, cmd + (["--dump", str(dump)] if dump else []), work)
    r.update(docs=r["json"]["docs"], tokens=r["json"]["tokens"], seconds=r["json"]["seconds"])
    return r


def identity(a, files: list[Path], work: Path, rows: dict) -> dict:
    """`ulmfit tokenize` of each file, its tokens compared with fastai's dump."""
    dumps = []
    wall = peak = peak_pss = 0.0
    for f in files:
        out = work / f"ours-{f.name.split('.')[0]}.jsonl"
        cmd = [ULMFIT, "tokenize", str(f), "--text-col", "text"]
        cmd += ["--out", str(out), "--workers", str(a.workers)]
        cmd += ["--cache-dir", str(work / "cache-tokenize"), "--json"]  # not the user's cache
        r = run_measured(f"ours: tokenize {f.name}", cmd, work)
        wall += r["wall"]
        peak = max(peak, r["peak_rss_mib"])
        peak_pss = max(peak_pss, r["peak_pss_mib"])
        dumps.append(out)
    ident = compare_tokens(dumps, work / "fastai.jsonl", SHOW_DIFFS)
    ident.update(wall_seconds=wall, peak_rss_mib=peak, peak_pss_mib=peak_pss)
    ours_tokens = ident["ours_tokens"]
    if "ours" in rows and rows["ours"]["tokens"] != ours_tokens:
        ident["note"] = (
            f"`ulmfit tokenize` gave {ours_tokens:,} tokens but `prepare` reports "
            f"{rows['ours']['tokens']:,}"
        )
    log(
        f"[bench] identity: {ident['compared']:,} docs compared, {ident['differing']:,} differ"
        + (f" ({ident['count_mismatch']})" if ident.get("count_mismatch") else "")
    )
    for ex in ident["examples"]:
        log(f"[bench]   {ex}")
    return ident


def summarize(a, runs: dict) -> dict:
    """One row per contender: medians over the repetitions, throughputs, ratios to fastai."""
    labels = {
        "ours": f"ours: `ulmfit prepare`, first run ({a.workers} workers)",
        "ours_cached": "ours: `ulmfit prepare`, cached re-run",
        "fastai": f"fastai 2.8 `tokenize_texts` ({a.workers} workers)",
    }
    for procs in a.spacy_procs:
        labels[f"spacy{procs}"] = f"spaCy bare tokenizer ({procs} process{'es' * (procs > 1)})"
    rows = {k: median_row(labels[k], v) for k, v in runs.items()}
    for r in rows.values():
        r["docs_per_s"] = r["docs"] / r["seconds"] if r["seconds"] > 0 else float("inf")
        r["tokens_per_s"] = r["tokens"] / r["seconds"] if r["seconds"] > 0 else float("inf")
    if "fastai" in rows:
        for r in rows.values():
            r["vs_fastai"] = r["docs_per_s"] / rows["fastai"]["docs_per_s"]
    return rows


def measure_all(a, data: Path, work: Path) -> tuple[dict, dict, dict | None, dict | None]:
    """Every contender ``a.repeat`` times: (runs, rows, identity, fastai's versions)."""
    files = input_files(data, a.limit, work)
    for f in files:  # warm the page cache so that no contender pays for the first read
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    names = [str(f) for f in files]
    check = not a.no_identity and {"ours", "fastai"} <= set(a.contenders)
    runs: dict[str, list[dict]] = {}
    fastai_versions = None
    for rep in range(a.repeat):
        log(f"[bench] repetition {rep + 1}/{a.repeat}")
        if "ours" in a.contenders:
            run_ours(a, names, work, rep, runs)
        if "fastai" in a.contenders:
            dump = work / "fastai.jsonl" if check and rep == 0 else None
            r = run_worker(str(a.fastai_python), "fastai", names, a.workers,
                           "fastai tokenize_texts", work, dump)  # fmt: skip
            fastai_versions = r["json"]["versions"]
            runs.setdefault("fastai", []).append(r)
        for procs in a.spacy_procs if "spacy" in a.contenders else ():
            label = f"spaCy bare tokenizer, {procs} proc"
            r = run_worker(sys.executable, "spacy", names, procs, label, work)
            runs.setdefault(f"spacy{procs}", []).append(r)
    rows = summarize(a, runs)
    ident = identity(a, files, work, rows) if check else None
    return runs, rows, ident, fastai_versions


def bench(a: argparse.Namespace) -> dict:
    data = a.data or default_data()
    if "fastai" in a.contenders and not a.fastai_python.exists():
        raise BenchError(
            f"{a.fastai_python} not found: run `bash bench/setup_fastai_env.sh` first "
            "(or leave fastai out with --contenders)"
        )
    with tempfile.TemporaryDirectory(prefix="ulmfit-bench-") as work:
        runs, rows, ident, fastai_versions = measure_all(a, data, Path(work))
    docs_in = {r["docs"] for r in rows.values()}
    if len(docs_in) > 1:
        log(f"[bench] WARNING: contenders saw different numbers of docs: {sorted(docs_in)}")
    if a.limit is None and docs_in != {FULL_DOCS}:
        log(f"[bench] WARNING: expected {FULL_DOCS:,} docs, got {sorted(docs_in)}")
    order = ["ours", "ours_cached", "fastai", *[f"spacy{p}" for p in a.spacy_procs]]
    return {
        "date": utc_now(),
        "machine": machine_info(),
        "versions": {
            "python": platform.python_version(),
            "ulmfit": pkg_version("ulmfit"),
            "ulmfit_commit": git_commit(),
            "spacy": pkg_version("spacy"),
            "torch": pkg_version("torch"),
            "pandas": pkg_version("pandas"),
            "fastai": fastai_versions,
        },
        "command": shlex.join([os.path.relpath(sys.executable, Path.cwd()), *sys.argv]),
        "limit": a.limit,
        "repeat": a.repeat,
        "workers": a.workers,
        "files": [os.path.relpath(data / "imdb" / f"{s}.csv.gz", REPO) for s in SPLITS],
        "docs_in": ", ".join(f"{d:,}" for d in sorted(docs_in)),
        "results": [rows[k] for k in order if k in rows],
        "ours_prepare_json": runs["ours"][0]["json"] if "ours" in runs else None,
        "identity": ident,
        "targets": evaluate_targets(rows, ident),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1:])
    a = parse_args(argv)
    a.fastai_python = a.fastai_python.absolute()
    try:
        fig = bench(a)
    except BenchError as e:
        log(f"[bench] error: {e}")
        return 1
    md = markdown(fig)
    log("")
    log(md)
    if a.limit is not None and a.results == DEFAULT_RESULTS and not a.no_write:
        log(f"[bench] trial (--limit): not appended to {a.results}; use --results FILE to keep it")
    elif not a.no_write:
        append_results(md, a.results)
        log(f"[bench] appended to {a.results}")
    if a.json:
        print(json.dumps(fig, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
