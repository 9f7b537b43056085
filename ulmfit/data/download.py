"""Find the public data sets the project needs, downloading them when no local copy exists.

Where a file is looked for, in order (see :func:`locate`):

1. ``$ULMFIT_DATA/<path>`` when the environment variable ``ULMFIT_DATA`` names a data folder;
2. ``<repo>/../shared/data/<path>`` (the shared data folder beside a checkout of this repository);
3. the user's data cache, ``$ULMFIT_HOME/data/<path>`` (by default
   ``$XDG_CACHE_HOME/ulmfit/data/<path>`` or ``~/.cache/ulmfit/data/<path>``),
   downloading the file there first when it is missing or does not match its checksum.

Downloads are all-or-nothing: the archive is streamed to a temporary file in the destination
folder, the one registered member is extracted (no other member is ever written, and its name is
never used as a path, so a hostile archive cannot write outside the destination), its SHA-256 is
checked, and only then is it renamed into place atomically. Any failure raises
:class:`ulmfit.errors.UserError` with a one-line message and leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ulmfit.atomic import atomic_write
from ulmfit.cache import file_sha256 as sha256_file
from ulmfit.errors import UserError
from ulmfit.version import __version__

#: Seconds to wait for the server to answer or send more data before giving up.
TIMEOUT = 60.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Dataset:
    """One downloadable file: where it comes from and where it lives under a data folder."""

    name: str
    url: str
    #: Path of the file inside the tar archive at ``url``; ``None`` when ``url`` is the file itself.
    member: str | None
    #: SHA-256 (hex) of the extracted file.
    sha256: str
    #: Path of the file relative to a data folder, with ``/`` separators.
    path: str


REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            name="imdb_sample",
            url="https://s3.amazonaws.com/fast-ai-sample/imdb_sample.tgz",
            member="imdb_sample/texts.csv",
            sha256="c30e4bcefe1fe5d00ba58e410d8f72d29ca4d8857aa9f44751bb650fce626369",
            path="imdb_sample/texts.csv",
        ),
    ]
}

#: The shared data folder beside a checkout of this repository (``<repo>/../shared/data``).
REPO_SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def entry(name: str) -> Dataset:
    """The registry entry called ``name``; a :class:`UserError` naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UserError(f"unknown data set {name!r} (known: {known})") from None


def shared_roots() -> list[Path]:
    """Data folders that are used as they are, in order of preference."""
    roots = []
    env = os.environ.get("ULMFIT_DATA")
    if env:
        roots.append(Path(env).expanduser())
    roots.append(REPO_SHARED_DATA)
    return roots


def cache_root() -> Path:
    """The user's data cache: ``$ULMFIT_HOME/data``, else ``$XDG_CACHE_HOME/ulmfit/data``,
    else ``~/.cache/ulmfit/data``."""
    home = os.environ.get("ULMFIT_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME")
        home = os.path.join(xdg or os.path.join("~", ".cache"), "ulmfit")
    return Path(home).expanduser() / "data"


def locate(name: str) -> Path:
    """Path of the data file ``name``: the shared copy when there is one, else the cached copy,
    downloading it into the cache first if it is missing (or damaged)."""
    ds = entry(name)
    for root in shared_roots():
        candidate = root / ds.path
        if candidate.is_file():
            return candidate
    return download(ds, cache_root())


def download(entry: Dataset, dest_root: Path | str, url: str | None = None) -> Path:
    """Download ``entry`` into ``dest_root/entry.path`` and return that path.

    A file already there with the right checksum is kept and nothing is fetched. Otherwise the
    archive is fetched from ``url`` (default ``entry.url``), the member extracted and checked, and
    the result renamed into place atomically; on any failure a :class:`UserError` is raised and
    nothing is left behind (an existing file is never touched unless it is replaced by a good one).
    """
    url = url or entry.url
    target = Path(dest_root) / entry.path
    if _is_good(target, entry.sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(f: BinaryIO) -> None:  # the file's bytes, checked before it is renamed in place
        if entry.member is None:
            _fetch(url, f)
        else:
            with tempfile.TemporaryFile(prefix=f".{target.name}.", dir=target.parent) as archive:
                _fetch(url, archive)
                archive.seek(0)
                _extract_member(archive, entry.member, f, url)
        f.flush()
        got = sha256_file(Path(f.name))
        if got != entry.sha256:
            raise UserError(
                f"checksum mismatch for {url} ({entry.member or entry.path}): "
                f"expected sha256 {entry.sha256}, got {got}"
            )

    atomic_write(target, write)
    return target


def _is_good(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == sha256


def _fetch(url: str, f: BinaryIO) -> None:
    """Stream ``url`` into the file ``f``; a progress bar is shown only when stderr is a
    terminal."""
    request = urllib.request.Request(url, headers={"User-Agent": f"ulmfit/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with _progress(total, url) as bar:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
            if total is not None and f.tell() != total:
                raise UserError(
                    f"download failed: {url}: connection closed after {f.tell()} of {total} bytes"
                )
    except urllib.error.HTTPError as e:
        raise UserError(f"download failed: {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise UserError(f"download failed: {url}: {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:  # timeouts, resets, truncated bodies
        raise UserError(f"download failed: {url}: {e or type(e).__name__}") from None


class _NoBar:
    def update(self, n: int) -> None:
        pass


@contextlib.contextmanager
def _progress(total: int | None, url: str):
    if not sys.stderr.isatty():
        yield _NoBar()
        return
    from tqdm import tqdm

    desc = url.rsplit("/", 1)[-1] or url
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc) as bar:
        yield bar


def _extract_member(archive: BinaryIO, member: str, out: BinaryIO, url: str) -> None:
    """Copy the regular file ``member`` of the tar ``archive`` into ``out``; nothing else is read
    out of the archive and the member's own name is never used as a path."""
    try:
        with tarfile.open(fileobj=archive, mode="r:*") as tar:
            info = None
            for candidate in tar:  # the last one of that name wins, as with tar itself
                if candidate.name.removeprefix("./") == member:
                    info = candidate
            if info is None:
                raise UserError(f"download failed: {url}: archive has no member {member}")
            if not info.isfile():
                raise UserError(f"download failed: {url}: {member} is not a regular file")
            src = tar.extractfile(info)
            if src is None:  # pragma: no cover - isfile() members always have data
                raise UserError(f"download failed: {url}: cannot read {member}")
            with src:
                shutil.copyfileobj(src, out, _CHUNK)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"download failed: {url}: not a readable tar archive ({e})") from None
