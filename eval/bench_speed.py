"""Online reranking speed of every system, per query, for N = 1000 and N = 100 candidates
(the paper's Table 2 speedup column, Table 4 and Table 6), measured on this machine's CPU.

Usage (from the project root)::

    python eval/bench_speed.py                                   # all systems, 20 queries
    python eval/bench_speed.py --systems mixencoder-a,dual,cross --queries 30 --json speed.json
    python eval/bench_speed.py --systems mixencoder-a@batched,mixencoder-a,mixencoder-a@precomputed,\
mixencoder-a@int8,mixencoder-a@int8+precomputed --threads 1 --quality   # MixEncoder's scoring variants

Protocol:

* Systems: the names of :mod:`mixencoder.models.registry`; a MixEncoder one may carry variant
  options, ``NAME@OPTION[+OPTION]``: ``batched`` scores with the training path's batched math
  (``MixEncoder.head_vectors``, what ``score`` ran before its one-query path; the reference of
  ``speedup_vs_reference``, and checked to give ``score``'s scores), ``precomputed`` uses
  ``candidate_layout="precomputed"`` (its store is made from the embedding-layout store's float16
  E0 by ``MixEncoder.precompute``, so the backbone runs once per quantization), ``int8`` uses
  ``quantization="int8"`` (its own store, encoded by the int8 backbone).
* Rounds: ``--rounds`` (default 3) passes over every system in turn; ``ms_per_query`` and
  ``p90_ms`` are medians over rounds, and ``speedup_vs_reference`` is the median over rounds of
  the same round's ratio (the machine is shared: ratios within a round are what hold).

* Queries: the first ``--queries`` (default 20) MS MARCO DL20 queries of ``queries.tsv`` that
  have a BM25 run. Candidates of a query: its BM25 top-100 (``bm25.top100.trec``, texts from
  ``collection.tsv``) in rank order; for N = 1000, padded with other DL20 passages: the top-100
  lists of the next benchmarked queries (cyclically), then of the other DL20 queries, skipping
  duplicates. Every system sees exactly the same queries and candidate lists.
* Stores: each system's :class:`~mixencoder.CandidateStore` is built once over the passages
  those lists need (offline, not timed; the store's default float16) and cached under
  ``--cache`` by the model's candidate fingerprint, so systems with the same candidate side
  (e.g. mixencoder-a, -b and -k1) share one and a second run rebuilds nothing. Models are
  untrained (fresh from the backbone, default the bundled all-MiniLM-L6-v2): speed does not
  depend on training.
* Timed, per query (``ms_per_query``): gathering the N candidates' reps from the store, encoding
  the query (``encode_query``) and scoring (``score``), i.e. the product's online path. The query's
  tokenisation is done just before and reported separately (``tokenize_ms``), as the paper
  excludes text preprocessing. Each system first runs ``--warmup`` untimed queries (with at most
  100 candidates), then the timed ones; median and p90 over the timed queries.
* The cross-encoder runs one full forward per candidate (~14 s per query at N = 1000 on a 2-core
  CPU), so it is timed on the first ``--cross-queries`` queries only (default 3); the output
  says so. Its speedup column is then a ratio of medians over different query counts.
* ``flops``: matrix-multiply FLOPs of the online path (query encoding + scoring), counted
  analytically per system from the GEMMs its code runs, at the median query length and the mean
  candidate length of the timed queries. ``lower_bound_ms``: those GEMMs timed alone with
  ``torch.matmul`` at the same shapes and dtype (float32) in this run, i.e. the FLOP count divided
  by the matmul rate this CPU reaches at those shapes; for ``int8`` variants the linear layers'
  GEMMs are timed as int8 x int8 -> int32 (``torch._int_mm``). ``gemm_gflops`` reports the peak
  float32 rate at a large GEMM for reference.
* ``bytes_per_candidate``: the store's on-disk bytes per candidate (no dense-search index).
* ``encode_docs_per_s``: ``encode_candidates`` over ``--build-docs`` passages (batch 32), each
  round: a store build's encoding work, batched by token length (the default);
  ``encode_docs_per_s_unbucketed`` the same in input order; ``padding_fraction_unbucketed`` /
  ``padding_fraction_bucketed`` the share of padded token positions either way;
  ``encode_bound_docs_per_s`` the docs/s the backbone's GEMMs allow at the bucketed batches'
  shapes, timed alone in the same run.
* ``--quality``: the stores then cover every DL20 query's BM25 top 100, and each MixEncoder
  variant is compared with its plain system (same name without ``@``), paired per query:
  nDCG@10 reranking DL20's BM25 top 100 from the store, and R@1 over the first
  ``--ubuntu-examples`` Ubuntu-IRC valid examples (candidates encoded in memory, rounded to
  float16 as a store keeps them; contexts cut to their last ``4 * query_max_length``
  characters). The models are untrained (zero-shot), so with ``pooled_residual`` (default) the
  interaction does not reach the score and only the backbone's quantization can move it.

``--json PATH`` writes ``{"gemm_gflops": {dtype: GFLOP/s}, "systems": {name: {"1000": {...},
"100": {...}, "bytes_per_candidate": ...}}, ...}``; per N: ``ms_per_query``, ``p90_ms``,
``speedup_vs_cross``, ``speedup_vs_reference``, ``ms_per_query_rounds``, ``flops``,
``lower_bound_ms`` and the breakdown (gather/encode/score/tokenize); per system
``encode_docs_per_s``; with ``--quality`` a top-level ``"quality"``: ``{"systems": {name:
{"reference", "nDCG@10": {"value", "reference_value", "delta", "se", "queries"}, "R@1": ...}}}``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mixencoder import CandidateReps, CandidateStore
from mixencoder.data import read_corpus, read_qrels, read_run, read_topics, read_ubuntu_v2_eval, sorted_hits, to_qrels_and_candidates
from mixencoder.evaluation import evaluate_per_query, paired_difference
from mixencoder.fusion import Fusion
from mixencoder.models import load_model
from mixencoder.models.registry import SYSTEMS, build_system
from mixencoder.models.text import batch_order, padding_fraction, token_lengths

logger = logging.getLogger("bench_speed")

DEFAULT_SYSTEMS = [
    "cross", "dual", "poly-64", "poly-360", "colbert", "deformer", "virt",
    "mixencoder-a", "mixencoder-b", "mixencoder-c", "mixencoder-a-C",
    "mixencoder-k1", "mixencoder-k2", "mixencoder-k3", "mixencoder-k4", "mixencoder-k10",
    # MixEncoder-a's scoring variants (see VARIANT_OPTIONS); plain "mixencoder-a" is the default path
    "mixencoder-a@batched", "mixencoder-a@precomputed", "mixencoder-a@int8", "mixencoder-a@int8+precomputed",
]
# NAME@OPTION[+OPTION]: a MixEncoder system scored another way. "batched": the training path's
# batched math (MixEncoder.head_vectors), which was MixEncoder.score before the one-query path;
# "precomputed": candidate_layout="precomputed"; "int8": quantization="int8".
VARIANT_OPTIONS = ("batched", "precomputed", "int8")
REFERENCE_PATH = "mixencoder-a@batched"  # the speed-ups' reference: the default path before
SIZES = (1000, 100)
Gemm = tuple[int, int, int, int, int]  # (batch, m, k, n, count): count x (batch x (m,k) @ (k,n))


class LinearGemm(tuple):
    """A :data:`Gemm` run by an ``nn.Linear`` layer: int8 (``torch._int_mm``) in the int8 variants."""


def _linear(b: int, m: int, k: int, n: int, count: int) -> LinearGemm:
    return LinearGemm((b, m, k, n, count))


def split_variant(name: str) -> tuple[str, frozenset[str]]:
    """``"mixencoder-a@int8+precomputed"`` -> ``("mixencoder-a", {"int8", "precomputed"})``."""
    base, _, options = name.partition("@")
    return base, frozenset(options.split("+")) if options else frozenset()


# ---------------------------------------------------------------------- data


def load_candidates(
    data_dir: Path, n_queries: int, *, every_top100: bool = False
) -> tuple[list[tuple[str, str]], dict[str, dict[int, list[str]]], dict[str, str]]:
    """``(queries [(qid, text)], {qid: {N: docids}}, {docid: text} of every docid needed)``;
    with ``every_top100`` the texts cover every DL20 query's BM25 top 100 (for ``--quality``)."""
    topics = read_topics(data_dir / "queries.tsv")
    run = read_run(data_dir / "bm25.top100.trec")
    qids = [q for q in topics if q in run]
    if len(qids) < n_queries:
        raise SystemExit(f"--queries {n_queries}: DL20 has only {len(qids)} queries with a BM25 run")
    ranked = {q: [d for d, _ in sorted_hits(run[q])] for q in qids}
    selected = qids[:n_queries]
    rest = qids[n_queries:]
    lists: dict[str, dict[int, list[str]]] = {}
    for i, q in enumerate(selected):
        pool_order = selected[i + 1 :] + selected[:i] + rest
        docs = list(ranked[q][:100])
        seen = set(docs)
        for other in pool_order:
            if len(docs) >= max(SIZES):
                break
            for d in ranked[other]:
                if d not in seen:
                    seen.add(d)
                    docs.append(d)
        if len(docs) < max(SIZES):
            raise SystemExit(f"DL20 has too few distinct passages to give query {q} {max(SIZES)} candidates")
        lists[q] = {n: docs[:n] for n in SIZES}
    needed = {d for per in lists.values() for d in per[max(SIZES)]}
    if every_top100:
        needed |= {d for q in qids for d in ranked[q][:100]}
    texts = {doc.docid: doc.text for doc in read_corpus(data_dir / "collection.tsv") if doc.docid in needed}
    lacking = needed - set(texts)
    if lacking:
        raise SystemExit(f"{len(lacking)} candidate passages are not in collection.tsv, e.g. {sorted(lacking)[:3]}")
    return [(q, topics[q]) for q in selected], lists, texts


