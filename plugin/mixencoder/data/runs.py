"""Run files: readers for TREC / MS MARCO / top1000 layouts and a Pyserini-identical writer.

A :data:`Run` maps ``qid -> {docid: score}``; higher scores rank first and ties are broken by
docid (ascending), which is also how Anserini orders tied hits. Formats:

* ``trec``: ``qid Q0 docid rank score tag`` (whitespace separated). Read scores are used as is;
  the rank column is validated but only the score decides the order.
* ``msmarco``: ``qid<TAB>docid<TAB>rank``. There is no score, so ``score = 1 / rank`` (what
  Pyserini's ``convert_msmarco_run_to_trec_run`` does), which preserves the order.
* ``top1000``: MS MARCO ``top1000.*.tsv`` style ``qid<TAB>docid<TAB>query<TAB>passage``. The
  position of a line within its query is taken as its rank (``score = 1 / position``);
  :func:`read_top1000` also returns the query and passage texts.
"""

from __future__ import annotations

import logging
import math
from typing import Mapping, NamedTuple

from mixencoder.data._text_files import PathLike, atomic_write, check_id, content_lines, first_content_line, whitespace_columns

logger = logging.getLogger(__name__)

#: qid -> docid -> score (higher is better).
Run = dict[str, dict[str, float]]

RUN_FORMATS = ("trec", "msmarco", "top1000")


class Top1000(NamedTuple):
    """Contents of an MS MARCO top1000-style file."""

    run: Run
    queries: dict[str, str]
    passages: dict[str, str]


def sorted_hits(run_for_query: Mapping[str, float]) -> list[tuple[str, float]]:
    """Orders one query's hits best first: by descending score, ties by ascending docid.

    Args:
        run_for_query: docid -> score.

    Returns:
        ``(docid, score)`` pairs, best first.
    """
    return sorted(
        ((docid, float(score)) for docid, score in run_for_query.items()),
        key=lambda hit: (-hit[1], hit[0]),
    )


def detect_run_format(path: PathLike) -> str | None:
    """Detects the layout of a run file from its first non-blank line.

    Returns:
        ``"trec"``, ``"msmarco"`` or ``"top1000"``; None for an empty file.

    Raises:
        ValueError: If the line matches no supported layout.
    """
    first = first_content_line(path)
    if first is None:
        return None
    line_no, line = first
    line = line.rstrip("\r\n")
    tab_fields = line.split("\t")
    if len(tab_fields) == 4:
        return "top1000"
    if len(tab_fields) == 3:
        return "msmarco"
    fields = line.split()
    if len(fields) == 6:
        return "trec"
    if len(fields) == 3:
        return "msmarco"
    raise ValueError(
        f"{path}:{line_no}: cannot detect the run format (expected 6 columns 'qid Q0 docid rank "
        f"score tag', 3 columns 'qid<TAB>docid<TAB>rank' or 4 tab-separated columns "
        f"'qid docid query passage'), got {line[:80]!r}"
    )


def _parse_rank(value: str, where: str) -> int:
    try:
        rank = int(value)
    except ValueError:
        raise ValueError(f"{where}: rank {value!r} is not an integer") from None
    if rank < 1:
        raise ValueError(f"{where}: rank {rank} must be >= 1")
    return rank


def _add_hit(run: Run, qid: str, docid: str, score: float, where: str) -> None:
    check_id(qid, "qid", where)
    check_id(docid, "docid", where)
    hits = run.setdefault(qid, {})
    if docid in hits:
        raise ValueError(f"{where}: duplicate docid {docid!r} for qid {qid!r}")
    hits[docid] = score


def _read_trec_run(path: PathLike) -> Run:
    run: Run = {}
    for line, (qid, _, docid, rank, score_text, _) in whitespace_columns(path, "qid Q0 docid rank score tag"):
        where = line.where
        _parse_rank(rank, where)
        try:
            score = float(score_text)
        except ValueError:
            raise ValueError(f"{where}: score {score_text!r} is not a number") from None
        if math.isnan(score):
            raise ValueError(f"{where}: score is NaN")
        _add_hit(run, qid, docid, score, where)
    return run


def _read_msmarco_run(path: PathLike) -> Run:
    run: Run = {}
    ranks_seen: dict[str, set[int]] = {}
    for line in content_lines(path):
        where = line.where
        fields = line.text.split("\t")
        if len(fields) != 3:
            fields = line.text.split()
        if len(fields) != 3:
            raise ValueError(
                f"{where}: expected 3 columns 'qid<TAB>docid<TAB>rank', got {len(fields)}: "
                f"{line.text.strip()[:80]!r}"
            )
        qid, docid, rank_text = (f.strip() for f in fields)
        rank = _parse_rank(rank_text, where)
        seen = ranks_seen.setdefault(qid, set())
        if rank in seen:
            raise ValueError(f"{where}: duplicate rank {rank} for qid {qid!r}")
        seen.add(rank)
        _add_hit(run, qid, docid, 1.0 / rank, where)
    return run


