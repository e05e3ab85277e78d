"""PyTerrier transformers: the reranker, a dense retriever over a store and BM25 over our index.

* :class:`MixEncoderReranker`: result frame (``qid, query, docno`` [+ ``text``] [+ ``score``])
  -> the same rows with the reranker's ``score`` and a 0-based ``rank``, best first per query;
  usable as ``bm25 >> mix`` and ``bm25 >> mix % 10``. Optionally fused with the incoming
  ``score`` column (the first stage's) through a :class:`~mixencoder.fusion.Fusion`.
* :class:`MixEncoderRetriever`: query frame -> top-k by the store's pooled vectors (FAISS).
* :class:`BM25Retriever`: query frame -> BM25 top-k from a Lucene index built by
  :func:`mixencoder.first_stage.build_bm25_index` (Pyserini's searcher; no Terrier).

Every transformer checks its input with ``pt.validate`` and returns, for an empty frame, an
empty frame with its output columns (what ``pt.inspect`` relies on).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import pandas as pd

try:
    import pyterrier as pt
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mixencoder.pyterrier needs PyTerrier; install it with: pip install 'mixencoder[pyterrier]'"
    ) from e

from ..fusion import Fusion
from ..rerank import DocSource, Reranker

logger = logging.getLogger(__name__)

_RESULT_OUT = ["docno", "score", "rank"]


def _with_columns(columns: list[str], extra: list[str]) -> list[str]:
    return [*columns, *[c for c in extra if c not in columns]]


def _empty(columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(columns=columns)
    if "score" in frame.columns:
        frame["score"] = frame["score"].astype("float64")
    if "rank" in frame.columns:
        frame["rank"] = frame["rank"].astype("int64")
    return frame


def _checked_query(qid: str, query: Any) -> str:
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"qid {qid!r} has an empty query {query!r}")
    return query


def _query_text(qid: str, group: pd.DataFrame) -> str:
    texts = list(dict.fromkeys(group["query"]))
    if len(texts) != 1:
        raise ValueError(f"qid {qid!r} has {len(texts)} different query texts {texts[:3]}; one query per qid")
    return _checked_query(qid, texts[0])


def _unique_qids(inp: pd.DataFrame) -> None:
    dup = inp["qid"][inp["qid"].duplicated()].astype(str).unique().tolist()
    if dup:
        raise ValueError(f"{len(dup)} qids appear more than once in the query frame: {dup[:10]}")


def _hits_frame(inp: pd.DataFrame, hits: list[list[tuple[str, float]]], extra: dict[str, list[list[Any]]] | None = None) -> pd.DataFrame:
    """One row per (query row, hit): the query row's columns, then docno, score (+ extra)."""
    index, docnos, scores = [], [], []
    extra_values: dict[str, list[Any]] = {k: [] for k in extra or {}}
    for i, per_query in enumerate(hits):
        # Deterministic order: best first, ties by docno, as every run in this package.
        order = sorted(range(len(per_query)), key=lambda j: (-per_query[j][1], per_query[j][0]))
        for j in order:
            index.append(i)
            docnos.append(str(per_query[j][0]))
            scores.append(float(per_query[j][1]))
            for k in extra_values:
                extra_values[k].append(extra[k][i][j])  # type: ignore[index]
    out = inp.iloc[index].reset_index(drop=True)
    out = out.drop(columns=[c for c in ("docno", "score", "rank", *extra_values) if c in out.columns])
    out["docno"] = pd.Series(docnos, dtype=object)
    out["score"] = pd.Series(scores, dtype="float64")
    for k, v in extra_values.items():
        out[k] = pd.Series(v, dtype=object)
    return pt.model.add_ranks(out)


