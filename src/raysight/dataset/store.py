"""Where a dataset lives: a local directory or an object-store prefix (``s3://bucket/run``,
``gs://...``, any pyarrow filesystem URI), behind one small interface.

A local directory keeps POSIX guarantees: a file appears by an atomic rename after fsync. An
object store has no rename; there an object appears whole when its upload completes (a single
PUT for small files, a completed multipart upload for shard files), and nothing half-written is
ever listed as finished: a shard counts once its completion record exists (dataset/manifest.py).
Credentials and endpoints come from the standard environment (AWS_*, AWS_ENDPOINT_URL, ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

__all__ = ["Store", "is_uri"]


def is_uri(path: str | Path) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


class Store:
    """A dataset's root: ``name`` arguments are paths relative to it ('part-00000.parquet',
    '_shards/part-00000.json')."""

    READ_BLOCK = 4 * 2**20  # bytes read_lines asks an object store for at a time

    def __init__(self, where: str | Path):
        self.uri = str(where)
        self.local = not is_uri(where)
        if self.local:
            self.dir = Path(self.uri.removeprefix("file://"))
            self.fs: pafs.FileSystem = pafs.LocalFileSystem()
            self.root = str(self.dir.absolute())
        else:
            try:
                self.fs, root = pafs.FileSystem.from_uri(self.uri)
            except (pa.ArrowException, ValueError) as e:
                raise OSError(f"{self.uri}: no filesystem for it ({e})") from None
            self.root = root.rstrip("/")

    def __str__(self) -> str:
        return self.uri

    def path(self, name: str) -> str:
        """The filesystem path of ``name`` (for pyarrow readers with ``self.fs``)."""
        return f"{self.root}/{name}" if name else self.root

    def url(self, name: str) -> str:
        return str(self.dir / name) if self.local else f"{self.uri.rstrip('/')}/{name}"

    # ---------------------------------------------------------------- queries
    def _info(self, name: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path(name))

    def exists(self, name: str = "") -> bool:
        return self._info(name).type != pafs.FileType.NotFound

    def is_file(self, name: str) -> bool:
        return self._info(name).type == pafs.FileType.File

    def is_dir(self) -> bool:
        """A local directory; on an object store, any prefix is one."""
        return self.dir.is_dir() if self.local else True

    def size(self, name: str) -> int | None:
        info = self._info(name)
        return info.size if info.type == pafs.FileType.File else None

    def names(self, prefix: str = "") -> list[str]:
        """Files under ``prefix`` (recursively), as names relative to the root, sorted."""
        base = self.path(prefix).rstrip("/")
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except (FileNotFoundError, NotADirectoryError):
            return []
        cut = len(self.root) + 1
        return sorted(i.path[cut:] for i in infos if i.type == pafs.FileType.File)

    def top_names(self) -> list[str]:
        """Names directly under the root (files and, locally, directories)."""
        if self.local:
            return sorted(p.name for p in self.dir.iterdir()) if self.dir.is_dir() else []
        return sorted({n.split("/", 1)[0] for n in self.names()})

    # ---------------------------------------------------------------- reads
    def read_bytes(self, name: str) -> bytes:
        """FileNotFoundError where there is no such file."""
        if self.local:
            return (self.dir / name).read_bytes()
        if not self.is_file(name):
            raise FileNotFoundError(self.url(name))
        with self.fs.open_input_stream(self.path(name), compression=None) as f:
            return f.read()

    def open_input(self, name: str) -> Any:
        return self.fs.open_input_file(self.path(name))

    def sha256(self, name: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self.path(name), compression=None) as f:
            while block := f.read(8 * 2**20):
                digest.update(block)
        return digest.hexdigest()

    # ---------------------------------------------------------------- writes
    def mkdir(self) -> None:
        if self.local:
            self.dir.mkdir(parents=True, exist_ok=True)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a whole small file atomically: locally a temporary file, fsync and rename; on an
        object store a single PUT, which is visible whole or not at all."""
        if not self.local:
            with self.fs.open_output_stream(self.path(name)) as f:
                f.write(data)
            return
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp files are private; a dataset is meant to be read
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def write_chunks(self, name: str, chunks: Iterable[bytes]) -> None:
        """Write a file of any size atomically from ``chunks``, holding one at a time: locally
        as write_bytes does; for an object store spooled to a local temporary file first, so
        a failing producer uploads nothing."""
        target = self.dir / name if self.local else None
        where = target.parent if target is not None else None
        if where is not None:
            where.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name.rsplit('/', 1)[-1]}.", dir=where)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if target is not None:
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
                return
            with open(tmp, "rb") as src, self.fs.open_output_stream(self.path(name)) as dst:
                while block := src.read(8 * 2**20):
                    dst.write(block)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def read_lines(self, name: str) -> Iterator[str]:
        """The lines of a UTF-8 text file, streamed; FileNotFoundError where it is missing."""
        if self.local:
            with open(self.dir / name, encoding="utf-8") as f:
                yield from f
            return
        if not self.is_file(name):
            raise FileNotFoundError(self.url(name))
        rest = b""
        with self.fs.open_input_stream(self.path(name), compression=None) as f:
            while block := f.read(self.READ_BLOCK):
                *lines, rest = (rest + block).split(b"\n")
                for line in lines:
                    yield line.decode("utf-8") + "\n"
        if rest:
            yield rest.decode("utf-8")

    def open_output(self, name: str) -> Any:
        """An object-store stream for one shard file (a multipart upload, completed on close)."""
        return self.fs.open_output_stream(self.path(name))

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path(name))
