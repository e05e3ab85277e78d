"""DualEncoder: the backbone as a plain mean-pooled bi-encoder (Sentence-BERT / Dual-BERT).

One vector per candidate, stored; the query is encoded alone; score = cosine x scale (or dot).
Built from the same MixEncoder object so that both share one backbone and one store layout:
the dual view of a MixEncoder is exactly its pooled vectors.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from . import functional as MF
from .base import CandidateReps, RankingModel
from .mixencoder import MixEncoder


class DualEncoder(RankingModel):
    """Scores with the pooled vectors only (the ``Scorer`` protocol), e.g. ``dual-zeroshot``.

    A view, not a model of its own: it holds no weights but the wrapped encoder's and is not
    saved (save the encoder; :meth:`MixEncoder.ablated` gives this view of it again). Not
    trained by the trainer (``supports_in_batch_negatives`` is False and it has no
    ``forward``); train a :class:`~mixencoder.models.BiEncoder` for a trainable dual encoder.

    Args:
        encoder: a :class:`MixEncoder` whose backbone and tokenizer are used (its interaction
            layers are not); ``None`` loads the bundled all-MiniLM-L6-v2.
        similarity: ``"cosine"`` or ``"dot"``.
        scale: multiplier on cosine scores.
    """

    MODEL_TYPE = "dual"
    encodes_pooled = True
    supports_dense_search = True
    supports_in_batch_negatives = False

    def __init__(self, encoder: MixEncoder | None = None, *, similarity: str = "cosine", scale: float = 20.0):
        nn.Module.__init__(self)  # no config/backbone of its own: the encoder's are used
        self.encoder = encoder if encoder is not None else MixEncoder.from_pretrained()
        self.similarity = similarity
        self.scale = scale

    @property
    def search_metric(self) -> str:
        """The candidate-store dense-search metric matching ``similarity``: cosine or ip."""
        return "cosine" if self.similarity == "cosine" else "ip"

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        raise NotImplementedError(
            "a DualEncoder is a view of a MixEncoder and is not saved on its own; save the "
            "MixEncoder (model.encoder.save_pretrained) and wrap it again after loading"
        )

    def candidate_fingerprint(self) -> dict[str, Any]:
        return {**self.encoder.candidate_fingerprint(), "model_type": self.MODEL_TYPE}

    def encode_candidates(
        self, texts: Sequence[str], *, batch_size: int = 32, show_progress_bar: bool | None = None,
        bucket_by_length: bool = True,
    ) -> CandidateReps:
        # The keyword only when it differs from the default: a caching wrapper around the
        # encoder (eval's MemoEncoder) may take the older signature.
        order = {} if bucket_by_length else {"bucket_by_length": False}
        reps = self.encoder.encode_candidates(texts, batch_size=batch_size, show_progress_bar=show_progress_bar, **order)
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