def store_for(
    model: Any, texts: dict[str, str], cache: Path, *, with_pooled: bool, batch_size: int,
    options: frozenset[str] = frozenset(),
) -> CandidateStore:
    """The model's store over ``texts``, built once and reused while model and texts match.

    A precomputed-layout store is built from the embedding-layout store of the same weights
    (``MixEncoder.precompute`` over its float16 E0), so the backbone runs once per quantization.
    """
    h = hashlib.sha256()
    h.update(json.dumps(model.candidate_fingerprint(), sort_keys=True).encode())
    h.update(json.dumps(sorted(texts.items())).encode())
    h.update(str(with_pooled).encode())
    path = cache / f"{model.candidate_fingerprint()['model_type']}-{h.hexdigest()[:16]}"
    if (path / "manifest.json").is_file():
        return CandidateStore.open(path, model=model)
    encoder = model
    if "precomputed" in options:
        twin = model.with_inference_options(candidate_layout="embeddings")
        encoder = PrecomputedFromStore(model, store_for(twin, texts, cache, with_pooled=with_pooled, batch_size=batch_size), texts)
    start = time.perf_counter()
    store = CandidateStore.build(
        path, encoder, sorted(texts.items()), mode="resume" if path.exists() else "create",
        with_pooled=with_pooled, batch_size=batch_size, show_progress_bar=logger.isEnabledFor(logging.INFO),
    )
    logger.info("built store %s (%d passages) in %.0f s", path.name, len(texts), time.perf_counter() - start)
    return store


