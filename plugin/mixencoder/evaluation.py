"""Evaluation with ir-measures: aggregate figures and paired per-query differences.

Measure keys are exactly ``str(measure)`` of ir-measures (``RR(rel=2)@10``, ``nDCG@10``,
``R@1``...), so a metrics file can be read back with ``ir_measures.parse_measure``.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def parse_measures(measures: Iterable[str | object]) -> list[object]:
    """ir-measures measure objects from strings such as ``"RR(rel=2)@10"``."""
    import ir_measures

    return [ir_measures.parse_measure(m) if isinstance(m, str) else m for m in measures]


def evaluate(run: Run, qrels: Qrels, measures: Sequence[str | object]) -> dict[str, float]:
    """Aggregate ``measures`` of ``run`` against ``qrels``: ``{str(measure): value}``.

    Queries of the qrels that the run lacks count as zero (ir-measures' default would skip
    them and flatter a run that drops hard queries).
    """
    per_query = evaluate_per_query(run, qrels, measures)
    return {m: (sum(v.values()) / len(v) if v else 0.0) for m, v in per_query.items()}


def evaluate_per_query(run: Run, qrels: Qrels, measures: Sequence[str | object]) -> dict[str, dict[str, float]]:
    """``{str(measure): {qid: value}}`` over every judged query (missing from run -> 0)."""
    import ir_measures

    parsed = parse_measures(measures)
    judged = [q for q, docs in qrels.items() if docs]
    out: dict[str, dict[str, float]] = {str(m): {q: 0.0 for q in judged} for m in parsed}
    run = {q: dict(d) for q, d in run.items() if q in qrels}
    qrels = {q: dict(d) for q, d in qrels.items()}
    for metric in ir_measures.iter_calc(parsed, qrels, run):
        if metric.query_id in out[str(metric.measure)]:
            out[str(metric.measure)][metric.query_id] = float(metric.value)
    return out


def paired_difference(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[float, float, int]:
    """Mean of per-query ``a - b`` over the queries both have, its standard error, and n.

    The standard error is the sample standard deviation of the differences over sqrt(n): the
    figure to judge whether a gap on few queries (DL20 has 54) is more than noise.
    """
    common = sorted(set(a) & set(b))
    n = len(common)
    if n == 0:
        raise ValueError("no common queries to compare")
    diffs = [a[q] - b[q] for q in common]
    mean = sum(diffs) / n
    if n == 1:
        return mean, float("nan"), n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return mean, math.sqrt(var / n), n
