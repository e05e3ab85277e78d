"""The scorer protocol every architecture implements, and :class:`RankingModel`, the one base
class of every model (MixEncoder and the baselines).

The store, the reranker and the benchmarks only ever talk to a model through this protocol, so
they never special-case an architecture:

1. offline: ``encode_candidates(texts)`` -> :class:`CandidateReps` (what the store keeps);
2. online:  ``encode_query(query)`` -> an opaque per-model query state, computed once per query;
3. online:  ``score(query_state, reps)`` -> one score per candidate.

A model whose candidate side cannot be precomputed (a cross-encoder) returns reps that carry the
token ids instead; the protocol still holds.

:class:`RankingModel` writes once what every model shares: loading and saving
(:mod:`.persistence`), tokenising with a truncation report (:mod:`.text`), the candidate
fingerprint, length-bucketed ``encode_candidates``, sentence-transformers' ``rank``/``predict``,
and the capabilities the store, the trainer and the benchmarks read (never probe).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import text as T
from .backbone import bert_layers, default_backbone_path
from .config import BaselineConfig
from .persistence import build_from_backbone, candidate_digest, is_saved_model, load_saved, read_config, save_model


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
        self, texts: Sequence[str], *, batch_size: int = 32, show_progress_bar: bool | None = None,
        bucket_by_length: bool = True,
    ) -> CandidateReps:
        """Offline: encode candidate texts into storable reps, in input order (batched by
        token length unless ``bucket_by_length=False``; the reps are the same either way)."""
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


class RankingModel(nn.Module):
    """The base of every model: a backbone, a tokenizer and a config, behind the :class:`Scorer`
    protocol.

    Written once here: ``from_pretrained``/``save_pretrained`` (``config.json`` with
    ``model_type``, ``model.safetensors``, tokenizer files; no pickles), tokenisation and its
    truncation report, ``candidate_fingerprint``, a length-bucketed ``encode_candidates``,
    ``rank``/``predict``/``score_texts``, and the training protocol the trainer and DDP use.

    A subclass sets ``MODEL_TYPE`` (the registry key written to ``config.json``) and
    ``CONFIG_CLASS``, and supplies the math: ``_candidate_reps_batch`` (offline),
    ``encode_query`` and ``score`` (online), and for training either the three in-batch methods
    (``encode_query_batch``, ``encode_candidate_batch``, ``score_matrix``) or, for a model that
    runs a transformer per (query, candidate) pair, ``forward``/``forward_grouped``
    (:class:`PairwiseModel`).

    Capabilities (read directly by the store, the trainer and the benchmarks, never probed):

    * ``search_metric``: how the store's FAISS copy of ``CandidateReps.pooled`` is searched,
      ``"ip"`` or ``"cosine"``;
    * ``needs_pooled``: ``score`` reads ``reps.pooled`` (its store needs pooled vectors);
    * ``encodes_pooled``: ``encode_candidates`` fills ``reps.pooled`` (a store can keep them);
    * ``supports_dense_search``: ``encode_queries_pooled`` gives query vectors matching
      ``reps.pooled``, so a store of this model can serve dense first-stage search;
    * ``supports_in_batch_negatives``: ``forward(q, c) -> (B, C)`` is affordable for a whole
      batch, and the in-batch methods exist (so DDP can share negatives across ranks);
    * ``supports_distillation``: ``distillation_loss(teacher, ...)`` exists (VIRT);
    * ``num_labels``: size of the pair-classification head (0: none; ``classify_torch``);
    * ``new_parameter_names()``, ``mixing_summary()``, ``ablated()``;
    * ``query_max_length``, ``candidate_max_length``, ``max_positions``.

    Example:
        >>> model = load_model("work/ubuntu-model")  # any registered architecture
        >>> model.rank("lobster roll", ["A sandwich.", "Rain."], top_k=1)
        [{'corpus_id': 0, 'score': 13.2}]
        >>> model.predict([("lobster roll", "A sandwich."), ("rain", "Water.")]).shape
        (2,)
    """

    MODEL_TYPE: ClassVar[str] = ""
    CONFIG_CLASS: ClassVar[Any] = BaselineConfig

    search_metric: str = "ip"
    needs_pooled: bool = False
    encodes_pooled: bool = False
    supports_dense_search: bool = False
    supports_in_batch_negatives: bool = True
    supports_distillation: bool = False

    def __init__(self, config: Any, backbone: nn.Module, tokenizer: Any):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.tokenizer = tokenizer
        bcfg = backbone.config
        config.backbone_config = bcfg.to_dict()
        self.num_layers = len(bert_layers(backbone))
        self.hidden_size = int(bcfg.hidden_size)
        self.num_heads = int(bcfg.num_attention_heads)

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike | None = None, **config: Any) -> Any:
        """Load a saved model of this type, or build a fresh one on top of a backbone.

        Args:
            name_or_dir: a directory written by :meth:`save_pretrained`; or a backbone (hub name
                such as ``bert-base-uncased`` or a local BERT-family directory); ``None`` for the
                bundled all-MiniLM-L6-v2, which loads offline.
            **config: fields of the model's config dataclass (fresh models only), e.g. ``k=2``.

        Returns:
            The model, in eval mode.

        Raises:
            ValueError: ``name_or_dir`` holds a saved model of another type (load it with
                :func:`mixencoder.models.load_model`), or config fields for a saved model.
        """
        path = default_backbone_path() if name_or_dir is None else name_or_dir
        data = read_config(path)
        if data is not None and is_saved_model(data):
            if data.get("model_type") != cls.MODEL_TYPE:
                raise ValueError(
                    f"{path} is a saved {data.get('model_type')!r} model, not "
                    f"{cls.MODEL_TYPE!r}; load it with mixencoder.models.load_model"
                )
            if config:
                raise ValueError(
                    f"{path} is a saved {cls.MODEL_TYPE} model; its config cannot be "
                    f"overridden ({sorted(config)}); build a fresh model from a backbone"
                )
            return load_saved(cls, cls.CONFIG_CLASS, Path(path), data)
        return build_from_backbone(cls, cls.CONFIG_CLASS, name_or_dir, path, config)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``model.safetensors``, the tokenizer files and ``config.json`` (with
        ``model_type``), each through a temporary name and a rename, so an interrupted save
        never leaves a half-written file under the final name."""
        save_model(directory, self.MODEL_TYPE, self.config.to_dict(), self, self.tokenizer)

    # ------------------------------------------------------------------ capabilities

    @property
    def num_labels(self) -> int:
        """Classes of the pair-classification head (``classify_torch``); 0 without one."""
        return 0

    @property
    def query_max_length(self) -> int:
        """Query truncation, in tokens."""
        return int(self.config.query_max_length)

    @property
    def candidate_max_length(self) -> int:
        """Candidate truncation, in tokens."""
        return int(self.config.candidate_max_length)

    @property
    def max_positions(self) -> int:
        """The backbone's position embeddings: the longest input it can read."""
        return int(self.backbone.config.max_position_embeddings)

    def new_parameter_names(self) -> list[str]:
        """Parameters that start fresh (outside the pre-trained backbone: heads, codes,
        projections): the trainer gives them a larger learning rate
        (``TrainingConfig.new_parameters_lr_scale``)."""
        return [n for n, _ in self.named_parameters() if not n.startswith("backbone.")]

    def mixing_summary(self) -> dict[str, float]:
        """Scalar diagnostics of the interaction (gate values, ...); empty for models without one."""
        return {}

    def ablated(self) -> Any:
        """The same weights with the interaction switched off (a :class:`Scorer`), to measure what
        the interaction adds; ``None`` for models without an interaction to switch off."""
        return None

    # ------------------------------------------------------------------ tokenisation

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize_queries(self, queries: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded ``input_ids``/``attention_mask`` of the queries, cut at ``query_max_length``."""
        T.check_texts(queries, "query")
        return self._tokenize(queries, self.query_max_length)

    def tokenize_candidates(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded ``input_ids``/``attention_mask`` of the candidates, cut at
        :meth:`_candidate_token_budget`."""
        T.check_texts(texts, "candidate")
        return self._tokenize(texts, self._candidate_token_budget())

    def _candidate_token_budget(self) -> int:
        """The tokenizer's ``max_length`` for candidates (MixEncoder's S strategy keeps room
        for its k special tokens)."""
        return self.candidate_max_length

    def _tokenize(self, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        return T.tokenize_texts(self.tokenizer, texts, max_length, self.device)

    # ------------------------------------------------------------------ fingerprint

    def _candidate_side(self) -> Iterable[tuple[str, torch.Tensor]]:
        """The named tensors that shape the stored reps (default: the whole backbone)."""
        return self.backbone.state_dict().items()

    def _candidate_side_unnamed(self) -> list[torch.Tensor]:
        """Tensors that shape the stored reps and are hashed after the named ones, in order."""
        return []

    def _fingerprint_extra(self) -> dict[str, Any]:
        """Layout fields of the stored reps (dimension, what the vectors are)."""
        return {"dim": self.hidden_size}

    def candidate_fingerprint(self) -> dict[str, Any]:
        """Identity of everything that shapes the stored reps (see :class:`Scorer`)."""
        sha256 = candidate_digest(self._candidate_side(), self.tokenizer, unnamed=self._candidate_side_unnamed())
        return {
            "model_type": self.MODEL_TYPE,
            "candidate_max_length": self.candidate_max_length,
            **self._fingerprint_extra(),
            "sha256": sha256,
        }

    # ------------------------------------------------------------------ candidates (offline)

    def _candidate_reps_batch(
        self, tokens: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One tokenised batch -> ``(vectors (b, m, d), lengths (b,), pooled (b, dp) or None)``."""
        raise NotImplementedError(f"{type(self).__name__} does not encode candidates")

    def _rep_dim(self) -> int:
        return self.hidden_size

    @torch.inference_mode()
    def encode_candidates(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        bucket_by_length: bool = True,
    ) -> CandidateReps:
        """Offline: texts -> :class:`CandidateReps`, in the order of ``texts``.

        Args:
            texts: candidate texts (non-empty strings; ``[]`` gives empty reps).
            batch_size: texts per backbone pass.
            show_progress_bar: tqdm bar; ``None`` shows it at INFO log level.
            bucket_by_length: batch the texts longest first by token count, so each batch pads
                to a similar length (less padding, the same reps); ``False`` batches them in
                input order. :func:`~mixencoder.models.text.padding_fraction` says how much
                padding either order costs.

        A candidate's reps never depend on the other texts of its batch (padding is masked).
        """
        self.eval()
        T.check_texts(texts, "candidate", allow_empty_list=True)
        texts = list(texts)
        if not texts:
            return CandidateReps(torch.zeros(0, 1, self._rep_dim()), torch.zeros(0, dtype=torch.int64))
        if bucket_by_length:
            order = T.batch_order(T.token_lengths(self.tokenizer, texts, self._candidate_token_budget()), True)
        else:
            order = np.arange(len(texts))
        parts = []
        truncated_before = T.TRUNCATED.count
        show = T.show_progress(show_progress_bar)
        for start in tqdm(range(0, len(texts), batch_size), desc="Encoding candidates", disable=not show):
            idx = order[start : start + batch_size]
            vecs, lengths, pooled = self._candidate_reps_batch(self.tokenize_candidates([texts[i] for i in idx]))
            parts.append((idx, vecs.float().cpu(), lengths.cpu(), None if pooled is None else pooled.float().cpu()))
        T.report_truncation(truncated_before, len(texts), self.candidate_max_length)
        return _assemble(parts, len(texts))

    def _reps_to_device(self, reps: CandidateReps, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(vectors (n, m, dim) float32, mask (n, m) bool)`` on the model's device, checked."""
        if reps.vectors.ndim != 3 or reps.vectors.shape[-1] != dim:
            raise ValueError(
                f"candidate reps of shape {tuple(reps.vectors.shape)} do not fit this "
                f"{type(self).__name__} (vectors of dim {dim}); were they stored by another model?"
            )
        vectors = reps.vectors.to(self.device, torch.float32)
        return vectors, reps.mask.to(self.device)

    @staticmethod
    def _length_sorted_batches(reps: CandidateReps, batch_size: int) -> Iterator[tuple[torch.Tensor, int]]:
        """``(indices, longest length)`` of chunks of ``batch_size`` candidates, longest first:
        each chunk can be trimmed to its longest candidate (less padding, same scores)."""
        order = torch.argsort(reps.lengths, descending=True, stable=True)
        for start in range(0, len(reps), batch_size):
            idx = order[start : start + batch_size]
            yield idx, int(reps.lengths[idx].max())

    def _one_vector_per_candidate(self, reps: CandidateReps) -> torch.Tensor:
        """``(n, d)`` float32 on the model's device, for models that store one vector per
        candidate: ``reps.pooled`` when the store has it, else the single stored vector."""
        if reps.pooled is not None:
            return reps.pooled.to(self.device, torch.float32)
        return self._reps_to_device(reps, self.hidden_size)[0][:, 0]

    @staticmethod
    def _one_vector_batch(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``_candidate_reps_batch`` of a one-vector model, from its ``(b, d)`` vectors."""
        return v.unsqueeze(1), torch.ones(v.shape[0], dtype=torch.int64), v

    def _one_vector_fingerprint(self, pooling: str) -> dict[str, Any]:
        """``_fingerprint_extra`` of a one-vector model."""
        return {"dim": self.hidden_size, "pooling": pooling, "layout": "one pooled vector"}

    # ------------------------------------------------------------------ online

    def encode_query(self, query: str) -> Any:
        """Online: encode one query once, independent of its candidates."""
        raise NotImplementedError(f"{type(self).__name__} does not encode queries")

    def score(self, query_state: Any, reps: CandidateReps) -> torch.Tensor:
        """Online: ``(n,)`` scores of the candidates in ``reps`` for one encoded query."""
        raise NotImplementedError(f"{type(self).__name__} does not score")

    def encode_queries_pooled(self, queries: Sequence[str]) -> np.ndarray:
        """``(n, d_pooled)`` float32 query vectors matching ``CandidateReps.pooled``."""
        raise NotImplementedError(
            f"{type(self).__name__} has no single query vector that matches a stored candidate "
            "vector, so it cannot serve dense first-stage search; use BM25 (or a dual encoder) "
            "for the first stage and this model to rerank"
        )

    def score_texts(self, query: str, texts: Sequence[str], *, batch_size: int = 32) -> list[float]:
        """Direct scoring, no store: encode the candidates, then score them for ``query``."""
        reps = self.encode_candidates(texts, batch_size=batch_size, show_progress_bar=False)
        return self.score(self.encode_query(query), reps).tolist()

    # ------------------------------------------------------------------ training protocol

    def encode_query_batch(self, queries: dict[str, torch.Tensor]) -> Any:
        """Training path: tokenised queries -> this model's query-side encoding (differentiable),
        what :meth:`score_matrix` reads. Needed when ``supports_in_batch_negatives``."""
        raise NotImplementedError(f"{type(self).__name__} has no separate query encoding")

    def encode_candidate_batch(self, candidates: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
        """Training path: tokenised candidates -> a tuple of tensors whose dim 0 is the
        candidate (differentiable; None for an absent part). Data-parallel training all-gathers
        each tensor across ranks, zero-padding any other dim to the longest rank's, so a
        variable-length dim must come with a mask in the same tuple that the padding leaves
        False."""
        raise NotImplementedError(f"{type(self).__name__} has no separate candidate encoding")

    def score_matrix(self, query_batch: Any, candidate_batch: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
        """Training path: ``(B, C)`` scores of every query of :meth:`encode_query_batch` against
        every candidate of :meth:`encode_candidate_batch` (in-batch negatives)."""
        raise NotImplementedError(f"{type(self).__name__} cannot score all pairs of a batch")

    def forward(self, queries: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor]) -> torch.Tensor:
        """Training path: ``(B, C)`` scores of every query against every candidate, with
        gradients. Inputs are :meth:`tokenize_queries` / :meth:`tokenize_candidates` outputs."""
        return self.score_matrix(self.encode_query_batch(queries), self.encode_candidate_batch(candidates))

    def forward_grouped(
        self, queries: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor], group_size: int
    ) -> torch.Tensor:
        """Training path: ``(B, group_size)`` scores of each query with its own candidates.

        Query i's candidates are rows ``i*group_size ... (i+1)*group_size - 1`` of
        ``candidates`` (the first one is the positive, by the trainer's convention). Here:
        the own groups' blocks of :meth:`forward`; :class:`PairwiseModel` scores only them.
        """
        b = queries["input_ids"].shape[0]
        scores = self(queries, candidates)
        if group_size < 1 or scores.shape[1] != b * group_size:
            raise ValueError(f"{scores.shape[1]} candidates do not form {b} groups of {group_size}")
        return scores.view(b, b, group_size)[torch.arange(b), torch.arange(b)]

    def classify_torch(self, queries: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor]) -> torch.Tensor:
        """Training path for pair classification: ``(B, num_labels)`` logits of aligned pairs."""
        raise ValueError(f"{type(self).__name__} has no classifier head (num_labels=0)")

    def distillation_loss(
        self, teacher: nn.Module, queries: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Training path: a loss distilling ``teacher`` into this model over the aligned pairs
        (query i, candidate i). Exists when ``supports_distillation``."""
        raise NotImplementedError(f"{type(self).__name__} does not distill from a teacher")

    # ------------------------------------------------------------------ sentence-transformers API

    def with_inference_options(self, *, candidate_layout: str | None = None, quantization: str | None = None) -> Any:
        """This model with another candidate layout and/or quantization (``None`` keeps its own);
        only MixEncoder has options (``"precomputed"``, ``"int8"``), so another model refuses any.

        Raises:
            ValueError: an option given to a model without it.
        """
        if candidate_layout is None and quantization is None:
            return self
        raise ValueError(
            f"{type(self).__name__} has no candidate layouts or quantization "
            f"(asked candidate_layout={candidate_layout!r}, quantization={quantization!r}); only MixEncoder has them"
        )

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


def _assemble(
    parts: list[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor | None]], n: int
) -> CandidateReps:
    """One :class:`CandidateReps` of ``n`` candidates from per-batch ``(indices, vectors,
    lengths, pooled)``, each batch's rows put back at its indices (input order)."""
    m = max(int(p[1].shape[1]) for p in parts)
    vectors = torch.zeros(n, m, parts[0][1].shape[2])
    lengths = torch.zeros(n, dtype=torch.int64)
    pooled = None if parts[0][3] is None else torch.zeros(n, parts[0][3].shape[1])
    for idx, v, lens, p in parts:
        index = torch.from_numpy(np.asarray(idx))
        vectors[index, : v.shape[1]] = v
        lengths[index] = lens.to(torch.int64)
        if pooled is not None:
            pooled[index] = p
    return CandidateReps(vectors, lengths, pooled)


class PairwiseModel(RankingModel):
    """Base of the models that run (part of) a transformer per (query, candidate) pair
    (``cross``, ``deformer``): a linear score head and the all-pairs and grouped training paths.
    A subclass supplies ``_indexed_pair_scores``. All-pairs scoring of a training batch costs
    B x C pair passes, so these models train on each query's own group (``forward_grouped``)."""

    supports_in_batch_negatives = False

    def _score_head(self) -> nn.Linear:
        """A ``d -> 1`` linear head, seeded: small random weights, zero bias."""
        head = nn.Linear(self.hidden_size, 1)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            head.weight.copy_(torch.randn(1, self.hidden_size, generator=gen) * 0.02)
            head.bias.zero_()
        return head

    def _indexed_pair_scores(
        self, queries: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor],
        qi: torch.Tensor, ci: torch.Tensor,
    ) -> torch.Tensor:
        """``(P,)`` scores of the pairs (query ``qi[p]``, candidate ``ci[p]``), differentiable."""
        raise NotImplementedError

    def forward(self, queries: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, C)``: every query with every candidate, B x C pair passes (small batches only;
        see :meth:`forward_grouped` for training)."""
        b, c = queries["input_ids"].shape[0], candidates["input_ids"].shape[0]
        qi = torch.arange(b, device=self.device).repeat_interleave(c)
        ci = torch.arange(c, device=self.device).repeat(b)
        return self._indexed_pair_scores(queries, candidates, qi, ci).view(b, c)

    def forward_grouped(
        self, queries: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor], group_size: int
    ) -> torch.Tensor:
        """Training path: ``(B, group_size)`` scores of each query with its own candidates
        (query i's are rows ``i*group_size .. (i+1)*group_size - 1``), one pass per pair."""
        b, c = queries["input_ids"].shape[0], candidates["input_ids"].shape[0]
        if group_size < 1 or c != b * group_size:
            raise ValueError(f"{c} candidates do not form {b} groups of {group_size}")
        qi = torch.arange(b, device=self.device).repeat_interleave(group_size)
        ci = torch.arange(c, device=self.device)
        return self._indexed_pair_scores(queries, candidates, qi, ci).view(b, group_size)
