"""The read-only view of one committed store state: its shards and docid lookup, by global row.

Rows are numbered globally in shard order (shard ``s`` holds rows ``starts[s] ..
starts[s] + count - 1``). :class:`StoreRows` memory-maps everything a manifest lists and answers
the row questions every reader asks (which row holds a docid, which docid a row holds, the reps
or pooled vectors of some rows); :class:`~mixencoder.store.CandidateStore` serves lookups and
search through it and :mod:`mixencoder.store.ann` builds its index from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..models.base import CandidateReps
from ._io import lookup_sorted, open_npy
from .errors import StoreCorruptError
from .shard import Shard


@dataclass(frozen=True)
class StoreRows:
    """Memory-mapped rows of a store as one ``manifest.json`` describes them.

    Attributes:
        path: the store directory.
        manifest: the parsed manifest (shared, not copied: treat it as read-only).
        shards: the opened shards, in row order.
        starts: ``(len(shards),)`` int64, the global row of each shard's row 0.
        sorted_docids: ``(count,)`` 'S<n>' memmap, every docid sorted bytewise.
        sorted_rows: ``(count,)`` int64 memmap, the row of each of ``sorted_docids``.
    """

    path: Path
    manifest: dict[str, Any]
    shards: tuple[Shard, ...]
    starts: np.ndarray
    sorted_docids: np.ndarray
    sorted_rows: np.ndarray

    @classmethod
    def open(cls, path: Path, manifest: dict[str, Any]) -> StoreRows:
        """Map the shards and the lookup index ``manifest`` lists, with the cheap checks
        (presence, byte size and ``.npy`` header of every file; counts that agree)."""
        dtype = np.dtype(manifest["dtype"])
        shards, row = [], 0
        for entry in manifest["shards"]:
            shards.append(
                Shard.open(path, entry, row, dim=manifest["dim"],
                           pooled_dim=manifest["pooled_dim"], dtype=dtype)
            )
            row += shards[-1].count
        index_dir = path / manifest["index"]["name"]
        files = manifest["index"]["files"]
        arrays = {name: open_npy(index_dir / name, files[name]) for name in files}
        if len(arrays["dead_rows.npy"]):
            raise StoreCorruptError(
                f"store at {path} lists {len(arrays['dead_rows.npy'])} superseded rows in "
                f"{index_dir.name}/dead_rows.npy (written by add(replace=True), which this "
                "version no longer has); rebuild the store with mode='overwrite'."
            )
        sorted_docids, sorted_rows = arrays["docids_sorted.npy"], arrays["rows_sorted.npy"]
        if not len(sorted_docids) == len(sorted_rows) == manifest["count"] == row:
            raise StoreCorruptError(
                f"store at {path} is inconsistent: the manifest says {manifest['count']} "
                f"candidates, the lookup index has {len(sorted_docids)}, the shards hold {row} "
                "rows. Rebuild the store."
            )
        starts = np.array([s.start for s in shards], dtype=np.int64)
        return cls(path, manifest, tuple(shards), starts, sorted_docids, sorted_rows)

    @property
    def num_rows(self) -> int:
        """Rows (= candidates) in all shards."""
        return int(self.manifest["count"])

    @property
    def generation(self) -> int:
        """The lookup index generation: it grows by one at every commit."""
        return int(self.manifest["index"]["generation"])

    @property
    def dim(self) -> int:
        """Dimension of the stored multi-vector reps."""
        return int(self.manifest["dim"])

    @property
    def pooled_dim(self) -> int | None:
        """Dimension of the pooled vectors, or None if the store keeps none."""
        return self.manifest["pooled_dim"]

    @property
    def dtype(self) -> str:
        """On-disk dtype of the vectors: ``"float16"`` or ``"float32"``."""
        return str(self.manifest["dtype"])

    @property
    def search_metric(self) -> str:
        """``"ip"`` or ``"cosine"`` (stores written before the key existed: "ip")."""
        return str(self.manifest.get("search_metric", "ip"))

    def rows_of(self, docids: Sequence[str]) -> np.ndarray:
        """Global row of each docid (one vectorised binary search); -1 where absent."""
        pos = lookup_sorted(self.sorted_docids, [d.encode("utf-8") for d in docids])
        rows = np.full(len(pos), -1, dtype=np.int64)
        rows[pos >= 0] = self.sorted_rows[pos[pos >= 0]]
        return rows

    def _by_shard(self, rows: np.ndarray) -> list[tuple[Shard, np.ndarray, np.ndarray]]:
        """``(shard, positions in rows, rows local to the shard)`` for each shard touched."""
        shard_of = np.searchsorted(self.starts, rows, side="right") - 1
        # Group with one sort, not one scan of the request per shard.
        order = np.argsort(shard_of, kind="stable")
        cuts = np.searchsorted(shard_of[order], np.arange(len(self.shards) + 1))
        groups = []
        for s in np.flatnonzero(np.diff(cuts)):
            sel = order[cuts[s] : cuts[s + 1]]
            groups.append((self.shards[s], sel, rows[sel] - self.shards[s].start))
        return groups

    def docids_of(self, rows: np.ndarray) -> list[str]:
        """The docid of each global row."""
        out = np.empty(len(rows), dtype=object)
        for shard, sel, local in self._by_shard(rows):
            out[sel] = list(shard.docids[local])
        return [b.decode("utf-8") for b in out]

    def pooled_of(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), pooled_dim)`` float32 pooled vectors of the given global rows."""
        return self._pooled(len(rows), self._by_shard(rows)).astype(np.float32, copy=False)

    def _pooled(self, n: int, groups: list[tuple[Shard, np.ndarray, np.ndarray]]) -> np.ndarray:
        """The pooled vectors in the store's dtype (callers cast once)."""
        out = np.empty((n, self.pooled_dim or 0), dtype=np.dtype(self.dtype))
        for shard, sel, local in groups:
            assert shard.pooled is not None
            out[sel] = shard.pooled.view(np.ndarray)[local]  # np.memmap indexing is slow
        return out

    def gather(self, rows: np.ndarray) -> CandidateReps:
        """The reps of the given global rows as float32 tensors, zero-padded to the longest."""
        n = len(rows)
        groups = self._by_shard(rows)
        begins = np.zeros(n, dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        for shard, sel, local in groups:
            offsets = shard.offsets.view(np.ndarray)
            begins[sel], lengths[sel] = offsets[local], offsets[local + 1] - offsets[local]
        m = int(lengths.max()) if n else 0
        # Copy in the store's dtype and cast once with torch: numpy's fancy-index assignment
        # that also casts float16 to float32 is the slow step (bench_store's floor ratio).
        vectors = np.zeros((n, m, self.dim), dtype=np.dtype(self.dtype))
        for shard, sel, _ in groups:
            lens = lengths[sel]
            source = shard.vectors.view(np.ndarray)
            if (lens == m).all():
                # Every candidate has m vectors (any fixed-k model): one block copy, no padding.
                flat_rows = (begins[sel][:, None] + np.arange(m)).ravel()
                vectors[sel] = source[flat_rows].reshape(len(sel), m, self.dim)
            else:
                # Flatten the ranges [begin_i, begin_i + len_i) into one fancy index into the
                # mmap, so each shard costs one read call whatever the number of candidates.
                within = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
                vectors[np.repeat(sel, lens), within] = source[np.repeat(begins[sel], lens) + within]
        pooled = None if self.pooled_dim is None else torch.from_numpy(self._pooled(n, groups)).float()
        return CandidateReps(
            vectors=torch.from_numpy(vectors).float(), lengths=torch.from_numpy(lengths), pooled=pooled
        )
