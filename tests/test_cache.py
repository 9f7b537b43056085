"""The content-addressed cache: build/load, damage detection, failed writers, concurrent builders."""

import hashlib
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from ulmfit.cache import MANIFEST, Cache, default_root, file_sha256, key_of

STAGE = "demo"
KEY = key_of({"what": "test"})


def writer(calls: list | None = None, payload: bytes = b"hello world\n" * 100):
    """A writer that makes two files and returns metadata; records each call in `calls`."""

    def write(tmp: Path) -> dict:
        if calls is not None:
            calls.append(tmp)
        (tmp / "data.bin").write_bytes(payload)
        (tmp / "info.json").write_text(json.dumps({"n": len(payload)}))
        return {"n": len(payload)}

    return write


def entry_folders(root: Path) -> list[Path]:
    """Every folder under the cache root except the stage folders themselves."""
    return [p for p in root.rglob("*") if p.is_dir() and p.parent != root]


def test_build_then_load(tmp_path):
    cache = Cache(tmp_path)
    calls: list = []
    entry, built = cache.build(STAGE, KEY, writer(calls))
    assert built is True and len(calls) == 1
    assert entry == cache.path(STAGE, KEY) == tmp_path / STAGE / KEY
    assert (entry / "data.bin").read_bytes() == b"hello world\n" * 100
    manifest = cache.manifest(entry)
    assert manifest["stage"] == STAGE and manifest["key"] == KEY
    assert manifest["meta"] == {"n": 1200}
    assert set(manifest["files"]) == {"data.bin", "info.json"}
    for name, info in manifest["files"].items():
        data = (entry / name).read_bytes()
        assert info == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert file_sha256(entry / name) == info["sha256"]

    again, built = cache.build(STAGE, KEY, writer(calls))
    assert (again, built) == (entry, False)
    assert len(calls) == 1  # not rewritten
    assert cache.load(STAGE, KEY) == entry
    assert cache.load(STAGE, key_of({"what": "other"})) is None
    # no temporary or trash folders left behind
    assert entry_folders(tmp_path) == [entry]


def test_writer_gets_an_empty_private_folder(tmp_path):
    cache = Cache(tmp_path)
    seen = []

    def write(tmp: Path) -> dict:
        seen.append((tmp, list(tmp.iterdir())))
        (tmp / "x").write_text("x")
        return {}

    entry, _ = cache.build(STAGE, KEY, write)
    tmp, contents = seen[0]
    assert contents == [] and tmp != entry and tmp.parent == entry.parent
    assert not tmp.exists()


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda e: _flip_byte(e / "data.bin"), id="flip-byte"),
        pytest.param(lambda e: _flip_byte(e / "info.json"), id="flip-byte-small-file"),
        pytest.param(lambda e: _truncate(e / "data.bin"), id="truncate"),
        pytest.param(lambda e: (e / "data.bin").write_bytes(b""), id="empty-file"),
        pytest.param(lambda e: (e / "data.bin").unlink(), id="delete-file"),
        pytest.param(lambda e: (e / MANIFEST).unlink(), id="delete-manifest"),
        pytest.param(lambda e: _truncate(e / MANIFEST), id="truncate-manifest"),
        pytest.param(lambda e: (e / MANIFEST).write_text("[]"), id="manifest-not-a-dict"),
        pytest.param(
            lambda e: (e / MANIFEST).write_text(json.dumps({"files": {"data.bin": {}}})),
            id="manifest-missing-fields",
        ),
    ],
)
def test_damaged_entry_is_detected_and_rebuilt(tmp_path, damage):
    cache = Cache(tmp_path)
    calls: list = []
    entry, _ = cache.build(STAGE, KEY, writer(calls))
    good = {p.name: p.read_bytes() for p in entry.iterdir()}
    damage(entry)

    assert cache.load(STAGE, KEY) is None  # never handed out
    again, built = cache.build(STAGE, KEY, writer(calls))
    assert built is True and len(calls) == 2 and again == entry
    assert {p.name: p.read_bytes() for p in again.iterdir()} == good
    assert cache.load(STAGE, KEY) == entry
    assert entry_folders(tmp_path) == [entry]  # the damaged copy is gone, no trash left


