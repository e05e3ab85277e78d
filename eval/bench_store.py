"""Benchmark a candidate store far larger than memory: open, gather, dense search, disk bytes.

    python eval/bench_store.py --rows 1000000 --json work/bench_store/1M.json

The store holds ``--rows`` candidates made from real vectors: the 5,396 MS MARCO DL20 passages
encoded once by the bundled all-MiniLM-L6-v2 MixEncoder (k=1; cached under ``--cache``), tiled
to ``--rows`` with small Gaussian noise (``--noise`` x the vectors' std) so that no two rows are
equal. Rows are written straight into the store format with ShardWriter and assembled with
``CandidateStore.from_shards`` (no model runs for them); an existing store with the same
parameters in ``--dir`` is reused. Measured, and written to ``--json``:

* ``open_s`` / ``open_rss_mb``: wall time of ``CandidateStore.open`` and the resident memory it
  adds (``/proc/self/statm``);
* ``gather_ms``: ``store.gather`` of 1000 random docids, p50/p99. ``warm``: the store's files in
  the page cache, a fresh random request each time (``warm_cpu``: the process CPU time of the
  same requests, i.e. without the wait for a core on a loaded machine; ``loadavg`` is
  recorded). ``cold``: before each request the store is closed, its files are dropped from the
  page cache (``posix_fadvise(DONTNEED)``, no root needed; ``cold_check`` reports how much of
  the vectors stayed cached) and it is reopened. For the warm requests also ``lookup`` (the
  docid -> row lookup alone, ``store.missing``), the floor ``floor_take``: a plain numpy
  ``take`` of the same rows (resolved beforehand) from memory maps of the same ``vectors.npy``
  / ``pooled.npy``, ``floor_take_f32``: the same plus the cast to the float32 that ``gather``
  returns, and ``ratio_to_floor_take`` / ``ratio_to_floor_take_f32``: gather / floor per
  request (``_cpu``: of the process CPU times, which a loaded machine disturbs less);
* ``search_ms``: top-1000 dense search per query (the 54 DL20 queries): exact (``flat``, FAISS
  flat indexes of every shard) and approximate (``ann``, an IVF index); ``ann_recall_at_1000``:
  the overlap of the two top-1000 lists, averaged over queries; ``ann_sweep``: the same for
  several ``nprobe``;
* ``bytes_per_candidate``: store bytes on disk per candidate (FAISS flat copies included; the
  approximate index is reported apart).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import logging
import mmap
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from mixencoder import CandidateStore, MixEncoder
from mixencoder.models.base import CandidateReps
from mixencoder.store.shard import ShardWriter

logger = logging.getLogger("bench_store")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
COLLECTION = SHARED / "msmarco" / "dl20" / "collection.tsv"
QUERIES = SHARED / "msmarco" / "dl20" / "queries.tsv"
BENCH_FORMAT = 1  # bump when the tiling changes, so cached stores are rebuilt
K = 1000


@dataclass
class Source:
    """The real vectors the store is tiled from."""

    pids: list[str]
    vectors: np.ndarray  # (P, dim) float32: the k=1 context embedding of each passage
    pooled: np.ndarray  # (P, dim) float32
    queries: np.ndarray  # (Q, dim) float32 pooled query vectors
    digest: str  # identifies the model and passages the vectors come from


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, required=True, help="candidates in the store")
    p.add_argument("--json", type=Path, required=True, help="where to write the results")
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="store directory (default work/bench_store/store-<rows>); reused if it matches",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=Path("work/cache/bench_store"),
        help="cache of the encoded passages and queries",
    )
    p.add_argument(
        "--passages",
        type=int,
        default=None,
        help="encode only the first N DL20 passages (default: all 5,396)",
    )
    p.add_argument(
        "--noise", type=float, default=0.02, help="noise std, in units of the vectors' std"
    )
    p.add_argument("--shard-size", type=int, default=100_000)
    p.add_argument("--warm-requests", type=int, default=200)
    p.add_argument("--cold-requests", type=int, default=30)
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default ~sqrt(rows))")
    p.add_argument(
        "--nprobe", type=int, default=16, help="IVF lists probed for the headline numbers"
    )
    p.add_argument(
        "--sweep",
        type=int,
        nargs="*",
        default=[4, 8, 16, 32, 64],
        help="nprobe values for ann_sweep",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.rows < 2:
        p.error("--rows must be >= 2")
    return args


# ---------------------------------------------------------------------- source vectors


def read_tsv(path: Path, limit: int | None = None) -> Iterator[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                return
            key, text = line.rstrip("\n").split("\t", 1)
            yield key, text


def load_source(cache: Path, passages: int | None) -> Source:
    """Encode the DL20 passages and queries with the bundled MiniLM (k=1), or load the cache."""
    docs = list(read_tsv(COLLECTION, passages))
    queries = [q for _, q in read_tsv(QUERIES)]
    model = MixEncoder.from_pretrained(k=1)
    key = hashlib.sha256(
        json.dumps(
            [model.candidate_fingerprint()["sha256"], [d for d, _ in docs], queries]
        ).encode()
    ).hexdigest()[:16]
    path = cache / f"dl20-minilm-k1-{len(docs)}-{key}.npz"
    if path.is_file():
        data = np.load(path)
        logger.info("loaded %d cached passage vectors from %s", len(docs), path)
        return Source([d for d, _ in docs], data["vectors"], data["pooled"], data["queries"], key)
    logger.info(
        "encoding %d DL20 passages with all-MiniLM-L6-v2 (k=1); cached in %s", len(docs), path
    )
    start = time.perf_counter()
    reps = model.encode_candidates([t for _, t in docs], batch_size=32)
    vectors = reps.vectors[:, 0].numpy().astype(np.float32)
    pooled = reps.pooled.numpy().astype(np.float32)
    query_vectors = model.encode_queries_pooled(queries)
    logger.info("encoded in %.0fs", time.perf_counter() - start)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, vectors=vectors, pooled=pooled, queries=query_vectors)
    os.replace(tmp, path)
    return Source([d for d, _ in docs], vectors, pooled, query_vectors, key)


# ---------------------------------------------------------------------- the tiled store


def docid_of(source: Source, row: np.ndarray) -> list[str]:
    """Row i holds a noisy copy i // P of passage i % P: docid ``<pid>-<copy>``."""
    p = len(source.pids)
    return [f"{source.pids[int(i) % p]}-{int(i) // p}" for i in row]


