"""MS MARCO passage training data: text triples, id triples and pairs built from judgments.

* :func:`read_triples` streams ``triples.train.small.tsv`` (``query<TAB>positive<TAB>negative``
  passage texts).
* :func:`read_id_triples` streams ``qidpidtriples.train.full.tsv`` (``qid<TAB>pos_pid<TAB>neg_pid``)
  and resolves the ids against the queries and the collection.
* :func:`qrels_training_pairs` and :func:`hard_negatives_from_run` build training data from
  graded judgments and a first-stage run (e.g. the DL20 qrels and BM25 top-100, split into
  query-level folds with :func:`mixencoder.data.folds.kfold_split`) when the triples are not
  available.
* :func:`load_ir_datasets` fetches the same through the optional ``ir_datasets`` package.

Readers are strict: a malformed line raises :class:`ValueError` and an unknown id a
:class:`KeyError`, both naming ``file:line``.
"""

from __future__ import annotations

import logging
from typing import Any, Collection, Iterator, Mapping, NamedTuple

from mixencoder.data._text_files import PathLike, check_id, content_lines
from mixencoder.data.corpus import Doc
from mixencoder.data.qrels import Qrels
from mixencoder.data.runs import sorted_hits

logger = logging.getLogger(__name__)


class Triple(NamedTuple):
    """One training triple: a query, a relevant passage and a non-relevant passage."""

    query: str
    positive: str
    negative: str


class TrainingPair(NamedTuple):
    """A judged-relevant (query, passage) pair with its ids."""

    qid: str
    query: str
    docid: str
    text: str


def _three_columns(path: PathLike, what: str) -> Iterator[tuple[str, list[str]]]:
    """``(file:line, stripped fields)`` of every line of three tab-separated columns ``what``."""
    for line in content_lines(path):
        fields = line.text.split("\t")
        if len(fields) != 3:
            raise ValueError(f"{line.where}: expected 3 tab-separated columns '{what}', got {len(fields)}")
        yield line.where, [f.strip() for f in fields]


def read_triples(path: PathLike) -> Iterator[Triple]:
    """Streams text triples from ``triples.train.small.tsv``.

    Args:
        path: The TSV file (``.gz`` is decompressed).

    Yields:
        :class:`Triple` per line, texts stripped.

    Raises:
        ValueError: On a line without exactly 3 tab-separated columns or with an empty text,
            naming ``file:line``.
    """
    count = 0
    for where, fields in _three_columns(path, "query positive negative"):
        for name, text in zip(Triple._fields, fields):
            if not text:
                raise ValueError(f"{where}: empty {name} text")
        count += 1
        yield Triple(*fields)
    logger.debug("Read %d triples from %s", count, path)


def read_id_triples(
    path: PathLike, queries: Mapping[str, str], collection: Mapping[str, str]
) -> Iterator[Triple]:
    """Streams id triples (``qidpidtriples.train.full.tsv``) resolved to texts.

    Args:
        path: The TSV file of ``qid<TAB>pos_pid<TAB>neg_pid`` (``.gz`` is decompressed).
        queries: qid -> query text (e.g. from :func:`mixencoder.data.read_topics`).
        collection: pid -> passage text; any mapping (a dict, or a disk-backed store for the
            8.8M-passage collection).

    Yields:
        :class:`Triple` per line.

    Raises:
        ValueError: On a malformed line or id, naming ``file:line``.
        KeyError: On a qid or pid missing from ``queries``/``collection``, naming ``file:line``
            and the id.
    """
    count = 0
    for where, (qid, pos, neg) in _three_columns(path, "qid pos_pid neg_pid"):
        check_id(qid, "qid", where)
        check_id(pos, "pid", where)
        check_id(neg, "pid", where)
        if qid not in queries:
            raise KeyError(f"{where}: unknown qid {qid!r} (not in the queries)")
        texts = []
        for pid in (pos, neg):
            if pid not in collection:
                raise KeyError(f"{where}: unknown pid {pid!r} (not in the collection)")
            texts.append(collection[pid])
        count += 1
        yield Triple(queries[qid], *texts)
    logger.debug("Read %d id triples from %s", count, path)


def qrels_training_pairs(
    qrels: Mapping[str, Mapping[str, int]],
    queries: Mapping[str, str],
    collection: Mapping[str, str],
    min_grade: int = 2,
    *,
    qids: Collection[str] | None = None,
    on_missing_doc: str = "skip",
) -> list[TrainingPair]:
    """Builds positive (query, passage) pairs from graded judgments.

    With TREC DL qrels, grade >= 2 is relevant (the TREC DL convention for binary measures).
    Pass the training fold's qids to keep test queries out of training.

    Args:
        qrels: qid -> docid -> grade.
        queries: qid -> query text; must cover every selected judged qid.
        collection: docid -> passage text.
        min_grade: Smallest grade counted as a positive.
        qids: Restrict to these queries (e.g. a training fold); None for all judged queries.
        on_missing_doc: ``"skip"`` to leave out positives whose text is not in ``collection``
            (logged as a warning with the count: the DL20 collection shipped here only holds
            the BM25 top-100 texts, not every judged passage) or ``"error"`` to raise.

    Returns:
        :class:`TrainingPair` tuples ``(qid, query, docid, text)``, in qrels order.

    Raises:
        KeyError: On a selected qid without query text, or (``on_missing_doc="error"``) a
            positive without passage text.
        ValueError: On an unknown ``on_missing_doc``.
    """
    if on_missing_doc not in ("skip", "error"):
        raise ValueError(f"on_missing_doc must be 'skip' or 'error', got {on_missing_doc!r}")
    wanted = None if qids is None else set(qids)
    pairs: list[TrainingPair] = []
    missing = 0
    for qid, judged in qrels.items():
        if wanted is not None and qid not in wanted:
            continue
        positives = [docid for docid, grade in judged.items() if grade >= min_grade]
        if not positives:
            continue
        if qid not in queries:
            raise KeyError(f"qid {qid!r} is judged but has no query text")
        for docid in positives:
            if docid not in collection:
                if on_missing_doc == "error":
                    raise KeyError(f"positive docid {docid!r} of qid {qid!r} has no text")
                missing += 1
                continue
            pairs.append(TrainingPair(qid, queries[qid], docid, collection[docid]))
    if missing:
        logger.warning(
            "Skipped %d positive judgment(s) (grade >= %d) whose passage text is not in the "
            "collection; kept %d pairs",
            missing,
            min_grade,
            len(pairs),
        )
    return pairs


