"""Whether two candidate stores hold the same candidates, to a tolerance.

For example a single-process build against a Ray build of the same corpus with the same model:
shard boundaries, worker count and batch order may differ, the candidates may not. The stores'
default float16 rounds unit-scale values at ~1e-3, and a different batch composition changes
float32 sums in their last bits, so vectors are compared to an absolute tolerance.
"""

from __future__ import annotations

import math
from typing import Any

#: The default tolerance of :func:`same_candidates` (float16 storage plus batch-order noise).
DEFAULT_ATOL = 1e-2


def compare_stores(a: Any, b: Any, batch: int = 2048) -> dict[str, float]:
    """Counts, the docids only one store holds, and the largest absolute vector and pooled
    differences over every candidate of two :class:`~mixencoder.CandidateStore` objects.

    The differences are computed only when both stores hold the same docids; ``length_mismatch``
    counts candidates whose vector count differs (their vectors are then not compared).
    """
    ids_a = a.docids()
    only_in_one = len(set(ids_a) ^ set(b.docids()))
    out: dict[str, float] = {"candidates_a": len(a), "candidates_b": len(b), "only_in_one": only_in_one}
    if only_in_one:
        return out
    max_vec = max_pooled = 0.0
    length_mismatch = 0
    for start in range(0, len(ids_a), batch):
        ids = ids_a[start : start + batch]
        ra, rb = a.gather(ids), b.gather(ids)
        length_mismatch += int((ra.lengths != rb.lengths).sum())
        if ra.vectors.shape == rb.vectors.shape:
            max_vec = max(max_vec, float((ra.vectors - rb.vectors).abs().max()))
        if ra.pooled is not None and rb.pooled is not None:
            max_pooled = max(max_pooled, float((ra.pooled - rb.pooled).abs().max()))
    out.update(length_mismatch=length_mismatch, max_abs_vector_diff=max_vec, max_abs_pooled_diff=max_pooled)
    return out


def same_candidates(result: dict[str, float], atol: float = DEFAULT_ATOL) -> bool:
    """Whether a :func:`compare_stores` result says the stores agree within ``atol``."""
    return (
        result["only_in_one"] == 0
        and result.get("length_mismatch", 1) == 0
        and result.get("max_abs_vector_diff", math.inf) <= atol
        and result.get("max_abs_pooled_diff", math.inf) <= atol
    )
