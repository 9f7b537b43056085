"""User mistakes against ``ulmfit`` that no test in tests/ covers, each expected to end in one
clean line (``ulmfit: error: ...``, exit 2) within its time limit, with no traceback and
nothing on disk lost. The cases the tests assert (faults, the server, outputs, most inputs,
settings, devices and damaged weights) moved out: bench/RESULTS.md, 2026-12-02, names each
case's test.

    .venv/bin/python bench/bad_inputs.py             # run every case, print a table
    .venv/bin/python bench/bad_inputs.py --results   # also append the table to bench/RESULTS.md
    .venv/bin/python bench/bad_inputs.py -k model    # only the cases whose group or name has it

It builds a workspace in a temporary folder (small data files, a tiny language model, a
finished ``fit`` run of it, damaged copies) and runs each case as a user would, as a
subprocess.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))
from benchlib import REPO, ULMFIT, append_results, cpu_description, git_commit, sha256  # noqa: E402

TREC = REPO.parent / "shared" / "data" / "trec6" / "train.csv"


@dataclass
class Outcome:
    ok: bool
    why: str = ""


@dataclass
class Case:
    """One thing a user does: a command line whose answer must be one ``ulmfit: error:`` line,
    with no traceback and the files in ``keep`` unchanged."""

    group: str
    name: str
    argv: Callable[[Path], list]
    keep: Callable[[Path], list[Path]] = lambda ws: []
    needle: str = ""
    timeout: float = 120


# ---------------------------------------------------------------------------------------------
# Checks


def digest(paths: list[Path]) -> dict[str, str]:
    out = {}
    for p in paths:
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file():
                    out[str(f)] = sha256(f)
        elif p.exists():
            out[str(p)] = sha256(p)
        else:
            out[str(p)] = "absent"
    return out


def judge(case: Case, proc: subprocess.CompletedProcess) -> Outcome:
    err = proc.stderr or ""
    if "Traceback" in err:
        return Outcome(False, "traceback: " + err.strip().splitlines()[-1][:120])
    lines = [x for x in err.strip("\n").splitlines() if x.strip()]
    if proc.returncode != 2:
        return Outcome(False, f"exit {proc.returncode} (expected 2): {err.strip()[-120:]}")
    if len(lines) != 1 or not lines[0].startswith("ulmfit: error: "):
        return Outcome(False, f"{len(lines)} stderr lines: {err.strip()[:160]}")
    if case.needle and case.needle not in lines[0]:
        return Outcome(False, f"message lacks {case.needle!r}: {lines[0][:160]}")
    if len(lines[0]) > 600:
        return Outcome(False, f"a {len(lines[0]):,}-character line")
    return Outcome(True, lines[0][:160])


def run_case(case: Case, ws: Path) -> Outcome:
    before = digest(case.keep(ws))
    backup = _backup(ws, case.keep(ws))
    argv = [str(a) for a in case.argv(ws)]
    try:
        proc = subprocess.run(
            [ULMFIT, *argv],
            cwd=ws,
            capture_output=True,
            text=True,
            timeout=case.timeout,
            env=_env(ws),
        )
    except subprocess.TimeoutExpired:
        return Outcome(False, f"no answer within {case.timeout:.0f} s")
    outcome = judge(case, proc)
    after = digest(case.keep(ws))
    if after != before:
        changed = [k for k in before if before[k] != after.get(k)]
        _restore(backup, case.keep(ws))  # the next cases get the workspace as it was
        return Outcome(False, f"changed or lost: {', '.join(Path(c).name for c in changed[:3])}")
    return outcome


def _backup(ws: Path, paths: list[Path]) -> Path:
    folder = Path(tempfile.mkdtemp(dir=ws, prefix=".backup-"))
    for i, p in enumerate(paths):
        if p.is_dir():
            shutil.copytree(p, folder / str(i), symlinks=True)
        elif p.exists():
            shutil.copy2(p, folder / str(i))
    return folder


def _restore(backup: Path, paths: list[Path]) -> None:
    for i, p in enumerate(paths):
        saved = backup / str(i)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        if saved.is_dir():
            shutil.copytree(saved, p, symlinks=True)
        elif saved.exists():
            shutil.copy2(saved, p)


def _env(ws: Path) -> dict:
    return {**os.environ, "ULMFIT_CACHE": str(ws / "cache"), "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------------------------
# The workspace


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def _trec_rows(n: int) -> list[tuple[str, str]]:
    import csv

    if TREC.exists():
        with open(TREC, newline="") as f:
            return [(r["text"], r["label"]) for r in csv.DictReader(f)][:n]
    words = ["who", "what", "where", "when", "how", "many", "city", "wrote", "is", "the"]
    labels = ["HUM", "DESC", "LOC", "NUM", "ENTY", "ABBR"]
    return [
        (" ".join(words[(i + k) % 10] for k in range(6)) + " ?", labels[i % 6]) for i in range(n)
    ]


def _ulmfit(ws: Path, *argv) -> None:
    proc = subprocess.run(
        [ULMFIT, *map(str, argv)], cwd=ws, capture_output=True, text=True, env=_env(ws)
    )
    if proc.returncode != 0:
        raise SystemExit(f"workspace: ulmfit {' '.join(map(str, argv))} failed:\n{proc.stderr}")


def build_workspace(ws: Path) -> None:
    rows = _trec_rows(300)
    _csv(ws / "train.csv", rows[:200])
    seen = {label for _, label in rows[:200]}
    _csv(ws / "test.csv", [r for r in rows[200:] if r[1] in seen])
    _write(ws / "corpus.txt", "\n".join(t for t, _ in rows) + "\n")
    tiny = ["--emb-sz", "8", "--n-hid", "16", "--n-layers", "2", "--bptt", "8"]
    _ulmfit(ws, "pretrain", "corpus.txt", "--out", "lm", *tiny, "--epochs", "1",
            "--min-freq", "1", "--workers", "1", "--device", "cpu")  # fmt: skip
    _ulmfit(ws, "fit", "--train", "train.csv", "--test", "test.csv", "--pretrained", "lm",
            "--out", "run", "--lm-epochs", "1", "--epochs", "1", "--bs", "8", "--workers", "1",
            "--device", "cpu")  # fmt: skip
    _write(ws / "binary.csv", bytes(range(256)) * 40)
    _write(ws / "nolabel.csv", "text\nhello\nworld\n")
    _csv(ws / "oneclass.csv", [(t, "A") for t, _ in rows[:50]])
    _csv(ws / "unseen.csv", [(rows[0][0], "NEVER-SEEN")])
    _write(ws / "pickle.pth", b"\x80\x04\x95garbage")
    for name, damage in _DAMAGE.items():
        dst = ws / f"damaged-{name}"
        shutil.copytree(ws / "run" / "model", dst)
        damage(dst)


_DAMAGE = {
    "no-config": lambda d: (d / "config.json").unlink(),
    "bad-json": lambda d: (d / "config.json").write_text("{nope"),
    "no-vocab": lambda d: (d / "vocab.json").unlink(),
}


# ---------------------------------------------------------------------------------------------
# The catalogue


def cli_cases() -> list[Case]:
    fit = ["fit", "--train", "train.csv", "--pretrained", "lm", "--workers", "1", "--device", "cpu"]
    return [
        # inputs
        Case("input", "binary file", lambda ws: ["prepare", "binary.csv"]),
        Case("input", "unknown format", lambda ws: ["prepare", "train.csv", "--format", "xml"]),
        Case("input", "folder of no texts", lambda ws: ["prepare", "lm"]),
        Case("input", "no labels for fit", lambda ws: ["fit", "--train", "nolabel.csv", "--pretrained", "lm", "--out", "r1"]),
        Case("input", "one class only", lambda ws: ["fit", "--train", "oneclass.csv", "--pretrained", "lm", "--out", "r2"]),
        Case("input", "test label unseen in training", lambda ws: ["evaluate", "run", "unseen.csv", "--device", "cpu"], needle="NEVER-SEEN"),
        # settings
        Case("settings", "--bs 0 (predict)", lambda ws: ["predict", "run", "--text", "hi", "--bs", "0"], needle="--bs"),
        Case("settings", "--lr nan", lambda ws: [*fit, "--out", "s6", "--lr", "nan"], needle="--lr"),
        Case("settings", "unknown option", lambda ws: ["fit", "--trian", "train.csv"]),
        # devices
        *[
            Case("device", f"--device {dev} (lm-eval)", (lambda ws, dev=dev: ["lm-eval", "lm", "train.csv", "--device", dev]), needle="--device", keep=lambda ws: [ws / "run"])
            for dev in ("cuda", "tpu")
        ],
        # models
        *[
            Case("model", f"{name} model dir ({cmd})", (lambda ws, name=name, cmd=cmd: _model_argv(cmd, f"damaged-{name}")), keep=lambda ws, name=name: [ws / f"damaged-{name}"])
            for name in _DAMAGE
            for cmd in ("predict", "evaluate")
            if (name, cmd) != ("bad-json", "predict")  # test_predict.py::test_predict_cli_errors
        ],
        Case("model", "pickled .pth as pretrained", lambda ws: ["lm-eval", "pickle.pth", "train.csv", "--vocab", "lm/vocab.json"]),
        Case("model", "pretrained path missing", lambda ws: ["fit", "--train", "train.csv", "--pretrained", "nope", "--out", "m1"]),
    ]  # fmt: skip


def _model_argv(cmd: str, model: str) -> list[str]:
    if cmd == "predict":
        return ["predict", model, "--text", "Who wrote Hamlet ?", "--device", "cpu"]
    return ["evaluate", model, "test.csv", "--device", "cpu"]


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", default="", help="only cases whose group or name contains this")
    ap.add_argument("--results", action="store_true", help="append the table to RESULTS.md")
    args = ap.parse_args()
    cases = [c for c in cli_cases() if args.k in f"{c.group} {c.name}"]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ulmfit-bad-") as tmp:
        ws = Path(tmp)
        build_workspace(ws)
        rows = [(case, _report(case, run_case(case, ws))) for case in cases]
    table = _table(rows)
    print(table)
    if args.results:
        _append_results(table, rows, started, time.perf_counter() - t0)
    return 0 if all(o.ok for _, o in rows) else 1


def _report(case: Case, outcome: Outcome) -> Outcome:
    mark = "ok  " if outcome.ok else "FAIL"
    print(f"{mark} [{case.group}] {case.name}: {outcome.why}", flush=True)
    return outcome


def _table(rows: list[tuple[Case, Outcome]]) -> str:
    groups: dict[str, list[bool]] = {}
    for case, o in rows:
        groups.setdefault(case.group, []).append(o.ok)
    lines = ["| group | cases | clean | not clean |", "|---|--:|--:|--:|"]
    for g, oks in groups.items():
        lines.append(f"| {g} | {len(oks)} | {sum(oks)} | {len(oks) - sum(oks)} |")
    total = [o.ok for _, o in rows]
    lines.append(
        f"| **all** | **{len(total)}** | **{sum(total)}** | **{len(total) - sum(total)}** |"
    )
    return "\n".join(lines)


def _append_results(table: str, rows, started: str, seconds: float) -> None:
    failed = [f"- [{c.group}] {c.name}: {o.why}" for c, o in rows if not o.ok]
    text = (
        f"\n## Bad inputs no test covers ({started})\n\n"
        f"Machine: {cpu_description()}; ulmfit commit {git_commit()}; Python {sys.version.split()[0]}.\n"
        f"Command: `.venv/bin/python bench/bad_inputs.py --results` ({seconds:.0f} s).\n"
        "Clean: exit 2 with one `ulmfit: error:` line, no traceback, within the case's time "
        "limit, and the files the case names unchanged.\n\n"
        + table
        + "\n"
        + ("\nNot clean:\n" + "\n".join(failed) + "\n" if failed else "")
    )
    append_results(text)


if __name__ == "__main__":
    sys.exit(main())
