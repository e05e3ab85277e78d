"""Online reranking speed of every system, per query, for N = 1000 and N = 100 candidates
(the paper's Table 2 speedup column, Table 4 and Table 6), measured on this machine's CPU.

Usage (from the project root)::

    python eval/bench_speed.py                                   # all systems, 20 queries
    python eval/bench_speed.py --systems mixencoder-a,dual,cross --queries 30 --json speed.json

Protocol:

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
  by the matmul rate this CPU reaches at those shapes. ``gemm_gflops`` reports the peak float32
  rate at a large GEMM for reference.
* ``bytes_per_candidate``: the store's on-disk bytes per candidate (no dense-search index).

``--json PATH`` writes ``{"gemm_gflops": {dtype: GFLOP/s}, "systems": {name: {"1000": {...},
"100": {...}, "bytes_per_candidate": ...}}, ...}``; per N: ``ms_per_query``, ``p90_ms``,
``speedup_vs_cross``, ``flops``, ``lower_bound_ms`` and the breakdown (gather/encode/score/tokenize).
"""

from __future__ import annotations

import argparse
import hashlib
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

from mixencoder import CandidateStore, MixEncoder
from mixencoder.fusion import Fusion
from mixencoder.data import read_corpus, read_run, read_topics, sorted_hits
from mixencoder.models.registry import SYSTEMS, build_system

logger = logging.getLogger("bench_speed")

DEFAULT_SYSTEMS = [
    "cross", "dual", "poly-64", "poly-360", "colbert", "deformer", "virt",
    "mixencoder-a", "mixencoder-b", "mixencoder-c", "mixencoder-a-C",
    "mixencoder-k1", "mixencoder-k2", "mixencoder-k3", "mixencoder-k4", "mixencoder-k10",
    "mixencoder-a-fastscore",  # mixencoder-a scored by the prototype at the end of this file
]
SIZES = (1000, 100)
Gemm = tuple[int, int, int, int, int]  # (batch, m, k, n, count): count x (batch x (m,k) @ (k,n))


# ---------------------------------------------------------------------- data


def load_candidates(data_dir: Path, n_queries: int) -> tuple[list[tuple[str, str]], dict[str, dict[int, list[str]]], dict[str, str]]:
    """``(queries [(qid, text)], {qid: {N: docids}}, {docid: text} of every docid needed)``."""
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
    texts = {doc.docid: doc.text for doc in read_corpus(data_dir / "collection.tsv") if doc.docid in needed}
    lacking = needed - set(texts)
    if lacking:
        raise SystemExit(f"{len(lacking)} candidate passages are not in collection.tsv, e.g. {sorted(lacking)[:3]}")
    return [(q, topics[q]) for q in selected], lists, texts


def store_for(model: Any, texts: dict[str, str], cache: Path, *, with_pooled: bool, batch_size: int) -> CandidateStore:
    """The model's store over ``texts``, built once and reused while model and texts match."""
    h = hashlib.sha256()
    h.update(json.dumps(model.candidate_fingerprint(), sort_keys=True).encode())
    h.update(json.dumps(sorted(texts.items())).encode())
    h.update(str(with_pooled).encode())
    path = cache / f"{model.candidate_fingerprint()['model_type']}-{h.hexdigest()[:16]}"
    if (path / "manifest.json").is_file():
        return CandidateStore.open(path, model=model)
    start = time.perf_counter()
    store = CandidateStore.build(
        path, model, sorted(texts.items()), mode="resume" if path.exists() else "create",
        with_pooled=with_pooled, batch_size=batch_size, show_progress_bar=logger.isEnabledFor(logging.INFO),
    )
    logger.info("built store %s (%d passages) in %.0f s", path.name, len(texts), time.perf_counter() - start)
    return store


def needs_pooled(model: Any) -> bool:
    """Whether ``score`` reads ``reps.pooled`` (only MixEncoder's pooled residual does)."""
    return isinstance(model, MixEncoder) and bool(model.config.pooled_residual)


# ---------------------------------------------------------------------- FLOPs and the GEMM rate


def _bert_layer(b: int, length: int, d: int, dff: int, heads: int) -> list[Gemm]:
    """The GEMMs of one BERT layer over ``b`` sequences of ``length`` tokens."""
    dh = d // heads
    return [
        (1, b * length, d, d, 3),  # Q, K, V projections
        (b * heads, length, dh, length, 1),  # attention scores
        (b * heads, length, length, dh, 1),  # attention-weighted values
        (1, b * length, d, d, 1),  # attention output
        (1, b * length, d, dff, 1),  # feed-forward in
        (1, b * length, dff, d, 1),  # feed-forward out
    ]


