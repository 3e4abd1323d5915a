"""Ray Data has no reader for Arrow IPC files: a file-based datasource, one block per file."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
from ray.data.datasource import FileBasedDatasource

__all__ = ["ArrowIPCDatasource"]


class ArrowIPCDatasource(FileBasedDatasource):
    def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
        # the IPC file format keeps its index in a footer: it needs the whole file to seek in
        yield ipc.open_file(pa.BufferReader(f.read())).read_all()
