"""Low-level file helpers for the candidate store: atomic writes, hashing, streamed ``.npy``.

Nothing here knows about models or shards; :mod:`.shard` and :mod:`.candidate_store` build on it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import stat
import tokenize
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import StoreCorruptError

_COPY_CHUNK = 16 << 20  # 16 MiB: big enough to stream at disk speed, small enough for RSS


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename or a new file) to disk, where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON so that readers see either the old file or the complete new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json_text(obj))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:
        # A full disk (or a kill of the writer thread) must not leave a half-written temp file.
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def json_text(obj: Any) -> str:
    """The canonical text of a store JSON file (what :func:`atomic_write_json` writes)."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def read_json(path: Path) -> Any:
    """Read a store JSON file; a parse error becomes a :class:`StoreCorruptError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # a flipped byte can be either
        raise StoreCorruptError(
            f"{path} is not valid JSON ({e}); the file is corrupt. Rebuild the store."
        ) from e


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fsync_file(path: Path) -> None:
    """Flush a file's contents to disk before it is renamed into place."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def npy_entry(path: Path) -> dict[str, Any]:
    """The manifest record of a written ``.npy`` file: size, hash, shape and dtype.

    Shape and dtype come from the file's own header, so the record describes what is on disk.
    """
    arr = np.load(path, mmap_mode="r")
    return {
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "shape": list(arr.shape),
        "dtype": arr.dtype.str,
    }


