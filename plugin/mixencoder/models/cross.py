"""CrossEncoder (Cross-BERT): ``[CLS] q [SEP] c [SEP]`` through the whole backbone, per pair.

Nothing of a candidate can be precomputed. To keep the store/reranker protocol, its "reps" are
the candidate's token ids: ``encode_candidates`` returns ``vectors (n, L, 2)`` holding each token
id as two base-2048 digits ``[id // 2048, id % 2048]`` (both exact in float16, the store's
default dtype; a plain float16 id would be wrong above 2048) and ``lengths`` = the token count
(the candidate's tokens after [CLS], its [SEP] included). ``score`` decodes them and runs the
full forward on every (query, candidate) pair, in batches sorted by length.

Training: ``forward(q, c)`` (every query with every candidate) costs B x C full forwards, so
``supports_in_batch_negatives = False`` and the trainer calls ``forward_grouped`` (each query
with its own group of candidates) instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from . import late_interaction as LI
from .base import CandidateReps, PairwiseModel
from .biencoder import Pooling, pool
from .config import BaselineConfig

ID_BASE = 2048  # token ids are stored as two digits in this base: both exact in float16


@dataclass
class CrossEncoderConfig(BaselineConfig):
    """Configuration of a :class:`CrossEncoder`.

    Attributes:
        pooling: ``"cls"`` (a linear head on [CLS], BERT's recipe) or ``"mean"`` over the pair.
        score_batch_size: pairs per forward in :meth:`CrossEncoder.score` (any value gives the
            same scores).
    """

    pooling: Pooling = "cls"
    score_batch_size: int = 64


def encode_ids(ids: torch.Tensor) -> torch.Tensor:
    """``(..., )`` int token ids -> ``(..., 2)`` float digits ``[id // 2048, id % 2048]``."""
    return torch.stack([ids // ID_BASE, ids % ID_BASE], dim=-1).float()


def decode_ids(vectors: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_ids`; raises if the vectors are not integer digits."""
    digits = vectors.round()
    if vectors.numel() and bool(((vectors - digits).abs() > 1e-3).any()):
        raise ValueError(
            "candidate reps are not token ids; were they stored by another model than a "
            "CrossEncoder?"
        )
    digits = digits.long()
    return digits[..., 0] * ID_BASE + digits[..., 1]


class CrossEncoder(PairwiseModel):
    """Cross-BERT over a BERT-family backbone with a one-output linear head.

    Query state: the query's ``(input_ids (Lq,), attention_mask (Lq,))`` ([CLS] q [SEP]):
    tokenised once per query, the only thing that can be. The candidate's reps are its token
    ids (see the module docstring); the fingerprint therefore covers the tokenizer and the
    truncation, not the weights (retraining does not invalidate a store of token ids).
    """

    MODEL_TYPE = "cross"
    CONFIG_CLASS = CrossEncoderConfig

    def __init__(self, config: CrossEncoderConfig, backbone: nn.Module, tokenizer: Any):
        super().__init__(config, backbone, tokenizer)
        self.head = self._score_head()

    # ------------------------------------------------------------------ pairs

    def pair_scores(
        self, q_ids: torch.Tensor, q_mask: torch.Tensor, c_ids: torch.Tensor, c_mask: torch.Tensor
    ) -> torch.Tensor:
        """Aligned pairs -> ``(P,)`` scores, differentiable.

        Args:
            q_ids, q_mask: ``(P, Lq)`` queries as ``[CLS] q [SEP]`` (right-padded).
            c_ids, c_mask: ``(P, Lc)`` candidates WITHOUT their [CLS]: ``c [SEP]``.
        """
        ids, mask, segment = LI.concat_pairs(q_ids, q_mask.bool(), c_ids, c_mask.bool())
        states = self.backbone(input_ids=ids, attention_mask=mask.long(), token_type_ids=segment * mask.long()).last_hidden_state
        return self.head(pool(states, mask, self.config.pooling))[:, 0]

    # forward (B x C full forwards) and forward_grouped: see PairwiseModel.

    def _indexed_pair_scores(self, queries, candidates, qi, ci) -> torch.Tensor:
        c_ids, c_mask = candidates["input_ids"][:, 1:], candidates["attention_mask"][:, 1:]
        return self.pair_scores(queries["input_ids"][qi], queries["attention_mask"][qi], c_ids[ci], c_mask[ci])

    # ------------------------------------------------------------------ Scorer

    def _rep_dim(self) -> int:
        return 2

    def _candidate_side(self):
        return []  # the reps are token ids: only the tokenizer (hashed by the base) shapes them

    def _fingerprint_extra(self) -> dict[str, Any]:
        return {"dim": 2, "layout": f"token ids as base-{ID_BASE} digits"}

    def _candidate_reps_batch(self, tokens):
        ids, mask = tokens["input_ids"][:, 1:], tokens["attention_mask"][:, 1:]
        return encode_ids(ids * mask), mask.sum(-1), None

    def encode_query(self, query: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Online: the tokenised query (nothing else is computable without a candidate)."""
        tok = self.tokenize_queries([query])
        return tok["input_ids"][0], tok["attention_mask"][0]

    @torch.inference_mode()
    def score(self, query_state: tuple[torch.Tensor, torch.Tensor], reps: CandidateReps) -> torch.Tensor:
        """Online: ``(n,)`` scores, one full cross forward per candidate, in length-sorted batches."""
        self.eval()
        q_ids, q_mask = (t.to(self.device) for t in query_state)
        vectors, c_mask = self._reps_to_device(reps, 2)
        c_ids = decode_ids(vectors) * c_mask
        out = torch.empty(len(reps))
        for idx, m in self._length_sorted_batches(reps, self.config.score_batch_size):
            p = len(idx)
            out[idx] = self.pair_scores(
                q_ids[None].expand(p, -1), q_mask[None].expand(p, -1),
                c_ids[idx.to(self.device), :m], c_mask[idx.to(self.device), :m],
            ).float().cpu()
        return out