def read_top1000(path: PathLike) -> Top1000:
    """Reads an MS MARCO top1000-style file: ``qid<TAB>docid<TAB>query<TAB>passage``.

    A line's position among its query's lines is its rank (``score = 1 / position``).

    Args:
        path: The TSV file (e.g. ``msmarco/dl20/top100.tsv``; ``.gz`` is decompressed).

    Returns:
        :class:`Top1000` with the run, qid -> query text and docid -> passage text.

    Raises:
        ValueError: On a malformed line, a repeated (qid, docid) or a qid/docid whose text differs
            between lines, naming ``file:line``.
    """
    run: Run = {}
    queries: dict[str, str] = {}
    passages: dict[str, str] = {}
    for line in content_lines(path):
        where = line.where
        # maxsplit keeps any tab inside the passage in the passage.
        fields = line.text.split("\t", 3)
        if len(fields) != 4:
            raise ValueError(
                f"{where}: expected 4 tab-separated columns 'qid docid query passage', got {len(fields)}"
            )
        qid, docid, query, passage = fields
        query = query.strip()
        if not query:
            raise ValueError(f"{where}: empty query text for qid {qid!r}")
        if queries.setdefault(qid, query) != query:
            raise ValueError(f"{where}: qid {qid!r} has a different query text than before")
        if passages.setdefault(docid, passage) != passage:
            raise ValueError(f"{where}: docid {docid!r} has a different passage text than before")
        position = len(run.get(qid, ())) + 1
        _add_hit(run, qid, docid, 1.0 / position, where)
    return Top1000(run, queries, passages)


def read_run(path: PathLike, *, fmt: str | None = None) -> Run:
    """Reads a run file, auto-detecting its layout.

    Args:
        path: A run file (``.gz`` is decompressed).
        fmt: Force ``"trec"``, ``"msmarco"`` or ``"top1000"`` instead of detecting it.

    Returns:
        qid -> docid -> score, queries in file order.

    Raises:
        ValueError: On a malformed line or a docid repeated within a query, naming ``file:line``.
    """
    if fmt is None:
        fmt = detect_run_format(path)
        if fmt is None:
            logger.warning("Empty run file %s", path)
            return {}
    if fmt == "trec":
        run = _read_trec_run(path)
    elif fmt == "msmarco":
        run = _read_msmarco_run(path)
    elif fmt == "top1000":
        run = read_top1000(path).run
    else:
        raise ValueError(f"unknown run format {fmt!r}; expected one of {RUN_FORMATS}")
    logger.debug("Read a %s run with %d queries from %s", fmt, len(run), path)
    return run


def write_run(
    run: Mapping[str, Mapping[str, float]],
    path: PathLike,
    fmt: str = "trec",
    tag: str = "mixencoder",
) -> None:
    """Writes a run exactly as Pyserini's output writers do, atomically.

    ``trec``: ``f"{qid} Q0 {docid} {rank} {score:.6f} {tag}"``; ``msmarco``:
    ``f"{qid}\\t{docid}\\t{rank}"``. Ranks start at 1; within a query hits are ordered by
    descending score, ties by docid; queries keep the mapping's order.

    Args:
        run: qid -> docid -> score.
        path: Output file (written via a temp file and ``os.replace``).
        fmt: ``"trec"`` or ``"msmarco"``.
        tag: The run tag (TREC format only); must not contain whitespace.

    Raises:
        ValueError: On an unknown format, a tag/qid/docid with whitespace or a NaN score.
    """
    if fmt not in ("trec", "msmarco"):
        raise ValueError(f"unknown run format {fmt!r} for writing; expected 'trec' or 'msmarco'")
    if fmt == "trec":
        check_id(tag, "run tag", "write_run")
    with atomic_write(path) as handle:
        for qid, hits in run.items():
            check_id(qid, "qid", "write_run")
            for rank, (docid, score) in enumerate(sorted_hits(hits), start=1):
                check_id(docid, "docid", f"write_run (qid {qid!r})")
                if math.isnan(score):
                    raise ValueError(f"write_run: NaN score for qid {qid!r} docid {docid!r}")
                if fmt == "trec":
                    handle.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")
                else:
                    handle.write(f"{qid}\t{docid}\t{rank}\n")
    logger.debug("Wrote a %s run with %d queries to %s", fmt, len(run), path)
