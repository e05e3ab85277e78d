"""Benchmark the rerank service's store endpoint against in-process ``Reranker.rerank``.

    python eval/bench_serve.py --requests 40 --clients 1 4 16 --candidates 100 1000 --out work/bench_serve

Starts the real server (``python -m mixencoder.cli serve`` under uvicorn on a free loopback
port) over a candidate store of Vaswani documents (the first ``--docs``, encoded by the bundled
all-MiniLM-L6-v2 MixEncoder unless ``--model``/``--store`` say otherwise; cached under
``--cache``), then for every candidate count (``--candidates``) and every number of concurrent
clients (``--clients``) sends ``--requests`` requests to ``POST /store/rerank``, each a Vaswani
query with that many docids drawn at random (seeded) from the store. Each client is a thread
with its own keep-alive ``httpx.Client``. Measured, and written to ``OUT/bench_serve.json`` and
``OUT/bench_serve.md``:

* throughput (requests per second of wall time), latency p50/p99, error count (non-200 or
  transport errors; must be 0), per (candidates, clients);
* the server's resident memory (``VmRSS`` of its process) before the first and after the last
  request;
* in-process ``Reranker.rerank`` p50 on the same requests in this process (the server idle),
  and the ratio of the 1-client HTTP p50 to it (the target is below 1.2 at 1000 candidates);
* whether the server's ranking equals the in-process one on the first request of each size.

Both sides use ``--threads`` torch threads (default 1: on a shared 2-core CPU more threads
spin-wait against each other and against the client threads).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import random
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("bench_serve")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=SHARED / "vaswani", help="Vaswani directory (doc-text.trec, query-text.trec)")
    p.add_argument("--model", default=None, help="saved model dir (default: bundled MiniLM MixEncoder)")
    p.add_argument("--store", type=Path, default=None, help="a store built by --model (default: build/reuse one under --cache)")
    p.add_argument("--docs", type=int, default=2000, help="documents in the built store (>= max --candidates)")
    p.add_argument("--cache", type=Path, default=Path("work/cache/bench_serve"))
    p.add_argument("--requests", type=int, default=40, help="requests per (candidates, clients) cell")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--candidates", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--warmup", type=int, default=3, help="untimed requests before each cell")
    p.add_argument("--threads", type=int, default=1, help="torch threads, server and in-process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("work/bench_serve"))
    return p


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _store(args: argparse.Namespace, model: Any) -> Path:
    from mixencoder import CandidateStore
    from mixencoder.data import read_corpus

    if args.store is not None:
        return args.store
    sha = model.candidate_fingerprint()["sha256"][:12]
    path = args.cache / f"vaswani-{args.docs}-{sha}"
    if (path / "manifest.json").is_file():
        logger.info("reusing store %s", path)
        return path
    docs = list(itertools.islice(read_corpus(args.data_dir / "doc-text.trec"), args.docs))
    start = time.perf_counter()
    CandidateStore.build(path, model, docs, batch_size=64, mode="overwrite")
    logger.info("built store of %d docs in %.1f s", len(docs), time.perf_counter() - start)
    return path


def _start_server(args: argparse.Namespace, store: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "mixencoder.cli", "serve", "--store", str(store), "--port", str(port),
        "--threads", str(args.threads), "--log-level", "warning", "--max-documents", str(max(args.candidates)),
    ]
    if args.model is not None:
        cmd += ["--model", str(args.model)]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server did not come up in 300 s: {log.read_text()[-2000:]}")


def _cell(base: str, requests: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    import httpx

    shards = [requests[i::clients] for i in range(clients)]

    def run(shard: list[dict[str, Any]]) -> tuple[list[float], int]:
        latencies, errors = [], 0
        with httpx.Client(base_url=base, timeout=120) as client:
            for body in shard:
                start = time.perf_counter()
                try:
                    ok = client.post("/store/rerank", json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok
        return latencies, errors

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(run, shards))
    wall = time.perf_counter() - start
    latencies = [x for lat, _ in results for x in lat]
    return {
        "clients": clients,
        "requests": len(requests),
        "throughput_rps": len(requests) / wall,
        "p50_ms": 1000 * _percentile(latencies, 50),
        "p99_ms": 1000 * _percentile(latencies, 99),
        "errors": sum(e for _, e in results),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import httpx
    import torch

    from mixencoder import CandidateStore, Reranker
    from mixencoder.data import read_topics
    from mixencoder.service import load_service_model

    torch.set_num_threads(args.threads)
    model = load_service_model(args.model)
    store_path = _store(args, model)
    store = CandidateStore.open(store_path)
    if max(args.candidates) > len(store):
        raise SystemExit(f"--candidates {max(args.candidates)} exceeds the store's {len(store)} documents (raise --docs)")
    reranker = Reranker(model, store)
    queries = list(read_topics(args.data_dir / "query-text.trec").values())
    docids = store.docids()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start_server(args, store_path, port, args.out / "server.log")
    rss_before = _rss_mb(proc.pid)
    cells, in_process, equal = [], {}, {}
    try:
        for n in args.candidates:
            requests = [
                {"query": queries[i % len(queries)], "docids": rng.sample(docids, n)}
                for i in range(args.requests + args.warmup)
            ]
            warm, timed = requests[: args.warmup], requests[args.warmup :]
            # In-process first, the server idle.
            for body in warm:
                reranker.rerank(body["query"], body["docids"])
            lat = []
            for body in timed:
                start = time.perf_counter()
                reranker.rerank(body["query"], body["docids"])
                lat.append(time.perf_counter() - start)
            in_process[n] = 1000 * _percentile(lat, 50)
            served = httpx.post(f"{base}/store/rerank", json=timed[0], timeout=120).json()["results"]
            equal[n] = [r["docid"] for r in served] == [r.docid for r in reranker.rerank(timed[0]["query"], timed[0]["docids"])]
            for clients in args.clients:
                _cell(base, warm, 1)
                cell = {"candidates": n, **_cell(base, timed, clients)}
                logger.info("%s", cell)
                cells.append(cell)
        rss_after = _rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    one_client = {c["candidates"]: c["p50_ms"] for c in cells if c["clients"] == 1}
    ratio = {n: one_client[n] / in_process[n] for n in one_client}
    result = {
        "cells": cells,
        "in_process_p50_ms": in_process,
        "http_over_in_process_p50": ratio,
        "results_equal_in_process": equal,
        "server_rss_mb": {"before": rss_before, "after": rss_after},
        "store_docs": len(store),
        "threads": args.threads,
        "loadavg": os.getloadavg(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    (args.out / "bench_serve.json").write_text(json.dumps(result, indent=2, default=str))
    lines = [
        "| candidates | clients | requests | throughput (req/s) | p50 (ms) | p99 (ms) | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {c['candidates']} | {c['clients']} | {c['requests']} | {c['throughput_rps']:.1f} | "
            f"{c['p50_ms']:.1f} | {c['p99_ms']:.1f} | {c['errors']} |"
            for c in cells
        ),
        "",
        "| candidates | in-process `Reranker.rerank` p50 (ms) | HTTP p50, 1 client (ms) | HTTP / in-process | same ranking |",
        "|---:|---:|---:|---:|:---:|",
        *(
            f"| {n} | {in_process[n]:.1f} | {one_client[n]:.1f} | {ratio[n]:.3f} | {'yes' if equal[n] else 'NO'} |"
            for n in args.candidates
        ),
        "",
        f"Server RSS: {rss_before:.0f} MB before the first request, {rss_after:.0f} MB after the last. "
        f"Store: {len(store)} Vaswani documents; torch threads: {args.threads}; load average at the end: "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
    ]
    (args.out / "bench_serve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(c["errors"] == 0 for c in cells) else 1


if __name__ == "__main__":
    raise SystemExit(main())
