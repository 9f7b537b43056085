"""The main job in bf16 and in fp32 over several seeds: accuracy parity and wall time (CPU).

Runs `scripts/main.sh` (the README's main job: LM fine-tuning of wiki30k_fwd on TREC-6, the
classifier, the test set scored once) with `--amp bf16` and `--amp off` for each seed, the two
precisions of a seed one after the other so that they see the same machine. Each run gets its
own empty run folder and token cache, so each pays what a fresh clone pays (tokenizing
included; the virtual environment exists already). Appends one section to bench/RESULTS.md:
test error per seed and precision, the two means, LM held-out perplexity, wall times and their
ratio.

    .venv/bin/python bench/amp_parity.py                      # seeds 42 1 2, about 50 min
    .venv/bin/python bench/amp_parity.py --seeds 42 --no-write --dry-run   # smoke run
"""

from __future__ import annotations

import os
import sys

# bench/ holds tokenize.py (named by the issue), which would shadow the standard library's
# tokenize module: this folder goes to the end of the import path (benchlib is found there).
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE] + [_HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from benchlib import REPO, append_results, cpu_description, utc_now, versions  # noqa: E402

MAIN = REPO / "scripts" / "main.sh"


def _folders(root: Path, seed: int, amp: str) -> tuple[Path, Path, Path]:
    """The run folder, its token cache and the file recording its wall time."""
    name = f"{amp}_s{seed}"
    return root / name, root / f"cache_{name}", root / f"{name}.wall.json"


def run_main(root: Path, seed: int, amp: str, extra: list[str]) -> None:
    """One main job into ``root/AMP_sSEED`` with its own empty token cache; its wall time and
    the machine's load average before and after go to ``AMP_sSEED.wall.json``."""
    out, cache, wall_file = _folders(root, seed, amp)
    for d in (out, out.with_name(out.name + ".dry-run"), cache):
        shutil.rmtree(d, ignore_errors=True)
    wall_file.unlink(missing_ok=True)
    cmd = ["bash", str(MAIN), "--amp", amp, "--seed", str(seed), "--out", str(out), *extra]
    env = {**os.environ, "ULMFIT_CACHE": str(cache)}
    load0, t0 = os.getloadavg()[1], time.perf_counter()
    proc = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    record = {"wall": wall, "load": [load0, os.getloadavg()[1]], "out": res["out"]}
    wall_file.write_text(json.dumps(record), encoding="utf-8")


def read_run(root: Path, seed: int, amp: str) -> dict | None:
    """A finished run's figures, read from its folder (``None`` if it has not finished):
    test and validation metrics, LM perplexities, the precision each stage recorded."""
    _, _, wall_file = _folders(root, seed, amp)
    if not wall_file.is_file():
        return None
    rec = json.loads(wall_file.read_text(encoding="utf-8"))
    out = Path(rec["out"])  # a dry run writes RUN.dry-run
    clas = json.loads((out / "report" / "metrics.json").read_text(encoding="utf-8"))
    lm = json.loads((out / "lm" / "report.json").read_text(encoding="utf-8"))
    test = json.loads((out / "report" / "test.json").read_text(encoding="utf-8"))
    cmd = ["bash", "scripts/main.sh", "--amp", amp, "--seed", str(seed), "--out", str(out)]
    return {
        "seed": seed,
        "amp": amp,
        "cmd": "ULMFIT_CACHE=... " + shlex.join(cmd),
        "wall": rec["wall"],
        "load": rec.get("load"),
        "test": test,
        "valid": clas["valid_metrics"],
        "lm": lm,
        "precision": clas["precision"]["precision"],
        "lm_precision": lm["precision"]["precision"],
        "lm_seconds": lm["seconds"],
        "clas_seconds": clas["seconds"],
    }


def _err(m: dict) -> float:
    return 100 * (1 - m["accuracy"])


def table(runs: list[dict]) -> list[str]:
    lines = [
        "| seed | --amp | ran in (LM / classifier) | test error | validation error | "
        "LM held-out perplexity before -> after | LM stage | classifier stage | wall | "
        "load (5-min average, start/end) |",
        "|--:|---|---|--:|--:|---|--:|--:|--:|--:|",
    ]
    for r in runs:
        lm = r["lm"]
        load = "/".join(f"{x:.1f}" for x in r["load"]) if r.get("load") else "?"
        lines.append(
            f"| {r['seed']} | {r['amp']} | {r['lm_precision']} / {r['precision']} | "
            f"{_err(r['test']):.2f}% | {_err(r['valid']):.2f}% | "
            f"{lm['before']['perplexity']:.2f} -> {lm['after']['perplexity']:.2f} | "
            f"{r['lm_seconds'] / 60:.1f} min | {r['clas_seconds'] / 60:.1f} min | "
            f"{r['wall'] / 60:.1f} min | {load} |"
        )
    return lines


def _median_wall(runs: list[dict]) -> str:
    """The median wall time of the runs timed with their load recorded."""
    walls = [r["wall"] for r in runs if r.get("load")]
    return f"{statistics.median(walls) / 60:.1f} min" if walls else "not measured cleanly"


def summary(runs: list[dict], modes: list[str]) -> list[str]:
    """Means per precision, their gap, the perplexity gap and the wall-time ratios per seed."""
    by = {m: [r for r in runs if r["amp"] == m] for m in modes}
    lines = []
    for m in modes:
        if not by[m]:
            continue
        errs = [_err(r["test"]) for r in by[m]]
        ppl = [r["lm"]["after"]["perplexity"] for r in by[m]]
        spread = f" (min {min(errs):.2f}, max {max(errs):.2f})" if len(errs) > 1 else ""
        lines.append(
            f"- `--amp {m}`: mean test error **{statistics.mean(errs):.2f}%**{spread} over "
            f"{len(errs)} seed(s); mean LM held-out perplexity {statistics.mean(ppl):.2f}; "
            f"median wall {_median_wall(by[m])}."
        )
    both = sorted({r["seed"] for r in by.get("bf16", [])} & {r["seed"] for r in by.get("off", [])})
    if both:
        # the two precisions compared over the seeds both have
        pick = {m: [r for r in by[m] if r["seed"] in both] for m in ("bf16", "off")}
        gap = statistics.mean(_err(r["test"]) for r in pick["bf16"]) - statistics.mean(
            _err(r["test"]) for r in pick["off"]
        )
        ppl_b = statistics.mean(r["lm"]["after"]["perplexity"] for r in pick["bf16"])
        ppl_f = statistics.mean(r["lm"]["after"]["perplexity"] for r in pick["off"])
        # a wall time kept without its load (written by hand) is left out of the ratios
        timed = {m: {r["seed"]: r["wall"] for r in by[m] if r.get("load")} for m in ("bf16", "off")}
        seeds = [x for x in timed["bf16"] if x in timed["off"]]
        ratios = [timed["off"][x] / timed["bf16"][x] for x in seeds] or [float("nan")]
        lines += [
            f"- bf16 - fp32 mean test error over seeds {', '.join(map(str, both))}: "
            f"**{gap:+.2f} points** (goal: within 0.5): "
            f"**{'met' if abs(gap) <= 0.5 else 'not met'}**.",
            f"- LM held-out perplexity, bf16 vs fp32 means: {100 * (ppl_b / ppl_f - 1):+.2f}% "
            f"(goal: within 2%): **{'met' if abs(ppl_b / ppl_f - 1) <= 0.02 else 'not met'}**.",
            f"- Wall time fp32 / bf16, seeds {', '.join(map(str, seeds))}: "
            f"{', '.join(f'{x:.2f}x' for x in ratios)}; "
            f"median **{statistics.median(ratios):.2f}x** (goal: at least 1.3x): "
            f"**{'met' if statistics.median(ratios) >= 1.3 else 'not met'}**.",
        ]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    p.add_argument("--modes", nargs="+", default=["bf16", "off"], choices=["bf16", "off", "auto"])
    p.add_argument("--root", type=Path, default=REPO / "runs" / "amp_parity")
    p.add_argument("--dry-run", action="store_true", help="fit --dry-run: a smoke run")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep the finished runs already in --root (the section reports them too)",
    )
    p.add_argument("--no-write", action="store_true", help="print, do not append to RESULTS.md")
    a = p.parse_args()
    start = utc_now()
    extra = ["--dry-run"] if a.dry_run else []
    for seed in a.seeds:
        for mode in a.modes:
            if a.reuse and read_run(a.root, seed, mode) is not None:
                continue
            run_main(a.root, seed, mode, extra)
            r = read_run(a.root, seed, mode)
            print(
                f"seed {seed} --amp {mode}: test error {_err(r['test']):.2f}%, "
                f"{r['wall'] / 60:.1f} min",
                file=sys.stderr,
                flush=True,
            )
    runs = [r for seed in a.seeds for mode in a.modes if (r := read_run(a.root, seed, mode))]
    lines = [
        f"## The main job in bf16 and fp32 over seeds {', '.join(map(str, a.seeds))} "
        f"({start} – {utc_now()})",
        "",
        f"Machine: {cpu_description()}; {versions()}.",
        "Command: `.venv/bin/python bench/amp_parity.py"
        + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
        + "`, which runs, for each seed, one after the other (each with an empty run folder "
        "and token cache; with --reuse, runs finished earlier are read from their folders):",
        "",
        *[f"- `{r['cmd']}`" for r in runs[: len(a.modes)]],
        "",
        *table(runs),
        "",
        *summary(runs, a.modes),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not a.no_write:
        append_results(text)


if __name__ == "__main__":
    main()
