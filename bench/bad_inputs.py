"""Bad inputs, faults and hostile requests against ``ulmfit``, each expected to end in one
clean line (``ulmfit: error: ...``, exit 2; or a clean interruption, exit 130) within its time
limit, with no traceback and nothing on disk lost.

    .venv/bin/python bench/bad_inputs.py             # run every case, print a table
    .venv/bin/python bench/bad_inputs.py --results   # also append the table to bench/RESULTS.md
    .venv/bin/python bench/bad_inputs.py -k serve    # only the cases whose group or name has it

It builds a workspace in a temporary folder (small data files, a tiny language model, a
finished ``fit`` run of it, damaged copies) and runs each case as a user would, as a
subprocess. Cases that need ../shared (IMDb for the worker faults) are skipped without it.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))
from benchlib import REPO, ULMFIT, append_results, cpu_description, git_commit, serve, sha256  # noqa: E402

SHARED = REPO.parent / "shared"
IMDB = SHARED / "data" / "imdb" / "train.csv.gz"
TREC = SHARED / "data" / "trec6" / "train.csv"


@dataclass
class Outcome:
    ok: bool
    why: str = ""


@dataclass
class Case:
    """One thing a user (or a fault) does. ``run(ws)`` returns an Outcome; the plain form is a
    command line whose answer must be one ``ulmfit: error:`` line (``expect="error"``), a
    success (``"ok"``), and in every case no traceback, with the files in ``keep`` unchanged."""

    group: str
    name: str
    argv: Callable[[Path], list] | None = None
    expect: str = "error"
    keep: Callable[[Path], list[Path]] = lambda ws: []
    needle: str = ""
    timeout: float = 120
    run: Callable[[Path], Outcome] | None = None


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
    if case.expect == "error":
        if proc.returncode != 2:
            return Outcome(False, f"exit {proc.returncode} (expected 2): {err.strip()[-120:]}")
        if len(lines) != 1 or not lines[0].startswith("ulmfit: error: "):
            return Outcome(False, f"{len(lines)} stderr lines: {err.strip()[:160]}")
        if case.needle and case.needle not in lines[0]:
            return Outcome(False, f"message lacks {case.needle!r}: {lines[0][:160]}")
        if len(lines[0]) > 600:
            return Outcome(False, f"a {len(lines[0]):,}-character line")
        return Outcome(True, lines[0][:160])
    if proc.returncode != 0:
        return Outcome(False, f"exit {proc.returncode}: {err.strip()[-160:]}")
    return Outcome(True, "ok")


def run_case(case: Case, ws: Path) -> Outcome:
    before = digest(case.keep(ws))
    backup = _backup(ws, case.keep(ws))
    if case.run is not None:
        outcome = case.run(ws)
    else:
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
    _csv(ws / "sorted.csv", sorted(rows[:200], key=lambda r: r[1]))
    _write(ws / "corpus.txt", "\n".join(t for t, _ in rows) + "\n")
    tiny = ["--emb-sz", "8", "--n-hid", "16", "--n-layers", "2", "--bptt", "8"]
    _ulmfit(ws, "pretrain", "corpus.txt", "--out", "lm", *tiny, "--epochs", "1",
            "--min-freq", "1", "--workers", "1", "--device", "cpu")  # fmt: skip
    _ulmfit(ws, "fit", "--train", "train.csv", "--test", "test.csv", "--pretrained", "lm",
            "--out", "run", "--lm-epochs", "1", "--epochs", "1", "--bs", "8", "--workers", "1",
            "--device", "cpu")  # fmt: skip
    _csv(ws / "own.csv", rows[:20])  # inputs that cases try to overwrite
    _write(ws / "existing.csv", "row,text,predicted\n1,kept,yes\n")
    _write(ws / "empty.csv", "")
    _write(ws / "binary.csv", bytes(range(256)) * 40)
    _write(ws / "latin1.csv", "text,label\ncaf\xe9,a\n".encode("latin-1"))
    _write(ws / "nolabel.csv", "text\nhello\nworld\n")
    _write(ws / "broken.jsonl", '{"text": "a", "label": "x"}\n{"text": \n')
    _write(ws / "wide.csv", "x" * 50_000_000 + "\n1\n")
    _csv(ws / "ids.csv", [(t, f"id-{i}") for i, (t, _) in enumerate(rows)])
    _csv(ws / "oneclass.csv", [(t, "A") for t, _ in rows[:50]])
    _csv(ws / "unseen.csv", [(rows[0][0], "NEVER-SEEN")])
    _write(ws / "pickle.pth", b"\x80\x04\x95garbage")
    for name, damage in _DAMAGE.items():
        dst = ws / f"damaged-{name}"
        shutil.copytree(ws / "run" / "model", dst)
        damage(dst)


def _truncate(d: Path) -> None:
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])


def _empty(d: Path) -> None:
    (d / "model.safetensors").write_bytes(b"")


def _pickled(d: Path) -> None:
    (d / "model.safetensors").write_bytes(b"\x80\x04\x95" + b"\x00" * 100)


def _bogus_header(d: Path) -> None:
    f = d / "model.safetensors"
    f.write_bytes((10**9).to_bytes(8, "little") + f.read_bytes()[8:])


def _edit_config(**changes) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        c = json.loads((d / "config.json").read_text())
        for k, v in changes.items():
            if k in ("n_hid", "emb_sz"):
                c["architecture"][k] = v
            else:
                c[k] = v
        (d / "config.json").write_text(json.dumps(c))

    return edit


_DAMAGE = {
    "truncated": _truncate,
    "empty": _empty,
    "pickle": _pickled,
    "header": _bogus_header,
    "classes-str": _edit_config(classes="ABBR DESC"),
    "n-out-huge": _edit_config(n_out=10**12),
    "n-hid-huge": _edit_config(n_hid=10**9),
    "no-config": lambda d: (d / "config.json").unlink(),
    "bad-json": lambda d: (d / "config.json").write_text("{nope"),
    "no-vocab": lambda d: (d / "vocab.json").unlink(),
}


# ---------------------------------------------------------------------------------------------
# Faults: processes killed and interrupted


def _busiest_child(pid: int, wait: float = 90) -> int | None:
    """The worker of ``pid`` that has tokenized most, once the workers are busy (on a loaded
    machine they may take many seconds to start)."""
    import psutil

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            kids = psutil.Process(pid).children(recursive=True)
            busy = [k for k in kids if k.cpu_times().user > 1.0]
            if len(busy) >= 2:
                return max(busy, key=lambda k: k.cpu_times().user).pid
        time.sleep(0.2)
    return None


def _prepare_argv(ws: Path, cache: str) -> list[str]:
    return [ULMFIT, "prepare", str(IMDB), "--workers", "2", "--cache-dir", str(ws / cache)]


def kill_a_worker(ws: Path) -> Outcome:
    """kill -9 the busiest tokenizer worker of a running prepare: it must end, promptly."""
    if not IMDB.exists():
        return Outcome(True, "skipped: no ../shared IMDb")
    proc = subprocess.Popen(_prepare_argv(ws, "cache-kill"), stderr=subprocess.PIPE, text=True)
    victim = _busiest_child(proc.pid)
    if victim is None:
        proc.kill()
        return Outcome(False, "no worker to kill")
    os.kill(victim, signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return Outcome(False, "hung after its worker died")
    lines = err.strip().splitlines()
    if "Traceback" in err:
        return Outcome(False, "traceback")
    if proc.returncode == 0 or (proc.returncode == 2 and len(lines) == 1):
        return Outcome(True, f"exit {proc.returncode}: {lines[-1][:120] if lines else ''}")
    return Outcome(False, f"exit {proc.returncode}, {len(lines)} lines")


def interrupt_prepare(ws: Path) -> Outcome:
    """Ctrl-C (SIGINT to the process group) during prepare --workers 2: exit 130, one line."""
    if not IMDB.exists():
        return Outcome(True, "skipped: no ../shared IMDb")
    proc = subprocess.Popen(
        _prepare_argv(ws, "cache-int"), stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    if _busiest_child(proc.pid) is None:
        proc.kill()
        return Outcome(False, "its workers never got busy")
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return Outcome(False, "hung after Ctrl-C")
    lines = err.strip().splitlines()
    ok = proc.returncode == 130 and len(lines) == 1 and "Traceback" not in err
    return Outcome(ok, f"exit {proc.returncode}, {len(lines)} stderr line(s)")


def kill_prepare_then_rerun(ws: Path) -> Outcome:
    """kill -9 a running prepare; the next prepare finishes and leaves no .tmp-* folder."""
    if not IMDB.exists():
        return Outcome(True, "skipped: no ../shared IMDb")
    proc = subprocess.Popen(
        _prepare_argv(ws, "cache-k9"), stderr=subprocess.DEVNULL, start_new_session=True
    )
    busy = _busiest_child(proc.pid) is not None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    again = subprocess.run(_prepare_argv(ws, "cache-k9"), capture_output=True, text=True)
    left = [p.name for p in (ws / "cache-k9").rglob(".tmp-*")]
    ok = busy and again.returncode == 0 and not left
    return Outcome(ok, f"re-run exit {again.returncode}; leftovers: {len(left)}")


def readme_snippet(ws: Path, via_stdin: bool) -> Outcome:
    """README's prepare([...]) snippet with 2 workers, no __main__ guard."""
    code = (
        "from ulmfit.data.sources import SourceSpec\n"
        "from ulmfit.config import PrepareConfig\nfrom ulmfit.prepare import prepare\n"
        f"data = prepare([SourceSpec({str(ws / 'train.csv')!r}, label_cols=['label'])], "
        f"PrepareConfig(workers=2, chunk_docs=20, cache_dir={str(ws / 'cache-snippet')!r}))\n"
        "print(len(data))\n"
    )
    script = _write(ws / "snippet.py", code)
    argv = [sys.executable, "-"] if via_stdin else [sys.executable, str(script)]
    try:
        proc = subprocess.run(
            argv, input=code if via_stdin else None, capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return Outcome(False, "hung")
    ok = proc.returncode == 0 and proc.stdout.strip() == "200" and "Traceback" not in proc.stderr
    return Outcome(ok, f"exit {proc.returncode}, printed {proc.stdout.strip()[:20]!r}")


def broken_pipe(ws: Path) -> Outcome:
    proc = subprocess.Popen(
        [ULMFIT, "predict", "run", "train.csv", "--json", "--device", "cpu"],
        cwd=ws,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(ws),
    )
    proc.stdout.read(1)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    return Outcome(b"Traceback" not in err, f"exit {proc.returncode}")


# ---------------------------------------------------------------------------------------------
# The server


def http_case(method: str, path: str, body: bytes, headers: dict, want: range) -> Callable:
    def run(ws: Path) -> Outcome:
        port = ws.joinpath(".port").read_text()
        conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            return Outcome(False, f"{type(e).__name__}: {e}")
        try:
            json_body = json.loads(data)
        except ValueError:
            json_body = None
        ok = resp.status in want and isinstance(json_body, dict) and "error" in json_body
        return Outcome(ok, f"{resp.status} {data[:100]!r}")

    return run


def slow_client(ws: Path) -> Outcome:
    """One byte a second: the server must drop the connection within a bounded time."""
    port = int(ws.joinpath(".port").read_text())
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        )
        s.sendall(b"Content-Length: 1000\r\n\r\n")
        s.settimeout(1.0)
        while time.monotonic() - start < 90:
            try:
                s.sendall(b" ")
                if s.recv(4096) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
            else:
                break  # the server answered (a 408 or an error) and will close
        held = time.monotonic() - start
    return Outcome(held < 90, f"connection held {held:.0f} s")


