"""Check that two candidate stores hold the same docids with the same vectors (to a tolerance).

    python pipelines/compare_stores.py work/vaswani-single work/vaswani-ray [--atol 1e-2]

For example a single-process build against a Ray build of the same corpus with the same model:
shard boundaries, worker count and batch order may differ, the candidates may not. Prints the
counts and the largest absolute differences; exits 1 when the docid sets differ, a candidate's
vector count differs, or a difference exceeds ``--atol`` (the stores' default float16 rounds
unit-scale values at ~1e-3; batch composition changes float32 sums in the last bits).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from mixencoder import CandidateStore


def compare(a: CandidateStore, b: CandidateStore, batch: int = 2048) -> dict[str, float]:
    """Docid sets and the largest absolute vector / pooled differences over every candidate."""
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--atol", type=float, default=1e-2)
    args = p.parse_args(argv)
    result = compare(CandidateStore.open(args.a), CandidateStore.open(args.b))
    for key, value in result.items():
        print(f"{key}: {value}")
    same = (
        result["only_in_one"] == 0
        and result.get("length_mismatch", 1) == 0
        and result.get("max_abs_vector_diff", np.inf) <= args.atol
        and result.get("max_abs_pooled_diff", np.inf) <= args.atol
    )
    print("SAME (within --atol)" if same else "DIFFERENT")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
