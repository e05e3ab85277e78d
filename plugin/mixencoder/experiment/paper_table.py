"""The paper's Table 2 for one task: the systems, the experiment settings that train them alike,
and the table (quality, speedup over the cross-encoder, store size; paired differences on the
headline measure) with its quality-against-speedup plot. ``eval/table2.py`` runs it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..evaluation import paired_difference

#: The paper's Table 2 rows, fastest-to-build first; all trained with the same budget.
SYSTEMS = (
    "dual", "poly-64", "poly-360", "colbert", "deformer", "virt",
    "mixencoder-a", "mixencoder-b", "mixencoder-c", "cross",
)
FULL_EXTRA = ("mixencoder-a-C",)

TASKS: dict[str, dict[str, Any]] = {
    "ubuntu": {
        "task": "ubuntu",
        "measures": ["R@1", "R@2", "R@5", "RR"],
        "headline": "R@1",
        "cpu": ["--train-dir", "../shared/data/ubuntu/v2", "--limit-eval", "500", "--query-max-length", "128",
                "--budget", "60steps", "--new-params-lr-scale", "20"],
        "full": ["--train-dir", "../shared/data/ubuntu/v2", "--backbone", "bert-base-uncased", "--batch-size", "64",
                 "--lr", "1e-5", "--query-max-length", "256", "--candidate-max-length", "64",
                 "--budget", "100000steps", "--new-params-lr-scale", "20"],
    },
    "dl20": {
        "task": "msmarco",
        "measures": ["RR(rel=2)@10", "nDCG@10", "R(rel=2)@1"],
        "headline": "nDCG@10",
        "cpu": ["--folds", "2", "--depth", "50", "--budget", "40steps", "--new-params-lr-scale", "20"],
        "full": ["--folds", "5", "--depth", "1000", "--backbone", "bert-base-uncased", "--batch-size", "64",
                 "--lr", "1e-5", "--budget", "5000steps", "--new-params-lr-scale", "20"],
    },
}


def experiment_argv(
    task: str, *, full: bool, extra: Sequence[str], out: Path, cache: Path, systems: Sequence[str]
) -> list[str]:
    """The ``mixencoder eval`` command line of the quality half: the task's settings, then ``extra``
    (the user's, so they win), then the outputs and the systems (``bm25``, ``dual-zeroshot`` and ``systems``)."""
    settings = TASKS[task]
    return [settings["task"], *settings["full" if full else "cpu"], *extra, "--out", str(out),
            "--cache", str(cache), "--systems", "bm25", "dual-zeroshot", *systems]


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
