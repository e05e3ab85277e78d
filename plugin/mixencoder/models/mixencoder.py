"""MixEncoder (Wang et al., "Once is Enough"): light cross-attention from candidates to the query.

Offline, each candidate becomes k context embeddings ``E0`` (plus a mean-pooled vector).
Online, the query is encoded once by the backbone and its keys/values are kept at the
interaction layers; at each one, every candidate's E attends over [its own k rows; the query]
(Eq. 1) and a pooled row attends over the query to update a gated query state H (Eq. 2).
The score compares H with mean(E).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.activations import GELUActivation

from . import functional as MF
from .backbone import bert_layers
from .base import CandidateReps, RankingModel
from .config import MixEncoderConfig
from .quantize import Int8Linear, linear_columns, quantize_linear_layers

SCORE_CHUNK = 512  # candidates per step (any value gives the same scores): a step's (512, 1536) feed-forward activations stay in L2


@dataclass
class QueryState:
    """A batch of encoded queries: what the interaction layers read, computed once per query.

    Attributes:
        keys, values: per interaction layer, ``(B, q, H, dh)`` from that layer's own projections.
        mask: ``(B, q)`` bool, true on real tokens.
        pooled: ``(B, d)`` mean-pooled last-layer states (the dual-encoder query vector).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    pooled: torch.Tensor


@dataclass
class LayerQuery:
    """One query as one interaction layer's online scoring path multiplies by it (real tokens
    only, ``q`` of them; see :meth:`InteractionLayer.prepare_query`).

    Attributes:
        keys, values: ``(d, H*q)`` / ``(H*q, d)`` block-diagonal keys/values (Eq. 1).
        pooled_keys, pooled_keys_bias: Eq. 2's ``Q* K^T`` with ``h_query`` and the attention
            scale folded into the keys: scores are ``mean(E) @ pooled_keys + pooled_keys_bias``.
            ``None`` when not folded (then ``h_query`` runs per candidate).
        pooled_values: ``(H*q, d)`` Eq. 2's values with ``h_dense``'s weight folded in, or
            ``None`` (then ``h_dense`` runs per candidate).
    """

    keys: torch.Tensor
    values: torch.Tensor
    pooled_keys: torch.Tensor | None = None
    pooled_keys_bias: torch.Tensor | None = None
    pooled_values: torch.Tensor | None = None


def _copy(module: nn.Module) -> nn.Module:
    # Copies, not ties: the interaction modules start from the layer's weights and then train
    # apart from the backbone, which keeps encoding queries and candidates.
    return copy.deepcopy(module)


class FeedForward(nn.Module):
    """BERT's feed-forward block ``LN(W2 act(W1 x) + x)``, copied from a backbone layer."""

    def __init__(self, layer: nn.Module, dropout: float):
        super().__init__()
        self.fc_in = _copy(layer.intermediate.dense)
        self.act = layer.intermediate.intermediate_act_fn
        self.fc_out = _copy(layer.output.dense)
        self.norm = _copy(layer.output.LayerNorm)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.dropout(self.fc_out(self._inner(x)), self.dropout, self.training)
        return self.norm(y + x)

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        # An int8 layer applies BERT's exact GELU in its own output pass.
        if isinstance(self.fc_in, Int8Linear) and isinstance(self.act, GELUActivation) and self.act.act is F.gelu:
            return self.fc_in(x, post_op="gelu")
        return self.act(self.fc_in(x))


