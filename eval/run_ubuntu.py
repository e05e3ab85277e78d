"""Response selection on the Ubuntu-IRC derived set (Ubuntu Dialogue Corpus V2 CSV layout).

Each ``valid.csv`` example is a dialogue context with 10 candidate responses (the ground truth
and 9 random replies); systems rank the 10 and are scored with ir-measures ``R@1``, ``R@2``,
``R@5`` (one relevant candidate: R10@k) and ``RR``. Report the figures as "Ubuntu-IRC derived",
never as the official benchmark.

Usage (from the project root)::

    python eval/run_ubuntu.py                                  # every default below
    python eval/run_ubuntu.py --out runs/ubuntu-b --interaction-layers -3 -2 -1 --budget 12m
    python eval/run_ubuntu.py --model work/cache/train/ubuntu-mixencoder-.../final \\
        --systems mixencoder                                   # evaluate a saved model only
    python eval/run_ubuntu.py --limit-train 2000 --limit-eval 200 --budget 30steps \\
        --out runs/ubuntu-quick                                # a quick look
    python eval/run_ubuntu.py --folds 5                        # 5-fold CV on valid.csv itself

The same as ``mixencoder eval ubuntu`` (task adapter: :mod:`mixencoder.experiment.dialogue`).
Training: label-1 rows of ``train.csv`` (``--train-dir``, default ``--data-dir``) as (context,
response) pairs with in-batch negatives; ``--folds K`` cross-validates on ``valid.csv`` instead.
``bm25`` takes its term statistics from the training responses. Contexts are cut from the left
to ``--query-max-length`` (default 256) tokens, responses at ``--candidate-max-length`` (64).
Model defaults: ``k=1``, the pooled residual, one interaction layer, the last
(``--interaction-layers -1``; ``-3 -2 -1`` is the paper's MixEncoder-b), ``--lr 5e-5``, batch
16. ``--ablate-interaction`` adds each trained model with its interaction off (``S-pooled``).
"""

from __future__ import annotations

import sys
from typing import Sequence

from mixencoder.experiment.cli import main as eval_main


def main(argv: Sequence[str] | None = None) -> int:
    return eval_main(["ubuntu", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
