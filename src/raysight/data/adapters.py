"""Python dataset objects as data.source: a pyarrow ``FileSystemDataset`` becomes the list of
its files' URIs, so the spec stays data (serializable, hashed, resumable) and each shard's
worker reads its own rows as for any other source.

A ``ray.data.Dataset`` is refused with what to do instead: Ray 2.60 does not say which files a
dataset reads before it runs (``input_files()`` is empty), and one built in memory has none."""

from __future__ import annotations

from typing import Any

import pyarrow.fs as pafs

from .sources import DataError

__all__ = ["source_of"]

_FORMATS = {"parquet": "parquet", "ipc": "arrow", "feather": "arrow", "json": "jsonl"}


def _uri(fs: Any, path: str) -> str:
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    if isinstance(fs, pafs.S3FileSystem):
        return f"s3://{path}"
    if isinstance(fs, pafs.GcsFileSystem):
        return f"gs://{path}"
    raise DataError(f"data.source: files on {type(fs).__name__} cannot be named by a URI here")


def source_of(obj: Any) -> tuple[list[str], str]:
    """(file URIs, data.format) of a pyarrow dataset read from files."""
    import pyarrow.dataset as pads

    if isinstance(obj, pads.FileSystemDataset):
        fmt = _FORMATS.get(obj.format.default_extname, "auto")
        return [_uri(obj.filesystem, f) for f in obj.files], fmt
    if type(obj).__module__.startswith("ray.data"):
        raise DataError(
            "data.source: a ray.data.Dataset does not name the files it reads before it runs; "
            "give those paths (or a directory or glob) as data.source, or write it out first "
            "(ds.write_parquet(path))"
        )
    raise DataError(
        f"data.source: a {type(obj).__name__} that is not read from files cannot be sharded "
        "from metadata; write it out first (e.g. ds.write_parquet(path)) and give that path"
    )
