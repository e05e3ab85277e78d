"""TREC qrels reader: ``qid iteration docid relevance`` per line, spaces or tabs."""

from __future__ import annotations

import logging

from mixencoder.data.corpus import PathLike, check_id, open_text

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
    with open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}:{line_no}"
            if len(fields) != 4:
                raise ValueError(
                    f"{where}: expected 4 columns 'qid iter docid rel', got {len(fields)}: "
                    f"{line.strip()[:80]!r}"
                )
            qid, _, docid, grade = fields
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
