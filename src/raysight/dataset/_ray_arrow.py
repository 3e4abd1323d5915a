"""Ray Data glue: a reader for Arrow IPC files (Ray Data has none), and tensor columns as Arrow's
fixed_shape_tensor, which Ray Data turns into ndarrays (nested lists it gives as object arrays).
"""

from __future__ import annotations

from collections.abc import Iterator
from math import prod
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
from ray.data.datasource import FileBasedDatasource

__all__ = ["ArrowIPCDatasource", "as_tensors"]


class ArrowIPCDatasource(FileBasedDatasource):
    def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
        # the IPC file format keeps its index in a footer: it needs the whole file to seek in
        yield ipc.open_file(pa.BufferReader(f.read())).read_all()


def as_tensors(batch: pa.Table, names: list[str]) -> pa.Table:
    """``names`` (fixed-shape number columns, nested fixed-size lists) as fixed_shape_tensor
    columns, without copying their values."""
    for name in names:
        i = batch.schema.get_field_index(name)
        arr = batch.column(i).combine_chunks()
        shape, typ = [], arr.type
        while pa.types.is_fixed_size_list(typ):
            shape, typ = [*shape, typ.list_size], typ.value_type
        if not shape:  # already a tensor extension (datasets written before nested lists)
            continue
        values = arr
        for _ in shape:
            values = values.flatten()
        storage = pa.FixedSizeListArray.from_arrays(values, prod(shape))
        tensor = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(typ, shape), storage)
        batch = batch.set_column(i, pa.field(name, tensor.type, nullable=False), tensor)
    return batch
