"""Response selection on the Ubuntu-IRC derived set in the DSTC7 track 1 (subtask 1) JSON layout.

Each dev example is a dialogue context with 100 candidate responses (one correct), scored with
``R@1``, ``R@10`` and ``RR``. Report the figures as "Ubuntu-IRC derived", never as the official
DSTC7 benchmark.

Usage (from the project root)::

    python eval/run_dstc7.py                                   # every default
    python eval/run_dstc7.py --hard-negatives 1                # add one file distractor per query
    python eval/run_dstc7.py --limit-train 500 --limit-eval 100 --budget 20steps \\
        --out runs/dstc7-quick                                 # a quick look

The same as ``mixencoder eval dstc7``; systems, protocol, options and outputs are those of
``eval/run_ubuntu.py``, except: ``bm25``'s term statistics come from the training file's distinct
candidates; ``--hard-negatives H`` adds H of each training example's own distractors per query.
"""

from __future__ import annotations

import sys
from typing import Sequence

from mixencoder.experiment.cli import main as eval_main


def main(argv: Sequence[str] | None = None) -> int:
    return eval_main(["dstc7", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
