"""Response-selection tasks (Ubuntu V2 CSV, DSTC7 track 1 JSON) as :class:`~.tasks.RankingTask` s.

Each evaluation example is a dialogue context with its candidate responses; qrels and candidate
docids come from :func:`mixencoder.data.to_qrels_and_candidates` with a docid salt, so docid
order (the tie-breaker) says nothing about a candidate's position. Contexts are joined oldest
turn first and cut from the **left** to the model's query length (the latest turns decide the
response). Each distinct candidate text is stored once (a score depends only on the text).

The ``bm25`` row is BM25 over each example's candidates (k1=0.9, b=0.4, Lucene's idf
``ln(1 + (N - df + 0.5) / (df + 0.5))``, lowercase ``\\w+`` tokens, no stemming), its term
statistics from the fold's training responses; the query is the whole context.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..data import kfold_split, read_dstc7, read_ubuntu_v2_eval, read_ubuntu_v2_train, to_qrels_and_candidates
from ..data.dialogue import ResponseExample, left_truncate_texts
from ..training import MatchingExample
from .tasks import Fold, RankingTask, Run, TrainingData

logger = logging.getLogger(__name__)

UBUNTU_MEASURES = ["R@1", "R@2", "R@5", "RR"]
DSTC7_MEASURES = ["R@1", "R@10", "RR"]


_TOKEN_RE = re.compile(r"\w+")


def bm25_tokens(text: str) -> list[str]:
    """BM25's tokenisation: lowercase, ``\\w+`` runs."""
    return _TOKEN_RE.findall(text.lower())


class BM25:
    """Okapi BM25 with term statistics from a fixed collection (Lucene's idf)."""

    def __init__(self, collection: Iterable[str], k1: float = 0.9, b: float = 0.4):
        self.k1, self.b = k1, b
        self.df: Counter[str] = Counter()
        self.n = 0
        total = 0
        for text in collection:
            tokens = bm25_tokens(text)
            self.n += 1
            total += len(tokens)
            self.df.update(set(tokens))
        if self.n == 0:
            raise ValueError("BM25 needs a non-empty collection for its term statistics")
        self.avgdl = total / self.n
        self._idf: dict[str, float] = {}

    def idf(self, term: str) -> float:
        value = self._idf.get(term)
        if value is None:
            df = self.df.get(term, 0)
            value = self._idf[term] = math.log(1 + (self.n - df + 0.5) / (df + 0.5))
        return value

    def score(self, query: Counter[str], doc_tokens: Sequence[str]) -> float:
        tf = Counter(doc_tokens)
        norm = self.k1 * (1 - self.b + self.b * len(doc_tokens) / self.avgdl)
        return sum(qtf * self.idf(t) * tf[t] * (self.k1 + 1) / (tf[t] + norm) for t, qtf in query.items() if t in tf)


class ResponseSelectionTask(RankingTask):
    """A :class:`RankingTask` whose ``bm25`` row is computed per fold from the fold's training texts."""

    def first_stage_run(self, folds: Sequence[Fold]) -> tuple[Run, dict[str, float]]:
        run: Run = {}
        weighted_ms = 0.0
        for fold in folds:
            bm25 = BM25(fold.load().collection)
            start = time.perf_counter()
            tokens: dict[str, list[str]] = {}  # candidate texts repeat across examples
            for q in fold.test_qids:
                query = Counter(bm25_tokens(self.queries[q]))
                run[q] = {}
                for d in self.candidates[q]:
                    text = self.texts[d]
                    if text not in tokens:
                        tokens[text] = bm25_tokens(text)
                    run[q][d] = bm25.score(query, tokens[text])
            weighted_ms += 1000 * (time.perf_counter() - start)
            self.notes["bm25"] = {"k1": bm25.k1, "b": bm25.b, "collection_docs": bm25.n, "avgdl": round(bm25.avgdl, 2)}
        return {q: run[q] for q in self.queries if q in run}, {"ms_per_query": weighted_ms / max(len(run), 1)}


