"""One shard of a candidate store: a directory of row-aligned files.

A shard holds ``count`` candidates in row order::

    shard-00000/
      vectors.npy   (total_vectors, dim)  store dtype; candidate i owns rows offsets[i]:offsets[i+1]
      offsets.npy   (count + 1,) int64
      docids.npy    (count,) 'S<n>'       the docid of each row, UTF-8
      pooled.npy    (count, pooled_dim)   store dtype  [only if the store keeps pooled vectors]
      pooled.faiss  IndexFlatIP over the same pooled vectors (as float32) for dense search;
                    L2-normalised first when the store's search_metric is "cosine"
      shard.json    this shard's manifest entry (sizes, sha256, shapes), copied into manifest.json

:class:`ShardWriter` streams a shard into a hidden temp directory and renames it into place when
complete, so "the shard directory exists under its final name" <=> "the shard is complete".
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np

from ..models.base import CandidateReps
from ._io import (
    NpyAppender,
    as_fixed_bytes,
    atomic_write_json,
    blob_entry,
    check_size,
    fsync_dir,
    fsync_file,
    npy_entry,
    open_npy,
)
from .errors import StoreCorruptError

logger = logging.getLogger(__name__)

SHARD_PREFIX = "shard-"
SEARCH_METRICS = ("ip", "cosine")


def check_search_metric(metric: Any) -> str:
    """Validate a store's ``search_metric`` (``"ip"`` or ``"cosine"``) and return it."""
    if metric not in SEARCH_METRICS:
        raise ValueError(f"search_metric must be one of {SEARCH_METRICS}, got {metric!r}")
    return str(metric)


def entry_search_metric(entry: dict[str, Any]) -> str:
    """The metric of a shard's manifest entry; entries written before it existed are "ip"."""
    return str(entry.get("search_metric", "ip"))


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Float32 copy of ``x`` with unit-norm rows (all-zero rows stay zero)."""
    x = np.array(x, dtype=np.float32, copy=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return np.ascontiguousarray(x)
TMP_PREFIX = ".tmp-"


def write_faiss_index(index: Any, path: Path) -> None:
    """``faiss.write_index`` + fsync, with a failed write (e.g. a full disk) as an OSError.

    FAISS reports I/O errors as a C++ exception (a RuntimeError quoting its source line); the
    caller's clean-up and the user both deal better with the OS error it stands for.
    """
    try:
        faiss.write_index(index, str(path))
    except RuntimeError as e:
        raise OSError(
            f"could not write the FAISS index {path} (is the disk full?): {str(e).strip()}"
        ) from e
    fsync_file(path)


def shard_name(number: int) -> str:
    """``shard-00042``: zero-padded so directory listings sort in build order."""
    return f"{SHARD_PREFIX}{number:05d}"


def shard_number(name: str) -> int | None:
    """The number of a shard directory name, or None if ``name`` is not one."""
    if not name.startswith(SHARD_PREFIX):
        return None
    digits = name[len(SHARD_PREFIX) :]
    return int(digits) if digits.isdigit() else None


def reps_to_arrays(
    reps: CandidateReps,
    n_texts: int,
    dtype: np.dtype,
    with_pooled: bool,
    dim: int | None,
    pooled_dim: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate a model's output and flatten it to what a shard stores.

    Returns:
        ``(flat_vectors (sum(lengths), dim), lengths (n,), pooled (n, pooled_dim) or None)``,
        vectors and pooled cast to the store dtype.
    """
    if not isinstance(reps, CandidateReps):
        raise TypeError(
            f"model.encode_candidates must return CandidateReps, got {type(reps).__name__}"
        )
    vectors = reps.vectors.detach().cpu().float().numpy()
    lengths = reps.lengths.detach().cpu().numpy().astype(np.int64)
    if vectors.ndim != 3 or vectors.shape[0] != n_texts or lengths.shape != (n_texts,):
        raise ValueError(
            f"model.encode_candidates was given {n_texts} texts but returned vectors of shape "
            f"{tuple(vectors.shape)} and lengths of shape {tuple(lengths.shape)}; expected "
            f"({n_texts}, m, d) and ({n_texts},)"
        )
    if lengths.size and (lengths.min() < 0 or lengths.max() > vectors.shape[1]):
        raise ValueError(
            f"model.encode_candidates returned lengths outside [0, {vectors.shape[1]}] "
            f"(min {lengths.min()}, max {lengths.max()})"
        )
    _check_dim(vectors.shape[2], dim, "vectors")
    # Row-major boolean indexing keeps each candidate's real vectors contiguous and in order.
    mask = np.arange(vectors.shape[1])[None, :] < lengths[:, None]
    flat = _cast(vectors[mask], dtype, "vectors")

    pooled = None
    if with_pooled:
        if reps.pooled is None:
            raise ValueError(
                "the store keeps pooled vectors (with_pooled=True) but model.encode_candidates "
                "returned reps.pooled=None; build with with_pooled=False for this model"
            )
        pooled_f = reps.pooled.detach().cpu().float().numpy()
        if pooled_f.ndim != 2 or pooled_f.shape[0] != n_texts:
            raise ValueError(
                f"model.encode_candidates returned pooled vectors of shape "
                f"{tuple(pooled_f.shape)}; expected ({n_texts}, d_pooled)"
            )
        _check_dim(pooled_f.shape[1], pooled_dim, "pooled vectors")
        pooled = _cast(pooled_f, dtype, "pooled vectors")
    return flat, lengths, pooled