def test_damaged_entry_found_by_build_directly(tmp_path):
    """build() itself (not only load()) refuses a damaged entry."""
    cache = Cache(tmp_path)
    calls: list = []
    entry, _ = cache.build(STAGE, KEY, writer(calls))
    _flip_byte(entry / "data.bin")
    _, built = cache.build(STAGE, KEY, writer(calls))
    assert built and len(calls) == 2
    assert (entry / "data.bin").read_bytes() == b"hello world\n" * 100


def test_writer_that_raises_leaves_nothing(tmp_path):
    cache = Cache(tmp_path)

    def bad(tmp: Path) -> dict:
        (tmp / "half.bin").write_bytes(b"x" * 1000)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cache.build(STAGE, KEY, bad)
    assert cache.load(STAGE, KEY) is None
    assert not cache.path(STAGE, KEY).exists()
    assert entry_folders(tmp_path) == []  # no .tmp-* folder either
    leftovers = [p.name for p in (tmp_path / STAGE).iterdir()]
    assert all(name.endswith(".lock") for name in leftovers), leftovers

    # a KeyboardInterrupt in the middle of writing is cleaned up just the same
    def interrupted(tmp: Path) -> dict:
        (tmp / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.build(STAGE, KEY, interrupted)
    assert entry_folders(tmp_path) == []

    # and the key can still be built afterwards
    entry, built = cache.build(STAGE, KEY, writer())
    assert built and cache.load(STAGE, KEY) == entry


def test_writer_returning_unserialisable_meta_leaves_nothing(tmp_path):
    cache = Cache(tmp_path)

    def bad_meta(tmp: Path) -> dict:
        (tmp / "a").write_text("a")
        return {"x": object()}

    with pytest.raises(TypeError):
        cache.build(STAGE, KEY, bad_meta)
    assert entry_folders(tmp_path) == []


def _build_in_child(root: str, log: str, barrier, queue) -> None:
    def slow_writer(tmp: Path) -> dict:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # long enough that the other process arrives while we write
        (tmp / "data.bin").write_bytes(b"shared" * 1000)
        return {"writer": os.getpid()}

    barrier.wait()
    try:
        entry, built = Cache(root).build(STAGE, KEY, slow_writer)
        queue.put((str(entry), built, (entry / "data.bin").read_bytes() == b"shared" * 1000))
    except BaseException as e:  # pragma: no cover - reported to the parent
        queue.put(("error", repr(e), False))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_two_processes_build_once(tmp_path):
    ctx = mp.get_context("fork")
    log = tmp_path / "writer.log"
    barrier = ctx.Barrier(2)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_build_in_child, args=(str(tmp_path / "c"), str(log), barrier, queue))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert all(r[0] != "error" for r in results), results
    assert len(log.read_text().splitlines()) == 1  # the writer ran once
    paths = {r[0] for r in results}
    assert len(paths) == 1
    assert sorted(r[1] for r in results) == [False, True]  # one built it, the other reused it
    assert all(r[2] for r in results)  # both read the whole, intact data
    cache = Cache(tmp_path / "c")
    entry = cache.load(STAGE, KEY)
    assert entry is not None and str(entry) in paths
    assert entry_folders(tmp_path / "c") == [entry]


def _orphan(root: Path, key: str, kind: str = "tmp") -> Path:
    """A folder as a builder killed by SIGKILL leaves it (pid 999999999: no such process)."""
    name = f".tmp-{key}-999999999-0badf00d" if kind == "tmp" else f".trash-{key}-0badf00d"
    folder = root / STAGE / name
    folder.mkdir(parents=True)
    (folder / "ids.i32").write_bytes(b"\0" * 4096)
    (root / STAGE / f".{key}.lock").touch()
    return folder


def test_next_build_removes_what_killed_builders_left(tmp_path):
    """``kill -9`` runs no cleanup: the next build removes the orphaned temporary and trash
    folders, of its own key and of other keys whose lock is free."""
    cache = Cache(tmp_path)
    other = key_of({"what": "other"})
    left = [_orphan(tmp_path, KEY), _orphan(tmp_path, other), _orphan(tmp_path, other, "trash")]
    entry, built = cache.build(STAGE, KEY, writer())
    assert built and not any(p.exists() for p in left)
    assert entry_folders(tmp_path) == [entry]


def _hold_lock(root: str, key: str, held, release) -> None:
    with Cache(root)._lock(STAGE, key):
        held.set()
        release.wait(60)


