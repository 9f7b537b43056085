"""What the benchmark scripts share: where the code stands, what it ran on, and running the
``ulmfit`` command. The scripts put bench/ at the *end* of sys.path (bench/tokenize.py must
not shadow the standard library's tokenize), which is how they find this module."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ULMFIT = str(Path(sys.executable).parent / "ulmfit")


def utc_now() -> str:
    """Now, as the sections of RESULTS.md date their runs: ``2026-11-28 09:30 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def git_commit() -> str:
    """The checked-out commit, marked when tracked files have uncommitted changes."""
    try:
        head, dirty = (
            subprocess.run(
                ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
            ).stdout.strip()
            for args in (
                ["rev-parse", "--short=12", "HEAD"],
                ["status", "--porcelain", "--untracked-files=no"],
            )
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def cpu_model() -> str:
    """The processor's name as /proc/cpuinfo gives it (else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_description() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores"


def run_ulmfit(args: list[str]) -> tuple[dict, float, str]:
    """``ulmfit ARGS --json``: its JSON report, the seconds it took, and the command line."""
    t0 = time.perf_counter()
    out = subprocess.run([ULMFIT, *args, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"ulmfit {shlex.join(args)} failed:\n{out.stderr[-3000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return report, time.perf_counter() - t0, "ulmfit " + shlex.join(args)


def torch_environment(device: str) -> dict:
    """Python, torch, CUDA and cuDNN versions, and the GPU (or CPU) a run used."""
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": device,
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        dev = torch.device(device)
        env.update(
            gpu=torch.cuda.get_device_name(dev),
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    else:
        env["cpu"] = cpu_description()
    return env


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, obj: object) -> None:
    """``obj`` as JSON, replacing ``path`` in one rename (a run cut short leaves the last)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def export(files: list[Path], out: Path, labels: bool, raw: bool = False) -> dict:
    """``ulmfit prepare FILES --export OUT``: a dataset folder that ``pretrain``,
    ``finetune-lm``, ``fit`` and ``evaluate`` read without spaCy (what a GPU machine needs).
    ``raw``: copy the files instead (a CPU rehearsal on a checkout without ``--export``; the
    commands then tokenize them, with spaCy). Returns prepare's JSON summary."""
    out.parent.mkdir(parents=True, exist_ok=True)
    args = [str(f) for f in files] + ["--text-col", "text"]
    args += ["--label-col", "label"] if labels else []
    report, _, _ = run_ulmfit(["prepare", *args] + ([] if raw else ["--export", str(out)]))
    if raw:
        out.mkdir(parents=True)
        for f in files:
            shutil.copy(f, out / f.name)
    return report


def dataset(folder: Path) -> str:
    """What to hand a command for the dataset ``export`` wrote into ``folder``: the folder,
    or the one file a ``raw`` export copied there."""
    if (folder / "manifest.json").is_file():
        return str(folder)
    (file,) = sorted(folder.iterdir())
    return str(file)


def cli_json(args: list[str]) -> tuple[dict, float, float | None]:
    """``ulmfit ARGS --json`` in this process (the GPU machine has the source tree but no
    ``ulmfit`` script): its JSON report, the seconds, and the peak GPU memory in MiB
    (``torch.cuda.max_memory_allocated``; None off CUDA)."""
    import contextlib
    import io

    import torch

    from ulmfit.cli import main

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        rc = main([*args, "--json"])
    secs = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"ulmfit {shlex.join(args)}: exit {rc}")
    peak = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None
    return json.loads(out.getvalue().strip().splitlines()[-1]), secs, peak


def versions(*packages: str) -> str:
    """``python X; torch Y; PKG Z ...; ulmfit commit C``: the header line of a section."""
    from importlib.metadata import version

    import torch

    pkgs = "".join(f"; {p} {version(p)}" for p in packages)
    return (
        f"python {platform.python_version()}; torch {torch.__version__}{pkgs}; "
        f"ulmfit commit {git_commit()}"
    )


RESULTS = REPO / "bench" / "RESULTS.md"


def append_results(text: str, path: Path = RESULTS) -> None:
    """Add a section to bench/RESULTS.md (or ``path``), a blank line before it."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n" + text)


class TreeMemory(threading.Thread):
    """Samples the memory of a process and all its descendants every ``interval`` seconds
    until stopped: summed RSS, summed PSS (``pss=True``: pages shared by forked workers split
    among them, the tree's real footprint; reads smaps, so slower) and summed anonymous RSS
    (RSS minus file-backed pages: a memory-mapped corpus does not count). ``samples`` holds
    ``(seconds since start, rss)``; ``peak``, ``peak_pss`` and ``peak_anon`` the maxima."""

    def __init__(self, pid: int, interval: float = 0.05, pss: bool = False) -> None:
        super().__init__(daemon=True)
        import psutil

        self.root, self.interval, self.pss = psutil.Process(pid), interval, pss
        self.t0 = time.perf_counter()
        self.peak = self.peak_pss = self.peak_anon = 0
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()
        self.sample()
        self.start()

    def now(self) -> tuple[int, int, int]:
        """Summed RSS, PSS and anonymous RSS of the tree now (zeros once it is gone)."""
        import psutil

        rss = pss = anon = 0
        with contextlib.suppress(psutil.Error):
            for proc in [self.root, *self.root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    m = proc.memory_full_info() if self.pss else proc.memory_info()
                    rss += m.rss
                    pss += getattr(m, "pss", m.rss)
                    anon += max(m.rss - m.shared, 0)
        return rss, pss, anon

    def sample(self) -> None:
        rss, pss, anon = self.now()
        if rss:
            self.samples.append((time.perf_counter() - self.t0, rss))
        self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)
        self.peak_anon = max(self.peak_anon, anon)

    def at(self, fraction: float) -> int:
        """The RSS sample nearest to ``fraction`` of the time sampled so far."""
        t = fraction * self.samples[-1][0]
        return min(self.samples, key=lambda s: abs(s[0] - t))[1]

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()


def measure(cmd: list[str], pss: bool = False, **popen) -> dict:
    """Run ``cmd`` to its end, its memory sampled (``TreeMemory``): rc, stdout, stderr, wall
    seconds and the peak summed RSS / PSS / anonymous RSS in MiB."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen
    )
    mem = TreeMemory(proc.pid, pss=pss)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    mem.stop()
    return {
        "rc": proc.returncode,
        "stdout": out.decode("utf-8", "replace"),
        "stderr": err.decode("utf-8", "replace"),
        "wall": wall,
        "peak_rss_mib": mem.peak / 2**20,
        "peak_pss_mib": mem.peak_pss / 2**20,
        "peak_anon_mib": mem.peak_anon / 2**20,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(model: str, *options: str, cwd: Path | None = None, env: dict | None = None):
    """``ulmfit serve MODEL --port P OPTIONS`` on a free loopback port, yielded as
    ``(process, port, command)`` once GET /health answers 200; stopped with Ctrl-C (SIGINT)
    after, killed if it does not end within 30 s."""
    import http.client

    port = free_port()
    cmd = [ULMFIT, "serve", model, "--port", str(port), *options]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise SystemExit(
                f"the server exited ({proc.returncode}):\n{proc.stderr.read()[-3000:]}"
            )
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                break
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the server did not answer /health within 180 s")
        time.sleep(0.25)
    try:
        yield proc, port, cmd
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def bench_module(name: str):
    """bench/NAME.py as a module (one script reusing another's contenders, not copying them)."""
    import importlib.util

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]
