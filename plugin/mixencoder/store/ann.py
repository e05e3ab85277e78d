"""Approximate dense search over a store's pooled vectors: one FAISS IVF index for all shards.

Exact search (:meth:`CandidateStore.search`) scans every pooled vector: ~0.3 s per query at a
million candidates on a CPU. An IVF index clusters the vectors into ``nlist`` lists and scans
only the ``nprobe`` lists nearest the query, for a recall that ``nprobe`` trades against time.

The index stores the vectors themselves, not a lossy code: float16 stores use an fp16 scalar
quantizer on the raw vectors (``by_residual=False``; lossless for values that are already
float16, half the bytes of a flat copy), float32 stores an ``IndexIVFFlat``. So a candidate the
index finds gets exactly the score exact search gives it, and recall is lost only to lists that
were not probed. The file is memory-mapped, so loading it costs no resident memory up front.

Layout (derived data, not listed in ``manifest.json``)::

    store/ann-<generation>/index.faiss   the IVF index; ids are the store's global rows
    store/ann-<generation>/ann.json      parameters and the store state it was built from

It is tied to the lookup index generation it was built from: after :meth:`CandidateStore.add`
the generation changes and approximate search refuses the stale index until it is rebuilt.
Everything here reads the store through its :class:`~mixencoder.store.rows.StoreRows` view.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ._io import atomic_write_json, fsync_dir, json_text, read_json, sha256_file
from .rows import StoreRows
from .shard import TMP_PREFIX, l2_normalise, write_faiss_index

logger = logging.getLogger(__name__)

ANN_PREFIX = "ann-"
ANN_FORMAT_VERSION = 1
_KINDS = ("ivf",)
_ADD_CHUNK = 65_536  # vectors converted to float32 and added per step (bounds the memory)
_MIN_POINTS_PER_LIST = 39  # FAISS warns below this many training points per centroid


@dataclass
class AnnIndex:
    """An opened approximate index.

    Attributes:
        path: its directory.
        info: the parsed ``ann.json``.
        index: the FAISS index (memory-mapped).
    """

    path: Path
    info: dict[str, Any]
    index: Any

    def search(
        self, queries: np.ndarray, k: int, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, global rows)`` of the top ``k`` per query; rows are -1 past the hits."""
        ivf = faiss.extract_index_ivf(self.index)
        ivf.nprobe = int(nprobe if nprobe is not None else self.info["nprobe"])
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), int(k))


