"""Mistakes and damage a user meets, each answered with one line (``ulmfit: error: ...``, exit
2) before any work starts, and nothing on disk lost: damaged or edited model directories, a
device the machine lacks, out-of-range settings, unreadable inputs, an ID column given as the
label, a closed stdout, a refused pickle, DataFrames and empty texts given to predict."""

import builtins
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, trec_rows, write_csv
from test_predict import tiny_models

import ulmfit
from ulmfit.cli import main
from ulmfit.errors import UserError

ULMFIT = Path(sys.executable).with_name("ulmfit")


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *needles: str) -> str:
    lines = err.strip("\n").splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("ulmfit: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory)


@pytest.fixture
def model_copy(models, tmp_path) -> Path:
    """A copy of the single classifier's model directory, free to damage."""
    src = Path(models["single"]) / "model"
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------
# Damaged and edited model directories (predict, evaluate, serve, explain load alike)
# ---------------------------------------------------------------------------------------

_DAMAGE = {
    "truncated": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
    "pickle": lambda b: b"\x80\x04\x95" + b"\x00" * 64,
    "bogus-header": lambda b: (10**9).to_bytes(8, "little") + b"{not json" + b[17:],
}


@pytest.mark.parametrize("damage", list(_DAMAGE))
@pytest.mark.parametrize("command", ["predict", "evaluate", "explain"])
def test_damaged_weights_are_one_line(capsys, models, model_copy, damage, command):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(_DAMAGE[damage](weights.read_bytes()))
    argv = {
        "predict": ["predict", model_copy, "--text", "Who wrote Hamlet ?"],
        "evaluate": ["evaluate", model_copy, models["test"]],
        "explain": ["explain", model_copy, "--text", "Who wrote Hamlet ?"],
    }[command]
    code, out, err = run(capsys, *argv, "--device", "cpu")
    one_line_error(code, err, "model.safetensors")
    assert out == ""


def test_damaged_weights_stop_the_server_before_it_listens(models, model_copy):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    proc = subprocess.run(
        [str(ULMFIT), "serve", str(model_copy), "--port", "0", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    one_line_error(proc.returncode, proc.stderr, "model.safetensors")


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda c: c.update(classes="ABBR DESC"), "'classes' must be a list of strings"),
        (lambda c: c.update(n_out=10**12), "n_out must be an integer"),
        (lambda c: c["architecture"].update(n_hid=10**9), "architecture.n_hid"),
        (lambda c: c["architecture"].update(n_hid=24), "implies"),  # plausible, but not the file's
        (lambda c: c.update(n_out=c["n_out"] + 1), "classes but n_out"),
        (lambda c: c.update(label_kind="ranking"), "label_kind"),
        (lambda c: c["classifier"].update(drop_mult="lots"), "drop_mult"),
        (lambda c: c.update(vocab_size=3), "vocab.json has"),
    ],
)
def test_edited_config_is_refused_on_load(model_copy, edit, needle):
    file = model_copy / "config.json"
    config = json.loads(file.read_text())
    edit(config)
    file.write_text(json.dumps(config))
    with pytest.raises(UserError, match="config.json|model.safetensors|vocab.json") as e:
        ulmfit.load(model_copy, device="cpu")
    assert needle in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------
# A device the machine does not have: refused as the options are read
# ---------------------------------------------------------------------------------------


@pytest.fixture
def inputs(tmp_path, models) -> dict:
    train = write_csv(tmp_path / "train.csv", trec_rows(40))
    return {"train": train, "model": models["single"], "test": models["test"]}


def _device_commands(i: dict, out: Path) -> dict[str, list]:
    pre = REPO / "missing-pretrained"  # never reached: the device is checked first
    return {
        "predict": ["predict", i["model"], "--text", "hi"],
        "evaluate": ["evaluate", i["model"], i["test"]],
        "explain": ["explain", i["model"], "--text", "hi"],
        "serve": ["serve", i["model"], "--port", "0"],
        "finetune-lm": ["finetune-lm", i["train"], "--pretrained", pre, "--out", out],
        "fit": ["fit", "--train", i["train"], "--pretrained", pre, "--out", out],
    }


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "tpu", "cpu:x:y"])
def test_missing_or_unknown_device_is_one_line_before_any_work(capsys, inputs, tmp_path, device):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    for name, argv in _device_commands(inputs, out).items():
        code, stdout, err = run(capsys, *argv, "--device", device)
        one_line_error(code, err, "--device")
        assert stdout == "", name
        assert not out.exists(), name  # no RUN/.lm.key, nothing at all


