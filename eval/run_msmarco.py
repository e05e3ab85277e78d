"""MS MARCO passage reranking (TREC DL 2020 by default): BM25, dual encoder, MixEncoder.

Usage (from the project root)::

    python eval/run_msmarco.py                                 # DL20, 5-fold CV, every default
    python eval/run_msmarco.py --out runs/dl20-both --negatives both --lr 3e-5
    python eval/run_msmarco.py --train-dir ~/msmarco           # train on MS MARCO triples
    python eval/run_msmarco.py --train-dir ../shared/data/msmarco/dl19  # train on another judged set
    python eval/run_msmarco.py --model work/my-mixencoder      # evaluate a saved model
    python eval/run_msmarco.py --limit-queries 6 --depth 20 --folds 2 --budget 3steps \\
        --out runs/dl20-quick                                  # a quick look

The same as ``mixencoder eval msmarco``. Data (``--data-dir``): a judged folder,
``collection.tsv`` (``pid<TAB>passage``), ``queries*.tsv``, ``qrels*`` and optionally a
first-stage run, which **is** the first stage (``bm25`` in the table); without one, Pyserini
BM25 (k1=0.82, b=0.68) over the collection retrieves the top ``--depth``
(:func:`mixencoder.experiment.ir.load_judged_folder`). Evaluated: the judged queries with a text
and a ranking (DL20: 54); ``--limit-queries N`` keeps the first N.

Systems (``--systems``): ``bm25``, ``dual-zeroshot`` (mean-pooled cosine of the backbone),
``mixencoder-zeroshot`` (a fresh MixEncoder: its mixing starts at 0, so it scores like the dual:
a pipeline check), ``mixencoder`` (trained, or ``--model``), any registry system (``dual``,
``cross``, ``poly-64``, ``virt``, ``mixencoder-b``, ...) trained the same way, the frozen-store
systems (``dual-frozen``, ``mixencoder-frozen``, ``mixencoder-frozen-fusionloss``, with
``--folds``), and ``S+bm25`` / ``S+rrf`` fused rows beside each (``--no-fusion`` leaves them out).

Training: without ``--train-dir``, ``--folds K`` query-level CV (a model per fold, trained on the
other folds' judged pairs: positives grade >= 2, or ``--min-grade``; hard negatives from the
run per ``--negatives``, at most ``--max-negatives`` per query, ``--hard-negatives`` per step).
With ``--train-dir``: MS MARCO triples (the first ``--train-limit``), or another judged folder
trained exactly like the folds; one model evaluated on every query. The learning rate of new
parameters is ``--lr`` x ``--new-params-lr-scale`` (default 20 here).

Measures: ``RR(rel=2)@10``, ``nDCG@10``, ``R(rel=2)@1``, ``R(rel=2)@1000`` (rel=1 forms on binary
qrels), ``ms_per_query`` and ``store_bytes``. With 54 queries a gap under about two paired
standard errors is noise.
"""

from __future__ import annotations

import sys
from typing import Sequence

from mixencoder.experiment.cli import main as eval_main


def main(argv: Sequence[str] | None = None) -> int:
    return eval_main(["msmarco", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
