"""Python dataset objects as data.source: a pyarrow ``FileSystemDataset``, or a
``ray.data.Dataset`` that plainly reads files (``ray.data.read_parquet/read_json/read_text``
with no transform), becomes the list of its files' URIs and their format, so the spec stays data
(serializable, hashed, resumable) and each shard's worker reads its own rows as for any other
source.

Ray Data does not say publicly which files a dataset reads (``input_files()`` is empty until it
runs), so the files come from its logical plan: the ``ListFiles`` operator of a datasource-v2
read, or a ``FileBasedDatasource`` of a v1 read. That is Ray's internal structure, tested here
against the installed Ray; a dataset of any other shape (built in memory, mapped, filtered,
limited, shuffled) is refused with what to do instead, since its rows are not its files'.
"""

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
        return _ray_files(obj)
    raise DataError(
        f"data.source: a {type(obj).__name__} that is not read from files cannot be sharded "
        "from metadata; write it out first (e.g. ds.write_parquet(path)) and give that path"
    )


# Ray Data's file datasources, by the format raysight reads them as
_RAY_V2 = {"ParquetV2": "parquet"}
_RAY_V1 = {
    "ParquetDatasource": "parquet",
    "ArrowJSONDatasource": "jsonl",
    "PandasJSONDatasource": "jsonl",
    "JSONDatasource": "jsonl",
    "TextDatasource": "txt",
}


def _ray_files(ds: Any) -> tuple[list[str], str]:
    """(file URIs, data.format) of a ray.data.Dataset that only reads files."""
    try:
        op = ds._logical_plan.dag
    except AttributeError:
        op = None
    kind = type(op).__name__
    deps = getattr(op, "_input_dependencies", None) or []
    if kind == "ReadFiles" and len(deps) == 1 and type(deps[0]).__name__ == "ListFiles":
        listed = deps[0]
        pushed = [
            name
            for name in ("predicate", "limit", "partition_filter", "projected_columns")
            if getattr(listed, name, None) is not None
        ]
        fmt = _RAY_V2.get(getattr(op, "datasource_name", ""))
        if fmt and not pushed:
            return [_uri(_unwrapped(listed.filesystem), p) for p in listed.source_paths], fmt
        kind = f"{kind} ({', '.join(pushed) or op.datasource_name})"
    elif kind == "Read" and not deps:
        source = getattr(op, "datasource", None)
        fmt = _RAY_V1.get(type(source).__name__)
        if fmt and hasattr(source, "_paths"):
            return [_uri(_unwrapped(source._filesystem), p) for p in source._paths()], fmt
        kind = f"{kind} ({type(source).__name__})"
    raise DataError(
        f"data.source: this ray.data.Dataset is not a plain read of files (its last step is "
        f"{kind}), so its rows cannot be sharded from files' metadata; give the files (or a "
        "directory or glob) as data.source, or write it out first (ds.write_parquet(path))"
    )


def _unwrapped(fs: Any) -> Any:
    """The pyarrow filesystem inside Ray's retrying wrapper."""
    return fs.unwrap() if hasattr(fs, "unwrap") else fs
