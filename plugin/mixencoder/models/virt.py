"""VIRT (Li et al. 2022): a Siamese (dual) encoder trained with virtual-interaction distillation
from a cross-encoder, plus a light interaction at the last layer.

Our reading of the method, kept simple:

* Encoding: query and candidate go through one backbone separately (a dual encoder). Every
  candidate's last-layer token states are stored (a variable number per candidate), which is
  what the interaction needs and what the paper's storage column counts.
* Interaction (online, per candidate; ``interaction=True``): cross-attention at the last layer
  between the query's token states X and the candidate's Y, ``X~ = softmax(X Y^T / sqrt d) Y`` and
  ``Y~ = softmax(Y X^T / sqrt d) X``; each side is summarised as
  ``u = W [mean X; mean X~; mean X - mean X~; mean (X * X~)]`` (likewise v from Y, Y~) and the
  score is ``cosine(u, v) x scale``. W starts as ``[I 0 0 0]``, so the untrained model scores
  exactly like the mean-pooled dual encoder. ``interaction=False``: the plain dual score
  ``cosine(mean X, mean Y) x scale`` over the same stored states.
* Training: the dual-encoder loss (in-batch negatives through ``forward``) plus the virtual
  interaction loss :func:`virt_distillation_loss`: at every layer, the attention that query
  tokens would pay to candidate tokens (and back) if they were encoded together, computed from
  the separately encoded states with the layer's own query/key projections, is distilled from a
  cross-encoder's attention on the concatenated pair (its query->candidate block, renormalised
  over the candidate tokens). :meth:`VIRT.distillation_loss` computes it against a
  :class:`~mixencoder.models.cross.CrossEncoder` teacher (same tokenizer, depth and heads).

To train with it, pass a (trained) teacher and a weight ``lambda > 0``; each step's loss is then
``in-batch loss + lambda * distillation_loss`` over each query's positive and hard negatives::

    from mixencoder.training import TrainingConfig, train
    config = TrainingConfig(distillation_weight=1.0, hard_negatives_per_query=1)
    train(virt, examples, config, output_dir="runs/virt", teacher=cross_encoder)

(or ``mixencoder train --model-type virt --teacher CROSS_DIR --distillation-weight 1``). The
teacher is frozen and not checkpointed: resume with the same teacher. Without a teacher VIRT
trains as a plain dual encoder with the last-layer interaction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn as nn

from . import functional as MF
from . import late_interaction as LI
from .backbone import bert_layers
from .base import CandidateReps, RankingModel
from .config import BaselineConfig

_NEG = torch.finfo(torch.float32).min
SCORE_CHUNK = 128  # candidates per interaction step; any value gives the same scores


@dataclass
class VIRTConfig(BaselineConfig):
    """Configuration of a :class:`VIRT` model.

    Attributes:
        interaction: score with the last-layer interaction (True) or the plain dual score.
        similarity: ``"cosine"`` (x ``scale``) or ``"dot"``.
        scale: multiplier on cosine scores.
    """

    interaction: bool = True
    similarity: Literal["dot", "cosine"] = "cosine"
    scale: float = 20.0


def virt_interaction(
    x: torch.Tensor, x_mask: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention between the two sides' last-layer token states, per pair.

    Args:
        x: ``(P, Lx, d)``, x_mask ``(P, Lx)``; y: ``(P, Ly, d)``, y_mask ``(P, Ly)`` (``P`` pairs;
            a leading dimension of 1 broadcasts).

    Returns:
        ``(x~ (P, Lx, d), y~ (P, Ly, d))``: each token's attention-weighted view of the other side.
    """
    logits = torch.einsum("pxd,pyd->pxy", x, y) / math.sqrt(x.shape[-1])
    a = torch.softmax(logits.masked_fill(~y_mask[:, None, :], _NEG), dim=-1)
    b = torch.softmax(logits.transpose(1, 2).masked_fill(~x_mask[:, None, :], _NEG), dim=-1)
    return a @ y, b @ x


