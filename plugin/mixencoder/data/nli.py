"""MultiNLI (MNLI) reader: the official jsonl layout and the tab-separated layouts.

* jsonl (``multinli_1.0_*.jsonl``): one object per line with ``pairID``, ``sentence1``
  (premise), ``sentence2`` (hypothesis) and ``gold_label``; other fields are ignored.
* TSV: the official ``multinli_1.0_*.txt`` and GLUE's ``MNLI/*.tsv``: a header line naming the
  columns (at least ``pairID``, ``sentence1``, ``sentence2``, ``gold_label``), then one pair per
  line. Fields are split on tabs only, with no CSV quoting: MNLI sentences contain unbalanced
  double quotes, which a CSV reader would take for quoted fields spanning lines.

The format is detected from the first non-blank line (``{`` means jsonl). Pairs whose
``gold_label`` is ``"-"`` (the annotators reached no consensus) have no gold answer and are
skipped; how many is logged and returned, so the caller can report it. Anything else that is
off (unknown label, missing field, empty sentence, wrong column count, repeated pairID) raises
:class:`ValueError` naming ``file:line``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

from mixencoder.data._text_files import PathLike, check_id, content_lines, first_content_line, json_id, json_lines

logger = logging.getLogger(__name__)

#: The three MNLI classes, in the order of their class ids.
LABELS = ("entailment", "neutral", "contradiction")
LABEL_TO_ID = {label: i for i, label in enumerate(LABELS)}

#: gold_label of pairs without annotator consensus.
NO_CONSENSUS = "-"

_FIELDS = ("pairID", "sentence1", "sentence2", "gold_label")


@dataclass(frozen=True)
class NLIExample:
    """One premise/hypothesis pair with its gold label.

    Attributes:
        pair_id: MNLI ``pairID``.
        premise: ``sentence1``.
        hypothesis: ``sentence2``.
        label: One of :data:`LABELS`.
    """

    pair_id: str
    premise: str
    hypothesis: str
    label: str

    @property
    def label_id(self) -> int:
        """The class id of :attr:`label` (its index in :data:`LABELS`)."""
        return LABEL_TO_ID[self.label]


def _example(record: dict[str, object], where: str) -> NLIExample | None:
    """Validates one record; returns None for a no-consensus pair."""
    for key in _FIELDS:
        if key not in record or record[key] is None:
            raise ValueError(f"{where}: missing field {key!r}")
    pair_id = check_id(json_id(record["pairID"], "pairID", where).strip(), "pairID", where)
    texts = []
    for key in ("sentence1", "sentence2", "gold_label"):
        value = record[key]
        if not isinstance(value, str):
            raise ValueError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
        value = value.strip()
        if not value:
            raise ValueError(f"{where}: empty {key!r} (pairID {pair_id!r})")
        texts.append(value)
    premise, hypothesis, label = texts
    if label == NO_CONSENSUS:
        return None
    if label not in LABEL_TO_ID:
        raise ValueError(
            f"{where}: unknown gold_label {label!r} (pairID {pair_id!r}); expected one of "
            f"{LABELS} or {NO_CONSENSUS!r}"
        )
    return NLIExample(pair_id, premise, hypothesis, label)


def _jsonl_records(path: PathLike) -> Iterator[tuple[str, dict[str, object]]]:
    for line, obj in json_lines(path):
        yield line.where, obj


def _tsv_records(path: PathLike) -> Iterator[tuple[str, dict[str, object]]]:
    header: list[str] | None = None
    for line in content_lines(path):
        where = line.where
        fields = line.text.split("\t")
        if header is None:
            header = [name.strip() for name in fields]
            missing = [key for key in _FIELDS if key not in header]
            if missing:
                raise ValueError(f"{where}: TSV header lacks column(s) {missing} (got {header[:12]})")
            continue
        if len(fields) != len(header):
            raise ValueError(f"{where}: expected {len(header)} tab-separated columns, got {len(fields)}")
        yield where, dict(zip(header, fields))


def read_mnli(path: PathLike) -> tuple[list[NLIExample], int]:
    """Reads MNLI pairs from a jsonl or TSV file.

    Args:
        path: An MNLI jsonl or TSV file (``.gz`` is decompressed).

    Returns:
        ``(examples, n_skipped)``: the labelled pairs in file order, and the number of pairs
        skipped because their ``gold_label`` is ``"-"``.

    Raises:
        ValueError: On an empty file, a malformed line, a missing field, an empty sentence, an
            unknown label or a repeated pairID, naming ``file:line``.
    """
    first = first_content_line(path)
    if first is None:
        raise ValueError(f"{path}: empty MNLI file")
    records = _jsonl_records(path) if first[1].lstrip().startswith("{") else _tsv_records(path)
    examples: list[NLIExample] = []
    seen: set[str] = set()
    skipped = 0
    for where, record in records:
        example = _example(record, where)
        if example is None:
            skipped += 1
            continue
        if example.pair_id in seen:
            raise ValueError(f"{where}: duplicate pairID {example.pair_id!r}")
        seen.add(example.pair_id)
        examples.append(example)
    if skipped:
        logger.info(
            "Skipped %d MNLI pair(s) without gold label ('-') in %s; kept %d",
            skipped,
            path,
            len(examples),
        )
    logger.debug("Read %d MNLI pairs from %s", len(examples), path)
    return examples, skipped
