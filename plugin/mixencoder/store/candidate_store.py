"""The candidate store: precomputed candidate representations on disk, served by docid.

Offline, :meth:`CandidateStore.build` streams ``(docid, text)`` pairs through a model's
``encode_candidates`` and writes the reps to a directory. Online, :meth:`CandidateStore.open`
memory-maps that directory and :meth:`CandidateStore.gather` returns the reps of a query's
~1000 candidates as one :class:`~mixencoder.models.base.CandidateReps`.

On-disk layout (every path is listed, with size and sha256, in ``manifest.json``)::

    store/
      manifest.json        written last; its presence means "the store is complete"
      shard-00000/         see mixencoder.store.shard for the files of one shard
      shard-00001/
      index-00000/         docid lookup over all shards, rewritten on every add()
        docids_sorted.npy  (count,) 'S<n>'  every live docid, sorted bytewise
        rows_sorted.npy    (count,) int64   its global row (shard start + row in shard)
        dead_rows.npy      (k,) int64       rows superseded by add(replace=True), sorted

Rows are numbered globally in shard order. A docid maps to exactly one live row: when
``add(..., replace=True)`` re-adds a docid, the new (higher) row wins and the old row is listed
in ``dead_rows.npy`` (it stays on disk, is never gathered, and is filtered out of search).

Crash safety: a shard is written to a hidden temp directory and renamed into place when complete,
the lookup index likewise, and ``manifest.json`` is replaced atomically after everything it lists
exists. A directory without a manifest refuses to open; ``build(mode='resume')`` keeps the
finished shards and re-encodes only the rest. Only one process may write a store at a time.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import time
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.base import CandidateReps
from ._io import (
    as_fixed_bytes,
    atomic_write_json,
    encode_docids,
    fsync_dir,
    fsync_file,
    json_text,
    lookup_sorted,
    npy_entry,
    open_npy,
    read_json,
)
from .errors import IncompleteStoreError, StoreCorruptError
from .shard import (
    TMP_PREFIX,
    Shard,
    ShardWriter,
    check_search_metric,
    entry_search_metric,
    l2_normalise,
    shard_number,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: Key of manifest.json holding the sha256 of the rest of the manifest (see manifest_checksum).
MANIFEST_CHECKSUM = "manifest_sha256"
_OPEN_ATTEMPTS = 5  # open() re-reads a manifest that a concurrent add() replaced meanwhile
BUILD_STATE = "build.json"  # the parameters of a build in progress; lets resume check them
INDEX_PREFIX = "index-"
_MODES = ("create", "overwrite", "resume")
_DTYPES = ("float16", "float32")
_SKIP_CHUNK = 65_536  # docs compared per step when resume re-reads the finished prefix
_SHOW_IDS = 5  # how many offending docids an error message names
_BATCHES_PER_CALL = 16  # batches of texts per encode_candidates call


class CandidateStore:
    """A memory-mapped, sharded store of candidate reps, looked up by string docid.

    Create one with :meth:`build` (offline) and open it with :meth:`open` (online). Instances
    are cheap: nothing is read into memory until :meth:`gather` or :meth:`search` touches it.

    Attributes:
        path: the store directory.
        last_build_stats: ``{"docs", "seconds", "docs_per_s"}`` of the :meth:`build` or
            :meth:`add` that produced this instance's current state, else None.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        """Use :meth:`open` or :meth:`build`; this assumes ``manifest`` was already parsed."""
        self.path = path
        self.last_build_stats: dict[str, Any] | None = None
        self._load(manifest)

    # ------------------------------------------------------------------------------------------
    # Building and opening
    # ------------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        path: str | Path,
        model: Any,
        docs: Iterable[tuple[str, str]],
        *,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        mode: str = "create",
        shard_size: int = 10_000,
        dtype: str = "float16",
        with_pooled: bool = True,
        search_metric: str | None = None,
    ) -> CandidateStore:
        """Encode a corpus with ``model`` and write it as a new store.

        ``docs`` is streamed in batches (a generator over millions of passages is fine); shard
        ``i`` holds docs ``[i * shard_size, (i + 1) * shard_size)`` of the stream, so a resumed
        build produces exactly the shards an uninterrupted one would.

        Args:
            path: the store directory (created if missing).
            model: a :class:`~mixencoder.models.base.Scorer`; only ``candidate_fingerprint`` and
                ``encode_candidates`` are used.
            docs: ``(docid, text)`` pairs; docids must be unique, non-empty strings.
            batch_size: texts per ``encode_candidates`` call.
            show_progress_bar: tqdm bar "Encoding candidates"; None shows it when this module's
                logger is at INFO or lower.
            mode: ``"create"`` fails if ``path`` holds anything; ``"overwrite"`` deletes an
                existing store first; ``"resume"`` continues an interrupted build of the same
                corpus with the same model and arguments (or starts one if there is none).
            shard_size: candidates per shard (bounds the memory and the re-work after a crash).
            dtype: ``"float16"`` (default, half the disk) or ``"float32"`` for stored vectors.
            with_pooled: also store the model's pooled vectors and a FAISS index for
                :meth:`search`.
            search_metric: how :meth:`search` scores: ``"ip"`` (inner product of the pooled
                vectors as stored) or ``"cosine"`` (the FAISS copies hold L2-normalised pooled
                vectors and queries are normalised; ``pooled.npy`` stays unnormalised).
                ``None`` takes it from the model (``model.search_metric``; ``"ip"`` if the
                model has none). Recorded in the manifest; a resume must use the same metric.

        Returns:
            The opened store; ``last_build_stats`` holds this run's throughput.

        Raises:
            FileExistsError: ``mode='create'`` and ``path`` is not empty, or ``path`` holds
                something that is not a candidate store.
            ValueError: duplicate docids, an empty corpus, or a resume whose model, arguments
                or corpus differ from the interrupted build.
        """
        path = Path(path)
        fingerprint = _fingerprint_of(model)
        _check_positive_int("batch_size", batch_size)
        _check_positive_int("shard_size", shard_size)
        dtype = _check_dtype(dtype)
        search_metric = resolve_search_metric(search_metric, model)
        params = {
            "fingerprint": fingerprint,
            "shard_size": shard_size,
            "dtype": dtype,
            "with_pooled": bool(with_pooled),
            "search_metric": search_metric,
        }
        old_manifest = _prepare_build_dir(path, mode, params)

        # Finished shards of an interrupted build (none for a fresh one). Opening them runs the
        # same cheap checks as open(), so a damaged shard is reported, not silently reused.
        finished = _finished_build_shards(path, params)
        # Written once the finished shards are known to match (a refused resume of orphan
        # shards must not record its own arguments as the build's).
        atomic_write_json(path / BUILD_STATE, params)
        it = iter(docs)
        done = _skip_finished_prefix(it, finished, shard_size)
        if finished:
            logger.info("resuming build of %s: %d candidates already stored", path, done)

        seen = _SeenDocids([np.asarray(s.docids) for s in finished])
        dims = (finished[0].vectors.shape[1], finished[0].pooled_dim) if finished else (None, None)
        start = time.perf_counter()
        with _progress(show_progress_bar, docs, initial=done) as bar:
            new_entries = _write_shards(
                path,
                model,
                it,
                first_number=len(finished),
                shard_size=shard_size,
                dtype=np.dtype(dtype),
                with_pooled=with_pooled,
                search_metric=search_metric,
                origin="build",
                dims=dims,
                batch_size=batch_size,
                seen=seen,
                bar=bar,
                position=done,
            )
        stats = _throughput(sum(e["count"] for e in new_entries), time.perf_counter() - start)

        entries = [_read_shard_entry(path, s.name) for s in finished] + new_entries
        if not entries:
            (path / BUILD_STATE).unlink()
            raise ValueError(f"docs yielded no (docid, text) pairs; nothing to store at {path}")
        generation = 0 if old_manifest is None else old_manifest["index"]["generation"] + 1
        keys, rows = _keys_and_rows(path, entries, first_row=0)
        try:
            index = _write_index(
                path, generation, keys, rows, np.zeros(0, np.int64), replace=False
            )
            if stats["docs_per_s"] is None and old_manifest is not None:
                # A resume that had nothing left to encode keeps the original build's throughput.
                stats["docs_per_s"] = old_manifest.get("build_docs_per_s")
            manifest = _make_manifest(params, entries, index, stats["docs_per_s"])
            _commit_manifest(path, manifest)  # the commit point of the build
        except BaseException:
            # E.g. a full disk: the finished shards stay for mode='resume', temp dirs go.
            _remove_temp_dirs(path)
            raise
        (path / BUILD_STATE).unlink(missing_ok=True)
        _remove_unreferenced(path, manifest)
        logger.info(
            "built candidate store %s: %d candidates, %d shards, %.1f docs/s",
            path,
            manifest["count"],
            len(entries),
            stats["docs_per_s"] or 0.0,
        )
        store = cls(path, manifest)
        store.last_build_stats = stats
        return store

    @classmethod
    def from_shards(
        cls,
        path: str | Path,
        shard_names: Sequence[str],
        *,
        fingerprint: dict[str, Any],
        shard_size: int,
        dtype: str = "float16",
        with_pooled: bool = True,
        build_stats: dict[str, Any] | None = None,
        search_metric: str | None = None,
    ) -> CandidateStore:
        """Finish a store whose shards were written elsewhere (e.g. by a distributed build).

        The hook for builders that write shard directories with :class:`~.shard.ShardWriter`
        themselves (:mod:`mixencoder.store.distributed`, benchmarks writing synthetic vectors):
        it checks the shards, writes the docid lookup index and then ``manifest.json`` last, so
        the store becomes visible only once everything it lists exists.

        Args:
            path: the store directory holding the shards.
            shard_names: the finished shard directories (``shard-NNNNN``) in row order.
            fingerprint: the ``candidate_fingerprint()`` of the model that encoded them.
            shard_size: the build's shard size (recorded so ``build(mode='resume')`` can check it).
            dtype: the shards' vector dtype, ``"float16"`` or ``"float32"``.
            with_pooled: whether the shards hold pooled vectors and a FAISS index.
            build_stats: ``{"docs", "seconds", "docs_per_s"}`` of the build, kept as
                ``last_build_stats`` (its ``docs_per_s`` goes into the manifest).
            search_metric: the metric the shards' FAISS copies were written for (the
                ``search_metric`` of their :class:`~.shard.ShardWriter`); ``None``: the one the
                shards record. Every shard must agree with it.

        Returns:
            The opened store.

        Raises:
            StoreCorruptError: a shard is missing, damaged or inconsistent with the others.
            ValueError: no shards, a bad argument, or a docid held by more than one row (the
                message names the docids and the shards that hold them).
        """
        path = Path(path)
        if not isinstance(fingerprint, dict) or "sha256" not in fingerprint:
            raise ValueError(
                "fingerprint must be a model's candidate_fingerprint() dict with a 'sha256' key"
            )
        fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))  # as stored on disk
        _check_positive_int("shard_size", shard_size)
        dtype = _check_dtype(dtype)
        if not shard_names:
            raise ValueError(f"no shards given to assemble into a store at {path}")
        if search_metric is not None:
            search_metric = check_search_metric(search_metric)
        params = {
            "fingerprint": fingerprint,
            "shard_size": shard_size,
            "dtype": dtype,
            "with_pooled": bool(with_pooled),
            "search_metric": search_metric,
        }
        entries: list[dict[str, Any]] = []
        row = 0
        for name in shard_names:
            if shard_number(name) is None:
                raise ValueError(f"{name!r} is not a shard directory name (shard-NNNNN)")
            entry = _read_shard_entry(path, name)
            if entry.get("name") != name:
                raise StoreCorruptError(
                    f"{path / name / 'shard.json'} names shard {entry.get('name')!r}; the "
                    "directory was renamed or copied. Rebuild the store."
                )
            if (entry.get("pooled_dim") is not None) != bool(with_pooled):
                raise ValueError(
                    f"{path / name} {'has no' if with_pooled else 'has'} pooled vectors, but "
                    f"with_pooled={bool(with_pooled)}"
                )
            if params["search_metric"] is None:
                params["search_metric"] = entry_search_metric(entry)
            if entry_search_metric(entry) != params["search_metric"]:
                raise ValueError(
                    f"{path / name} was written with search_metric="
                    f"{entry_search_metric(entry)!r}, but the store's is "
                    f"{params['search_metric']!r}; all shards must use the same metric"
                )
            first = entries[0] if entries else entry
            # Opening runs the same size/header checks as open() and checks dims and dtype.
            Shard.open(
                path,
                entry,
                row,
                dim=first["dim"],
                pooled_dim=first["pooled_dim"],
                dtype=np.dtype(dtype),
            )
            entries.append(entry)
            row += int(entry["count"])

        old_manifest = _read_manifest(path) if (path / MANIFEST).is_file() else None
        generation = 0 if old_manifest is None else old_manifest["index"]["generation"] + 1
        keys, rows = _keys_and_rows(path, entries, first_row=0)
        _check_unique_across_shards(path, keys, entries)
        index = _write_index(path, generation, keys, rows, np.zeros(0, np.int64), replace=False)
        docs_per_s = (build_stats or {}).get("docs_per_s")
        if docs_per_s is None and old_manifest is not None:
            docs_per_s = old_manifest.get("build_docs_per_s")
        manifest = _make_manifest(params, entries, index, docs_per_s)
        _commit_manifest(path, manifest)  # the commit point of the assembly
        (path / BUILD_STATE).unlink(missing_ok=True)
        _remove_unreferenced(path, manifest)
        logger.info(
            "assembled candidate store %s: %d candidates, %d shards", path, manifest["count"],
            len(entries),
        )
        store = cls(path, manifest)
        store.last_build_stats = build_stats
        return store

    @classmethod
    def open(cls, path: str | Path, *, model: Any = None) -> CandidateStore:
        """Open a finished store without reading its vectors (everything is memory-mapped).

        Checks every file's presence, byte size and ``.npy`` header against the manifest; see
        :meth:`verify` for the full checksum pass.

        Args:
            path: the store directory.
            model: if given, :meth:`check_compatible` is called with it.

        Raises:
            FileNotFoundError: ``path`` is not a store.
            IncompleteStoreError: the build never finished (no manifest).
            StoreCorruptError: a file is missing, truncated or inconsistent with the manifest.
            ValueError: ``model`` is not the model the store was built with.
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"no candidate store at {path}: not a directory. Create one with "
                "CandidateStore.build(path, model, docs)."
            )
        if not (path / MANIFEST).is_file():
            if _looks_like_store(path):
                raise IncompleteStoreError(
                    f"candidate store at {path} is incomplete: its build did not finish (there "
                    f"is no {MANIFEST}). Rerun CandidateStore.build({str(path)!r}, model, docs, "
                    "mode='resume') with the same model and corpus to finish it."
                )
            raise FileNotFoundError(f"{path} is not a candidate store: it has no {MANIFEST}")
        for attempt in range(_OPEN_ATTEMPTS):
            before = _manifest_identity(path)
            try:
                manifest = _read_manifest(path)
            except FileNotFoundError:  # removed since the check above: build(mode='overwrite')
                raise IncompleteStoreError(
                    f"candidate store at {path} is being rebuilt or was removed while opening "
                    f"it (its {MANIFEST} disappeared); open it again once the build finished"
                ) from None
            _check_manifest(path, manifest)
            try:
                try:
                    store = cls(path, manifest)
                except (KeyError, TypeError, IndexError, AttributeError) as e:
                    raise StoreCorruptError(
                        f"{path / MANIFEST} has unexpected content ({type(e).__name__}: {e}); "
                        f"it is damaged. Run `mixencoder store verify {path}` and rebuild."
                    ) from e
                break
            except (StoreCorruptError, FileNotFoundError):
                # A writer may have committed a new manifest (and removed the files the old one
                # listed) between our reading it and opening those files: read the new one.
                # Only a manifest that stays put while its files are damaged is an error.
                if attempt + 1 == _OPEN_ATTEMPTS or _manifest_identity(path) == before:
                    raise
                logger.debug("%s changed while opening it; re-reading the manifest", path)
        if model is not None:
            store.check_compatible(model)
        return store

    def _load(self, manifest: dict[str, Any]) -> None:
        """Memory-map the shards and the lookup index listed in ``manifest``."""
        self._manifest = manifest
        self._ann: Any = None  # the approximate index, opened on first approximate search
        self._dtype = np.dtype(manifest["dtype"])
        self._shards: list[Shard] = []
        row = 0
        for entry in manifest["shards"]:
            self._shards.append(
                Shard.open(
                    self.path,
                    entry,
                    row,
                    dim=manifest["dim"],
                    pooled_dim=manifest["pooled_dim"],
                    dtype=self._dtype,
                )
            )
            row += entry["count"]
        self._num_rows = row
        self._starts = np.array([s.start for s in self._shards], dtype=np.int64)

        index_dir = self.path / manifest["index"]["name"]
        files = manifest["index"]["files"]
        self._sorted_docids = open_npy(index_dir / "docids_sorted.npy", files["docids_sorted.npy"])
        self._sorted_rows = open_npy(index_dir / "rows_sorted.npy", files["rows_sorted.npy"])
        # Superseded rows are few; holding them in memory keeps search's filter simple.
        self._dead = np.array(open_npy(index_dir / "dead_rows.npy", files["dead_rows.npy"]))
        live = len(self._sorted_docids)
        if live != manifest["count"] or live + len(self._dead) != self._num_rows:
            raise StoreCorruptError(
                f"store at {self.path} is inconsistent: the manifest says {manifest['count']} "
                f"candidates, the lookup index has {live} live and {len(self._dead)} superseded "
                f"rows, the shards hold {self._num_rows} rows. Rebuild the store."
            )
        bounds = np.append(self._starts, self._num_rows)
        self._dead_per_shard = np.diff(np.searchsorted(self._dead, bounds))

    # ------------------------------------------------------------------------------------------
    # Metadata
    # ------------------------------------------------------------------------------------------

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The ``candidate_fingerprint()`` of the model that built the store."""
        return copy.deepcopy(self._manifest["fingerprint"])

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the parsed ``manifest.json``."""
        return copy.deepcopy(self._manifest)

    @property
    def dim(self) -> int:
        """Dimension of the stored (per-candidate, multi-vector) reps."""
        return int(self._manifest["dim"])

    @property
    def pooled_dim(self) -> int | None:
        """Dimension of the pooled vectors, or None if the store keeps none."""
        return self._manifest["pooled_dim"]

    @property
    def search_metric(self) -> str:
        """How :meth:`search` scores: ``"ip"`` or ``"cosine"`` (stores without the key: "ip")."""
        return str(self._manifest.get("search_metric", "ip"))

    @property
    def dtype(self) -> str:
        """On-disk dtype of the vectors: ``"float16"`` or ``"float32"``."""
        return str(self._manifest["dtype"])

    @property
    def nbytes(self) -> int:
        """Bytes on disk of all data files the manifest lists (JSON metadata excluded)."""
        return sum(entry["bytes"] for _, entry in self._data_files())

    def bytes_per_candidate(self, *, include_search_index: bool = True) -> float:
        """On-disk bytes per stored candidate.

        Args:
            include_search_index: count the ``pooled.faiss`` files, which duplicate the pooled
                vectors as float32 for dense search. Pass False for the cost of reranking only.
        """
        total = sum(
            entry["bytes"]
            for rel, entry in self._data_files()
            if include_search_index or not rel.endswith(".faiss")
        )
        return total / len(self)

    def __len__(self) -> int:
        return int(self._manifest["count"])

    def __repr__(self) -> str:
        return (
            f"CandidateStore({str(self.path)!r}, count={len(self)}, dim={self.dim}, "
            f"pooled_dim={self.pooled_dim}, dtype={self.dtype}, shards={len(self._shards)})"
        )

    def check_compatible(self, model: Any) -> None:
        """Raise unless ``model`` has the fingerprint the store was built with.

        Raises:
            ValueError: naming the fingerprint keys that differ.
        """
        theirs = _fingerprint_of(model)
        ours = self._manifest["fingerprint"]
        if theirs == ours:
            return
        absent = "<absent>"
        keys = sorted(
            k for k in ours.keys() | theirs.keys() if ours.get(k, absent) != theirs.get(k, absent)
        )
        details = ", ".join(
            f"{k}: store={_short(ours.get(k, absent))} model={_short(theirs.get(k, absent))}"
            for k in keys
        )
        raise ValueError(
            f"store at {self.path} was built by a different model: fingerprint keys {keys} "
            f"differ ({details}); rebuild the store with this model "
            "(CandidateStore.build(..., mode='overwrite')) or load the model it was built with."
        )

    def verify(self) -> None:
        """Full integrity check (``mixencoder store verify``): read every file of the store.

        Re-hashes every data file against the manifest and checks offsets, docid uniqueness,
        the lookup index and the FAISS copies (see :func:`mixencoder.store.verify.verify_store`,
        which returns the problems as a report instead of raising). Reads the whole store, so
        it takes as long as reading it from disk; :meth:`open` only runs the cheap size and
        header checks.

        Raises:
            StoreCorruptError: listing every problem, each with the file it concerns.
        """
        from .verify import verify_store

        report = verify_store(self.path)
        report.raise_if_bad()
        logger.info("verified %s: %d files OK", self.path, report.files_checked)

    def _data_files(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(path relative to the store, manifest file entry)`` for every data file."""
        for shard in self._manifest["shards"]:
            for fname, entry in shard["files"].items():
                yield f"{shard['name']}/{fname}", entry
        index = self._manifest["index"]
        for fname, entry in index["files"].items():
            yield f"{index['name']}/{fname}", entry

    # ------------------------------------------------------------------------------------------
    # Lookup
    # ------------------------------------------------------------------------------------------

    def __contains__(self, docid: object) -> bool:
        return isinstance(docid, str) and bool(self._rows_of([docid])[0] >= 0)

    def docids(self) -> list[str]:
        """Every docid the store holds, in byte order (reads the whole lookup index)."""
        return [d.decode("utf-8") for d in np.asarray(self._sorted_docids).tolist()]

    def missing(self, docids: Sequence[str]) -> list[str]:
        """The docids (in the given order) that the store does not hold."""
        docids = _as_docid_list(docids)
        rows = self._rows_of(docids)
        return [docids[i] for i in np.flatnonzero(rows < 0)]

    def gather(self, docids: Sequence[str]) -> CandidateReps:
        """The reps of ``docids``, in that order, as float32 tensors.

        Args:
            docids: the candidates to fetch (repeats allowed).

        Returns:
            ``CandidateReps`` with ``vectors (n, m, dim)`` zero-padded to the longest candidate,
            ``lengths (n,)`` and ``pooled (n, pooled_dim)`` (None if the store has none).

        Raises:
            KeyError: some docids are not in the store (the message says how many and names
                the first few).
        """
        docids = _as_docid_list(docids)
        rows = self._rows_of(docids)
        absent = np.flatnonzero(rows < 0)
        if absent.size:
            raise KeyError(
                f"{absent.size} of {len(docids)} requested docids are not in the store at "
                f"{self.path}, e.g. {[docids[i] for i in absent[:_SHOW_IDS]]}. Was the store "
                "built from the same corpus as the candidate lists? Add them with store.add()."
            )
        return self._gather_rows(rows)

    def _rows_of(self, docids: Sequence[str]) -> np.ndarray:
        """Global row of each docid (vectorised binary search); -1 where absent."""
        keys = [d.encode("utf-8") for d in docids]
        pos = lookup_sorted(self._sorted_docids, keys)
        found = pos >= 0
        rows = np.full(len(keys), -1, dtype=np.int64)
        rows[found] = self._sorted_rows[pos[found]]
        return rows

    def _gather_rows(self, rows: np.ndarray) -> CandidateReps:
        """Read the given global rows from the shards' memory maps and pad them."""
        n = len(rows)
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1
        begins = np.zeros(n, dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        # Group the request by shard with one sort (not one scan of the request per shard).
        order = np.argsort(shard_of, kind="stable")
        cuts = np.searchsorted(shard_of[order], np.arange(len(self._shards) + 1))
        groups = []  # (shard, positions in the request, local rows), one per shard touched
        for s in np.flatnonzero(np.diff(cuts)):
            shard = self._shards[s]
            sel = order[cuts[s] : cuts[s + 1]]
            local = rows[sel] - shard.start
            offsets = shard.offsets.view(np.ndarray)  # plain view: np.memmap indexing is slow
            b, e = offsets[local], offsets[local + 1]
            begins[sel], lengths[sel] = b, e - b
            groups.append((shard, sel, local))

        m = int(lengths.max()) if n else 0
        vectors = np.zeros((n, m, self.dim), dtype=np.float32)
        pooled = None if self.pooled_dim is None else np.zeros((n, self.pooled_dim), np.float32)
        for shard, sel, local in groups:
            lens = lengths[sel]
            source = shard.vectors.view(np.ndarray)
            if (lens == m).all():
                # Every candidate has m vectors (any fixed-k model): one block copy, no padding.
                flat_rows = (begins[sel][:, None] + np.arange(m)).ravel()
                vectors[sel] = source[flat_rows].reshape(len(sel), m, self.dim)
            else:
                # Flatten the ranges [begin_i, begin_i + len_i) into one fancy index into the
                # mmap, so each shard costs one read call whatever the number of candidates.
                total = int(lens.sum())
                ends_excl = np.cumsum(lens) - lens
                within = np.arange(total) - np.repeat(ends_excl, lens)
                flat_rows = np.repeat(begins[sel], lens) + within
                vectors[np.repeat(sel, lens), within] = source[flat_rows]
            if pooled is not None:
                assert shard.pooled is not None
                pooled[sel] = shard.pooled.view(np.ndarray)[local]
        return CandidateReps(
            vectors=torch.from_numpy(vectors),
            lengths=torch.from_numpy(lengths),
            pooled=None if pooled is None else torch.from_numpy(pooled),
        )

    def _docids_of_rows(self, rows: np.ndarray) -> list[str]:
        """Docid of each global row (vectorised per shard)."""
        out = np.empty(len(rows), dtype=object)
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1
        for s in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == s)
            shard = self._shards[s]
            out[sel] = list(shard.docids[rows[sel] - shard.start])
        return [b.decode("utf-8") for b in out]

    # ------------------------------------------------------------------------------------------
    # Dense search
    # ------------------------------------------------------------------------------------------

    def search(
        self,
        query_vectors: np.ndarray,
        k: int,
        *,
        approximate: bool = False,
        nprobe: int | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Dense search over the pooled vectors (FAISS, merged across shards).

        Scores are inner products of the pooled vectors as stored when :attr:`search_metric`
        is ``"ip"``, and cosines when it is ``"cosine"`` (the queries are L2-normalised here,
        the stored copies were normalised at build time).

        Args:
            query_vectors: ``(nq, pooled_dim)`` float array, e.g. from
                ``model.encode_queries_pooled(queries)``.
            k: hits per query (fewer if the store holds fewer candidates).
            approximate: search the IVF index built by :meth:`build_ann_index` instead of
                scanning every vector (much faster on large stores; recall below 1).
            nprobe: IVF lists scanned per query (approximate only); default: the index's own.

        Returns:
            For each query, ``[(docid, score), ...]`` sorted by decreasing score.

        Raises:
            ValueError: the store has no pooled vectors, the queries have the wrong shape, or
                the approximate index is stale.
            FileNotFoundError: ``approximate=True`` but no approximate index was built.
        """
        if self.pooled_dim is None:
            raise ValueError(
                f"store at {self.path} has no pooled vectors (built with with_pooled=False), "
                "so it cannot do dense search; rebuild it with with_pooled=True"
            )
        q = np.asarray(query_vectors, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.pooled_dim:
            hint = " (for one query pass q[None, :])" if q.ndim == 1 else ""
            raise ValueError(
                f"query_vectors must have shape (nq, {self.pooled_dim}), got {q.shape}{hint}"
            )
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = l2_normalise(q) if self.search_metric == "cosine" else np.ascontiguousarray(q)
        if approximate:
            if self._ann is None:
                from .ann import open_ann_index

                self._ann = open_ann_index(self)
            top_scores, top_rows = self._ann.search(q, int(k), nprobe)
            return self._hits(top_scores, top_rows, top_rows >= 0)

        scores, rows = [], []
        for shard, n_dead in zip(self._shards, self._dead_per_shard):
            # Ask for extra hits where superseded rows might take some of the top k.
            kk = min(shard.count, int(k) + int(n_dead))
            d, i = shard.faiss_index().search(q, kk)
            r = np.where(i >= 0, i + shard.start, -1)
            invalid = i < 0
            if n_dead:
                invalid |= np.isin(r, self._dead)
            scores.append(np.where(invalid, -np.inf, d))
            rows.append(r)
        all_scores = np.concatenate(scores, axis=1)
        all_rows = np.concatenate(rows, axis=1)
        top = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        top_scores = np.take_along_axis(all_scores, top, axis=1)
        top_rows = np.take_along_axis(all_rows, top, axis=1)
        return self._hits(top_scores, top_rows, np.isfinite(top_scores))

    def _hits(
        self, top_scores: np.ndarray, top_rows: np.ndarray, valid: np.ndarray
    ) -> list[list[tuple[str, float]]]:
        """Per query, ``(docid, score)`` of the valid entries of ranked score/row matrices."""
        docids = self._docids_of_rows(top_rows[valid])
        results: list[list[tuple[str, float]]] = []
        pos = 0
        for qi in range(len(top_scores)):
            n_hits = int(valid[qi].sum())
            hits = zip(docids[pos : pos + n_hits], top_scores[qi][valid[qi]].tolist())
            results.append(list(hits))
            pos += n_hits
        return results

    def build_ann_index(self, **kwargs: Any) -> Any:
        """Build the approximate (IVF) index that ``search(..., approximate=True)`` uses.

        Keyword arguments (``kind``, ``nlist``, ``nprobe``, ``train_size``, ``seed``) are those
        of :func:`mixencoder.store.ann.build_ann_index`.

        Returns:
            The opened :class:`mixencoder.store.ann.AnnIndex` (``.info`` holds its parameters).
        """
        from .ann import build_ann_index

        self._ann = build_ann_index(self, **kwargs)
        return self._ann

    # ------------------------------------------------------------------------------------------
    # Appending
    # ------------------------------------------------------------------------------------------

    def add(
        self,
        model: Any,
        docs: Iterable[tuple[str, str]],
        *,
        replace: bool = False,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> None:
        """Encode more candidates and append them as new shard(s).

        The store on disk changes only when the new manifest is written at the end; if this
        fails midway, the store is left as it was (the partial new shards are removed).

        Args:
            model: must have the store's fingerprint (see :meth:`check_compatible`).
            docs: ``(docid, text)`` pairs, streamed; docids must be unique within the call.
            replace: if False, a docid already in the store is an error. If True, the new rep
                supersedes the stored one: lookups and search return the newest row (the old
                row stays on disk, unreachable).
            batch_size: texts per ``encode_candidates`` call.
            show_progress_bar: as in :meth:`build`.

        Raises:
            ValueError: model mismatch, a docid already stored (``replace=False``), or a docid
                repeated within ``docs``.
        """
        self.check_compatible(model)
        _check_positive_int("batch_size", batch_size)
        _remove_unreferenced(self.path, self._manifest)  # leftovers of an earlier failed add
        first_number = max(shard_number(e["name"]) or 0 for e in self._manifest["shards"]) + 1

        def reject_existing(keys: list[bytes]) -> None:
            if replace:
                return
            present = np.flatnonzero(lookup_sorted(self._sorted_docids, keys) >= 0)
            if present.size:
                names = [keys[i].decode() for i in present[:_SHOW_IDS]]
                raise ValueError(
                    f"{present.size} docids are already in the store at {self.path}, e.g. "
                    f"{names}; pass replace=True to supersede them with the new encodings, or "
                    "drop them from docs"
                )

        start = time.perf_counter()
        try:
            with _progress(show_progress_bar, docs, initial=0) as bar:
                entries = _write_shards(
                    self.path,
                    model,
                    iter(docs),
                    first_number=first_number,
                    shard_size=self._manifest["shard_size"],
                    dtype=self._dtype,
                    with_pooled=self.pooled_dim is not None,
                    search_metric=self.search_metric,
                    origin="add",
                    dims=(self.dim, self.pooled_dim),
                    batch_size=batch_size,
                    seen=_SeenDocids(),
                    bar=bar,
                    check_batch=reject_existing,
                )
            if not entries:
                logger.warning("add(): docs yielded nothing; %s is unchanged", self.path)
                return
            stats = _throughput(sum(e["count"] for e in entries), time.perf_counter() - start)
            old_keys = np.asarray(self._sorted_docids)
            new_keys, new_rows = _keys_and_rows(self.path, entries, first_row=self._num_rows)
            # Old entries first, then new rows in row order: on equal docids the stable sort in
            # _write_index keeps the newest row last, which is the one that wins.
            keys = np.concatenate([old_keys, new_keys])
            rows = np.concatenate([np.asarray(self._sorted_rows), new_rows])
            index = _write_index(
                self.path,
                self._manifest["index"]["generation"] + 1,
                keys,
                rows,
                self._dead,
                replace=replace,
            )
            params = {
                "fingerprint": self._manifest["fingerprint"],
                "shard_size": self._manifest["shard_size"],
                "dtype": self.dtype,
                "with_pooled": self.pooled_dim is not None,
                "search_metric": self.search_metric,
            }
            manifest = _make_manifest(
                params,
                self._manifest["shards"] + entries,
                index,
                self._manifest.get("build_docs_per_s"),
            )
            _commit_manifest(self.path, manifest)  # the commit point of the add
        except BaseException:
            _remove_unreferenced(self.path, self._manifest)
            raise
        _remove_unreferenced(self.path, manifest)
        self._load(manifest)
        self.last_build_stats = stats
        logger.info(
            "added %d candidates to %s (%.1f docs/s); it now holds %d",
            stats["docs"],
            self.path,
            stats["docs_per_s"] or 0.0,
            len(self),
        )


# ----------------------------------------------------------------------------------------------
# Build helpers
# ----------------------------------------------------------------------------------------------


class _SeenDocids:
    """Docids already written in this build/add, to reject a duplicate before encoding it.

    Finished shards are kept as sorted bytes arrays (a few bytes per docid, searched with
    np.searchsorted); only the shard being written is a Python set.
    """

    def __init__(self, finished: Iterable[np.ndarray] = ()) -> None:
        self._sorted: list[np.ndarray] = []
        self._current: set[bytes] = set()
        for arr in finished:
            self._current.update(arr.tolist())
            self.close_shard()

    def add_batch(self, keys: list[bytes]) -> None:
        dups = []
        for key in keys:
            if key in self._current:
                dups.append(key)
            self._current.add(key)
        for arr in self._sorted:
            dups.extend(keys[i] for i in np.flatnonzero(lookup_sorted(arr, keys) >= 0))
        if dups:
            names = sorted({d.decode() for d in dups})
            raise ValueError(
                f"docs contains duplicate docids, e.g. {names[:_SHOW_IDS]}; each docid may "
                "appear only once per build() or add(). Deduplicate the corpus."
            )

    def close_shard(self) -> None:
        if not self._current:
            return
        arr = np.sort(as_fixed_bytes(list(self._current)))
        self._current = set()
        # Merge runs like a binary counter: at most log2(#shards) arrays to search per batch,
        # and each docid is re-sorted only log2(#shards) times over the whole build.
        while self._sorted and len(self._sorted[-1]) <= len(arr):
            arr = np.sort(np.concatenate([self._sorted.pop(), arr]))
        self._sorted.append(arr)


def _write_shards(
    root: Path,
    model: Any,
    it: Iterator[Any],
    *,
    first_number: int,
    shard_size: int,
    dtype: np.dtype,
    with_pooled: bool,
    origin: str,
    dims: tuple[int | None, int | None],
    search_metric: str = "ip",
    batch_size: int,
    seen: _SeenDocids,
    bar: Any,
    check_batch: Callable[[list[bytes]], None] | None = None,
    position: int = 0,
) -> list[dict[str, Any]]:
    """Encode the rest of ``it`` into shards numbered from ``first_number``; return entries.

    A batch never straddles two shards, so every shard sees the same batches whether or not
    the build was interrupted (this keeps resumed stores identical to uninterrupted ones).
    ``check_batch`` may reject a batch's encoded docids before it is encoded; ``position`` is
    the stream index of the first remaining doc, for error messages.
    """
    entries: list[dict[str, Any]] = []
    dim, pooled_dim = dims
    writer: ShardWriter | None = None
    try:
        while True:
            if writer is None:
                writer = ShardWriter(
                    root,
                    first_number + len(entries),
                    dtype=dtype,
                    with_pooled=with_pooled,
                    origin=origin,
                    dim=dim,
                    pooled_dim=pooled_dim,
                    search_metric=search_metric,
                )
            # Hand the model many batches at once: it sorts each call's texts by length, so
            # bigger calls pad less (measured ~2x faster encoding with 16 batches per call).
            chunk = list(islice(it, min(batch_size * _BATCHES_PER_CALL, shard_size - writer.count)))
            if not chunk:
                break
            docids, texts = _split_pairs(chunk, position)
            position += len(chunk)
            keys = encode_docids(docids)
            seen.add_batch(keys)
            if check_batch is not None:
                check_batch(keys)
            reps = model.encode_candidates(texts, batch_size=batch_size, show_progress_bar=False)
            writer.add(keys, reps)
            dim, pooled_dim = writer.dim, writer.pooled_dim
            bar.update(len(chunk))
            if writer.count == shard_size:
                entries.append(writer.finish())
                seen.close_shard()
                writer = None
        if writer.count:
            entries.append(writer.finish())
            seen.close_shard()
        else:
            writer.abort()
        writer = None
    finally:
        if writer is not None:  # an exception: drop the unfinished shard, keep finished ones
            writer.abort()
    return entries


def _split_pairs(chunk: list[Any], position: int) -> tuple[list[str], list[str]]:
    """Split ``(docid, text)`` items, with an error naming the first malformed one."""
    docids, texts = [], []
    for j, item in enumerate(chunk):
        ok = isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], str)
        if not ok:
            raise TypeError(
                f"docs must yield (docid: str, text: str) pairs; item {position + j} is "
                f"{type(item).__name__} {repr(item)[:80]}"
            )
        if not item[1].strip():
            # Named here: the model would only say "candidate text <i in batch> is empty".
            raise ValueError(
                f"docs item {position + j} (docid {item[0]!r}) has an empty or whitespace-only "
                "text; a candidate needs text to encode. Drop it from docs or give it a text."
            )
        docids.append(item[0])
        texts.append(item[1])
    return docids, texts


def _prepare_build_dir(path: Path, mode: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """Apply ``mode`` to ``path``; return the manifest of a finished store that resume keeps."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    nonempty = path.is_dir() and any(path.iterdir())
    if nonempty and not _looks_like_store(path):
        # Never delete or write into a directory we did not create.
        raise FileExistsError(
            f"{path} exists, is not empty and is not a candidate store; refusing to touch it. "
            "Pass a new or empty directory."
        )
    old_manifest = None
    if mode == "create" and nonempty:
        what = "a candidate store" if (path / MANIFEST).exists() else "an unfinished store build"
        raise FileExistsError(
            f"{path} already holds {what}; pass mode='overwrite' to replace it or "
            "mode='resume' to continue an interrupted build"
        )
    if mode == "overwrite" and nonempty:
        logger.info("overwriting candidate store %s", path)
        # Un-commit first: a reader opening the store during the deletion then sees an
        # incomplete store (a clear error), never a manifest whose files are half deleted.
        (path / MANIFEST).unlink(missing_ok=True)
        fsync_dir(path)
        shutil.rmtree(path)
    if mode == "resume" and nonempty:
        old_manifest = _read_manifest(path) if (path / MANIFEST).exists() else None
        if old_manifest is not None:
            _check_manifest(path, old_manifest)
            if any(s.get("origin") == "add" for s in old_manifest["shards"]):
                raise ValueError(
                    f"store at {path} is complete and was extended with add(); resume only "
                    "continues an interrupted build. Use mode='overwrite' to rebuild it."
                )
            previous = {
                "fingerprint": old_manifest["fingerprint"],
                "shard_size": old_manifest["shard_size"],
                "dtype": old_manifest["dtype"],
                "with_pooled": old_manifest["pooled_dim"] is not None,
                "search_metric": old_manifest.get("search_metric", "ip"),
            }
        elif (path / BUILD_STATE).exists():
            previous = read_json(path / BUILD_STATE)
            # A build state without the metric (older versions): the finished shards record
            # the metric they were written with, and _finished_build_shards checks those.
            previous.setdefault("search_metric", params["search_metric"])
        else:
            previous = params  # only orphan shard dirs: their own entries are checked later
        _check_same_params(path, previous, params)
    path.mkdir(parents=True, exist_ok=True)
    return old_manifest


def _check_same_params(path: Path, previous: dict[str, Any], params: dict[str, Any]) -> None:
    diff = [k for k in params if previous.get(k) != params[k]]
    if not diff:
        return
    if "fingerprint" in diff:
        raise ValueError(
            f"cannot resume the build at {path}: it was started by a different model "
            "(candidate fingerprints differ). Use the same model, or mode='overwrite'."
        )
    was = ", ".join(f"{k}={previous.get(k)!r}" for k in diff)
    now = ", ".join(f"{k}={params[k]!r}" for k in diff)
    raise ValueError(
        f"cannot resume the build at {path}: it was started with {was}, now called with {now}. "
        "Pass the original arguments, or mode='overwrite' to start over."
    )


def _finished_build_shards(path: Path, params: dict[str, Any]) -> list[Shard]:
    """Open the complete shards an interrupted build left, checking they form 0..n-1."""
    _remove_temp_dirs(path)
    numbers = sorted(
        n for p in path.iterdir() if p.is_dir() and (n := shard_number(p.name)) is not None
    )
    if numbers != list(range(len(numbers))):
        raise StoreCorruptError(
            f"{path} holds shards {numbers}, not a contiguous sequence from 0; it was not "
            "written by one build. Rebuild with mode='overwrite'."
        )
    shards, row = [], 0
    for n in numbers:
        entry = _read_shard_entry(path, f"shard-{n:05d}")
        if entry.get("origin") != "build":
            raise ValueError(f"{path / entry['name']} was written by add(); cannot resume")
        first = shards[0] if shards else None
        shard = Shard.open(
            path,
            entry,
            row,
            dim=entry["dim"] if first is None else first.vectors.shape[1],
            pooled_dim=entry["pooled_dim"] if first is None else first.pooled_dim,
            dtype=np.dtype(params["dtype"]),
        )
        if (shard.pooled is not None) != params["with_pooled"]:
            raise ValueError(f"{path / entry['name']} does not match with_pooled; cannot resume")
        metric = params.get("search_metric", "ip")
        if entry_search_metric(entry) != metric:
            raise ValueError(
                f"cannot resume the build at {path}: {path / entry['name']} was written with "
                f"search_metric={entry_search_metric(entry)!r}, now called with "
                f"search_metric={metric!r}. Pass the original metric, or mode='overwrite'."
            )
        shards.append(shard)
        row += shard.count
    return shards


def _skip_finished_prefix(it: Iterator[Any], finished: list[Shard], shard_size: int) -> int:
    """Consume the docs already stored in ``finished``, checking they are the same docs."""
    done = 0
    total = sum(s.count for s in finished)
    for shard in finished:
        for lo in range(0, shard.count, _SKIP_CHUNK):
            hi = min(lo + _SKIP_CHUNK, shard.count)
            docids, _ = _split_pairs(list(islice(it, hi - lo)), done)
            if len(docids) < hi - lo:
                raise ValueError(
                    f"cannot resume: docs ended after {done + len(docids)} documents but the "
                    f"interrupted build already stored {total}; this is not the same corpus. "
                    "Rebuild with mode='overwrite'."
                )
            stored = np.asarray(shard.docids[lo:hi])
            mismatch = np.flatnonzero(as_fixed_bytes(encode_docids(docids)) != stored)
            if mismatch.size:
                i = int(mismatch[0])
                raise ValueError(
                    f"cannot resume: document {done + i} of docs has docid {docids[i]!r} but "
                    f"the interrupted build stored {stored[i].decode()!r} there; the corpus "
                    "(or its order) changed. Rebuild with mode='overwrite'."
                )
            done += len(docids)
    if finished and finished[-1].count < shard_size:
        # A partial last shard means the stream ended there; more docs mean a different corpus.
        if next(it, None) is not None:
            raise ValueError(
                f"cannot resume: the interrupted build stored all {total} documents it saw "
                "(its last shard is partial), but docs has more; the corpus changed. Rebuild "
                "with mode='overwrite'."
            )
    return done


def _read_shard_entry(path: Path, name: str) -> dict[str, Any]:
    entry_path = path / name / "shard.json"
    if not entry_path.is_file():
        raise StoreCorruptError(f"{entry_path} is missing; the shard is damaged. Rebuild.")
    return read_json(entry_path)


def _keys_and_rows(
    path: Path, entries: list[dict[str, Any]], first_row: int
) -> tuple[np.ndarray, np.ndarray]:
    """All docids of ``entries``' shards with their global rows, in row order."""
    keys = [np.load(path / e["name"] / "docids.npy", mmap_mode="r") for e in entries]
    total = sum(e["count"] for e in entries)
    return np.concatenate(keys), np.arange(first_row, first_row + total, dtype=np.int64)


def _write_index(
    root: Path,
    generation: int,
    keys: np.ndarray,
    rows: np.ndarray,
    prior_dead: np.ndarray,
    *,
    replace: bool,
) -> dict[str, Any]:
    """Write ``index-<generation>/`` (sorted docids -> rows) atomically; return its entry.

    On equal docids the entry that comes last in ``keys`` wins (callers pass rows oldest
    first); the others become dead rows, which is an error unless ``replace``.
    """
    order = np.argsort(keys, kind="stable")
    sorted_keys, sorted_rows = keys[order], rows[order]
    is_last = np.ones(len(sorted_keys), dtype=bool)
    is_last[:-1] = sorted_keys[1:] != sorted_keys[:-1]
    if not replace and not is_last.all():
        names = sorted({k.decode() for k in sorted_keys[~is_last]})
        raise ValueError(
            f"{len(names)} docids occur more than once, e.g. {names[:_SHOW_IDS]}; deduplicate "
            "the corpus (or use add(..., replace=True) to supersede stored candidates)"
        )
    dead = np.sort(np.concatenate([prior_dead, sorted_rows[~is_last]])).astype(np.int64)

    name = f"{INDEX_PREFIX}{generation:05d}"
    final, tmp = root / name, root / f"{TMP_PREFIX}{name}"
    for stale in (final, tmp):  # never the live index: that one has a lower generation
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir()
    arrays = {
        "docids_sorted.npy": sorted_keys[is_last],
        "rows_sorted.npy": sorted_rows[is_last],
        "dead_rows.npy": dead,
    }
    files = {}
    for fname, arr in arrays.items():
        np.save(tmp / fname, arr)
        fsync_file(tmp / fname)
        files[fname] = npy_entry(tmp / fname)
    fsync_dir(tmp)
    tmp.rename(final)
    fsync_dir(root)
    return {"name": name, "generation": generation, "files": files}


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """sha256 of the canonical JSON text of ``manifest`` without its own checksum key.

    Written into ``manifest.json`` under :data:`MANIFEST_CHECKSUM` at every commit, so that
    :func:`mixencoder.store.verify.verify_store` can tell a changed manifest from a valid one
    (the data files' sha256 live inside the manifest and cannot vouch for it).
    """
    body = {k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}
    return hashlib.sha256(json_text(body).encode("utf-8")).hexdigest()


def _commit_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Atomically replace ``manifest.json`` (with its checksum): a store's commit point."""
    atomic_write_json(path / MANIFEST, {**manifest, MANIFEST_CHECKSUM: manifest_checksum(manifest)})


def _read_manifest(path: Path) -> Any:
    """Parse ``path/manifest.json``; the checksum key is dropped (only verify uses it)."""
    manifest = read_json(path / MANIFEST)
    if isinstance(manifest, dict):
        manifest.pop(MANIFEST_CHECKSUM, None)
    return manifest


def _manifest_identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime, size) of the manifest: a commit (os.replace) always changes the inode."""
    try:
        st = os.stat(path / MANIFEST)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _make_manifest(
    params: dict[str, Any],
    entries: list[dict[str, Any]],
    index: dict[str, Any],
    docs_per_s: float | None,
) -> dict[str, Any]:
    first = entries[0]
    return {
        "format_version": FORMAT_VERSION,
        "fingerprint": params["fingerprint"],
        "count": index["files"]["docids_sorted.npy"]["shape"][0],
        "rows": sum(e["count"] for e in entries),
        "total_vectors": sum(e["total_vectors"] for e in entries),
        "dim": first["dim"],
        "pooled_dim": first["pooled_dim"] if params["with_pooled"] else None,
        "dtype": params["dtype"],
        "shard_size": params["shard_size"],
        "search_metric": params.get("search_metric") or "ip",
        "shards": entries,
        "index": index,
        "build_docs_per_s": docs_per_s,
    }


_REQUIRED_KEYS = ("format_version", "fingerprint", "count", "dim", "pooled_dim", "dtype",
                  "shard_size", "shards", "index")


def _check_manifest(path: Path, manifest: Any) -> None:
    if not isinstance(manifest, dict) or any(k not in manifest for k in _REQUIRED_KEYS):
        raise StoreCorruptError(
            f"{path / MANIFEST} lacks required keys {list(_REQUIRED_KEYS)}; it is corrupt or "
            "not a candidate store manifest. Rebuild the store."
        )
    if manifest["format_version"] != FORMAT_VERSION:
        raise StoreCorruptError(
            f"store at {path} has format_version {manifest['format_version']}, this mixencoder "
            f"reads version {FORMAT_VERSION}; rebuild the store with this version."
        )
    if manifest.get("search_metric", "ip") not in ("ip", "cosine"):
        raise StoreCorruptError(
            f"{path / MANIFEST} has search_metric {manifest['search_metric']!r}, not 'ip' or "
            "'cosine'; it is corrupt. Rebuild the store."
        )


def resolve_search_metric(search_metric: str | None, model: Any) -> str:
    """``search_metric``, or for None the model's (``model.search_metric``; "ip" without one)."""
    if search_metric is None:
        search_metric = getattr(model, "search_metric", None)
        if callable(search_metric):
            search_metric = search_metric()
        if search_metric is None:
            search_metric = "ip"
    return check_search_metric(search_metric)


