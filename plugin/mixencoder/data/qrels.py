"""TREC qrels reader: ``qid iteration docid relevance`` per line, spaces or tabs."""

from __future__ import annotations

import logging

from mixencoder.data._text_files import PathLike, check_id, whitespace_columns

logger = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]


def read_qrels(path: PathLike) -> Qrels:
    """Reads TREC qrels as ``{qid: {docid: relevance}}`` (queries in file order).

    The iteration column is ignored, as trec_eval does. Relevance may be negative (some
    collections mark junk documents with -1/-2); how to treat it is the evaluator's business.

    Args:
        path: A qrels file (``.gz`` is decompressed).

    Returns:
        qid -> docid -> integer relevance grade.

    Raises:
        ValueError: On a line without exactly 4 columns, a non-integer grade or a repeated
            (qid, docid) pair, naming ``file:line``.
    """
    qrels: Qrels = {}
    for line, (qid, _, docid, grade) in whitespace_columns(path, "qid iter docid rel"):
        where = line.where
        check_id(qid, "qid", where)
        check_id(docid, "docid", where)
        try:
            rel = int(grade)
        except ValueError:
            raise ValueError(f"{where}: relevance {grade!r} is not an integer") from None
        judged = qrels.setdefault(qid, {})
        if docid in judged:
            raise ValueError(f"{where}: duplicate judgement for qid {qid!r} docid {docid!r}")
        judged[docid] = rel
    logger.debug("Read qrels for %d queries from %s", len(qrels), path)
    return qrels