def fusion_features(h: torch.Tensor, h_tilde: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[mean h; mean h~; mean h - mean h~; mean (h * h~)]`` over real tokens -> ``(P, 4d)``."""
    mean_h = MF.mean_pool(h, mask)
    mean_t = MF.mean_pool(h_tilde, mask)
    return torch.cat([mean_h, mean_t, mean_h - mean_t, MF.mean_pool(h * h_tilde, mask)], dim=-1)


def virt_pair_features(
    x: torch.Tensor, x_mask: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fusion_features` of both sides after :func:`virt_interaction`, computed without
    materialising ``y~`` (``(P, Ly, d)``, the large side): with ``B`` the y-over-x attention,
    ``mean_j y~_j = (mean_j B_j) X`` and ``mean_j (y_j * y~_j) = mean_j sum_i B_ji (y_j * x_i)
    = sum_i x_i * (B^T Y)_i / |y|``, so only ``(P, Lx, d)`` tensors are formed.

    Returns:
        ``(features of x (P, 4d), features of y (P, 4d))``; equal to
        ``fusion_features(x, x~, x_mask)`` and ``fusion_features(y, y~, y_mask)``.
    """
    p = max(x.shape[0], y.shape[0])
    x, y = x.expand(p, -1, -1), y.expand(p, -1, -1)
    x_mask, y_mask = x_mask.expand(p, -1), y_mask.expand(p, -1)
    logits = torch.bmm(x, y.transpose(1, 2)) / math.sqrt(x.shape[-1])  # (P, Lx, Ly)
    a = torch.softmax(logits.masked_fill(~y_mask[:, None, :], _NEG), dim=-1)
    x_t = torch.bmm(a, y)  # (P, Lx, d)
    b = torch.softmax(logits.masked_fill(~x_mask[:, :, None], _NEG), dim=1)  # over x, per y token
    b = b * y_mask[:, None, :].to(b.dtype)  # padded y tokens take no part in y's means
    n_y = y_mask.sum(-1, keepdim=True).clamp(min=1).to(x.dtype)  # (P, 1)
    yb = torch.bmm(b, y)  # (P, Lx, d): sum_j B_ji y_j
    mean_y = MF.mean_pool(y, y_mask)
    mean_yt = torch.bmm(b.sum(-1, keepdim=True).transpose(1, 2), x)[:, 0] / n_y
    mean_yy = (x * yb).sum(1) / n_y
    fx = fusion_features(x, x_t, x_mask)
    fy = torch.cat([mean_y, mean_yt, mean_y - mean_yt, mean_yy], dim=-1)
    return fx, fy


def virt_distillation_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    row_mask: torch.Tensor,
    col_mask: torch.Tensor,
    kind: Literal["kl", "mse"] = "kl",
) -> torch.Tensor:
    """Virtual-interaction loss for one direction at one layer.

    Args:
        student_logits: ``(P, H, R, K)`` attention logits of the R tokens of one text over the K
            tokens of the other, computed from the separately encoded states.
        teacher_probs: ``(P, H, R, K)`` the same block of the teacher's attention probabilities
            over the concatenated pair (rows sum to less than 1: the block is renormalised here).
        row_mask: ``(P, R)`` real rows; col_mask: ``(P, K)`` real columns.
        kind: ``"kl"`` (KL(teacher || student), per row) or ``"mse"`` between the distributions.

    Returns:
        Scalar: the mean over real rows and heads.
    """
    col = col_mask[:, None, None, :]
    t = teacher_probs.masked_fill(~col, 0.0)
    t = t / t.sum(-1, keepdim=True).clamp_min(1e-12)
    log_s = torch.log_softmax(student_logits.masked_fill(~col, _NEG), dim=-1)
    if kind == "kl":
        per_row = (t * (torch.log(t.clamp_min(1e-12)) - log_s)).masked_fill(~col, 0.0).sum(-1)
    elif kind == "mse":
        per_row = ((t - log_s.exp()) ** 2).masked_fill(~col, 0.0).sum(-1)
    else:
        raise ValueError(f"unknown kind {kind!r}; expected 'kl' or 'mse'")
    rows = row_mask[:, None, :].to(per_row.dtype).expand_as(per_row)
    return (per_row * rows).sum() / rows.sum().clamp_min(1.0)