class InteractionLayer(nn.Module):
    """One interaction layer j: Eq. 1 updates E, Eq. 2 updates H. Weights start as layer j's."""

    def __init__(self, layer: nn.Module, num_heads: int, dropout: float):
        super().__init__()
        attn = layer.attention
        d = attn.self.query.in_features
        self.num_heads = num_heads
        self.dropout = dropout
        # Eq. 1: candidate rows -> Q', K', V'; then the attention-output and feed-forward blocks.
        self.query = _copy(attn.self.query)
        self.key = _copy(attn.self.key)
        self.value = _copy(attn.self.value)
        self.attn_out = _copy(attn.output.dense)
        self.attn_norm = _copy(attn.output.LayerNorm)
        self.ffn = FeedForward(layer, dropout)
        # Eq. 2: pooled E -> Q*; attention over the query; dense; gate; LayerNorm; feed-forward.
        self.h_query = _copy(attn.self.query)
        self.h_dense = _copy(attn.output.dense)
        self.h_norm = _copy(attn.output.LayerNorm)
        self.h_ffn = FeedForward(layer, dropout)
        self.gate = nn.Linear(3 * d, d)

    def forward(
        self,
        e: torch.Tensor,  # (B, C, k, d)
        h: torch.Tensor,  # (B, C, d)
        k_query: torch.Tensor,  # (B, q, H, dh)
        v_query: torch.Tensor,  # (B, q, H, dh)
        query_mask: torch.Tensor,  # (B, q)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        nh = self.num_heads
        # Eq. 1: E_j = Attn(Q', [K'; K_j], [V'; V_j]), then the layer's output blocks.
        ctx = MF.candidate_query_attention(
            MF.split_heads(self.query(e), nh),
            MF.split_heads(self.key(e), nh),
            MF.split_heads(self.value(e), nh),
            k_query,
            v_query,
            query_mask,
        )
        a = F.dropout(self.attn_out(MF.merge_heads(ctx)), self.dropout, self.training)
        e_new = self.ffn(self.attn_norm(a + e))  # (B, C, k, d)

        # Eq. 2: H_j = Gate(Attn(Q*, K_j, V_j), H_{j-1}) with Q* from mean(E_{j-1}).
        e_bar = e.mean(dim=2)  # (B, C, d)
        ctx_h = MF.pooled_query_attention(
            MF.split_heads(self.h_query(e_bar), nh), k_query, v_query, query_mask
        )
        new = F.dropout(self.h_dense(MF.merge_heads(ctx_h)), self.dropout, self.training)
        gated = MF.gated_update(self.gate(torch.cat([e_bar, new, h], dim=-1)), new, h)
        h_new = self.h_ffn(self.h_norm(gated))  # (B, C, d)
        return e_new, h_new

    # The online path below computes what ``forward`` computes for one query, reordered:
    # flat (n*k, d) rows, all heads per GEMM, h_query and h_dense folded into the query's
    # keys/values once per query when that pays (two (n, d) @ (d, d) GEMMs fewer per layer),
    # and the gate's H block skipped where H is zero. tests/test_fast_scoring.py checks it
    # against the equations.

    def prepare_query(self, k_query: torch.Tensor, v_query: torch.Tensor, *, fold: bool) -> LayerQuery:
        """One query's real-token keys/values ``(q, H, dh)`` at this layer -> :class:`LayerQuery`.

        ``fold``: fold ``h_query`` and ``h_dense`` into the keys/values, which costs
        ``2 d^2 H q`` multiply-adds once and saves ``2 d^2`` per candidate: worth it for more
        than ``H * q`` candidates.
        """
        keys, values = MF.block_diagonal_keys(k_query), MF.block_diagonal_values(v_query)
        if not fold:
            return LayerQuery(keys, values)
        scale = 1.0 / math.sqrt(k_query.shape[-1])
        # Q* K^T = (e W^T + b) K^T = e (W^T K^T) + b K^T; dense(P V) = P (V W_d^T) + b_d.
        return LayerQuery(
            keys=keys,
            values=values,
            pooled_keys=(self.h_query.weight.t() @ keys).mul_(scale),
            pooled_keys_bias=(self.h_query.bias @ keys).mul_(scale),
            pooled_values=values @ self.h_dense.weight.t(),
        )

    def candidate_projections(self, e: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Everything of this layer that reads the candidate's E alone, for ``e (n, k, d)``:
        ``(Q', K', V')``, each ``(n, k, d)`` (Eq. 1), and the gate's mean-E term with the gate's
        bias, ``(n, d)`` (Eq. 2). At the first layer E is E0, so these can be stored offline."""
        n, k, d = e.shape
        flat = e.reshape(n * k, d)
        gate_e = linear_columns(self.gate, 0, d, with_bias=True)(e[:, 0] if k == 1 else e.mean(1))
        return (*(proj(flat).view(n, k, d) for proj in (self.query, self.key, self.value)), gate_e)

    def score_one_query(
        self,
        e: torch.Tensor,  # (n, k, d)
        h: torch.Tensor | None,  # (n, d); None where H is zero (the first layer)
        query: LayerQuery,
        projections: tuple[torch.Tensor, ...] | None = None,  # candidate_projections(e), if stored
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` for one query (eval mode, no dropout): ``(E_j (n, k, d), H_j (n, d))``."""
        n, k, d = e.shape
        q_c, k_c, v_c, gate_e = self.candidate_projections(e) if projections is None else projections
        # Eq. 1
        ctx = MF.candidate_query_attention_flat(q_c, k_c, v_c, query.keys, query.values, self.num_heads)
        flat = e.reshape(n * k, d)
        e_new = self.ffn(self.attn_norm(self.attn_out(ctx) + flat)).view(n, k, d)
        # Eq. 2
        e_bar = e[:, 0] if k == 1 else e.mean(1)
        if query.pooled_keys is None:
            scores = (self.h_query(e_bar) @ query.keys).mul_(1.0 / math.sqrt(d // self.num_heads))
        else:
            scores = torch.addmm(query.pooled_keys_bias, e_bar, query.pooled_keys)
        probs = MF.pooled_query_attention_flat(scores, self.num_heads)
        if query.pooled_values is None:
            new = self.h_dense(probs @ query.values)
        else:
            new = torch.addmm(self.h_dense.bias, probs, query.pooled_values)
        logits = gate_e + linear_columns(self.gate, d, 2 * d, with_bias=False)(new)
        if h is None:
            gated = torch.sigmoid(logits) * new  # g * new + (1 - g) * 0
        else:
            logits = logits + linear_columns(self.gate, 2 * d, 3 * d, with_bias=False)(h)
            gated = MF.gated_update(logits, new, h)
        return e_new, self.h_ffn(self.h_norm(gated))


class MixEncoder(RankingModel):
    """MixEncoder over any BERT-family encoder; implements the :class:`~mixencoder.models.Scorer`
    protocol (encode candidates offline, encode the query once, score).

    Example:
        >>> model = MixEncoder.from_pretrained()  # bundled all-MiniLM-L6-v2, offline
        >>> model.score_texts("what is a lobster roll", ["A lobster roll is a sandwich.", "Rain."])
    """

    MODEL_TYPE = "mixencoder"
    encodes_pooled = True
    supports_dense_search = True
    CONFIG_CLASS = MixEncoderConfig

    def __init__(self, config: MixEncoderConfig, backbone: nn.Module, tokenizer: Any):
        super().__init__(config, backbone, tokenizer)
        bcfg = backbone.config
        layers = bert_layers(backbone)
        self.layer_ids = config.resolved_layers(len(layers))
        d = self.hidden_size
        dropout = float(getattr(bcfg, "hidden_dropout_prob", 0.1))

        word_embeddings = backbone.get_input_embeddings().weight
        if config.strategy == "S":
            # Start every special token at the [CLS] embedding: with k = 1 the untrained
            # candidate forward is then exactly the backbone's own forward over the text.
            cls_id = tokenizer.cls_token_id
            self.special_embeddings = nn.Parameter(
                word_embeddings[cls_id].detach().clone().repeat(config.k, 1)
            )
        else:
            # Near-zero codes attend almost uniformly, so each context embedding starts as
            # (nearly) the mean-pooled candidate; the noise lets the k codes diverge.
            gen = torch.Generator().manual_seed(0)
            self.context_codes = nn.Parameter(torch.randn(config.k, d, generator=gen) * 0.02)

        self.interaction = nn.ModuleList(
            InteractionLayer(layers[j - 1], self.num_heads, dropout) for j in self.layer_ids
        )
        if config.pooled_residual and config.mixing == "scalar":
            self.alpha = nn.Parameter(torch.zeros(()))
            self.beta = nn.Parameter(torch.zeros(()))
        elif config.pooled_residual:
            # Zero maps: step 0 is the dual encoder, yet the gradient reaching A (B) is the
            # full outer product of dL/dq (dL/dc) and h (mean E), not one scalar's worth.
            self.mix_query = nn.Linear(d, d, bias=False)
            self.mix_candidate = nn.Linear(d, d, bias=False)
            nn.init.zeros_(self.mix_query.weight)
            nn.init.zeros_(self.mix_candidate.weight)
        log_scale = torch.tensor(math.log(config.scale), dtype=torch.float32)
        if config.learnable_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self.classifier = nn.Linear(3 * d, config.num_labels) if config.num_labels else None
        # The query side's own backbone (a copy; a saved model's weights overwrite it on load).
        self.query_backbone = copy.deepcopy(backbone) if config.separate_query_encoder else None
        if config.quantization == "int8":
            self._quantize_int8()

    def _quantize_int8(self) -> None:
        # After every module exists, so that the interaction layers copied the backbone's float
        # weights; a saved float32 model's weights are quantized as they load (Int8Linear's
        # state-dict hook). A backbone's tokens differ widely in magnitude ([CLS], [SEP] and
        # punctuation carry outliers), so its activations get one scale per token; the
        # interaction's rows (one per candidate, after LayerNorm) share one scale per tensor,
        # which lets oneDNN fuse the dequantization into the GEMM.
        for backbone in (self.backbone, self.query_backbone):
            if backbone is not None:
                quantize_linear_layers(backbone, per_row=True)
        quantize_linear_layers(self)

    def with_separate_query_encoder(self) -> MixEncoder:
        """A copy of this model whose queries go through their own copy of the backbone.

        It scores exactly as this model and has the same candidate fingerprint, so it serves
        every store this model built; training its query side (``train_on_store``) keeps that.
        """
        if self.config.separate_query_encoder:
            return copy.deepcopy(self)
        clone = copy.deepcopy(self)
        clone.config = dataclasses.replace(clone.config, separate_query_encoder=True)
        clone.query_backbone = copy.deepcopy(clone.backbone)
        return clone

    def with_inference_options(
        self, *, candidate_layout: str | None = None, quantization: str | None = None
    ) -> MixEncoder:
        """A copy of this model with another candidate layout and/or quantization.

        The weights are this model's (int8 codes are quantized from its float weights). Both
        options enter :meth:`candidate_fingerprint`, so the copy needs a store of its own.

        Raises:
            ValueError: on an unknown option, or asking an int8 model for float32 (the float
                weights are gone; load the saved float model instead).
        """
        layout = self.config.candidate_layout if candidate_layout is None else candidate_layout
        quant = self.config.quantization if quantization is None else quantization
        if self.config.quantization == "int8" and quant != "int8":
            raise ValueError("an int8 model cannot be turned back into float32; load the float model instead")
        clone = copy.deepcopy(self)
        clone.config = dataclasses.replace(clone.config, candidate_layout=layout, quantization=quant)
        if quant == "int8" and self.config.quantization != "int8":
            clone._quantize_int8()
        return clone.eval()

    @property
    def query_side_backbone(self) -> nn.Module:
        """The backbone that encodes queries (``query_backbone`` if separate, else ``backbone``)."""
        return self.query_backbone if self.query_backbone is not None else self.backbone

    # ------------------------------------------------------------------ capabilities

    @property
    def num_labels(self) -> int:
        return int(self.config.num_labels)

    def new_parameter_names(self) -> list[str]:
        """Parameters with no pre-trained counterpart (the trainer may give them a larger
        learning rate): gates, special tokens or context codes, mixing scalars, scale, head.
        The interaction layers' other weights are copies of backbone layers, so not new. The
        zero-initialised mixing maps are left out too: one Adam step moves every entry of a
        ``d x d`` map by about the learning rate, so its output by ``lr * |h|_1`` per coordinate,
        already a few per cent of the pooled vector at the backbone's rate."""
        return [
            n for n, _ in self.named_parameters()
            if not n.startswith(("backbone.", "query_backbone.", "mix_"))
            and (not n.startswith("interaction.") or ".gate." in n)
        ]

    def mixing_summary(self) -> dict[str, float]:
        """How much of the interaction reaches the score (for training logs): the scalars
        ``alpha``/``beta``, or the Frobenius norms of the mixing maps; empty without
        ``pooled_residual`` (the score is then the interaction alone)."""
        if not self.config.pooled_residual:
            return {}
        if self.config.mixing == "scalar":
            return {"alpha": float(self.alpha.detach()), "beta": float(self.beta.detach())}
        return {
            "mix_query_norm": float(self.mix_query.weight.detach().norm()),
            "mix_candidate_norm": float(self.mix_candidate.weight.detach().norm()),
        }

    @property
    def needs_pooled(self) -> bool:
        """The pooled residual compares against the stored pooled vectors."""
        return bool(self.config.pooled_residual)

    def ablated(self):
        """The backbone's pooled vectors alone (what ``pooled_residual`` starts from); ``None``
        without the pooled residual, where no interaction-free score exists."""
        if not self.config.pooled_residual:
            return None
        from .dual import DualEncoder  # dual.py imports this module

        return DualEncoder(self)

    @property
    def search_metric(self) -> str:
        """The dense-search metric matching ``config.similarity``, for candidate stores:
        ``"cosine"`` when the model scores by cosine, else ``"ip"`` (inner product)."""
        return "cosine" if self.config.similarity == "cosine" else "ip"

    @property
    def special_or_codes(self) -> torch.Tensor:
        return self.special_embeddings if self.config.strategy == "S" else self.context_codes

    def _candidate_token_budget(self) -> int:
        # The S strategy puts k special tokens where [CLS] was: k - 1 extra positions.
        extra = self.config.k - 1 if self.config.strategy == "S" else 0
        return self.config.candidate_max_length - extra

    # ------------------------------------------------------------------ training path (grads)

    def encode_candidates_torch(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidates -> ``(E0 (C, k, d), pooled (C, d))``, differentiable."""
        k = self.config.k
        if self.config.strategy == "S":
            words = self.backbone.get_input_embeddings()(input_ids[:, 1:])  # drop [CLS]
            special = self.special_embeddings.unsqueeze(0).expand(input_ids.shape[0], -1, -1)
            inputs = torch.cat([special.to(words.dtype), words], dim=1)  # (C, k + L - 1, d)
            mask = torch.cat([attention_mask.new_ones(input_ids.shape[0], k), attention_mask[:, 1:]], 1)
            states = self._backbone(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
            e0 = states[:, :k]
        else:
            mask = attention_mask
            states = self._backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state
            logits = torch.einsum("kd,cld->ckl", self.context_codes, states)
            logits = logits.masked_fill(~mask.bool()[:, None, :], torch.finfo(logits.dtype).min)
            e0 = torch.softmax(logits, dim=-1) @ states  # (C, k, d)
        return e0, MF.mean_pool(states, mask.bool())

    def encode_queries_torch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> QueryState:
        """Queries -> :class:`QueryState`, differentiable. One backbone pass per query batch."""
        encoder = self.query_side_backbone
        out = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        layers = encoder.encoder.layer
        keys, values = [], []
        for j in self.layer_ids:
            x = out.hidden_states[j - 1]  # the input of layer j (1-based)
            attn = layers[j - 1].attention.self
            keys.append(self._interaction_input(MF.split_heads(attn.key(x), self.num_heads)))
            values.append(self._interaction_input(MF.split_heads(attn.value(x), self.num_heads)))
        mask = attention_mask.bool()
        return QueryState(keys, values, mask, MF.mean_pool(out.last_hidden_state, mask))

    def _interaction_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the interaction layers read it: detached from the backbone's graph when
        ``interaction_trains_backbone`` is off (then only the pooled vectors train the backbone)."""
        return x if self.config.interaction_trains_backbone else x.detach()

    def interact(self, query: QueryState, e0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the interaction layers. ``e0`` is ``(B, C, k, d)``: candidate c of query b.

        Returns ``(h, e)``, both ``(B, C, d)``: the candidate-aware query state and mean(E).
        """
        e = self._interaction_input(e0)
        h = e0.new_zeros(e0.shape[:2] + e0.shape[-1:])  # H_0 = 0
        for layer, k_q, v_q in zip(self.interaction, query.keys, query.values):
            e, h = layer(e, h, k_q, v_q, query.mask)
        return h, e.mean(dim=2)

    def head_vectors(
        self, query: QueryState, e0: torch.Tensor, cand_pooled: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two vectors the heads compare, ``(B, C, d)`` each (``e0`` as in :meth:`interact`)."""
        h, e = self.interact(query, e0)
        return self._mixed(h, e, query.pooled[:, None, :], cand_pooled)

    def _mixed(
        self, h: torch.Tensor, e: torch.Tensor, query_pooled: torch.Tensor, cand_pooled: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, mean E)`` joined with the pooled vectors as ``pooled_residual``/``mixing`` say."""
        if not self.config.pooled_residual:
            return h, e
        if cand_pooled is None:
            raise ValueError(
                "this model (pooled_residual=True) needs the candidates' pooled vectors; "
                "build the store with with_pooled=True"
            )
        if self.config.mixing == "scalar":
            return query_pooled + self.alpha * h, cand_pooled + self.beta * e
        return query_pooled + self.mix_query(h), cand_pooled + self.mix_candidate(e)

    def similarity(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return MF.similarity(h, e, self.config.similarity, self.log_scale.exp())

    def encode_query_batch(self, queries: dict[str, torch.Tensor]) -> QueryState:
        return self.encode_queries_torch(**queries)

    def encode_candidate_batch(self, candidates: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E0 (C, k, d), pooled (C, d))``."""
        return self.encode_candidates_torch(**candidates)

    def score_matrix(
        self, query_batch: QueryState, candidate_batch: tuple[torch.Tensor, torch.Tensor | None]
    ) -> torch.Tensor:
        """``(B, C)`` scores of every candidate for every query (in-batch negatives)."""
        e0, pooled = candidate_batch
        b = query_batch.mask.shape[0]
        h, e = self.head_vectors(
            query_batch, e0.unsqueeze(0).expand(b, -1, -1, -1), None if pooled is None else pooled.unsqueeze(0)
        )
        return self.similarity(h, e)

    def classify_torch(
        self, queries: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Training path for pair classification (NLI): ``(B, num_labels)`` logits of the
        aligned pairs (query i, candidate i), over ``[h; e; |h - e|]``."""
        if self.classifier is None:
            raise ValueError("this model has no classifier head; build it with num_labels > 0")
        query = self.encode_queries_torch(**queries)
        e0, pooled = self.encode_candidates_torch(**candidates)
        h, e = self.head_vectors(query, e0.unsqueeze(1), pooled.unsqueeze(1))
        return self.classifier(MF.pair_features(h, e))[:, 0]

    def _backbone(self, **kwargs: Any) -> Any:
        return self.backbone(**kwargs)

    # ------------------------------------------------------------------ inference (Scorer)

    def _candidate_side(self):
        # A precomputed store holds the first interaction layer's outputs too.
        named = list(self.backbone.state_dict().items())
        if self.config.candidate_layout == "precomputed":
            named += [(f"interaction.0.{n}", t) for n, t in self.interaction[0].state_dict().items()]
        return named

    def _candidate_side_unnamed(self) -> list[torch.Tensor]:
        return [self.special_or_codes]

    def _fingerprint_extra(self) -> dict[str, Any]:
        # The layout and the quantization appear only when they are not the defaults, so stores
        # built before those options existed keep serving default models.
        extra = {"strategy": self.config.strategy, "k": self.config.k, "dim": self.hidden_size}
        if self.config.candidate_layout != "embeddings":
            extra["candidate_layout"] = self.config.candidate_layout
        if self.config.quantization != "none":
            extra["quantization"] = self.config.quantization
        return extra

    def _candidate_reps_batch(self, tokens):
        """E0 ``(b, k, d)``, then the precomputed rows if ``candidate_layout="precomputed"``."""
        e0, pooled = self.encode_candidates_torch(**tokens)
        if self.config.candidate_layout == "precomputed":
            e0 = self._with_precomputed_rows(e0.float())
        return e0, torch.full((e0.shape[0],), self.rows_per_candidate, dtype=torch.int64), pooled

    @property
    def rows_per_candidate(self) -> int:
        """Stored vectors per candidate: k (E0), or 4k + 1 with the precomputed layout
        (E0, then the first interaction layer's Q', K', V' and gate term)."""
        k = self.config.k
        return 4 * k + 1 if self.config.candidate_layout == "precomputed" else k

    def _with_precomputed_rows(self, e0: torch.Tensor) -> torch.Tensor:
        """``E0 (n, k, d)`` -> ``(n, 4k + 1, d)``: E0, Q', K', V', then the gate's mean-E term."""
        q_c, k_c, v_c, gate_e = self.interaction[0].candidate_projections(e0)
        return torch.cat([e0, q_c, k_c, v_c, gate_e.unsqueeze(1)], dim=1)

    @torch.inference_mode()
    def precompute(self, reps: CandidateReps) -> CandidateReps:
        """Embedding-layout reps (E0 alone, as a default-layout model of the same weights
        encodes them) -> this model's precomputed layout, without running the backbone again.

        Raises:
            ValueError: this model's ``candidate_layout`` is not ``"precomputed"``, or ``reps``
                are not k rows per candidate.
        """
        k = self.config.k
        if self.config.candidate_layout != "precomputed":
            raise ValueError("precompute() needs a model with candidate_layout='precomputed'")
        if reps.vectors.shape[-1] != self.hidden_size or bool((reps.lengths != k).any()):
            raise ValueError(f"precompute() takes embedding-layout reps of k={k} rows of d={self.hidden_size}")
        vectors = self._with_precomputed_rows(reps.vectors[:, :k].to(self.device, torch.float32)).cpu()
        return CandidateReps(vectors, torch.full_like(reps.lengths, self.rows_per_candidate), reps.pooled)

    @torch.inference_mode()
    def encode_query(self, query: str) -> QueryState:
        """Online: encode one query, once, independent of its candidates."""
        self.eval()
        return self.encode_queries_torch(**self.tokenize_queries([query]))

    @torch.inference_mode()
    def encode_queries_pooled(self, queries: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """``(n, d)`` mean-pooled query vectors: the dual-encoder side matching the stored
        pooled candidate vectors (for dense first-stage search)."""
        self.eval()
        out = [
            self.encode_queries_torch(**self.tokenize_queries(queries[i : i + batch_size])).pooled
            for i in range(0, len(queries), batch_size)
        ]
        return torch.cat(out).float().cpu().numpy() if out else np.zeros((0, self.hidden_size), np.float32)

    @torch.inference_mode()
    def score(self, query_state: QueryState, reps: CandidateReps) -> torch.Tensor:
        """Online: ``(n,)`` scores of the candidates in ``reps`` for one encoded query.

        The same scores as :meth:`forward`, computed the way one query and many candidates
        want it (see :meth:`InteractionLayer.score_one_query`); with the precomputed layout the
        first interaction layer reads its candidate-only terms from ``reps``.
        """
        self.eval()
        if query_state.mask.shape[0] != 1:
            raise ValueError("score() takes one encoded query; use forward() for batches")
        k, rows = self.config.k, self.rows_per_candidate
        if reps.vectors.shape[-1] != self.hidden_size or bool((reps.lengths != rows).any()):
            raise ValueError(
                f"candidate reps of shape {tuple(reps.vectors.shape)} do not fit this model "
                f"(k={k}, d={self.hidden_size}, {rows} rows per candidate with "
                f"candidate_layout={self.config.candidate_layout!r}); were they stored by another model?"
            )
        real = query_state.mask[0]  # padding dropped here instead of masked in every layer
        fold = len(reps) > self.num_heads * int(real.sum())
        layer_queries = [
            layer.prepare_query(k_q[0][real], v_q[0][real], fold=fold)
            for layer, k_q, v_q in zip(self.interaction, query_state.keys, query_state.values)
        ]
        query_pooled = query_state.pooled[0][None].float()
        out = []
        for start in range(0, len(reps), SCORE_CHUNK):
            chunk = reps.vectors[start : start + SCORE_CHUNK, :rows].to(self.device, torch.float32)
            pooled = None if reps.pooled is None else reps.pooled[start : start + SCORE_CHUNK].to(self.device, torch.float32)
            e, h = chunk[:, :k], None
            stored = None
            if self.config.candidate_layout == "precomputed":
                stored = (chunk[:, k : 2 * k], chunk[:, 2 * k : 3 * k], chunk[:, 3 * k : 4 * k], chunk[:, 4 * k])
            for layer, layer_query in zip(self.interaction, layer_queries):
                e, h = layer.score_one_query(e, h, layer_query, stored)
                stored = None  # only the first layer's inputs are candidate-only
            h, e_mean = self._mixed(h, e[:, 0] if k == 1 else e.mean(1), query_pooled, pooled)
            out.append(self.similarity(h, e_mean).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    @torch.inference_mode()
    def predict(
        self, pairs: Sequence[tuple[str, str]], batch_size: int = 32, show_progress_bar: bool | None = None
    ) -> np.ndarray:
        """Classifier probabilities ``(n, num_labels)`` for (premise, hypothesis) pairs; for a
        model without a classifier head (``num_labels=0``), relevance scores ``(n,)`` as
        :meth:`RankingModel.predict` gives them."""
        if self.classifier is None:
            return super().predict(pairs, batch_size, show_progress_bar)
        self.eval()
        out = []
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            logits = self.classify_torch(
                self.tokenize_queries([p for p, _ in chunk]),
                self.tokenize_candidates([c for _, c in chunk]),
            )
            out.append(torch.softmax(logits.float(), -1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.config.num_labels), np.float32)
