"""The scorer protocol every architecture implements.

The store, the reranker and the benchmarks only ever talk to a model through this protocol, so
they never special-case an architecture:

1. offline: ``encode_candidates(texts)`` -> :class:`CandidateReps` (what the store keeps);
2. online:  ``encode_query(query)`` -> an opaque per-model query state, computed once per query;
3. online:  ``score(query_state, reps)`` -> one score per candidate.

A model whose candidate side cannot be precomputed (a cross-encoder) returns reps that carry the
token ids instead; the protocol still holds.

:class:`RankingMixin` adds sentence-transformers' ``rank``/``predict`` on top of the protocol.
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


class RankingMixin:
    """``rank`` and ``predict`` as sentence-transformers' ``CrossEncoder`` has them, written once
    on top of the :class:`Scorer` methods (``encode_candidates``, ``encode_query``, ``score``),
    so every model of the registry has them.

    Example:
        >>> model = load_model("work/ubuntu-model")  # any registered architecture
        >>> model.rank("lobster roll", ["A sandwich.", "Rain."], top_k=1)
        [{'corpus_id': 0, 'score': 13.2}]
        >>> model.predict([("lobster roll", "A sandwich."), ("rain", "Water.")]).shape
        (2,)
    """

    # Capabilities every model declares (the store, trainer and benches read these, never probe).
    #: how the store's FAISS copy of ``CandidateReps.pooled`` is searched: "ip" or "cosine".
    search_metric: str = "ip"
    #: True when ``forward(q, c) -> (B, C)`` is affordable for a whole batch (in-batch negatives).
    supports_in_batch_negatives: bool = True

    def new_parameter_names(self) -> list[str]:
        """Parameters that start fresh (not from the backbone): the trainer gives them a higher LR."""
        return []

    def mixing_summary(self) -> dict[str, float]:
        """Scalar diagnostics of the interaction (gate values, ...); empty for models without one."""
        return {}

    #: True when ``score`` reads ``reps.pooled`` (stores must then be built with pooled vectors).
    needs_pooled: bool = False

    def ablated(self) -> Any:
        """The same weights with the interaction switched off (a :class:`Scorer`), to measure what
        the interaction adds; ``None`` for models without an interaction to switch off."""
        return None

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Score ``documents`` for ``query`` and return them best first.

        Args:
            query: the query text (not empty).
            documents: candidate texts (a list, not a single string).
            top_k: keep only the best ``top_k`` (a positive int); ``None`` keeps all.
            return_documents: add each document's ``"text"``.
            batch_size: candidates encoded per batch.
            show_progress_bar: tqdm bar while encoding; None shows it at INFO log level.

        Returns:
            ``[{"corpus_id": i, "score": float, "text"?: str}]`` sorted by decreasing score,
            ties by ``corpus_id`` (the document's index in ``documents``).

        Raises:
            ValueError: empty query, empty document text, or a bad ``top_k``.
            TypeError: ``documents`` is a string, or holds a non-string.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        if not query.strip():
            raise ValueError(f"empty query: {query!r}; rank needs query text")
        if isinstance(documents, str):
            raise TypeError("documents must be a list of texts, got a single string; wrap it in a list")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        documents = list(documents)
        if not documents:
            return []
        reps = self.encode_candidates(documents, batch_size=batch_size, show_progress_bar=show_progress_bar)
        scores = self.score(self.encode_query(query), reps).tolist()
        order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))[:top_k]
        results: list[dict[str, Any]] = []
        for i in order:
            hit: dict[str, Any] = {"corpus_id": i, "score": float(scores[i])}
            if return_documents:
                hit["text"] = documents[i]
            results.append(hit)
        return results

    def predict(
        self,
        pairs: Sequence[tuple[str, str]] | tuple[str, str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray | np.float32:
        """Relevance scores of ``(query, document)`` pairs: ``(n,)`` float32, in input order.

        Each distinct query is encoded once; all documents are encoded in batches of
        ``batch_size``. A single pair (one tuple of two strings) returns one score.

        Raises:
            ValueError: a pair that is not two texts, or an empty text.
        """
        single = (
            isinstance(pairs, (tuple, list)) and len(pairs) == 2 and all(isinstance(t, str) for t in pairs)
        )
        items = [tuple(pairs)] if single else list(pairs)
        for i, pair in enumerate(items):
            if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise ValueError(f"pair {i} is {pair!r}; predict takes (query, document) pairs")
            if not all(isinstance(t, str) for t in pair):
                raise TypeError(f"pair {i} holds {[type(t).__name__ for t in pair]}, not two str")
        if not items:
            return np.zeros(0, np.float32)
        reps = self.encode_candidates(
            [d for _, d in items], batch_size=batch_size, show_progress_bar=show_progress_bar
        )
        out = np.zeros(len(items), np.float32)
        by_query: dict[str, list[int]] = {}
        for i, (q, _) in enumerate(items):
            by_query.setdefault(q, []).append(i)
        for q, idx in by_query.items():
            if not q.strip():
                raise ValueError(f"pair {idx[0]} has an empty query")
            out[idx] = self.score(self.encode_query(q), reps.select(idx)).detach().float().cpu().numpy()
        return out[0] if single else out
