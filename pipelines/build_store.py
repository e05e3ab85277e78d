"""Build a candidate store: encode a corpus offline with a model, write the store directory.

    python pipelines/build_store.py --corpus ../shared/data/vaswani/doc-text.trec \
        --out work/vaswani/store [--model DIR] [--mode create|overwrite|resume]
    python pipelines/build_store.py ... --ray --workers 2          # local Ray, 2 model actors
    python pipelines/build_store.py ... --ray auto --workers 8     # an existing Ray cluster

The corpus may be a Pyserini JsonCollection (file or directory), an MS MARCO collection.tsv or
TREC <DOC> files. An interrupted build continues with --mode resume (with or without --ray: both
builders write the same shards, so either can finish the other's build).

With --ray the documents are encoded by a pool of --workers model actors on Ray Data (one GPU
each where the cluster has GPUs); without ADDRESS a local Ray instance with --workers CPUs is
started and stopped by the job.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from mixencoder import CandidateStore, MixEncoder
from mixencoder.data.corpus import read_corpus

LOCAL_RAY = "local"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="store directory")
    p.add_argument("--model", default=None, help="saved MixEncoder dir or backbone (default: bundled MiniLM)")
    p.add_argument("--mode", choices=["create", "overwrite", "resume"], default="create")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=10_000)
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument(
        "--ray", nargs="?", const=LOCAL_RAY, default=None, metavar="ADDRESS",
        help="encode on Ray Data: a local instance, or the cluster at ADDRESS (e.g. auto)",
    )
    p.add_argument("--workers", type=int, default=2, help="model actors with --ray (default 2)")
    p.add_argument("--block-size", type=int, default=512, help="documents per Ray Data block")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.ray is not None:
        from mixencoder.store.distributed import build_store_distributed

        store = build_store_distributed(
            args.out,
            args.model,
            args.corpus,
            workers=args.workers,
            address=None if args.ray == LOCAL_RAY else args.ray,
            batch_size=args.batch_size,
            block_size=args.block_size,
            shard_size=args.shard_size,
            dtype=args.dtype,
            mode=args.mode,
        )
    else:
        model = MixEncoder.from_pretrained(args.model)
        store = CandidateStore.build(
            args.out,
            model,
            read_corpus(args.corpus),
            batch_size=args.batch_size,
            mode=args.mode,
            shard_size=args.shard_size,
            dtype=args.dtype,
        )
    stats = {
        **store.last_build_stats,
        "builder": "ray" if args.ray is not None else "single-process",
        "count": len(store),
        "bytes_per_candidate": store.bytes_per_candidate(),
    }
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