def test_device_is_checked_by_the_python_api_too(models):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="CUDA is not available"):
        ulmfit.load(models["single"], device="cuda")


# ---------------------------------------------------------------------------------------
# Settings: every one checked before any work, with the flag's name
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--lm-epochs", "0"], "--lm-epochs"),
        (["--epochs", "-2"], "--epochs"),
        (["--drop-mult", "-1"], "--drop-mult"),
        (["--valid-pct", "0"], "--valid-pct"),
        (["--valid-pct", "1.5"], "--valid-pct"),
        (["--lr", "0"], "--lr"),
        (["--lm-lr", "nan"], "--lm-lr"),
        (["--bs", "0"], "--bs"),
        (["--seed", "-1"], "--seed"),
        (["--drop-mult", "5"], "drop_mult must be at least 0 and below 2"),
    ],
)
def test_fit_settings_are_checked_before_any_work(capsys, inputs, tmp_path, extra, needle):
    out, cache = tmp_path / "run", tmp_path / "cache"
    pretrained = REPO / "missing-pretrained"
    code, stdout, err = run(
        capsys, "fit", "--train", inputs["train"], "--pretrained", pretrained, "--out", out,
        "--cache-dir", cache, *extra,
    )  # fmt: skip
    one_line_error(code, err, needle)
    assert not out.exists() and not cache.exists()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--wd", "-1"], "--wd"),
        (["--drop-mult", "4"], "drop_mult must be at least 0 and below 4"),
        (["--frozen-epochs", "-1"], "--frozen-epochs"),
        (["--valid-pct", "0"], "--valid-pct"),
        (["--bptt", "0"], "--bptt"),
    ],
)
def test_lm_settings_are_checked_before_any_work(capsys, inputs, tmp_path, extra, needle):
    out, cache = tmp_path / "lm", tmp_path / "cache"
    code, _, err = run(
        capsys, "finetune-lm", inputs["train"], "--pretrained", REPO / "missing-pretrained",
        "--out", out, "--cache-dir", cache, *extra,
    )  # fmt: skip
    one_line_error(code, err, needle)
    assert not out.exists() and not cache.exists()


# ---------------------------------------------------------------------------------------
# Inputs and outputs
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["prepare", "tokenize", "lm-eval"])
def test_unreadable_input_is_one_line(capsys, monkeypatch, tmp_path, command):
    """As root every file is readable, so the refusal is simulated where the bytes are
    first read: the built-in open, for this one path."""
    data = write_csv(tmp_path / "locked.csv", trec_rows(5))
    real_open = builtins.open

    def locked(file, *a, **kw):
        if str(file) == str(data):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", locked)
    shared = REPO.parent / "shared" / "models" / "wiki30k_fwd"
    argv = {
        "prepare": ["prepare", data],
        "tokenize": ["tokenize", data, "--out", tmp_path / "tokens.jsonl"],
        "lm-eval": ["lm-eval", shared / "lstm_fwd.pth", data, "--vocab", shared / "itos.pkl"],
    }[command]
    code, _, err = run(capsys, *argv, "--cache-dir", tmp_path / "cache", "--workers", "1")
    one_line_error(code, err, "locked.csv", "Permission denied")


def test_an_id_column_as_the_label_is_refused_at_once(capsys, tmp_path):
    rows = [{"text": r["text"], "label": f"id-{i}"} for i, r in enumerate(trec_rows(300))]
    train = write_csv(tmp_path / "train.csv", rows)
    test = write_csv(tmp_path / "test.csv", rows[:10])
    code, _, err = run(capsys, "baseline", "--train", train, "--test", test)
    one_line_error(code, err, "looks like an ID", "300 distinct values")
    code, _, err = run(
        capsys, "fit", "--train", train, "--pretrained", REPO / "missing", "--out",
        tmp_path / "run", "--device", "cpu",
    )  # fmt: skip
    one_line_error(code, err, "looks like an ID")
    assert not (tmp_path / "run").exists()


