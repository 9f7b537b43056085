"""The resume machinery: RNG state, stage folders stamped with a key, the one list of
result-neutral settings, folders built whole (``staged_folder``), and the training layer's
imports (no circle). Small synthetic inputs, no training."""

import ast
import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ulmfit.atomic import staged_folder
from ulmfit.config import FinetuneLMConfig, PretrainConfig
from ulmfit.errors import UserError
from ulmfit.tasks import run as fit_run
from ulmfit.tasks.language_model import _jsonable
from ulmfit.tasks.lm_partial import (
    RUN_FILE,
    create_partial,
    open_partial,
    partial_dir,
    run_settings,
)
from ulmfit.train.checkpoint import FREE_SETTINGS, StageFolder, rng_state, set_rng_state

TRAIN = Path(__file__).resolve().parents[1] / "ulmfit" / "train"


def draws() -> tuple:
    return torch.rand(3).tolist(), random.random(), np.random.rand(2).tolist()


def test_rng_state_puts_back_every_generator():
    state = rng_state()
    first = draws()
    set_rng_state(state)
    assert draws() == first
    # as a checkpoint stores it: tensors and plain types only
    set_rng_state(torch.load(_saved(state), weights_only=True))
    assert draws() == first


def _saved(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


# -- the one list of result-neutral settings ----------------------------------------------


@pytest.mark.parametrize("cfg", [FinetuneLMConfig(), PretrainConfig()])
def test_a_resumed_lm_run_may_toggle_compile(tmp_path, cfg):
    """--compile does not change what is trained: toggling it on --resume continues the run
    (it refused, naming --compile, while the LM's list lacked it)."""
    out = tmp_path / "lm"
    run = run_settings("finetune_lm", _jsonable(cfg))
    create_partial(partial_dir(out), run)
    for setting in FREE_SETTINGS:
        assert setting not in json.loads((partial_dir(out) / RUN_FILE).read_text())["config"]
    toggled = run_settings("finetune_lm", _jsonable(replace(cfg, compile=not cfg.compile)))
    partial, previous = open_partial(out, toggled, resume=True, verbose=False)
    assert partial == partial_dir(out) and previous == json.loads(json.dumps(run))
    # a setting that does change the weights still refuses, naming it
    other = run_settings("finetune_lm", _jsonable(replace(cfg, lr=cfg.lr * 2)))
    with pytest.raises(UserError, match="cannot resume .*--lr was"):
        open_partial(out, other, resume=True, verbose=False)


def test_a_run_json_that_recorded_compile_still_resumes(tmp_path):
    """run.json files written while the LM's list lacked ``compile`` hold it: not compared."""
    cfg = FinetuneLMConfig()
    out = tmp_path / "lm"
    old = run_settings("finetune_lm", _jsonable(cfg))
    old["config"]["compile"] = False
    create_partial(partial_dir(out), old)
    now = run_settings("finetune_lm", _jsonable(replace(cfg, compile=True)))
    assert open_partial(out, now, resume=True, verbose=False)[1] == old


def test_fit_stage_keys_and_lm_run_records_leave_out_the_same_settings():
    cfg = FinetuneLMConfig(compile=True, workers=3, device="cpu", verbose=False)
    assert fit_run._settings(cfg) == run_settings("x", _jsonable(cfg))["config"]
    assert fit_run._settings(cfg) == fit_run._settings(replace(cfg, compile=False, workers=0))


# -- stage folders ------------------------------------------------------------------------


def test_stage_folder_continues_the_same_work_and_replaces_other_work(tmp_path):
    work = tmp_path / "run" / ".work"
    folder = StageFolder(work, work / "stage_key")
    assert folder.open("k1") == "new"
    assert (work / "stage_key").read_text() == "k1" and folder.key() == "k1"
    (work / "checkpoint.pt").write_bytes(b"x")
    assert folder.open("k1", needs=work / "checkpoint.pt") == "resume"
    assert (work / "checkpoint.pt").is_file()  # nothing removed
    assert folder.open("k2", needs=work / "checkpoint.pt") == "replaced"
    assert sorted(p.name for p in work.iterdir()) == ["stage_key"] and folder.key() == "k2"
    # the same key, but nothing to continue from: started over
    assert folder.open("k2", needs=work / "checkpoint.pt") == "replaced"
    assert [p.name for p in tmp_path.rglob(".*tmp*")] == []  # no temp file left


def test_stage_folder_with_its_stamp_beside_it(tmp_path):
    folder = StageFolder(tmp_path / "lm.partial", tmp_path / ".lm.key")
    assert folder.key() is None and folder.open("a") == "new"
    assert not folder.path.exists() and folder.key() == "a"  # the run creates the folder
    folder.path.mkdir()
    (folder.path / "run.json").write_text("{}")
    assert folder.open("a") == "resume"
    assert folder.open("b") == "replaced" and not folder.path.exists() and folder.key() == "b"


def test_stage_folder_create_is_whole_or_nothing(tmp_path):
    target = tmp_path / "x.partial"
    StageFolder(target, target / "run.json").create({"run.json": "{}", "before.json": "[]"})
    assert sorted(p.name for p in target.iterdir()) == ["before.json", "run.json"]
    other = tmp_path / "y.partial"
    with pytest.raises(OSError):  # a file that cannot be written: nothing appears
        StageFolder(other, other / "run.json").create({"run.json": "{}", "no/such": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.partial"]
    with pytest.raises(OSError):  # the folder is there already (not empty): left as it was
        StageFolder(target, target / "run.json").create({"run.json": "[1]"})
    assert (target / "run.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.partial"]


def test_staged_folder_removes_its_temp_on_error_and_names_a_parent_it_cannot_make(tmp_path):
    with pytest.raises(KeyboardInterrupt), staged_folder(tmp_path / "out") as tmp:
        (tmp / "f").write_text("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot create the folder"):
        with staged_folder(tmp_path / "file" / "out"):
            pass


# -- the training layer's imports -----------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """The ulmfit.train modules ``path`` imports (function-level and TYPE_CHECKING too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return {m.removeprefix("ulmfit.train.") for m in found if m.startswith("ulmfit.train.")}


def test_the_training_modules_import_each_other_without_a_circle():
    modules = {p.stem for p in TRAIN.glob("*.py")} - {"__init__"}
    graph = {m: _imports(TRAIN / f"{m}.py") & modules for m in modules}

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start])  # fmt: skip

    circles = sorted(m for m in modules if reaches(m, m, set()))
    assert circles == [], graph
    # and no module of the package imports the package itself (its __init__ imports them)
    for m in modules:
        tree = ast.parse((TRAIN / f"{m}.py").read_text())
        assert not [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module == "ulmfit.train"
        ], m
