"""BM25 first stage over a Pyserini (Anserini/Lucene) index.

* :func:`build_bm25_index` turns any corpus :func:`mixencoder.data.read_corpus` accepts into a
  Lucene index with positions, document vectors and raw documents, built by Pyserini's own
  indexer (``pyserini.index.lucene``) and moved into place atomically.
* :class:`BM25Searcher` is a thin wrapper over Pyserini's ``LuceneSearcher`` that also serves
  document texts (:class:`LuceneDocSource`), so the reranker can fetch passages it has not
  stored.
* :func:`bm25_run` turns a topic set into a :data:`~mixencoder.data.runs.Run`.

Pyserini is imported lazily, after :func:`~mixencoder.first_stage.java.configure_java`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from mixencoder.data.corpus import Doc, PathLike, read_corpus, write_jsonl_collection
from mixencoder.data.runs import Run
from mixencoder.first_stage import java

if TYPE_CHECKING:  # pragma: no cover - typing only; importing pyserini starts the JVM
    from pyserini.search.lucene import LuceneSearcher

logger = logging.getLogger(__name__)

#: Anserini's end-of-indexing counters, parsed from its log.
# Numbers carry thousands separators ("11,429") in Anserini's log.
_COUNTER = re.compile(r"\b(indexed|unindexable|empty|skipped|errors):\s+([\d,]+)\s*$", re.MULTILINE)


def _child_env() -> dict[str, str]:
    """Environment for a ``python -m mixencoder.pyserini`` child process."""
    env = dict(os.environ)
    # The child must import this very mixencoder even when it is not pip-installed.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    # Give the child the Java this process uses (or would use), so both agree.
    env["JAVA_HOME"] = java.configured_java_home() or str(java.find_java_home())
    return env


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def build_bm25_index(
    corpus_path_or_docs: PathLike | Iterable[Doc | tuple[str, str]],
    index_dir: PathLike,
    *,
    threads: int = 2,
    store_raw: bool = True,
    overwrite: bool = False,
) -> Path:
    """Builds a Lucene index for BM25 with Pyserini's indexer.

    The corpus is first written as a Pyserini JsonCollection (validating every record), then
    indexed by ``python -m mixencoder.pyserini pyserini.index.lucene -collection JsonCollection
    -generator DefaultLuceneDocumentGenerator -storePositions -storeDocvectors [-storeRaw]`` in a
    child process (so a JVM crash or ``System.exit`` cannot take this process down, and the
    indexer's heap is returned when it ends). Everything is built in a hidden staging directory
    next to ``index_dir`` and renamed into place, so ``index_dir`` is never half-written.

    Args:
        corpus_path_or_docs: A corpus file/directory (any format ``read_corpus`` accepts) or an
            iterable of :class:`~mixencoder.data.corpus.Doc` / ``(docid, text)`` pairs.
        index_dir: Where the index goes.
        threads: Indexing threads (the collection is split into as many files).
        store_raw: Store the raw JSON documents (needed by :meth:`BM25Searcher.doc_text`).
        overwrite: Replace an existing ``index_dir``.

    Returns:
        The index directory (absolute).

    Raises:
        FileExistsError: If ``index_dir`` exists and ``overwrite`` is False.
        ValueError: On a malformed corpus (see ``read_corpus``).
        RuntimeError: If the indexer fails, or indexes a different number of documents than
            were written (empty documents, which Anserini skips, only cause a warning).
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    index_dir = Path(index_dir).expanduser().resolve()
    if index_dir.exists() and not overwrite:
        raise FileExistsError(f"index {index_dir} already exists; pass overwrite=True to replace it")
    index_dir.parent.mkdir(parents=True, exist_ok=True)

    if isinstance(corpus_path_or_docs, (str, os.PathLike)):
        docs: Iterable[Doc | tuple[str, str]] = read_corpus(corpus_path_or_docs)
        source = str(corpus_path_or_docs)
    else:
        docs, source = corpus_path_or_docs, "documents"

    # Staging on the same filesystem as index_dir makes the final rename atomic.
    staging = Path(tempfile.mkdtemp(dir=index_dir.parent, prefix=f".{index_dir.name}.building-"))
    try:
        collection = staging / "collection"
        built = staging / "index"
        log_path = staging / "indexer.log"
        start = time.perf_counter()
        n_docs = write_jsonl_collection(docs, collection, shards=threads)
        if n_docs == 0:
            raise ValueError(f"corpus {source} holds no documents")
        logger.info("Converted %d documents from %s in %.1fs", n_docs, source,
                    time.perf_counter() - start)

        cmd = [
            sys.executable, "-m", "mixencoder.pyserini", "pyserini.index.lucene",
            "-collection", "JsonCollection",
            "-generator", "DefaultLuceneDocumentGenerator",
            "-input", str(collection),
            "-index", str(built),
            "-threads", str(threads),
            "-storePositions", "-storeDocvectors",
        ]
        if store_raw:
            cmd.append("-storeRaw")
        logger.info("Indexing: %s", " ".join(cmd))
        start = time.perf_counter()
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_child_env(),
                                  check=False)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(
                f"Pyserini indexer failed (exit {proc.returncode}); last log lines:\n{_tail(log_path)}"
            )
        counters = {k: int(v.replace(",", "")) for k, v in _COUNTER.findall(log_path.read_text(encoding="utf-8",
                                                                              errors="replace"))}
        if "indexed" not in counters:
            raise RuntimeError(f"Pyserini indexer reported no counters; log tail:\n{_tail(log_path)}")
        if counters.get("errors", 0) or counters.get("unindexable", 0):
            raise RuntimeError(f"Pyserini indexer reported failures {counters}; log tail:\n"
                               f"{_tail(log_path)}")
        if counters.get("empty", 0):
            # Anserini skips documents with empty contents: they cannot be retrieved by BM25.
            logger.warning("%d empty document(s) were not indexed", counters["empty"])
        if counters["indexed"] + counters.get("empty", 0) != n_docs:
            raise RuntimeError(f"wrote {n_docs} documents but the indexer reports {counters}")
        logger.info("Indexed %d documents in %.1fs", counters["indexed"], elapsed)

        if index_dir.exists():
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = staging / "old-index"
            os.replace(index_dir, old)
        os.replace(built, index_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return index_dir


def _text_from_raw(raw: str) -> str:
    """Extracts the document text from a stored raw document.

    JsonCollection stores the JSON record; its ``contents`` is the text. BEIR-style records
    (``title``/``text``) are joined; anything that is not such JSON (e.g. TREC SGML) is
    returned unchanged.
    """
    stripped = raw.lstrip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            return raw
        if isinstance(obj, dict):
            if isinstance(obj.get("contents"), str):
                return obj["contents"]
            if isinstance(obj.get("text"), str):
                title = obj.get("title")
                return f"{title} {obj['text']}".strip() if isinstance(title, str) else obj["text"]
    return raw


class LuceneDocSource:
    """Fetches document texts from a Lucene index with stored raw documents.

    Mapping-like (``source[docid]``, ``source.get(docid)``, ``docid in source``) so the reranker
    can use it wherever it needs texts for docids it has not stored.

    Attributes:
        searcher: The underlying Pyserini ``LuceneSearcher``.
    """

    def __init__(
        self,
        index_dir: PathLike | None = None,
        *,
        searcher: LuceneSearcher | None = None,
        java_home: str | None = None,
    ) -> None:
        """Opens an index (or wraps an existing searcher).

        Args:
            index_dir: A Lucene index directory.
            searcher: An already opened ``LuceneSearcher`` to use instead of ``index_dir``.
            java_home: Passed to :func:`~mixencoder.first_stage.java.configure_java`.

        Raises:
            ValueError: If neither or both of ``index_dir`` and ``searcher`` are given.
            FileNotFoundError: If ``index_dir`` does not exist.
        """
        if (index_dir is None) == (searcher is None):
            raise ValueError("pass exactly one of index_dir and searcher")
        java.configure_java(java_home)
        if searcher is None:
            path = Path(index_dir).expanduser()  # type: ignore[arg-type]
            if not path.is_dir():
                raise FileNotFoundError(f"Lucene index not found: {path}")
            if not any(p.name.startswith("segments_") for p in path.iterdir()):
                # Checked here: Lucene's own IndexNotFoundException surfaces as a bare
                # jnius.JavaException after the JVM has started.
                raise FileNotFoundError(
                    f"{path} is not a Lucene index (it has no segments_N file); build one with "
                    "mixencoder.first_stage.build_bm25_index(corpus, index_dir)"
                )
            from pyserini.search.lucene import LuceneSearcher

            searcher = LuceneSearcher(str(path))
            self.index_dir: Path | None = path
        else:
            self.index_dir = None
        self.searcher = searcher

    def doc_text(self, docid: str) -> str:
        """Returns the text of a document, parsed from its stored raw record.

        Args:
            docid: The collection docid.

        Returns:
            The document text (JsonCollection ``contents``).

        Raises:
            KeyError: If the index holds no document with that docid.
            ValueError: If the index stores neither raw documents nor contents.
        """
        # Always pass a str: LuceneSearcher.doc(int) would look up an internal Lucene id.
        doc = self.searcher.doc(str(docid))
        if doc is None:
            raise KeyError(f"docid {docid!r} not in the index")
        raw = doc.raw()
        if raw is not None:
            return _text_from_raw(raw)
        contents = doc.contents()
        if contents is not None:
            return contents
        raise ValueError(
            f"the index stores no text for docid {docid!r}; rebuild it with store_raw=True"
        )

    def get(self, docid: str, default: str | None = None) -> str | None:
        """Returns the text of ``docid``, or ``default`` if the index does not hold it."""
        try:
            return self.doc_text(docid)
        except KeyError:
            return default

    def __getitem__(self, docid: str) -> str:
        return self.doc_text(docid)

    def __contains__(self, docid: object) -> bool:
        return isinstance(docid, str) and self.searcher.doc(docid) is not None

    def __len__(self) -> int:
        return int(self.searcher.num_docs)

    def close(self) -> None:
        """Closes the underlying searcher."""
        self.searcher.close()

    def __enter__(self) -> LuceneDocSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BM25Searcher(LuceneDocSource):
    """BM25 over a Lucene index: Pyserini's ``LuceneSearcher`` plus document texts.

    ``search``/``batch_search`` return Pyserini's own hits (objects with ``.docid``, ``.score``,
    ``.lucene_docid``), best first, ties broken by docid as Anserini does.
    """

    def __init__(
        self,
        index_dir: PathLike | None = None,
        k1: float = 0.9,
        b: float = 0.4,
        *,
        searcher: LuceneSearcher | None = None,
        java_home: str | None = None,
    ) -> None:
        """Opens an index and sets BM25 parameters.

        Args:
            index_dir: A Lucene index directory.
            k1: BM25 k1 (Pyserini's default 0.9; 0.82 is the tuned MS MARCO passage value).
            b: BM25 b (Pyserini's default 0.4; 0.68 for tuned MS MARCO passage).
            searcher: An already opened ``LuceneSearcher`` to wrap instead of ``index_dir``.
            java_home: Passed to :func:`~mixencoder.first_stage.java.configure_java`.
        """
        super().__init__(index_dir, searcher=searcher, java_home=java_home)
        self.k1, self.b = float(k1), float(b)
        self.searcher.set_bm25(self.k1, self.b)

    @classmethod
    def from_prebuilt_index(cls, name: str, k1: float = 0.9, b: float = 0.4) -> BM25Searcher:
        """Opens one of Pyserini's prebuilt indexes (e.g. ``"msmarco-v1-passage"``).

        Pyserini downloads it on first use into its cache (``~/.cache/pyserini``), so this needs
        network access once.
        """
        java.configure_java()
        from pyserini.search.lucene import LuceneSearcher

        searcher = LuceneSearcher.from_prebuilt_index(name)
        if searcher is None:
            raise ValueError(f"unknown or unavailable prebuilt index {name!r}")
        return cls(searcher=searcher, k1=k1, b=b)

    def search(self, q: str, k: int = 10) -> list[Any]:
        """Searches one query.

        Args:
            q: The query text.
            k: Number of hits.

        Returns:
            Pyserini hits, best first.
        """
        return list(self.searcher.search(q, k))

    def batch_search(
        self, queries: Sequence[str], qids: Sequence[str], k: int = 10, threads: int = 1
    ) -> dict[str, list[Any]]:
        """Searches many queries with Anserini's thread pool.

        Args:
            queries: Query texts.
            qids: Their ids, same length.
            k: Hits per query.
            threads: Java search threads.

        Returns:
            qid -> Pyserini hits, best first.
        """
        if len(queries) != len(qids):
            raise ValueError(f"{len(queries)} queries but {len(qids)} qids")
        results = self.searcher.batch_search(list(queries), [str(q) for q in qids], k, threads)
        return {qid: list(hits) for qid, hits in results.items()}


def bm25_run(
    searcher: BM25Searcher | LuceneSearcher, topics: Mapping[str, str], k: int, *, threads: int = 1
) -> Run:
    """Retrieves ``k`` hits per topic into a :data:`~mixencoder.data.runs.Run`.

    Args:
        searcher: A :class:`BM25Searcher` (or a Pyserini ``LuceneSearcher``).
        topics: qid -> query text.
        k: Hits per query.
        threads: Java search threads.

    Returns:
        qid -> docid -> BM25 score, queries in ``topics`` order (a query without hits maps to
        an empty dict).
    """
    qids = list(topics)
    start = time.perf_counter()
    results = searcher.batch_search([topics[q] for q in qids], qids, k, threads)
    run: Run = {qid: {hit.docid: float(hit.score) for hit in results.get(qid, [])} for qid in qids}
    logger.info("BM25 retrieved %d queries x top-%d in %.1fs", len(qids), k,
                time.perf_counter() - start)
    return run
