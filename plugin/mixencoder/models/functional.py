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
