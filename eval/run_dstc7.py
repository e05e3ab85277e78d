"""Response selection on the Ubuntu-IRC derived set in the DSTC7 track 1 (subtask 1) JSON layout.

Each dev example is a dialogue context with 100 candidate responses (one correct); systems rank
the 100 and are scored with ir-measures: ``R@1``, ``R@10`` and ``RR``. Report the figures as
"Ubuntu-IRC derived", never as the official DSTC7 benchmark.

Usage (from the project root)::

    python eval/run_dstc7.py                                   # every default below
    python eval/run_dstc7.py --out runs/dstc7 --budget 12m --lr 5e-5
    python eval/run_dstc7.py --hard-negatives 1                # add one file distractor per query
    python eval/run_dstc7.py --model work/cache/train/dstc7-mixencoder-.../final \\
        --systems mixencoder                                   # evaluate a saved model only
    python eval/run_dstc7.py --limit-train 500 --limit-eval 100 --budget 20steps \\
        --out runs/dstc7-quick                                 # a quick look

Data: ``--data-dir`` (default ``../shared/data/ubuntu/dstc7``) holds ``ubuntu_dev_subtask_1.json``
(``--eval-file``); ``--train-dir`` (default: the same directory) holds
``ubuntu_train_subtask_1.json`` (``--train-file``, 3,000 examples). Without ``--train-dir``,
``--folds K`` runs query-level K-fold cross-validation on the dev file instead.

Systems, protocol, options and outputs are those of ``eval/run_ubuntu.py`` (see its docstring),
with these differences:

* ``bm25`` takes its term statistics from the distinct candidate texts (``options-for-next``)
  of the training file;
* ``mixencoder`` trains on each training example's correct answer with in-batch negatives;
  ``--hard-negatives H`` adds H of the example's own distractors per query (default 0: the
  distractors are random replies of the split, no harder than in-batch negatives);
* the 202,400 dev candidates are 1,942 distinct texts, so the (deduplicated) stores are small
  and every example's 100 candidates are reranked in full.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see eval/run_ubuntu.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import setup_logging  # noqa: E402
from run_ubuntu import (  # noqa: E402
    COMPARISONS, add_dialogue_args, matching_examples_from, resolve_path, run_response_selection,
)

from mixencoder.data import read_dstc7  # noqa: E402
from mixencoder.training import MatchingExample  # noqa: E402

logger = logging.getLogger("eval")

DSTC7_MEASURES = ("R@1", "R@10", "RR")


def load_dstc7_train(path: Path, limit: int | None, hard_negatives: int) -> tuple[list[MatchingExample], list[str]]:
    """Each training example's correct answer(s) as training pairs, and the distinct candidate
    texts of the file as BM25's collection; only the first ``limit`` examples when given."""
    examples = []
    for ex in read_dstc7(path):
        if limit is not None and len(examples) >= limit:
            break
        examples.append(ex)
    collection = sorted({t for ex in examples for t in ex.candidates})
    pairs = matching_examples_from(examples, hard_negatives)
    logger.info("%s: %d examples, %d training pairs, %d distinct candidates", path, len(examples), len(pairs), len(collection))
    return pairs, collection


def main(argv: list[str] | None = None) -> int:
    p = common.parser(
        __doc__.split("\n\n")[0], data_dir="../shared/data/ubuntu/dstc7", out="runs/dstc7", budget="10m"
    )
    add_dialogue_args(
        p,
        eval_file="ubuntu_dev_subtask_1.json",
        train_file="ubuntu_train_subtask_1.json",
        lr=5e-5,
        layers=(-1,),
        est_step_seconds=5.0,
    )
    p.set_defaults(docid_salt="dstc7-irc-eval")
    args = p.parse_args(argv)
    setup_logging()
    if args.folds >= 2 and args.train_dir is not None:
        p.error("give either --train-dir or --folds K, not both")
    train_dir = args.train_dir or args.data_dir
    examples = []
    for ex in read_dstc7(resolve_path(args.data_dir, args.eval_file)):
        if args.limit_eval is not None and len(examples) >= args.limit_eval:
            break
        examples.append(ex)
    run_response_selection(
        args,
        task="dstc7",
        eval_examples=examples,
        load_train=lambda: load_dstc7_train(
            resolve_path(train_dir, args.train_file), args.limit_train, args.hard_negatives
        ),
        measures=DSTC7_MEASURES,
        comparisons=COMPARISONS,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
