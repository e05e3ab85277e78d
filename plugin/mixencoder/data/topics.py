"""Topic (query) readers.

Supported formats, detected from the first non-blank line:

* MS MARCO queries TSV: ``qid<TAB>text`` per line (surrounding whitespace of the text is dropped:
  some official MS MARCO queries start with a space).
* TREC SGML topics: ``<top> <num> Number: 301 <title> ... <desc> ... </top>``, with or without
  closing tags. This covers the Vaswani ``query-text.trec`` layout, which is
  ``<top>\\n<num>1</num><title>\\nTEXT\\n</title>\\n</top>``.

Strict: an empty query text, a missing field or a repeated qid raises :class:`ValueError` naming
the file, the line and the qid.
"""

from __future__ import annotations

import logging
import re

from mixencoder.data._text_files import PathLike, check_id, first_content_line, id_text_lines, tagged_blocks

logger = logging.getLogger(__name__)

#: TREC topic fields and the label TREC puts in front of their text.
_FIELD_LABELS = {"title": "Topic:", "desc": "Description:", "narr": "Narrative:"}


def read_topics(path: PathLike, *, field: str = "title") -> dict[str, str]:
    """Reads queries as ``{qid: text}`` in file order.

    Args:
        path: A queries TSV or a TREC topics file (``.gz`` is decompressed).
        field: For TREC topics, which field is the query: ``"title"``, ``"desc"`` or ``"narr"``.

    Returns:
        qid -> query text (whitespace-normalised for TREC topics, stripped for TSV).

    Raises:
        ValueError: On a malformed line/topic, an empty query or a duplicate qid, naming
            ``file:line``.
    """
    if field not in _FIELD_LABELS:
        raise ValueError(f"unknown topic field {field!r}; expected one of {sorted(_FIELD_LABELS)}")
    first = first_content_line(path)
    if first is None:
        raise ValueError(f"{path}: empty topics file")
    _, line = first
    if line.lstrip().startswith("<"):
        topics = _read_trec_topics(path, field)
    else:
        topics = _read_tsv_topics(path)
    logger.debug("Read %d topics from %s", len(topics), path)
    return topics


def _add(topics: dict[str, str], qid: str, text: str, where: str) -> None:
    check_id(qid, "qid", where)
    if qid in topics:
        raise ValueError(f"{where}: duplicate qid {qid!r}")
    if not text:
        raise ValueError(f"{where}: empty query text for qid {qid!r}")
    topics[qid] = text


def _read_tsv_topics(path: PathLike) -> dict[str, str]:
    topics: dict[str, str] = {}
    for line, qid, text in id_text_lines(path, "qid<TAB>query"):
        _add(topics, qid, text.strip(), line.where)
    return topics


_TOP_TAG = re.compile(r"</?top>", re.IGNORECASE)
_NUM = re.compile(r"<num>(.*?)(?=<|\Z)", re.IGNORECASE | re.DOTALL)


def _field_text(block: str, field: str) -> str | None:
    # A field runs from its tag to the next tag (its own closing tag, the next field or </top>):
    # classic TREC topics never close <title>/<desc>, Vaswani's do.
    match = re.search(rf"<{field}>(.*?)(?=<|\Z)", block, re.IGNORECASE | re.DOTALL)
    if match is None:
        return None
    text = " ".join(match.group(1).split())
    label = _FIELD_LABELS[field]
    if text.lower().startswith(label.lower()):
        text = text[len(label):].strip()
    return text


def _parse_topic(block: str, field: str, where: str) -> tuple[str, str]:
    num = _NUM.search(block)
    if num is None:
        raise ValueError(f"{where}: <top> without <num>")
    qid = num.group(1).strip()
    if qid.lower().startswith("number:"):
        qid = qid[len("number:"):].strip()
    check_id(qid, "qid", where)
    text = _field_text(block, field)
    if text is None:
        raise ValueError(f"{where}: topic {qid!r} has no <{field}>")
    return qid, text


def _read_trec_topics(path: PathLike, field: str) -> dict[str, str]:
    topics: dict[str, str] = {}
    for start_line, body in tagged_blocks(path, _TOP_TAG, "top"):
        where = f"{path}:{start_line}"
        qid, text = _parse_topic(body, field, where)
        _add(topics, qid, text, where)
    return topics
