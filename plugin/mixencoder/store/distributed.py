"""Building a candidate store on Ray Data: the corpus is encoded by a pool of model actors.

:func:`build_store_distributed` produces the same store as :meth:`CandidateStore.build` (same
shard layout, same files, the same vectors up to floating-point rounding) but spreads the
encoding over ``workers`` model actors, one GPU each where the cluster has GPUs::

    reader task              model actors (ActorPoolStrategy)           driver
    read_corpus -> blocks -> encode_candidates -> vectors, pooled    -> ShardSequence,
    of (docid, text)         cast to the store dtype                    in corpus order

Why the driver writes the shards: Ray Data hands the encoded blocks back in corpus order
(``preserve_order``), so the driver can cut them into shards exactly where the single-process
build does (shard ``i`` = docs ``[i * shard_size, (i + 1) * shard_size)``). Finished shards are
therefore always a prefix of the corpus, which keeps a Ray build resumable by either builder
and keeps each shard's write atomic (:class:`~.shard.ShardWriter` renames a complete temp
directory). The driver uses the single-process build's own pieces (:mod:`.build`: the resume,
the docid ledger, the shard sequence; :func:`.layout.commit`), so the two builders differ only
in who encodes. Writing costs ~1.5 KB per document of sequential I/O, far below the encoding
cost, so the single writer does not limit throughput.

Why one reader: parsing a corpus runs at ~10^5 docs/s, two orders of magnitude above what a
model actor encodes, and a single reader gives every document its corpus position for free.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models import load_model
from ..models.base import CandidateReps
from ._io import encode_docids
from .build import ShardSequence, begin_build
from .candidate_store import CandidateStore
from .layout import BuildParams, check_positive_int, commit, normalise_fingerprint
from .shard import reps_to_arrays

logger = logging.getLogger(__name__)

#: A model for the actors: a directory saved by any model's ``save_pretrained`` (``None``: a
#: fresh MixEncoder on the bundled MiniLM), or a picklable zero-argument callable returning a
#: Scorer.
ModelSpec = Union[str, os.PathLike, None, Callable[[], Any]]

_SAMPLE_DOCS = 256  # documents read ahead on the driver to size Ray's blocks


@dataclass(frozen=True)
class _BuildPlan:
    """What every actor needs to know to encode like the driver expects."""

    params: BuildParams
    batch_size: int
    dims: tuple[int | None, int | None]
    threads: int


def _load_spec(spec: ModelSpec) -> Any:
    """Instantiate the model a :data:`ModelSpec` describes, with
    :func:`mixencoder.models.load_model` (every saved model kind loads)."""
    if callable(spec):
        return spec()
    if spec is None:
        return load_model(None, model_type="mixencoder")
    return load_model(spec)


def build_store_distributed(
    path: str | os.PathLike,
    model: ModelSpec,
    corpus: str | os.PathLike,
    *,
    fmt: str | None = None,
    workers: int = 2,
    address: str | None = None,
    batch_size: int = 32,
    block_size: int = 512,
    shard_size: int = 10_000,
    dtype: str = "float16",
    with_pooled: bool = True,
    search_metric: str | None = None,
    mode: str = "create",
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float | None = None,
    show_progress_bar: bool | None = None,
) -> CandidateStore:
    """Encode a corpus file or directory on Ray Data and write it as a candidate store.

    Uses the Ray instance already initialised in this process if there is one; otherwise
    connects to ``address`` (an existing cluster, which must see ``corpus`` and ``path`` at the
    same paths) or starts a local instance with ``num_cpus=workers`` for the duration of the
    build.

    Args:
        path: the store directory (created if missing).
        model: what each actor loads: a directory saved by any model's ``save_pretrained``
            (loaded with :func:`mixencoder.models.load_model`), ``None`` for a fresh MixEncoder
            on the bundled all-MiniLM-L6-v2, or a picklable zero-argument callable returning a
            :class:`~mixencoder.models.base.Scorer` (a torch module, to run on a GPU). The
            driver loads it once too, for the fingerprint and ``search_metric``; an actor
            whose model differs fails the build.
        corpus: a corpus file or directory, read with
            :func:`mixencoder.data.corpus.read_corpus`.
        fmt: force the corpus format (see ``read_corpus``).
        workers: model actors (the actor pool size).
        address: a Ray cluster address (``"auto"``, ``"ray://host:10001"``, ...); ``None``
            starts a local instance unless Ray is already initialised.
        batch_size: texts per forward pass inside an actor.
        block_size: documents per Ray Data block (the unit an actor is handed).
        shard_size: candidates per shard, as in :meth:`CandidateStore.build`.
        dtype: ``"float16"`` or ``"float32"``; actors cast before sending (half the traffic).
        with_pooled: also store pooled vectors and their FAISS index.
        search_metric: ``"ip"``, ``"cosine"`` or ``None`` (the model's), as in
            :meth:`CandidateStore.build`.
        mode: ``"create"``, ``"overwrite"`` or ``"resume"``, as in
            :meth:`CandidateStore.build`; a resumed build keeps the finished shards (also those
            of an interrupted single-process build) and encodes only the rest.
        cpus_per_worker: CPUs reserved per actor; its torch thread count is set to match, so
            the actors do not oversubscribe the cores.
        gpus_per_worker: GPUs per actor; ``None``: 1 if the cluster has GPUs, else 0.
        show_progress_bar: tqdm bar on the driver; ``None``: when this logger is at INFO.

    Returns:
        The opened store; ``last_build_stats`` holds ``docs``, ``seconds``, ``docs_per_s`` of
        the documents encoded by this call, plus ``workers`` and ``workers_used`` (how many
        distinct actor processes encoded at least one block).

    Raises:
        FileExistsError, ValueError: as :meth:`CandidateStore.build` (mode, duplicate docids
            -- named with the shard they fall in --, a resume on a different corpus or model).
        RuntimeError: Ray returned blocks out of order, or a worker failed (the cause is
            chained).
    """
    from ..data.corpus import read_corpus

    path = Path(path)
    corpus = Path(corpus)
    for name, value in (("workers", workers), ("batch_size", batch_size),
                        ("block_size", block_size)):
        check_positive_int(name, value)
    if not corpus.exists():
        raise FileNotFoundError(f"corpus {corpus} does not exist")
    if cpus_per_worker <= 0:
        raise ValueError(f"cpus_per_worker must be > 0, got {cpus_per_worker}")

    driver_model = _load_spec(model)
    params = BuildParams.for_model(driver_model, shard_size, dtype, with_pooled, search_metric)
    del driver_model  # the actors hold the copies that do the work
    # Resume: the finished shards are a corpus prefix (the driver writes in order); the corpus
    # must still start with their docids, exactly as for the single-process build.
    remaining = iter(read_corpus(corpus, fmt=fmt, check_duplicates=False))
    begun = begin_build(path, mode, params, remaining)
    sample = list(islice(remaining, _SAMPLE_DOCS))  # sizes Ray's blocks; empty: nothing left
    del remaining  # drop the reader before the build goes on

    plan = _BuildPlan(params=params, batch_size=batch_size, dims=begun.dims,
                      threads=max(1, int(cpus_per_worker)))
    start = time.perf_counter()
    workers_used = 0
    with begun.sequence(path, params) as seq:
        if sample:
            with _RaySession(workers, address):
                workers_used = _encode_and_write(
                    seq, model, corpus, fmt=fmt, plan=plan, workers=workers,
                    block_size=block_size, cpus_per_worker=cpus_per_worker,
                    gpus_per_worker=gpus_per_worker, row_bytes=_arrow_row_bytes(sample),
                    show=_show(show_progress_bar),
                )
    seconds = time.perf_counter() - start
    stats = {
        "docs": seq.docs,
        "seconds": seconds,
        "docs_per_s": seq.docs / seconds if seq.docs and seconds > 0 else None,
        "workers": workers,
        "workers_used": workers_used,
    }
    manifest = commit(path, params, begun.entries + seq.entries, docs_per_s=stats["docs_per_s"])
    logger.info(
        "built candidate store %s on Ray: %d candidates (%d encoded now) with %d workers, "
        "%.1f docs/s", path, manifest["count"], seq.docs, workers, stats["docs_per_s"] or 0.0,
    )
    store = CandidateStore(path, manifest)
    store.last_build_stats = stats
    return store


# ----------------------------------------------------------------------------------------------
# The Ray pieces
# ----------------------------------------------------------------------------------------------


class _RaySession:
    """Context manager: use the running Ray, or connect/start one and shut it down after."""

    def __init__(self, workers: int, address: str | None) -> None:
        self.workers = workers
        self.address = address
        self.owned = False

    def __enter__(self) -> _RaySession:
        ray = _import_ray()
        if ray.is_initialized():
            logger.info("using the Ray instance already initialised in this process")
            return self
        # No telemetry from a build: the machines this runs on may have no internet at all.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if self.address is None:
            ray.init(num_cpus=self.workers, include_dashboard=False)
        else:
            ray.init(address=self.address)
        self.owned = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.owned:
            _import_ray().shutdown()


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "the distributed store build needs Ray Data: pip install 'ray[data]'"
        ) from e
    return ray


def _encode_and_write(
    seq: ShardSequence,
    model: ModelSpec,
    corpus: Path,
    *,
    fmt: str | None,
    plan: _BuildPlan,
    workers: int,
    block_size: int,
    cpus_per_worker: float,
    gpus_per_worker: float | None,
    row_bytes: float,
    show: bool,
) -> int:
    """Run the Ray Data pipeline, appending its output to ``seq`` in corpus order; return how
    many distinct actor processes encoded at least one block."""
    ray = _import_ray()
    from ray.data import ActorPoolStrategy, DataContext

    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    ctx = DataContext.get_current()
    saved = (
        ctx.execution_options.preserve_order,
        ctx.enable_progress_bars,
        ctx.target_max_block_size,
    )
    # Order is what lets the driver cut shards at the same positions as the single-process
    # build; Ray's own progress bars would interleave with ours.
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    # Ray merges a read task's output into blocks of target_max_block_size bytes (128 MiB by
    # default: the whole of a small corpus, handed to one actor) and slices blocks above 1.5x
    # that. Aiming at 0.8x the bytes of block_size documents keeps blocks near block_size docs,
    # so every actor gets work even on a small corpus.
    ctx.target_max_block_size = int(min(128 << 20, max(4096, 0.8 * block_size * row_bytes)))
    try:
        source = _corpus_datasource(
            corpus, fmt, seq.position, block_size, plan.params.shard_size
        )
        # The reader only parses text; it takes no CPU slot so that `workers` actors can hold
        # all of a local instance's num_cpus=workers without starving it.
        ds = ray.data.read_datasource(source, num_cpus=0, override_num_blocks=1)
        ds = ds.map_batches(
            _EncodeActor,
            fn_constructor_args=(model, plan),
            batch_size=block_size,
            compute=ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
            batch_format="numpy",
        )
        pids: set[int] = set()
        bar = tqdm(
            desc="Encoding candidates (Ray)", unit="doc", initial=seq.position, disable=not show
        )
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                _append_in_order(seq, batch)
                pids.update(int(p) for p in np.unique(batch["worker_pid"]))
                bar.update(len(batch["position"]))
        except BaseException as e:
            raise _unwrap_ray_error(e) from e
        finally:
            bar.close()
    finally:
        (
            ctx.execution_options.preserve_order,
            ctx.enable_progress_bars,
            ctx.target_max_block_size,
        ) = saved
    return len(pids)


def _append_in_order(seq: ShardSequence, batch: dict[str, np.ndarray]) -> None:
    """Append one encoded block to ``seq``, cut where a shard ends (Ray may bundle blocks
    across a boundary), after checking it continues the corpus where ``seq`` stands."""
    positions = np.asarray(batch["position"], dtype=np.int64)
    if not np.array_equal(positions, np.arange(seq.position, seq.position + len(positions))):
        raise RuntimeError(
            f"Ray Data returned documents out of corpus order (expected positions from "
            f"{seq.position}, got {positions[:5].tolist()}...); the shard layout would differ "
            "from the corpus order, so the build stops"
        )
    pooled = batch.get("pooled")
    start = 0
    while start < len(positions):
        end = min(len(positions), start + seq.room())
        keys = encode_docids([str(d) for d in batch["docid"][start:end]])
        seq.admit(keys)
        seq.write(keys, CandidateReps(
            vectors=torch.from_numpy(np.array(batch["vectors"][start:end], dtype=np.float32)),
            lengths=torch.from_numpy(np.array(batch["lengths"][start:end], dtype=np.int64)),
            pooled=None if pooled is None
            else torch.from_numpy(np.array(pooled[start:end], dtype=np.float32)),
        ))
        start = end


def _unwrap_ray_error(e: BaseException) -> BaseException:
    """A worker's own ValueError/TypeError (bad corpus, wrong model) instead of Ray's wrapper.

    Ray reports an actor that failed in ``__init__`` as an ``ActorDiedError`` holding a
    ``RayTaskError`` (in its args), which holds the original exception in ``.cause``; a failed
    task as a ``RayTaskError`` (or a ``UserCodeException`` chaining one). Anything else is
    returned unchanged.
    """
    todo: list[BaseException] = [e]
    seen: set[int] = set()
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (ValueError, TypeError, OSError)) and not _is_ray(current):
            return current
        inner = [getattr(current, "cause", None), current.__cause__, *current.args]
        todo.extend(x for x in inner if isinstance(x, BaseException))
    return e


def _is_ray(e: BaseException) -> bool:
    return type(e).__module__.startswith("ray.")


def _corpus_datasource(
    corpus: Path, fmt: str | None, first: int, block_size: int, shard_size: int
) -> Any:
    """A Ray Data datasource over ``read_corpus``: one read task streaming blocks of documents.

    Each block holds ``position`` (the document's index in the corpus), ``docid`` and ``text``
    and never crosses a shard boundary. Documents before ``first`` (already stored by an
    interrupted build) are skipped.
    """
    return _datasource_class()(corpus, fmt, first, block_size, shard_size)


@functools.lru_cache(maxsize=1)
def _datasource_class() -> type:
    # Defined on first use so that importing this module does not import Ray.
    from ray.data import Datasource

    class CorpusDatasource(Datasource):  # type: ignore[misc]
        def __init__(
            self, corpus: Path, fmt: str | None, first: int, block_size: int, shard_size: int
        ) -> None:
            super().__init__()
            self.corpus, self.fmt, self.first = corpus, fmt, first
            self.block_size, self.shard_size = block_size, shard_size

        def get_name(self) -> str:
            return "Corpus"

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(
            self,
            parallelism: int,
            per_task_row_limit: int | None = None,
            data_context: Any = None,
        ) -> list[Any]:
            from ray.data import ReadTask
            from ray.data.block import BlockMetadata

            read = functools.partial(
                _read_blocks, self.corpus, self.fmt, self.first, self.block_size, self.shard_size
            )
            meta = BlockMetadata(
                num_rows=None, size_bytes=None, exec_stats=None, input_files=[str(self.corpus)]
            )
            return [ReadTask(read, meta)]

    return CorpusDatasource


def _read_blocks(
    corpus: Path, fmt: str | None, first: int, block_size: int, shard_size: int
) -> Iterator[Any]:
    """Stream the corpus from document ``first`` as pyarrow tables of at most ``block_size``."""
    import pyarrow as pa

    from ..data.corpus import read_corpus

    # Duplicates are checked by the driver with a compact sorted-array structure; read_corpus's
    # own check keeps a Python set of every docid (~100 bytes each) in this worker.
    docs = islice(read_corpus(corpus, fmt=fmt, check_duplicates=False), first, None)
    position = first
    while True:
        # Never cross a shard boundary, so a block's documents all belong to one shard.
        n = min(block_size, shard_size - position % shard_size)
        chunk = list(islice(docs, n))
        if not chunk:
            return
        yield pa.table(
            {
                "position": pa.array(np.arange(position, position + len(chunk), dtype=np.int64)),
                "docid": pa.array([d.docid for d in chunk], type=pa.string()),
                "text": pa.array([d.text for d in chunk], type=pa.string()),
            }
        )
        position += len(chunk)


class _EncodeActor:
    """A Ray Data actor: loads the model once, then encodes blocks into store-dtype arrays."""

    def __init__(self, model: ModelSpec, plan: _BuildPlan) -> None:
        # One actor per CPU slot: more torch threads than reserved CPUs would make the actors
        # fight over the cores and run slower than the single-process build.
        torch.set_num_threads(plan.threads)
        self.plan = plan
        self.model = _load_spec(model)
        theirs = normalise_fingerprint(self.model.candidate_fingerprint())
        ours = plan.params.fingerprint
        if theirs != ours:
            keys = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
            raise ValueError(
                f"a Ray worker (pid {os.getpid()}) loaded a different model than the driver: "
                f"candidate fingerprint keys {keys} differ. The model directory must be the "
                "same on every node of the cluster."
            )
        import ray

        if ray.get_gpu_ids() and torch.cuda.is_available():
            self.model.to("cuda")  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        n = len(texts)
        reps = self.model.encode_candidates(
            texts, batch_size=self.plan.batch_size, show_progress_bar=False
        )
        # Validate and cast here (reps_to_arrays is what ShardWriter.add runs): errors surface
        # where they happen, and float16 halves what travels back to the driver. The driver's
        # float32 round trip of these values is exact, so the shard equals a direct write.
        params = self.plan.params
        flat, lengths, pooled = reps_to_arrays(
            reps, n, np.dtype(params.dtype), params.with_pooled, *self.plan.dims
        )
        m = int(lengths.max()) if n else 0
        vectors = np.zeros((n, m, flat.shape[1]), dtype=flat.dtype)
        vectors[np.arange(m)[None, :] < lengths[:, None]] = flat
        out = {
            "position": np.asarray(batch["position"], dtype=np.int64),
            "docid": np.asarray(batch["docid"]),
            "vectors": vectors,
            "lengths": lengths,
            "worker_pid": np.full(n, os.getpid(), dtype=np.int64),
        }
        if pooled is not None:
            out["pooled"] = pooled
        return out


def _arrow_row_bytes(sample: list[Any]) -> float:
    """Bytes one reader row takes in an Arrow block (text + docid + offsets + position)."""
    return sum(len(d.text.encode()) + len(d.docid.encode()) + 16 for d in sample) / len(sample)


def _show(flag: bool | None) -> bool:
    return logger.getEffectiveLevel() <= logging.INFO if flag is None else flag