def _check_dim(got: int, stored: int | None, what: str) -> None:
    if stored is not None and got != stored:
        raise ValueError(
            f"model.encode_candidates returned {got}-dim {what} but this store holds "
            f"{stored}-dim {what}; the model changed mid-build or does not match the store"
        )


def _cast(arr: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    out = arr.astype(dtype)
    if not np.isfinite(out).all():
        raise ValueError(
            f"the model's {what} contain NaN or inf after casting to {np.dtype(dtype).name}"
            + (
                " (float16 overflows beyond +-65504: build with dtype='float32')"
                if np.dtype(dtype) == np.float16 and np.isfinite(arr).all()
                else ""
            )
        )
    return out


class ShardWriter:
    """Streams candidates into a temp directory, then publishes it atomically as one shard."""

    def __init__(
        self,
        root: Path,
        number: int,
        *,
        dtype: np.dtype,
        with_pooled: bool,
        origin: str,
        dim: int | None = None,
        pooled_dim: int | None = None,
        search_metric: str = "ip",
    ) -> None:
        self.search_metric = check_search_metric(search_metric)
        self.name = shard_name(number)
        self.final_dir = root / self.name
        self.tmp_dir = root / f"{TMP_PREFIX}{self.name}-{os.getpid()}"
        self.dtype = np.dtype(dtype)
        self.with_pooled = with_pooled
        self.origin = origin
        self.dim = dim
        self.pooled_dim = pooled_dim
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir(parents=True)
        self._docids: list[bytes] = []
        self._lengths: list[np.ndarray] = []
        self._vectors: NpyAppender | None = None
        self._pooled: NpyAppender | None = None
        self._index: faiss.IndexFlatIP | None = None

    @property
    def count(self) -> int:
        """Candidates written so far."""
        return len(self._docids)

    def add(self, keys: Sequence[bytes], reps: CandidateReps) -> None:
        """Append one encoded batch; ``keys`` are the batch's UTF-8 docids."""
        flat, lengths, pooled = reps_to_arrays(
            reps, len(keys), self.dtype, self.with_pooled, self.dim, self.pooled_dim
        )
        if self._vectors is None:  # first batch fixes the dims when the caller did not
            self.dim = flat.shape[1]
            self._vectors = NpyAppender(self.tmp_dir / "vectors.raw", self.dtype, self.dim)
            if pooled is not None:
                self.pooled_dim = pooled.shape[1]
                self._pooled = NpyAppender(self.tmp_dir / "pooled.raw", self.dtype, self.pooled_dim)
                self._index = faiss.IndexFlatIP(self.pooled_dim)
        self._vectors.append(flat)
        if pooled is not None:
            assert self._pooled is not None and self._index is not None
            self._pooled.append(pooled)
            # Index the stored (rounded) values so search scores match what gather returns
            # (for "cosine": the cosines of those values).
            x = np.ascontiguousarray(pooled, dtype=np.float32)
            if self.search_metric == "cosine":
                x = l2_normalise(x)
            self._index.add(x)
        self._lengths.append(lengths)
        self._docids.extend(keys)

    def finish(self) -> dict[str, Any]:
        """Write the remaining files, rename the shard into place, and return its entry."""
        if self.count == 0 or self._vectors is None:
            raise ValueError("refusing to write an empty shard")
        if self.final_dir.exists():
            raise FileExistsError(
                f"{self.final_dir} already exists; a concurrent writer may be using this store"
            )
        d = self.tmp_dir
        lengths = np.concatenate(self._lengths)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        np.save(d / "offsets.npy", offsets)
        np.save(d / "docids.npy", as_fixed_bytes(self._docids))
        self._vectors.finish(d / "vectors.npy")  # finish() flushes the streamed files itself
        fsync_file(d / "offsets.npy")
        fsync_file(d / "docids.npy")
        files = {f: npy_entry(d / f) for f in ("vectors.npy", "offsets.npy", "docids.npy")}
        if self._pooled is not None:
            assert self._index is not None
            self._pooled.finish(d / "pooled.npy")
            write_faiss_index(self._index, d / "pooled.faiss")
            files["pooled.npy"] = npy_entry(d / "pooled.npy")
            files["pooled.faiss"] = blob_entry(d / "pooled.faiss")
        entry = {
            "name": self.name,
            "origin": self.origin,
            "count": self.count,
            "total_vectors": int(offsets[-1]),
            "dim": self.dim,
            "pooled_dim": self.pooled_dim if self.with_pooled else None,
            "search_metric": self.search_metric,
            "files": files,
        }
        atomic_write_json(d / "shard.json", entry)
        fsync_dir(d)
        os.rename(d, self.final_dir)  # the commit point of this shard
        fsync_dir(self.final_dir.parent)
        logger.debug("wrote %s (%d candidates)", self.final_dir, self.count)
        return entry

    def abort(self) -> None:
        """Drop the unfinished shard (its temp directory)."""
        for appender in (self._vectors, self._pooled):
            if appender is not None:
                appender.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


@dataclass
class Shard:
    """A finished shard opened for reading; every array is memory-mapped."""

    name: str
    start: int  # global row number of this shard's row 0
    count: int
    vectors: np.ndarray
    offsets: np.ndarray
    docids: np.ndarray
    pooled: np.ndarray | None
    faiss_path: Path | None
    _index: Any = field(default=None, repr=False)

    @property
    def pooled_dim(self) -> int | None:
        """Dimension of the pooled vectors, or None if the shard has none."""
        return None if self.pooled is None else int(self.pooled.shape[1])

    @classmethod
    def open(
        cls,
        root: Path,
        entry: dict[str, Any],
        start: int,
        *,
        dim: int,
        pooled_dim: int | None,
        dtype: np.dtype,
    ) -> Shard:
        """Open a shard described by its manifest entry, with the cheap consistency checks."""
        d = root / entry["name"]
        files = entry["files"]
        count, total = int(entry["count"]), int(entry["total_vectors"])
        expected = {
            "vectors.npy": ([total, dim], np.dtype(dtype).str),
            "offsets.npy": ([count + 1], np.dtype(np.int64).str),
            "docids.npy": ([count], None),
        }
        if pooled_dim is not None:
            expected["pooled.npy"] = ([count, pooled_dim], np.dtype(dtype).str)
        arrays = {}
        for fname, (shape, dt) in expected.items():
            if fname not in files:
                raise StoreCorruptError(f"manifest entry of {d} does not list {fname}")
            rec = files[fname]
            if rec["shape"] != shape or (dt is not None and rec["dtype"] != dt):
                raise StoreCorruptError(
                    f"manifest records {d / fname} with shape {rec['shape']} dtype "
                    f"{rec['dtype']}, inconsistent with the store (expected shape {shape})"
                )
            arrays[fname] = open_npy(d / fname, rec)
        offsets = arrays["offsets.npy"]
        if count and (offsets[0] != 0 or offsets[-1] != total):
            raise StoreCorruptError(
                f"{d / 'offsets.npy'} does not span [0, {total}] (got [{offsets[0]}, "
                f"{offsets[-1]}]); the file is corrupt. Rebuild the store."
            )
        faiss_path = None
        if pooled_dim is not None:
            faiss_path = d / "pooled.faiss"
            check_size(faiss_path, files["pooled.faiss"])
        return cls(
            name=entry["name"],
            start=start,
            count=count,
            vectors=arrays["vectors.npy"],
            offsets=offsets,
            docids=arrays["docids.npy"],
            pooled=arrays.get("pooled.npy"),
            faiss_path=faiss_path,
        )

    def faiss_index(self) -> faiss.Index:
        """The shard's FAISS index, opened on first use (search is the only caller).

        FAISS >= 1.11 can memory-map a flat index (``IO_FLAG_MMAP_IFC``), so opening is instant
        and the vectors stay in the page cache instead of the process heap; older versions
        read the file into memory.
        """
        if self._index is None:
            if self.faiss_path is None:
                raise ValueError(f"shard {self.name} has no pooled vectors")
            flags = getattr(faiss, "IO_FLAG_MMAP_IFC", 0)
            self._index = faiss.read_index(str(self.faiss_path), flags)
            if self._index.ntotal != self.count:
                raise StoreCorruptError(
                    f"{self.faiss_path} holds {self._index.ntotal} vectors, expected "
                    f"{self.count}; rebuild the store"
                )
        return self._index
