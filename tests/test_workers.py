"""``prepare``'s worker processes under stress: a worker killed, Ctrl-C, the whole command killed,
and the README's Python snippet run as a plain script and from standard input.

Every run has a generous timeout (a regression fails, it does not hang CI) and asserts that it
ended well before it.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import DATA, REPO, need

ULMFIT = os.path.join(os.path.dirname(sys.executable), "ulmfit")
LIMIT = 120  # seconds: a run that is not over by then hangs


def corpus(folder: Path, lines: int = 300_000) -> Path:
    """A plain-text corpus that takes 2 workers several seconds to tokenize."""
    path = folder / "corpus.txt"
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    with open(path, "w") as f:
        for _ in range(lines):
            f.write(" ".join(rng.choices(words, k=20)) + " .\n")
    return path


def _ctrl_c_at_its_default() -> None:
    """As a terminal starts a command: SIGINT at its default action. A test run started in
    the background from a script (``cmd &``) ignores SIGINT, every child inherits that, and a
    Python started with SIGINT ignored keeps ignoring it (so Ctrl-C could not be tested)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_prepare(path: Path, cache: Path, *extra: str) -> subprocess.Popen:
    """``ulmfit prepare`` in a process group of its own (as a terminal starts a command)."""
    cmd = [ULMFIT, "prepare", str(path), "--workers", "2", "--cache-dir", str(cache), *extra]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_ctrl_c_at_its_default,
    )


def busy_workers(proc: subprocess.Popen, n: int = 2) -> list[psutil.Process]:
    """The tokenizer workers of ``proc``, once ``n`` of them run and have started work."""
    parent = psutil.Process(proc.pid)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        workers = [
            p for p in parent.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())
        ]
        if len(workers) == n and all(p.cpu_times().user > 1.0 for p in workers):
            return workers
        time.sleep(0.2)
    pytest.fail(f"the workers did not start (exit {proc.poll()})")


def finish(proc: subprocess.Popen, timeout: float = LIMIT) -> tuple[str, float]:
    """stderr and seconds until ``proc`` ended; a hang kills its group and fails the test."""
    t0 = time.time()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"still running after {timeout} s: a hang")
    return err, time.time() - t0


def test_killed_worker_ends_prepare_with_one_line(tmp_path):
    """``kill -9`` of a worker mid-run: a one-line error within seconds (a Pool used to replace
    the worker and wait forever for the lost chunk), no worker left, nothing cached."""
    cache = tmp_path / "cache"
    proc = start_prepare(corpus(tmp_path), cache)
    workers = busy_workers(proc)
    workers[0].kill()
    err, seconds = finish(proc)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ulmfit: error: a tokenizer worker"), err
    assert "killed by SIGKILL" in lines[0]
    assert seconds < LIMIT / 4, f"took {seconds:.1f} s to notice"
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    assert not list(cache.glob("*/*/manifest.json"))
    assert not list(cache.glob("*/.tmp-*"))


def test_ctrl_c_prints_one_line(tmp_path):
    """Ctrl-C reaches the whole process group: exit 130 with exactly one line on stderr (no
    KeyboardInterrupt traceback from each worker), and the workers are gone. Real reviews, so
    that the workers are deep in spaCy when the signal comes."""
    path = need(DATA / "imdb" / "train.csv.gz")
    proc = start_prepare(path, tmp_path / "cache", "--label-col", "label")
    workers = busy_workers(proc)
    os.killpg(proc.pid, signal.SIGINT)
    err, seconds = finish(proc)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["ulmfit: interrupted; nothing half-written was kept"]
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


