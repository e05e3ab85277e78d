"""An experiment's results: runs evaluated with ir-measures, per-query values, fused rows, paired
differences against a baseline, and the outputs every task writes.

``Results.frame(baseline=...)`` is the table as a pandas DataFrame, one row per system, one
column per measure (ir-measures names), plus ``<measure> diff`` and ``<measure> se`` (the paired
per-query difference against ``baseline`` and its standard error), like PyTerrier's
``pt.Experiment(..., baseline=)``.

Outputs (``write``): ``OUT/metrics.json`` (``{system: {measure: value}}``, measure keys are
``str(measure)`` of ir-measures, plus ``ms_per_query`` and ``store_bytes``),
``OUT/per_query.json`` (``{system: {measure: {qid: value}}}``), ``OUT/notes.json`` (settings,
training info, timings, paired differences) and ``OUT/runs/<system>.trec``.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..data import write_run
from ..data.corpus import atomic_write
from ..evaluation import evaluate_per_query, paired_difference
from ..fusion import Fusion, cross_fit_alphas, fit_fusion, fuse_folds

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]
PerQuery = Mapping[str, float]


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON at ``path``, written atomically (never seen half-written)."""
    with atomic_write(path) as f:
        f.write(json.dumps(data, indent=2, sort_keys=True, default=float))