class VIRT(RankingModel):
    """VIRT over a BERT-family backbone (see the module docstring).

    Stored per candidate: its ``(tokens, d)`` last-layer states, and ``pooled`` = their mean (the
    Siamese view, for dense search; build the store ``with_pooled=False`` to rerank only).
    Query state: ``(states (Lq, d), mask (Lq,))``.
    """

    MODEL_TYPE = "virt"
    encodes_pooled = True
    supports_dense_search = True
    CONFIG_CLASS = VIRTConfig
    supports_distillation = True

    def __init__(self, config: VIRTConfig, backbone: nn.Module, tokenizer: Any):
        super().__init__(config, backbone, tokenizer)
        d = self.hidden_size
        self.fuse = nn.Linear(4 * d, d)
        with torch.no_grad():
            self.fuse.weight.zero_()
            self.fuse.weight[:, :d].copy_(torch.eye(d))
            self.fuse.bias.zero_()

    # ------------------------------------------------------------------ training path

    def token_states_torch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Texts -> ``(N, L, d)`` last-layer token states, differentiable."""
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def pair_scores(self, x: torch.Tensor, x_mask: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
        """Aligned (or broadcast: a leading dimension of 1) pairs of token states -> ``(P,)``."""
        x_mask, y_mask = x_mask.bool(), y_mask.bool()
        if self.config.interaction:
            fx, fy = virt_pair_features(x, x_mask, y, y_mask)
            u, v = self.fuse(fx), self.fuse(fy)
        else:
            u, v = MF.mean_pool(x, x_mask), MF.mean_pool(y, y_mask)
            u, v = u.expand(max(len(u), len(v)), -1), v.expand(max(len(u), len(v)), -1)
        return MF.similarity(u, v, self.config.similarity, self.config.scale)

    def encode_query_batch(self, queries: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(states (B, Lq, d), mask (B, Lq))``."""
        return self.token_states_torch(**queries), queries["attention_mask"].bool()

    def encode_candidate_batch(self, candidates: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(states (C, Lc, d), mask (C, Lc))``."""
        return self.token_states_torch(**candidates), candidates["attention_mask"].bool()

    def score_matrix(self, query_batch, candidate_batch) -> torch.Tensor:
        """``(B, C)``: the interaction score of every (query, candidate) pair."""
        (x, x_mask), (y, y_mask) = query_batch, candidate_batch
        b, c = x.shape[0], y.shape[0]
        qi = torch.arange(b, device=x.device).repeat_interleave(c)
        ci = torch.arange(c, device=x.device).repeat(b)
        return self.pair_scores(x[qi], x_mask[qi], y[ci], y_mask[ci]).view(b, c)

    def distillation_loss(
        self,
        teacher: nn.Module,
        queries: dict[str, torch.Tensor],
        candidates: dict[str, torch.Tensor],
        *,
        layers: Sequence[int] | None = None,
        kind: Literal["kl", "mse"] = "kl",
    ) -> torch.Tensor:
        """The virtual-interaction loss of the aligned pairs (query i, candidate i).

        Args:
            teacher: a :class:`~mixencoder.models.cross.CrossEncoder` with the same tokenizer,
                depth and number of heads (its attention is computed without gradients).
            queries, candidates: this model's ``tokenize_queries`` / ``tokenize_candidates`` of
                B queries and their B candidates.
            layers: 1-based layers to distill (default: all).
            kind: see :func:`virt_distillation_loss`.

        Returns:
            Scalar: the mean over the layers of the query->candidate and candidate->query losses.
        """
        t_layers, s_layers = bert_layers(teacher.backbone), bert_layers(self.backbone)
        if len(t_layers) != len(s_layers) or teacher.num_heads != self.num_heads:
            raise ValueError(
                f"teacher has {len(t_layers)} layers x {teacher.num_heads} heads, the student "
                f"{len(s_layers)} x {self.num_heads}; VIRT distills layer by layer"
            )
        layers = list(layers) if layers is not None else list(range(1, len(s_layers) + 1))
        q_ids, q_mask = queries["input_ids"], queries["attention_mask"].bool()
        c_mask = candidates["attention_mask"].bool()
        hs_q = self.backbone(**queries, output_hidden_states=True).hidden_states
        hs_c = self.backbone(**candidates, output_hidden_states=True).hidden_states
        with torch.no_grad():
            ids, mask, segment = LI.concat_pairs(
                q_ids, q_mask, candidates["input_ids"][:, 1:], c_mask[:, 1:]
            )
            hs_t = teacher.backbone(
                input_ids=ids, attention_mask=mask.long(), token_type_ids=segment * mask.long(),
                output_hidden_states=True,
            ).hidden_states
        lq, lc = q_ids.shape[1], c_mask.shape[1] - 1  # candidate tokens after its [CLS]
        len_q = q_mask.sum(-1)
        cols = (len_q[:, None] + torch.arange(lc, device=ids.device)[None]).clamp(max=ids.shape[1] - 1)
        rows_q = torch.arange(lq, device=ids.device).clamp(max=ids.shape[1] - 1)
        total = []
        for j in layers:
            s_attn, t_attn = s_layers[j - 1].attention.self, t_layers[j - 1].attention.self
            with torch.no_grad():
                probs = _attention_probs(t_attn, hs_t[j - 1], mask, self.num_heads)  # (B, H, L, L)
                h = probs.shape[1]
                t_qc = probs[:, :, rows_q].gather(3, cols[:, None, None, :].expand(-1, h, lq, -1))
                t_cq = probs.gather(2, cols[:, None, :, None].expand(-1, h, -1, probs.shape[3]))[..., rows_q]
            x, y = hs_q[j - 1], hs_c[j - 1][:, 1:]
            qx = MF.split_heads(s_attn.query(x), self.num_heads)
            kx = MF.split_heads(s_attn.key(x), self.num_heads)
            qy = MF.split_heads(s_attn.query(y), self.num_heads)
            ky = MF.split_heads(s_attn.key(y), self.num_heads)
            scale = 1.0 / math.sqrt(qx.shape[-1])
            s_qc = torch.einsum("bxhd,byhd->bhxy", qx, ky) * scale
            s_cq = torch.einsum("byhd,bxhd->bhyx", qy, kx) * scale
            total.append(
                virt_distillation_loss(s_qc, t_qc, q_mask, c_mask[:, 1:], kind)
                + virt_distillation_loss(s_cq, t_cq, c_mask[:, 1:], q_mask, kind)
            )
        return torch.stack(total).mean()

    # ------------------------------------------------------------------ Scorer

    def _fingerprint_extra(self) -> dict[str, Any]:
        return {"dim": self.hidden_size, "layout": "last-layer token states"}

    def _candidate_reps_batch(self, tokens):
        states = self.token_states_torch(**tokens)
        mask = tokens["attention_mask"]
        return states, mask.sum(-1), MF.mean_pool(states, mask.bool())

    @torch.inference_mode()
    def encode_query(self, query: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Online: the query's ``(Lq, d)`` last-layer states and mask."""
        self.eval()
        tok = self.tokenize_queries([query])
        return self.token_states_torch(**tok)[0], tok["attention_mask"][0].bool()

    @torch.inference_mode()
    def encode_queries_pooled(self, queries: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """``(n, d)`` mean-pooled query states: the Siamese view matching ``reps.pooled``
        (dense search without the interaction)."""
        self.eval()
        out = []
        for i in range(0, len(queries), batch_size):
            tok = self.tokenize_queries(queries[i : i + batch_size])
            out.append(MF.mean_pool(self.token_states_torch(**tok), tok["attention_mask"].bool()))
        return torch.cat(out).float().cpu().numpy() if out else np.zeros((0, self.hidden_size), np.float32)

    @torch.inference_mode()
    def score(self, query_state: tuple[torch.Tensor, torch.Tensor], reps: CandidateReps) -> torch.Tensor:
        """Online: ``(n,)`` scores over each candidate's stored token states."""
        self.eval()
        x, x_mask = (t.to(self.device) for t in query_state)
        out = torch.empty(len(reps))
        # Length-sorted chunks, each trimmed to its longest candidate: less padding, same scores.
        for idx, m in self._length_sorted_batches(reps, SCORE_CHUNK):
            part = CandidateReps(reps.vectors[idx, :m], reps.lengths[idx])
            y, y_mask = self._reps_to_device(part, self.hidden_size)
            out[idx] = self.pair_scores(x[None], x_mask[None], y, y_mask).float().cpu()
        return out


def _attention_probs(attn: nn.Module, states: torch.Tensor, mask: torch.Tensor, num_heads: int) -> torch.Tensor:
    """A BERT self-attention's probabilities ``(B, H, L, L)`` over ``states`` (padding masked)."""
    q = MF.split_heads(attn.query(states), num_heads)
    k = MF.split_heads(attn.key(states), num_heads)
    logits = torch.einsum("bxhd,byhd->bhxy", q, k) / math.sqrt(q.shape[-1])
    return torch.softmax(logits.masked_fill(~mask[:, None, None, :], _NEG), dim=-1)