def response_selection_task(
    name: str, examples: Sequence[ResponseExample], *, measures: Sequence[str], docid_salt: str
) -> ResponseSelectionTask:
    """The evaluation examples as a task (every candidate judged: the positives grade 1)."""
    qrels, queries, candidates = to_qrels_and_candidates(examples, docid_salt=docid_salt)
    texts = {d: t for c in candidates.values() for d, t in c.items()}
    notes = {
        "eval_examples": len(qrels),
        "candidates": sum(len(c) for c in candidates.values()),
        "distinct_candidate_texts": len(set(texts.values())),
    }
    return ResponseSelectionTask(
        name=name, queries=queries, qrels=qrels, candidates={q: list(c) for q, c in candidates.items()},
        texts=texts, measures=list(measures), left_truncate=True, dedupe_texts=True, notes=notes,
    )


def matching_examples_from(examples: Iterable[ResponseExample], hard_negatives: int) -> list[MatchingExample]:
    """(context, positive) pairs of response-selection examples; the other candidates become
    hard negatives only when they are used (``hard_negatives > 0``)."""
    out = []
    for ex in examples:
        positives = set(ex.positive_ids)
        negatives = tuple(t for t, c in zip(ex.candidates, ex.candidate_ids) if c not in positives)
        for text, cid in zip(ex.candidates, ex.candidate_ids):
            if cid in positives:
                out.append(MatchingExample(
                    " ".join(ex.context), text, negatives if hard_negatives else (),
                    query_id=ex.example_id, positive_id=f"{ex.example_id}:{cid}",
                ))
    return out


def _examples_data(examples: Sequence[ResponseExample], hard_negatives: int) -> TrainingData:
    """Training pairs of ``examples`` and their distinct candidate texts as BM25's collection."""
    pairs = matching_examples_from(examples, hard_negatives)
    return TrainingData(pairs, {"train_examples": len(pairs)}, sorted({t for ex in examples for t in ex.candidates}))


def response_folds(examples: Sequence[ResponseExample], k: int, seed: int, hard_negatives: int) -> list[Fold]:
    """Query-level K-fold CV on the evaluation examples themselves."""
    by_id = {ex.example_id: ex for ex in examples}
    folds = []
    for i, (train_ids, test_ids) in enumerate(kfold_split(list(by_id), k, seed)):
        train = [by_id[q] for q in train_ids]
        folds.append(Fold(f"fold{i}", list(test_ids), lambda train=train: _examples_data(train, hard_negatives),
                          hard_negatives, list(train_ids)))
    return folds


def first(records: Iterable[Any], limit: int | None) -> Iterator[Any]:
    """The first ``limit`` records (all when None)."""
    for i, record in enumerate(records):
        if limit is not None and i >= limit:
            return
        yield record


def ubuntu_eval_examples(path: Path, limit: int | None) -> list[ResponseExample]:
    return list(first(read_ubuntu_v2_eval(path), limit))


def dstc7_examples(path: Path, limit: int | None) -> list[ResponseExample]:
    return list(first(read_dstc7(path), limit))


def ubuntu_training(path: Path, limit: int | None) -> TrainingData:
    """Label-1 rows of an Ubuntu V2 training file as pairs (label-0 rows dropped) and the distinct
    responses of every row as BM25's collection; only the first ``limit`` rows when given."""
    examples: list[MatchingExample] = []
    responses: set[str] = set()
    rows = 0
    for row in first(read_ubuntu_v2_train(path), limit):
        rows += 1
        responses.add(row.response)
        if row.label == 1:
            examples.append(MatchingExample(" ".join(row.context), row.response))
    logger.info("%s: %d rows, %d positive pairs, %d distinct responses", path, rows, len(examples), len(responses))
    return TrainingData(examples, {"train_examples": len(examples), "bm25_collection": len(responses)},
                        sorted(responses))


def dstc7_training(path: Path, limit: int | None, hard_negatives: int) -> TrainingData:
    """Each DSTC7 training example's correct answer(s) as pairs (``hard_negatives > 0``: with its
    distractors), and the file's distinct candidate texts as BM25's collection."""
    data = _examples_data(dstc7_examples(path, limit), hard_negatives)
    logger.info("%s: %d training pairs, %d distinct candidates", path, len(data.examples), len(data.collection))
    return data


def train_file_fold(task: RankingTask, load: Any, hard_negatives: int) -> Fold:
    """One fold: train on a training file (``load()``), evaluate every example."""
    return Fold("all", list(task.queries), load, hard_negatives)