@dataclass
class Results:
    """Collects systems' runs, evaluates them with ir-measures and writes the outputs."""

    out: Path
    qrels: Mapping[str, Mapping[str, int]]
    measures: Sequence[str]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    per_query: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)

    def add(self, system: str, run: Run, **extra: float) -> dict[str, float]:
        """Evaluate ``run`` as row ``system`` (``extra``: further columns, e.g. ``ms_per_query``)."""
        per_query = evaluate_per_query(run, self.qrels, self.measures)
        values = {m: sum(v.values()) / max(len(v), 1) for m, v in per_query.items()}
        values.update({k: float(v) for k, v in extra.items()})
        self.metrics[system] = values
        self.per_query[system] = per_query
        self.runs[system] = run
        (self.out / "runs").mkdir(parents=True, exist_ok=True)
        write_run(run, self.out / "runs" / f"{system}.trec", fmt="trec", tag=system)
        logger.info("%s: %s", system, {k: round(v, 4) for k, v in values.items()})
        return values

    def add_values(self, system: str, per_query: Mapping[str, PerQuery], **extra: float) -> None:
        """A row of per-query values computed elsewhere (e.g. classification accuracy)."""
        self.per_query[system] = {m: dict(v) for m, v in per_query.items()}
        values = {m: sum(v.values()) / max(len(v), 1) for m, v in per_query.items()}
        self.metrics[system] = {**values, **{k: float(v) for k, v in extra.items()}}

    def add_fused(
        self, first_stage: str, folds: Sequence[Sequence[str]], measure: str, *, rrf_k: float = 60.0
    ) -> list[tuple[str, str, str]]:
        """Each system fused with the ``first_stage`` system's run: ``S+bm25`` (per-query min-max
        interpolation, alpha cross-fitted: each fold's queries get the alpha that maximises
        ``measure`` on the other folds, so no query informs its own weight) and ``S+rrf``.

        ``ms_per_query`` of a fused system is the system's plus the measured fusion time.
        Returns the paired comparisons worth printing (each fused system against its unfused self
        and against the first stage).
        """
        first = self.runs[first_stage]
        comparisons: list[tuple[str, str, str]] = []
        fusion_notes: dict[str, Any] = {}
        for system in [s for s in list(self.runs) if s != first_stage and "+" not in s]:
            run = self.runs[system]
            start = time.perf_counter()
            alphas = cross_fit_alphas(run, first, self.qrels, folds, measure=measure)
            fit_s = time.perf_counter() - start
            start = time.perf_counter()  # the fusion alone, as a user pays it
            fused = fuse_folds(run, first, folds, alphas)
            fuse_ms = 1000 * (time.perf_counter() - start) / max(len(run), 1)
            rrf = Fusion("rrf", rrf_k=rrf_k)
            start = time.perf_counter()
            rrf_run = rrf.fuse_run(run, first)
            rrf_ms = 1000 * (time.perf_counter() - start) / max(len(run), 1)
            base_ms = self.metrics[system].get("ms_per_query")
            extra = {} if base_ms is None else {"ms_per_query": base_ms + fuse_ms}
            self.add(f"{system}+{first_stage}", fused, **extra)
            self.add(f"{system}+rrf", rrf_run, **({} if base_ms is None else {"ms_per_query": base_ms + rrf_ms}))
            # The whole alpha curve over every evaluated query: not used for any row (that would
            # fit on the evaluation queries), reported to choose a package default across tasks.
            _, curve = fit_fusion(run, first, self.qrels, list(run), measure=measure)
            fusion_notes[system] = {
                "alpha_per_fold": alphas, "fit_measure": measure, "fit_seconds": round(fit_s, 2),
                "curve_all_queries": curve,
                "fusion_ms_per_query": round(fuse_ms, 4), "rrf_ms_per_query": round(rrf_ms, 4), "rrf_k": rrf_k,
            }
            comparisons += [(f"{system}+{first_stage}", system, measure), (f"{system}+{first_stage}", first_stage, measure)]
        self.notes["fusion"] = {"first_stage": first_stage, "folds": [list(f) for f in folds], "systems": fusion_notes}
        return comparisons

    def paired(self, a: str, b: str, measure: str) -> dict[str, float]:
        """Paired per-query difference a - b of ``measure``, with its standard error."""
        mean, se, n = paired_difference(self.per_query[a][measure], self.per_query[b][measure])
        return {"mean": mean, "se": se, "n": n}

    def frame(self, baseline: str | None = None) -> Any:
        """The results as a pandas DataFrame (index: system; columns: the measures, then the
        extra columns); with ``baseline``, also ``<measure> diff`` / ``<measure> se``: each
        system's paired per-query difference from the baseline and its standard error."""
        import pandas as pd

        if baseline is not None and baseline not in self.metrics:
            raise KeyError(f"baseline {baseline!r} is not a system of these results: {sorted(self.metrics)}")
        columns = self._columns()
        frame = pd.DataFrame([[v.get(c, math.nan) for c in columns] for v in self.metrics.values()],
                             index=pd.Index(list(self.metrics), name="system"), columns=columns)
        if baseline is not None:
            for m in self.measures:
                diffs = [self.paired(s, baseline, m) if m in self.per_query[s] else None for s in self.metrics]
                frame[f"{m} diff"] = [math.nan if d is None else d["mean"] for d in diffs]
                frame[f"{m} se"] = [math.nan if d is None else d["se"] for d in diffs]
        return frame

    def write(self, comparisons: Iterable[tuple[str, str, str]] = ()) -> None:
        """Write the outputs and print the table and the paired differences of ``comparisons``."""
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "metrics.json", self.metrics)
        write_json(self.out / "per_query.json", self.per_query)
        diffs = {f"{a} - {b} [{m}]": self.paired(a, b, m)
                 for a, b, m in dict.fromkeys(comparisons) if a in self.metrics and b in self.metrics}
        write_json(self.out / "notes.json", {**self.notes, "paired_differences": diffs})
        print(self.table())
        for name, d in diffs.items():
            print(f"{name}: {d['mean']:+.4f} (paired SE {d['se']:.4f}, n={d['n']})")

    def _columns(self) -> list[str]:
        return list(self.measures) + sorted({k for v in self.metrics.values() for k in v} - set(self.measures))

    def table(self) -> str:
        columns = self._columns()
        width = max([len(s) for s in self.metrics] + [6])
        head = f"{'system':<{width}}  " + "  ".join(f"{c:>14}" for c in columns)
        lines = [head, "-" * len(head)]
        for system, values in self.metrics.items():
            cells = [f"{values[c]:>14.4f}" if c in values else f"{'-':>14}" for c in columns]
            lines.append(f"{system:<{width}}  " + "  ".join(cells))
        return "\n".join(lines)


# ---------------------------------------------------------------------- across training seeds


def load_per_query(spec: str, measure: str) -> PerQuery:
    """``DIR:SYSTEM`` -> that system's per-example values of ``measure`` from ``DIR/per_query.json``."""
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
    shared = set(runs[0]).intersection(*runs[1:])
    return {q: sum(r[q] for r in runs) / len(runs) for q in shared}


def compare_seeds(a_specs: Sequence[str], b_specs: Sequence[str], measure: str) -> dict[str, object]:
    """Paired differences A - B per training seed (``DIR:SYSTEM`` specs, one pair per seed), the
    spread of those means over seeds, and the difference of the seed-averaged per-example values."""
    if len(a_specs) != len(b_specs) or not a_specs:
        raise ValueError("give as many --a specs as --b specs (one pair per seed), at least one")
    a_runs = [load_per_query(s, measure) for s in a_specs]
    b_runs = [load_per_query(s, measure) for s in b_specs]
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