class PrecomputedFromStore:
    """What ``CandidateStore.build`` reads of a model (``candidate_fingerprint`` and
    ``encode_candidates``) for a precomputed-layout ``model``, with its E0 taken from an
    embedding-layout store of the same weights instead of a second backbone pass."""

    def __init__(self, model: Any, embeddings: CandidateStore, texts: dict[str, str]):
        self.model, self.embeddings = model, embeddings
        self.docid_of = {text: docid for docid, text in texts.items()}

    @property
    def search_metric(self) -> str:
        return self.model.search_metric

    def candidate_fingerprint(self) -> dict[str, Any]:
        return self.model.candidate_fingerprint()

    def encode_candidates(self, texts: Sequence[str], **_: Any) -> Any:
        return self.model.precompute(self.embeddings.gather([self.docid_of[t] for t in texts]))


# ---------------------------------------------------------------------- FLOPs and the GEMM rate


def _bert_layer(b: int, length: int, d: int, dff: int, heads: int) -> list[Gemm]:
    """The GEMMs of one BERT layer over ``b`` sequences of ``length`` tokens."""
    dh = d // heads
    return [
        _linear(1, b * length, d, d, 3),  # Q, K, V projections
        (b * heads, length, dh, length, 1),  # attention scores
        (b * heads, length, length, dh, 1),  # attention-weighted values
        _linear(1, b * length, d, d, 1),  # attention output
        _linear(1, b * length, d, dff, 1),  # feed-forward in
        _linear(1, b * length, dff, d, 1),  # feed-forward out
    ]