def _chunks(n: int, size: int) -> list[int]:
    return [size] * (n // size) + ([n % size] if n % size else [])


def online_gemms(name: str, model: Any, lq: int, lc: int, n: int) -> list[Gemm]:
    """Every GEMM of the online path (encode one query of ``lq`` tokens, score ``n`` candidates of
    ``lc`` stored tokens) as the system's code runs it. ``lc`` counts the stored tokens: for
    cross/deformer the candidate's tokens after [CLS], for colbert/virt all of them."""
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
    if name == "mixencoder-a-fastscore":  # the prototype below: folded Eq. 2, all heads per GEMM
        k, j, hq = model.config.k, len(model.layer_ids), heads * lq
        out = query + [(1, lq, d, d, 2 * j), (1, d, d, hq, j), (1, hq, d, d, j)]
        for layer in range(j):
            out += [
                (1, n * k, d, d, 3), (1, n * k, d, hq, 1), (n * heads, k, dh, k, 1),
                (1, n * k, hq, d, 1), (n * heads, k, k, dh, 1),
                (1, n * k, d, d, 1), (1, n * k, d, dff, 1), (1, n * k, dff, d, 1),
                (1, n, d, hq, 1), (1, n, hq, d, 1), (1, n, d, d, 2 if layer == 0 else 3),
                (1, n, d, dff, 1), (1, n, dff, d, 1),
            ]
        return out + mixing_gemms(model, n, d) + sim
    if name.startswith("mixencoder"):
        k, j = model.config.k, len(model.layer_ids)
        out = query + [(1, lq, d, d, 2 * j)]  # each interaction layer's query keys/values
        if model.config.strategy == "C":
            pass  # the context codes are applied offline
        per_layer = [
            (1, n * k, d, d, 3),  # Q', K', V' of the candidates' E
            (heads, n * k, dh, lq, 1), (n * heads, k, dh, k, 1),  # Eq. 1 scores (query, own)
            (heads, n * k, lq, dh, 1), (n * heads, k, k, dh, 1),  # Eq. 1 values
            (1, n * k, d, d, 1), (1, n * k, d, dff, 1), (1, n * k, dff, d, 1),  # output, FFN
            (1, n, d, d, 1),  # Eq. 2 Q* from mean(E)
            (heads, n, dh, lq, 1), (heads, n, lq, dh, 1),  # Eq. 2 attention over the query
            (1, n, d, d, 1), (1, n, 3 * d, d, 1),  # dense, gate
            (1, n, d, dff, 1), (1, n, dff, d, 1),  # H's feed-forward
        ]
        return out + [g for _ in range(j) for g in per_layer] + mixing_gemms(model, n, d) + sim
    raise ValueError(f"no FLOP model for system {name!r}")


def mixing_gemms(model: Any, n: int, d: int) -> list[Gemm]:
    """The ``d x d`` maps taking h and mean(E) into the pooled vectors (``mixing="linear"``)."""
    cfg = model.config
    return [(1, n, d, d, 2)] if cfg.pooled_residual and cfg.mixing == "linear" else []


def gemm_flops(gemms: Sequence[Gemm]) -> int:
    return sum(2 * b * m * k * n * c for b, m, k, n, c in gemms)


class GemmTimer:
    """Median seconds of ``torch.matmul`` at a shape (float32), memoised per shape."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self._seconds: dict[tuple[int, int, int, int], float] = {}

    def seconds(self, b: int, m: int, k: int, n: int) -> float:
        key = (b, m, k, n)
        if key not in self._seconds:
            shape_a, shape_b = ((m, k), (k, n)) if b == 1 else ((b, m, k), (b, k, n))
            x, y = torch.randn(*shape_a, dtype=self.dtype), torch.randn(*shape_b, dtype=self.dtype)
            with torch.inference_mode():
                torch.matmul(x, y)
                times = []
                deadline = time.perf_counter() + 0.05
                while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 50):
                    t = time.perf_counter()
                    torch.matmul(x, y)
                    times.append(time.perf_counter() - t)
            self._seconds[key] = statistics.median(times)
        return self._seconds[key]

    def total(self, gemms: Sequence[Gemm]) -> float:
        return sum(c * self.seconds(b, m, k, n) for b, m, k, n, c in gemms)

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
    if score_fn is not None:  # a prototype must give the product's scores
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
            "lower_bound_ms": timer.total(gemms) * 1000,
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
    print(f"\nOnline reranking latency per query on this CPU ({torch.get_num_threads()} threads, float32; "
          f"load average {report['load_average'][0]:.1f} at start, {report['load_average'][1]:.1f} at end)")
    print(f"median / p90 over {queries} DL20 queries"
          + (f" ({cross_queries} for cross)" if "cross" in systems else "")
          + "; gather + query encoding + scoring; tokenisation separate\n")
    head = (f"{'system':<22} {'N=1000 ms':>10} {'p90':>8} {'speedup':>8} {'GFLOP':>7} {'bound ms':>9} {'x bound':>7}"
            f" {'N=100 ms':>9} {'p90':>7} {'speedup':>8} {'tok ms':>6} {'bytes/cand':>10}")
    print(head)
    print("-" * len(head))
    for name, r in systems.items():
        a, b = r["1000"], r["100"]

        def sp(x):
            return f"{x:.1f}x" if x is not None else "-"

        print(
            f"{name:<22} {a['ms_per_query']:>10.1f} {a['p90_ms']:>8.1f} {sp(a['speedup_vs_cross']):>8} "
            f"{a['flops'] / 1e9:>7.2f} {a['lower_bound_ms']:>9.1f} {a['ms_per_query'] / a['lower_bound_ms']:>7.1f} "
            f"{b['ms_per_query']:>9.1f} {b['p90_ms']:>7.1f} {sp(b['speedup_vs_cross']):>8} "
            f"{a['tokenize_ms']:>6.2f} {r['bytes_per_candidate']:>10.0f}"
        )
    print("\nfusion with the first stage's scores at N=1000 (timed apart, median ms; % of ms_per_query):")
    for name, r in systems.items():
        a = r["1000"]
        print(f"  {name:<22} interpolate {a['fusion_ms']:.2f} ms ({100 * a['fusion_overhead']:.2f}%), "
              f"rrf {a['rrf_ms']:.2f} ms ({100 * a['rrf_ms'] / a['ms_per_query']:.2f}%)")
    print(f"\npeak float32 GEMM rate: {report['gemm_gflops']['float32']:.1f} GFLOP/s; "
          "'x bound' = measured / lower bound (GEMMs alone at the system's shapes)")
    if "cross" in systems:
        print(f"cross timed on {systems['cross']['queries_timed']} queries (--cross-queries); "
              "the others on all; speedup = cross median / system median at the same N")


def parse_systems(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SYSTEMS and s != "mixencoder-a-fastscore"]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; known: {sorted(SYSTEMS)}")
    return names


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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "mixencoder"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    systems = parse_systems(args.systems)
    if args.queries < 1 or args.cross_queries < 1:
        raise SystemExit("--queries and --cross-queries must be >= 1")

    queries, lists, texts = load_candidates(args.data_dir, args.queries)
    logger.info("%d queries, %d distinct passages", len(queries), len(texts))
    tmp = tempfile.TemporaryDirectory(prefix="bench-speed-") if args.no_cache else None
    cache = Path(tmp.name) if tmp else args.cache
    timer = GemmTimer()
    load_start = os.getloadavg()[0]
    report: dict[str, Any] = {"gemm_gflops": {"float32": timer.peak_gflops()}, "systems": {}}
    try:
        for name in systems:
            base = "mixencoder-a" if name == "mixencoder-a-fastscore" else name
            model = build_system(base, args.backbone)
            store = store_for(model, texts, cache, with_pooled=needs_pooled(model), batch_size=args.batch_size)
            timed = queries[: args.cross_queries] if name == "cross" else queries
            score_fn = fast_mixencoder_score(model) if name == "mixencoder-a-fastscore" else None
            # A fresh GEMM timer per system: its bound is measured right after its own timing,
            # under the same CPU load (the machine is shared).
            result = time_system(name, model, store, timed, lists, warmup=min(args.warmup, len(timed)), timer=GemmTimer(), score_fn=score_fn)
            result["bytes_per_candidate"] = store.bytes_per_candidate(include_search_index=False)
            result["store_dtype"] = store.dtype
            report["systems"][name] = result
            del model, store
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
    print_table(report, report["cross_queries"], len(queries))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


# ---------------------------------------------------------------------- a faster MixEncoder score (prototype)


def fast_mixencoder_score(model: MixEncoder) -> Callable[[Any, Any], torch.Tensor]:
    """A prototype of a faster ``MixEncoder.score`` (same scores; not used by the product).

    What it changes against ``mixencoder.models.functional`` (see the report it backs):

    * 2-D layout: the candidates' E stays ``(n*k, d)``; no 5-D ``(B, C, k, H, dh)`` einsums, so
      no permute copies, and the singleton batch dimension is gone.
    * All heads in one GEMM: the query's keys/values become block-diagonal ``(d, H*q)`` /
      ``(H*q, d)`` matrices, built once per query, so candidate-query attention is
      ``(n*k, d) @ (d, H*q)`` and ``(n*k, H*q) @ (H*q, d)`` instead of per-head bmm's.
    * Joint softmax over [own k keys; query keys] without the concatenation; no padding masks
      (one query alone has none).
    * Eq. 2 folded: ``h_query`` into the keys (``(W_h^T K)``) and ``h_dense`` into the values
      (``V W_d^T``), two ``(n, d) @ (d, d)`` GEMMs fewer per layer; the gate's ``H`` block is
      skipped at the first layer (H_0 = 0).
    """
    import torch.nn.functional as F

    cfg = model.config
    heads, d = model.num_heads, model.hidden_size
    dh = d // heads
    scale = dh**-0.5

    def ffn(block: Any, x: torch.Tensor) -> torch.Tensor:
        return block.norm(block.fc_out(block.act(block.fc_in(x))) + x)

    @torch.inference_mode()
    def score(state: Any, reps: Any) -> torch.Tensor:
        if state.mask.shape[0] != 1 or not bool(state.mask.all()):
            return model.score(state, reps)  # the prototype covers one unpadded query
        n, k = len(reps), cfg.k
        e = reps.vectors[:, :k].to(torch.float32).reshape(n * k, d)
        h = None
        for layer, keys, values in zip(model.interaction, state.keys, state.values):
            kq, vq = keys[0], values[0]  # (q, H, dh)
            q = kq.shape[0]
            kbd = torch.block_diag(*[kq[:, i].T for i in range(heads)])  # (d, H*q)
            vbd = torch.block_diag(*[vq[:, i] for i in range(heads)])  # (H*q, d)
            # Eq. 1: E's rows attend over [their own k keys; the query's keys].
            qc, kc, vc = layer.query(e), layer.key(e), layer.value(e)
            s_q = (qc @ kbd).mul_(scale).view(n, k, heads, q)
            s_s = torch.einsum("nkhd,nlhd->nkhl", qc.view(n, k, heads, dh), kc.view(n, k, heads, dh)).mul_(scale)
            top = torch.maximum(s_q.amax(-1), s_s.amax(-1)).unsqueeze(-1)
            p_q, p_s = (s_q - top).exp_(), (s_s - top).exp_()
            z = p_q.sum(-1, keepdim=True).add_(p_s.sum(-1, keepdim=True))
            p_q, p_s = p_q.div_(z), p_s.div_(z)
            ctx = p_q.view(n * k, heads * q) @ vbd
            ctx += torch.einsum("nkhl,nlhd->nkhd", p_s, vc.view(n, k, heads, dh)).reshape(n * k, d)
            e_new = ffn(layer.ffn, layer.attn_norm(layer.attn_out(ctx) + e))
            # Eq. 2, folded: Q* K^T = e_bar (W_h^T K) + b_h K ; dense(P V) = P (V W_d^T) + b_d.
            e_bar = e if k == 1 else e.view(n, k, d).mean(1)
            a_keys = layer.h_query.weight.T @ kbd  # (d, H*q)
            b_keys = layer.h_query.bias @ kbd
            probs = torch.softmax(torch.addmm(b_keys, e_bar, a_keys).mul_(scale).view(n, heads, q), -1)
            new = torch.addmm(layer.h_dense.bias, probs.view(n, heads * q), vbd @ layer.h_dense.weight.T)
            w, b = layer.gate.weight, layer.gate.bias
            logits = torch.addmm(b, e_bar, w[:, :d].T).addmm_(new, w[:, d : 2 * d].T)
            if h is not None:
                logits.addmm_(h, w[:, 2 * d :].T)
            g = torch.sigmoid(logits)
            gated = g * new if h is None else torch.lerp(h, new, g)
            h = ffn(layer.h_ffn, layer.h_norm(gated))
            e = e_new
        e_mean = e if k == 1 else e.view(n, k, d).mean(1)
        if cfg.pooled_residual and cfg.mixing == "scalar":
            hq = state.pooled[0][None] + model.alpha * h
            ev = reps.pooled.to(torch.float32) + model.beta * e_mean
        elif cfg.pooled_residual:
            hq = state.pooled[0][None] + model.mix_query(h)
            ev = reps.pooled.to(torch.float32) + model.mix_candidate(e_mean)
        else:
            hq, ev = h, e_mean
        if cfg.similarity == "cosine":
            return F.cosine_similarity(hq, ev, dim=-1, eps=1e-8) * model.log_scale.exp()
        return (hq * ev).sum(-1)

    return score


if __name__ == "__main__":
    raise SystemExit(main())