def _looks_like_store(path: Path) -> bool:
    """True if ``path`` holds a store or the remains of a store build."""
    if (path / MANIFEST).exists() or (path / BUILD_STATE).exists():
        return True
    return any(shard_number(p.name) is not None for p in path.iterdir() if p.is_dir())


def _remove_temp_dirs(path: Path) -> None:
    for p in path.iterdir():
        if p.name.startswith(TMP_PREFIX) and p.is_dir():
            logger.debug("removing leftover temp dir %s", p)
            shutil.rmtree(p, ignore_errors=True)


def _remove_unreferenced(path: Path, manifest: dict[str, Any]) -> None:
    """Delete shard/index dirs the manifest does not list (leftovers of failed writes)."""
    keep = {e["name"] for e in manifest["shards"]} | {manifest["index"]["name"]}
    for p in path.iterdir():
        unref = p.is_dir() and p.name not in keep and (
            shard_number(p.name) is not None or p.name.startswith(INDEX_PREFIX)
        )
        if unref or (p.is_dir() and p.name.startswith(TMP_PREFIX)):
            logger.debug("removing unreferenced %s", p)
            shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Small validators
# ----------------------------------------------------------------------------------------------


def _fingerprint_of(model: Any) -> dict[str, Any]:
    """The model's candidate fingerprint, normalised through JSON as the manifest stores it."""
    if not callable(getattr(model, "candidate_fingerprint", None)):
        raise TypeError(
            f"{type(model).__name__} does not implement the Scorer protocol: it has no "
            "candidate_fingerprint() (see mixencoder.models.base.Scorer)"
        )
    fp = model.candidate_fingerprint()
    if not isinstance(fp, dict):
        raise TypeError(f"candidate_fingerprint() must return a dict, got {type(fp).__name__}")
    try:
        fp = json.loads(json.dumps(fp, sort_keys=True))  # tuples -> lists, as stored on disk
    except (TypeError, ValueError) as e:
        raise TypeError(f"candidate_fingerprint() must be JSON-serialisable: {e}") from e
    if "sha256" not in fp:
        raise ValueError(
            f"candidate_fingerprint() of {type(model).__name__} has no 'sha256' key (got keys "
            f"{sorted(fp)}); without it the store cannot tell models apart"
        )
    return fp


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_dtype(dtype: Any) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    return name