def bench_fingerprint(source: Source, args: argparse.Namespace) -> dict[str, Any]:
    """Identifies the synthetic contents, so no real model ever accepts this store."""
    ident = {
        "model_type": "bench-tiled",
        "format": BENCH_FORMAT,
        "source": source.digest,
        "rows": args.rows,
        "noise": args.noise,
        "seed": args.seed,
        "shard_size": args.shard_size,
    }
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    return {**ident, "sha256": digest}


def build_tiled_store(path: Path, source: Source, args: argparse.Namespace) -> CandidateStore:
    """Write ``args.rows`` noisy copies of the source vectors as a store (or reuse one)."""
    fingerprint = bench_fingerprint(source, args)
    if (path / "manifest.json").is_file():
        try:
            store = CandidateStore.open(path)
            if store.fingerprint == fingerprint:
                logger.info("reusing the store at %s", path)
                return store
        except ValueError as e:  # damaged or from an older bench: rebuild it
            logger.warning("rebuilding %s: %s", path, e)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    p = len(source.pids)
    sigma_v = args.noise * float(source.vectors.std())
    sigma_p = args.noise * float(source.pooled.std())
    names = []
    chunk = 16_384  # rows generated at a time: bounds the memory whatever --rows is
    for number, lo in enumerate(range(0, args.rows, args.shard_size)):
        hi = min(lo + args.shard_size, args.rows)
        writer = ShardWriter(
            path, number, dtype=np.dtype("float16"), with_pooled=True, origin="build"
        )
        for a in range(lo, hi, chunk):
            rows = np.arange(a, min(a + chunk, hi))
            base = rows % p
            vec = (
                source.vectors[base]
                + rng.standard_normal((len(rows), source.vectors.shape[1]), dtype=np.float32)
                * sigma_v
            )
            pooled = (
                source.pooled[base]
                + rng.standard_normal((len(rows), source.pooled.shape[1]), dtype=np.float32)
                * sigma_p
            )
            reps = CandidateReps(
                torch.from_numpy(vec[:, None, :]),
                torch.ones(len(rows), dtype=torch.int64),
                torch.from_numpy(pooled),
            )
            writer.add([d.encode() for d in docid_of(source, rows)], reps)
        names.append(writer.finish()["name"])
        logger.info("wrote %s (%d/%d rows)", names[-1], hi, args.rows)
    seconds = time.perf_counter() - start
    stats = {"docs": args.rows, "seconds": seconds, "docs_per_s": args.rows / seconds}
    return CandidateStore.from_shards(
        path, names, fingerprint=fingerprint, shard_size=args.shard_size, build_stats=stats
    )


