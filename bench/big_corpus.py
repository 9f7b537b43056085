"""Corpora larger than memory: peak memory of ``ulmfit prepare`` and of a few pretraining steps
on a generated corpus, which should stay flat as the corpus grows.

    python bench/big_corpus.py --gb 8 --workdir /big/disk      # the real check (slow)
    python bench/big_corpus.py --mb 2 --no-write               # a smoke run

The corpus is a ``.txt`` file, one document per line, of words drawn from a Zipf law over a
50k-word vocabulary (so the vocabulary cut and the unknown-token path are exercised). Memory
is the peak over time of the *anonymous* resident memory (RSS minus file-backed pages) of the
process and its children (the tokenizer workers), sampled every 50 ms: pages of a memory-mapped
corpus are file-backed and can be dropped by the kernel at any time, so they are not what runs
a machine out of memory. With ``--cgroup-gb`` (root, cgroup v1 memory controller) the
commands run inside a memory cgroup whose limit counts
every page the commands touch, page cache included, as the kernel enforces it: a corpus several
times that size then has to stream, or the kernel kills the command (reported as rc 137 and
the cgroup's fail count).

    sudo python bench/big_corpus.py --gb 8 --cgroup-gb 2      # a corpus 4x the memory it may use
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent))
from benchlib import REPO, ULMFIT, measure  # noqa: E402

# A few steps of pretraining on the whole (memory-mapped) corpus: the same setup code as
# ``ulmfit pretrain`` (vocabulary, training stream, loader, learner), cut to ``steps`` batches.
# In fp32: what grows with the corpus is the question. Under bf16 autocast the peaks of two
# runs of the same corpus differed by up to 22 MB (fp32: 2 MB), and test_big_corpus failed once
# in a full-suite run (the 16 MB corpus over 1.25 x the 4 MB one's peak + 32 MB).
_PRETRAIN_STEPS = """
import json, sys, tempfile
from pathlib import Path
from ulmfit.data.sources import SourceSpec
from ulmfit.loaders import FewBatches
from ulmfit.config import PretrainConfig
from ulmfit.tasks.lm_setup import lm_learner, pretrain_setup
corpus, valid, cache, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = PretrainConfig(emb_sz=16, n_hid=32, n_layers=2, bs=8, bptt=32, workers=1, amp="off",
                     cache_dir=Path(cache), verbose=False, progress=False)
s = pretrain_setup([SourceSpec(path=Path(corpus))], cfg, [SourceSpec(path=Path(valid))])
ids = s.train_loader.ids
with tempfile.TemporaryDirectory() as logs:
    learn = lm_learner(s.model, FewBatches(s.train_loader, steps), None, cfg, Path(logs))
    learn.fit_one_cycle(1, 1e-3)
print(json.dumps({"memmap": type(ids).__name__ == "memmap", "tokens": int(len(ids))}))
"""


def write_corpus(path: Path, n_bytes: int, seed: int = 0, vocab: int = 50_000) -> int:
    """A ``.txt`` corpus of about ``n_bytes``, written in blocks (flat memory); returns docs."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(vocab)])
    docs, written = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < n_bytes:
            n = 2000
            lens = rng.integers(10, 80, n)
            toks = words[np.minimum(rng.zipf(1.2, int(lens.sum())) - 1, vocab - 1)]
            cut = np.cumsum(lens)[:-1]
            block = "".join(" ".join(d) + " .\n" for d in np.split(toks, cut))
            f.write(block)
            written += len(block)
            docs += n
    return docs


CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