def _as_docid_list(docids: Sequence[str]) -> list[str]:
    if isinstance(docids, (str, bytes)):
        raise TypeError(
            f"expected a sequence of docids, got a single {type(docids).__name__} "
            f"{docids!r}; wrap it in a list"
        )
    docids = list(docids)
    for d in docids:
        if not isinstance(d, str):
            raise TypeError(f"docids must be str, got {type(d).__name__} {d!r}")
    return docids


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _throughput(docs: int, seconds: float) -> dict[str, Any]:
    return {
        "docs": docs,
        "seconds": seconds,
        "docs_per_s": docs / seconds if docs and seconds > 0 else None,
    }


def _progress(show: bool | None, docs: Any, *, initial: int) -> Any:
    """The "Encoding candidates" bar; shown by default only when INFO logging is on."""
    if show is None:
        show = logger.getEffectiveLevel() <= logging.INFO
    total = len(docs) if hasattr(docs, "__len__") else None
    return tqdm(
        desc="Encoding candidates", unit="doc", total=total, initial=initial, disable=not show
    )


def _check_unique_across_shards(
    path: Path, keys: np.ndarray, entries: list[dict[str, Any]]
) -> None:
    """Raise naming the docids held by more than one row, and the shards holding them."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    repeated = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if not repeated.size:
        return
    bounds = np.cumsum([0] + [int(e["count"]) for e in entries])
    names = np.unique(sorted_keys[repeated])
    examples = []
    for key in names[:_SHOW_IDS]:
        lo = int(np.searchsorted(sorted_keys, key, side="left"))
        hi = int(np.searchsorted(sorted_keys, key, side="right"))
        shards = [
            entries[int(np.searchsorted(bounds, r, side="right")) - 1]["name"]
            for r in order[lo:hi]
        ]
        examples.append(f"{key.decode()!r} in {', '.join(shards)}")
    raise ValueError(
        f"{len(names)} docids occur more than once across the shards of {path}, e.g. "
        + "; ".join(examples)
        + ". Deduplicate the corpus and rebuild."
    )
