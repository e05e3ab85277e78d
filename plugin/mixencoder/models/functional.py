"""The MixEncoder math as small pure functions, separate from modules and I/O.

Shapes: ``B`` queries, ``C`` candidates, ``k`` context embeddings per candidate, ``q`` query
tokens, ``H`` heads of size ``dh`` (``d = H * dh``). Every candidate is scored against every
query, so candidate-side tensors after the first interaction layer are ``(B, C, ...)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_NEG = torch.finfo(torch.float32).min


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(..., d)`` -> ``(..., H, dh)``."""
    return x.reshape(*x.shape[:-1], num_heads, x.shape[-1] // num_heads)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(..., H, dh)`` -> ``(..., d)``."""
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``states (N, L, d)`` over the positions where ``mask (N, L)`` is true."""
    mask = mask.to(states.dtype).unsqueeze(-1)
    return (states * mask).sum(-2) / mask.sum(-2).clamp(min=1.0)


def candidate_query_attention(
    q_cand: torch.Tensor,
    k_cand: torch.Tensor,
    v_cand: torch.Tensor,
    k_query: torch.Tensor,
    v_query: torch.Tensor,
    query_mask: torch.Tensor,
) -> torch.Tensor:
    """Eq. 1: each candidate's k rows attend jointly over its own k keys and the query's keys.

    Candidates never see each other: the only keys a candidate row sees are its own k and the
    query's (padding masked), so a score does not depend on the rest of the batch.

    Args:
        q_cand, k_cand, v_cand: ``(B, C, k, H, dh)`` projections of the candidates' E.
        k_query, v_query: ``(B, q, H, dh)`` the query's keys/values at this layer.
        query_mask: ``(B, q)`` bool, true on real query tokens.

    Returns:
        ``(B, C, k, H, dh)`` attention output.
    """
    scale = 1.0 / math.sqrt(q_cand.shape[-1])
    s_self = torch.einsum("bckhd,bclhd->bchkl", q_cand, k_cand) * scale  # (B, C, H, k, k)
    s_query = torch.einsum("bckhd,bqhd->bchkq", q_cand, k_query) * scale  # (B, C, H, k, q)
    s_query = s_query.masked_fill(~query_mask[:, None, None, None, :], _NEG)
    probs = torch.softmax(torch.cat([s_self, s_query], dim=-1), dim=-1)
    k = k_cand.shape[2]
    out = torch.einsum("bchkl,bclhd->bckhd", probs[..., :k], v_cand)
    out = out + torch.einsum("bchkq,bqhd->bckhd", probs[..., k:], v_query)
    return out


def pooled_query_attention(
    q_star: torch.Tensor, k_query: torch.Tensor, v_query: torch.Tensor, query_mask: torch.Tensor
) -> torch.Tensor:
    """Eq. 2's attention: one pooled row per candidate attends over the query tokens only.

    Args:
        q_star: ``(B, C, H, dh)`` projection of mean(E) per candidate.
        k_query, v_query: ``(B, q, H, dh)``.
        query_mask: ``(B, q)`` bool.

    Returns:
        ``(B, C, H, dh)``.
    """
    scale = 1.0 / math.sqrt(q_star.shape[-1])
    scores = torch.einsum("bchd,bqhd->bchq", q_star, k_query) * scale
    scores = scores.masked_fill(~query_mask[:, None, None, :], _NEG)
    return torch.einsum("bchq,bqhd->bchd", torch.softmax(scores, dim=-1), v_query)


def gated_update(gate_logits: torch.Tensor, new: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Eq. 2's gate, as in the authors' code: ``g * new + (1 - g) * previous``, g = sigmoid."""
    g = torch.sigmoid(gate_logits)
    return g * new + (1.0 - g) * previous


def similarity(h: torch.Tensor, e: torch.Tensor, kind: str, scale: torch.Tensor | float) -> torch.Tensor:
    """Row-wise similarity of ``h`` and ``e`` (same shape ``(..., d)``) -> ``(...)``.

    ``cosine`` is multiplied by ``scale``; ``dot`` is the plain inner product.
    """
    if kind == "cosine":
        return F.cosine_similarity(h, e, dim=-1, eps=1e-8) * scale
    if kind == "dot":
        return (h * e).sum(-1)
    raise ValueError(f"unknown similarity {kind!r}; expected 'dot' or 'cosine'")


def pair_features(h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Classifier input ``[h; e; |h - e|]`` (Sentence-BERT style), ``(..., 3d)``."""
    return torch.cat([h, e, (h - e).abs()], dim=-1)


# ---------------------------------------------------------------------- one query, flat layout
# The online path scores many candidates against one query. There the candidates' rows stay a
# flat ``(n*k, d)`` matrix and the query's per-head keys/values become block-diagonal matrices,
# so that every head's attention is one plain GEMM over all heads at once (no 5-D einsums and
# no permute copies). ``q`` counts real query tokens only: padding is dropped before, not masked.


def block_diagonal_keys(k_query: torch.Tensor) -> torch.Tensor:
    """``(q, H, dh)`` keys -> ``(d, H*q)``: column block ``h`` holds head ``h``'s keys, so that
    ``x (n, d) @ result`` gives every head's scores against the query, ``(n, H*q)``."""
    return torch.block_diag(*k_query.permute(1, 2, 0).unbind(0))


def block_diagonal_values(v_query: torch.Tensor) -> torch.Tensor:
    """``(q, H, dh)`` values -> ``(H*q, d)``: ``probs (n, H*q) @ result`` is every head's
    attention-weighted sum of the query's values, already merged into ``(n, d)``."""
    return torch.block_diag(*v_query.permute(1, 0, 2).unbind(0))


def candidate_query_attention_flat(
    q_cand: torch.Tensor,
    k_cand: torch.Tensor,
    v_cand: torch.Tensor,
    keys_bd: torch.Tensor,
    values_bd: torch.Tensor,
    num_heads: int,
) -> torch.Tensor:
    """Eq. 1 for one query, as :func:`candidate_query_attention` computes it, on flat tensors.

    The softmax runs jointly over [own k keys; query keys] without building the concatenation.

    Args:
        q_cand, k_cand, v_cand: ``(n, k, d)`` projections of the candidates' E.
        keys_bd, values_bd: the query's keys/values at this layer as
            :func:`block_diagonal_keys` / :func:`block_diagonal_values` give them.
        num_heads: ``H``.

    Returns:
        ``(n*k, d)`` attention output, heads merged.
    """
    n, k, d = q_cand.shape
    dh = d // num_heads
    scale = 1.0 / math.sqrt(dh)
    q_flat = q_cand.reshape(n * k, d)
    s_query = (q_flat @ keys_bd).mul_(scale).view(n, k, num_heads, -1)  # (n, k, H, q)
    s_self = torch.einsum(
        "nkhd,nlhd->nkhl", q_cand.view(n, k, num_heads, dh), k_cand.view(n, k, num_heads, dh)
    ).mul_(scale)  # (n, k, H, k)
    top = torch.maximum(s_query.amax(-1), s_self.amax(-1)).unsqueeze(-1)
    p_query, p_self = s_query.sub_(top).exp_(), s_self.sub_(top).exp_()
    total = p_query.sum(-1, keepdim=True).add_(p_self.sum(-1, keepdim=True))
    p_query, p_self = p_query.div_(total), p_self.div_(total)
    out = p_query.view(n * k, -1) @ values_bd
    out += torch.einsum("nkhl,nlhd->nkhd", p_self, v_cand.view(n, k, num_heads, dh)).reshape(n * k, d)
    return out


def pooled_query_attention_flat(scores: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Eq. 2's attention weights for one query: ``scores (n, H*q)`` (already scaled) -> the
    per-head softmax over the query tokens, ``(n, H*q)``, ready to multiply a block-diagonal
    value matrix."""
    n = scores.shape[0]
    return torch.softmax(scores.view(n, num_heads, -1), dim=-1).view(n, -1)
