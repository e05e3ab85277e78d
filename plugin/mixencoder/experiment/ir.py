"""Judged-query tasks (MS MARCO / TREC DL, TREC collections): loading a data folder as a
:class:`~.tasks.RankingTask`, its cross-validation folds, and training sources.

A judged folder (e.g. ``../shared/data/msmarco/dl20``) holds queries (``queries*.tsv``), qrels
(``qrels*``), the passages (``collection.tsv``) and optionally a first-stage run (``*.trec``,
``*.run``, MS MARCO ``qid pid rank`` or a ``top1000``-style tsv). A given run **is** the first
stage; only without one is a Pyserini BM25 index built over the collection (cached).

Training sources: MS MARCO triples (:func:`msmarco_triples`) or another judged folder
(:func:`judged_training`: its judged positives with hard negatives from its run, exactly as
the CV folds train).
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..data import hard_negatives_from_run, kfold_split, qrels_training_pairs, read_corpus, read_qrels, read_run
from ..data import read_top1000, read_topics, sorted_hits
from ..training import MatchingExample
from .cache import fingerprint
from .tasks import Fold, Qrels, RankingTask, Run, TrainingData, find_file

logger = logging.getLogger(__name__)

NEGATIVE_KINDS = ("judged", "unjudged", "both", "none")
MSMARCO_MEASURES = ["RR(rel=2)@10", "nDCG@10", "R(rel=2)@1", "R(rel=2)@1000"]
#: The same for binary qrels (MS MARCO dev: every judgment is grade 1).
MSMARCO_BINARY_MEASURES = ["RR@10", "nDCG@10", "R@1", "R@1000"]


# ---------------------------------------------------------------------- data files


def find_run_file(folder: Path, override: str | None = None) -> Path | None:
    """The first-stage run of ``folder``: a TREC/MS MARCO run file, else a top1000-style tsv;
    ``override="none"`` ignores any."""
    if override == "none":
        return None
    if override:
        return find_file(folder, [], "run", override)
    trec = find_file(folder, ["*.trec", "*.trec.gz", "*.run", "*.run.gz"], "run")
    if trec is not None:
        return trec
    return find_file(folder, ["top*.tsv", "top*.tsv.gz", "*top1000*.tsv", "*top100*.tsv"], "run")


def is_judged_folder(folder: Path) -> bool:
    """Whether ``folder`` holds queries and qrels (and so can be evaluated or trained on)."""
    return folder.is_dir() and find_file(folder, ["queries*.tsv", "queries*.tsv.gz"], "queries") is not None \
        and find_file(folder, ["qrels*"], "qrels") is not None


def _read_first_stage(path: Path) -> tuple[Run, dict[str, str], dict[str, str]]:
    """A run file: (run, query texts it carries, passage texts it carries)."""
    from ..data.runs import detect_run_format

    if detect_run_format(path) == "top1000":
        top = read_top1000(path)
        return top.run, top.queries, top.passages
    return read_run(path), {}, {}


def _load_texts(path: Path | None, wanted: set[str], given: Mapping[str, str]) -> dict[str, str]:
    """docid -> text for ``wanted`` docids, streamed from the collection (only those are kept)."""
    texts = {d: t for d, t in given.items() if d in wanted}
    if path is not None and path.exists():
        for doc in read_corpus(path):
            if doc.docid in wanted:
                texts[doc.docid] = doc.text
    return texts


def select_queries(queries: Mapping[str, str], qrels: Qrels, run: Run, limit: int | None) -> list[str]:
    """Judged queries with a text and a first-stage ranking, in qrels order (first ``limit``)."""
    qids = [q for q, judged in qrels.items() if judged and q in queries and run.get(q)]
    dropped = [q for q, judged in qrels.items() if judged and q not in qids]
    if dropped:
        logger.warning("%d judged queries lack a text or a first-stage ranking: %s", len(dropped), dropped[:10])
    if not qids:
        raise ValueError("no judged query has both a text and a first-stage ranking")
    return qids[:limit] if limit else qids


def truncate_run(run: Run, qids: Sequence[str], depth: int) -> Run:
    """The top ``depth`` hits of each of ``qids`` (first-stage scores kept)."""
    return {q: dict(sorted_hits(run.get(q, {}))[:depth]) for q in qids}


def bm25_first_stage(
    collection: Path, queries: Mapping[str, str], depth: int, *, cache: Path, k1: float, b: float, name: str
) -> tuple[Run, float]:
    """BM25 over a Pyserini index of ``collection`` (built once, cached): run and ms/query."""
    from ..first_stage import BM25Searcher, bm25_run, build_bm25_index

    stat = collection.stat()
    key = fingerprint(str(collection.resolve()), stat.st_size, stat.st_mtime_ns)
    index = cache / "indexes" / f"{name}-{key}"
    if not index.is_dir():  # build_bm25_index moves a finished index into place atomically
        logger.info("building a BM25 index of %s at %s", collection, index)
        build_bm25_index(collection, index, threads=2, overwrite=True)
    searcher = BM25Searcher(index, k1=k1, b=b)
    start = time.perf_counter()
    run = bm25_run(searcher, queries, depth, threads=2)
    ms = 1000 * (time.perf_counter() - start) / max(len(queries), 1)
    searcher.close()
    return run, ms


def _judged_task(
    name: str, queries: Mapping[str, str], qrels: Qrels, run: Run, texts: dict[str, str], measures: list[str],
    min_grade: int, notes: dict[str, Any], extra: Mapping[str, float] | None = None,
) -> RankingTask:
    qids = list(run)
    return RankingTask(
        name=name,
        queries={q: queries[q] for q in qids},
        qrels={q: qrels[q] for q in qids},
        candidates={q: [d for d, _ in sorted_hits(run.get(q, {}))] for q in qids},
        texts=texts,
        measures=measures,
        first_stage=run,
        first_stage_extra=dict(extra or {}),
        min_grade=min_grade,
        notes=notes,
    )


def load_judged_folder(
    folder: Path,
    *,
    depth: int = 1000,
    limit_queries: int | None = None,
    queries_file: str | None = None,
    qrels_file: str | None = None,
    run_file: str | None = None,
    collection_file: str = "collection.tsv",
    min_grade: int | None = None,
    cache: Path = Path("work/cache"),
    k1: float = 0.82,
    b: float = 0.68,
) -> RankingTask:
    """A judged folder as a task: its judged queries with a text and a first-stage ranking
    (first ``limit_queries``), each with its top ``depth`` candidates.

    Measures: ``RR(rel=2)@10``, ``nDCG@10``, ``R(rel=2)@1``, ``R(rel=2)@1000`` on graded qrels
    (training positives: grade >= 2), their rel=1 forms on binary ones (positives: grade >= 1);
    ``min_grade`` overrides the positives' grade. Without a run, BM25 (``k1``, ``b``: the tuned
    MS MARCO passage values) over ``collection_file`` is the first stage.

    Raises:
        ValueError: no queries/qrels, no run and no collection, or candidates without a text.
    """
    queries_path = find_file(folder, ["queries*.tsv", "queries*.tsv.gz"], "queries", queries_file)
    qrels_path = find_file(folder, ["qrels*"], "qrels", qrels_file)
    if queries_path is None or qrels_path is None:
        raise ValueError(f"{folder}: needs a queries*.tsv and a qrels* file (or --queries/--qrels)")
    queries = read_topics(queries_path)
    qrels = read_qrels(qrels_path)
    collection = find_file(folder, [], "collection", collection_file)
    run_path = find_run_file(folder, run_file)
    notes: dict[str, Any] = {"queries_file": str(queries_path), "qrels_file": str(qrels_path)}
    extra: dict[str, float] = {}
    run_passages: dict[str, str] = {}
    if run_path is not None:
        run, run_queries, run_passages = _read_first_stage(run_path)
        for q, text in run_queries.items():
            queries.setdefault(q, text)
        notes["first_stage"] = f"given run {run_path}"
    else:
        if collection is None or not collection.exists():
            raise ValueError(f"{folder}: no first-stage run and no {collection_file} to index")
        judged = [q for q in qrels if q in queries]
        wanted_qids = judged[:limit_queries] if limit_queries else judged
        run, ms = bm25_first_stage(collection, {q: queries[q] for q in wanted_qids}, depth, cache=cache, k1=k1, b=b,
                                   name=f"msmarco-{folder.name}")
        extra["ms_per_query"] = ms
        notes["first_stage"] = f"Pyserini BM25 k1={k1} b={b} over {collection}"
    qids = select_queries(queries, qrels, run, limit_queries)
    run = truncate_run(run, qids, depth)
    wanted = {d for hits in run.values() for d in hits} | {d for q in qids for d in qrels[q]}
    texts = _load_texts(collection, wanted, run_passages)
    lacking = {d for hits in run.values() for d in hits} - set(texts)
    if lacking:
        raise ValueError(f"{len(lacking)} candidates have no text in {collection}: {sorted(lacking)[:5]}")
    graded = max((g for q in qids for g in qrels[q].values()), default=0) >= 2
    notes["qrels"] = "graded (relevant: grade >= 2)" if graded else "binary (relevant: grade >= 1)"
    return _judged_task(
        f"msmarco-{folder.name}", queries, qrels, run, texts,
        list(MSMARCO_MEASURES if graded else MSMARCO_BINARY_MEASURES),
        min_grade if min_grade is not None else (2 if graded else 1), notes, extra,
    )


def load_trec_collection(
    folder: Path,
    *,
    depth: int = 100,
    limit_queries: int | None = None,
    corpus: str = "doc-text.trec",
    topics: str = "query-text.trec",
    topic_field: str = "title",
    qrels_file: str = "qrels",
    min_grade: int = 1,
    cache: Path = Path("work/cache"),
    k1: float = 0.9,
    b: float = 0.4,
) -> RankingTask:
    """A TREC test collection (corpus, topics, qrels; e.g. Vaswani) as a task: BM25 over a
    Pyserini index of the whole corpus (cached) gives each judged query its top ``depth``.
    Measures (binary qrels): ``nDCG@10``, ``RR@10``, ``AP`` and ``R@<depth>``."""
    corpus_path = find_file(folder, ["doc*", "*corpus*", "*collection*"], "corpus", corpus, fallback=True)
    topics_path = find_file(folder, ["*quer*", "*topic*"], "topics", topics, fallback=True)
    qrels_path = find_file(folder, ["qrels*", "*qrels*"], "qrels", qrels_file, fallback=True)
    queries = read_topics(topics_path, field=topic_field)
    qrels = read_qrels(qrels_path)
    judged = [q for q, docs in qrels.items() if docs and q in queries]
    wanted = judged[:limit_queries] if limit_queries else judged
    run, ms = bm25_first_stage(corpus_path, {q: queries[q] for q in wanted}, depth, cache=cache, k1=k1, b=b,
                               name=f"trec-{folder.name}")
    qids = select_queries(queries, qrels, run, limit_queries)
    run = truncate_run(run, qids, depth)
    texts = {doc.docid: doc.text for doc in read_corpus(corpus_path)}
    empty = sorted(d for hits in run.values() for d in hits if not texts.get(d, "").strip())
    if empty:
        raise ValueError(f"{len(empty)} candidates have no text in {corpus_path}: {empty[:5]}")
    notes = {
        "corpus": str(corpus_path), "documents": len(texts), "topics_file": str(topics_path),
        "qrels_file": str(qrels_path), "first_stage": f"Pyserini BM25 k1={k1} b={b}, top {depth}",
        "judged_relevant": sum(1 for q in qids for g in qrels[q].values() if g >= 1),
    }
    return _judged_task(f"trec-{folder.name}", queries, qrels, run, texts,
                        ["nDCG@10", "RR@10", "AP", f"R@{depth}"], min_grade, notes, {"ms_per_query": ms})


# ---------------------------------------------------------------------- training data


def judged_examples(
    task: RankingTask, train_qids: Sequence[str], *, negatives: str, max_negatives: int, as_docids: bool = False
) -> TrainingData:
    """MatchingExamples of ``train_qids``: judged positives (grade >= ``task.min_grade``, with a
    text) with hard negatives from the first-stage ranking, best-ranked first, at most
    ``max_negatives`` per query: ``judged`` (judged grade 0), ``unjudged``, ``both`` or ``none``
    (in-batch negatives only); a query without a negative of the kind falls back to ``both``.
    Anything judged >= 1 is never a negative. ``as_docids``: positives and negatives as docids
    (for training on a frozen store), not texts."""
    if negatives not in NEGATIVE_KINDS:
        raise ValueError(f"negatives {negatives!r}: expected one of {NEGATIVE_KINDS}")
    run = task.first_stage or {}
    pairs = qrels_training_pairs(task.qrels, task.queries, task.texts, task.min_grade, qids=train_qids)
    pool: dict[str, list[str]] = {}
    fallback = 0
    if negatives != "none":
        # On graded qrels, grade 1 "related" is neither a clean positive nor a clean negative.
        ranked = hard_negatives_from_run(run, task.qrels, min_grade=1, qids=train_qids)
        for qid, docids in ranked.items():
            judged = task.qrels.get(qid, {})
            docids = [d for d in docids if d in task.texts]
            if negatives == "judged":
                chosen = [d for d in docids if d in judged]
            elif negatives == "unjudged":
                chosen = [d for d in docids if d not in judged]
            else:
                chosen = docids
            if not chosen and docids:
                fallback += 1
                chosen = docids
            pool[qid] = chosen[:max_negatives]
    examples = []
    no_negative = 0
    for p in pairs:
        negs = tuple(d if as_docids else task.texts[d] for d in pool.get(p.qid, ()))
        if negatives != "none" and not negs:
            no_negative += 1
            continue
        positive = p.docid if as_docids else p.text
        examples.append(MatchingExample(p.query, positive, negs, query_id=p.qid, positive_id=p.docid))
    counts = {
        "train_queries": len(set(train_qids)),
        "positive_pairs": len(pairs),
        "examples": len(examples),
        "queries_with_positives": len({p.qid for p in pairs}),
        "mean_negatives_per_query": round(sum(len(v) for v in pool.values()) / max(len(pool), 1), 1),
        "queries_falling_back_to_both": fallback,
        "pairs_dropped_without_negatives": no_negative,
    }
    return TrainingData(examples, counts)


def judged_folds(
    task: RankingTask, k: int, seed: int, *, negatives: str, max_negatives: int, hard_negatives: int
) -> list[Fold]:
    """Query-level K-fold CV on the task's own judged queries (:func:`mixencoder.data.kfold_split`)."""
    h = hard_negatives if negatives != "none" else 0
    folds = []
    for i, (train_qids, test_qids) in enumerate(kfold_split(list(task.queries), k, seed)):
        load = functools.partial(judged_examples, task, train_qids, negatives=negatives, max_negatives=max_negatives)
        folds.append(Fold(f"fold{i}of{k}", list(test_qids), load, h, list(train_qids)))
    return folds


