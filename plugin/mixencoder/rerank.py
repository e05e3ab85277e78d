"""The reranking stage: candidates in, (docid, score) out, best first.

``Reranker`` gathers the candidates' precomputed reps from a :class:`~mixencoder.CandidateStore`
(encoding on the fly only the docids the store lacks, when their text is available), encodes the
query once and scores every candidate through the model's :class:`~mixencoder.models.Scorer`
protocol. It knows no search engine: :mod:`mixencoder.search` wraps it around one.

Also the run-file command: ``mixencoder rerank --run RUN --topics TOPICS --model DIR --store DIR
--output OUT`` (or ``python -m mixencoder.rerank ...``) reads a TREC or MS MARCO run and writes
the reranked run.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from .fusion import DEFAULT_FUSION, FUSION_METHODS, Fusion
from .models.base import CandidateReps, Scorer

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]


class RankedDoc(NamedTuple):
    """One reranked candidate."""

    docid: str
    score: float


class StageClock:
    """Seconds per named stage: each :meth:`lap` adds the time since the previous one (or since
    construction) to its stage. Two ``perf_counter`` reads per stage, cheap next to any stage."""

    def __init__(self, stages: Sequence[str]):
        self.spent = dict.fromkeys(stages, 0.0)
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.spent[stage] += now - self._last
        self._last = now


class DocSource(Protocol):
    """Anything that returns a document's text by docid, or None when it has none."""

    def get(self, docid: str) -> str | None: ...


def rank_order(docids: Sequence[str], scores: Sequence[float]) -> list[RankedDoc]:
    """Sort best first, ties broken by docid, so runs are reproducible byte for byte."""
    return [RankedDoc(d, float(s)) for s, d in sorted(zip(scores, docids), key=lambda x: (-x[0], x[1]))]