def serve_cases() -> list[Case]:
    j = {"Content-Type": "application/json"}
    deep = b'{"texts": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    return [
        Case("server", "JSON nested 50,000 deep", run=http_case("POST", "/predict", deep, j, range(400, 500))),
        Case("server", "lone surrogate in a text", run=http_case("POST", "/predict", b'{"texts": ["\\ud800"]}', j, range(400, 500))),
        Case("server", "text/plain body (cross-origin form)", run=http_case("POST", "/predict", b'{"texts": ["hi"]}', {"Content-Type": "text/plain"}, range(400, 500))),
        Case("server", "foreign Host header", run=http_case("GET", "/health", b"", {"Host": "evil.example.com"}, range(400, 500))),
        Case("server", "malformed JSON", run=http_case("POST", "/predict", b"{nope", j, range(400, 500))),
        Case("server", "texts not a list", run=http_case("POST", "/predict", b'{"texts": 3}', j, range(400, 500))),
        Case("server", "too many texts", run=http_case("POST", "/predict", json.dumps({"texts": ["a"] * 65}).encode(), j, range(400, 500))),
        Case("server", "text over max chars", run=http_case("POST", "/predict", json.dumps({"texts": ["a" * 20_001]}).encode(), j, range(400, 500))),
        Case("server", "explain of an unknown class", run=http_case("POST", "/explain", b'{"text": "hi", "target": "NOPE"}', j, range(400, 500))),
        Case("server", "client sending a byte a second", run=slow_client, timeout=120),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The catalogue


