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
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Literal, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import functional as MF
from .backbone import bert_layers, default_backbone_path
from .base import CandidateReps
from .mixencoder import (
    _check_texts,
    _package_version,
    _read_json,
    _show_progress,
    _tokenizer_bytes,
    _write_json_atomic,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
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


class PretrainedScorer(nn.Module):
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
        from transformers import AutoModel, AutoTokenizer

        path = default_backbone_path() if name_or_dir is None else name_or_dir
        saved = Path(path) / "config.json"
        if saved.is_file():
            data = _read_json(saved)
            if "format_version" in data and "config" in data:  # written by save_pretrained
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
                return cls._load_saved(Path(path), data)
        backbone = AutoModel.from_pretrained(str(path), add_pooling_layer=False)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        name = "all-MiniLM-L6-v2" if name_or_dir is None else str(name_or_dir)
        return cls(cls.CONFIG_CLASS(backbone=name, **config), backbone, tokenizer).eval()

    @classmethod
    def _load_saved(cls, path: Path, data: dict[str, Any]) -> Any:
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if data.get("format_version", 0) > FORMAT_VERSION:
            logger.warning("%s was written by a newer mixencoder; loading may fail", path)
        config = cls.CONFIG_CLASS.from_dict(data["config"])
        bcfg = dict(config.backbone_config)
        backbone_type = bcfg.pop("model_type")
        backbone = AutoModel.from_config(
            AutoConfig.for_model(backbone_type, **bcfg), add_pooling_layer=False
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = cls(config, backbone, tokenizer)
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing; the saved model is incomplete")
        try:
            state = load_file(str(weights))
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{weights} is not a readable safetensors file: {e}") from e
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{weights} does not match its config.json: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        return model.eval()

    def new_parameter_names(self) -> list[str]:
        """Parameters outside the pre-trained backbone (heads, codes, projections): the trainer
        may give them a larger learning rate (``TrainingConfig.new_parameters_lr_scale``)."""
        return [n for n, _ in self.named_parameters() if not n.startswith("backbone.")]

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` (with ``model_type``), ``model.safetensors`` and the tokenizer."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = out / ".model.safetensors.tmp"
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out / "model.safetensors")
        self.tokenizer.save_pretrained(str(out))
        data = {
            "model_type": self.MODEL_TYPE,
            "format_version": FORMAT_VERSION,
            "mixencoder_version": _package_version(),
            "config": self.config.to_dict(),
        }
        _write_json_atomic(out / "config.json", data)

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
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {
            "input_ids": enc["input_ids"].to(self.device),
            "attention_mask": enc["attention_mask"].to(self.device),
        }

    # ------------------------------------------------------------------ fingerprint

    def _candidate_side(self) -> Iterable[tuple[str, torch.Tensor]]:
        """The named tensors that shape the stored reps (default: the whole backbone)."""
        return self.backbone.state_dict().items()

    def _fingerprint_extra(self) -> dict[str, Any]:
        """Layout fields of the stored reps (dimension, what the vectors are)."""
        return {"dim": self.hidden_size}

    def candidate_fingerprint(self) -> dict[str, Any]:
        """Identity of everything that shapes the stored reps (see ``Scorer``)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self._candidate_side(), key=lambda kv: kv[0]):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        digest.update(_tokenizer_bytes(self.tokenizer))
        return {
            "model_type": self.MODEL_TYPE,
            "candidate_max_length": self.config.candidate_max_length,
            **self._fingerprint_extra(),
            "sha256": digest.hexdigest(),
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
        for start in tqdm(range(0, len(texts), batch_size), desc="Encoding candidates", disable=not show):
            idx = order[start : start + batch_size]
            vecs, lengths, pooled = self._encode_candidate_batch(
                self.tokenize_candidates([texts[i] for i in idx])
            )
            parts.append((idx, vecs.float().cpu(), lengths.cpu(), None if pooled is None else pooled.float().cpu()))
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
        v = self.encode_torch(**tokens)
        return v.unsqueeze(1), torch.ones(v.shape[0], dtype=torch.int64), v

    def _fingerprint_extra(self) -> dict[str, Any]:
        return {"dim": self.hidden_size, "pooling": self.config.pooling, "layout": "one pooled vector"}

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
        if reps.pooled is not None:
            cands = reps.pooled.to(self.device, torch.float32)
        else:
            cands = self._reps_to_device(reps, self.hidden_size)[0][:, 0]
        sims = similarity_matrix(query_state[None].to(self.device), cands, self.config.similarity, self.config.scale)
        return sims[0].float().cpu()
