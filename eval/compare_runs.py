"""Paired comparison of two systems across eval outputs, averaged over training seeds.

Every experiment (``mixencoder eval``, ``eval/run_*.py``) writes ``OUT/per_query.json`` (``{system: {measure: {qid: value}}}``).
A difference between two trained systems has two kinds of noise: which examples were drawn
(the paired standard error over examples, which each script prints) and which training run
was drawn (seed: data order, dropout). This script measures both
(:func:`mixencoder.experiment.results.compare_seeds`). Give one ``A`` and one
``B`` spec per seed; each spec is ``DIR:SYSTEM`` (``DIR`` an eval output directory):

    python eval/compare_runs.py --measure R@1 RR \\
        --a runs/u-seed42:mixencoder-b runs/u-seed43:mixencoder-b \\
        --b runs/u-seed42:dual runs/u-seed43:dual

It prints, per measure: each seed's paired difference ``A - B`` (mean, SE over examples), the
spread of those means across seeds, and the difference of the seed-averaged per-example
values with its SE over examples. The seeds' spread is the figure a claimed gap has to clear
as well; with two seeds it is a rough one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from mixencoder.experiment.results import compare_seeds, write_json


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", nargs="+", required=True, metavar="DIR:SYSTEM", help="system A, one spec per seed")
    p.add_argument("--b", nargs="+", required=True, metavar="DIR:SYSTEM", help="system B, same seeds, same order")
    p.add_argument("--measure", nargs="+", default=["R@1"], help="measures (default R@1)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    try:
        results = [compare_seeds(args.a, args.b, m) for m in args.measure]
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        seeds = ", ".join(f"{d['mean']:+.4f} (SE {d['se']:.4f})" for d in r["per_seed"])
        avg = r["averaged"]
        print(f"{r['measure']}: A - B per seed: {seeds}; SD over seeds {r['seed_sd']:.4f}; "
              f"seed-averaged {avg['mean']:+.4f} (SE {avg['se']:.4f}, n={avg['n']})")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
