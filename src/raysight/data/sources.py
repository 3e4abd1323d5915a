"""Input files from metadata: what ``data.source`` names (a file, a directory, a glob, a URI, or
a list of them), each file's format and row count, and which rows of which files a shard reads.

The driver lists files and reads row counts only: Parquet and Arrow footers, and one streamed
pass over line files (JSONL, txt) that counts newlines and notes the byte offset of every
``LINE_STRIDE``-th line so a shard can seek to its first line. It never holds rows, so its
memory does not grow with the input. A shard is a range of global row indices (rows numbered
across the files in order); :meth:`Source.pieces` maps it to (file, first row, end row) pieces.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ..errors import RaysightError

__all__ = [
    "LINE_STRIDE",
    "DataError",
    "InputFile",
    "Source",
    "filesystem",
    "iter_lines",
    "open_source",
]

#: every LINE_STRIDE-th line's byte offset is recorded, so a shard skips < LINE_STRIDE lines
LINE_STRIDE = 1024
_BLOCK = 8 * 2**20
_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "txt",
    ".arrow": "arrow",
}
_CODECS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
_HF_STATE = "state.json"  # what marks a directory written by HF datasets' save_to_disk


class DataError(RaysightError, ValueError):
    """The input as a whole cannot be read (missing file, unknown format, duplicate ids)."""


@dataclass(frozen=True)
class InputFile:
    uri: str  # a local path (absolute) or a URI: where the reader opens it, and its name
    fmt: str  # parquet | arrow | jsonl | txt
    rows: int
    size: int
    mtime_ns: int | None
    codec: str | None = None  # line files: gzip | zstd | bz2 (no seeking, read from the start)
    groups: tuple[int, ...] = ()  # parquet row groups / arrow record batches: rows in each
    offsets: tuple[int, ...] = ()  # uncompressed line files: byte offset of line k * stride
    stride: int = LINE_STRIDE
    columns: tuple[str, ...] = ()  # parquet / arrow: the file's column names
    stream: bool = False  # arrow: the IPC stream format (HF datasets), not the file format
    sha256: str | None = None  # line files: of the bytes as stored (read anyway to count lines)


@dataclass(frozen=True)
class Source:
    """The input as files and row counts. ``total`` is capped by data.limit."""

    files: tuple[InputFile, ...]
    starts: tuple[int, ...]  # global index of each file's first row
    total: int

    def pieces(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """(file index, first row, end row) in file-local rows, for global rows [lo, hi)."""
        hi = min(hi, self.total)
        out = []
        for i, (f, start) in enumerate(zip(self.files, self.starts)):
            a, b = max(lo, start), min(hi, start + f.rows)
            if a < b:
                out.append((i, a - start, b - start))
        return out

    def fingerprint(self) -> dict[str, Any]:
        """What a resume must find unchanged: each file's name and size, and its content hash
        (line files, read whole to be counted) or modification time (Parquet and Arrow, of
        which only the footer is read), hashed together so 100,000 files stay small."""
        h = hashlib.sha256()
        for f in self.files:
            h.update(json.dumps([f.uri, f.size, f.sha256 or f.mtime_ns]).encode())
        return {
            "files": len(self.files),
            "bytes": sum(f.size for f in self.files),
            "rows": sum(f.rows for f in self.files),
            "sha256": h.hexdigest(),
        }


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path of a local path or a URI (s3://, gs://, hdfs://, file://;
    any other scheme through fsspec, where it is installed). Credentials and endpoints come
    from the standard environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS...)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).absolute())
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
        scheme = uri.split("://", 1)[0]
        try:
            from fsspec.core import url_to_fs
        except ImportError:
            raise DataError(f"{uri!r}: pyarrow has no filesystem for {scheme}:// ({e})") from None
        try:
            fs, path = url_to_fs(uri)
        except (ValueError, ImportError) as e2:
            raise DataError(f"{uri!r}: no filesystem for {scheme}:// ({e2})") from None
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _join(uri: str, path: str, root: str) -> str:
    """The URI of ``path``, a path on the filesystem of ``uri`` (whose own path is ``root``):
    the scheme, and the authority that pyarrow keeps out of its paths (hdfs://host:port)."""
    if "://" not in uri:
        return path
    scheme, rest = uri.split("://", 1)
    at = rest.find(root.strip("/")) if root.strip("/") else len(rest)
    authority = rest[:at].rstrip("/") if at > 0 else ""
    if authority:
        return f"{scheme}://{authority}/{path.lstrip('/')}"
    return f"{scheme}://{path}"  # s3: 'bucket/key'; file: '/abs/path' -> file:///abs/path


def _glob_regex(pattern: str) -> re.Pattern:
    """A glob as a regex: * and ? stay within a path part, ** crosses parts."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        out.append({"*": "[^/]*", "?": "[^/]"}.get(c) or re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _format(path: str, fmt: str) -> tuple[str | None, str | None]:
    """(format, compression codec) of a file from its name, or data.format when given."""
    p = PurePosixPath(path)
    codec = _CODECS.get(p.suffix.lower())
    suffix = PurePosixPath(p.stem).suffix.lower() if codec else p.suffix.lower()
    found = _FORMATS.get(suffix)
    if fmt != "auto":
        return fmt, codec
    if found in ("parquet", "arrow") and codec:
        return None, None  # these compress inside the file, never as a whole
    return found, codec


def _listed(entry: str, fmt: str) -> list[tuple[pafs.FileSystem, str, str]]:
    """(filesystem, path, uri) of every input file one data.source entry names."""
    fs, path = filesystem(entry)
    if any(c in path for c in "*?["):
        parts = PurePosixPath(path).parts
        fixed = next(i for i, p in enumerate(parts) if any(c in p for c in "*?["))
        root = str(PurePosixPath(*parts[:fixed])) if fixed else "."
        regex = _glob_regex(path)
        infos = _walk(fs, root, entry)
        found = [i for i in infos if regex.match(i.path) or regex.match(i.path.lstrip("/"))]
        if not found:
            raise DataError(f"data.source {entry!r}: no file matches")
        return [(fs, i.path, _join(entry, i.path, path)) for i in found]
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"data.source {entry!r}: file not found")
    if info.type == pafs.FileType.Directory:
        state = fs.get_file_info(f"{path.rstrip('/')}/{_HF_STATE}")
        if state.type == pafs.FileType.File:
            return _hf_files(fs, path, entry)
        found = [
            i
            for i in _walk(fs, path, entry)
            if not any(p.startswith(("_", ".")) for p in PurePosixPath(i.path).parts[-1:])
            and _format(i.path, fmt)[0] is not None
        ]
        if not found:
            raise DataError(
                f"data.source {entry!r}: the directory holds no input files "
                "(.parquet, .jsonl, .txt, .arrow, or those compressed as .gz/.zst)"
            )
        return [(fs, i.path, _join(entry, i.path, path)) for i in found]
    if info.type != pafs.FileType.File:  # a FIFO blocks forever, /dev/zero never ends
        raise DataError(f"data.source {entry!r}: not a regular file")
    return [(fs, path, entry if "://" in entry else path)]


def _walk(fs: pafs.FileSystem, root: str, entry: str) -> list[pafs.FileInfo]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError as e:
        raise DataError(f"data.source {entry!r}: cannot list {root!r} ({e})") from None
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def _hf_files(fs: pafs.FileSystem, path: str, entry: str) -> list[tuple]:
    """The arrow files of a ``datasets.save_to_disk`` directory, in its state.json's order."""
    try:
        with fs.open_input_stream(f"{path.rstrip('/')}/{_HF_STATE}", compression=None) as f:
            state = json.loads(f.read())
        names = [d["filename"] for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"data.source {entry!r}: unreadable HF datasets state.json ({e})") from None
    base = path.rstrip("/")
    return [(fs, f"{base}/{n}", _join(entry, f"{base}/{n}", path)) for n in names]


def _count(
    fs: pafs.FileSystem, path: str, uri: str, fmt: str, codec: str | None, stride: int
) -> InputFile:
    info = fs.get_file_info(path)
    base = {"uri": uri, "fmt": fmt, "size": info.size or 0, "mtime_ns": info.mtime_ns}
    try:
        if fmt == "parquet":
            with fs.open_input_file(path) as f:
                meta = pq.ParquetFile(f).metadata
                groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
                cols = tuple(meta.schema.to_arrow_schema().names)
            return InputFile(rows=meta.num_rows, groups=groups, columns=cols, **base)
        if fmt == "arrow":
            return _count_arrow(fs, path, base)
        rows, offsets, digest = _count_lines(fs, path, codec, stride)
        return InputFile(
            rows=rows, codec=codec, offsets=offsets, stride=stride, sha256=digest, **base
        )
    except (OSError, pa.ArrowException, ValueError) as e:
        kind = {"parquet": "Parquet", "arrow": "Arrow IPC"}.get(fmt, fmt)
        raise DataError(f"data.source {uri!r}: not a readable {kind} file ({e})") from None


def _count_arrow(fs: pafs.FileSystem, path: str, base: dict) -> InputFile:
    with fs.open_input_file(path) as f:
        stream = f.read(6) != b"ARROW1"
        f.seek(0)
        if stream:  # HF datasets writes the stream format: the batches must be walked
            reader = ipc.open_stream(f)
            groups = tuple(b.num_rows for b in reader)
        else:
            reader = ipc.open_file(f)
            groups = tuple(
                reader.get_record_batch(i).num_rows for i in range(reader.num_record_batches)
            )
        cols = tuple(reader.schema.names)
    return InputFile(rows=sum(groups), groups=groups, columns=cols, stream=stream, **base)


def _count_lines(
    fs: pafs.FileSystem, path: str, codec: str | None, stride: int
) -> tuple[int, tuple, str]:
    """Lines in a text file (a last line without a newline counts), the byte offsets of every
    ``stride``-th line where the file can be seeked (not compressed), and the SHA-256 of the
    bytes as stored."""
    lines = pos = 0
    offsets = [0]
    last = b"\n"
    digest = hashlib.sha256()
    with fs.open_input_stream(path, compression=None) as raw:  # as stored: hash, then inflate
        f: Any = _Hashing(raw, digest)
        if codec:
            f = pa.CompressedInputStream(pa.PythonFile(f, mode="r"), codec)
        while block := f.read(_BLOCK):
            nl = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
            if codec is None and len(nl):
                # the line after newline j (0-based, in the file) is line lines + j + 1
                index = np.arange(lines + 1, lines + 1 + len(nl))
                offsets += (pos + nl[index % stride == 0] + 1).tolist()
            lines += len(nl)
            pos += len(block)
            last = block[-1:]
    if pos and last != b"\n":
        lines += 1
    return lines, tuple(offsets) if codec is None else (), digest.hexdigest()


class _Hashing:
    """A readable stream that hashes what is read through it."""

    def __init__(self, raw: Any, digest: Any):
        self.raw, self.digest, self.closed = raw, digest, False

    def read(self, n: int = -1) -> bytes:
        block = self.raw.read(n)
        self.digest.update(block)
        return block

    def close(self) -> None:
        self.closed = True  # the underlying stream is closed by its own `with`


def open_source(
    source: str | list[str],
    base: str | Path = ".",
    fmt: str = "auto",
    limit: int | None = None,
    stride: int = LINE_STRIDE,
) -> Source:
    """List and count the input files (metadata only; in parallel, for object stores)."""
    entries = [source] if isinstance(source, str) else list(source)
    found: list[tuple] = []
    for entry in entries:
        if "://" not in entry and not Path(entry).is_absolute() and not Path(entry).exists():
            entry = str(Path(base) / entry)
        for fs, path, uri in _listed(entry, fmt):
            kind, codec = _format(path, fmt)
            if kind is None:
                raise DataError(
                    f"data.source {uri!r}: unknown format (give a .parquet, .jsonl, .txt or "
                    ".arrow file, optionally .gz/.zst for jsonl and txt, or set data.format)"
                )
            found.append((fs, path, uri, kind, codec, stride))
    with ThreadPoolExecutor(min(16, max(1, len(found)))) as pool:
        files = list(pool.map(lambda a: _count(*a), found))
    starts, n = [], 0
    for f in files:
        starts.append(n)
        n += f.rows
    total = n if limit is None else min(n, limit)
    return Source(tuple(files), tuple(starts), total)


def iter_lines(f: Any) -> Iterator[bytes]:
    """Lines of a pyarrow input stream, without their newline (pyarrow streams have no
    readline)."""
    rest = b""
    while block := f.read(_BLOCK):
        parts = (rest + block).split(b"\n")
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest
