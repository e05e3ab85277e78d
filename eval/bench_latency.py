"""What a user waits for: whole-query latency per stage, batch throughput, and peak memory.

    python eval/bench_latency.py --json work/bench_latency/latency.json

Everything runs on the Vaswani collection (``--data-dir``): a Pyserini BM25 index and a
candidate store built by the bundled all-MiniLM-L6-v2 MixEncoder, both cached under ``--cache``
(the first run builds them: a few minutes). Measured, printed as a table and written to
``--json`` (schema below):

* ``latency``: ``RerankingSearcher.search(q, k=10)`` at ``--depth`` over the Vaswani queries,
  each query's stages read from ``RerankingSearcher.last_timings`` (BM25 search, candidate
  gather, query encoding, scoring, fusion), ``{stage: {"p50": ms, "p90": ms}}``; ``total`` is
  the wall time of the whole call, ``other`` what the stages do not cover (hit objects,
  argument checks), ``total_cpu`` the process CPU time of the call (all threads, the JVM's
  included): on a loaded machine wall time also counts the waits for a core.
* ``throughput``: ``RerankingSearcher.batch_search`` over the first ``--throughput-queries``
  of them, queries/s (median of ``--repeats`` runs, the variants taking turns), for each
  ``threads`` in ``--threads`` (torch's intra-op threads are set to the same number; the first stage gets the same number
  of Java threads) and for ``rerank_batch`` 1 (one query per ``Reranker.rerank_many`` call)
  and ``--rerank-batch`` (several queries' candidates gathered in one store call);
  ``speedup`` is each against the first variant (``threads=1, rerank_batch=1``) in this run.
* ``memory``: peak resident memory (``VmHWM`` of a fresh child process,
  MB) of ``serve``: a Reranker over the 1M-row tiled store of ``eval/bench_store.py``
  (``--serve-store``; build it first) reranking ``--serve-queries`` DL20 queries of
  ``--depth`` random candidates each with the MiniLM k=1 model its vectors come from (peak
  after the first 10 queries and after all of them: a leak shows as growth; VmHWM counts the
  store pages the process has mapped, which belong to the page cache, so private memory,
  RssAnon, is reported beside it), and ``build``:
  ``CandidateStore.build`` of N documents for each N in ``--build-sizes`` (the Vaswani texts
  cycled under fresh docids, streamed from a generator), by default with a small random BERT
  (``--build-model tiny``: 3 layers, d=32, MiniLM's tokenizer) so that 100k documents build
  in minutes on two cores: the figure is the build's own memory, not a real backbone's
  activations; it must not grow with N.

JSON schema: ``{"machine": {...}, "setup": {...}, "latency": {"stages_ms": {stage: {"p50",
"p90"}}, "queries", "candidates_per_query"},
"throughput": [{"threads", "rerank_batch", "queries_per_s", "speedup"}],
"memory": {"serve": {"peak_rss_mb", "peak_rss_mb_after_10", ...}, "build": [{"docs",
"peak_rss_mb", "before_build_rss_mb", "docs_per_s", ...}]}}``.
``--parts`` picks some of the three (each is in the JSON only when measured). Measurements on a
shared machine are noisy: compare figures within one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mixencoder import CandidateStore, MixEncoder, Reranker, RerankingSearcher
from mixencoder.data import read_corpus, read_topics
from mixencoder.experiment.cache import fingerprint, store_cached
from mixencoder.first_stage import BM25Searcher, build_bm25_index

logger = logging.getLogger("bench_latency")

STAGES = ("first_stage", "gather", "encode_query", "score", "fusion")
PARTS = ("latency", "throughput", "memory")


def vaswani_setup(data_dir: Path, cache: Path) -> tuple[BM25Searcher, MixEncoder, CandidateStore, dict[str, str]]:
    """The BM25 index, the model, its store of the Vaswani corpus, and the title queries."""
    corpus = data_dir / "doc-text.trec"
    stat = corpus.stat()
    index = cache / "indexes" / f"vaswani-{fingerprint(str(corpus.resolve()), stat.st_size, stat.st_mtime_ns)}"
    if not index.is_dir():  # build_bm25_index moves a finished index into place atomically
        logger.info("building a BM25 index of %s at %s", corpus, index)
        build_bm25_index(corpus, index, threads=2, overwrite=True)
    model = MixEncoder.from_pretrained()
    texts = {doc.docid: doc.text for doc in read_corpus(corpus)}
    store = store_cached(model, texts, cache=cache, name="vaswani")
    queries = read_topics(data_dir / "query-text.trec", field="title")
    return BM25Searcher(index), model, store, queries


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True, help="where to write the results")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/vaswani"))
    p.add_argument("--cache", type=Path, default=Path("work/cache"), help="BM25 index and store cache")
    p.add_argument("--depth", type=int, default=1000, help="first-stage hits reranked per query")
    p.add_argument("--queries", type=int, default=None, help="use the first N Vaswani queries (default all 93)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts for throughput")
    p.add_argument("--rerank-batch", type=int, default=8, help="queries per rerank_many call, batched variant")
    p.add_argument("--repeats", type=int, default=3, help="batch_search runs per variant (median reported)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (default all)")
    p.add_argument("--throughput-queries", type=int, default=32, help="queries per batch_search run")
    p.add_argument("--serve-store", type=Path, default=Path("work/bench_store/store-1000000"))
    p.add_argument("--serve-queries", type=int, default=1000)
    p.add_argument("--build-sizes", type=int, nargs="+", default=[25_000, 100_000], help="docs per measured build")
    p.add_argument("--build-model", choices=["tiny", "minilm"], default="tiny")
    p.add_argument("--child", choices=["serve", "build"], help=argparse.SUPPRESS)  # one memory measurement
    p.add_argument("--child-size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.depth < 1 or args.rerank_batch < 1 or args.repeats < 1:
        p.error("--depth, --rerank-batch and --repeats must be >= 1")
    if min(args.build_sizes) < 1:
        p.error("--build-sizes must be >= 1")
    return args


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    ms = 1e3 * np.asarray(seconds, dtype=np.float64)
    return {"p50": round(float(np.percentile(ms, 50)), 2), "p90": round(float(np.percentile(ms, 90)), 2)}


def measure_latency(searcher: RerankingSearcher, queries: list[str]) -> dict[str, Any]:
    """Per-stage p50/p90 of ``searcher.search`` over ``queries``, one query at a time."""
    for q in queries[:3]:  # warm-up: first-use costs (JIT of the JVM, page cache) are not latency
        searcher.search(q, k=10)
    per_stage: dict[str, list[float]] = {s: [] for s in (*STAGES, "other", "total", "total_cpu")}
    candidates = []
    for q in queries:
        start, cpu = time.perf_counter(), time.process_time()
        searcher.search(q, k=10)
        total = time.perf_counter() - start
        per_stage["total_cpu"].append(time.process_time() - cpu)
        t = searcher.last_timings
        for stage in STAGES:
            per_stage[stage].append(t[stage])
        per_stage["other"].append(total - sum(t[s] for s in STAGES))
        per_stage["total"].append(total)
        candidates.append(min(searcher.depth, len(searcher.searcher.search(q, k=searcher.depth))))
    return {
        "stages_ms": {stage: percentiles(v) for stage, v in per_stage.items()},
        "queries": len(queries),
        "candidates_per_query": {"mean": round(float(np.mean(candidates)), 1), "min": int(min(candidates))},
    }


def measure_throughput(
    searcher: RerankingSearcher, queries: list[str], threads: Sequence[int], batch: int, repeats: int
) -> list[dict[str, Any]]:
    """queries/s of ``batch_search`` for each thread count, one and ``batch`` queries per rerank
    call. The variants take turns within each repeat, so a change in the machine's load hits
    them alike; the median over repeats is reported."""
    import torch

    qids = [str(i) for i in range(len(queries))]
    variants = [(n, per_call) for n in threads for per_call in sorted({1, batch})]
    seconds: dict[tuple[int, int], list[float]] = {v: [] for v in variants}
    stages: dict[tuple[int, int], dict[str, float]] = {}
    before = torch.get_num_threads()
    try:
        for repeat in range(repeats + 1):
            count = len(queries) if repeat else 4  # repeat 0 warms every variant up on a few queries
            for n, per_call in variants:
                torch.set_num_threads(n)
                searcher.queries_per_rerank = per_call
                start = time.perf_counter()
                searcher.batch_search(queries[:count], qids[:count], k=10, threads=n)
                if repeat:
                    seconds[n, per_call].append(time.perf_counter() - start)
                    stages[n, per_call] = searcher.last_timings
    finally:
        torch.set_num_threads(before)
    rows = [
        {
            "threads": n,
            "rerank_batch": per_call,
            "queries_per_s": round(len(queries) / float(np.median(seconds[n, per_call])), 2),
            "ms_per_query_by_stage": {s: round(1e3 * v / len(queries), 2) for s, v in stages[n, per_call].items()},
        }
        for n, per_call in variants
    ]
    base = rows[0]["queries_per_s"]
    for r in rows:
        r["speedup"] = round(r["queries_per_s"] / base, 3)
    return rows


# ---------------------------------------------------------------------- memory (child processes)


def memory_status() -> dict[str, float]:
    """This process's resident memory, MB, from /proc/self/status: peak (VmHWM) and current
    (VmRSS), the current split into private memory (RssAnon) and mapped file pages (RssFile:
    the store's memory maps, shared with the page cache and dropped under memory pressure)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                fields[key] = round(int(value.split()[0]) / 1024, 1)  # kB
    return fields


class TiledStoreModel:
    """The MiniLM k=1 model that the bench_store store's vectors come from, presenting that
    store's synthetic fingerprint so a Reranker serves it (the store refuses every real model
    on purpose; this bench only)."""

    def __init__(self, model: MixEncoder, fingerprint: dict[str, Any]):
        self._model = model
        self._fingerprint = fingerprint

    def candidate_fingerprint(self) -> dict[str, Any]:
        return self._fingerprint

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def child_serve(args: argparse.Namespace) -> dict[str, Any]:
    """Rerank ``--serve-queries`` queries of ``--depth`` random candidates from the 1M store."""
    import bench_store  # eval/ is sys.path[0] when this script runs

    from mixencoder.fusion import Fusion

    store = CandidateStore.open(args.serve_store)
    pids = [pid for pid, _ in bench_store.read_tsv(bench_store.COLLECTION)]  # as bench_store tiles them by default
    source = argparse.Namespace(pids=pids)
    queries = [q for _, q in bench_store.read_tsv(bench_store.QUERIES)]
    reranker = Reranker(TiledStoreModel(MixEncoder.from_pretrained(k=1), store.fingerprint), store, fusion=Fusion("none"))
    loaded = memory_status()
    rng = np.random.default_rng(0)
    samples = []  # memory_status() after every 10th query
    start = time.perf_counter()
    for i in range(args.serve_queries):
        rows = distinct_rows(rng, len(store), args.depth)
        reranker.rerank(queries[i % len(queries)], bench_store.docid_of(source, rows))
        if i % 10 == 9:
            samples.append(memory_status())
    seconds = time.perf_counter() - start
    return {
        "store_rows": len(store),
        "queries": args.serve_queries,
        "candidates_per_query": args.depth,
        "rss_mb_after_load": loaded["VmRSS"],
        "peak_rss_mb_after_10": samples[0]["VmHWM"],
        "peak_rss_mb": samples[-1]["VmHWM"],
        # Private memory is what serving costs; mapped store pages are the page cache's.
        "anon_mb_after_load": loaded["RssAnon"],
        "max_anon_mb_after_10": samples[0]["RssAnon"],
        "max_anon_mb": max(s["RssAnon"] for s in samples),
        "file_mb_at_end": samples[-1]["RssFile"],
        "ms_per_query": round(1e3 * seconds / args.serve_queries, 1),
    }


def distinct_rows(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``k`` distinct random rows of ``n`` (a candidate list has no duplicates), in random order."""
    rows = np.unique(rng.integers(0, n, k + k // 8))
    while len(rows) < k:
        rows = np.union1d(rows, rng.integers(0, n, k))
    return rng.permutation(rows)[:k]


def tiny_random_bert(cache: Path) -> Path:
    """A 3-layer d=32 BERT with random weights and MiniLM's tokenizer, saved once under ``cache``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mixencoder.models.backbone import default_backbone_path

    path = cache / "tiny-random-bert-seed0"
    if (path / "config.json").is_file():
        return path
    tokenizer = AutoTokenizer.from_pretrained(str(default_backbone_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=512,
    )
    torch.manual_seed(0)
    tmp = path.with_name(path.name + ".tmp")
    BertModel(config, add_pooling_layer=False).save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    os.replace(tmp, path)
    return path


def child_build(args: argparse.Namespace) -> dict[str, Any]:
    """``CandidateStore.build`` of ``--child-size`` documents streamed from the Vaswani texts."""
    import shutil

    texts = [doc.text for doc in read_corpus(args.data_dir / "doc-text.trec")]
    backbone = tiny_random_bert(args.cache) if args.build_model == "tiny" else None
    model = MixEncoder.from_pretrained(backbone)
    n = args.child_size

    def docs():  # a generator: the build must not need the corpus in memory
        for i in range(n):
            yield f"{i % len(texts)}-{i // len(texts)}", texts[i % len(texts)]

    path = args.cache / "memory-build" / f"{args.build_model}-{n}"
    if path.exists():
        shutil.rmtree(path)
    before = memory_status()
    start = time.perf_counter()
    store = CandidateStore.build(path, model, docs(), mode="overwrite", show_progress_bar=False)
    seconds = time.perf_counter() - start
    after = memory_status()
    result = {
        "docs": len(store),
        "model": args.build_model,
        "shards": len(store.manifest["shards"]),
        "before_build_rss_mb": before["VmRSS"],
        "peak_rss_mb": after["VmHWM"],
        "anon_mb_before": before["RssAnon"],
        "anon_mb_after": after["RssAnon"],
        "docs_per_s": round(n / seconds, 1),
    }
    shutil.rmtree(path)
    return result


def in_child(args: argparse.Namespace, what: str, size: int | None = None) -> dict[str, Any]:
    """Run one memory measurement in a fresh process (its peak is its own) and read its JSON."""
    cmd = [sys.executable, __file__, "--json", os.devnull, "--child", what, "--cache", str(args.cache),
           "--data-dir", str(args.data_dir), "--depth", str(args.depth), "--serve-store", str(args.serve_store),
           "--serve-queries", str(args.serve_queries), "--build-model", args.build_model]
    if size is not None:
        cmd += ["--child-size", str(size)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"memory measurement {what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- report


def table(result: dict[str, Any]) -> str:
    """The figures as aligned text."""
    lines = []
    if "latency" in result:
        lines += [f"whole-query latency, depth {result['setup']['depth']} ({result['latency']['queries']} Vaswani "
                  f"queries, {result['setup']['torch_threads']} torch thread)", f"  {'stage':<14}{'p50 ms':>10}{'p90 ms':>10}"]
        for stage, ms in result["latency"]["stages_ms"].items():
            lines.append(f"  {stage:<14}{ms['p50']:>10.2f}{ms['p90']:>10.2f}")
    if "throughput" in result:
        lines += ["batch_search throughput", f"  {'threads':<9}{'per call':>9}{'queries/s':>11}{'speed-up':>10}"]
        for r in result["throughput"]:
            lines.append(f"  {r['threads']:<9}{r['rerank_batch']:>9}{r['queries_per_s']:>11.2f}{r['speedup']:>10.3f}")
    memory = result.get("memory")
    if memory:
        serve = memory["serve"]
        lines += ["peak memory (VmHWM of a child process; private = RssAnon, sampled every 10 queries)",
                  f"  serve {serve['store_rows']:,} rows: peak {serve['peak_rss_mb_after_10']:.0f} MB after 10 queries, "
                  f"{serve['peak_rss_mb']:.0f} MB after {serve['queries']}; private {serve['max_anon_mb_after_10']:.0f} "
                  f"-> {serve['max_anon_mb']:.0f} MB ({serve['anon_mb_after_load']:.0f} MB after loading)"]
        for b in memory["build"]:
            lines.append(f"  build {b['docs']:>9,} docs ({b['model']}): {b['peak_rss_mb']:.0f} MB peak "
                         f"({b['before_build_rss_mb']:.0f} MB before the build), {b['docs_per_s']:.0f} docs/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if args.child:
        torch.set_num_threads(1)
        print(json.dumps(child_serve(args) if args.child == "serve" else child_build(args)))
        return 0
    torch.set_num_threads(1)
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), "torch": torch.__version__},
    }
    if "latency" in args.parts or "throughput" in args.parts:
        bm25, model, store, topics = vaswani_setup(args.data_dir, args.cache)
        queries = list(topics.values())[: args.queries]
        searcher = RerankingSearcher(bm25, Reranker(model, store), depth=args.depth)
        result["setup"] = {
            "collection": str(args.data_dir), "documents": len(store), "model": "all-MiniLM-L6-v2 MixEncoder",
            "k": model.config.k, "depth": args.depth, "fusion": str(searcher.reranker.fusion_in_use),
            "torch_threads": 1, "store_dtype": store.dtype,
        }
    if "latency" in args.parts:
        logger.info("latency over %d queries", len(queries))
        result["latency"] = measure_latency(searcher, queries)
    if "throughput" in args.parts:
        logger.info("throughput, threads %s", args.threads)
        result["throughput"] = measure_throughput(
            searcher, queries[: args.throughput_queries], args.threads, args.rerank_batch, args.repeats
        )
    if "memory" in args.parts:
        logger.info("memory: serving %s", args.serve_store)
        result["memory"] = {"serve": in_child(args, "serve"),
                            "build": [in_child(args, "build", n) for n in args.build_sizes]}
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_name(args.json.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.json)
    print(table(result))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
