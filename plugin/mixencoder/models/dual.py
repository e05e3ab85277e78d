"""DualEncoder: the backbone as a plain mean-pooled bi-encoder (Sentence-BERT / Dual-BERT).

One vector per candidate, stored; the query is encoded alone; score = cosine x scale (or dot).
Built from the same MixEncoder object so that both share one backbone and one store layout:
the dual view of a MixEncoder is exactly its pooled vectors.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from . import functional as MF
from .base import CandidateReps, RankingMixin
from .mixencoder import MixEncoder


class DualEncoder(RankingMixin):
    """Scores with the pooled vectors only (the ``Scorer`` protocol), e.g. ``dual-zeroshot``.

    Args:
        encoder: a :class:`MixEncoder` whose backbone and tokenizer are used (its interaction
            layers are not); ``None`` loads the bundled all-MiniLM-L6-v2.
        similarity: ``"cosine"`` or ``"dot"``.
        scale: multiplier on cosine scores.
    """

    def __init__(self, encoder: MixEncoder | None = None, *, similarity: str = "cosine", scale: float = 20.0):
        self.encoder = encoder if encoder is not None else MixEncoder.from_pretrained()
        self.similarity = similarity
        self.scale = scale

    @property
    def search_metric(self) -> str:
        """The candidate-store dense-search metric matching ``similarity``: cosine or ip."""
        return "cosine" if self.similarity == "cosine" else "ip"

    def candidate_fingerprint(self) -> dict[str, Any]:
        return {**self.encoder.candidate_fingerprint(), "model_type": "dual"}

    def encode_candidates(
        self, texts: Sequence[str], *, batch_size: int = 32, show_progress_bar: bool | None = None
    ) -> CandidateReps:
        reps = self.encoder.encode_candidates(texts, batch_size=batch_size, show_progress_bar=show_progress_bar)
        # The stored vector is the pooled one; keep it in both slots so dense search works too.
        pooled = reps.pooled
        return CandidateReps(pooled.unsqueeze(1).clone(), torch.ones(len(texts), dtype=torch.int64), pooled)

    def encode_query(self, query: str) -> torch.Tensor:
        return torch.from_numpy(self.encode_queries_pooled([query]))[0]

    def encode_queries_pooled(self, queries: Sequence[str]) -> np.ndarray:
        return self.encoder.encode_queries_pooled(queries)

    @torch.inference_mode()
    def score(self, query_state: torch.Tensor, reps: CandidateReps) -> torch.Tensor:
        candidates = reps.pooled if reps.pooled is not None else reps.vectors[:, 0]
        return MF.similarity(query_state[None, :], candidates.float(), self.similarity, self.scale)
