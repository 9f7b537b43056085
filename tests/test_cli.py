"""The ``ulmfit`` command: in-process through main() (capsys), plus real subprocesses for imports."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import DATA, REPO, need

from ulmfit.cli import build_parser, main
from ulmfit.text.tokenize import Tokenizer

HEAVY = ("torch", "spacy", "thinc")


def ulmfit_script() -> Path:
    for candidate in (Path(sys.executable).parent / "ulmfit", REPO / ".venv" / "bin" / "ulmfit"):
        if candidate.exists():
            return candidate
    pytest.skip("the ulmfit console script is not installed")


def heavy_imports(importtime_stderr: str) -> list[str]:
    """Top-level packages among the modules that -X importtime reports as imported."""
    found = set()
    for line in importtime_stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        module = line.rsplit("|", 1)[1].strip()
        if module.split(".")[0] in HEAVY:
            found.add(module.split(".")[0])
    return sorted(found)


@pytest.fixture
def env_cache(tmp_path, monkeypatch):
    """Keep anything that falls back to the default cache inside tmp_path."""
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "default-cache"))
    return tmp_path / "cache"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2
    assert out == ""
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ulmfit: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)


# ---------------------------------------------------------------------------------------------
# Start-up: --help must not wait for PyTorch or spaCy


def test_help_does_not_import_torch_or_spacy():
    script = ulmfit_script()
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "prepare" in proc.stdout and "tokenize" in proc.stdout
    assert "import time:" in proc.stderr  # the import log really was taken
    assert heavy_imports(proc.stderr) == []


def test_subcommand_help_and_parser_import_nothing_heavy():
    code = (
        "import sys, ulmfit.cli\n"
        "p = ulmfit.cli.build_parser()\n"
        "p.parse_args(['prepare', 'x.csv', '--label-col', 'label'])\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_help_in_process(capsys):
    for argv in (["--help"], ["prepare", "--help"], ["tokenize", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: ulmfit")
    assert build_parser().prog == "ulmfit"


# ---------------------------------------------------------------------------------------------
# ulmfit prepare


def test_prepare_json_then_cached(capsys, env_cache):
    path = need(DATA / "trec6" / "test.csv")
    argv = ["prepare", path, "--label-col", "label", "--json", "--cache-dir", env_cache]
    argv += ["--workers", "1"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    first = json.loads(lines[0])
    assert isinstance(first, dict)
    for key in ("docs", "tokens", "vocab_size", "seconds", "cached"):
        assert key in first, key
    assert first["docs"] == 500 and first["cached"] is False
    assert first["tokens"] > first["docs"] and first["vocab_size"] % 8 == 0
    assert isinstance(first["seconds"], float | int) and first["seconds"] >= 0
    assert first["classes"] == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert sum(first["class_counts"].values()) == 500
    assert Path(first["cache"]).is_relative_to(env_cache)
    assert not (env_cache.parent / "default-cache").exists()

    code, out, err = run(capsys, *argv)
    assert code == 0, err
    second = json.loads(out)
    assert second["cached"] is True
    assert second["seconds"] < 1.0
    for key in ("docs", "tokens", "vocab_size", "cache", "classes"):
        assert second[key] == first[key]

    # the same settings without --json: a human summary, still from the cache
    code, out, err = run(capsys, *[a for a in argv if a != "--json"])
    assert code == 0 and out.startswith("loaded from cache") and "500 documents" in out
    assert "labels: single, 6 classes" in out


def test_prepare_text_output_and_options(capsys, env_cache, tmp_path):
    csv = tmp_path / "m.csv"
    pd.DataFrame(
        {"text": ["I love it", "meh", ""], "labels": ["joy love", "neutral", "joy"]}
    ).to_csv(csv, index=False)
    code, out, err = run(
        capsys, "prepare", csv, "--label-col", "labels", "--label-delim", " ",
        "--min-freq", "1", "--cache-dir", env_cache, "--workers", "1",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("prepared in ")
    assert "2 documents" in out and "skipped 1 row with no text (rows 3)" in out
    assert "labels: multi, 3 classes" in out


def test_prepare_known_dataset_name(capsys, env_cache, tmp_path, monkeypatch):
    need(DATA / "imdb_sample" / "texts.csv")
    monkeypatch.setenv("ULMFIT_DATA", str(DATA))
    monkeypatch.chdir(tmp_path)  # no file called imdb_sample here
    code, out, err = run(
        capsys, "prepare", "imdb_sample", "--label-col", "label", "--json",
        "--cache-dir", env_cache, "--workers", "2",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["docs"] == 1000 and summary["classes"] == ["negative", "positive"]
    assert summary["inputs"][0]["path"].endswith("imdb_sample/texts.csv")


def test_cached_prepare_in_a_subprocess_imports_nothing_heavy(capsys, env_cache):
    """A re-run over unchanged data is a lookup: it never loads spaCy or PyTorch."""
    path = need(DATA / "trec6" / "test.csv")
    args = ["prepare", str(path), "--label-col", "label", "--json", "--cache-dir", str(env_cache)]
    args += ["--workers", "1"]
    assert run(capsys, *args)[0] == 0
    code = (
        "import sys, json\n"
        "from ulmfit.cli import main\n"
        f"assert main({args!r}) == 0\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary, heavy = proc.stdout.strip().splitlines()
    assert json.loads(summary)["cached"] is True
    assert json.loads(heavy) == []


def test_keyboard_interrupt_is_reported(capsys, env_cache, monkeypatch, tmp_path):
    import ulmfit.prepare

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ulmfit.prepare, "prepare", interrupted)
    csv = tmp_path / "a.csv"
    csv.write_text("text\nhello\n")
    code, out, err = run(capsys, "prepare", csv, "--cache-dir", env_cache)
    assert code == 130 and "interrupted" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# ulmfit tokenize


def test_tokenize_writes_one_list_per_row(capsys, env_cache, tmp_path):
    texts = [
        "Hello World! This is GREAT.",
        "",
        "don't stop   believing...\nNew line <br /> here",
        "   ",
        "Ünïcödé — “quotes” and emoji 🙂 #tag http://x.y/z",
        "aaaaaah so so so good",
        "last row",
    ]
    csv = tmp_path / "t.csv"
    pd.DataFrame({"text": texts, "other": range(len(texts))}).to_csv(csv, index=False)
    out_file = tmp_path / "out" / "tokens.jsonl"
    out_file.parent.mkdir()
    code, out, err = run(
        capsys, "tokenize", csv, "--out", out_file, "--cache-dir", env_cache, "--workers", "1"
    )
    assert code == 0, err
    assert "wrote 7 token lists" in out and '2 rows had no text (written as ["xxbos"])' in out
    lines = out_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(texts)
    got = [json.loads(line) for line in lines]
    assert got[1] == ["xxbos"] and got[3] == ["xxbos"]
    assert got == Tokenizer().tokenize_batch(texts)
    assert got[0][:3] == ["xxbos", "xxmaj", "hello"]
    assert not any(p.name.startswith(".") for p in out_file.parent.iterdir())  # no temp file

    # again: from the cache, same file; --json prints one object
    out_file.unlink()
    code, out, err = run(
        capsys, "tokenize", csv, "--out", out_file, "--cache-dir", env_cache, "--json",
        "--workers", "1",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["cached"] is True and result["rows"] == 7 and result["docs"] == 5
    assert result["skipped_empty"] == 2 and result["out"] == str(out_file)
    assert [json.loads(line) for line in out_file.read_text().splitlines()] == got


def test_tokenize_real_data_matches_tokenizer(capsys, env_cache, tmp_path):
    path = need(DATA / "trec6" / "test.csv")
    out_file = tmp_path / "trec.jsonl"
    code, out, err = run(
        capsys, "tokenize", path, "--out", out_file, "--cache-dir", env_cache,
        "--workers", "2", "--chunk-docs", "64", "--json",
    )  # fmt: skip
    assert code == 0, err
    texts = pd.read_csv(path, dtype=str, keep_default_na=False)["text"].tolist()
    got = [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines()]
    assert len(got) == len(texts) == 500
    assert got == Tokenizer().tokenize_batch(texts)


def test_tokenize_wikitext_corpus(capsys, env_cache, tmp_path):
    txt = tmp_path / "wiki.txt"
    txt.write_text(" = First = \n\n Some text here .\n\n = Second = \n\n More .\n")
    out_file = tmp_path / "w.jsonl"
    code, _, err = run(
        capsys, "tokenize", txt, "--out", out_file, "--cache-dir", env_cache, "--workers", "1"
    )
    assert code == 0, err
    got = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(got) == 2 and got[0][:2] == ["xxbos", "="] and "xxmaj" in got[1]


# ---------------------------------------------------------------------------------------------
# User mistakes: exit code 2, one line on stderr, no traceback


def test_missing_file(capsys, env_cache, tmp_path):
    missing = tmp_path / "nope.csv"
    for cmd in (["prepare", missing], ["tokenize", missing, "--out", tmp_path / "o.jsonl"]):
        code, out, err = run(capsys, *cmd, "--cache-dir", env_cache)
        assert_user_error(code, out, err, "nope.csv", "no such file")
    assert not (tmp_path / "o.jsonl").exists()
    assert not env_cache.exists()


def test_unknown_dataset_name_lists_known_names(capsys, env_cache, tmp_path, monkeypatch):
    from ulmfit.data.download import REGISTRY

    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "prepare", "imdb_samples", "--cache-dir", env_cache)
    assert_user_error(code, out, err, "imdb_samples", "known dataset names")
    for name in REGISTRY:
        assert name in err


def test_missing_column(capsys, env_cache, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("text,label\nhello,a\n")
    code, out, err = run(capsys, "prepare", csv, "--label-col", "tag", "--cache-dir", env_cache)
    assert_user_error(code, out, err, "c.csv", "no column 'tag'", "columns: text, label")
    code, out, err = run(
        capsys, "tokenize", csv, "--text-col", "body", "--out", tmp_path / "o.jsonl",
        "--cache-dir", env_cache,
    )  # fmt: skip
    assert_user_error(code, out, err, "no column 'body'")
    assert not (tmp_path / "o.jsonl").exists()
    # nothing but lock files in the cache
    assert [p for p in env_cache.rglob("*") if p.is_dir() and p.parent != env_cache] == []


@pytest.mark.parametrize(
    "option, value",
    [
        ("--workers", "-1"),
        ("--workers", "-8"),
        ("--chunk-docs", "0"),
        ("--chunk-docs", "-5"),
        ("--max-vocab", "-3"),
        ("--max-vocab", "0"),
        ("--max-vocab", "5"),  # fewer than the special tokens
    ],
)
def test_bad_numbers(capsys, env_cache, tmp_path, option, value):
    csv = tmp_path / "c.csv"
    csv.write_text("text\nhello\n")
    code, out, err = run(capsys, "prepare", csv, option, value, "--cache-dir", env_cache)
    assert_user_error(code, out, err, option)
    if option != "--max-vocab":  # tokenize has no vocabulary options
        code, out, err = run(
            capsys, "tokenize", csv, "--out", tmp_path / "o", option, value,
            "--cache-dir", env_cache,
        )  # fmt: skip
        assert_user_error(code, out, err, option)
    assert not env_cache.exists()
    assert not (tmp_path / "o").exists()


def test_smallest_max_vocab_is_accepted(capsys, env_cache, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("text\nhello world\nhello\n")
    code, out, err = run(
        capsys, "prepare", csv, "--max-vocab", "9", "--json", "--cache-dir", env_cache,
        "--workers", "1",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["vocab_size"] == 16  # the 9 special tokens, padded to 16


def test_non_numeric_workers_is_a_usage_error(capsys, tmp_path):
    code, out, err = run(capsys, "prepare", tmp_path / "c.csv", "--workers", "many")
    assert_user_error(code, out, err, "argument --workers", "'ulmfit prepare --help'")


@pytest.mark.parametrize(
    "content, extra, needles",
    [
        (b"", [], ["empty"]),
        (b'text,label\n"",a\n', ["--label-col", "label"], ["no text"]),
        (b"text,label\ncaf\xe9,a\n", ["--label-col", "label"], ["not valid utf-8", "line 2"]),
        (b"text,label\na,1\nb,2\nc,x\n", ["--label-col", "label"], ["one type"]),
    ],
    ids=["empty-file", "no-text", "not-utf8", "mixed-labels"],
)
def test_bad_file_contents(capsys, env_cache, tmp_path, content, extra, needles):
    csv = tmp_path / "bad.csv"
    csv.write_bytes(content)
    code, out, err = run(capsys, "prepare", csv, *extra, "--cache-dir", env_cache, "--workers", "1")
    assert_user_error(code, out, err, "bad.csv", *needles)


def test_unwritable_output(capsys, env_cache, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("text\nhello\n")
    target = tmp_path / "no-such-folder" / "o.jsonl"
    code, out, err = run(
        capsys, "tokenize", csv, "--out", target, "--cache-dir", env_cache, "--workers", "1"
    )
    assert_user_error(code, out, err, "cannot write", "o.jsonl")


def test_error_in_a_real_subprocess(tmp_path):
    script = ulmfit_script()
    proc = subprocess.run(
        [str(script), "prepare", str(tmp_path / "nope.csv"), "--cache-dir", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_user_error(proc.returncode, proc.stdout, proc.stderr, "nope.csv")


# ---------------------------------------------------------------------------------------------
# Output files: never an input, never an existing file without --overwrite, written atomically


def test_tokenize_out_never_replaces_an_input_or_an_existing_file(capsys, env_cache, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("text\nhello world\nbye\n")
    before = csv.read_bytes()
    common = ["--cache-dir", env_cache, "--workers", "1"]
    link = tmp_path / "link.csv"
    link.symlink_to(csv)
    for target in (csv, link, tmp_path / "." / "c.csv"):
        code, out, err = run(capsys, "tokenize", csv, "--out", target, *common, "--overwrite")
        assert_user_error(code, out, err, "would overwrite the input")
    assert csv.read_bytes() == before
    # a folder input (one folder per class): nothing is written inside it
    pos = tmp_path / "imdb" / "pos"
    pos.mkdir(parents=True)
    (pos / "1.txt").write_text("great")
    (tmp_path / "imdb" / "neg").mkdir()
    (tmp_path / "imdb" / "neg" / "2.txt").write_text("bad")
    code, out, err = run(capsys, "tokenize", tmp_path / "imdb", "--out", pos / "t.jsonl", *common)
    assert_user_error(code, out, err, "would overwrite the input")
    assert sorted(p.name for p in pos.iterdir()) == ["1.txt"]
    # an existing file: refused without --overwrite; a user's own F.tmp files survive
    target = tmp_path / "o.jsonl"
    target.write_text("mine\n")
    (tmp_path / "o.jsonl.tmp").write_text("keep")
    (tmp_path / ".o.jsonl.tmp").write_text("keep too")
    code, out, err = run(capsys, "tokenize", csv, "--out", target, *common)
    assert_user_error(code, out, err, "o.jsonl", "exists", "--overwrite")
    assert target.read_text() == "mine\n"
    code, out, err = run(capsys, "tokenize", csv, "--out", target, *common, "--overwrite")
    assert code == 0, err
    assert [json.loads(x)[:2] for x in target.read_text().splitlines()] == [
        ["xxbos", "hello"],
        ["xxbos", "bye"],
    ]
    assert (tmp_path / "o.jsonl.tmp").read_text() == "keep"
    assert (tmp_path / ".o.jsonl.tmp").read_text() == "keep too"
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert hidden == [".o.jsonl.tmp"]  # no temp file of ours left


def _bad_out_paths(tmp_path) -> list[tuple[Path, str]]:
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain").write_text("x")
    return [
        (tmp_path / "folder", "is a folder"),
        (Path("/"), "is a folder"),
        (tmp_path / "no-such" / "o.out", "no such folder"),
        (tmp_path / "plain" / "o.out", "is not a folder"),
    ]


def test_tokenize_bad_out_paths_are_one_line_errors(capsys, env_cache, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("text\nhello\n")
    for target, needle in _bad_out_paths(tmp_path):
        code, out, err = run(
            capsys, "tokenize", csv, "--out", target, "--cache-dir", env_cache, "--workers", "1"
        )
        assert_user_error(code, out, err, needle)
    assert not env_cache.exists()  # refused before tokenizing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_tokenize_into_a_read_only_folder(capsys, env_cache, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("text\nhello\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, out, err = run(
            capsys, "tokenize", csv, "--out", ro / "o.jsonl", "--cache-dir", env_cache
        )
        assert_user_error(code, out, err, "permission denied")
    finally:
        ro.chmod(0o755)


def test_a_failed_or_interrupted_write_leaves_the_target_and_no_temp(tmp_path, monkeypatch):
    from ulmfit import atomic
    from ulmfit.errors import UserError

    target = tmp_path / "o.txt"
    target.write_text("old")

    def half(f):
        f.write("half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.write_output(target, half, overwrite=True)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["o.txt"]

    def refused(*a, **k):  # as a read-only folder answers, for root too
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic, "open", refused, raising=False)
    with pytest.raises(UserError, match="cannot write .Permission denied"):
        atomic.write_output(target, lambda f: f.write("new"), overwrite=True)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["o.txt"]


def test_an_unwritable_folder_is_refused_before_any_work(capsys, env_cache, tmp_path, monkeypatch):
    """What a read-only folder answers a user who is not root (root may write anyway)."""
    from ulmfit import atomic

    csv = tmp_path / "c.csv"
    csv.write_text("text\nhello\n")
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: False)
    code, out, err = run(
        capsys, "tokenize", csv, "--out", tmp_path / "o.jsonl", "--cache-dir", env_cache
    )
    assert_user_error(code, out, err, "cannot write in the folder", "permission denied")
    assert not env_cache.exists()  # nothing tokenized