def default_nlist(rows: int) -> int:
    """~sqrt(N) lists, at least 39 training points each.

    FAISS suggests 4 sqrt(N) to 16 sqrt(N) for speed; sqrt(N) keeps k-means training and
    assignment affordable on a CPU (minutes at 10^6 vectors) and lists long enough (~sqrt(N)
    vectors) for top-1000 searches, which must probe at least 1000 vectors anyway.
    """
    return int(max(1, min(round(math.sqrt(rows)), rows // _MIN_POINTS_PER_LIST, 65_536)))


def build_ann_index(
    store: StoreRows,
    *,
    kind: str = "ivf",
    nlist: int | None = None,
    nprobe: int = 32,
    train_size: int | None = None,
    seed: int = 0,
) -> AnnIndex:
    """Build (or rebuild) the store's approximate index over its live pooled vectors.

    Args:
        store: the rows of an opened store with pooled vectors (``CandidateStore.rows``).
        kind: ``"ivf"`` (the only kind so far).
        nlist: IVF lists; default :func:`default_nlist`.
        nprobe: lists scanned per query by default (``search(..., nprobe=)`` overrides it).
        train_size: vectors sampled to train the clustering; default ``50 * nlist``.
        seed: seeds the training sample and k-means.

    Returns:
        The opened index; :meth:`CandidateStore.search` with ``approximate=True`` uses it.

    Raises:
        ValueError: the store has no pooled vectors, or a bad argument.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if store.pooled_dim is None:
        raise ValueError(
            f"store at {store.path} has no pooled vectors (built with with_pooled=False); an "
            "approximate index needs them"
        )
    live_rows = store.num_rows
    nlist = default_nlist(live_rows) if nlist is None else int(nlist)
    if not 1 <= nlist <= live_rows:
        raise ValueError(f"nlist must be in [1, {live_rows}] (the live candidates), got {nlist}")
    if nprobe < 1:
        raise ValueError(f"nprobe must be >= 1, got {nprobe}")
    start = time.perf_counter()
    d = store.pooled_dim
    quantizer = faiss.IndexFlatIP(d)
    if store.dtype == "float16":
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, d, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        # Encode the vectors, not their residuals from the centroid: fp16 residuals would round
        # differently from the stored values, and scores would drift from exact search's.
        index.by_residual = False
        name = "ivf-sqfp16"
    else:
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        name = "ivf-flat"

    rng = np.random.default_rng(seed)
    train_size = min(live_rows, train_size or 50 * nlist)
    sample = np.sort(rng.choice(live_rows, size=train_size, replace=False))
    train = store.pooled_of(sample)
    cosine = store.search_metric == "cosine"
    if cosine:  # the index holds what the flat copies hold: unit-norm pooled vectors
        train = l2_normalise(train)
    index.cp.seed = seed
    index.train(train)
    del train

    for shard in store.shards:
        for lo in range(0, shard.count, _ADD_CHUNK):
            hi = min(lo + _ADD_CHUNK, shard.count)
            x = np.ascontiguousarray(shard.pooled[lo:hi], dtype=np.float32)
            if cosine:
                x = l2_normalise(x)
            index.add_with_ids(x, np.arange(shard.start + lo, shard.start + hi, dtype=np.int64))

    generation = store.generation
    final = store.path / f"{ANN_PREFIX}{generation:05d}"
    tmp = store.path / f"{TMP_PREFIX}{ANN_PREFIX}{generation:05d}-{os.getpid()}"
    # Temp dirs of builds that were killed (any pid: only one process writes a store at a time).
    for leftover in store.path.glob(f"{TMP_PREFIX}{ANN_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir()
    try:
        info = _write_ann_dir(tmp, index, store, name, nlist, nprobe, len(sample), seed,
                              generation, start)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)  # the commit point: an ann-* directory is always complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # e.g. a full disk: leave no temp dir behind
        raise
    fsync_dir(store.path)
    for old in store.path.glob(f"{ANN_PREFIX}*"):  # indexes of earlier generations are stale
        if old != final and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    logger.info(
        "built %s index of %s: %d vectors, nlist %d, %.1fs",
        name,
        store.path,
        index.ntotal,
        nlist,
        info["build_s"],
    )
    del index
    return open_ann_index(store)


def _write_ann_dir(
    tmp: Path,
    index: Any,
    store: StoreRows,
    name: str,
    nlist: int,
    nprobe: int,
    train_size: int,
    seed: int,
    generation: int,
    start: float,
) -> dict[str, Any]:
    """Write ``index.faiss`` and ``ann.json`` into the temp directory ``tmp``; return the info."""
    write_faiss_index(index, tmp / "index.faiss")
    info = {
        "format_version": ANN_FORMAT_VERSION,
        "kind": name,
        "nlist": nlist,
        "nprobe": int(nprobe),
        "train_size": int(train_size),
        "seed": seed,
        "search_metric": store.search_metric,
        "count": int(index.ntotal),
        "index_generation": generation,
        "rows": store.num_rows,
        "bytes": (tmp / "index.faiss").stat().st_size,
        "sha256": sha256_file(tmp / "index.faiss"),  # checked by `mixencoder store verify`
        "build_s": time.perf_counter() - start,
    }
    info[INFO_CHECKSUM] = info_checksum(info)
    atomic_write_json(tmp / "ann.json", info)
    fsync_dir(tmp)
    return info


#: Key of ann.json holding the sha256 of the rest of it (checked by ``mixencoder store verify``).
INFO_CHECKSUM = "info_sha256"


def info_checksum(info: dict[str, Any]) -> str:
    """sha256 of the canonical JSON text of ``info`` without its own checksum key."""
    body = {k: v for k, v in info.items() if k != INFO_CHECKSUM}
    return hashlib.sha256(json_text(body).encode("utf-8")).hexdigest()


def open_ann_index(store: StoreRows) -> AnnIndex:
    """Open the approximate index of ``store`` (``CandidateStore.rows``), memory-mapped,
    checking it is not stale.

    Raises:
        FileNotFoundError: none was built (see :func:`build_ann_index`).
        ValueError: it was built for an earlier state of the store.
    """
    generation = store.generation
    path = store.path / f"{ANN_PREFIX}{generation:05d}"
    if not (path / "ann.json").is_file():
        older = sorted(store.path.glob(f"{ANN_PREFIX}*"))
        if older:
            raise ValueError(
                f"the approximate index of {store.path} ({older[-1].name}) was built before the "
                "store last changed (add()); rebuild it with store.build_ann_index()"
            )
        raise FileNotFoundError(
            f"store at {store.path} has no approximate index; build one with "
            "store.build_ann_index() (or search with approximate=False)"
        )
    info = read_json(path / "ann.json")
    if info.get("rows") != store.num_rows or info.get("index_generation") != generation:
        raise ValueError(
            f"the approximate index in {path} does not match the store (built for "
            f"{info.get('rows')} rows, the store has {store.num_rows}); rebuild it with "
            "store.build_ann_index()"
        )
    if info.get("search_metric", "ip") != store.search_metric:
        raise ValueError(
            f"the approximate index in {path} was built for search_metric "
            f"{info.get('search_metric', 'ip')!r}, the store's is {store.search_metric!r}; "
            "rebuild it with store.build_ann_index()"
        )
    index_path = path / "index.faiss"
    if not index_path.is_file() or (
        "bytes" in info and index_path.stat().st_size != info["bytes"]
    ):
        raise ValueError(
            f"{index_path} is missing or does not have the {info.get('bytes')} bytes ann.json "
            "recorded (truncated or modified); rebuild it with store.build_ann_index()"
        )
    try:
        index = faiss.read_index(str(index_path), faiss.IO_FLAG_MMAP)
    except RuntimeError as e:
        raise ValueError(
            f"{index_path} is not a readable FAISS index ({str(e).strip().splitlines()[-1]}); "
            "rebuild it with store.build_ann_index()"
        ) from e
    if index.ntotal != info["count"]:
        raise ValueError(
            f"{path / 'index.faiss'} holds {index.ntotal} vectors, ann.json says {info['count']};"
            " the file is damaged. Rebuild it with store.build_ann_index()"
        )
    return AnnIndex(path=path, info=info, index=index)