def test_closed_stdout_ends_quietly(models, tmp_path):
    """``ulmfit predict ... --json | head -c 1``: no BrokenPipeError traceback."""
    texts = write_csv(tmp_path / "texts.csv", trec_rows(400))
    proc = subprocess.Popen(
        [str(ULMFIT), "predict", str(models["single"]), texts, "--json", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.read(1)
    proc.stdout.close()  # the reader goes away before the JSON is written out
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()[-2000:]
    assert proc.returncode in (0, 141)


class PickledModel:  # a whole pickled model object, not a state_dict
    pass


def test_refusing_a_pickle_gives_no_unsafe_advice(tmp_path):
    from ulmfit.models.pretrained import read_fastai_state

    torch.save({"model": PickledModel()}, tmp_path / "full.pth")
    with pytest.raises(UserError) as e:
        read_fastai_state(tmp_path / "full.pth")
    message = str(e.value)
    assert "weights_only" not in message and "\n" not in message
    assert "refused" in message and "state_dict" in message


def test_predict_reads_a_dataframe_by_its_text_column(models):
    import pandas as pd

    predictor = ulmfit.load(models["single"], device="cpu")
    rows = trec_rows(100)
    frame = pd.DataFrame(rows)
    preds = predictor.predict(frame)
    assert len(preds) == 100
    assert preds == predictor.predict([r["text"] for r in rows])
    assert predictor.predict(frame["text"]) == preds
    with pytest.raises(UserError, match="no column 'text'"):
        predictor.predict(frame.rename(columns={"text": "question"}))


def test_empty_text_follows_the_rule_of_files(capsys, models, tmp_path):
    """A text with nothing in it is skipped and listed, given with --text or in a file."""
    code, out, err = run(
        capsys, "predict", models["single"], "--text", "Who wrote Hamlet ?", "--text", " ",
        "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1 and out.startswith("1\t")
    assert "1 row(s) without text skipped: 2" in err
    code, _, err = run(capsys, "predict", models["single"], "--text", "", "--device", "cpu")
    one_line_error(code, err, "every --text is empty")
    file = tmp_path / "texts.csv"
    file.write_text('text\n"Who wrote Hamlet ?"\n" "\n')
    code, out, err = run(capsys, "predict", models["single"], file, "--device", "cpu")
    assert code == 0 and len(out.strip().splitlines()) == 1
    assert "1 row(s) without text skipped: 2" in err


# ---------------------------------------------------------------------------------------
# The rest of the user mistakes (once bench/bad_inputs.py's catalogue): each run in a folder
# of its own, which must be left exactly as it was
# ---------------------------------------------------------------------------------------


def _digest(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (an empty folder left behind counts too) and its bytes."""
    return {str(f): f.read_bytes() if f.is_file() else None for f in sorted(folder.rglob("*"))}


@pytest.fixture
def workspace(inputs, models, tmp_path, monkeypatch) -> Path:
    """The catalogue's files in ``tmp_path/ws`` (the working directory, cache outside it):
    the ``inputs`` fixture's train and test files, a copy of the tiny pretrained LM (``lm``)
    and of the classifier (``run``), and the malformed inputs."""
    ws = tmp_path / "ws"
    shutil.copytree(Path(models["ensemble"]).parent / "pre_fwd", ws / "lm")
    shutil.copytree(inputs["model"], ws / "run")
    shutil.copy(inputs["train"], ws / "train.csv")
    shutil.copy(inputs["test"], ws / "test.csv")
    rows = trec_rows(50)
    (ws / "binary.csv").write_bytes(bytes(range(256)) * 40)
    (ws / "nolabel.csv").write_text("text\nhello\nworld\n")
    write_csv(ws / "oneclass.csv", [{"text": r["text"], "label": "A"} for r in rows])
    write_csv(ws / "unseen.csv", [{"text": rows[0]["text"], "label": "NEVER-SEEN"}])
    (ws / "pickle.pth").write_bytes(b"\x80\x04\x95garbage")
    monkeypatch.chdir(ws)
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    return ws


_FIT = ["fit", "--train", "train.csv", "--pretrained", "lm", "--workers", "1", "--device", "cpu"]


@pytest.mark.parametrize(
    "argv, needle",
    [
        pytest.param(["prepare", "binary.csv"], "binary.csv", id="binary-file"),
        pytest.param(["prepare", "train.csv", "--format", "xml"], "--format", id="unknown-format"),
        pytest.param(["prepare", "lm"], "no .txt files", id="folder-of-no-texts"),
        pytest.param(
            ["fit", "--train", "nolabel.csv", "--pretrained", "lm", "--out", "r1"], "'label'",
            id="fit-without-labels",
        ),
        pytest.param(
            ["fit", "--train", "oneclass.csv", "--pretrained", "lm", "--out", "r2"], "two classes",
            id="one-class-only",
        ),
        pytest.param(
            ["evaluate", "run", "unseen.csv", "--device", "cpu"], "NEVER-SEEN",
            id="test-label-unseen-in-training",
        ),
        pytest.param(["predict", "run", "--text", "hi", "--bs", "0"], "--bs", id="predict-bs-0"),
        pytest.param([*_FIT, "--out", "s6", "--lr", "nan"], "--lr", id="fit-lr-nan"),
        pytest.param(["fit", "--trian", "train.csv"], "", id="unknown-option"),
        pytest.param(
            ["lm-eval", "pickle.pth", "train.csv", "--vocab", "lm/vocab.json"], "pickle.pth",
            id="pickled-pth-as-pretrained",
        ),
        pytest.param(
            ["fit", "--train", "train.csv", "--pretrained", "nope", "--out", "m1"], "nope",
            id="pretrained-path-missing",
        ),
    ],
)  # fmt: skip
def test_user_mistake_is_one_line_and_writes_nothing(capsys, workspace, argv, needle):
    before = _digest(workspace)
    code, _, err = run(capsys, *argv)
    assert "Traceback" not in err, err
    one_line_error(code, err, *([needle] if needle else []))
    assert _digest(workspace) == before


@pytest.mark.parametrize("device", ["cuda", "tpu"])
def test_lm_eval_on_a_missing_device_is_one_line(capsys, workspace, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    before = _digest(workspace)
    code, _, err = run(capsys, "lm-eval", "lm", "train.csv", "--device", device)
    assert "Traceback" not in err, err
    one_line_error(code, err, "--device")
    assert _digest(workspace) == before


_MODEL_DAMAGE = {
    "no-config": lambda d: (d / "config.json").unlink(),
    "bad-json": lambda d: (d / "config.json").write_text("{nope"),
    "no-vocab": lambda d: (d / "vocab.json").unlink(),
}


@pytest.mark.parametrize(
    "damage, command",
    [
        ("no-config", "predict"),
        ("no-config", "evaluate"),
        ("bad-json", "evaluate"),  # bad-json with predict: test_predict.py::test_predict_cli_errors
        ("no-vocab", "predict"),
        ("no-vocab", "evaluate"),
    ],
)
def test_incomplete_model_dir_is_one_line(capsys, workspace, damage, command):
    model = workspace / f"damaged-{damage}"
    shutil.copytree(workspace / "run" / "model", model)
    _MODEL_DAMAGE[damage](model)
    argv = {
        "predict": ["predict", model.name, "--text", "Who wrote Hamlet ?", "--device", "cpu"],
        "evaluate": ["evaluate", model.name, "test.csv", "--device", "cpu"],
    }[command]
    before = _digest(workspace)
    code, out, err = run(capsys, *argv)
    assert "Traceback" not in err, err
    one_line_error(code, err, "vocab.json" if damage == "no-vocab" else "config.json")
    assert out == "" and _digest(workspace) == before
