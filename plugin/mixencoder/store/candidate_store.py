"""The candidate store: precomputed candidate representations on disk, served by docid.

Offline, :meth:`CandidateStore.build` streams ``(docid, text)`` pairs through a model's
``encode_candidates`` and writes the reps to a directory of shards (:mod:`.shard`) listed by a
``manifest.json`` (:mod:`.layout`). Online, :meth:`CandidateStore.open` memory-maps that
directory and :meth:`CandidateStore.gather` returns the reps of a query's ~1000 candidates as
one :class:`~mixencoder.models.base.CandidateReps`; :meth:`CandidateStore.search` is a dense
first stage over the pooled vectors.

Crash safety: a shard is written to a hidden temp directory and renamed into place when
complete, the lookup index likewise, and ``manifest.json`` is replaced atomically after
everything it lists exists (:func:`.layout.commit`, the one commit of every writer). A directory
without a manifest refuses to open; ``build(mode='resume')`` keeps the finished shards and
re-encodes only the rest. Only one process may write a store at a time.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..models.base import CandidateReps
from . import ann
from ._io import lookup_sorted
from .build import ShardSequence, begin_build, encode_into
from .errors import IncompleteStoreError, StoreCorruptError
from .layout import (
    MANIFEST,
    SHOW_IDS,
    BuildParams,
    check_manifest,
    check_positive_int,
    commit,
    looks_like_store,
    manifest_identity,
    normalise_fingerprint,
    read_manifest,
    read_shard_entry,
    remove_unreferenced,
)
from .rows import StoreRows
from .shard import Shard, entry_search_metric, l2_normalise, shard_number

logger = logging.getLogger(__name__)

_OPEN_ATTEMPTS = 5  # open() re-reads a manifest that a concurrent add() replaced meanwhile


class CandidateStore:
    """A memory-mapped, sharded store of candidate reps, looked up by string docid.

    Create one with :meth:`build` (offline) and open it with :meth:`open` (online). Instances
    are cheap: nothing is read into memory until :meth:`gather` or :meth:`search` touches it.

    Attributes:
        path: the store directory.
        rows: the read-only :class:`~mixencoder.store.rows.StoreRows` view of the committed
            state this instance serves (shards, docid lookup, rows); replaced by :meth:`add`.
        last_build_stats: ``{"docs", "seconds", "docs_per_s"}`` of the :meth:`build` or
            :meth:`add` that produced this instance's current state, else None.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        """Use :meth:`open` or :meth:`build`; this assumes ``manifest`` was already parsed."""
        self.path = path
        self.last_build_stats: dict[str, Any] | None = None
        self.rows = StoreRows.open(path, manifest)
        self._ann: ann.AnnIndex | None = None  # opened on the first approximate search

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
            model: a :class:`~mixencoder.models.base.Scorer`; ``candidate_fingerprint``,
                ``encode_candidates`` and ``search_metric`` are used.
            docs: ``(docid, text)`` pairs; docids must be unique, non-empty strings.
            batch_size: texts per forward pass of ``encode_candidates``.
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
                ``None`` takes ``model.search_metric``. Recorded in the manifest; a resume must
                use the same metric.

        Returns:
            The opened store; ``last_build_stats`` holds this run's throughput.

        Raises:
            FileExistsError: ``mode='create'`` and ``path`` is not empty, or ``path`` holds
                something that is not a candidate store.
            ValueError: duplicate docids, an empty corpus, or a resume whose model, arguments
                or corpus differ from the interrupted build.
        """
        path = Path(path)
        check_positive_int("batch_size", batch_size)
        params = BuildParams.for_model(model, shard_size, dtype, with_pooled, search_metric)
        it = iter(docs)
        begun = begin_build(path, mode, params, it)
        start = time.perf_counter()
        with _progress(show_progress_bar, docs, initial=begun.done) as bar:
            with begun.sequence(path, params) as seq:
                encode_into(seq, model, it, batch_size=batch_size, bar=bar)
        stats = _throughput(seq.docs, time.perf_counter() - start)
        manifest = commit(path, params, begun.entries + seq.entries, docs_per_s=stats["docs_per_s"])
        # A resume that had nothing left to encode keeps the original build's throughput.
        stats["docs_per_s"] = manifest["build_docs_per_s"]
        logger.info(
            "built candidate store %s: %d candidates, %d shards, %.1f docs/s",
            path, manifest["count"], len(manifest["shards"]), stats["docs_per_s"] or 0.0,
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
        it checks the shards, then commits them (lookup index, then ``manifest.json`` last), so
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
        if not shard_names:
            raise ValueError(f"no shards given to assemble into a store at {path}")
        entries = [_checked_entry(path, name, with_pooled) for name in shard_names]
        params = BuildParams.checked(
            fingerprint,
            shard_size=shard_size,
            dtype=dtype,
            with_pooled=with_pooled,
            search_metric=search_metric or entry_search_metric(entries[0]),
        )
        row = 0
        for entry in entries:
            if entry_search_metric(entry) != params.search_metric:
                raise ValueError(
                    f"{path / entry['name']} was written with search_metric="
                    f"{entry_search_metric(entry)!r}, but the store's is "
                    f"{params.search_metric!r}; all shards must use the same metric"
                )
            # Opening runs the same size/header checks as open() and checks dims and dtype.
            Shard.open(path, entry, row, dim=entries[0]["dim"],
                       pooled_dim=entries[0]["pooled_dim"], dtype=np.dtype(params.dtype))
            row += int(entry["count"])
        manifest = commit(path, params, entries, docs_per_s=(build_stats or {}).get("docs_per_s"))
        logger.info("assembled candidate store %s: %d candidates, %d shards", path,
                    manifest["count"], len(entries))
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
            if looks_like_store(path):
                raise IncompleteStoreError(
                    f"candidate store at {path} is incomplete: its build did not finish (there "
                    f"is no {MANIFEST}). Rerun CandidateStore.build({str(path)!r}, model, docs, "
                    "mode='resume') with the same model and corpus to finish it."
                )
            raise FileNotFoundError(f"{path} is not a candidate store: it has no {MANIFEST}")
        for attempt in range(_OPEN_ATTEMPTS):
            before = manifest_identity(path)
            try:
                manifest = read_manifest(path)
            except FileNotFoundError:  # removed since the check above: build(mode='overwrite')
                raise IncompleteStoreError(
                    f"candidate store at {path} is being rebuilt or was removed while opening "
                    f"it (its {MANIFEST} disappeared); open it again once the build finished"
                ) from None
            check_manifest(path, manifest)
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
                if attempt + 1 == _OPEN_ATTEMPTS or manifest_identity(path) == before:
                    raise
                logger.debug("%s changed while opening it; re-reading the manifest", path)
        if model is not None:
            store.check_compatible(model)
        return store

    # ------------------------------------------------------------------------------------------
    # Appending
    # ------------------------------------------------------------------------------------------

    def add(
        self,
        model: Any,
        docs: Iterable[tuple[str, str]],
        *,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> None:
        """Encode more candidates and append them as new shard(s).

        The store on disk changes only when the new manifest is written at the end; if this
        fails midway, the store is left as it was (the partial new shards are removed).

        Args:
            model: must have the store's fingerprint (see :meth:`check_compatible`).
            docs: ``(docid, text)`` pairs, streamed; each docid must be new to the store and
                occur once in ``docs``.
            batch_size: texts per forward pass of ``encode_candidates``.
            show_progress_bar: as in :meth:`build`.

        Raises:
            ValueError: model mismatch, a docid already stored, or a docid repeated in ``docs``.
        """
        self.check_compatible(model)
        check_positive_int("batch_size", batch_size)
        old = self.rows.manifest
        remove_unreferenced(self.path, old)  # leftovers of an earlier failed add
        params = BuildParams.of_manifest(old)

        def reject_stored(keys: list[bytes]) -> None:
            present = np.flatnonzero(lookup_sorted(self.rows.sorted_docids, keys) >= 0)
            if present.size:
                raise ValueError(
                    f"{present.size} docids are already in the store at {self.path}, e.g. "
                    f"{[keys[i].decode() for i in present[:SHOW_IDS]]}; drop them from docs "
                    "(a store holds one encoding per docid)"
                )

        first_number = max(shard_number(e["name"]) or 0 for e in old["shards"]) + 1
        start = time.perf_counter()
        try:
            with _progress(show_progress_bar, docs, initial=0) as bar:
                with ShardSequence(self.path, params, origin="add", first_number=first_number,
                                   dims=(self.dim, self.pooled_dim)) as seq:
                    encode_into(seq, model, iter(docs), batch_size=batch_size, bar=bar,
                                check_batch=reject_stored)
            if not seq.entries:
                logger.warning("add(): docs yielded nothing; %s is unchanged", self.path)
                return
            stats = _throughput(seq.docs, time.perf_counter() - start)
            manifest = commit(self.path, params, old["shards"] + seq.entries, docs_per_s=None)
        except BaseException:
            # Against the manifest on disk now (the old one, unless the failure came after the
            # commit point): never deletes a shard that a committed manifest lists.
            remove_unreferenced(self.path, read_manifest(self.path))
            raise
        self.rows = StoreRows.open(self.path, manifest)
        self._ann = None
        self.last_build_stats = stats
        logger.info(
            "added %d candidates to %s (%.1f docs/s); it now holds %d",
            stats["docs"], self.path, stats["docs_per_s"] or 0.0, len(self),
        )

    # ------------------------------------------------------------------------------------------
    # Metadata
    # ------------------------------------------------------------------------------------------

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The ``candidate_fingerprint()`` of the model that built the store."""
        return copy.deepcopy(self.rows.manifest["fingerprint"])

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the parsed ``manifest.json``."""
        return copy.deepcopy(self.rows.manifest)

    @property
    def dim(self) -> int:
        """Dimension of the stored (per-candidate, multi-vector) reps."""
        return self.rows.dim

    @property
    def pooled_dim(self) -> int | None:
        """Dimension of the pooled vectors, or None if the store keeps none."""
        return self.rows.pooled_dim

    @property
    def search_metric(self) -> str:
        """How :meth:`search` scores: ``"ip"`` or ``"cosine"`` (stores without the key: "ip")."""
        return self.rows.search_metric

    @property
    def dtype(self) -> str:
        """On-disk dtype of the vectors: ``"float16"`` or ``"float32"``."""
        return self.rows.dtype

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
        return self.rows.num_rows

    def __repr__(self) -> str:
        return (
            f"CandidateStore({str(self.path)!r}, count={len(self)}, dim={self.dim}, "
            f"pooled_dim={self.pooled_dim}, dtype={self.dtype}, shards={len(self.rows.shards)})"
        )

    def check_compatible(self, model: Any) -> None:
        """Raise unless ``model`` has the fingerprint the store was built with.

        Raises:
            ValueError: naming the fingerprint keys that differ.
        """
        theirs = normalise_fingerprint(model.candidate_fingerprint())
        ours = self.rows.manifest["fingerprint"]
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
        for part in self.rows.manifest["shards"] + [self.rows.manifest["index"]]:
            for fname, entry in part["files"].items():
                yield f"{part['name']}/{fname}", entry

    # ------------------------------------------------------------------------------------------
    # Lookup
    # ------------------------------------------------------------------------------------------

    def __contains__(self, docid: object) -> bool:
        return isinstance(docid, str) and bool(self.rows.rows_of([docid])[0] >= 0)

    def docids(self) -> list[str]:
        """Every docid the store holds, in byte order (reads the whole lookup index)."""
        return [d.decode("utf-8") for d in np.asarray(self.rows.sorted_docids).tolist()]

    def missing(self, docids: Sequence[str]) -> list[str]:
        """The docids (in the given order) that the store does not hold."""
        docids = _as_docid_list(docids)
        return [docids[i] for i in np.flatnonzero(self.rows.rows_of(docids) < 0)]

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
        rows = self.rows.rows_of(docids)
        absent = np.flatnonzero(rows < 0)
        if absent.size:
            raise KeyError(
                f"{absent.size} of {len(docids)} requested docids are not in the store at "
                f"{self.path}, e.g. {[docids[i] for i in absent[:SHOW_IDS]]}. Was the store "
                "built from the same corpus as the candidate lists? Add them with store.add()."
            )
        return self.rows.gather(rows)

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
                self._ann = ann.open_ann_index(self.rows)
            top_scores, top_rows = self._ann.search(q, int(k), nprobe)
            return self._hits(top_scores, top_rows, top_rows >= 0)

        scores, rows = [], []
        for shard in self.rows.shards:
            d, i = shard.faiss_index().search(q, min(shard.count, int(k)))
            scores.append(np.where(i >= 0, d, -np.inf))
            rows.append(np.where(i >= 0, i + shard.start, -1))
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
        docids = self.rows.docids_of(top_rows[valid])
        results: list[list[tuple[str, float]]] = []
        pos = 0
        for qi in range(len(top_scores)):
            n_hits = int(valid[qi].sum())
            results.append(list(zip(docids[pos : pos + n_hits], top_scores[qi][valid[qi]].tolist())))
            pos += n_hits
        return results

    def build_ann_index(self, **kwargs: Any) -> ann.AnnIndex:
        """Build the approximate (IVF) index that ``search(..., approximate=True)`` uses.

        Keyword arguments (``kind``, ``nlist``, ``nprobe``, ``train_size``, ``seed``) are those
        of :func:`mixencoder.store.ann.build_ann_index`.

        Returns:
            The opened :class:`mixencoder.store.ann.AnnIndex` (``.info`` holds its parameters).
        """
        self._ann = ann.build_ann_index(self.rows, **kwargs)
        return self._ann


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def _checked_entry(path: Path, name: str, with_pooled: bool) -> dict[str, Any]:
    """The ``shard.json`` of a shard handed to :meth:`CandidateStore.from_shards`, checked."""
    if shard_number(name) is None:
        raise ValueError(f"{name!r} is not a shard directory name (shard-NNNNN)")
    entry = read_shard_entry(path, name)
    if entry.get("name") != name:
        raise StoreCorruptError(
            f"{path / name / 'shard.json'} names shard {entry.get('name')!r}; the directory "
            "was renamed or copied. Rebuild the store."
        )
    if (entry.get("pooled_dim") is not None) != bool(with_pooled):
        raise ValueError(
            f"{path / name} {'has no' if with_pooled else 'has'} pooled vectors, but "
            f"with_pooled={bool(with_pooled)}"
        )
    return entry


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
