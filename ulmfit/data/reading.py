"""Opening input files, and turning what reading them raises into one-line messages.

Split from :mod:`ulmfit.data.sources` (the readers): the messages for bytes in the wrong
encoding (with the real line and byte offset, which pandas and TextIOWrapper do not give),
for a broken gzip file, a file that cannot be opened, and the SHA-256 of an input.
"""

from __future__ import annotations

import codecs
import gzip
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from ulmfit.errors import UserError

_BLOCK = 1 << 20  # 1 MiB: read size for hashing and for the encoding scan
T = TypeVar("T")


def open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


def text_encoding(encoding: str) -> str:
    """Read UTF-8 input as utf-8-sig so that a byte-order mark does not end up in the first text."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def open_text(path: Path, encoding: str) -> IO[str]:
    """Text stream that splits lines at "\\n" only (a stray "\\r" inside a line stays put)."""
    return io.TextIOWrapper(open_binary(path), encoding=text_encoding(encoding), newline="\n")


def first_bad_byte(open_raw: Callable[[], IO[bytes]], encoding: str) -> tuple[int, int, bytes]:
    """(1-based line, 0-based byte offset, the bad bytes) of the first undecodable byte.

    Scans the raw (decompressed) bytes with an incremental decoder in 1 MiB blocks, because the
    position in a UnicodeDecodeError from pandas or a TextIOWrapper is relative to an internal
    buffer, not to the file. Returns (0, -1, b"") when every byte decodes.
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0  # bytes before the current block
    newlines = 0  # b"\n" before the current block
    with open_raw() as raw:
        while True:
            block = raw.read(_BLOCK)
            final = not block
            state = decoder.getstate()
            pending = state[0] if isinstance(state[0], bytes) else b""
            try:
                decoder.decode(block, final=final)
            except UnicodeDecodeError as e:
                start = offset - len(pending) + e.start
                before = block[: max(0, e.start - len(pending))]
                return newlines + before.count(b"\n") + 1, start, e.object[e.start : e.end]
            if final:
                return 0, -1, b""
            offset += len(block)
            newlines += block.count(b"\n")


def decode_error(path: Path, encoding: str, err: UnicodeDecodeError) -> UserError:
    """The one-line message for a file that is not in `encoding`, with the real line and byte."""
    line, offset, bad = first_bad_byte(lambda: open_binary(path), encoding)
    if offset < 0:  # the scan found nothing: fall back to what the decoder said
        return UserError(f"{path}: not valid {encoding}: {err}; try --encoding latin-1")
    where = " of the decompressed data" if path.suffix.lower() == ".gz" else ""
    return UserError(
        f"{path}: not valid {encoding} at line {line}, byte offset {offset}{where} "
        f"(byte 0x{bad[:1].hex()}); if the file uses another encoding, say so, e.g. --encoding latin-1"
    )


def read_errors(path: Path, encoding: str) -> Callable[[BaseException], UserError | None]:
    """Map the exceptions that reading a (possibly gzipped) file can raise to a UserError."""

    def convert(err: BaseException) -> UserError | None:
        if isinstance(err, UnicodeDecodeError):
            return decode_error(path, encoding, err)
        if isinstance(err, (gzip.BadGzipFile, EOFError)) or (
            isinstance(err, OSError) and "gzip" in str(err).lower()
        ):
            return UserError(f"{path}: not a complete gzip file ({first_line(err)})")
        if isinstance(err, IsADirectoryError | PermissionError | FileNotFoundError):
            return UserError(f"{path}: cannot open ({err.strerror})")
        return None

    return convert


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def guarded(
    path: Path, encoding: str, batches: Iterator[T], extra: Callable[[BaseException], Any]
) -> Iterator[T]:
    """Re-raise reading errors from `batches` as one-line UserErrors."""
    convert = read_errors(path, encoding)
    try:
        yield from batches
    except UserError:
        raise
    except Exception as err:
        user_err = convert(err) or extra(err)
        if user_err is None:
            raise
        raise user_err from None


def hash_file(digest: Any, path: Path) -> None:
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                digest.update(view[:n])
    except OSError as e:  # the first read of every input: no permission, a vanished file
        raise UserError(f"{path}: cannot read ({e.strerror or first_line(e)})") from None
