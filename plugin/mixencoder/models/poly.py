"""Poly-encoder (Humeau et al. 2020), ``poly-64`` / ``poly-360``.

Query side (online, once per query): m learned codes attend over the query's last-layer token
states -> m query vectors. Candidate side (offline, stored): one pooled vector. Interaction
(online, per candidate): the candidate vector attends over the m query vectors; the score
compares the resulting candidate-specific query vector with the candidate vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn

from . import late_interaction as LI
from .base import CandidateReps, RankingModel
from .biencoder import Pooling, pool
from .config import BaselineConfig


@dataclass
class PolyEncoderConfig(BaselineConfig):
    """Configuration of a :class:`PolyEncoder`.

    Attributes:
        num_codes: m, the number of learned codes (query vectors): 64 or 360 in the paper.
        candidate_pooling: how the candidate's token states become its vector: ``"mean"``
            (default; all-MiniLM is a mean-pooled encoder) or ``"cls"`` (Humeau et al.).
        similarity: ``"cosine"`` (x ``scale``; default, as every model here) or ``"dot"``
            (Humeau et al.).
        scale: multiplier on cosine scores.
    """

    num_codes: int = 64
    candidate_pooling: Pooling = "mean"
    similarity: Literal["dot", "cosine"] = "cosine"
    scale: float = 20.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_codes < 1:
            raise ValueError(f"num_codes must be >= 1, got {self.num_codes}")
        if self.candidate_pooling not in ("mean", "cls"):
            raise ValueError(f"candidate_pooling must be 'mean' or 'cls', got {self.candidate_pooling!r}")


class PolyEncoder(RankingModel):
    """Poly-encoder over a BERT-family backbone (one backbone for both sides).

    The codes start near zero, so each code first attends almost uniformly and every query
    vector is (nearly) the mean-pooled query: the untrained model scores like the mean-pooled
    dual encoder, and training moves the codes apart.

    Stored per candidate: one ``d``-vector (``vectors (n, 1, d)``, ``pooled`` the same vector).
    Query state: ``(m, d)`` query vectors.
    """

    MODEL_TYPE = "poly"
    encodes_pooled = True
    CONFIG_CLASS = PolyEncoderConfig

    def __init__(self, config: PolyEncoderConfig, backbone: nn.Module, tokenizer: Any):
        super().__init__(config, backbone, tokenizer)
        gen = torch.Generator().manual_seed(0)
        self.codes = nn.Parameter(torch.randn(config.num_codes, self.hidden_size, generator=gen) * 0.02)

    # ------------------------------------------------------------------ training path

    def query_vectors_torch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Queries -> ``(B, m, d)``, differentiable."""
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return LI.poly_code_attention(self.codes, states, attention_mask.bool())

    def candidate_vectors_torch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Candidates -> ``(C, d)``, differentiable."""
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(states, attention_mask, self.config.candidate_pooling)

    def interact(self, query_vectors: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
        """``(B, m, d)`` x ``(C, d)`` -> ``(B, C)`` scores."""
        ctx = LI.poly_candidate_attention(query_vectors, cands)  # (B, C, d)
        if self.config.similarity == "cosine":
            return torch.nn.functional.cosine_similarity(ctx, cands[None], dim=-1, eps=1e-8) * self.config.scale
        return (ctx * cands[None]).sum(-1)

    def encode_query_batch(self, queries: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.query_vectors_torch(**queries)

    def encode_candidate_batch(self, candidates: dict[str, torch.Tensor]) -> tuple[torch.Tensor]:
        return (self.candidate_vectors_torch(**candidates),)

    def score_matrix(self, query_batch: torch.Tensor, candidate_batch: tuple[torch.Tensor]) -> torch.Tensor:
        """``(B, C)``: each candidate attends over each query's m vectors (:meth:`interact`)."""
        return self.interact(query_batch, candidate_batch[0])

    # ------------------------------------------------------------------ Scorer

    def _candidate_reps_batch(self, tokens):
        return self._one_vector_batch(self.candidate_vectors_torch(**tokens))

    def _fingerprint_extra(self) -> dict[str, Any]:
        return self._one_vector_fingerprint(self.config.candidate_pooling)

    @torch.inference_mode()
    def encode_query(self, query: str) -> torch.Tensor:
        """Online: the ``(m, d)`` query vectors."""
        self.eval()
        return self.query_vectors_torch(**self.tokenize_queries([query]))[0]

    @torch.inference_mode()
    def score(self, query_state: torch.Tensor, reps: CandidateReps) -> torch.Tensor:
        """Online: ``(n,)`` scores; each candidate attends over the query vectors on its own."""
        cands = self._one_vector_per_candidate(reps)
        return self.interact(query_state[None].to(self.device), cands)[0].float().cpu()