def cli_cases() -> list[Case]:
    fit = ["fit", "--train", "train.csv", "--pretrained", "lm", "--workers", "1", "--device", "cpu"]
    finished = lambda ws: [ws / "run"]  # noqa: E731
    c = [
        # inputs
        Case("input", "missing file", lambda ws: ["prepare", "nope.csv"], needle="nope.csv"),
        Case("input", "empty file", lambda ws: ["prepare", "empty.csv"]),
        Case("input", "binary file", lambda ws: ["prepare", "binary.csv"]),
        Case("input", "not UTF-8", lambda ws: ["prepare", "latin1.csv"], needle="--encoding"),
        Case("input", "missing column", lambda ws: ["prepare", "train.csv", "--text-col", "body"]),
        Case("input", "broken JSON line", lambda ws: ["prepare", "broken.jsonl"]),
        Case("input", "50 MB header line", lambda ws: ["prepare", "wide.csv"]),
        Case("input", "unknown format", lambda ws: ["prepare", "train.csv", "--format", "xml"]),
        Case("input", "folder of no texts", lambda ws: ["prepare", "lm"]),
        Case("input", "tokenize --out is its input", lambda ws: ["tokenize", "own.csv", "--out", "own.csv"], keep=lambda ws: [ws / "own.csv"]),
        Case("input", "no labels for fit", lambda ws: ["fit", "--train", "nolabel.csv", "--pretrained", "lm", "--out", "r1"]),
        Case("input", "one class only", lambda ws: ["fit", "--train", "oneclass.csv", "--pretrained", "lm", "--out", "r2"]),
        Case("input", "ID column as the label (fit)", lambda ws: ["fit", "--train", "ids.csv", "--pretrained", "lm", "--out", "r3"], needle="looks like an ID"),
        Case("input", "ID column as the label (baseline)", lambda ws: ["baseline", "--train", "ids.csv", "--test", "ids.csv"], needle="looks like an ID", timeout=60),
        Case("input", "test label unseen in training", lambda ws: ["evaluate", "run", "unseen.csv", "--device", "cpu"], needle="NEVER-SEEN"),
        # settings
        Case("settings", "--lm-epochs 0", lambda ws: [*fit, "--out", "s1", "--lm-epochs", "0"], needle="--lm-epochs"),
        Case("settings", "--drop-mult -1", lambda ws: [*fit, "--out", "s2", "--drop-mult", "-1"], needle="--drop-mult"),
        Case("settings", "--drop-mult 5", lambda ws: [*fit, "--out", "s3", "--drop-mult", "5"], needle="drop_mult"),
        Case("settings", "--valid-pct 0", lambda ws: [*fit, "--out", "s4", "--valid-pct", "0"], needle="--valid-pct"),
        Case("settings", "--wd -1 (finetune-lm)", lambda ws: ["finetune-lm", "train.csv", "--pretrained", "lm", "--out", "s5", "--wd", "-1"], needle="--wd"),
        Case("settings", "--bs 0 (predict)", lambda ws: ["predict", "run", "--text", "hi", "--bs", "0"], needle="--bs"),
        Case("settings", "--workers many", lambda ws: ["prepare", "train.csv", "--workers", "many"], needle="--workers"),
        Case("settings", "--max-vocab 3", lambda ws: ["prepare", "train.csv", "--max-vocab", "3"], needle="--max-vocab"),
        Case("settings", "--lr nan", lambda ws: [*fit, "--out", "s6", "--lr", "nan"], needle="--lr"),
        Case("settings", "--port 99999", lambda ws: ["serve", "run", "--port", "99999"], needle="port"),
        Case("settings", "unknown option", lambda ws: ["fit", "--trian", "train.csv"]),
        # devices
        *[
            Case("device", f"--device {dev} ({cmd})", (lambda ws, cmd=cmd, dev=dev: _device_argv(cmd, dev)), needle="--device", keep=finished)
            for dev in ("cuda", "tpu")
            for cmd in ("predict", "evaluate", "explain", "serve", "finetune-lm", "fit", "lm-eval")
        ],
        # models
        *[
            Case("model", f"{name} model dir ({cmd})", (lambda ws, name=name, cmd=cmd: _model_argv(cmd, f"damaged-{name}")), keep=lambda ws, name=name: [ws / f"damaged-{name}"])
            for name in _DAMAGE
            for cmd in ("predict", "evaluate")
        ],
        Case("model", "pickled .pth as pretrained", lambda ws: ["lm-eval", "pickle.pth", "train.csv", "--vocab", "lm/vocab.json"]),
        Case("model", "pretrained path missing", lambda ws: ["fit", "--train", "train.csv", "--pretrained", "nope", "--out", "m1"]),
        # outputs and finished work
        Case("output", "predict --out is its input", lambda ws: ["predict", "run", "own.csv", "--out", "own.csv"], keep=lambda ws: [ws / "own.csv"]),
        Case("output", "predict --out a folder", lambda ws: ["predict", "run", "--text", "hi", "--out", "lm"], keep=lambda ws: [ws / "lm"]),
        Case("output", "predict --out /", lambda ws: ["predict", "run", "--text", "hi", "--out", "/"]),
        Case("output", "predict --out missing parent", lambda ws: ["predict", "run", "--text", "hi", "--out", "no/such/dir/p.csv"]),
        Case("output", "explain --out a folder", lambda ws: ["explain", "run", "--text", "hi", "--out", "lm"], keep=lambda ws: [ws / "lm"]),
        Case("output", "predict --out an existing file", lambda ws: ["predict", "run", "--text", "hi", "--out", "existing.csv"], keep=lambda ws: [ws / "existing.csv"]),
        Case("output", "fit --dry-run into a finished run", lambda ws: [*fit, "--out", "run", "--dry-run"], expect="ok", keep=finished),
        Case("output", "fit with other settings into a finished run", lambda ws: [*fit, "--out", "run", "--lr", "1e-3", "--bs", "8"], keep=finished),
        Case("output", "fit --pretrained inside --out", lambda ws: ["fit", "--train", "train.csv", "--pretrained", "run/lm", "--out", "run"], keep=finished),
        Case("output", "--dry-run on class-sorted data", lambda ws: ["fit", "--train", "sorted.csv", "--pretrained", "lm", "--out", "dry", "--dry-run", "--workers", "1", "--device", "cpu"], expect="ok"),
        # use
        Case("use", "predict: every --text empty", lambda ws: ["predict", "run", "--text", "", "--device", "cpu"]),
        Case("use", "predict a folder that is no model", lambda ws: ["predict", "cache", "--text", "hi"]),
        Case("use", "explain an unknown class", lambda ws: ["explain", "run", "--text", "hi", "--target", "NOPE", "--device", "cpu"]),
        Case("use", "predict --json | head (closed stdout)", run=broken_pipe),
        # faults
        Case("fault", "kill -9 a tokenizer worker", run=kill_a_worker, timeout=150),
        Case("fault", "Ctrl-C prepare --workers 2", run=interrupt_prepare, timeout=150),
        Case("fault", "kill -9 prepare, then re-run", run=kill_prepare_then_rerun, timeout=300),
        Case("fault", "README snippet as a script, 2 workers", run=lambda ws: readme_snippet(ws, False)),
        Case("fault", "README snippet from stdin, 2 workers", run=lambda ws: readme_snippet(ws, True)),
    ]  # fmt: skip
    return c


