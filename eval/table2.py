"""The paper's Table 2 for one task: every system trained with the same budget, its quality,
its speedup over the cross-encoder and its store size, side by side; plus a PNG of quality
against speedup.

Usage (from the project root)::

    python eval/table2.py --task ubuntu          # Ubuntu-IRC (V2 layout), ~50 min on 2 CPU cores
    python eval/table2.py --task dl20            # MS MARCO DL20, 2-fold CV, BM25 top-50
    python eval/table2.py --task ubuntu --full   # the paper's settings, for a GPU (see below)
    python eval/table2.py --task ubuntu -- --lr 3e-5   # extra flags go to the experiment

What it does, in one process:

1. Quality: runs the task's experiment (:mod:`mixencoder.experiment`: ``ubuntu`` with
   ``--train-dir`` on the training file, or ``msmarco`` with ``--folds``) for ``bm25``,
   ``dual-zeroshot`` and every trainable system of :data:`SYSTEMS`. All of them are fresh from the same backbone
   and trained on the same examples in the same order, with the same step budget, batch size,
   learning rate, truncation and seed; each reranks through the product's ``Reranker`` from its
   own store. Trained models and stores are cached (``--cache``): a re-run only evaluates.
   ``virt`` is distilled from the ``cross`` model trained in the same run (the paper's VIRT).
2. Speed: per-query latency at N = 1000 candidates from ``eval/bench_speed.py`` (the same
   untrained architectures: speed does not depend on training), read from ``--speed-json`` or
   measured now (the benchmark runs as its own process) and written there. ``speedup`` is ``cross``'s median ms / the system's, both
   measured in that one benchmark run.
3. Output: a table (stdout and ``OUT/table2.md``), ``OUT/table2.json`` (``{system: {measure:
   value, "speedup_vs_cross", "ms_per_query_1000", "bytes_per_candidate"}}`` plus the paired
   differences) and ``OUT/table2.png`` (quality against speedup, log scale). The paired
   differences (mean over examples and its standard error) compare ``mixencoder-b`` with
   ``dual`` and with ``cross``, and every system with ``dual``.

CPU defaults (a 2-core machine, under an hour per task, most of it training): batch 16, S
strategy only, the learning rate of new parameters x20; Ubuntu: 60 steps per system, contexts
cut to their last 128 tokens, the first 500 validation examples (measured: 35.5 min for every
system, VIRT included, with 2 threads); DL20: BM25's top 50, 2 folds of 20
steps (its passages are 3x longer than Ubuntu's responses). These budgets are tiny next to the
paper's (BERT-base, batch 64, whole epochs): systems whose new parts start from scratch (the
cross-encoder's head, Poly-encoder codes, ColBERT's projection) are at a disadvantage against those that start as the backbone's own mean-pooled dual encoder
(dual, MixEncoder with its pooled residual). ``--full`` selects the paper's settings for a GPU:
``--backbone bert-base-uncased`` (network needed), batch 64, lr 1e-5, the whole training file,
the full validation set, 256/64 (Ubuntu) or 32/180 (DL20) tokens, one epoch (Ubuntu) or 5 folds
(DL20), plus ``mixencoder-a-C``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from mixencoder.experiment import cli
from mixencoder.data.corpus import atomic_write
from mixencoder.experiment.paper_table import (
    FULL_EXTRA, SYSTEMS, TASKS, build_table, experiment_argv, format_table, plot,
)
from mixencoder.experiment.results import write_json
from mixencoder.experiment.systems import REGISTRY_NAMES

logger = logging.getLogger("table2")


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--systems", nargs="+", default=None, help=f"trained systems (default: {' '.join(SYSTEMS)})")
    p.add_argument("--out", type=Path, default=None, help="output directory (default runs/table2-<task>)")
    p.add_argument("--cache", type=Path, default=Path("work/cache"))
    p.add_argument("--speed-json", type=Path, default=None,
                   help="eval/bench_speed.py output to read; measured now and written there if missing "
                   "(default OUT/speed.json)")
    p.add_argument("--speed-queries", type=int, default=10, help="timed queries per system when measuring speed")
    p.add_argument("--full", action="store_true", help="the paper's settings (a GPU and network access)")
    args = p.parse_args(argv)
    args.out = args.out or Path(f"runs/table2-{args.task}")
    args.speed_json = args.speed_json or args.out / "speed.json"
    if args.systems is None:
        args.systems = list(SYSTEMS) + (list(FULL_EXTRA) if args.full else [])
    unknown = sorted(set(args.systems) - set(REGISTRY_NAMES))
    if unknown:
        p.error(f"unknown systems {unknown}; known: {' '.join(REGISTRY_NAMES)}")
    return args, extra


def quality(args: argparse.Namespace, extra: Sequence[str]) -> tuple[dict, dict]:
    """Runs the task's experiment; returns its metrics and per-query values."""
    argv = experiment_argv(args.task, full=args.full, extra=extra, out=args.out, cache=args.cache,
                           systems=args.systems)
    logger.info("quality: mixencoder eval %s", " ".join(argv))
    experiment, parser = cli.parse_args(argv)
    results = cli.run(experiment, parser)
    return results.metrics, results.per_query


def speed(args: argparse.Namespace) -> dict[str, Any]:
    """bench_speed's JSON for the table's systems (measured now if ``--speed-json`` is absent)."""
    if not args.speed_json.is_file():
        argv = ["--systems", ",".join(args.systems), "--queries", str(args.speed_queries),
                "--json", str(args.speed_json)]
        logger.info("speed: python eval/bench_speed.py %s", " ".join(argv))
        subprocess.run([sys.executable, str(Path(__file__).with_name("bench_speed.py")), *argv], check=True)
    data = json.loads(args.speed_json.read_text())
    missing = [s for s in args.systems if s not in data.get("systems", {})]
    if missing:
        raise SystemExit(f"{args.speed_json} has no speed for {missing}; delete it to measure again")
    return data


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args, extra = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    task = TASKS[args.task]
    metrics, per_query = quality(args, extra)
    speed_data = speed(args)
    table = build_table(metrics, per_query, speed_data, args.systems, task["measures"], task["headline"])
    table["settings"] = {
        "task": args.task,
        "experiment_args": experiment_argv(args.task, full=args.full, extra=extra, out=args.out,
                                           cache=args.cache, systems=args.systems),
        "speed_json": str(args.speed_json),
        "gemm_gflops": speed_data.get("gemm_gflops"),
    }
    text = format_table(table, task["measures"])
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "table2.json", table)
    with atomic_write(args.out / "table2.md") as f:
        f.write(text + "\n")
    plot(table, args.out / "table2.png", f"Table 2 on {args.task} (quality: this run; speed: {args.speed_json.name})")
    print(f"outputs in {args.out}: table2.md, table2.json, table2.png")
    return table


if __name__ == "__main__":
    main()
