"""`ulmfit serve` under a bounded load on loopback, and the CPU throughput of `predict`.

Phases (``--phases``, default ``load,predict``): ``load``: for sentence-length (TREC-6 test)
and review-length (imdb_sample) texts, ``--requests`` POST /predict from ``--clients``
concurrent keep-alive clients (asyncio + httpx here): requests/s, texts/s, p50 / p99 latency,
errors, the server's memory (after warm-up, halfway, end, peak); ``predict``: docs/s of
`Predictor.predict` in this process; ``fairness``: short requests while one large /predict
(and one large /explain) runs: their latencies; ``soak``: a mixed load for
``--soak-seconds``, the server's memory every ``--soak-every`` seconds. Appends a section to
bench/RESULTS.md unless ``--no-write``. The load generator shares the machine with the server.

    .venv/bin/python bench/serve_load.py --model RUN            # defaults: < ~5 min on 2 cores
    .venv/bin/python bench/serve_load.py --model RUN --requests 200 --no-write   # smoke run
    .venv/bin/python bench/serve_load.py --model RUN --phases fairness,soak
"""

from __future__ import annotations

import os
import sys

# bench/ holds tokenize.py (named by the issue), which would shadow the standard library's
# tokenize module: this folder goes to the end of the import path (benchlib is found there).
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE] + [_HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from benchlib import TreeMemory, append_results, cpu_description, serve, utc_now, versions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SENTENCES = DATA / "trec6" / "test.csv"
REVIEWS = DATA / "imdb_sample" / "texts.csv"
CALL = 64  # texts per Predictor.predict call in the throughput test (one batch of bs 64)


def _texts(path: Path, col: str = "text") -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        texts = [r[col] for r in csv.DictReader(f) if r.get(col, "").strip()]
    if not texts:
        raise SystemExit(f"{path}: no texts in column {col!r}")
    return texts


async def _load(
    url: str, texts: list[str], requests: int, clients: int, per: int, max_s: float
) -> dict:
    """``requests`` POST /predict from ``clients`` concurrent clients; latencies and errors."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    t0 = time.perf_counter()

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < requests and not (max_s and time.perf_counter() - t0 > max_s):
            k = issued
            issued += 1
            batch = [texts[(k * per + j) % len(texts)] for j in range(per)]
            start = time.perf_counter()
            await _post(http, url, {"texts": batch}, errors, per)
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=300) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    wall = time.perf_counter() - t0
    return {
        "requests": len(latencies),
        "asked": requests,
        "wall_s": wall,
        "req_per_s": len(latencies) / wall,
        "texts_per_s": len(latencies) * per / wall,
        "p50_ms": 1000 * _pct(latencies, 0.50),
        "p99_ms": 1000 * _pct(latencies, 0.99),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


async def _post(http, url: str, body: dict, errors: list[str], n: int | None = None) -> None:
    """POST ``body``: an answer other than 200 (or with other than ``n`` predictions), or an
    exception, goes into ``errors``."""
    try:
        r = await http.post(url, json=body)
        if r.status_code != 200 or (n is not None and len(r.json()["predictions"]) != n):
            errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
    except Exception as e:  # noqa: BLE001 - counted, reported
        errors.append(f"{type(e).__name__}: {e}")


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def _behind(
    base: str, path: str, body: dict, shorts: list[str], clients: int, max_s: float
) -> dict:
    """One large request (``path``, ``body``) and, while it runs, one-sentence /predict
    requests from ``clients`` clients one after another: their latencies (ms) and the large
    request's time."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    async with httpx.AsyncClient(timeout=max_s + 60) as http:
        t0 = time.perf_counter()
        big = asyncio.ensure_future(http.post(base + path, json=body))
        await asyncio.sleep(0.5)  # let it reach the model first

        async def client(c: int) -> None:
            k = c
            while not big.done() and time.perf_counter() - t0 < max_s:
                start = time.perf_counter()
                r = await http.post(base + "/predict", json={"texts": [shorts[k % len(shorts)]]})
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                latencies.append(1000 * (time.perf_counter() - start))
                k += clients

        await asyncio.gather(*(client(c) for c in range(clients)))
        r = await big
        big_s = time.perf_counter() - t0
        if r.status_code != 200:
            errors.append(f"large request: HTTP {r.status_code}: {r.text[:200]}")
    return {
        "big_s": big_s,
        "shorts": len(latencies),
        "p50_ms": _pct(latencies, 0.5),
        "p99_ms": _pct(latencies, 0.99),
        "max_ms": max(latencies, default=float("nan")),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


def _long_text(reviews: list[str], chars: int, seed: int = 0) -> str:
    """``chars`` characters of reviews, cut at a space."""
    rng = random.Random(seed)
    text = ""
    while len(text) < chars:
        text += rng.choice(reviews) + " "
    return text[:chars].rsplit(" ", 1)[0]


def fairness(base: str, lengths: dict, a: argparse.Namespace) -> list[tuple[str, dict]]:
    sentences, reviews = lengths["sentence"], lengths["review"]
    bigs = [_long_text(reviews, a.big_chars, seed=k) for k in range(a.big_texts)]
    explained = _long_text(reviews, a.explain_chars)
    rows = []
    for name, path, body in (
        (f"predict {a.big_texts} x {a.big_chars:,} chars", "/predict", {"texts": bigs}),
        (f"explain 1 x {len(explained):,} chars", "/explain", {"text": explained}),
    ):
        res = asyncio.run(_behind(base, path, body, sentences, a.short_clients, a.max_seconds))
        rows.append((name, res))
        print(f"fairness {name}: {json.dumps(res)}", file=sys.stderr, flush=True)
    return rows


def _soak_request(rng: random.Random, lengths: dict) -> tuple[str, dict]:
    """One request of the mixed load: mostly short, some long, some explains, some words
    never seen before (each one grows the tokenizer)."""
    sentences, reviews = lengths["sentence"], lengths["review"]
    roll = rng.random()
    if roll < 0.45:
        return "/predict", {"texts": rng.sample(sentences, rng.randint(1, 8))}
    if roll < 0.70:
        return "/predict", {"texts": rng.sample(reviews, rng.randint(1, 4))}
    if roll < 0.85:
        return "/explain", {"text": rng.choice(reviews)[: rng.randint(20, 3_000)]}
    if roll < 0.95:
        junk = " ".join(
            "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 12)))
            for _ in range(rng.randint(5, 300))
        )
        return "/predict", {"texts": [junk]}
    return "/predict", {"texts": [_long_text(reviews, rng.randint(2_000, 20_000), rng.random())]}


async def _soak(base: str, lengths: dict, a: argparse.Namespace, mem: TreeMemory) -> dict:
    import httpx

    counts = {"done": 0}
    errors: list[str] = []
    marks: list[tuple[float, int, int]] = []  # (seconds, requests done, rss)
    t0 = time.perf_counter()

    async def client(c: int) -> None:
        rng = random.Random(c)
        async with httpx.AsyncClient(timeout=300) as http:
            while counts["done"] < a.soak_requests and time.perf_counter() - t0 < a.soak_seconds:
                path, body = _soak_request(rng, lengths)
                await _post(http, base + path, body, errors)
                counts["done"] += 1

    async def marker() -> None:
        while True:
            marks.append((time.perf_counter() - t0, counts["done"], mem.now()[0]))
            await asyncio.sleep(a.soak_every)

    mark = asyncio.ensure_future(marker())
    await asyncio.gather(*(client(c) for c in range(a.soak_clients)))
    mark.cancel()
    marks.append((time.perf_counter() - t0, counts["done"], mem.now()[0]))
    return {**counts, "errors": len(errors), "marks": marks, "first_errors": errors[:3],
            "peak": mem.peak}  # fmt: skip


def _fairness_lines(rows: list[tuple[str, dict]], a: argparse.Namespace) -> list[str]:
    lines = [
        "",
        f"Fairness: one large request, and meanwhile one-sentence POST /predict requests from "
        f"{a.short_clients} clients, each sending its next when answered:",
        "",
        "| large request | its time | short requests while it ran | p50 | p99 | max | errors |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['big_s']:.1f} s | {r['shorts']:,} | {r['p50_ms']:,.0f} ms | "
            f"{r['p99_ms']:,.0f} ms | {r['max_ms']:,.0f} ms | {r['errors']} |"
        )
    return lines


def _soak_lines(res: dict, a: argparse.Namespace) -> list[str]:
    lines = [
        "",
        f"Soak: a mixed load from {a.soak_clients} clients for {a.soak_seconds:g} s (at most "
        f"{a.soak_requests:,} requests): 45% 1-8 sentences, 25% 1-4 reviews, 15% explain of a "
        "review cut to 20-3,000 chars, 10% a text of 5-300 random words, 5% one text of "
        f"2,000-20,000 chars. {res['done']:,} requests, {res['errors']} errors; server "
        f"memory peak {_mb(res['peak'])}.",
        "",
        "| seconds | requests done | server memory (RSS) |",
        "|--:|--:|--:|",
    ]
    lines += [f"| {t:.0f} | {n:,} | {_mb(rss)} |" for t, n, rss in res["marks"]]
    return lines


def predict_throughput(model: str, texts: list[str], docs: int, device: str, max_s: float) -> dict:
    """docs/s of ``Predictor.predict`` (tokenization included) on ``docs`` texts, in calls of
    ``CALL`` texts until ``docs`` are done or ``max_s`` has passed."""
    from ulmfit.predict import Predictor

    p = Predictor.load(model, device=device)
    p.predict(texts[:16])  # load spaCy, warm the model
    done, t0 = 0, time.perf_counter()
    while done < docs and not (max_s and time.perf_counter() - t0 > max_s):
        n = min(CALL, docs - done)
        p.predict([texts[(done + j) % len(texts)] for j in range(n)], progress=False)
        done += n
    wall = time.perf_counter() - t0
    return {"docs": done, "seconds": wall, "docs_per_s": done / wall}


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def _model_desc(model: str) -> str:
    from ulmfit.predict import Predictor

    p = Predictor.load(model, device="cpu")
    arch = p.members[0][2]["architecture"]
    what = ", ".join(p.classes) if p.kind != "float" else ", ".join(p.targets)
    return (
        f"`{model}`: {p.kind} ({what}); {' + '.join(p.info()['members'])}; AWD-LSTM emb "
        f"{arch['emb_sz']}, hidden {arch['n_hid']}, {arch['n_layers']} layers, vocabulary "
        f"{p.members[0][2]['vocab_size']:,}"
    )


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, metavar="RUN_OR_MODEL_DIR")
    p.add_argument(
        "--phases",
        default="load,predict",
        help="comma-separated: load, predict, fairness, soak (default load,predict)",
    )
    p.add_argument("--requests", type=int, default=10_000, help="requests per text length")
    p.add_argument("--clients", type=int, default=50, help="concurrent clients")
    p.add_argument("--texts-per-request", type=int, default=1)
    p.add_argument(
        "--max-seconds",
        type=float,
        default=90,
        help="stop issuing requests of a length after this long (0: never; default 90); "
        "fairness: the longest a large request is waited for",
    )
    p.add_argument("--predict-docs", type=int, default=2_000, help="texts per length for predict")
    p.add_argument(
        "--predict-seconds", type=float, default=25, help="time cap per length (0: none)"
    )
    p.add_argument("--big-texts", type=int, default=64, help="fairness: texts of the large one")
    p.add_argument("--big-chars", type=int, default=20_000, help="fairness: chars per text")
    p.add_argument(
        "--explain-chars", type=int, default=10_000, help="fairness: chars of the explained text"
    )
    p.add_argument("--short-clients", type=int, default=4, help="fairness: short-request clients")
    p.add_argument("--soak-seconds", type=float, default=240, help="soak: duration")
    p.add_argument("--soak-requests", type=int, default=20_000, help="soak: at most this many")
    p.add_argument("--soak-clients", type=int, default=8, help="soak: concurrent clients")
    p.add_argument("--soak-every", type=float, default=20, help="soak: seconds between samples")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--server-threads", type=int, help="the server's torch threads (default: torch's)"
    )
    p.add_argument("--sentences", type=Path, default=SENTENCES, help="CSV with a text column")
    p.add_argument("--reviews", type=Path, default=REVIEWS, help="CSV with a text column")
    p.add_argument("--no-write", action="store_true", help="print, do not append to RESULTS.md")
    a = p.parse_args()
    a.phases = [x.strip() for x in a.phases.split(",") if x.strip()]
    unknown = set(a.phases) - {"load", "predict", "fairness", "soak"}
    if unknown:
        p.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    return a


