"""Numpy and Arrow columns into each other without copies, and the output's string columns built as bytes.

Batch scoring keeps a month in Arrow from the parquet reader to the parquet writer and never imports
pandas: pyarrow's own to_numpy() and most multi-argument compute functions import pandas (to check for
pandas inputs), which would cost every run a second of cold start. So columns are read from their
buffers, and the string columns (ride ids, the model version) are written as blocks of bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ride_duration.rides import RIDE_ID_FORMAT

if TYPE_CHECKING:
    import pyarrow as pa

# Arrow types read straight from their buffers, and their numpy twins.
NUMPY_TYPES = {"int32": np.int32, "int64": np.int64, "float": np.float32, "double": np.float64}


def numpy_values(array: pa.Array, dtype) -> np.ndarray:
    """The values of an Arrow array without nulls as numpy, without a copy (nor a pandas import)."""
    dtype = np.dtype(dtype)
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def arrow_array(values: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """A numpy column as an Arrow array without a copy (the twin of numpy_values); null where `valid`
    (a bool per value, if given) is False."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [bitmap, pa.py_buffer(values)])


def fixed_width_strings(blocks: list[np.ndarray]) -> pa.Array:
    """An Arrow string array from blocks of bytes, one string per row of each 2-D uint8 block, in order."""
    import pyarrow as pa

    offsets = [np.zeros(1, dtype=np.int32)]
    for block in blocks:  # a block of m rows of width w: offsets end + w, end + 2w, ..., end + m*w
        rows, width = block.shape
        offsets.append(np.arange(1, rows + 1, dtype=np.int32) * np.int32(width) + offsets[-1][-1])
    data = [np.ascontiguousarray(block).ravel() for block in blocks]
    data = data[0] if len(data) == 1 else np.concatenate(data) if data else np.empty(0, dtype=np.uint8)
    count = sum(len(block) for block in blocks)
    return pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(np.concatenate(offsets)), pa.py_buffer(data)])


def repeated(text: str, n: int) -> pa.Array:
    """The same string n times, as an Arrow string array."""
    data = np.frombuffer(text.encode(), dtype=np.uint8)
    return fixed_width_strings([np.broadcast_to(data, (n, data.size))])


FOUR_DIGITS = np.array([list(f"{i:04d}".encode()) for i in range(10_000)], dtype=np.uint8)  # "0000".."9999"


def ride_id_prefix(year: int, month: int) -> bytes:
    """What every ride id of a month starts with: RIDE_ID_FORMAT up to its row number, which comes last."""
    if not RIDE_ID_FORMAT.endswith("{row}"):
        raise ValueError(f"ride ids are built as a prefix and the row: {RIDE_ID_FORMAT!r} must end with {{row}}")
    return RIDE_ID_FORMAT.format(year=year, month=month, row="").encode()


def ride_ids(year: int, month: int, first_row: int, n: int) -> pa.Array:
    """ride_duration.rides.ride_id for rows first_row .. first_row + n - 1, as an Arrow string array.

    Rows whose numbers have the same count of digits are one block of bytes, a row per ride: the
    prefix, then the digits, written four at a time for all rows at once from a table of "0000".."9999".
    """
    prefix = np.frombuffer(ride_id_prefix(year, month), dtype=np.uint8)
    blocks = []
    start, end = first_row, first_row + n
    while start < end:
        digits = len(str(start))
        stop = min(end, 10**digits)
        rest = np.arange(start, stop, dtype=np.int32)  # int32 divides faster than int64; rows < 2**31
        block = np.empty((stop - start, prefix.size + digits), dtype=np.uint8)
        block[:, : prefix.size] = prefix
        done = 0  # digits written, from the last one
        while done < digits:
            rest, four = np.divmod(rest, 10_000)
            width = min(4, digits - done)
            last = block.shape[1] - done
            block[:, last - width : last] = np.take(FOUR_DIGITS, four, axis=0)[:, 4 - width :]
            done += width
        blocks.append(block)
        start = stop
    return fixed_width_strings(blocks)