def hard_negatives_from_run(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    k: int | None = None,
    min_grade: int = 1,
    *,
    qids: Collection[str] | None = None,
) -> dict[str, list[str]]:
    """Picks non-relevant docids from a first-stage run as hard negatives, best-ranked first.

    A docid is a negative if it is unjudged or judged below ``min_grade``. The default
    ``min_grade=1`` keeps every passage judged relevant at any grade out of the negatives, even
    though grade 1 ("related") is not a positive for :func:`qrels_training_pairs` with its
    default ``min_grade=2``: such passages are neither clean positives nor clean negatives.
    Queries without any judgment are left out (logged), since their positives are unknown.

    Args:
        run: qid -> docid -> score (ties are ordered by docid, as in run files).
        qrels: qid -> docid -> grade.
        k: Keep at most this many negatives per query; None for all.
        min_grade: Smallest grade that disqualifies a docid as a negative.
        qids: Restrict to these queries (e.g. a training fold); None for all.

    Returns:
        qid -> negative docids, best-ranked first, queries in run order.

    Raises:
        ValueError: If ``k < 1``.
    """
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    wanted = None if qids is None else set(qids)
    negatives: dict[str, list[str]] = {}
    unjudged = 0
    for qid, hits in run.items():
        if wanted is not None and qid not in wanted:
            continue
        judged = qrels.get(qid)
        if not judged:
            unjudged += 1
            continue
        chosen = [
            docid for docid, _ in sorted_hits(hits) if judged.get(docid, min_grade - 1) < min_grade
        ]
        negatives[qid] = chosen if k is None else chosen[:k]
    if unjudged:
        logger.info("Left out %d run query(ies) without judgments from hard negatives", unjudged)
    return negatives


def _record_text(record: Any) -> str:
    # ir_datasets >= 0.5 offers default_text(); older records have a plain ``text`` field.
    if hasattr(record, "default_text"):
        return record.default_text()
    return record.text


def _ir_datasets_docs(dataset: Any) -> Iterator[Doc]:
    for doc in dataset.docs_iter():
        yield Doc(str(doc.doc_id), _record_text(doc))


def load_ir_datasets(
    dataset_id: str,
) -> tuple[dict[str, str], Qrels, Iterator[Doc]]:
    """Loads queries, qrels and documents of a dataset through the optional ``ir_datasets``.

    For example ``"msmarco-passage/train/judged"`` or ``"msmarco-passage/trec-dl-2020/judged"``.
    ``ir_datasets`` downloads on first use (network required) and caches under
    ``~/.ir_datasets``.

    Args:
        dataset_id: An ``ir_datasets`` dataset id.

    Returns:
        ``(queries, qrels, docs)``: qid -> query text, qid -> docid -> grade, and a lazy
        iterator of :class:`Doc` (empty when the dataset has no documents). Repeated qrels for a
        (qid, docid) keep the highest grade (logged).

    Raises:
        ImportError: If ``ir_datasets`` is not installed.
    """
    try:
        import ir_datasets  # optional dependency, imported only when asked for
    except ImportError as exc:
        raise ImportError(
            "load_ir_datasets needs the optional package ir_datasets: pip install ir_datasets"
        ) from exc
    dataset = ir_datasets.load(dataset_id)
    queries: dict[str, str] = {}
    if dataset.has_queries():
        for query in dataset.queries_iter():
            queries[str(query.query_id)] = _record_text(query).strip()
    qrels: Qrels = {}
    repeated = 0
    if dataset.has_qrels():
        for qrel in dataset.qrels_iter():
            judged = qrels.setdefault(str(qrel.query_id), {})
            docid, grade = str(qrel.doc_id), int(qrel.relevance)
            if docid in judged:
                repeated += 1
                grade = max(grade, judged[docid])
            judged[docid] = grade
    if repeated:
        logger.warning("%s: %d repeated qrels; kept the highest grade", dataset_id, repeated)
    docs: Iterator[Doc] = _ir_datasets_docs(dataset) if dataset.has_docs() else iter(())
    logger.info(
        "Loaded %s via ir_datasets: %d queries, %d judged queries",
        dataset_id,
        len(queries),
        len(qrels),
    )
    return queries, qrels, docs


__all__ = [
    "Triple",
    "TrainingPair",
    "hard_negatives_from_run",
    "load_ir_datasets",
    "qrels_training_pairs",
    "read_id_triples",
    "read_triples",
]