# ---------------------------------------------------------------------- measurements


def rss_mb() -> float:
    """Resident memory of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE") / 2**20


def data_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".npy", ".faiss"))


def evict(files: list[Path]) -> None:
    """Drop the files' clean pages from the page cache (unmapped pages only; no root needed)."""
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def prefetch(files: list[Path]) -> None:
    """Read the files once so they sit in the page cache (the warm case)."""
    buf = bytearray(16 << 20)
    for file in files:
        with open(file, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def cached_fraction(file: Path) -> float:
    """Fraction of ``file``'s pages in the page cache (mincore on a fresh read-only mapping)."""
    size = file.stat().st_size
    if not size:
        return 0.0
    page = mmap.PAGESIZE
    n = (size + page - 1) // page
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    arr = np.memmap(file, dtype=np.uint8, mode="r")
    vec = ctypes.create_string_buffer(n)
    if libc.mincore(ctypes.c_void_p(arr.ctypes.data), ctypes.c_size_t(size), vec) != 0:
        return float("nan")
    resident = np.frombuffer(vec.raw, dtype=np.uint8) & 1
    del arr
    return float(resident.mean())


def percentiles(ms: list[float]) -> dict[str, float]:
    return {
        "p50": round(float(np.percentile(ms, 50)), 3),
        "p99": round(float(np.percentile(ms, 99)), 3),
    }


def row_maps(path: Path, manifest: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(vectors, pooled)`` of every shard, memory-mapped from the files the store wrote."""
    return [
        tuple(np.load(path / e["name"] / f, mmap_mode="r") for f in ("vectors.npy", "pooled.npy"))
        for e in manifest["shards"]
    ]


def take_rows(
    maps: list[tuple[np.ndarray, np.ndarray]], rows: np.ndarray, shard_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The floor of a gather: ``take`` of the rows' vectors and pooled vectors, shard by shard
    (in shard order). The tiled store has one vector per candidate and full shards, so row
    ``r`` is row ``r % shard_size`` of shard ``r // shard_size`` in both files."""
    shard, local = np.divmod(rows, shard_size)
    vectors = np.empty((len(rows), maps[0][0].shape[1]), maps[0][0].dtype)
    pooled = np.empty((len(rows), maps[0][1].shape[1]), maps[0][1].dtype)
    start = 0
    for s in np.unique(shard):
        chosen = local[shard == s]
        end = start + len(chosen)
        np.take(maps[s][0], chosen, axis=0, out=vectors[start:end])
        np.take(maps[s][1], chosen, axis=0, out=pooled[start:end])
        start = end
    return vectors, pooled


def _ratios(ms: list[float], floor: list[float]) -> dict[str, float]:
    """Per-request gather / floor: median and p90 (a ratio of the same request's times)."""
    r = np.asarray(ms) / np.asarray(floor)
    return {"p50": round(float(np.percentile(r, 50)), 2), "p90": round(float(np.percentile(r, 90)), 2)}


def measure(path: Path, source: Source, args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed + 1)
    files = data_files(path)

    def request_rows() -> np.ndarray:
        return rng.integers(0, args.rows, size=K)

    def request() -> list[str]:
        return docid_of(source, request_rows())

    # Open: wall time and the resident memory it adds.
    gc.collect()
    before = rss_mb()
    start = time.perf_counter()
    store = CandidateStore.open(path)
    open_s = time.perf_counter() - start
    open_rss = rss_mb() - before

    # Warm gather: everything in the page cache, a new random request each time.
    prefetch(files)
    for _ in range(5):
        store.gather(request())
    maps = row_maps(path, store.manifest)
    times: dict[str, tuple[list[float], list[float]]] = {
        name: ([], []) for name in ("gather", "lookup", "floor_take", "cast_f32")
    }

    def timed(name: str, fn: Any, *a: Any) -> Any:
        wall, cpu = times[name]
        t, c = time.perf_counter(), time.process_time()
        out = fn(*a)
        wall.append(1e3 * (time.perf_counter() - t))
        cpu.append(1e3 * (time.process_time() - c))
        return out

    def to_f32(arrays: tuple[np.ndarray, ...]) -> list[torch.Tensor]:
        return [torch.from_numpy(x).float() for x in arrays]

    for _ in range(args.warm_requests):
        rows = request_rows()
        ids = docid_of(source, rows)
        reps = timed("gather", store.gather, ids)
        timed("lookup", store.missing, ids)  # the docid -> row lookup alone
        taken = timed("floor_take", take_rows, maps, rows, args.shard_size)
        timed("cast_f32", to_f32, taken)
    # The float32 floor: the take plus the cast of what it took (not a second take of the same
    # rows, which would find their pages already mapped).
    (take_wall, take_cpu), (cast_wall, cast_cpu) = times["floor_take"], times["cast_f32"]
    times["floor_take_f32"] = (
        [a + b for a, b in zip(take_wall, cast_wall)],
        [a + b for a, b in zip(take_cpu, cast_cpu)],
    )
    warm, warm_cpu = times["gather"]
    del maps  # mapped pages cannot be dropped from the page cache: unmap before the cold case
    assert reps.vectors.shape == (K, 1, store.dim)
    # The floor reads the same rows: check it against the gather (same values, grouped order).
    order = np.argsort(rows // args.shard_size, kind="stable")
    assert np.array_equal(taken[0].astype(np.float32), reps.vectors[order, 0].numpy())

    # Cold gather: close, drop the files from the page cache, reopen, gather.
    cold, check = [], []
    vectors_file = path / "shard-00000" / "vectors.npy"
    for _ in range(args.cold_requests):
        ids = request()
        del store
        gc.collect()
        evict(files)
        check.append(cached_fraction(vectors_file))
        store = CandidateStore.open(path)
        t = time.perf_counter()
        store.gather(ids)
        cold.append(1e3 * (time.perf_counter() - t))

    # Dense search: exact (flat) vs approximate (IVF).
    queries = source.queries
    prefetch(files)
    store.search(queries[:1], K)  # opens the shards' FAISS indexes
    flat_ms, flat_hits = [], []
    for q in queries:
        t = time.perf_counter()
        hits = store.search(q[None, :], K)[0]
        flat_ms.append(1e3 * (time.perf_counter() - t))
        flat_hits.append([d for d, _ in hits])
    ann_info = _ensure_ann(store, args)
    prefetch([p for p in path.glob("ann-*/index.faiss")])
    sweep = {}
    for nprobe in sorted(set(args.sweep) | {args.nprobe}):
        store.search(queries[:1], K, approximate=True, nprobe=nprobe)
        ms, recall = [], []
        for q, exact in zip(queries, flat_hits):
            t = time.perf_counter()
            hits = store.search(q[None, :], K, approximate=True, nprobe=nprobe)[0]
            ms.append(1e3 * (time.perf_counter() - t))
            recall.append(len({d for d, _ in hits} & set(exact)) / len(exact))
        sweep[str(nprobe)] = {"recall_at_1000": round(float(np.mean(recall)), 4), **percentiles(ms)}
    headline = sweep[str(args.nprobe)]

    return {
        "loadavg": [float(x) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "rows": args.rows,
        "passages": len(source.pids),
        "dim": store.dim,
        "dtype": store.dtype,
        "shards": len(store.manifest["shards"]),
        "open_s": round(open_s, 4),
        "open_rss_mb": round(open_rss, 2),
        "gather_ms": {
            "warm": percentiles(warm),
            "cold": percentiles(cold),
            "docids_per_request": K,
            "requests": {"warm": len(warm), "cold": len(cold)},
            "cold_method": "store closed, its files dropped from the page cache with "
            "posix_fadvise(DONTNEED), store reopened; then one gather of new random docids",
            "cold_check": {"vectors_cached_fraction_max": round(float(np.nanmax(check)), 4)},
            # CPU time of this process per warm request: wall time minus waiting for a core,
            # which is what a loaded machine adds (see loadavg).
            "warm_cpu": percentiles(warm_cpu),
            # The same warm requests: the docid -> row lookup alone (store.missing), and the
            # floor, a plain numpy take of the same rows (already resolved) from memory maps of
            # the same files, as stored (fp16) and cast to the float32 gather returns.
            # The ratios are per request, of wall times and (``_cpu``) of CPU times.
            **{name: percentiles(times[name][0]) for name in ("lookup", "floor_take", "floor_take_f32")},
            **{f"{name}_cpu": percentiles(times[name][1]) for name in ("lookup", "floor_take", "floor_take_f32")},
            **{
                f"ratio_to_{name}{suffix}": _ratios(times["gather"][i], times[name][i])
                for name in ("floor_take", "floor_take_f32")
                for i, suffix in ((0, ""), (1, "_cpu"))
            },
        },
        "search_ms": {
            "flat": percentiles(flat_ms),
            "ann": {k: headline[k] for k in ("p50", "p99")},
            "k": K,
            "queries": len(queries),
        },
        "ann_recall_at_1000": headline["recall_at_1000"],
        "ann": {
            **{k: ann_info[k] for k in ("kind", "nlist", "train_size", "build_s")},
            "nprobe": args.nprobe,
            "bytes_per_candidate": round(ann_info["bytes"] / args.rows, 1),
        },
        "ann_sweep": sweep,
        "bytes_per_candidate": round(store.bytes_per_candidate(), 1),
        "bytes_per_candidate_rerank_only": round(
            store.bytes_per_candidate(include_search_index=False), 1
        ),
    }


def _ensure_ann(store: CandidateStore, args: argparse.Namespace) -> dict[str, Any]:
    """Reuse the store's IVF index if it has the requested nlist, else build it."""
    from mixencoder.store.ann import default_nlist, open_ann_index

    nlist = args.nlist or default_nlist(len(store))
    try:
        ann = open_ann_index(store.rows)
        if ann.info["nlist"] == nlist:
            return ann.info
    except (FileNotFoundError, ValueError):
        pass
    return store.build_ann_index(nlist=nlist, nprobe=args.nprobe, seed=args.seed).info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    path = args.dir or Path("work/bench_store") / f"store-{args.rows}"
    free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    need = args.rows * 3_200 * 1.2  # ~3.1 KB per candidate (fp16 + float32 FAISS copy) + IVF
    if free < need:
        raise SystemExit(
            f"{free / 2**30:.1f} GiB free at {path.parent}; the store needs ~{need / 2**30:.1f} GiB"
        )
    source = load_source(args.cache, args.passages)
    store = build_tiled_store(path, source, args)
    build = store.last_build_stats
    del store
    result = measure(path, source, args)
    result["build_s"] = None if build is None else round(build["seconds"], 1)
    result["store_dir"] = str(path)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