class Reranker:
    """Reranks a query's candidates with a model and (optionally) a store of their reps.

    Args:
        model: any :class:`~mixencoder.models.Scorer` (e.g. a :class:`~mixencoder.MixEncoder`).
        store: a :class:`~mixencoder.CandidateStore` built by the same model; checked on
            construction (a store built by another model is refused). ``None``: encode every
            candidate from its text.
        doc_source: where to fetch the text of a candidate the store lacks (anything with
            ``get(docid) -> str | None``, e.g. a dict or :class:`~mixencoder.first_stage.BM25Searcher`
            over an index built with stored raw documents).
        batch_size: batch size for on-the-fly candidate encoding.
        fusion: how to combine the model's score with the first stage's
            (:class:`~mixencoder.fusion.Fusion`). It applies wherever the first stage's scores
            are known: :meth:`rerank` with ``first_stage_scores``, :meth:`rerank_run` and
            :class:`~mixencoder.RerankingSearcher`. ``None``: :data:`~mixencoder.fusion.DEFAULT_FUSION`
            there; ``Fusion("none")``: the model's score alone.

    Example:
        >>> reranker = Reranker(MixEncoder.from_pretrained(), CandidateStore.open("store"))
        >>> reranker.rerank("what is a lobster roll", ["7067032", "7067034"])[0].docid
    """

    def __init__(
        self,
        model: Scorer,
        store: Any | None = None,
        doc_source: DocSource | Mapping[str, str] | None = None,
        *,
        batch_size: int = 32,
        fusion: Fusion | None = None,
    ):
        if store is not None:
            store.check_compatible(model)
        if fusion is not None and not isinstance(fusion, Fusion):
            raise TypeError(f"fusion must be a mixencoder.fusion.Fusion or None, got {type(fusion).__name__}")
        self.model = model
        self.store = store
        self.doc_source = doc_source
        self.batch_size = batch_size
        self.fusion = fusion
        #: seconds per stage (``gather``, ``encode_query``, ``score``, ``fusion``) of the last
        #: finished :meth:`rerank` / :meth:`rerank_many` call, summed over its queries.
        self.last_timings: dict[str, float] = {}

    def rerank(
        self,
        query: str,
        docids: Sequence[str],
        texts: Mapping[str, str] | Sequence[str] | None = None,
        first_stage_scores: Mapping[str, float] | Sequence[float] | None = None,
    ) -> list[RankedDoc]:
        """Score ``docids`` for ``query``; return them best first (ties by docid).

        Args:
            query: the query text (an empty query is a ValueError).
            docids: candidate ids, without duplicates.
            texts: optional texts of the candidates, as ``{docid: text}`` or a list aligned
                with ``docids``; used only for docids the store lacks.
            first_stage_scores: the first stage's scores, as ``{docid: score}`` (a candidate
                without one, e.g. found by a dense first stage only, takes that list's minimum
                under interpolation and nothing under RRF) or a list aligned with ``docids``.
                Given, the returned scores are fused (see ``fusion``); omitted, they are the
                model's own.

        Raises:
            ValueError: empty query, duplicate docids, texts or scores not aligned with docids,
                a NaN or infinite score, or a ``fusion`` that needs first-stage scores and got none.
            KeyError: candidates that are neither in the store nor have a text, named.
        """
        if not isinstance(texts, (Mapping, type(None))):
            if len(texts) != len(docids):
                raise ValueError(f"texts has {len(texts)} entries but there are {len(docids)} docids")
            texts = dict(zip((str(d) for d in docids), texts))
        return self.rerank_many([query], [docids], texts, [first_stage_scores])[0]

    def rerank_many(
        self,
        queries: Sequence[str],
        candidates: Sequence[Sequence[str]],
        texts: Mapping[str, str] | None = None,
        first_stage_scores: Sequence[Mapping[str, float] | Sequence[float] | None] | None = None,
        *,
        timings: dict[str, float] | None = None,
    ) -> list[list[RankedDoc]]:
        """:meth:`rerank` for several queries at once: ``candidates[i]`` are query ``i``'s.

        The candidates of all the queries are gathered from the store in one call (each docid
        once, however many queries share it), then each query is encoded and scored on its
        own; every query's ranking equals what :meth:`rerank` returns for it alone. The reps of
        all the queries' candidates are held at once, so pass a handful of queries per call
        (:meth:`~mixencoder.RerankingSearcher.batch_search` passes ``queries_per_rerank``).

        Args:
            queries: the query texts.
            candidates: one docid list per query (no duplicates within a list).
            texts: optional ``{docid: text}`` for candidates the store lacks.
            first_stage_scores: one entry per query, as :meth:`rerank`'s ``first_stage_scores``
                (``None`` for all: the model's scores alone).
            timings: if given, the seconds spent in each stage (``gather``, ``encode_query``,
                ``score``, ``fusion``: fusing and sorting) are added to it; the same figures for
                this call alone are also left in :attr:`last_timings`.

        Raises:
            ValueError, KeyError: as :meth:`rerank`; also ``candidates`` or
                ``first_stage_scores`` not aligned with ``queries``.
        """
        if len(candidates) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(candidates)} candidate lists")
        scores_per_query = [None] * len(queries) if first_stage_scores is None else list(first_stage_scores)
        if len(scores_per_query) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(scores_per_query)} first_stage_scores entries")
        for query in queries:
            if not isinstance(query, str) or not query.strip():
                raise ValueError(f"empty query: {query!r}; rerank needs query text")
        lists = [_unique_docids([str(d) for d in docids]) for docids in candidates]
        firsts = [self._first_stage(d, s) if d else None for d, s in zip(lists, scores_per_query)]

        clock = StageClock(("gather", "encode_query", "score", "fusion"))
        union = list(dict.fromkeys(d for docids in lists for d in docids))
        all_reps = self.candidate_reps(union, texts) if union else None
        position = {d: i for i, d in enumerate(union)}
        clock.lap("gather")
        out: list[list[RankedDoc]] = []
        for query, docids, first in zip(queries, lists, firsts):
            if not docids:
                out.append([])
                continue
            reps = all_reps if docids == union else _rows(all_reps, [position[d] for d in docids])
            clock.lap("gather")
            query_state = self.model.encode_query(query)
            clock.lap("encode_query")
            scores = self.model.score(query_state, reps).tolist()
            clock.lap("score")
            if first is None:
                out.append(rank_order(docids, scores))
            else:
                fused = self.fusion_in_use.fuse(dict(zip(docids, scores)), first)
                out.append(rank_order(docids, [fused[d] for d in docids]))
            clock.lap("fusion")
        self.last_timings = clock.spent
        if timings is not None:
            for stage, seconds in clock.spent.items():
                timings[stage] = timings.get(stage, 0.0) + seconds
        return out

    @property
    def fusion_in_use(self) -> Fusion:
        """The fusion applied when the first stage's scores are known."""
        return DEFAULT_FUSION if self.fusion is None else self.fusion

    def _first_stage(
        self, docids: list[str], scores: Mapping[str, float] | Sequence[float] | None
    ) -> dict[str, float] | None:
        if scores is None:
            if self.fusion is not None and self.fusion.uses_first_stage:
                raise ValueError(
                    f"this Reranker fuses with the first stage ({self.fusion}) but rerank() got no "
                    "first_stage_scores; pass them, or build the Reranker with fusion=Fusion('none')"
                )
            return None
        if isinstance(scores, Mapping):
            wanted = set(docids)
            return {str(d): float(s) for d, s in scores.items() if str(d) in wanted}
        if len(scores) != len(docids):
            raise ValueError(f"first_stage_scores has {len(scores)} entries but there are {len(docids)} docids")
        return {d: float(s) for d, s in zip(docids, scores)}

    def candidate_reps(
        self, docids: list[str], texts: Mapping[str, str] | Sequence[str] | None = None
    ) -> CandidateReps:
        """The candidates' reps in ``docids`` order: gathered from the store where present,
        encoded from text otherwise."""
        if self.store is not None:
            try:  # the common case, every candidate stored: one docid lookup, not two
                return self.store.gather(docids)
            except KeyError:
                pass  # some are not: find which, and encode those from their text
        missing = docids if self.store is None else self.store.missing(docids)
        text_of = self._texts_for(missing, docids, texts)
        encoded = self.model.encode_candidates(
            [text_of[d] for d in missing], batch_size=self.batch_size, show_progress_bar=False
        )
        if len(missing) == len(docids):
            return encoded
        logger.info("encoding %d of %d candidates that the store lacks", len(missing), len(docids))
        missing_set = set(missing)
        present = [d for d in docids if d not in missing_set]
        stored = self.store.gather(present)
        return _merge_in_order(docids, present, stored, missing, encoded)

    def _texts_for(
        self,
        missing: list[str],
        docids: list[str],
        texts: Mapping[str, str] | Sequence[str] | None,
    ) -> dict[str, str]:
        given: Mapping[str, str] = {}
        if texts is not None:
            if isinstance(texts, Mapping):
                given = texts
            else:
                if len(texts) != len(docids):
                    raise ValueError(f"texts has {len(texts)} entries but there are {len(docids)} docids")
                given = dict(zip(docids, texts))
        found: dict[str, str] = {}
        for d in missing:
            text = given.get(d)
            if text is None and self.doc_source is not None:
                text = self.doc_source.get(d)
            if text is not None:
                found[d] = text
        unknown = [d for d in missing if d not in found]
        if unknown:
            where = "the store" if self.store is not None else "a store (none given)"
            raise KeyError(
                f"{len(unknown)} candidate(s) are not in {where} and have no text to encode "
                f"them from: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}; pass texts= "
                "or a doc_source, or add them to the store"
            )
        return found

    def rerank_run(
        self,
        run: Run,
        topics: Mapping[str, str],
        *,
        depth: int | None = None,
        texts: Mapping[str, str] | None = None,
        show_progress_bar: bool | None = None,
    ) -> Run:
        """Rerank every query of a run (``{qid: {docid: score}}``), keeping its top ``depth``
        first-stage candidates, fused with the run's scores as ``fusion`` says. A qid without a
        topic is a KeyError naming it."""
        lacking = [qid for qid in run if qid not in topics]
        if lacking:
            raise KeyError(f"{len(lacking)} run queries have no topic text: {lacking[:10]}")
        show = logger.getEffectiveLevel() <= logging.INFO if show_progress_bar is None else show_progress_bar
        out: Run = {}
        for qid in tqdm(run, desc="Reranking", disable=not show):
            first = sorted(run[qid].items(), key=lambda x: (-x[1], x[0]))[:depth]
            ranked = self.rerank(topics[qid], [d for d, _ in first], texts, first_stage_scores=dict(first))
            out[qid] = {r.docid: r.score for r in ranked}
        return out


