"""TREC-style ad-hoc reranking (Vaswani by default): BM25, dual encoder, MixEncoder.

Usage (from the project root)::

    python eval/run_trec.py                                    # Vaswani, 5-fold CV, every default
    python eval/run_trec.py --depth 1000 --budget 20m          # deeper candidates, more training
    python eval/run_trec.py --model work/my-mixencoder         # evaluate a saved model
    python eval/run_trec.py --limit-queries 6 --depth 20 --folds 2 --budget 3steps \\
        --out runs/vaswani-quick                               # a quick look

The same as ``mixencoder eval trec``. Data (``--data-dir``): a corpus any format
:func:`mixencoder.data.read_corpus` reads (``--corpus``), TREC topics (``--topics``,
``--topic-field``) and qrels (``--qrels``). First stage: BM25 (k1=0.9, b=0.4) over a cached
Pyserini index of the whole corpus, top ``--depth`` (default 100). Systems, CV, budget and
outputs are those of ``eval/run_msmarco.py``; there is no ``--train-dir`` (no standard training
set: train elsewhere and pass ``--model``). Training positives: every judged-relevant document;
hard negatives (default ``unjudged``): the best-ranked BM25 candidates not judged relevant.
Measures: ``nDCG@10``, ``RR@10``, ``AP`` (over the candidates) and ``R@<depth>``.
"""

from __future__ import annotations

import sys
from typing import Sequence

from mixencoder.experiment.cli import main as eval_main


def main(argv: Sequence[str] | None = None) -> int:
    return eval_main(["trec", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
