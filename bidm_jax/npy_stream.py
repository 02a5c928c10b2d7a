"""Large arrays in ``.npz`` files without holding them in memory: a writer that streams one
member (``arr_0``) into an uncompressed zip batch by batch, and a reader that returns its rows
in order, a chunk at a time.

``np.savez`` needs the whole array and ``np.load`` of an npz member reads all of it; 50,000
samples at 256x256 are 9.8 GB, and ADM's reference batches are as large. The files written
here are ordinary npz files: ``np.load(path)["arr_0"]`` (and ADM's evaluator) read them.

Format (numpy's ``.npy`` inside a zip, NEP 1): magic, header (dtype, C order, shape), then the
row-major bytes. The zip member is stored (no compression) with ZIP64 records, so members
over 4 GB work.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from bidm_jax.errors import CorruptFile, one_line

__all__ = ["NpzArrayWriter", "NpzArrayReader", "npz_keys"]


def npz_keys(path: str, what: str = "array") -> list[str]:
    """The array names of an npz (``arr_0``, ``mu`` ...) read from the zip directory only."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {what} at {path!r}")
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as e:
        raise CorruptFile(f"{path} is not a readable {what} npz (truncated or corrupt): "
                          f"{type(e).__name__}: {one_line(e)}") from None


class NpzArrayWriter:
    """Writes one array of known ``shape`` and ``dtype`` as member ``key`` of ``path`` from
    consecutive row blocks (``write(rows)``, rows (b, *shape[1:])). The file appears at
    ``path`` only when ``close()`` finds every row written (written as ``path + '.tmp'`` and
    renamed), so a reader never sees a partial file.
    """

    def __init__(self, path: str, shape, dtype, key: str = "arr_0"):
        self.path, self.shape, self.dtype = path, tuple(int(s) for s in shape), np.dtype(dtype)
        self.rows = 0
        self._tmp = path + ".tmp"
        self._zip = zipfile.ZipFile(self._tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
        self._f = self._zip.open(f"{key}.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_1_0(self._f, {
            "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
            "shape": self.shape})

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.rows + len(rows) > self.shape[0]:
            raise ValueError(f"rows {rows.shape} do not fit {self.shape} after {self.rows} rows")
        self._f.write(rows.tobytes())
        self.rows += len(rows)

    def close(self, extra: dict | None = None) -> str:
        """Finishes the file; ``extra``: further (small) arrays stored beside it."""
        self._f.close()
        if self.rows != self.shape[0]:
            self.abort()
            raise ValueError(f"{self.path}: {self.rows} of {self.shape[0]} rows written")
        for name, value in (extra or {}).items():
            with self._zip.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
        self._zip.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drops the partial file (after an error)."""
        for close in (self._f.close, self._zip.close):
            try:
                close()
            except Exception:  # the error being handled is the one to report
                pass
        if os.path.exists(self._tmp):
            os.remove(self._tmp)


class NpzArrayReader:
    """Rows of member ``key`` of an npz (or of a ``.npy`` file), read in order.

    ``shape`` and ``dtype`` come from the header alone; ``read(count)`` returns the next
    ``count`` rows (fewer at the end); ``batches(size, limit)`` iterates over them. Memory:
    one chunk. Compressed members work too (zip decompresses as it reads).
    """

    def __init__(self, path: str, key: str = "arr_0", what: str = "array"):
        self.path, self.key, self.what = path, key, what
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {what} at {path!r}")
        self._zip = None
        try:
            if path.endswith(".npy"):
                self._f = open(path, "rb")
            else:
                self._zip = zipfile.ZipFile(path)
                if f"{key}.npy" not in self._zip.namelist():
                    found = [n[:-4] for n in self._zip.namelist()]
                    self.close()
                    raise CorruptFile(f"{path} has no {key} (found {found})")
                self._f = self._zip.open(f"{key}.npy")
            version = np.lib.format.read_magic(self._f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, self.dtype = read_header(self._f)
        except CorruptFile:
            raise
        except Exception as e:  # zipfile / numpy format errors alike
            self.close()
            raise CorruptFile(f"{path} is not a readable {what} npz (truncated or corrupt): "
                              f"{type(e).__name__}: {one_line(e)}") from None
        if fortran or self.dtype.hasobject:
            self.close()
            raise CorruptFile(f"{path}: {key} must be a C-ordered plain array")
        self.shape = tuple(shape)
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.position = 0

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, count: int) -> np.ndarray:
        count = max(0, min(count, self.shape[0] - self.position))
        data = self._f.read(count * self._row_bytes)
        if len(data) != count * self._row_bytes:
            done = self.position + len(data) // max(1, self._row_bytes)
            raise CorruptFile(f"{self.path}: {self.key} ends after row {done} of "
                              f"{self.shape[0]} (truncated)")
        self.position += count
        return np.frombuffer(data, self.dtype).reshape((count,) + self.shape[1:])

    def batches(self, size: int, limit: int = 0):
        """Yields consecutive blocks of at most ``size`` rows, the first ``limit`` rows
        (0 = all)."""
        end = min(limit, self.shape[0]) if limit else self.shape[0]
        while self.position < end:
            yield self.read(min(size, end - self.position))

    def close(self) -> None:
        for f in (getattr(self, "_f", None), self._zip):
            if f is not None:
                f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
