"""The paper's Table 2 for one task: every system trained with the same budget, its quality,
its speedup over the cross-encoder and its store size, side by side; plus a PNG of quality
against speedup.

Usage (from the project root)::

    python eval/table2.py --task ubuntu          # Ubuntu-IRC (V2 layout), ~50 min on 2 CPU cores
    python eval/table2.py --task dl20            # MS MARCO DL20, 2-fold CV, BM25 top-50
    python eval/table2.py --task ubuntu --full   # the paper's settings, for a GPU (see below)
    python eval/table2.py --task ubuntu -- --lr 3e-5   # extra flags go to the task script

What it does, in one process:

1. Quality: runs the task's evaluation script (``eval/run_ubuntu.py`` with ``--train-dir`` on the
   training file, or ``eval/run_msmarco.py`` with ``--folds``) for ``bm25``, ``dual-zeroshot``
   and every trainable system of :data:`SYSTEMS`. All of them are fresh from the same backbone
   and trained on the same examples in the same order, with the same step budget, batch size,
   learning rate, truncation and seed; each reranks through the product's ``Reranker`` from its
   own store. Trained models and stores are cached (``--cache``): a re-run only evaluates.
   ``virt`` is distilled from the ``cross`` model trained in the same run (the paper's VIRT).
2. Speed: per-query latency at N = 1000 candidates from ``eval/bench_speed.py`` (the same
   untrained architectures: speed does not depend on training), read from ``--speed-json`` or
   measured now and written there. ``speedup`` is ``cross``'s median ms / the system's, both
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
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_speed  # noqa: E402
import common  # noqa: E402

from mixencoder.evaluation import paired_difference  # noqa: E402

logger = logging.getLogger("table2")

#: The paper's Table 2 rows, fastest-to-build first; all trained with the same budget.
SYSTEMS = (
    "dual", "poly-64", "poly-360", "colbert", "deformer", "virt",
    "mixencoder-a", "mixencoder-b", "mixencoder-c", "cross",
)
FULL_EXTRA = ("mixencoder-a-C",)

TASKS: dict[str, dict[str, Any]] = {
    "ubuntu": {
        "script": "run_ubuntu",
        "measures": ["R@1", "R@2", "R@5", "RR"],
        "headline": "R@1",
        "cpu": ["--train-dir", "../shared/data/ubuntu/v2", "--limit-eval", "500", "--query-max-length", "128",
                "--budget", "60steps", "--new-params-lr-scale", "20"],
        "full": ["--train-dir", "../shared/data/ubuntu/v2", "--backbone", "bert-base-uncased", "--batch-size", "64",
                 "--lr", "1e-5", "--query-max-length", "256", "--candidate-max-length", "64",
                 "--budget", "100000steps", "--new-params-lr-scale", "20"],
    },
    "dl20": {
        "script": "run_msmarco",
        "measures": ["RR(rel=2)@10", "nDCG@10", "R(rel=2)@1"],
        "headline": "nDCG@10",
        "cpu": ["--folds", "2", "--depth", "50", "--budget", "40steps", "--new-params-lr-scale", "20"],
        "full": ["--folds", "5", "--depth", "1000", "--backbone", "bert-base-uncased", "--batch-size", "64",
                 "--lr", "1e-5", "--budget", "5000steps", "--new-params-lr-scale", "20"],
    },
}


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
    unknown = sorted(set(args.systems) - set(common.BASELINE_SYSTEMS))
    if unknown:
        p.error(f"unknown systems {unknown}; known: {' '.join(common.BASELINE_SYSTEMS)}")
    return args, extra


def quality(args: argparse.Namespace, extra: Sequence[str]) -> tuple[dict, dict]:
    """Runs the task script; returns its metrics and per-query values."""
    task = TASKS[args.task]
    script = __import__(task["script"])
    argv = [*task["full" if args.full else "cpu"], *extra, "--out", str(args.out), "--cache", str(args.cache),
            "--systems", "bm25", "dual-zeroshot", *args.systems]
    logger.info("quality: python eval/%s.py %s", task["script"], " ".join(argv))
    script.main(argv)
    metrics = json.loads((args.out / "metrics.json").read_text())
    per_query = json.loads((args.out / "per_query.json").read_text())
    return metrics, per_query


def speed(args: argparse.Namespace) -> dict[str, Any]:
    """bench_speed's JSON for the table's systems (measured now if ``--speed-json`` is absent)."""
    if not args.speed_json.is_file():
        systems = ",".join(s for s in args.systems)
        argv = ["--systems", systems, "--queries", str(args.speed_queries), "--json", str(args.speed_json)]
        logger.info("speed: python eval/bench_speed.py %s", " ".join(argv))
        bench_speed.main(argv)
    data = json.loads(args.speed_json.read_text())
    missing = [s for s in args.systems if s not in data.get("systems", {})]
    if missing:
        raise SystemExit(f"{args.speed_json} has no speed for {missing}; delete it to measure again")
    return data


def build_table(
    metrics: Mapping[str, Mapping[str, float]],
    per_query: Mapping[str, Mapping[str, Mapping[str, float]]],
    speed_data: Mapping[str, Any],
    systems: Sequence[str],
    measures: Sequence[str],
    headline: str,
) -> dict[str, Any]:
    """Rows (quality + speed + size) and paired differences on the headline measure."""
    rows: dict[str, dict[str, float]] = {}
    bench = speed_data.get("systems", {})
    for system in ["bm25", "dual-zeroshot", *systems]:
        if system not in metrics:
            continue
        row = {m: metrics[system][m] for m in measures if m in metrics[system]}
        if system in bench:
            row["speedup_vs_cross"] = bench[system]["1000"]["speedup_vs_cross"]
            row["ms_per_query_1000"] = bench[system]["1000"]["ms_per_query"]
            row["bytes_per_candidate"] = bench[system]["bytes_per_candidate"]
        if "store_bytes" in metrics[system]:
            row["task_store_bytes"] = metrics[system]["store_bytes"]
        rows[system] = row
    pairs = [("mixencoder-b", "dual"), ("mixencoder-b", "cross"), ("cross", "dual")]
    pairs += [(s, "dual") for s in systems if s not in ("dual", "mixencoder-b", "cross")]
    pairs += [(s, "dual-zeroshot") for s in systems]
    diffs = {}
    for a, b in pairs:
        if a in per_query and b in per_query and headline in per_query[a]:
            mean, se, n = paired_difference(per_query[a][headline], per_query[b][headline])
            diffs[f"{a} - {b} [{headline}]"] = {"mean": mean, "se": se, "n": n}
    return {"rows": rows, "paired_differences": diffs, "headline": headline}


def format_table(table: Mapping[str, Any], measures: Sequence[str]) -> str:
    columns = [*measures, "speedup_vs_cross", "ms_per_query_1000", "bytes_per_candidate"]
    head = f"| {'system':<14} | " + " | ".join(f"{c:>17}" for c in columns) + " |"
    lines = [head, "|" + "-" * 16 + "|" + "|".join("-" * 19 for _ in columns) + "|"]
    for system, row in table["rows"].items():
        cells = []
        for c in columns:
            v = row.get(c)
            if v is None:
                cells.append(f"{'-':>17}")
            elif c == "speedup_vs_cross":
                cells.append(f"{v:>16.1f}x")
            elif c in ("ms_per_query_1000", "bytes_per_candidate"):
                cells.append(f"{v:>17,.0f}")
            else:
                cells.append(f"{v:>17.4f}")
        lines.append(f"| {system:<14} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, d in table["paired_differences"].items():
        lines.append(f"- {name}: {d['mean']:+.4f} (paired SE {d['se']:.4f}, n={d['n']})")
    return "\n".join(lines)


def plot(table: Mapping[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    headline = table["headline"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system, row in table["rows"].items():
        if "speedup_vs_cross" not in row or headline not in row:
            continue
        ax.scatter(row["speedup_vs_cross"], row[headline], color="C3" if system.startswith("mixencoder") else "C0")
        ax.annotate(system, (row["speedup_vs_cross"], row[headline]), textcoords="offset points", xytext=(4, 3),
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("speedup over cross at 1000 candidates (log scale, measured on this machine)")
    ax.set_ylabel(headline)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args, extra = parse_args(argv)
    common.setup_logging()
    task = TASKS[args.task]
    metrics, per_query = quality(args, extra)
    speed_data = speed(args)
    table = build_table(metrics, per_query, speed_data, args.systems, task["measures"], task["headline"])
    table["settings"] = {
        "task": args.task,
        "script_args": [*task["full" if args.full else "cpu"], *extra],
        "speed_json": str(args.speed_json),
        "gemm_gflops": speed_data.get("gemm_gflops"),
    }
    text = format_table(table, task["measures"])
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    common._write_json(args.out / "table2.json", table)
    (args.out / "table2.md").write_text(text + "\n")
    plot(table, args.out / "table2.png", f"Table 2 on {args.task} (quality: this run; speed: {args.speed_json.name})")
    print(f"outputs in {args.out}: table2.md, table2.json, table2.png")
    return table


if __name__ == "__main__":
    main()
