"""DeFormer (Cao et al. 2020): lower layers encode query and candidate separately, the upper
layers run jointly on each (query, candidate) pair.

Offline, each candidate's tokens go through the backbone's embeddings and its first
``separate_layers`` layers; those per-token states are stored (a variable number per candidate).
Online, the query goes through the same lower layers once; then, for each candidate, the upper
layers run over the concatenation ``[query states; candidate states]`` and a linear head on the
first token ([CLS]) gives the score.

Inputs are laid out as in the cross-encoder: query ``[CLS] q [SEP]`` with token type 0 at
positions 0.., candidate ``c [SEP]`` with token type 1. The candidate's positions cannot depend
on the query's length (it is encoded before any query is seen), so they start at the fixed
offset ``query_max_length`` (where the candidate of a longest query would start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from . import late_interaction as LI
from .backbone import bert_layers
from .base import CandidateReps, PairwiseModel
from .biencoder import Pooling, pool
from .config import BaselineConfig


@dataclass
class DeformerConfig(BaselineConfig):
    """Configuration of a :class:`Deformer`.

    Attributes:
        separate_layers: how many lower layers encode query and candidate separately; the rest
            run jointly. ``None``: all but the last two (layers 1-4 of a 6-layer MiniLM).
        pooling: ``"cls"`` (head on the first token) or ``"mean"`` over the pair.
        score_batch_size: pairs per upper-layer pass in :meth:`Deformer.score`.
    """

    separate_layers: int | None = None
    pooling: Pooling = "cls"
    score_batch_size: int = 64


class Deformer(PairwiseModel):
    """DeFormer over a BERT-family backbone, with a one-output linear head.

    Stored per candidate: its ``(tokens, d)`` lower-layer states (``pooled`` is None: build the
    store with ``with_pooled=False``). Query state: ``(states (Lq, d), mask (Lq,))`` after the
    lower layers.
    """

    MODEL_TYPE = "deformer"
    CONFIG_CLASS = DeformerConfig

    def __init__(self, config: DeformerConfig, backbone: nn.Module, tokenizer: Any):
        super().__init__(config, backbone, tokenizer)
        n = self.num_layers
        k = n - 2 if config.separate_layers is None else int(config.separate_layers)
        if not 1 <= k < n:
            raise ValueError(
                f"separate_layers must be in 1..{n - 1} for a {n}-layer backbone, got {k}"
            )
        self.separate_layers = k
        max_pos = int(backbone.config.max_position_embeddings)
        if config.query_max_length + config.candidate_max_length - 1 > max_pos:
            raise ValueError(
                f"query_max_length + candidate_max_length - 1 = "
                f"{config.query_max_length + config.candidate_max_length - 1} exceeds the "
                f"backbone's {max_pos} positions"
            )
        self.head = self._score_head()

    # ------------------------------------------------------------------ the two stages

    def _run_layers(self, states: torch.Tensor, mask: torch.Tensor, layers: Any) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        attn_mask = create_bidirectional_mask(
            config=self.backbone.config, inputs_embeds=states, attention_mask=mask.long()
        )
        for layer in layers:
            states = layer(states, attn_mask)
        return states

    def lower_queries(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[CLS] q [SEP]`` -> ``(B, Lq, d)`` states after the separate layers, differentiable."""
        x = self.backbone.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        return self._run_layers(x, attention_mask, bert_layers(self.backbone)[: self.separate_layers])

    def lower_candidates(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[CLS] c [SEP]`` (tokenize_candidates) -> ``(states (C, Lc-1, d), mask)`` of ``c [SEP]``."""
        ids, mask = input_ids[:, 1:], attention_mask[:, 1:]
        positions = self.config.query_max_length + torch.arange(ids.shape[1], device=ids.device)
        x = self.backbone.embeddings(
            input_ids=ids, token_type_ids=torch.ones_like(ids), position_ids=positions[None].expand(ids.shape[0], -1)
        )
        return self._run_layers(x, mask, bert_layers(self.backbone)[: self.separate_layers]), mask

    def upper_pairs(
        self, q: torch.Tensor, q_mask: torch.Tensor, c: torch.Tensor, c_mask: torch.Tensor
    ) -> torch.Tensor:
        """Aligned pairs of lower-layer states -> ``(P,)`` scores (joint upper layers + head)."""
        x, mask, _ = LI.concat_pairs(q, q_mask.bool(), c, c_mask.bool())
        states = self._run_layers(x, mask, bert_layers(self.backbone)[self.separate_layers :])
        return self.head(pool(states, mask, self.config.pooling))[:, 0]

    # ------------------------------------------------------------------ training path

    # forward (B x C upper-layer passes) and forward_grouped: see PairwiseModel.

    def _indexed_pair_scores(self, queries, candidates, qi, ci) -> torch.Tensor:
        q = self.lower_queries(**queries)
        c, c_mask = self.lower_candidates(**candidates)
        return self.upper_pairs(q[qi], queries["attention_mask"][qi], c[ci], c_mask[ci])

    # ------------------------------------------------------------------ Scorer

    def _candidate_side(self):
        keep = ("embeddings.",) + tuple(f"encoder.layer.{i}." for i in range(self.separate_layers))
        return [(k, v) for k, v in self.backbone.state_dict().items() if k.startswith(keep)]

    def _fingerprint_extra(self) -> dict[str, Any]:
        return {
            "dim": self.hidden_size,
            "separate_layers": self.separate_layers,
            "query_max_length": self.config.query_max_length,  # the candidates' position offset
            "layout": "lower-layer token states",
        }

    def _candidate_reps_batch(self, tokens):
        states, mask = self.lower_candidates(**tokens)
        return states, mask.sum(-1), None

    @torch.inference_mode()
    def encode_query(self, query: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Online: the query's lower-layer states ``(Lq, d)`` and mask, once per query."""
        self.eval()
        tok = self.tokenize_queries([query])
        return self.lower_queries(**tok)[0], tok["attention_mask"][0].bool()

    @torch.inference_mode()
    def score(self, query_state: tuple[torch.Tensor, torch.Tensor], reps: CandidateReps) -> torch.Tensor:
        """Online: ``(n,)`` scores; the upper layers run once per candidate, in length-sorted
        batches."""
        self.eval()
        q, q_mask = (t.to(self.device) for t in query_state)
        vectors, c_mask = self._reps_to_device(reps, self.hidden_size)
        out = torch.empty(len(reps))
        for idx, m in self._length_sorted_batches(reps, self.config.score_batch_size):
            p = len(idx)
            d_idx = idx.to(self.device)
            out[idx] = self.upper_pairs(
                q[None].expand(p, -1, -1), q_mask[None].expand(p, -1), vectors[d_idx, :m], c_mask[d_idx, :m]
            ).float().cpu()
        return out
