"""Paired comparison of two systems across eval outputs, averaged over training seeds.

Every ``eval/run_*.py`` writes ``OUT/per_query.json`` (``{system: {measure: {qid: value}}}``).
A difference between two trained systems has two kinds of noise: which examples were drawn
(the paired standard error over examples, which each script prints) and which training run
was drawn (seed: data order, dropout). This script measures both. Give one ``A`` and one
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
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Mapping, Sequence

from mixencoder.evaluation import paired_difference

PerQuery = Mapping[str, float]


def load_spec(spec: str, measure: str) -> PerQuery:
    """``DIR:SYSTEM`` -> that system's per-example values of ``measure``."""
    directory, sep, system = spec.rpartition(":")
    if not sep or not directory or not system:
        raise ValueError(f"expected DIR:SYSTEM, got {spec!r}")
    path = Path(directory) / "per_query.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (is {directory!r} an eval output directory?)")
    data = json.loads(path.read_text())
    if system not in data:
        raise KeyError(f"{path} has no system {system!r}; it has {sorted(data)}")
    if measure not in data[system]:
        raise KeyError(f"{path}: {system} has no measure {measure!r}; it has {sorted(data[system])}")
    return data[system][measure]


def seed_average(runs: Sequence[PerQuery]) -> dict[str, float]:
    """Per-example mean over runs, on the examples every run has."""
    common = set(runs[0]).intersection(*runs[1:])
    return {q: sum(r[q] for r in runs) / len(runs) for q in common}


def compare(a_specs: Sequence[str], b_specs: Sequence[str], measure: str) -> dict[str, object]:
    if len(a_specs) != len(b_specs) or not a_specs:
        raise ValueError("give as many --a specs as --b specs (one pair per seed), at least one")
    a_runs = [load_spec(s, measure) for s in a_specs]
    b_runs = [load_spec(s, measure) for s in b_specs]
    per_seed = []
    for a, b in zip(a_runs, b_runs):
        mean, se, n = paired_difference(a, b)
        per_seed.append({"mean": mean, "se": se, "n": n})
    means = [p["mean"] for p in per_seed]
    mean, se, n = paired_difference(seed_average(a_runs), seed_average(b_runs))
    return {
        "measure": measure,
        "per_seed": per_seed,
        "seed_sd": statistics.stdev(means) if len(means) > 1 else math.nan,
        "averaged": {"mean": mean, "se": se, "n": n},
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", nargs="+", required=True, metavar="DIR:SYSTEM", help="system A, one spec per seed")
    p.add_argument("--b", nargs="+", required=True, metavar="DIR:SYSTEM", help="system B, same seeds, same order")
    p.add_argument("--measure", nargs="+", default=["R@1"], help="measures (default R@1)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    try:
        results = [compare(args.a, args.b, m) for m in args.measure]
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        seeds = ", ".join(f"{d['mean']:+.4f} (SE {d['se']:.4f})" for d in r["per_seed"])
        avg = r["averaged"]
        print(f"{r['measure']}: A - B per seed: {seeds}; SD over seeds {r['seed_sd']:.4f}; "
              f"seed-averaged {avg['mean']:+.4f} (SE {avg['se']:.4f}, n={avg['n']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