class MemoryCgroup:
    """A cgroup v1 memory group with a hard limit, made for one benchmark and removed after."""

    def __init__(self, limit_gb: float) -> None:
        if not (CGROUP_ROOT / "cgroup.procs").exists():
            raise SystemExit(f"--cgroup-gb needs the cgroup v1 memory controller at {CGROUP_ROOT}")
        self.path = CGROUP_ROOT / f"ulmfit-big-corpus-{os.getpid()}"
        self.path.mkdir()
        self.limit = int(limit_gb * 2**30)
        (self.path / "memory.limit_in_bytes").write_text(str(self.limit))

    def wrap(self, cmd: list[str]) -> list[str]:
        """``cmd`` entered into the group before it starts (its children inherit it)."""
        procs = self.path / "cgroup.procs"
        return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *cmd]

    def reset(self) -> None:
        (self.path / "memory.max_usage_in_bytes").write_text("0")
        (self.path / "memory.failcnt").write_text("0")

    def usage(self) -> dict:
        read = lambda name: int((self.path / name).read_text())  # noqa: E731
        return {
            "cgroup_limit_mb": round(self.limit / 2**20),
            "cgroup_max_usage_mb": round(read("memory.max_usage_in_bytes") / 2**20, 1),
            "cgroup_failcnt": read("memory.failcnt"),
        }

    def remove(self) -> None:
        (self.path / "memory.force_empty").write_text("0")
        self.path.rmdir()


def peak_memory(
    cmd: list[str],
    env: dict | None = None,
    cgroup: MemoryCgroup | None = None,
) -> dict:
    """Run ``cmd``; returns rc, seconds, peak anonymous RSS (MiB, process tree), stdout."""
    if cgroup is not None:
        cgroup.reset()
        cmd = cgroup.wrap(cmd)
    r = measure(cmd, cwd=REPO, env=env)
    return {
        "rc": r["rc"],
        "seconds": round(r["wall"], 2),
        "peak_anon_mb": round(r["peak_anon_mib"], 1),
        **(cgroup.usage() if cgroup is not None else {}),
        "stdout": r["stdout"],
        "stderr": r["stderr"][-2000:],
    }


def run(
    n_bytes: int,
    work: Path,
    steps: int = 20,
    cgroup: MemoryCgroup | None = None,
) -> dict:
    """Generate, prepare and pretrain a few steps in ``work``; the measurements."""
    corpus, valid, cache = work / "corpus.txt", work / "valid.txt", work / "cache"
    t0 = time.perf_counter()
    docs = write_corpus(corpus, n_bytes)
    write_corpus(valid, 50_000, seed=1)
    gen = time.perf_counter() - t0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ULMFIT_CACHE": str(cache)}
    prep = peak_memory(
        [str(ULMFIT), "prepare", str(corpus), "--cache-dir", str(cache), "--json"],
        env,
        cgroup,
    )
    res = {
        "corpus_mb": round(corpus.stat().st_size / 2**20, 1),
        "docs": docs,
        "generate_seconds": round(gen, 1),
        "prepare": {k: v for k, v in prep.items() if k not in ("stdout", "stderr")},
    }
    if prep["rc"] != 0:
        res["prepare"]["stderr"] = prep["stderr"]
        return res
    pre = peak_memory(
        [sys.executable, "-c", _PRETRAIN_STEPS, str(corpus), str(valid), str(cache), str(steps)],
        env,
        cgroup,
    )
    res["pretrain_steps"] = {k: v for k, v in pre.items() if k not in ("stdout", "stderr")}
    if pre["rc"] == 0:
        res["pretrain_steps"].update(json.loads(pre["stdout"].strip().splitlines()[-1]))
    else:
        res["pretrain_steps"]["stderr"] = pre["stderr"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--gb", type=float, help="corpus size in GB")
    size.add_argument("--mb", type=float, help="corpus size in MB (default 64)")
    ap.add_argument("--steps", type=int, default=20, help="pretraining steps")
    ap.add_argument(
        "--cgroup-gb", type=float, help="run inside a memory cgroup limited to this many GB"
    )
    ap.add_argument("--workdir", type=Path, help="where to generate (default: a temp folder)")
    ap.add_argument("--no-write", action="store_true", help="do not write bench/big_corpus.json")
    args = ap.parse_args()
    n_bytes = int((args.gb * 2**30) if args.gb else (args.mb or 64) * 2**20)
    cgroup = MemoryCgroup(args.cgroup_gb) if args.cgroup_gb else None
    try:
        with tempfile.TemporaryDirectory(dir=args.workdir, prefix="ulmfit-big-") as work:
            res = run(n_bytes, Path(work), args.steps, cgroup)
    finally:
        if cgroup is not None:
            cgroup.remove()
    print(json.dumps(res, indent=1))
    if not args.no_write:
        (REPO / "bench" / "big_corpus.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
