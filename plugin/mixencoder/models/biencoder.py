"""BiEncoder (Dual-BERT / Sentence-BERT), trainable, and the machinery every baseline shares.

:class:`PretrainedScorer` is the common base of the baselines (``dual``, ``cross``, ``poly``,
``colbert``, ``deformer``, ``virt``): one config dataclass per model, loading from a backbone or
from a saved directory, ``save_pretrained`` (``config.json`` with ``model_type``,
``model.safetensors``, tokenizer files; no pickles), tokenisation, the candidate fingerprint and
a batched ``encode_candidates`` loop. A subclass supplies the math: ``_encode_candidate_batch``,
``encode_query``, ``score`` and the training path ``forward``.

:class:`BiEncoder` itself: query and candidate encoded separately by one backbone, mean-pooled
(or [CLS]); score = cosine x scale (or dot). One vector per candidate is stored.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import functional as MF
from .backbone import bert_layers, default_backbone_path
from .base import CandidateReps, RankingMixin
from .mixencoder import TRUNCATED, _check_texts, _show_progress, _tokenize_texts, report_truncation
from .persistence import (  # noqa: F401  (FORMAT_VERSION: re-exported; it used to live here)
    FORMAT_VERSION,
    build_from_backbone,
    candidate_digest,
    is_saved_model,
    load_saved,
    read_config,
    save_model,
)

Pooling = Literal["mean", "cls"]


# ---------------------------------------------------------------------- shared config


@dataclass
class BaselineConfig:
    """Fields every baseline has (a subclass adds its own).

    Attributes:
        backbone: name or directory the backbone was first loaded from (informational once
            saved: a saved model carries its weights and ``backbone_config``).
        query_max_length: query truncation, in tokens ([CLS] and [SEP] included).
        candidate_max_length: candidate truncation, in tokens ([CLS] and [SEP] included).
        backbone_config: the backbone's own config dict, filled in by the model.
    """

    backbone: str = "all-MiniLM-L6-v2"
    query_max_length: int = 32
    candidate_max_length: int = 180
    backbone_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("query_max_length", "candidate_max_length"):
            if int(getattr(self, name)) < 3:
                raise ValueError(f"{name} must be >= 3 tokens, got {getattr(self, name)}")
        for name, allowed in (("similarity", ("dot", "cosine")), ("pooling", ("mean", "cls"))):
            value = getattr(self, name, None)
            if value is not None and value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaselineConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
        return cls(**data)


# ---------------------------------------------------------------------- shared base


class PretrainedScorer(RankingMixin, nn.Module):
    """Base of the baselines: loading, saving, tokenisation, fingerprint, candidate batching.

    Class attributes a subclass sets:
        MODEL_TYPE: the ``model_type`` written to ``config.json`` (the registry key).
        CONFIG_CLASS: its config dataclass.
        supports_in_batch_negatives: True when ``forward(q, c) -> (B, C)`` is affordable for a
            training batch (every query against every candidate). False for models that run a
            transformer per (query, candidate) pair; the trainer then calls
            ``forward_grouped(q, c, group_size) -> (B, group_size)`` instead.
    """

    MODEL_TYPE: ClassVar[str] = ""
    CONFIG_CLASS: ClassVar[type[BaselineConfig]] = BaselineConfig
    supports_in_batch_negatives: ClassVar[bool] = True

    def __init__(self, config: BaselineConfig, backbone: nn.Module, tokenizer: Any):
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
                or local BERT-family directory); ``None`` for the bundled all-MiniLM-L6-v2.
            **config: fields of the model's config dataclass (fresh models only).

        Returns:
            The model, in eval mode.
        """
        path = default_backbone_path() if name_or_dir is None else name_or_dir
        data = read_config(path)
        if data is not None and is_saved_model(data):
            if data.get("model_type") != cls.MODEL_TYPE:
                raise ValueError(
                    f"{path} is a saved {data.get('model_type')!r} model, not "
                    f"{cls.MODEL_TYPE!r}; load it with mixencoder.models.registry.load_model"
                )
            if config:
                raise ValueError(
                    f"{path} is a saved {cls.MODEL_TYPE} model; its config cannot be "
                    f"overridden ({sorted(config)}); build a fresh model from a backbone"
                )
            return load_saved(cls, cls.CONFIG_CLASS, Path(path), data)
        return build_from_backbone(cls, cls.CONFIG_CLASS, name_or_dir, path, config)

    def new_parameter_names(self) -> list[str]:
        """Parameters outside the pre-trained backbone (heads, codes, projections): the trainer
        may give them a larger learning rate (``TrainingConfig.new_parameters_lr_scale``)."""
        return [n for n, _ in self.named_parameters() if not n.startswith("backbone.")]

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` (with ``model_type``), ``model.safetensors`` and the tokenizer."""
        save_model(directory, self.MODEL_TYPE, self.config.to_dict(), self, self.tokenizer)

    # ------------------------------------------------------------------ tokenisation

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize_queries(self, queries: Sequence[str]) -> dict[str, torch.Tensor]:
        _check_texts(queries, "query")
        return self._tokenize(queries, self.config.query_max_length)

    def tokenize_candidates(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        _check_texts(texts, "candidate")
        return self._tokenize(texts, self.config.candidate_max_length)

    def _tokenize(self, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        return _tokenize_texts(self.tokenizer, texts, max_length, self.device)

    # ------------------------------------------------------------------ fingerprint

    def _candidate_side(self) -> Iterable[tuple[str, torch.Tensor]]:
        """The named tensors that shape the stored reps (default: the whole backbone)."""
        return self.backbone.state_dict().items()

    def _fingerprint_extra(self) -> dict[str, Any]:
        """Layout fields of the stored reps (dimension, what the vectors are)."""
        return {"dim": self.hidden_size}

    def candidate_fingerprint(self) -> dict[str, Any]:
        """Identity of everything that shapes the stored reps (see ``Scorer``)."""
        return {
            "model_type": self.MODEL_TYPE,
            "candidate_max_length": self.config.candidate_max_length,
            **self._fingerprint_extra(),
            "sha256": candidate_digest(self._candidate_side(), self.tokenizer),
        }

    # ------------------------------------------------------------------ candidates (offline)

    def _encode_candidate_batch(
        self, tokens: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One tokenised batch -> ``(vectors (b, m, d), lengths (b,), pooled (b, dp) or None)``."""
        raise NotImplementedError

    def _rep_dim(self) -> int:
        return self.hidden_size

    @torch.inference_mode()
    def encode_candidates(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> CandidateReps:
        """Offline: texts -> :class:`CandidateReps`, batched by length, returned in order.

        A candidate's reps never depend on the other texts of its batch (padding is masked).
        """
        self.eval()
        _check_texts(texts, "candidate", allow_empty_list=True)
        texts = list(texts)
        if not texts:
            return CandidateReps(torch.zeros(0, 1, self._rep_dim()), torch.zeros(0, dtype=torch.int64))
        order = np.argsort([-len(t) for t in texts], kind="stable")
        parts = []
        show = _show_progress(show_progress_bar)
        truncated_before = TRUNCATED.count
        for start in tqdm(range(0, len(texts), batch_size), desc="Encoding candidates", disable=not show):
            idx = order[start : start + batch_size]
            vecs, lengths, pooled = self._encode_candidate_batch(
                self.tokenize_candidates([texts[i] for i in idx])
            )
            parts.append((idx, vecs.float().cpu(), lengths.cpu(), None if pooled is None else pooled.float().cpu()))
        report_truncation(truncated_before, len(texts), self.config.candidate_max_length)
        m = max(int(p[1].shape[1]) for p in parts)
        vectors = torch.zeros(len(texts), m, parts[0][1].shape[2])
        lengths = torch.zeros(len(texts), dtype=torch.int64)
        with_pooled = parts[0][3] is not None
        pooled = torch.zeros(len(texts), parts[0][3].shape[1]) if with_pooled else None
        for idx, v, n, p in parts:
            index = torch.from_numpy(idx)
            vectors[index, : v.shape[1]] = v
            lengths[index] = n.to(torch.int64)
            if pooled is not None:
                pooled[index] = p
        return CandidateReps(vectors, lengths, pooled)

    # ------------------------------------------------------------------ online

    def encode_queries_pooled(self, queries: Sequence[str]) -> np.ndarray:
        raise NotImplementedError(
            f"{type(self).__name__} has no single query vector that matches a stored candidate "
            "vector, so it cannot serve dense first-stage search; use BM25 (or a dual encoder) "
            "for the first stage and this model to rerank"
        )

    def score_texts(self, query: str, texts: Sequence[str], *, batch_size: int = 32) -> list[float]:
        """Direct scoring, no store: encode the candidates, then score them for ``query``."""
        reps = self.encode_candidates(texts, batch_size=batch_size, show_progress_bar=False)
        return self.score(self.encode_query(query), reps).tolist()

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
        """``_encode_candidate_batch`` of a one-vector model, from its ``(b, d)`` vectors."""
        return v.unsqueeze(1), torch.ones(v.shape[0], dtype=torch.int64), v

    def _one_vector_fingerprint(self, pooling: str) -> dict[str, Any]:
        """``_fingerprint_extra`` of a one-vector model."""
        return {"dim": self.hidden_size, "pooling": pooling, "layout": "one pooled vector"}


class PairwiseScorer(PretrainedScorer):
    """Base of the models that run (part of) a transformer per (query, candidate) pair
    (``cross``, ``deformer``): a linear score head and the all-pairs and grouped training paths.
    A subclass supplies ``_indexed_pair_scores``."""

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
        """Training path: ``(B, group_size)`` scores of each query with its own candidates.

        Query i's candidates are rows ``i*group_size ... (i+1)*group_size - 1`` of
        ``candidates`` (the first one is the positive, by the trainer's convention).
        """
        b, c = queries["input_ids"].shape[0], candidates["input_ids"].shape[0]
        if group_size < 1 or c != b * group_size:
            raise ValueError(f"{c} candidates do not form {b} groups of {group_size}")
        qi = torch.arange(b, device=self.device).repeat_interleave(group_size)
        ci = torch.arange(c, device=self.device)
        return self._indexed_pair_scores(queries, candidates, qi, ci).view(b, group_size)


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


class BiEncoder(PretrainedScorer):
    """Dual-BERT: ``score(q, c) = sim(pool(BERT(q)), pool(BERT(c)))``; one shared backbone.

    Stored per candidate: one ``d``-vector (``vectors (n, 1, d)``; ``pooled`` holds the same
    vector so a store built ``with_pooled=True`` serves dense search, at twice the bytes).
    Untrained on all-MiniLM-L6-v2 it scores exactly like :class:`~mixencoder.DualEncoder`.
    """

    MODEL_TYPE = "dual"
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

    def forward(self, queries: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor]) -> torch.Tensor:
        """Training path: ``(B, C)`` scores of every query against every candidate."""
        return similarity_matrix(
            self.encode_torch(**queries), self.encode_torch(**candidates),
            self.config.similarity, self.config.scale,
        )

    def _encode_candidate_batch(self, tokens):
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
