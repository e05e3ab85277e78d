"""What the experiment runner needs of a task: a :class:`RankingTask` (the evaluated queries,
their candidates and judgments) and its :class:`Fold` s (which queries each trained model
reranks, and what it trains on).

Task adapters build these: :mod:`.ir` (judged queries: MS MARCO / TREC DL, TREC collections),
:mod:`.dialogue` (Ubuntu V2 and DSTC7 response selection); :mod:`.nli` is classification.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..training import MatchingExample

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


@dataclass
class TrainingData:
    """A fold's training examples (query texts uncut) and counts for the notes."""

    examples: list[MatchingExample]
    counts: dict[str, Any] = field(default_factory=dict)
    #: The texts whose statistics a lexical first stage computed on this fold uses (dialogue BM25).
    collection: list[str] = field(default_factory=list)


@dataclass
class Fold:
    """One train/test split: the queries a model trained on ``load()`` reranks.

    ``load`` is called at most once, and only when a system needs the training data.
    ``name`` names the fold's models and stores in the cache.
    """

    name: str
    test_qids: list[str]
    load: Callable[[], TrainingData]
    hard_negatives: int = 0
    train_qids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.load = functools.cache(self.load)


@dataclass
class RankingTask:
    """One reranking evaluation: what every system sees.

    Attributes:
        name: cache namespace (e.g. ``msmarco-dl20``).
        queries: qid -> text of the evaluated queries.
        qrels: judgments of the evaluated queries only.
        candidates: qid -> its candidate docids, in first-stage (or listed) order.
        texts: docid -> text of every candidate (and every judged passage with a text).
        measures: ir-measures strings.
        first_stage: the first stage's run of the evaluated queries (the ``bm25`` row), or None
            when the task computes it per fold (:meth:`first_stage_run`).
        first_stage_extra: extra columns of the ``bm25`` row (e.g. its ``ms_per_query``).
        left_truncate: cut query texts from the left to the model's query length (dialogue
            contexts: the latest turns decide the response).
        dedupe_texts: store each distinct candidate text once (a score depends only on the text).
        min_grade: smallest grade that makes a training positive.
        notes: data counts and settings worth reporting.
    """

    name: str
    queries: dict[str, str]
    qrels: Qrels
    candidates: dict[str, list[str]]
    texts: dict[str, str]
    measures: list[str]
    first_stage: Run | None = None
    first_stage_extra: dict[str, float] = field(default_factory=dict)
    left_truncate: bool = False
    dedupe_texts: bool = False
    min_grade: int = 1
    notes: dict[str, Any] = field(default_factory=dict)

    def docs(self, qids: Sequence[str] | None = None) -> dict[str, str]:
        """docid -> text of the candidates of ``qids`` (default: every query)."""
        qids = list(self.queries) if qids is None else qids
        return {d: self.texts[d] for q in qids for d in self.candidates[q]}

    def first_stage_run(self, folds: Sequence[Fold]) -> tuple[Run, dict[str, float]]:
        """The ``bm25`` row's run and extra columns."""
        if self.first_stage is None:
            raise ValueError(f"task {self.name} has no first-stage run")
        return self.first_stage, dict(self.first_stage_extra)


# ---------------------------------------------------------------------- data files


def in_folder(folder: Path, name: str) -> Path:
    """``folder / name``, or ``folder`` itself when it names a file."""
    return folder if folder.is_file() else folder / name


def find_file(
    folder: Path, patterns: Sequence[str], what: str, name: str | None = None, *, fallback: bool = False
) -> Path | None:
    """A data file of ``folder``.

    ``name`` (as given if it exists, else in ``folder``) wins; with ``fallback`` it is only a
    default, and when ``folder`` has no such file the single file matching ``patterns`` is taken
    (several or none: an error naming them). Without a ``name``, the first file matching
    ``patterns`` (training files, ``*train*``, excluded), or None.
    """
    if name:
        path = Path(name)
        if path.is_absolute() or path.exists():
            return path
        if not fallback or (folder / name).exists():
            return folder / name
        found = sorted({p for pat in patterns for p in folder.glob(pat) if p.is_file()})
        if len(found) != 1:
            raise ValueError(
                f"{folder}: no {name}; {len(found)} candidate {what} files {[p.name for p in found]}; pass --{what}"
            )
        return found[0]
    found = sorted({p for pat in patterns for p in folder.glob(pat) if p.is_file() and "train" not in p.name.lower()})
    if len(found) > 1:
        logger.info("several %s files in %s: %s; using %s (override with --%s)", what, folder,
                    [p.name for p in found], found[0].name, what)
    return found[0] if found else None