def test_build_keeps_the_temporary_folder_of_a_live_builder(tmp_path):
    """A folder whose key's lock another process holds is that process's work in progress."""
    ctx = mp.get_context("spawn")
    busy = key_of({"what": "busy"})
    live = _orphan(tmp_path, busy)
    held, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(tmp_path), busy, held, release))
    proc.start()
    try:
        assert held.wait(60)
        Cache(tmp_path).build(STAGE, KEY, writer())
        assert live.exists() and (live / "ids.i32").stat().st_size == 4096
    finally:
        release.set()
        proc.join(60)
    Cache(tmp_path).build(STAGE, key_of({"what": "third"}), writer())
    assert not live.exists()  # its owner is gone now


def test_key_of_is_stable():
    settings = {"stage": "tokens", "version": 1, "inputs": [["abc", {"fmt": "csv"}]]}
    # a fixed value: if this changes, every existing cache entry silently becomes unreachable
    assert key_of(settings) == "01fc42163ed6e489d83e4a53dbb55a3e"
    reordered = {"inputs": [["abc", {"fmt": "csv"}]], "version": 1, "stage": "tokens"}
    assert key_of(reordered) == key_of(settings)
    assert len(key_of(settings)) == 32 and int(key_of(settings), 16) >= 0


def test_key_of_changes_with_every_setting():
    base = {
        "stage": "numbers",
        "version": 1,
        "vocab": {"max_vocab": 60000, "min_freq": 3},
        "inputs": [["sha-a", {"fmt": "csv", "label_delim": None}], ["sha-b", {"fmt": "tsv"}]],
        "flag": False,
    }
    variants = [
        {**base, "stage": "tokens"},
        {**base, "version": 2},
        {**base, "vocab": {"max_vocab": 60001, "min_freq": 3}},
        {**base, "vocab": {"max_vocab": 60000, "min_freq": 2}},
        {**base, "vocab": {"max_vocab": 60000}},
        {
            **base,
            "inputs": [["sha-b", {"fmt": "tsv"}], ["sha-a", {"fmt": "csv", "label_delim": None}]],
        },
        {
            **base,
            "inputs": [["sha-a", {"fmt": "csv", "label_delim": " "}], ["sha-b", {"fmt": "tsv"}]],
        },
        {**base, "inputs": [["sha-a", {"fmt": "csv", "label_delim": None}]]},
        {
            **base,
            "inputs": [["sha-c", {"fmt": "csv", "label_delim": None}], ["sha-b", {"fmt": "tsv"}]],
        },
        {**base, "flag": True},
        {**base, "flag": None},
        {**base, "flag": 0},
        {**base, "extra": 1},
    ]
    keys = [key_of(v) for v in variants]
    assert key_of(base) not in keys
    assert len(set(keys)) == len(keys)
    # strings and numbers that print alike are still different settings
    assert key_of({"a": 1}) != key_of({"a": "1"})
    # non-JSON values (paths) are hashed by their text, stably
    assert key_of({"p": Path("/x/y")}) == key_of({"p": Path("/x/y")}) != key_of({"p": Path("/x")})


def test_default_root_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "mine"
    assert Cache().root == tmp_path / "mine"
    assert Cache(tmp_path / "given").root == tmp_path / "given"

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ULMFIT_CACHE", "~/c")
    assert default_root() == tmp_path / "home" / "c"

    monkeypatch.delenv("ULMFIT_CACHE")
    assert default_root() == tmp_path / "xdg" / "ulmfit"
    monkeypatch.setenv("ULMFIT_CACHE", "")  # empty means unset
    assert default_root() == tmp_path / "xdg" / "ulmfit"

    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_root() == tmp_path / "home" / ".cache" / "ulmfit"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert default_root() == tmp_path / "home" / ".cache" / "ulmfit"


def test_default_root_is_used_for_building(monkeypatch, tmp_path):
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "env-cache"))
    entry, built = Cache().build(STAGE, KEY, writer())
    assert built and entry == tmp_path / "env-cache" / STAGE / KEY


def test_unwritable_root_is_a_user_error(tmp_path):
    from ulmfit.errors import UserError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot create cache folder"):
        Cache(blocker / "cache").build(STAGE, KEY, writer())
