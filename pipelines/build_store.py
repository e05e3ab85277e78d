"""Build a candidate store: encode a corpus offline with a model, write the store directory.

    python pipelines/build_store.py --corpus ../shared/data/vaswani/doc-text.trec \
        --out work/vaswani/store [--model DIR] [--mode create|overwrite|resume]

The corpus may be a Pyserini JsonCollection (file or directory), an MS MARCO collection.tsv or
TREC <DOC> files. An interrupted build continues with --mode resume.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from mixencoder import CandidateStore, MixEncoder
from mixencoder.data.corpus import read_corpus


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="store directory")
    p.add_argument("--model", default=None, help="saved MixEncoder dir or backbone (default: bundled MiniLM)")
    p.add_argument("--mode", choices=["create", "overwrite", "resume"], default="create")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=100_000)
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

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
        "count": len(store),
        "bytes_per_candidate": store.bytes_per_candidate(),
    }
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
