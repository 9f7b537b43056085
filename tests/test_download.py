"""ulmfit.data.download against a local HTTP server on 127.0.0.1 (no other network traffic)."""

import dataclasses
import hashlib
import http.server
import io
import socket
import tarfile
import threading
from pathlib import Path

import pytest
from conftest import DATA, need

from ulmfit.data import download as dl
from ulmfit.errors import UserError

CSV = b'label,text,is_valid\r\nnegative,"A bad, bad film.",False\r\npositive,Loved it.,True\r\n'
SHA = hashlib.sha256(CSV).hexdigest()


def make_tgz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


class Server:
    """Serves a folder on 127.0.0.1 in a thread and counts the requests it gets."""

    def __init__(self, root: Path):
        self.hits: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                server.hits.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    make_tgz(root / "imdb_sample.tgz", {"imdb_sample/texts.csv": CSV, "imdb_sample/other": b"x"})
    s = Server(root)
    yield s
    s.close()


@pytest.fixture
def entry(server, monkeypatch):
    """The registered imdb_sample entry, pointed at the local server and the small CSV."""
    e = dataclasses.replace(
        dl.REGISTRY["imdb_sample"], url=f"{server.base}/imdb_sample.tgz", sha256=SHA
    )
    monkeypatch.setitem(dl.REGISTRY, "imdb_sample", e)
    return e


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No shared data folder and a private cache: locate() must go to the (local) server."""
    monkeypatch.delenv("ULMFIT_DATA", raising=False)
    monkeypatch.setattr(dl, "REPO_SHARED_DATA", tmp_path / "no-shared")
    monkeypatch.setenv("ULMFIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "data"


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_registry_entry_matches_shared_sources():
    e = dl.REGISTRY["imdb_sample"]
    assert e.url == "https://s3.amazonaws.com/fast-ai-sample/imdb_sample.tgz"
    assert e.member == "imdb_sample/texts.csv" and e.path == "imdb_sample/texts.csv"
    sources = need(DATA / "SOURCES.md").read_text(encoding="utf-8")
    assert f"{e.sha256}  imdb_sample/texts.csv" in sources


def test_download_success(entry, server, tmp_path):
    dest = tmp_path / "dest"
    path = dl.download(entry, dest)
    assert path == dest / "imdb_sample" / "texts.csv"
    assert path.read_bytes() == CSV
    assert files_under(dest) == [path]  # no temporary file left, and the other member not written
    assert server.hits == ["/imdb_sample.tgz"]


def test_wrong_checksum_raises_and_leaves_nothing(entry, server, tmp_path):
    dest = tmp_path / "dest"
    bad = dataclasses.replace(entry, sha256="0" * 64)
    with pytest.raises(UserError) as err:
        dl.download(bad, dest)
    msg = str(err.value)
    assert "\n" not in msg
    assert entry.url in msg and "0" * 64 in msg and SHA in msg
    assert files_under(dest) == []


def test_http_404_raises(entry, server, tmp_path):
    dest = tmp_path / "dest"
    url = f"{server.base}/missing.tgz"
    with pytest.raises(UserError, match="404") as err:
        dl.download(entry, dest, url=url)
    assert url in str(err.value) and "\n" not in str(err.value)
    assert files_under(dest) == []


def test_connection_refused_raises(entry, tmp_path):
    with socket.socket() as s:  # a loopback port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "dest"
    with pytest.raises(UserError, match="download failed"):
        dl.download(entry, dest, url=f"http://127.0.0.1:{port}/imdb_sample.tgz")
    assert files_under(dest) == []


def test_not_a_tarball_or_member_missing(entry, server, tmp_path):
    www = tmp_path / "www"
    (www / "plain.tgz").write_bytes(b"this is not a tar archive")
    make_tgz(www / "other.tgz", {"something/else.csv": CSV})
    dest = tmp_path / "dest"
    with pytest.raises(UserError, match="tar"):
        dl.download(entry, dest, url=f"{server.base}/plain.tgz")
    with pytest.raises(UserError, match="no member imdb_sample/texts.csv"):
        dl.download(entry, dest, url=f"{server.base}/other.tgz")
    assert files_under(dest) == []


def test_hostile_members_are_not_extracted(entry, server, tmp_path):
    """A symlink under the registered name is refused; traversal members are never written."""
    www = tmp_path / "www"
    with tarfile.open(www / "evil.tgz", "w:gz") as tar:
        for name in ["../../escaped.csv", "/tmp/absolute.csv"]:
            info = tarfile.TarInfo(name)
            info.size = len(CSV)
            tar.addfile(info, io.BytesIO(CSV))
        link = tarfile.TarInfo("imdb_sample/texts.csv")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    dest = tmp_path / "a" / "b" / "dest"
    with pytest.raises(UserError, match="not a regular file"):
        dl.download(entry, dest, url=f"{server.base}/evil.tgz")
    assert files_under(tmp_path / "a") == []
    assert not (tmp_path / "a" / "escaped.csv").exists()


def test_present_file_not_downloaded_again(entry, server, tmp_path):
    dest = tmp_path / "dest"
    first = dl.download(entry, dest)
    mtime = first.stat().st_mtime_ns
    again = dl.download(entry, dest)
    assert again == first and first.stat().st_mtime_ns == mtime
    assert server.hits == ["/imdb_sample.tgz"]  # one request only


def test_failed_download_keeps_existing_file(entry, server, tmp_path):
    """A damaged file is only ever replaced by a good one."""
    dest = tmp_path / "dest"
    path = dest / entry.path
    path.parent.mkdir(parents=True)
    path.write_bytes(b"damaged")
    with pytest.raises(UserError):
        dl.download(entry, dest, url=f"{server.base}/missing.tgz")
    assert path.read_bytes() == b"damaged"
    assert dl.download(entry, dest) == path
    assert path.read_bytes() == CSV
    assert files_under(dest) == [path]


def test_locate_prefers_ulmfit_data(entry, server, isolated, tmp_path, monkeypatch):
    mine = tmp_path / "mydata"
    (mine / "imdb_sample").mkdir(parents=True)
    (mine / "imdb_sample" / "texts.csv").write_bytes(b"local copy")
    monkeypatch.setenv("ULMFIT_DATA", str(mine))
    assert dl.locate("imdb_sample") == mine / "imdb_sample" / "texts.csv"
    assert server.hits == [] and files_under(isolated) == []


def test_locate_prefers_repo_shared_folder(entry, server, isolated, tmp_path, monkeypatch):
    shared = tmp_path / "shared" / "data"
    (shared / "imdb_sample").mkdir(parents=True)
    (shared / "imdb_sample" / "texts.csv").write_bytes(b"shared copy")
    monkeypatch.setattr(dl, "REPO_SHARED_DATA", shared)
    monkeypatch.setenv("ULMFIT_DATA", str(tmp_path / "empty"))  # set, but without the file
    assert dl.locate("imdb_sample") == shared / "imdb_sample" / "texts.csv"
    assert server.hits == [] and files_under(isolated) == []


def test_locate_downloads_into_cache_once(entry, server, isolated):
    path = dl.locate("imdb_sample")
    assert path == isolated / "imdb_sample" / "texts.csv"
    assert path.read_bytes() == CSV
    assert dl.locate("imdb_sample") == path
    assert server.hits == ["/imdb_sample.tgz"]


def test_locate_unknown_name():
    with pytest.raises(UserError, match="unknown data set 'nope'.*imdb_sample"):
        dl.locate("nope")


def test_locate_real_shared_folder(monkeypatch):
    """In this checkout the shared copy is found without any network access."""
    real = need(DATA / "imdb_sample" / "texts.csv")
    monkeypatch.delenv("ULMFIT_DATA", raising=False)
    assert dl.locate("imdb_sample").resolve() == real.resolve()
