"""Pure functions of the baselines' interaction math (no modules, no I/O).

Conventions: masks are bool, True on real tokens/vectors; padded positions never influence a
result (they are masked before every max and softmax), so scores do not depend on padding or on
the other candidates in a batch.
"""

from __future__ import annotations

import torch

_NEG = torch.finfo(torch.float32).min


def maxsim_matrix(
    q: torch.Tensor, q_mask: torch.Tensor, c: torch.Tensor, c_mask: torch.Tensor
) -> torch.Tensor:
    """ColBERT's late interaction for every query against every candidate.

    ``score(q, c) = sum_i max_j <q_i, c_j>`` over the query's real vectors i and the
    candidate's real vectors j.

    Args:
        q: ``(B, Lq, d)`` query token vectors; ``q_mask``: ``(B, Lq)``.
        c: ``(C, Lc, d)`` candidate token vectors; ``c_mask``: ``(C, Lc)``. Every candidate
            needs at least one real vector.

    Returns:
        ``(B, C)`` scores.
    """
    sims = torch.einsum("bqd,cld->bcql", q, c)
    sims = sims.masked_fill(~c_mask[None, :, None, :], _NEG)
    best = sims.max(dim=-1).values  # (B, C, Lq)
    return (best * q_mask[:, None, :].to(best.dtype)).sum(-1)


def maxsim(q: torch.Tensor, q_mask: torch.Tensor, c: torch.Tensor, c_mask: torch.Tensor) -> torch.Tensor:
    """One query ``(Lq, d)`` (mask ``(Lq,)``) against candidates ``(n, Lc, d)`` -> ``(n,)``.

    The same as ``maxsim_matrix(q[None], ...)[0]``, as one ``(n*Lc, d) @ (d, Lq)`` GEMM.
    """
    n, lc, d = c.shape
    sims = (c.reshape(n * lc, d) @ q.T).view(n, lc, q.shape[0])
    sims = sims.masked_fill(~c_mask[:, :, None], _NEG)
    best = sims.amax(dim=1)  # (n, Lq)
    return best @ q_mask.to(best.dtype)


def poly_code_attention(codes: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Poly-encoder query side: each of m learned codes attends over the query's token states.

    ``y_i = sum_t softmax_t(<code_i, h_t>) h_t`` (Humeau et al. 2020; dot product, no scaling,
    no projections).

    Args:
        codes: ``(m, d)``; states: ``(B, L, d)``; mask: ``(B, L)``.

    Returns:
        ``(B, m, d)``: m query vectors per query.
    """
    logits = torch.einsum("md,bld->bml", codes.to(states.dtype), states)
    logits = logits.masked_fill(~mask[:, None, :], _NEG)
    return torch.softmax(logits, dim=-1) @ states


def poly_candidate_attention(query_vectors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Poly-encoder interaction: each candidate vector attends over a query's m vectors.

    ``q_c = sum_i softmax_i(<c, y_i>) y_i``; the score is then ``sim(q_c, c)``.

    Args:
        query_vectors: ``(B, m, d)``; candidates: ``(C, d)``.

    Returns:
        ``(B, C, d)``: the candidate-specific query vector for every (query, candidate) pair.
    """
    weights = torch.softmax(torch.einsum("bmd,cd->bcm", query_vectors, candidates), dim=-1)
    return weights @ query_vectors  # (B, C, m) @ (B, m, d)


def concat_pairs(
    a: torch.Tensor, a_mask: torch.Tensor, b: torch.Tensor, b_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack each pair's real tokens ``[a_i; b_i]`` left-aligned into one padded batch.

    Both inputs are right-padded (their real tokens are a prefix). Works on token ids
    ``(P, L)`` or token states ``(P, L, d)``.

    Args:
        a: ``(P, La[, d])``, ``a_mask``: ``(P, La)``; b: ``(P, Lb[, d])``, ``b_mask``: ``(P, Lb)``.

    Returns:
        ``(x (P, L[, d]), mask (P, L), segment (P, L))`` with ``L = max(len_a + len_b)``;
        ``segment`` is 0 on a's tokens and 1 elsewhere (token type ids); padding is zero.
    """
    len_a = a_mask.sum(-1)
    len_b = b_mask.sum(-1)
    total = len_a + len_b
    length = int(total.max()) if total.numel() else 0
    pos = torch.arange(length, device=a.device)[None, :]  # (1, L)
    in_a = pos < len_a[:, None]
    idx_a = pos.clamp(max=a.shape[1] - 1).expand(a.shape[0], -1)
    idx_b = (pos - len_a[:, None]).clamp(min=0, max=b.shape[1] - 1)
    mask = pos < total[:, None]
    if a.ndim == 3:
        d = a.shape[-1]
        from_a = a.gather(1, idx_a[..., None].expand(-1, -1, d))
        from_b = b.gather(1, idx_b[..., None].expand(-1, -1, d))
        x = torch.where(in_a[..., None], from_a, from_b) * mask[..., None].to(a.dtype)
    else:
        x = torch.where(in_a, a.gather(1, idx_a), b.gather(1, idx_b)) * mask.to(a.dtype)
    return x, mask, (~in_a).long()