def judged_training(
    folder: Path, *, depth: int, negatives: str, max_negatives: int, cache: Path, min_grade: int | None = None
) -> TrainingData:
    """Training on another judged folder: every judged query's positives with hard negatives from
    the folder's own first-stage run (its top ``depth``), as :func:`judged_folds` trains."""
    train_task = load_judged_folder(folder, depth=depth, cache=cache, min_grade=min_grade)
    data = judged_examples(train_task, list(train_task.queries), negatives=negatives, max_negatives=max_negatives)
    data.counts["train_dir"] = str(folder)
    logger.info("%s: %d training examples from %d judged queries", folder, len(data.examples), len(train_task.queries))
    return data


def msmarco_triples(train_dir: Path, data_dir: Path, limit: int) -> TrainingData:
    """The first ``limit`` MS MARCO training triples as examples (the negative as a hard one).

    ``triples.train.small.tsv`` (texts) if present, else ``qidpidtriples.train.full.tsv`` with
    ``queries.train.tsv`` and ``collection.tsv`` (from ``train_dir`` or ``data_dir``); only the
    passages those triples use are kept in memory.
    """
    from ..data import read_id_triples, read_triples
    from ..data import open_text

    text_path = _first_file(["triples.train.small.tsv"], train_dir)
    if text_path is not None:
        triples = list(itertools.islice(read_triples(text_path), limit))
        source = str(text_path)
    else:
        id_path = _first_file(["qidpidtriples.train.full.tsv", "qidpidtriples.train.full.2.tsv"], train_dir)
        queries_path = _first_file(["queries.train.tsv"], train_dir, data_dir)
        collection_path = _first_file(["collection.tsv"], train_dir, data_dir)
        if id_path is None or queries_path is None or collection_path is None:
            raise ValueError(
                f"--train-dir {train_dir}: expected triples.train.small.tsv, or qidpidtriples.train.full.tsv "
                "with queries.train.tsv and collection.tsv, or a judged folder (queries*.tsv, qrels*, a run)"
            )
        pids: set[str] = set()
        with open_text(id_path) as handle:
            for line in itertools.islice(handle, limit):
                pids.update(line.split()[1:3])
        passages = {doc.docid: doc.text for doc in read_corpus(collection_path) if doc.docid in pids}
        triples = list(itertools.islice(read_id_triples(id_path, read_topics(queries_path), passages), limit))
        source = str(id_path)
    logger.info("read %d training triples from %s", len(triples), source)
    if not triples:
        raise ValueError(f"no training triples in {source}")
    return TrainingData([MatchingExample(t.query, t.positive, (t.negative,)) for t in triples],
                        {"triples": len(triples), "source": source})


def has_triples(train_dir: Path) -> bool:
    """Whether ``train_dir`` holds MS MARCO training triples (text or id form)."""
    names = ["triples.train.small.tsv", "qidpidtriples.train.full.tsv", "qidpidtriples.train.full.2.tsv"]
    return _first_file(names, train_dir) is not None


def _first_file(names: Sequence[str], *folders: Path) -> Path | None:
    for folder in folders:
        for name in names:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
    return None
