"""ColBERT (Khattab and Zaharia 2020): per-token vectors and MaxSim late interaction.

Every token state of the candidate is projected to ``dim`` (128) by a linear layer without bias
and L2-normalised; all of them are stored (a variable number per candidate, ``lengths`` = its
token count). The query's tokens are encoded likewise, once per query; the score is the sum
over query vectors of the best dot product with any candidate vector (MaxSim).

As in ColBERT: a query marker token after [CLS] and a document marker token after [CLS]
(``[unused0]`` / ``[unused1]`` in BERT vocabularies), and query augmentation: the query is
padded to ``query_max_length`` with [MASK] tokens, which other tokens do not attend to but whose
output vectors take part in MaxSim. Not done: ColBERT's punctuation filter on candidate tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import late_interaction as LI
from .base import CandidateReps, RankingModel
from .config import BaselineConfig
from .text import check_texts

SCORE_CHUNK = 256  # candidates per MaxSim step; any value gives the same scores


@dataclass
class ColBERTConfig(BaselineConfig):
    """Configuration of a :class:`ColBERT`.

    Attributes:
        dim: size of the stored token vectors (the projection's output).
        query_augmentation: pad queries to ``query_max_length`` with [MASK] (ColBERT's default).
        query_marker, document_marker: tokens inserted after [CLS]; ``None`` for none. They
            must be single tokens of the tokenizer's vocabulary.
    """

    dim: int = 128
    query_augmentation: bool = True
    query_marker: str | None = "[unused0]"
    document_marker: str | None = "[unused1]"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")


class ColBERT(RankingModel):
    """ColBERT over a BERT-family backbone (one backbone for queries and candidates).

    Stored per candidate: ``(tokens, dim)`` unit vectors (``pooled`` is None: build its store
    with ``with_pooled=False``). Query state: ``(vectors (Lq, dim), mask (Lq,))``.
    """

    MODEL_TYPE = "colbert"
    CONFIG_CLASS = ColBERTConfig

    def __init__(self, config: ColBERTConfig, backbone: nn.Module, tokenizer: Any):
        super().__init__(config, backbone, tokenizer)
        self.linear = nn.Linear(self.hidden_size, config.dim, bias=False)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(config.dim, self.hidden_size, generator=gen) * 0.02)
        self._marker_ids = {
            "query": self._marker_id(config.query_marker),
            "document": self._marker_id(config.document_marker),
        }

    def _marker_id(self, token: str | None) -> int | None:
        if token is None:
            return None
        ids = self.tokenizer.convert_tokens_to_ids([token])
        if not ids or ids[0] is None or ids[0] == self.tokenizer.unk_token_id:
            raise ValueError(
                f"marker token {token!r} is not in the tokenizer's vocabulary; pass "
                "query_marker=/document_marker= tokens it has, or None"
            )
        return int(ids[0])

    # ------------------------------------------------------------------ tokenisation

    def tokenize_queries(self, queries: Sequence[str]) -> dict[str, torch.Tensor]:
        check_texts(queries, "query")
        tok = self._tokenize_marked(queries, self.config.query_max_length, self._marker_ids["query"])
        if self.config.query_augmentation:
            tok = self._augment(tok)
        return tok

    def tokenize_candidates(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        check_texts(texts, "candidate")
        return self._tokenize_marked(texts, self.config.candidate_max_length, self._marker_ids["document"])

    def _tokenize_marked(self, texts: Sequence[str], max_length: int, marker: int | None) -> dict[str, torch.Tensor]:
        if marker is None:
            return self._tokenize(texts, max_length)
        tok = self._tokenize(texts, max_length - 1)
        ids, mask = tok["input_ids"], tok["attention_mask"]
        ids = torch.cat([ids[:, :1], torch.full_like(ids[:, :1], marker), ids[:, 1:]], dim=1)
        mask = torch.cat([mask[:, :1], mask[:, :1], mask[:, 1:]], dim=1)
        return {"input_ids": ids, "attention_mask": mask}

    def _augment(self, tok: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pad to query_max_length with [MASK]; the masks stay out of the attention mask."""
        ids, mask = tok["input_ids"], tok["attention_mask"]
        extra = self.config.query_max_length - ids.shape[1]
        if extra > 0:
            ids = F.pad(ids, (0, extra), value=self.tokenizer.pad_token_id)
            mask = F.pad(mask, (0, extra), value=0)
        ids = ids.masked_fill(mask == 0, self.tokenizer.mask_token_id)
        return {"input_ids": ids, "attention_mask": mask}

    def _query_vector_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Which query vectors take part in MaxSim: all of them under query augmentation."""
        if self.config.query_augmentation:
            return torch.ones_like(attention_mask, dtype=torch.bool)
        return attention_mask.bool()

    # ------------------------------------------------------------------ training path

    def token_vectors_torch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Tokens -> ``(N, L, dim)`` unit vectors, differentiable (padding rows included)."""
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.linear(states), dim=-1, eps=1e-8)

    def encode_query_batch(self, queries: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(vectors (B, Lq, dim), MaxSim mask (B, Lq))``."""
        return self.token_vectors_torch(**queries), self._query_vector_mask(queries["attention_mask"])

    def encode_candidate_batch(self, candidates: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(vectors (C, Lc, dim), mask (C, Lc))``."""
        return self.token_vectors_torch(**candidates), candidates["attention_mask"].bool()

    def score_matrix(self, query_batch, candidate_batch) -> torch.Tensor:
        """``(B, C)`` MaxSim scores of every query against every candidate."""
        (q, q_mask), (c, c_mask) = query_batch, candidate_batch
        return LI.maxsim_matrix(q, q_mask, c, c_mask)

    # ------------------------------------------------------------------ Scorer

    def _rep_dim(self) -> int:
        return self.config.dim

    def _candidate_side(self):
        return [*self.backbone.state_dict().items(), ("linear.weight", self.linear.weight)]

    def _fingerprint_extra(self) -> dict[str, Any]:
        return {"dim": self.config.dim, "document_marker": self.config.document_marker, "layout": "token vectors"}

    def _candidate_reps_batch(self, tokens):
        v = self.token_vectors_torch(**tokens)
        return v, tokens["attention_mask"].sum(-1), None

    @torch.inference_mode()
    def encode_query(self, query: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Online: ``(vectors (Lq, dim), mask (Lq,))``."""
        self.eval()
        tok = self.tokenize_queries([query])
        return self.token_vectors_torch(**tok)[0], self._query_vector_mask(tok["attention_mask"])[0]

    @torch.inference_mode()
    def score(self, query_state: tuple[torch.Tensor, torch.Tensor], reps: CandidateReps) -> torch.Tensor:
        """Online: ``(n,)`` MaxSim scores over each candidate's stored token vectors."""
        q, q_mask = (t.to(self.device) for t in query_state)
        if bool((reps.lengths < 1).any()):
            raise ValueError("every candidate needs at least one stored token vector")
        out = torch.empty(len(reps))
        # Length-sorted chunks, each trimmed to its longest candidate: less padding, same scores.
        for idx, m in self._length_sorted_batches(reps, SCORE_CHUNK):
            c, c_mask = self._reps_to_device(CandidateReps(reps.vectors[idx, :m], reps.lengths[idx]), self.config.dim)
            out[idx] = LI.maxsim(q, q_mask, c, c_mask).float().cpu()
        return out