def _chunks(n: int, size: int) -> list[int]:
    return [size] * (n // size) + ([n % size] if n % size else [])


def online_gemms(name: str, model: Any, lq: int, lc: int, n: int) -> list[Gemm]:
    """Every GEMM of the online path (encode one query of ``lq`` tokens, score ``n`` candidates of
    ``lc`` stored tokens) as the system's code runs it. ``lc`` counts the stored tokens: for
    cross/deformer the candidate's tokens after [CLS], for colbert/virt all of them. ``name``
    may carry variant options (``mixencoder-a@precomputed``)."""
    name, options = split_variant(name)
    bc = model.backbone.config
    d, dff, heads, layers = bc.hidden_size, bc.intermediate_size, bc.num_attention_heads, bc.num_hidden_layers
    dh = d // heads
    query = [g for _ in range(layers) for g in _bert_layer(1, lq, d, dff, heads)]
    sim = [(1, 1, d, n, 1)]
    if name == "cross":
        pairs = [g for p in _chunks(n, model.config.score_batch_size) for g in _bert_layer(p, lq + lc, d, dff, heads)]
        return [g for _ in range(layers) for g in pairs] + [(1, n, d, 1, 1)]
    if name == "deformer":
        k = model.separate_layers
        lower = [g for _ in range(k) for g in _bert_layer(1, lq, d, dff, heads)]
        pairs = [g for p in _chunks(n, model.config.score_batch_size) for g in _bert_layer(p, lq + lc, d, dff, heads)]
        return lower + [g for _ in range(layers - k) for g in pairs] + [(1, n, d, 1, 1)]
    if name == "dual":
        return query + sim
    if name.startswith("poly"):
        m = model.config.num_codes
        return query + [(1, m, d, lq, 1), (1, m, lq, d, 1), (1, n, d, m, 1), (1, n, m, d, 1)]
    if name == "colbert":
        dim = model.config.dim
        out = query + [(1, lq, d, dim, 1)]
        from mixencoder.models.colbert import SCORE_CHUNK as CB_CHUNK

        return out + [(1, p * lc, dim, lq, 1) for p in _chunks(n, CB_CHUNK)]
    if name == "virt":
        from mixencoder.models.virt import SCORE_CHUNK as VIRT_CHUNK

        out = list(query)
        for p in _chunks(n, VIRT_CHUNK):
            out += [(p, lq, d, lc, 1), (p, lq, lc, d, 2), (p, 1, lq, d, 1), (1, p, 4 * d, d, 2)]
        return out + sim
    if name.startswith("mixencoder"):
        return query + mixencoder_gemms(model, options, lq, n) + sim
    raise ValueError(f"no FLOP model for system {name!r}")


def mixencoder_gemms(model: Any, options: frozenset[str], lq: int, n: int) -> list[Gemm]:
    """MixEncoder's GEMMs after the query's backbone pass: the query's keys/values at each
    interaction layer, then scoring ``n`` candidates, by ``MixEncoder.score`` (the one-query
    path: flat rows, all heads per GEMM against block-diagonal keys/values, Eq. 2's ``h_query``
    and ``h_dense`` folded into the query) or, with ``batched``, by the training path's math.
    With ``precomputed`` the first layer's Q', K', V' and the gate's mean-E block are read from
    the store: ``3 k d^2 + d^2`` multiply-adds fewer per candidate."""
    bc = model.backbone.config
    d, dff, heads = bc.hidden_size, bc.intermediate_size, bc.num_attention_heads
    dh, k, j, hq = d // heads, model.config.k, len(model.layer_ids), heads * lq
    out: list[Gemm] = [_linear(1, lq, d, d, 2 * j)]  # each interaction layer's query keys/values
    if "batched" in options:
        per_layer = [
            _linear(1, n * k, d, d, 3),  # Q', K', V' of the candidates' E
            (heads, n * k, dh, lq, 1), (n * heads, k, dh, k, 1),  # Eq. 1 scores (query, own)
            (heads, n * k, lq, dh, 1), (n * heads, k, k, dh, 1),  # Eq. 1 values
            _linear(1, n * k, d, d, 1), _linear(1, n * k, d, dff, 1), _linear(1, n * k, dff, d, 1),  # output, FFN
            _linear(1, n, d, d, 1),  # Eq. 2 Q* from mean(E)
            (heads, n, dh, lq, 1), (heads, n, lq, dh, 1),  # Eq. 2 attention over the query
            _linear(1, n, d, d, 1), _linear(1, n, 3 * d, d, 1),  # dense, gate
            _linear(1, n, d, dff, 1), _linear(1, n, dff, d, 1),  # H's feed-forward
        ]
        out += [g for _ in range(j) for g in per_layer]
    else:
        fold = n > hq  # MixEncoder.score folds h_query / h_dense into the query past H*q candidates
        out += [(1, d, d, hq, j), (1, hq, d, d, j)] if fold else []  # the folding, once per query
        for layer in range(j):
            stored = layer == 0 and "precomputed" in options
            if not stored:
                out.append(_linear(1, n * k, d, d, 3))  # Q', K', V'
            out += [
                (1, n * k, d, hq, 1), (n * heads, k, dh, k, 1),  # Eq. 1 scores (query, own)
                (1, n * k, hq, d, 1), (n * heads, k, k, dh, 1),  # Eq. 1 values
                _linear(1, n * k, d, d, 1), _linear(1, n * k, d, dff, 1), _linear(1, n * k, dff, d, 1),
                (1, n, d, hq, 1), (1, n, hq, d, 1),  # Eq. 2 attention (h_query/h_dense folded in or not)
                *([] if fold else [_linear(1, n, d, d, 2)]),  # h_query, h_dense per candidate
                # the gate's [mean E; new; H] blocks: H is zero at the first layer, mean E stored
                _linear(1, n, d, d, 3 if layer else (1 if stored else 2)),
                _linear(1, n, d, dff, 1), _linear(1, n, dff, d, 1),  # H's feed-forward
            ]
    cfg = model.config
    if cfg.pooled_residual and cfg.mixing == "linear":
        out.append(_linear(1, n, d, d, 2))  # the d x d maps taking h and mean(E) to the pooled vectors
    return out


def gemm_flops(gemms: Sequence[Gemm]) -> int:
    return sum(2 * b * m * k * n * c for b, m, k, n, c in gemms)


class GemmTimer:
    """Median seconds of one GEMM at a shape, memoised per shape: ``torch.matmul`` in float32,
    or ``torch._int_mm`` (int8 x int8 -> int32, what ``Int8Linear`` runs) for the linear layers
    of an int8 variant."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self._seconds: dict[tuple[int, int, int, int, bool], float] = {}

    def seconds(self, b: int, m: int, k: int, n: int, int8: bool = False) -> float:
        key = (b, m, k, n, int8)
        if key not in self._seconds:
            shape_a, shape_b = ((m, k), (k, n)) if b == 1 else ((b, m, k), (b, k, n))
            if int8:
                x = torch.randint(-127, 128, shape_a, dtype=torch.int8)
                y = torch.randint(-127, 128, shape_b, dtype=torch.int8)
                op = torch._int_mm
            else:
                x, y = torch.randn(*shape_a, dtype=self.dtype), torch.randn(*shape_b, dtype=self.dtype)
                op = torch.matmul
            with torch.inference_mode():
                op(x, y)
                times = []
                deadline = time.perf_counter() + 0.05
                while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 50):
                    t = time.perf_counter()
                    op(x, y)
                    times.append(time.perf_counter() - t)
            self._seconds[key] = statistics.median(times)
        return self._seconds[key]

    def total(self, gemms: Sequence[Gemm], *, int8_linears: bool = False) -> float:
        seconds = 0.0
        for gemm in gemms:
            b, m, k, n, c = gemm
            seconds += c * self.seconds(b, m, k, n, int8_linears and isinstance(gemm, LinearGemm))
        return seconds

    def peak_gflops(self) -> float:
        b, m, k, n = 1, 4096, 384, 1536
        return 2 * m * k * n / self.seconds(b, m, k, n) / 1e9


# ---------------------------------------------------------------------- timing


def time_system(
    name: str,
    model: Any,
    store: CandidateStore,
    queries: list[tuple[str, str]],
    lists: dict[str, dict[int, list[str]]],
    *,
    warmup: int,
    timer: GemmTimer,
    score_fn: Callable[[Any, Any], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Time the online path of one system for every N; see the module docstring."""
    score = score_fn or model.score
    if score_fn is not None:  # another path to the same scores must give the product's scores
        qid, text = queries[0]
        reps = store.gather(lists[qid][max(SIZES)])
        state = model.encode_query(text)
        torch.testing.assert_close(score_fn(state, reps), model.score(state, reps), rtol=1e-4, atol=1e-4)
    tokenize = model.tokenize_queries
    result: dict[str, Any] = {"queries_timed": len(queries)}

    def one(qid: str, text: str, docids: list[str]) -> dict[str, float]:
        t0 = time.perf_counter()
        tok = tokenize([text])
        t1 = time.perf_counter()
        model.tokenize_queries = lambda _texts, _tok=tok: _tok  # encode_query reuses it
        try:
            t2 = time.perf_counter()
            reps = store.gather(docids)
            t3 = time.perf_counter()
            state = model.encode_query(text)
            t4 = time.perf_counter()
            scores = score(state, reps)
            t5 = time.perf_counter()
        finally:
            del model.tokenize_queries
        if scores.shape != (len(docids),) or not bool(torch.isfinite(scores).all()):
            raise RuntimeError(f"{name} returned bad scores for query {qid}: shape {tuple(scores.shape)}")
        # What fusion adds to Reranker.rerank: the neural scores as a dict, fused with the first
        # stage's (rank-derived here: the cost does not depend on the values), read back in order.
        first_stage = {d: float(len(docids) - i) for i, d in enumerate(docids)}
        fusion_s = {}
        for method, fusion in (("interpolate", Fusion("interpolate", alpha=0.2)), ("rrf", Fusion("rrf"))):
            t6 = time.perf_counter()
            fused = fusion.fuse(dict(zip(docids, scores.tolist())), first_stage)
            [fused[d] for d in docids]
            fusion_s[method] = time.perf_counter() - t6
        return {
            "fusion": fusion_s["interpolate"], "rrf": fusion_s["rrf"],
            "tokenize": t1 - t0, "gather": t3 - t2, "encode": t4 - t3, "score": t5 - t4,
            "total": t5 - t2, "lq": int(tok["attention_mask"].shape[1] if name == "colbert" else tok["attention_mask"].sum()),
            "lc": float(reps.lengths.float().mean()),
        }

    for n in SIZES:
        for qid, text in queries[:warmup]:
            one(qid, text, lists[qid][n][: min(n, 100)])
        rows = [one(qid, text, lists[qid][n]) for qid, text in queries]
        totals = [r["total"] * 1000 for r in rows]
        lq = int(statistics.median(r["lq"] for r in rows))
        lc = int(round(statistics.mean(r["lc"] for r in rows)))
        gemms = online_gemms(name, model, lq, lc, n)
        int8 = "int8" in split_variant(name)[1]
        result[str(n)] = {
            "ms_per_query": statistics.median(totals),
            "p90_ms": float(np.percentile(totals, 90)),
            "tokenize_ms": statistics.median(r["tokenize"] * 1000 for r in rows),
            "gather_ms": statistics.median(r["gather"] * 1000 for r in rows),
            "encode_query_ms": statistics.median(r["encode"] * 1000 for r in rows),
            "score_ms": statistics.median(r["score"] * 1000 for r in rows),
            # fusion with the first stage's scores, timed separately (not in ms_per_query)
            "fusion_ms": statistics.median(r["fusion"] * 1000 for r in rows),
            "rrf_ms": statistics.median(r["rrf"] * 1000 for r in rows),
            "flops": gemm_flops(gemms),
            "lower_bound_ms": timer.total(gemms, int8_linears=int8) * 1000,
            "shape": {"query_tokens": lq, "candidate_tokens": lc, "candidates": n},
        }
        result[str(n)]["fusion_overhead"] = result[str(n)]["fusion_ms"] / result[str(n)]["ms_per_query"]
        logger.info("%s N=%d: %.1f ms per query (median of %d); interpolation fusion +%.2f ms (+%.2f%%)", name, n,
                    result[str(n)]["ms_per_query"], len(rows), result[str(n)]["fusion_ms"],
                    100 * result[str(n)]["fusion_overhead"])
    return result


# ---------------------------------------------------------------------- report


def print_table(report: dict[str, Any], cross_queries: int, queries: int) -> None:
    systems = report["systems"]
    quality = report.get("quality", {}).get("systems", {})
    print(f"\nOnline reranking latency per query on this CPU ({torch.get_num_threads()} threads; "
          f"load average {report['load_average'][0]:.1f} at start, {report['load_average'][1]:.1f} at end)")
    print(f"median over {report['rounds']} rounds of the median / p90 over {queries} DL20 queries"
          + (f" ({cross_queries} for cross)" if "cross" in systems else "")
          + "; gather + query encoding + scoring; tokenisation separate\n")

    def sp(x: float | None) -> str:
        return f"{x:.2f}x" if x is not None else "-"

    def dq(name: str, measure: str) -> str:
        if name not in quality or measure not in quality[name]:
            return "-"
        q = quality[name][measure]
        return f"{q['delta']:+.4f}({q['se']:.4f})"

    head = (f"{'system':<30} {'N=1000 ms':>10} {'p90':>7} {'vs ref':>7} {'vs cross':>8} {'GFLOP':>6} {'bound ms':>8}"
            f" {'x bound':>7} {'N=100 ms':>8} {'vs ref':>7} {'bytes/cand':>10} {'docs/s':>6} {'dnDCG@10 (SE)':>16} {'dR@1 (SE)':>16}")
    print(head)
    print("-" * len(head))
    for name, r in systems.items():
        a, b = r["1000"], r["100"]
        print(
            f"{name:<30} {a['ms_per_query']:>10.1f} {a['p90_ms']:>7.1f} {sp(a['speedup_vs_reference']):>7} "
            f"{sp(a['speedup_vs_cross']):>8} {a['flops'] / 1e9:>6.2f} {a['lower_bound_ms']:>8.1f} "
            f"{a['ms_per_query'] / a['lower_bound_ms']:>7.2f} {b['ms_per_query']:>8.1f} {sp(b['speedup_vs_reference']):>7} "
            f"{r['bytes_per_candidate']:>10.0f} {r['encode_docs_per_s']:>6.1f} {dq(name, 'nDCG@10'):>16} {dq(name, 'R@1'):>16}"
        )
    print("\nfusion with the first stage's scores at N=1000 (timed apart, median ms; % of ms_per_query):")
    for name, r in systems.items():
        a = r["1000"]
        print(f"  {name:<30} interpolate {a['fusion_ms']:.2f} ms ({100 * a['fusion_overhead']:.2f}%), "
              f"rrf {a['rrf_ms']:.2f} ms ({100 * a['rrf_ms'] / a['ms_per_query']:.2f}%)")
    print("\nstore build (encode_candidates, batch 32): docs/s in input order and with length buckets, the "
          "backbone's GEMM bound at the bucketed shapes, padding fraction in input order -> bucketed:")
    for name, r in systems.items():
        print(f"  {name:<30} {r['encode_docs_per_s_unbucketed']:6.1f} -> {r['encode_docs_per_s']:6.1f} docs/s "
              f"(bound {r['encode_bound_docs_per_s']:.1f}; {r['encode_docs_per_s'] / r['encode_bound_docs_per_s']:.0%} of it), "
              f"padding {r['padding_fraction_unbucketed']:.3f} -> {r['padding_fraction_bucketed']:.3f}")
    print(f"\npeak float32 GEMM rate: {report['gemm_gflops']['float32']:.1f} GFLOP/s; 'bound ms' = the system's "
          "GEMMs timed alone at its shapes (float32; torch._int_mm for the linear layers of @int8); "
          "'x bound' = measured / bound")
    print("'docs/s' = candidates encoded per second (encode_candidates, batch 32: a store build's work)")
    print(f"'vs ref' = speed-up over {report['reference_path']} (the training path's batched math, MixEncoder.score "
          "before its one-query path), median over rounds of same-round ratios")
    if quality:
        q = report["quality"]
        print(f"quality deltas against the plain float32 system, paired per query (SE): nDCG@10 over DL20's "
              f"BM25 top 100, R@1 over {q['ubuntu_examples']} Ubuntu-IRC valid examples; {q['model']}")
    if "cross" in systems:
        print(f"cross timed on {systems['cross']['queries_timed']} queries (--cross-queries); "
              "the others on all; 'vs cross' = cross median / system median at the same N")


def parse_systems(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if split_variant(s)[0] not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; known: {sorted(SYSTEMS)} (MixEncoder ones with @{'/'.join(VARIANT_OPTIONS)})")
    for name in names:
        base, options = split_variant(name)
        if options and not base.startswith("mixencoder"):
            raise SystemExit(f"{name}: variants apply to MixEncoder systems only")
        if options - set(VARIANT_OPTIONS) or {"batched", "precomputed"} <= options:
            raise SystemExit(f"{name}: options are {VARIANT_OPTIONS}; 'batched' reads no precomputed rows")
    return names


def build_variant(
    name: str, backbone: str | None, trained: Path | None = None
) -> tuple[Any, Callable[[Any, Any], torch.Tensor] | None]:
    """The model of system ``name`` (variant options applied) and, for ``batched``, its score
    function; MixEncoder systems load the saved ``trained`` model instead when it is given."""
    base, options = split_variant(name)
    model = load_model(trained) if trained is not None and base.startswith("mixencoder") else build_system(base, backbone)
    if options - {"batched"}:
        model = model.with_inference_options(
            candidate_layout="precomputed" if "precomputed" in options else None,
            quantization="int8" if "int8" in options else None,
        )
    return model, (batched_score(model) if "batched" in options else None)


def batched_score(model: Any) -> Callable[[Any, Any], torch.Tensor]:
    """``MixEncoder.score`` as the training path computes it (``head_vectors``: the batched
    functions of ``models/functional.py`` over a batch of one query), which is what ``score``
    ran before its one-query path; the reference of the speed-ups."""

    @torch.inference_mode()
    def score(state: Any, reps: Any) -> torch.Tensor:
        k = model.config.k
        e0 = reps.vectors[None, :, :k].to(torch.float32)
        pooled = None if reps.pooled is None else reps.pooled[None].to(torch.float32)
        h, e = model.head_vectors(state, e0, pooled)
        return model.similarity(h, e)[0]

    return score


# ---------------------------------------------------------------------- quality


def dl20_per_query(model: Any, store: CandidateStore, data_dir: Path) -> dict[str, float]:
    """nDCG@10 per DL20 query of the model reranking BM25's top 100 from its store."""
    topics, run = read_topics(data_dir / "queries.tsv"), read_run(data_dir / "bm25.top100.trec")
    reranked = {}
    for qid in (q for q in topics if q in run):
        docids = [d for d, _ in sorted_hits(run[qid])]
        scores = model.score(model.encode_query(topics[qid]), store.gather(docids))
        reranked[qid] = dict(zip(docids, scores.tolist()))
    return evaluate_per_query(reranked, read_qrels(data_dir / "qrels.txt"), ["nDCG@10"])["nDCG@10"]


def ubuntu_per_query(
    model: Any, options: frozenset[str], examples: list[Any], embeddings: dict[str, Any]
) -> dict[str, float]:
    """R@1 per Ubuntu-IRC validation example (10 candidates each) of the model, candidates
    encoded in memory and rounded to float16 as a store keeps them; ``embeddings`` caches the
    E0 of each candidate side (the precomputed layout reuses its twin's)."""
    qrels, contexts, candidates = to_qrels_and_candidates(
        examples, max_chars=4 * model.config.query_max_length, docid_salt="bench-speed"
    )
    pairs = [(qid, docid, text) for qid, docs in candidates.items() for docid, text in docs.items()]
    twin = model.with_inference_options(candidate_layout="embeddings") if "precomputed" in options else model
    key = json.dumps(twin.candidate_fingerprint(), sort_keys=True)
    if key not in embeddings:
        reps = twin.encode_candidates([t for _, _, t in pairs], show_progress_bar=False)
        embeddings[key] = CandidateReps(reps.vectors.half().float(), reps.lengths, reps.pooled.half().float())
    reps = embeddings[key]
    if "precomputed" in options:
        reps = model.precompute(reps)
        reps = CandidateReps(reps.vectors.half().float(), reps.lengths, reps.pooled)
    run: dict[str, dict[str, float]] = {}
    rows: dict[str, list[int]] = {}
    for i, (qid, _, _) in enumerate(pairs):
        rows.setdefault(qid, []).append(i)
    for qid, index in rows.items():
        scores = model.score(model.encode_query(contexts[qid]), reps.select(index))
        run[qid] = {pairs[i][1]: float(s) for i, s in zip(index, scores)}
    return evaluate_per_query(run, qrels, ["R@1"])["R@1"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/msmarco/dl20")
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help="comma-separated (default: all)")
    p.add_argument("--queries", type=int, default=20, help="timed queries per system (default 20)")
    p.add_argument("--cross-queries", type=int, default=3, help="timed queries for cross (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up queries per system and N")
    p.add_argument("--backbone", default=None, help="backbone of the fresh models (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--cache", type=Path, default=Path("work/cache/bench_speed"), help="where stores are cached")
    p.add_argument("--no-cache", action="store_true", help="build stores in a temporary directory, deleted after")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--batch-size", type=int, default=32, help="store build batch size")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds over all systems; medians reported (default 3)")
    p.add_argument("--build-docs", type=int, default=64,
                   help="passages encoded per round per system for encode_docs_per_s (default 64)")
    p.add_argument("--quality", action="store_true",
                   help="also measure each MixEncoder variant's nDCG@10 (DL20) and R@1 (Ubuntu-IRC valid) change")
    p.add_argument("--ubuntu-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ubuntu/v2")
    p.add_argument("--ubuntu-examples", type=int, default=500, help="Ubuntu-IRC valid examples for --quality")
    p.add_argument("--quality-tasks", nargs="+", choices=("dl20", "ubuntu"), default=["dl20", "ubuntu"],
                   help="what --quality measures (default both)")
    p.add_argument("--model", type=Path, default=None,
                   help="a saved (trained) MixEncoder that the mixencoder-* systems load instead of a fresh model")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "mixencoder"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    systems = parse_systems(args.systems)
    if args.queries < 1 or args.cross_queries < 1 or args.rounds < 1:
        raise SystemExit("--queries, --cross-queries and --rounds must be >= 1")

    queries, lists, texts = load_candidates(args.data_dir, args.queries, every_top100=args.quality and "dl20" in args.quality_tasks)
    logger.info("%d queries, %d distinct passages", len(queries), len(texts))
    tmp = tempfile.TemporaryDirectory(prefix="bench-speed-") if args.no_cache else None
    cache = Path(tmp.name) if tmp else args.cache
    timer = GemmTimer()
    load_start = os.getloadavg()[0]
    report: dict[str, Any] = {"gemm_gflops": {"float32": timer.peak_gflops()}, "systems": {}}
    try:
        loaded = {}
        for name in systems:
            model, score_fn = build_variant(name, args.backbone, args.model)
            store = store_for(model, texts, cache, with_pooled=model.needs_pooled, batch_size=args.batch_size,
                              options=split_variant(name)[1])
            loaded[name] = (model, score_fn, store)
        # Rounds over every system in turn: a ratio between two systems is then taken between
        # timings minutes apart at most, under the same load of the shared machine.
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
        build_sample = [texts[d] for d in sorted(texts)[: args.build_docs]]
        for _ in range(args.rounds):
            for name, (model, score_fn, store) in loaded.items():
                timed = queries[: args.cross_queries] if name == "cross" else queries
                # A fresh GEMM timer per system: its bound is measured right after its own
                # timing, under the same CPU load.
                result = time_system(name, model, store, timed, lists, warmup=min(args.warmup, len(timed)),
                                     timer=GemmTimer(), score_fn=score_fn)
                result["encode_docs_per_s"] = encode_rate(model, build_sample)
                result["encode_docs_per_s_unbucketed"] = encode_rate(model, build_sample, bucket_by_length=False)
                rounds[name].append(result)
        for name, (model, _, store) in loaded.items():
            result = merge_rounds(rounds[name], rounds.get(REFERENCE_PATH))
            result["bytes_per_candidate"] = store.bytes_per_candidate(include_search_index=False)
            result.update(build_bound(name, model, build_sample, timer))
            result["store_dtype"] = store.dtype
            report["systems"][name] = result
        if args.quality:
            report["quality"] = quality_deltas(loaded, texts, cache, args)
    finally:
        if tmp:
            tmp.cleanup()
    cross = report["systems"].get("cross")
    for r in report["systems"].values():
        for n in SIZES:
            r[str(n)]["speedup_vs_cross"] = cross[str(n)]["ms_per_query"] / r[str(n)]["ms_per_query"] if cross else None
    report["load_average"] = [load_start, os.getloadavg()[0]]
    report["threads"] = torch.get_num_threads()
    report["queries"] = len(queries)
    report["cross_queries"] = min(args.cross_queries, len(queries))
    report["rounds"] = args.rounds
    report["reference_path"] = REFERENCE_PATH
    print_table(report, report["cross_queries"], len(queries))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def merge_rounds(rounds: list[dict[str, Any]], reference: list[dict[str, Any]] | None) -> dict[str, Any]:
    """One system's rounds -> its result: the last round's fields, with ``ms_per_query`` and
    ``p90_ms`` the medians over rounds, ``ms_per_query_rounds`` each round's figure and
    ``speedup_vs_reference`` the median over rounds of the reference's ms over this system's
    ms in the same round (``None`` without the reference path in the run)."""
    result = dict(rounds[-1])
    for key in ("encode_docs_per_s", "encode_docs_per_s_unbucketed"):
        result[key] = statistics.median(r[key] for r in rounds)
    for n in map(str, SIZES):
        per = dict(rounds[-1][n])
        per["ms_per_query_rounds"] = [r[n]["ms_per_query"] for r in rounds]
        per["ms_per_query"] = statistics.median(per["ms_per_query_rounds"])
        per["p90_ms"] = statistics.median(r[n]["p90_ms"] for r in rounds)
        per["speedup_vs_reference"] = (
            statistics.median(ref[n]["ms_per_query"] / r[n]["ms_per_query"] for ref, r in zip(reference, rounds))
            if reference else None
        )
        result[n] = per
    return result


def encode_rate(model: Any, texts: list[str], *, bucket_by_length: bool = True) -> float:
    """Candidates encoded per second by ``encode_candidates`` (a store build's work without the
    writes), batch 32, batched by token length (the default) or in input order."""
    start = time.perf_counter()
    model.encode_candidates(texts, batch_size=32, show_progress_bar=False, bucket_by_length=bucket_by_length)
    return len(texts) / (time.perf_counter() - start)


def build_bound(name: str, model: Any, texts: list[str], timer: GemmTimer) -> dict[str, float]:
    """A store build's padding and its FLOP bound over ``texts`` (batch 32): the padding
    fraction in input order and with length buckets, and the docs/s the backbone's GEMMs allow
    at the bucketed batches' shapes (timed alone in this run; int8 for ``@int8``)."""
    budget = model.candidate_max_length
    lengths = token_lengths(model.tokenizer, texts, budget)
    order = batch_order(lengths, bucketed=True)
    bc = model.backbone.config
    gemms = []
    for start in range(0, len(texts), 32):
        batch = [lengths[i] for i in order[start : start + 32]]
        gemms += [g for _ in range(bc.num_hidden_layers)
                  for g in _bert_layer(len(batch), max(batch), bc.hidden_size, bc.intermediate_size, bc.num_attention_heads)]
    seconds = timer.total(gemms, int8_linears="int8" in split_variant(name)[1])
    return {
        "padding_fraction_unbucketed": padding_fraction(lengths, 32, bucketed=False),
        "padding_fraction_bucketed": padding_fraction(lengths, 32, bucketed=True),
        "encode_bound_docs_per_s": len(texts) / seconds if seconds else float("nan"),
    }


def quality_deltas(
    loaded: dict[str, tuple[Any, Any, CandidateStore]], texts: dict[str, str], cache: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Paired quality change of every MixEncoder variant against its plain float32 system:
    nDCG@10 on DL20 (BM25 top-100 reranked from the store) and R@1 on the first
    ``--ubuntu-examples`` Ubuntu-IRC validation examples. Models are untrained (zero-shot)."""
    examples = list(itertools.islice(read_ubuntu_v2_eval(args.ubuntu_dir / "valid.csv"), args.ubuntu_examples))
    per_query: dict[str, dict[str, dict[str, float]]] = {}
    embeddings: dict[str, Any] = {}
    tasks = set(args.quality_tasks)
    described = f"trained: {args.model}" if args.model else "untrained (zero-shot) " + (args.backbone or "all-MiniLM-L6-v2")
    out: dict[str, Any] = {"model": described, "ubuntu_examples": len(examples) if "ubuntu" in tasks else 0, "systems": {}}

    def measured(name: str) -> dict[str, dict[str, float]]:
        if name not in per_query:
            if name in loaded:
                model, _, store = loaded[name]
            else:  # the plain system a variant is compared with, when the run left it out
                model = build_variant(name, args.backbone, args.model)[0]
                store = store_for(model, texts, cache, with_pooled=model.needs_pooled, batch_size=args.batch_size)
            logger.info("quality of %s", name)
            per_query[name] = {}
            if "dl20" in tasks:
                per_query[name]["nDCG@10"] = dl20_per_query(model, store, args.data_dir)
            if "ubuntu" in tasks:
                per_query[name]["R@1"] = ubuntu_per_query(model, split_variant(name)[1], examples, embeddings)
        return per_query[name]

    for name in loaded:
        base, options = split_variant(name)
        if not base.startswith("mixencoder") or not options - {"batched"}:
            continue
        ours, theirs = measured(name), measured(base)
        row: dict[str, Any] = {"reference": base}
        for measure in ours:
            delta, se, n = paired_difference(ours[measure], theirs[measure])
            row[measure] = {"value": statistics.mean(ours[measure].values()),
                            "reference_value": statistics.mean(theirs[measure].values()),
                            "delta": delta, "se": se, "queries": n}
        out["systems"][name] = row
    return out


if __name__ == "__main__":
    raise SystemExit(main())