def _device_argv(cmd: str, dev: str) -> list[str]:
    return {
        "predict": ["predict", "run", "--text", "hi"],
        "evaluate": ["evaluate", "run", "test.csv"],
        "explain": ["explain", "run", "--text", "hi"],
        "serve": ["serve", "run", "--port", "0"],
        "finetune-lm": ["finetune-lm", "train.csv", "--pretrained", "lm", "--out", "d1"],
        "fit": ["fit", "--train", "train.csv", "--pretrained", "lm", "--out", "d2"],
        "lm-eval": ["lm-eval", "lm", "train.csv"],
    }[cmd] + ["--device", dev]


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
    cases = [c for c in cli_cases() + serve_cases() if args.k in f"{c.group} {c.name}"]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.perf_counter()
    rows: list[tuple[Case, Outcome]] = []
    with tempfile.TemporaryDirectory(prefix="ulmfit-bad-") as tmp:
        ws = Path(tmp)
        build_workspace(ws)
        for case in [c for c in cases if c.group != "server"]:
            rows.append((case, _report(case, run_case(case, ws))))
        server_cases = [c for c in cases if c.group == "server"]
        if server_cases:
            options = ["--device", "cpu", "--log-level", "error"]
            with serve("run", *options, cwd=ws, env=_env(ws)) as (_, port, _):
                ws.joinpath(".port").write_text(str(port))
                for case in server_cases:
                    rows.append((case, _report(case, run_case(case, ws))))
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
        f"\n## Bad inputs, faults and hostile requests ({started})\n\n"
        f"Machine: {cpu_description()}; ulmfit commit {git_commit()}; Python {sys.version.split()[0]}.\n"
        f"Command: `.venv/bin/python bench/bad_inputs.py --results` ({seconds:.0f} s).\n"
        "Clean: exit 2 with one `ulmfit: error:` line (or the expected success / exit 130 / 4xx "
        "JSON body), no traceback, within the case's time limit, and the files the case names "
        "unchanged.\n\n"
        + table
        + "\n"
        + ("\nNot clean:\n" + "\n".join(failed) + "\n" if failed else "")
    )
    append_results(text)


if __name__ == "__main__":
    sys.exit(main())