def _unique_docids(docids: list[str]) -> list[str]:
    if len(set(docids)) != len(docids):
        seen: set[str] = set()
        dups = sorted({d for d in docids if d in seen or seen.add(d)})
        raise ValueError(f"{len(dups)} duplicate docids among the candidates: {dups[:10]}")
    return docids


def _rows(reps: CandidateReps, index: list[int]) -> CandidateReps:
    """The reps of ``index``, cut to their own longest candidate: the padding a query's
    candidates get does not depend on the other queries they were gathered with."""
    chosen = reps.select(index)
    m = int(chosen.lengths.max())
    if m == chosen.vectors.shape[1]:
        return chosen
    return CandidateReps(chosen.vectors[:, :m], chosen.lengths, chosen.pooled)


def _merge_in_order(
    docids: list[str], present: list[str], stored: CandidateReps, missing: list[str], encoded: CandidateReps
) -> CandidateReps:
    both = [*present, *missing]
    position = {d: i for i, d in enumerate(both)}
    index = torch.tensor([position[d] for d in docids])
    m = max(stored.vectors.shape[1], encoded.vectors.shape[1])
    vectors = torch.cat([_pad_to(stored.vectors, m), _pad_to(encoded.vectors, m)])
    lengths = torch.cat([stored.lengths, encoded.lengths])
    pooled = None
    if stored.pooled is not None and encoded.pooled is not None:
        pooled = torch.cat([stored.pooled, encoded.pooled.to(stored.pooled.dtype)])
    return CandidateReps(vectors.float(), lengths, pooled).select(index)


def _pad_to(vectors: torch.Tensor, m: int) -> torch.Tensor:
    if vectors.shape[1] == m:
        return vectors.float()
    pad = vectors.new_zeros(vectors.shape[0], m - vectors.shape[1], vectors.shape[2])
    return torch.cat([vectors, pad], dim=1).float()


