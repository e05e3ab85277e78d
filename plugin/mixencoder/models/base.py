"""The scorer protocol every architecture implements.

The store, the reranker and the benchmarks only ever talk to a model through this protocol, so
they never special-case an architecture:

1. offline: ``encode_candidates(texts)`` -> :class:`CandidateReps` (what the store keeps);
2. online:  ``encode_query(query)`` -> an opaque per-model query state, computed once per query;
3. online:  ``score(query_state, reps)`` -> one score per candidate.

A model whose candidate side cannot be precomputed (a cross-encoder) returns reps that carry the
token ids instead; the protocol still holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch


@dataclass
class CandidateReps:
    """Precomputed candidate representations, padded to one tensor.

    Attributes:
        vectors: ``(n, m, d)`` float tensor; candidate ``i`` owns ``vectors[i, :lengths[i]]``.
            MixEncoder stores its k context embeddings here (``m == k`` for every candidate);
            per-token models store a variable number of vectors.
        lengths: ``(n,)`` int64 tensor, the number of real vectors per candidate.
        pooled: optional ``(n, d_pooled)`` float tensor, one dense vector per candidate (the
            dual-encoder view of the same backbone), used for dense search and by models that
            score against it.
    """

    vectors: torch.Tensor
    lengths: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def mask(self) -> torch.Tensor:
        """``(n, m)`` bool, True where a vector is real."""
        m = self.vectors.shape[1]
        return torch.arange(m, device=self.lengths.device)[None, :] < self.lengths[:, None]

    def unpad(self) -> list[np.ndarray]:
        """One ``(lengths[i], d)`` numpy array per candidate, for writing to a store."""
        vectors = self.vectors.detach().cpu().float().numpy()
        return [vectors[i, : int(n)] for i, n in enumerate(self.lengths.tolist())]

    @classmethod
    def from_list(
        cls, arrays: Sequence[np.ndarray], pooled: np.ndarray | None = None
    ) -> CandidateReps:
        """Pad a list of ``(m_i, d)`` arrays (as read from a store) into one batch."""
        if not arrays:
            raise ValueError("CandidateReps.from_list needs at least one candidate")
        d = arrays[0].shape[1]
        m = max(a.shape[0] for a in arrays)
        vectors = torch.zeros(len(arrays), m, d, dtype=torch.float32)
        for i, a in enumerate(arrays):
            vectors[i, : a.shape[0]] = torch.from_numpy(np.asarray(a, dtype=np.float32))
        lengths = torch.tensor([a.shape[0] for a in arrays], dtype=torch.int64)
        pooled_t = None if pooled is None else torch.from_numpy(np.asarray(pooled, np.float32))
        return cls(vectors, lengths, pooled_t)

    def select(self, index: torch.Tensor | Sequence[int]) -> CandidateReps:
        """The reps of a subset of candidates, in the given order."""
        index = torch.as_tensor(index, dtype=torch.long)
        pooled = None if self.pooled is None else self.pooled[index]
        return CandidateReps(self.vectors[index], self.lengths[index], pooled)


@runtime_checkable
class Scorer(Protocol):
    """What the store, the reranker and the benchmarks need from a model."""

    def candidate_fingerprint(self) -> dict[str, Any]:
        """JSON-serialisable identity of everything that shapes the stored reps.

        Includes a ``sha256`` over the candidate-side weights and tokenizer, the max length, and
        the representation layout. A store refuses to serve a model whose fingerprint differs.
        """
        ...

    def encode_candidates(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> CandidateReps:
        """Offline: encode candidate texts into storable reps."""
        ...

    def encode_query(self, query: str) -> Any:
        """Online: encode one query once, independent of its candidates."""
        ...

    def score(self, query_state: Any, reps: CandidateReps) -> torch.Tensor:
        """Online: ``(n,)`` float scores of the candidates in ``reps`` for one encoded query.

        A candidate's score depends only on the query and that candidate, never on the other
        candidates in the batch or on padding.
        """
        ...

    def encode_queries_pooled(self, queries: Sequence[str]) -> np.ndarray:
        """``(n, d_pooled)`` float32 query vectors matching ``CandidateReps.pooled``."""
        ...