def blob_entry(path: Path) -> dict[str, Any]:
    """The manifest record of a non-``.npy`` file (the FAISS index): size and hash."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def check_size(path: Path, entry: dict[str, Any]) -> None:
    """Cheap check at open: the file exists and has the byte size the manifest recorded."""
    try:
        st = path.stat()  # one stat: no window between "it exists" and "its size"
    except FileNotFoundError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise StoreCorruptError(
            f"store file {path} is missing (the manifest lists it). The store is damaged: "
            "restore the file or rebuild the store with mode='overwrite'."
        )
    size = st.st_size
    if size != entry["bytes"]:
        raise StoreCorruptError(
            f"store file {path} has {size} bytes but the manifest recorded {entry['bytes']}: "
            "it is truncated or was modified. Restore the file or rebuild the store with "
            "mode='overwrite'."
        )


def open_npy(path: Path, entry: dict[str, Any]) -> np.ndarray:
    """Memory-map a store ``.npy`` after checking its size, header shape and dtype.

    Only the header is read, so this costs microseconds whatever the array size. The mapping is
    advised as random-access: gather reads ~1 KB rows scattered over the file, and the kernel's
    default read-around would pull in ~100x more (disk I/O on a cold store, RSS on a warm one).
    """
    check_size(path, entry)
    arr = load_npy_header_checked(path)
    if list(arr.shape) != list(entry["shape"]) or arr.dtype.str != entry["dtype"]:
        raise StoreCorruptError(
            f"store file {path} holds an array of shape {list(arr.shape)} and dtype "
            f"{arr.dtype.str}, but the manifest recorded shape {entry['shape']} and dtype "
            f"{entry['dtype']}. Restore the file or rebuild the store with mode='overwrite'."
        )
    _advise_random(arr)
    return arr


#: What numpy's ``.npy`` header parser raises on a damaged header: it evaluates the header as
#: a Python literal, so a flipped byte can surface as a SyntaxError or a tokenizer error.
NPY_HEADER_ERRORS = (
    ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError, TypeError, KeyError,
    IndexError, RecursionError,
)


def load_npy_header_checked(path: Path) -> np.ndarray:
    """``np.load(path, mmap_mode="r")`` with any header damage as a StoreCorruptError."""
    try:
        return np.load(path, mmap_mode="r")
    except NPY_HEADER_ERRORS as e:
        raise StoreCorruptError(
            f"store file {path} is not a readable .npy array ({type(e).__name__}: {e}). "
            "Restore the file or rebuild the store with mode='overwrite'."
        ) from e


def _advise_random(arr: np.ndarray) -> None:
    mapping = getattr(arr, "_mmap", None)  # np.memmap's underlying mmap.mmap (None if empty)
    if mapping is None or not hasattr(mmap, "MADV_RANDOM"):  # e.g. Windows has no madvise
        return
    try:
        mapping.madvise(mmap.MADV_RANDOM)
    except (OSError, ValueError):
        pass  # only a hint


class NpyAppender:
    """Stream 2-D rows of a fixed dtype into a ``.npy`` file whose row count is unknown upfront.

    Rows go to a raw side file as they arrive (so a shard's vectors never sit in memory); at
    :meth:`finish` the ``.npy`` header is written and the raw bytes are copied behind it. The
    copy costs one extra sequential pass over the shard, which is negligible next to encoding.
    """

    def __init__(self, raw_path: Path, dtype: np.dtype, ncols: int) -> None:
        self.raw_path = raw_path
        self.dtype = np.dtype(dtype)
        self.ncols = ncols
        self.rows = 0
        self._f = open(raw_path, "wb")

    def append(self, arr: np.ndarray) -> None:
        """Append ``(r, ncols)`` rows (already cast to the store dtype)."""
        assert arr.ndim == 2 and arr.shape[1] == self.ncols and arr.dtype == self.dtype
        self._f.write(np.ascontiguousarray(arr).tobytes())
        self.rows += arr.shape[0]

    def finish(self, npy_path: Path) -> None:
        """Write ``npy_path`` = header + the streamed rows, flush it, and drop the raw file."""
        self._f.close()
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.rows, self.ncols),
        }
        with open(npy_path, "wb") as out, open(self.raw_path, "rb") as src:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(src, out, _COPY_CHUNK)
            out.flush()
            os.fsync(out.fileno())
        self.raw_path.unlink()

    def close(self) -> None:
        """Close the raw file without finishing (used when a build is aborted)."""
        if not self._f.closed:
            self._f.close()


# --- docids ----------------------------------------------------------------------------------
# Docids live on disk as fixed-width bytes arrays ('S<n>'): they mmap, sort bytewise and are
# searched with np.searchsorted, so no Python dict of millions of strings is ever built.


def encode_docids(docids: Sequence[Any]) -> list[bytes]:
    """UTF-8 encode docids, rejecting values the fixed-width bytes format cannot round-trip."""
    out = []
    for docid in docids:
        if not isinstance(docid, str):
            raise TypeError(
                f"docids must be str, got {type(docid).__name__} {docid!r}; convert them with "
                "str() (e.g. MS MARCO pids read from a TSV are already strings)."
            )
        if not docid or "\x00" in docid:
            # numpy's 'S' dtype strips trailing NULs, so such ids would not round-trip.
            raise ValueError(f"docid {docid!r} is empty or contains a NUL character")
        out.append(docid.encode("utf-8"))
    return out


def as_fixed_bytes(keys: Sequence[bytes]) -> np.ndarray:
    """A ``(n,)`` 'S<max len>' array of encoded docids."""
    width = max((len(k) for k in keys), default=1)
    return np.array(keys, dtype=f"S{max(width, 1)}")


def lookup_sorted(sorted_keys: np.ndarray, keys: Sequence[bytes]) -> np.ndarray:
    """Positions of ``keys`` in the sorted 'S<n>' array ``sorted_keys``; -1 where absent.

    Vectorised: one ``np.searchsorted`` for all keys. Keys are cast to the array's own dtype
    first, so numpy never promotes (and copies) the possibly memory-mapped array.
    """
    n = len(keys)
    if n == 0 or len(sorted_keys) == 0:
        return np.full(n, -1, dtype=np.int64)
    width = sorted_keys.dtype.itemsize
    # A longer key cannot be stored (casting would silently truncate it), and 'S' drops trailing
    # NULs (b"a\0" would match b"a"); neither can be a stored docid, so both are misses.
    fits = np.array([len(k) <= width and b"\0" not in k for k in keys], dtype=bool)
    query = np.array([k if f else b"" for k, f in zip(keys, fits)], dtype=sorted_keys.dtype)
    # Sorted queries make searchsorted walk the (memory-mapped) keys in order: ~40% faster.
    order = np.argsort(query, kind="stable")
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.searchsorted(sorted_keys, query[order])
    clipped = np.minimum(pos, len(sorted_keys) - 1)
    found = fits & (pos < len(sorted_keys)) & (np.asarray(sorted_keys[clipped]) == query)
    return np.where(found, pos, -1).astype(np.int64)
