"""BiEncoder (Dual-BERT / Sentence-BERT): query and candidate encoded separately by one
backbone, mean-pooled (or [CLS]); score = cosine x scale (or dot). One vector per candidate is
stored. Also the pooling and similarity functions the other baselines share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import functional as MF
from .base import CandidateReps, RankingModel
from .config import BaselineConfig

Pooling = Literal["mean", "cls"]


def pool(states: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """``(N, L, d)`` token states -> ``(N, d)``: masked mean, or the first ([CLS]) token."""
    if how == "mean":
        return MF.mean_pool(states, mask.bool())
    if how == "cls":
        return states[:, 0]
    raise ValueError(f"unknown pooling {how!r}; expected 'mean' or 'cls'")


def similarity_matrix(q: torch.Tensor, c: torch.Tensor, kind: str, scale: float) -> torch.Tensor:
    """``(B, d)`` x ``(C, d)`` -> ``(B, C)``: cosine x scale, or dot."""
    if kind == "cosine":
        return F.normalize(q, dim=-1, eps=1e-8) @ F.normalize(c, dim=-1, eps=1e-8).T * scale
    if kind == "dot":
        return q @ c.T
    raise ValueError(f"unknown similarity {kind!r}; expected 'dot' or 'cosine'")


# ---------------------------------------------------------------------- BiEncoder


@dataclass
class BiEncoderConfig(BaselineConfig):
    """Configuration of a :class:`BiEncoder`.

    Attributes:
        pooling: ``"mean"`` (Sentence-BERT; what all-MiniLM was trained with) or ``"cls"``.
        similarity: ``"cosine"`` (x ``scale``) or ``"dot"``.
        scale: multiplier on cosine scores (the in-batch softmax temperature).
    """

    pooling: Pooling = "mean"
    similarity: Literal["dot", "cosine"] = "cosine"
    scale: float = 20.0


class BiEncoder(RankingModel):
    """Dual-BERT: ``score(q, c) = sim(pool(BERT(q)), pool(BERT(c)))``; one shared backbone.

    Stored per candidate: one ``d``-vector (``vectors (n, 1, d)``; ``pooled`` holds the same
    vector so a store built ``with_pooled=True`` serves dense search, at twice the bytes).
    Untrained on all-MiniLM-L6-v2 it scores exactly like :class:`~mixencoder.DualEncoder`.
    """

    MODEL_TYPE = "dual"
    encodes_pooled = True
    supports_dense_search = True
    CONFIG_CLASS = BiEncoderConfig

    @property
    def search_metric(self) -> str:
        """The store's dense-search metric matching ``config.similarity``: a cosine model's
        store must rank by cosine, as it scores (``"ip"`` for ``"dot"``)."""
        return "cosine" if self.config.similarity == "cosine" else "ip"

    def encode_torch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Texts (tokenised) -> ``(N, d)`` pooled vectors, differentiable."""
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(states, attention_mask, self.config.pooling)

    def encode_query_batch(self, queries: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encode_torch(**queries)

    def encode_candidate_batch(self, candidates: dict[str, torch.Tensor]) -> tuple[torch.Tensor]:
        return (self.encode_torch(**candidates),)

    def score_matrix(self, query_batch: torch.Tensor, candidate_batch: tuple[torch.Tensor]) -> torch.Tensor:
        """``(B, C)`` similarities of the pooled query and candidate vectors."""
        return similarity_matrix(query_batch, candidate_batch[0], self.config.similarity, self.config.scale)

    def _candidate_reps_batch(self, tokens):
        return self._one_vector_batch(self.encode_torch(**tokens))

    def _fingerprint_extra(self) -> dict[str, Any]:
        return self._one_vector_fingerprint(self.config.pooling)

    @torch.inference_mode()
    def encode_query(self, query: str) -> torch.Tensor:
        """Online: the ``(d,)`` query vector."""
        self.eval()
        return self.encode_torch(**self.tokenize_queries([query]))[0]

    @torch.inference_mode()
    def encode_queries_pooled(self, queries: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """``(n, d)`` query vectors matching the stored candidate vectors (dense search)."""
        self.eval()
        out = [self.encode_torch(**self.tokenize_queries(queries[i : i + batch_size])) for i in range(0, len(queries), batch_size)]
        return torch.cat(out).float().cpu().numpy() if out else np.zeros((0, self.hidden_size), np.float32)

    @torch.inference_mode()
    def score(self, query_state: torch.Tensor, reps: CandidateReps) -> torch.Tensor:
        """Online: ``(n,)`` similarities of the stored candidate vectors to the query."""
        cands = self._one_vector_per_candidate(reps)
        sims = similarity_matrix(query_state[None].to(self.device), cands, self.config.similarity, self.config.scale)
        return sims[0].float().cpu()