def load_phases(url: str, pid: int, lengths: dict, a: argparse.Namespace) -> list:
    """The sentence and review load phases: one row each."""
    rows = []
    for name, texts in lengths.items():
        # warm-up: every batch shape the phase will see, then the memory baseline
        asyncio.run(_load(url, texts, a.clients, a.clients, a.texts_per_request, 0))
        mem = TreeMemory(pid, interval=0.2)
        before = mem.samples[0][1]
        res = asyncio.run(
            _load(url, texts, a.requests, a.clients, a.texts_per_request, a.max_seconds)
        )
        mem.stop()
        mem.sample()
        res.update(rss_start=before, rss_half=mem.at(0.5), rss_end=mem.samples[-1][1])
        res["rss_peak"] = mem.peak
        res["chars"] = sum(map(len, texts)) / len(texts)
        rows.append((name, res))
        print(f"{name}: {json.dumps(res)}", file=sys.stderr, flush=True)
    return rows


def _load_lines(rows: list, a: argparse.Namespace) -> list[str]:
    lines = [
        "",
        "| texts | requests | wall | requests/s | texts/s | p50 latency | p99 latency | errors "
        "| server memory: after warm-up → halfway → end (peak) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for name, r in rows:
        cut = f" (of {r['asked']:,}: time cap)" if r["requests"] < r["asked"] else ""
        lines.append(
            f"| {name} (mean {r['chars']:,.0f} chars) | {r['requests']:,}{cut} | "
            f"{r['wall_s']:.1f} s | {r['req_per_s']:,.1f} | {r['texts_per_s']:,.1f} | "
            f"{r['p50_ms']:,.0f} ms | {r['p99_ms']:,.0f} ms | {r['errors']} | "
            f"{_mb(r['rss_start'])} → {_mb(r['rss_half'])} → {_mb(r['rss_end'])} "
            f"({_mb(r['rss_peak'])}) |"
        )
    return lines


def _predict_lines(pred: dict, a: argparse.Namespace) -> list[str]:
    lines = [
        "",
        f"`Predictor.predict` in one process on {a.device} (tokenization included; bs 64, "
        f"calls of {CALL} texts):",
        "",
        "| texts | documents | seconds | documents/s |",
        "|---|--:|--:|--:|",
    ]
    for name, r in pred.items():
        lines.append(f"| {name} | {r['docs']:,} | {r['seconds']:.1f} | {r['docs_per_s']:,.1f} |")
    return lines


def main() -> None:
    a = _args()
    lengths = {"sentence": _texts(a.sentences), "review": _texts(a.reviews)}
    start = utc_now()
    model_desc = _model_desc(a.model)

    options = ["--log-level", "warning", "--device", a.device]
    options += ["--max-texts", str(max(64, a.texts_per_request))]
    options += ["--threads", str(a.server_threads)] if a.server_threads else []
    rows, fair, soak = [], [], None
    with serve(a.model, *options) as (proc, port, server_cmd):
        base = f"http://127.0.0.1:{port}"
        if "load" in a.phases:
            rows = load_phases(base + "/predict", proc.pid, lengths, a)
        if "fairness" in a.phases:
            fair = fairness(base, lengths, a)
        if "soak" in a.phases:
            mem = TreeMemory(proc.pid, interval=0.2)
            soak = asyncio.run(_soak(base, lengths, a, mem))
            mem.stop()
            print(f"soak: {json.dumps(soak)}", file=sys.stderr, flush=True)
    pred = {}
    for name, texts in lengths.items() if "predict" in a.phases else ():
        pred[name] = predict_throughput(a.model, texts, a.predict_docs, a.device, a.predict_seconds)
        print(f"predict {name}: {json.dumps(pred[name])}", file=sys.stderr, flush=True)

    argv = " ".join(shlex.quote(x) for x in sys.argv[1:])
    server = " ".join(shlex.quote(x) for x in [Path(server_cmd[0]).name, *server_cmd[1:]])
    lines = [
        f"## Serving under load ({start})",
        "",
        f"Machine: {cpu_description()}; {versions('fastapi', 'uvicorn', 'httpx')}.",
        f"Model: {model_desc}.",
        f"Command: `.venv/bin/python bench/serve_load.py {argv}`; server: `{server}` on "
        f"loopback; phases {', '.join(a.phases)}. Load: {a.clients} concurrent keep-alive "
        f"clients (asyncio + httpx, on the same machine), {a.texts_per_request} text(s) per "
        f"request, after a warm-up of {a.clients} requests per length.",
    ]
    lines += _load_lines(rows, a) if rows else []
    lines += _predict_lines(pred, a) if pred else []
    lines += _fairness_lines(fair, a) if fair else []
    lines += _soak_lines(soak, a) if soak else []
    errs = [e for _, r in rows + fair for e in r["first_errors"]]
    errs += soak["first_errors"] if soak else []
    if errs:
        lines += ["", "First errors: " + "; ".join(f"`{e}`" for e in errs)]
    text = "\n".join(lines) + "\n"
    print(text)
    if not a.no_write:
        append_results(text)


if __name__ == "__main__":
    main()
