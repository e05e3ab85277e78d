"""MNLI pair classification (entailment / neutral / contradiction) with MixEncoder's classifier head.

Usage (from the project root)::

    python eval/run_mnli.py                                    # 5 folds, 10m budget in total
    python eval/run_mnli.py --folds 10 --budget 20m --lr 1e-4 --out runs/mnli-10fold
    python eval/run_mnli.py --train-dir ../data/multinli_1.0 \\
        --train-file multinli_1.0_train.jsonl --limit-train 50000   # train once, evaluate all
    python eval/run_mnli.py --limit-eval 100 --folds 2 --budget 10steps --out runs/mnli-quick

The same as ``mixencoder eval mnli`` (:mod:`mixencoder.experiment.nli`). The data
(``dev_matched_sample.jsonl``: 1,000 MNLI dev-matched pairs, the ChaosNLI subset) is split into
``--folds K`` pair-level folds; each fold's MixEncoder (premise as query, hypothesis as
candidate) trains on the others and predicts its own pairs. Systems: ``majority-class`` and
``mixencoder``. Measure: ``accuracy``; predictions go to ``OUT/predictions/<system>.tsv``.
"""

from __future__ import annotations

import sys
from typing import Sequence

from mixencoder.experiment.cli import main as eval_main


def main(argv: Sequence[str] | None = None) -> int:
    return eval_main(["mnli", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
