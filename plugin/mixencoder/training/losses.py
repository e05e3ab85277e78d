"""Training losses: in-batch negatives for matching, grouped cross-entropy for models that score
a query only against its own candidates, and cross-entropy for pair classification.

Shapes: ``B`` queries per batch and ``h`` hard negatives per query. The matching score matrix is
``(B, B + B*h)``: columns ``0..B-1`` are the B positives in query order, followed by every
query's h hard negatives (query 0's first, then query 1's, ...). Query i's target is column i.

No temperature here: cosine scores already carry the model's scale (``config.scale``), and dot
scores are unbounded, so both go straight into the softmax.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import torch
import torch.nn.functional as F


def same_query_mask(
    num_candidates: int,
    query_ids: Sequence[Hashable | None] | None = None,
    positive_ids: Sequence[Hashable | None] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Which columns must not count as negatives for each query.

    Column ``j < B`` is masked for query ``i != j`` when the two examples share a query id (they
    are two relevant candidates of one query) or a positive id (the same candidate is relevant to
    both). A query's own target column and the hard-negative columns are never masked. ``None``
    ids never match anything.

    Args:
        num_candidates: the number of columns, ``B + B*h``.
        query_ids: length-``B`` ids, or ``None`` for no query-id masking.
        positive_ids: length-``B`` ids, or ``None`` for no positive-id masking.
        device: where to build the mask.

    Returns:
        ``(B, num_candidates)`` bool, True where the score is to be ignored.
    """
    lengths = {len(ids) for ids in (query_ids, positive_ids) if ids is not None}
    if len(lengths) > 1:
        raise ValueError(f"query_ids and positive_ids differ in length: {sorted(lengths)}")
    if not lengths:
        raise ValueError("same_query_mask needs query_ids or positive_ids")
    b = lengths.pop()
    if num_candidates < b:
        raise ValueError(f"{num_candidates} candidate columns cannot hold {b} positives")
    same = torch.zeros(b, b, dtype=torch.bool)
    for ids in (query_ids, positive_ids):
        if ids is None:
            continue
        for i in range(b):
            if ids[i] is None:
                continue
            for j in range(b):
                if i != j and ids[j] is not None and ids[i] == ids[j]:
                    same[i, j] = True
    mask = torch.zeros(b, num_candidates, dtype=torch.bool)
    mask[:, :b] = same
    return mask.to(device) if device is not None else mask


def in_batch_negatives_loss(
    scores: torch.Tensor,
    query_ids: Sequence[Hashable | None] | None = None,
    positive_ids: Sequence[Hashable | None] | None = None,
    *,
    mask: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of each query's positive against every other candidate in the batch.

    Args:
        scores: ``(B, B + B*h)`` scores, positives first (column i is query i's positive).
        query_ids: optional length-``B`` ids; see :func:`same_query_mask`.
        positive_ids: optional length-``B`` ids; see :func:`same_query_mask`.
        mask: a precomputed ``(B, B + B*h)`` bool mask (True: ignore) instead of the ids.
        targets: ``(rows,)`` target column of each row, for a row slice of a larger score
            matrix (data-parallel training scores a rank's ``b`` queries against the global
            candidates: rows ``r*b..``, targets ``r*b + i``). Default: row i -> column i. With
            targets, masking must come as ``mask`` (ids describe the full matrix's rows).

    Returns:
        The scalar loss, in float32 whatever the scores' dtype.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, C), got shape {tuple(scores.shape)}")
    b, c = scores.shape
    if targets is None:
        if b == 0 or c < b or (c - b) % b:
            raise ValueError(
                f"scores of shape {(b, c)} do not have the layout B x (B + B*h) for B={b}"
            )
        targets = torch.arange(b, device=scores.device)
    else:
        if query_ids is not None or positive_ids is not None:
            raise ValueError("with targets=, pass the masking as mask= (not query/positive ids)")
        targets = torch.as_tensor(targets, dtype=torch.long, device=scores.device)
        if targets.shape != (b,) or b == 0:
            raise ValueError(f"targets must have shape ({b},), got {tuple(targets.shape)}")
        if int(targets.min()) < 0 or int(targets.max()) >= c:
            raise ValueError(f"targets must lie in [0, {c}); got {targets.tolist()[:10]}")
    # Softmax in float32: bf16 scores lose the small differences the loss is made of.
    logits = scores.float()
    if mask is None and (query_ids is not None or positive_ids is not None):
        mask = same_query_mask(c, query_ids, positive_ids, device=scores.device)
    if mask is not None:
        if mask.shape != scores.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != scores shape {(b, c)}")
        rows = torch.arange(b, device=scores.device)
        # A query's own target always stays, even if a caller's mask says otherwise.
        mask = mask.clone()
        mask[rows, targets] = False
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, targets)


def grouped_loss(scores: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over per-query candidate groups whose column 0 is the positive.

    For models that score each query only against its own candidates (cross-encoders, via
    ``forward_grouped``): ``scores`` is ``(B, 1 + h)``, the positive then its h hard negatives.

    Returns:
        The scalar loss, in float32 whatever the scores' dtype.
    """
    if scores.dim() != 2 or scores.shape[0] == 0 or scores.shape[1] < 2:
        raise ValueError(
            f"grouped scores must be (B, group_size) with group_size >= 2 (a positive and at "
            f"least one hard negative), got shape {tuple(scores.shape)}"
        )
    targets = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(scores.float(), targets)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``(B, num_labels)`` logits against ``(B,)`` int labels, float32."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (B, n) and labels (B,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    n = logits.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n):
        raise ValueError(f"labels must lie in [0, {n}); got {labels.tolist()[:10]}")
    return F.cross_entropy(logits.float(), labels.long())
