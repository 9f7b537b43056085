"""Where the model directory, the metrics and the report live, checked from the imports: the
use layer (predict, explain, serve) stands on the model directory, never on the training
tasks; metrics and report load without torch and draw without pyplot's global state."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import ulmfit

PKG = Path(ulmfit.__file__).parent


def _module(file: Path) -> str:
    return ".".join(("ulmfit", *file.relative_to(PKG).with_suffix("").parts)).removesuffix(
        ".__init__"
    )


MODULES = {_module(f): f for f in PKG.rglob("*.py")}


def _imports(file: Path) -> set[str]:
    """Every module ``file`` imports, function-level imports included; ``from pkg import mod``
    counts as ``pkg.mod``, not as the package (whose ``__init__`` would otherwise stand in
    every circle)."""
    out = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            out.update(subs or {node.module})
    return out


def test_the_use_layer_imports_nothing_from_tasks():
    for name in ("predict.py", "explain.py", "serve.py"):
        tasks = {m for m in _imports(PKG / name) if m.startswith("ulmfit.tasks")}
        assert not tasks, f"{name} imports {sorted(tasks)}"


def test_the_model_directory_and_the_metrics_are_below_the_tasks():
    """models/ and metrics.py import no task module (the old circle: tasks/classifier.py
    <-> tasks/ensemble.py, each importing the other's model-directory functions)."""
    for file in [*sorted((PKG / "models").glob("*.py")), PKG / "metrics.py", PKG / "report.py"]:
        up = {m for m in _imports(file) if m.startswith(("ulmfit.tasks", "ulmfit.train"))}
        assert not up, f"{_module(file)} imports {sorted(up)}"
    assert not (PKG / "tasks" / "ensemble.py").exists()
    assert not (PKG / "models" / "dirs.py").exists()


def test_report_and_metrics_need_neither_torch_nor_pyplot(tmp_path):
    """Every figure of a report drawn in a fresh interpreter: torch is never imported and
    pyplot (a process-wide figure registry and backend) never loaded."""
    code = f"""
import json, sys
from pathlib import Path
import numpy as np
from ulmfit.metrics import metrics_of
from ulmfit.report import plot_losses, plot_lr_find, write_report_files

out = Path({str(tmp_path)!r})
m = metrics_of(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), ["a", "b", "c"])
write_report_files(out, m, prefix="test_")
steps = [{{"global_step": i, "loss": 2.0 - i / 10}} for i in range(10)]
plot_losses(steps, [{{"global_step": 9, "valid_loss": 1.5}}], out / "loss.png")
lrs = np.geomspace(1e-5, 1, 30)
plot_lr_find(out / "lr.png", lrs, np.linspace(3, 1, 30), {{"valley": 1e-3, "steep": 1e-2}})
print(json.dumps(sorted(m for m in ("torch", "matplotlib.pyplot") if m in sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["loss.png", "lr.png", "test_confusion.png", "test_per_class.csv"]
    for name in ("loss.png", "lr.png", "test_confusion.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (tmp_path / "test_per_class.csv").read_text(encoding="utf-8").splitlines()
    assert rows == [
        "class,precision,recall,f1,support",
        "a,1.0000,1.0000,1.0000,1",
        "b,1.0000,0.5000,0.6667,2",
        "c,0.5000,1.0000,0.6667,1",
    ]


def _graph() -> dict[str, set[str]]:
    """Module -> the ulmfit modules it imports (see :func:`_imports`)."""
    return {
        name: {d for d in _imports(file) if d in MODULES and d != name}
        for name, file in MODULES.items()
    }


def test_no_import_circle_between_modules():
    """Every import, function-level ones included: a circle means two files that cannot be
    understood (or moved) one without the other."""
    graph, state, path = _graph(), {}, []

    def visit(m: str) -> None:
        state[m] = "open"
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                raise AssertionError(" -> ".join(path[path.index(d) :] + [d]))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_module_over_700_lines():
    long = {
        _module(f): n
        for f in PKG.rglob("*.py")
        if (n := len(f.read_text(encoding="utf-8").splitlines())) > 700
    }
    assert not long, long


# README's layout, top to bottom: a module may import from its own layer or the ones above
LAYERS = (
    ("ulmfit.version", "ulmfit.errors"),
    ("ulmfit.devices", "ulmfit.options", "ulmfit.precision"),
    ("ulmfit.processes",),
    ("ulmfit.text.rules",),
    ("ulmfit.config",),
    ("ulmfit.atomic",),
    ("ulmfit.cache",),
    ("ulmfit.data",),
    ("ulmfit.text",),
    ("ulmfit.prepare",),
    ("ulmfit.export",),
    ("ulmfit.corpus",),
    ("ulmfit.loaders",),
    ("ulmfit.models",),
    ("ulmfit.lm_eval",),
    ("ulmfit.metrics",),
    ("ulmfit.report",),
    ("ulmfit.train",),
    ("ulmfit.baselines",),
    ("ulmfit.explain",),
    ("ulmfit.predict",),
    ("ulmfit.tasks",),
    ("ulmfit.http_timeouts", "ulmfit.serve"),
    ("ulmfit.cli",),
)


def _layer(module: str) -> int:
    """The layer of the longest prefix naming ``module`` (``ulmfit.text.rules`` before
    ``ulmfit.text``)."""
    hits = [
        (len(name), k)
        for k, names in enumerate(LAYERS)
        for name in names
        if module == name or module.startswith(name + ".")
    ]
    assert hits, f"{module} is in no layer of LAYERS (and of README's layout)"
    return max(hits)[1]


def test_every_module_imports_only_from_its_layer_or_above():
    upward = [
        f"{m} -> {d}"
        for m, deps in sorted(_graph().items())
        if m != "ulmfit"
        for d in sorted(deps)
        if _layer(d) > _layer(m)
    ]
    assert not upward, upward