# ---------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    from .cli import add_inference_flags  # cli imports this module's main lazily; no circle

    p = argparse.ArgumentParser(
        prog="mixencoder rerank",
        description="Rerank a TREC or MS MARCO run file with a model and its candidate store.",
    )
    p.add_argument("--run", required=True, type=Path, help="first-stage run (TREC or MS MARCO format)")
    p.add_argument("--topics", required=True, type=Path, help="queries (MS MARCO tsv or TREC topics)")
    p.add_argument("--output", required=True, type=Path, help="where to write the reranked run")
    p.add_argument("--model", default=None, help="saved model directory (any kind) or a backbone for a fresh MixEncoder (default: bundled MiniLM)")
    add_inference_flags(p)
    p.add_argument("--store", type=Path, default=None, help="candidate store built by the same model")
    p.add_argument("--index", type=Path, default=None, help="Lucene index with raw docs, for candidates missing from the store")
    p.add_argument("--collection", type=Path, default=None, help="corpus file, for candidates missing from the store")
    p.add_argument("--format", choices=["trec", "msmarco"], default="trec", help="output format")
    p.add_argument("--depth", type=int, default=1000, help="candidates per query to rerank")
    p.add_argument("--hits", type=int, default=None, help="hits per query to write (default: all reranked)")
    p.add_argument("--tag", default="mixencoder", help="run tag (TREC format)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--fusion", choices=["default", *FUSION_METHODS], default="default",
        help="combine the model's score with the run's: interpolate (per-query min-max, --alpha), rrf "
        f"(--rrf-k), none; default: {DEFAULT_FUSION}",
    )
    p.add_argument("--alpha", type=float, default=None, help="the run's weight for --fusion interpolate, in [0, 1]")
    p.add_argument("--rrf-k", type=float, default=60.0, help="rank offset for --fusion rrf (default 60)")
    return p


def fusion_from_args(method: str, alpha: float | None, rrf_k: float) -> Fusion | None:
    """The Fusion the CLI flags name (``None`` for ``default``); a clear SystemExit on bad flags."""
    if method == "default":
        if alpha is not None:
            raise SystemExit("--alpha needs --fusion interpolate")
        return None
    if method == "interpolate" and alpha is None:
        raise SystemExit("--fusion interpolate needs --alpha A (the run's weight, in [0, 1])")
    try:
        return Fusion(method, alpha=0.0 if alpha is None else alpha, rrf_k=rrf_k)
    except ValueError as e:
        raise SystemExit(f"--fusion {method}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mixencoder rerank`` (and ``python -m mixencoder.rerank``); returns the exit
    code, 2 for an input it cannot use (a missing or malformed file, a store of another model)."""
    from .cli import INPUT_ERRORS, report_input_error

    args = _parser().parse_args(argv)
    fusion = fusion_from_args(args.fusion, args.alpha, args.rrf_k)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        _rerank_run_file(args, fusion)
    except INPUT_ERRORS as e:
        return report_input_error("mixencoder rerank", e)
    return 0


def _rerank_run_file(args: argparse.Namespace, fusion: Fusion | None) -> None:
    from .cli import load_model_flag
    from .data.corpus import read_corpus
    from .data.runs import read_run, write_run
    from .data.topics import read_topics
    from .store import CandidateStore

    # The inputs are read before the model loads, so a bad file fails in a second, not after it.
    run = read_run(args.run)
    topics = read_topics(args.topics)
    store = CandidateStore.open(args.store) if args.store else None
    doc_source: Any = None
    if args.index is not None:
        from .first_stage import BM25Searcher

        doc_source = BM25Searcher(args.index)
    elif args.collection is not None:
        doc_source = {d.docid: d.text for d in read_corpus(args.collection)}
    reranker = Reranker(load_model_flag(args.model, candidate_layout=args.candidate_layout, quantization=args.quantization), store, doc_source, batch_size=args.batch_size, fusion=fusion)
    start = time.perf_counter()
    reranked = reranker.rerank_run(run, topics, depth=args.depth)
    seconds = time.perf_counter() - start
    if args.hits is not None:
        reranked = {q: dict(sorted(h.items(), key=lambda x: (-x[1], x[0]))[: args.hits]) for q, h in reranked.items()}
    write_run(reranked, args.output, fmt=args.format, tag=args.tag)
    n = sum(len(h) for h in run.values())
    logger.info(
        "reranked %d queries (%d candidates, fusion %s) in %.1f s: %.1f ms per query; wrote %s",
        len(run), n, reranker.fusion_in_use, seconds, 1000 * seconds / max(len(run), 1), args.output,
    )


if __name__ == "__main__":
    raise SystemExit(main())
