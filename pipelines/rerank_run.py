"""Rerank a first-stage run file with a MixEncoder and its store (same flags as
``python -m mixencoder.rerank``), e.g.:

    python pipelines/rerank_run.py --run ../shared/data/msmarco/dl20/bm25.top100.trec \
        --topics ../shared/data/msmarco/dl20/queries.tsv --store work/dl20/store \
        --output work/dl20/mixencoder.trec
"""

from __future__ import annotations

from mixencoder.rerank import main

if __name__ == "__main__":
    raise SystemExit(main())