def test_killed_prepare_leaves_nothing_for_long(tmp_path):
    """``kill -9`` of ``prepare`` leaves its temporary folder (nothing can run then); the next
    ``prepare``, even of other data, removes it."""
    cache = tmp_path / "cache"
    proc = start_prepare(corpus(tmp_path), cache)
    workers = busy_workers(proc)
    leftovers = list((cache / "tokens").glob(".tmp-*"))
    assert len(leftovers) == 1
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    psutil.wait_procs(workers, timeout=10)
    assert leftovers[0].exists()
    small = tmp_path / "small.txt"
    small.write_text("one small corpus .\nof two lines .\n")
    done = subprocess.run(
        [ULMFIT, "prepare", str(small), "--workers", "1", "--cache-dir", str(cache), "--json"],
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["docs"] == 2
    assert not leftovers[0].exists()
    assert not list(cache.glob("*/.tmp-*"))


def readme_snippet() -> str:
    """The README's Python block that calls ``prepare([...])``, exactly as written."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    found = [b for b in blocks if "prepare([" in b]
    assert found, "the README has no Python prepare([...]) snippet"
    return found[0]


def two_cores() -> None:
    """Run on two cores, so that ``prepare``'s default (every core) is two workers."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])


@pytest.mark.parametrize("how", ["script", "stdin"])
def test_readme_snippet_runs_without_a_main_guard(tmp_path, how):
    """The snippet has no ``if __name__ == "__main__":``: workers must not re-run it (they
    blocked on the cache lock the script holds) nor die looking for a file named <stdin>."""
    need(DATA / "trec6" / "train.csv")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores for two workers")
    code = readme_snippet()
    env = {**os.environ, "ULMFIT_CACHE": str(tmp_path / "cache")}
    if how == "script":
        script = tmp_path / "snippet.py"
        script.write_text(code)
        cmd, stdin = [sys.executable, str(script)], None
    else:
        cmd, stdin = [sys.executable, "-"], code
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,  # the snippet's paths are relative to the repository
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=two_cores,
    )
    try:
        _, err = proc.communicate(stdin, timeout=LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"still running after {LIMIT} s: a hang; stderr ends {err[-2000:]}")
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    manifests = list((tmp_path / "cache" / "tokens").glob("*/manifest.json"))
    assert len(manifests) == 1
    meta = json.loads(manifests[0].read_text())["meta"]
    assert meta["workers"] == 2 and meta["docs"] == 5452


def test_error_in_a_worker_is_raised_in_the_parent():
    """A chunk a worker cannot tokenize: its exception comes back in that chunk's place (the
    worker does not just end, which would read as a death), the other workers still answer."""
    from ulmfit.text.parallel import _Workers

    with pytest.raises(AttributeError, match="NoneType"), _Workers(2) as pool:
        pool.send(1, [None])  # not a text
        pool.send(0, ["fine"])
        assert pool.results[1].poll(LIMIT)  # worker 1 has failed and sent its error
        assert pool.recv(0)[2].tolist() == [2]  # xxbos fine
        pool.recv(1)
    assert all(p.exitcode is not None for p in pool.procs)


UNGUARDED = """
import sys
from concurrent.futures import ProcessPoolExecutor
import multiprocessing, operator
with open(sys.argv[1] if len(sys.argv) > 1 else {log!r}, "a") as f:
    f.write("ran\\n")
from ulmfit import processes
ctx = {ctx}
with ProcessPoolExecutor(2, mp_context=ctx) as pool:
    assert list(pool.map(operator.neg, range(8))) == [-i for i in range(8)]
"""


@pytest.mark.parametrize("how", ["script", "stdin"])
@pytest.mark.parametrize("ctx", ["processes.context()", "multiprocessing.get_context('spawn')"])
def test_worker_context_does_not_rerun_the_callers_script(tmp_path, how, ctx):
    """ulmfit.processes.context() is general: any pool on it works from an unguarded script or
    standard input, whose body runs once. (Plain spawn, the control: the body runs again in
    each worker from a script, and workers cannot start at all from standard input.)"""
    log = tmp_path / "runs.log"
    code = UNGUARDED.format(log=str(log), ctx=ctx)
    if how == "script":
        (tmp_path / "s.py").write_text(code)
        cmd, stdin = [sys.executable, str(tmp_path / "s.py")], None
    else:
        cmd, stdin = [sys.executable, "-"], code
    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=LIMIT)
    except subprocess.TimeoutExpired:
        done = None
    if ctx.startswith("processes"):
        assert done is not None and done.returncode == 0, done and done.stderr[-2000:]
        assert log.read_text() == "ran\n"
    elif how == "script":
        assert log.read_text().count("ran") > 1
    else:
        assert done is None or done.returncode != 0 or "Error" in done.stderr