class MixEncoderReranker(pt.Transformer):
    """Reranks a result frame with a model and (optionally) its candidate store.

    Args:
        model: any :class:`~mixencoder.models.Scorer` (e.g. :class:`~mixencoder.MixEncoder`).
        store: a :class:`~mixencoder.CandidateStore` built by ``model``; ``None``: every
            candidate is encoded from the frame's ``text`` column.
        fusion: combine the model's score with the incoming ``score`` column (the first
            stage's), e.g. ``Fusion("interpolate", alpha=0.3)``; ``None``: the package default
            (:data:`mixencoder.fusion.DEFAULT_FUSION`) where the frame has a ``score`` column.
        doc_source: texts of candidates neither in the store nor in the frame (``{docno: text}``
            or e.g. a :class:`~mixencoder.first_stage.BM25Searcher`).
        batch_size: candidates encoded per batch when the store lacks them.
        text_field: the column holding candidate texts.
        verbose: a progress bar over queries.

    Example:
        >>> mix = MixEncoderReranker(MixEncoder.from_pretrained(), CandidateStore.open("store"))
        >>> (BM25Retriever("index") >> mix % 10).search("dielectric constant of liquids")
    """

    def __init__(
        self,
        model: Any,
        store: Any | None = None,
        *,
        fusion: Fusion | None = None,
        doc_source: DocSource | Mapping[str, str] | None = None,
        batch_size: int = 32,
        text_field: str = "text",
        verbose: bool = False,
    ):
        self.model = model
        self.store = store
        self.fusion = fusion
        self.doc_source = doc_source
        self.batch_size = batch_size
        self.text_field = text_field
        self.verbose = verbose
        self.reranker = Reranker(model, store, doc_source, batch_size=batch_size, fusion=fusion)

    def __repr__(self) -> str:
        store = None if self.store is None else f"{len(self.store)} candidates"
        return f"MixEncoderReranker({type(self.model).__name__}, store={store}, fusion={self.fusion})"

    def transform_outputs(self, input_columns: list[str]) -> list[str]:
        pt.validate.result_frame(input_columns, extra_columns=["query"])
        return _with_columns(list(input_columns), ["score", "rank"])

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Rerank every query of ``inp``; rows best first per query, queries in input order.

        Raises:
            pyterrier.validate.InputValidationError: ``qid``, ``query`` or ``docno`` missing.
            ValueError: an empty query, a duplicate docno within a query, or a fusion that
                needs the first stage's scores on a frame without a ``score`` column.
            KeyError: candidates neither in the store nor with a text, named.
        """
        pt.validate.result_frame(inp, extra_columns=["query"])
        columns = _with_columns(list(inp.columns), ["score", "rank"])
        if len(inp) == 0:
            return _empty(columns)
        # The default fusion applies where the frame carries the first stage's scores; an
        # explicit one must have them.
        fused = self.reranker.fusion_in_use.uses_first_stage and ("score" in inp.columns or self.fusion is not None)
        if fused and "score" not in inp.columns:
            raise ValueError(
                f"fusion {self.fusion} combines with the first stage's scores, but the input frame has "
                f"no 'score' column (columns: {list(inp.columns)}); put a retriever before this "
                "transformer or pass fusion=Fusion('none')"
            )
        has_text = self.text_field in inp.columns
        groups = inp.groupby("qid", sort=False)
        parts = []
        for qid, group in pt.tqdm(groups, desc="MixEncoder reranking", unit="q", disable=not self.verbose):
            query = _query_text(str(qid), group)
            docids = group["docno"].astype(str).tolist()
            texts = None
            if has_text:
                texts = {d: t for d, t in zip(docids, group[self.text_field]) if isinstance(t, str)}
            first = dict(zip(docids, group["score"].astype(float))) if fused else None
            ranked = self.reranker.rerank(query, docids, texts, first_stage_scores=first)
            position = {d: i for i, (d, _) in enumerate(ranked)}
            out = group.drop(columns=[c for c in ("score", "rank") if c in group.columns]).copy()
            out["score"] = [float(ranked[position[d]].score) for d in docids]
            out = out.iloc[sorted(range(len(out)), key=lambda i: position[docids[i]])]
            parts.append(out)
        result = pd.concat(parts, ignore_index=True)
        result = pt.model.add_ranks(result)
        return result[columns]


class MixEncoderRetriever(pt.Transformer):
    """Dense retrieval over a store's pooled vectors (the model as a dual encoder, FAISS).

    Args:
        model: the model that built ``store`` (checked); its ``encode_queries_pooled`` encodes
            the queries.
        store: a :class:`~mixencoder.CandidateStore` with pooled vectors.
        num_results: hits per query.
        approximate: search the store's IVF index (:meth:`~mixencoder.CandidateStore.build_ann_index`).

    Example:
        >>> dense = MixEncoderRetriever(model, store, num_results=100)
        >>> (dense >> MixEncoderReranker(model, store)).search("dielectric constant")
    """

    def __init__(self, model: Any, store: Any, *, num_results: int = 1000, approximate: bool = False):
        store.check_compatible(model)
        if store.pooled_dim is None:
            raise ValueError(f"store at {store.path} has no pooled vectors; build it with with_pooled=True")
        if isinstance(num_results, bool) or not isinstance(num_results, int) or num_results < 1:
            raise ValueError(f"num_results must be a positive int, got {num_results!r}")
        self.model = model
        self.store = store
        self.num_results = num_results
        self.approximate = approximate

    def __repr__(self) -> str:
        return f"MixEncoderRetriever({type(self.model).__name__}, {len(self.store)} candidates, num_results={self.num_results})"

    def transform_outputs(self, input_columns: list[str]) -> list[str]:
        pt.validate.query_frame(input_columns, extra_columns=["query"])
        return _with_columns([c for c in input_columns if c not in _RESULT_OUT], _RESULT_OUT)

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """``num_results`` hits per query row, best first (ties by docno), 0-based ranks."""
        pt.validate.query_frame(inp, extra_columns=["query"])
        if len(inp) == 0:
            return _empty(self.transform_outputs(list(inp.columns)))
        queries = [_checked_query(str(q), t) for q, t in zip(inp["qid"], inp["query"])]
        hits = self.store.search(self.model.encode_queries_pooled(queries), self.num_results, approximate=self.approximate)
        return _hits_frame(inp.reset_index(drop=True), hits)


class BM25Retriever(pt.Transformer):
    """BM25 over a Lucene index (Pyserini's ``LuceneSearcher`` through
    :class:`~mixencoder.first_stage.BM25Searcher`), so a pipeline runs without Terrier.

    Args:
        index: an index directory built by :func:`~mixencoder.first_stage.build_bm25_index`, or
            an open :class:`~mixencoder.first_stage.BM25Searcher`.
        num_results: hits per query.
        k1, b: BM25 parameters (Pyserini's defaults); only used when ``index`` is a path.
        threads: Java search threads.
        fetch_text: add a ``text`` column with each hit's stored text (the index must be built
            with ``store_raw=True``), for rerankers without a store.

    Example:
        >>> bm25 = BM25Retriever("work/vaswani/index", num_results=1000)
        >>> bm25.search("measurement of dielectric constant of liquids").head()
    """

    def __init__(
        self,
        index: str | os.PathLike | Any,
        *,
        num_results: int = 1000,
        k1: float = 0.9,
        b: float = 0.4,
        threads: int = 1,
        fetch_text: bool = False,
    ):
        from ..first_stage import BM25Searcher

        if isinstance(num_results, bool) or not isinstance(num_results, int) or num_results < 1:
            raise ValueError(f"num_results must be a positive int, got {num_results!r}")
        self.searcher = index if isinstance(index, BM25Searcher) else BM25Searcher(index, k1=k1, b=b)
        self.num_results = num_results
        self.threads = threads
        self.fetch_text = fetch_text

    def __repr__(self) -> str:
        return f"BM25Retriever(k1={self.searcher.k1}, b={self.searcher.b}, num_results={self.num_results})"

    def transform_outputs(self, input_columns: list[str]) -> list[str]:
        pt.validate.query_frame(input_columns, extra_columns=["query"])
        out = [*_RESULT_OUT, "text"] if self.fetch_text else _RESULT_OUT
        return _with_columns([c for c in input_columns if c not in out], out)

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """``num_results`` BM25 hits per query, best first (ties by docno), 0-based ranks.

        Raises:
            pyterrier.validate.InputValidationError: ``qid`` or ``query`` missing (or a
                ``docno`` column: this is a first stage, it takes a query frame).
            ValueError: a qid that appears twice, or an empty query.
        """
        pt.validate.query_frame(inp, extra_columns=["query"])
        if len(inp) == 0:
            return _empty(self.transform_outputs(list(inp.columns)))
        inp = inp.reset_index(drop=True)
        _unique_qids(inp)
        qids = inp["qid"].astype(str).tolist()
        queries = [_checked_query(q, t) for q, t in zip(qids, inp["query"])]
        results = self.searcher.batch_search(queries, qids, self.num_results, self.threads)
        hits = [[(h.docid, float(h.score)) for h in results.get(q, [])] for q in qids]
        extra = None
        if self.fetch_text:
            extra = {"text": [[self.searcher.doc_text(d) for d, _ in per_query] for per_query in hits]}
        return _hits_frame(inp, hits, extra)
