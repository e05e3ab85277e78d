"""Training on a frozen store: only what reads the query learns; candidates come from the store.

A user who has encoded millions of passages never wants to encode them again. Here the
candidate side stays exactly as the store was built: each step gathers the candidates' stored
reps (E0 and the pooled vector) instead of running the backbone over their text, and trains
the query side only (its own copy of the backbone, the interaction layers, the mixing maps, the
gates). The trained model keeps the store's candidate fingerprint, so the store stays valid.

A step then costs one query-side backbone pass plus the interaction, so steps are several times
cheaper than full fine-tuning, and a query can see many stored negatives.

Examples are :class:`~mixencoder.training.MatchingExample` whose ``positive`` and ``negatives``
are **docids of the store** (not texts); everything else (the in-batch loss, hard negatives,
schedule, exact resume) is the ordinary :func:`~mixencoder.training.train`.

Fusion-aware training (``first_stage``): each score the loss sees becomes ``s + w * f`` where
``f`` is the candidate's min-max normalised first-stage score for that query (0 when the first
stage did not retrieve it) and ``w`` a learned weight (starting at :data:`FIRST_STAGE_WEIGHT`), so the interaction is
pushed to learn what the first stage misses rather than re-learn it. Only the model is kept;
at inference fusion is post hoc (:mod:`mixencoder.fusion`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from ..fusion import minmax_normalise
from ..models.mixencoder import MixEncoder
from .config import TrainingConfig
from .examples import MatchingExample
from .trainer import TrainResult, train


#: Start of the learned first-stage weight, in score units: with cosine x 20 scores spanning about
#: 10 across a query's candidates, 2.5 x a [0, 1] feature is what post-hoc interpolation at alpha
#: 0.2 adds (0.2 / 0.8 x 10). Started at 0 the weight barely moves in a few hundred steps, and the
#: loss is then the plain one (measured: identical DL20 figures to four decimals).
FIRST_STAGE_WEIGHT = 2.5


class StoreBackedTrainee(nn.Module):
    """What the trainer trains: a MixEncoder's query side over candidates gathered from a store.

    It has the trainer's model API (the training half of
    :class:`~mixencoder.models.RankingModel`: its capabilities, ``tokenize_queries``,
    ``tokenize_candidates``, ``encode_query_batch``/``encode_candidate_batch``/``score_matrix``,
    ``config``, ``save_pretrained``, ``load_state_dict``), so it also trains data-parallel; its
    "candidate texts" are docids, tokenised into rows of a table of the store's reps. The table
    is not a parameter and is not saved: it is the store's.

    Args:
        model: a MixEncoder with ``separate_query_encoder=True`` (see
            :meth:`MixEncoder.with_separate_query_encoder`) and ``pooled_residual=True`` or not.
        store: the store its candidate side built (fingerprint checked).
        docids: the docids the examples use (gathered once).
        interaction: ``False`` trains a dual encoder's query side only (the interaction and
            mixing maps stay frozen at their current, untrained zero, so the score is the pooled
            cosine): the baseline a frozen-store MixEncoder must beat.
        first_stage: ``{query_id: {docid: score}}`` for fusion-aware training (see module doc).
        query_ids: with ``first_stage``, each training query's text -> its id (the trainer hands
            the model query texts; the id finds the query's first-stage scores).
    """

    supports_in_batch_negatives = True
    supports_distillation = False
    num_labels = 0

    def __init__(
        self,
        model: MixEncoder,
        store: Any,
        docids: Sequence[str],
        *,
        interaction: bool = True,
        first_stage: Mapping[str, Mapping[str, float]] | None = None,
        query_ids: Mapping[str, str] | None = None,
        first_stage_weight: float = FIRST_STAGE_WEIGHT,
    ):
        super().__init__()
        if not model.config.separate_query_encoder:
            raise ValueError(
                "train_on_store needs a model with its own query encoder: pass "
                "model.with_separate_query_encoder() (the candidate side must stay as the store was built)"
            )
        store.check_compatible(model)
        self.model = model
        self.docids = list(dict.fromkeys(docids))  # row i of the table holds docids[i]
        self.rows = {d: i for i, d in enumerate(self.docids)}
        reps = store.gather(self.docids)
        self.vectors = reps.vectors[:, : model.config.k].float()
        self.pooled = None if reps.pooled is None else reps.pooled.float()
        self.first_stage = {q: minmax_normalise(s) for q, s in (first_stage or {}).items()}
        self.first_stage_weight = (
            nn.Parameter(torch.tensor(float(first_stage_weight))) if first_stage is not None else None
        )
        self.query_ids = dict(query_ids or {})
        if first_stage is not None and not self.query_ids:
            raise ValueError("fusion-aware training needs query_ids (query text -> id)")
        # The candidate side is the store's: frozen. So is everything a dual score ignores.
        for name, p in model.named_parameters():
            query_side = name.startswith("query_backbone.")
            p.requires_grad_(query_side or (interaction and not name.startswith(("backbone.", "special_", "context_"))))

    # the trainer's model API -------------------------------------------------------------

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    def new_parameter_names(self) -> list[str]:
        names = [f"model.{n}" for n in self.model.new_parameter_names()]
        return names + (["first_stage_weight"] if self.first_stage_weight is not None else [])

    def tokenize_queries(self, queries: Sequence[str]) -> dict[str, Any]:
        tokens = self.model.tokenize_queries(queries)
        if self.first_stage_weight is not None:
            tokens["query_ids"] = [self.query_ids[q] for q in queries]  # read by forward only
        return tokens

    def tokenize_candidates(self, docids: Sequence[str]) -> dict[str, torch.Tensor]:
        unknown = [d for d in docids if d not in self.rows]
        if unknown:
            raise KeyError(f"{len(unknown)} training docids were not gathered from the store: {unknown[:5]}")
        return {"rows": torch.tensor([self.rows[d] for d in docids], dtype=torch.long)}

    @property
    def query_max_length(self) -> int:
        return self.model.query_max_length

    @property
    def candidate_max_length(self) -> int:
        return self.model.candidate_max_length

    def encode_query_batch(self, queries: dict[str, Any]) -> tuple[Any, list[str]]:
        """``(the model's query encoding, the queries' ids)`` (ids: fusion-aware training)."""
        tokens = {"input_ids": queries["input_ids"], "attention_mask": queries["attention_mask"]}
        return self.model.encode_query_batch(tokens), list(queries.get("query_ids", []))

    def encode_candidate_batch(self, candidates: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
        """``(stored E0 (C, k, d), stored pooled (C, d) or None, table rows (C,))``."""
        rows = candidates["rows"]
        pooled = None if self.pooled is None else self.pooled[rows].to(self.device)
        return self.vectors[rows].to(self.device), pooled, rows.to(self.device)

    def score_matrix(self, query_batch: tuple[Any, list[str]], candidate_batch: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
        """The model's ``(B, C)`` scores, plus the weighted first-stage scores when fusion-aware."""
        query, query_ids = query_batch
        e0, pooled, rows = candidate_batch
        scores = self.model.score_matrix(query, (e0, pooled))
        if self.first_stage_weight is not None:
            scores = scores + self.first_stage_weight * self._first_stage_matrix(query_ids, rows).to(scores.device)
        return scores

    def forward(self, queries: dict[str, Any], candidates: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.score_matrix(self.encode_query_batch(queries), self.encode_candidate_batch(candidates))

    def _first_stage_matrix(self, query_ids: Sequence[str], rows: torch.Tensor) -> torch.Tensor:
        """``(B, C)``: each candidate's normalised first-stage score for each query (0 if absent)."""
        cands = [self.docids[int(r)] for r in rows]
        return torch.tensor([[self.first_stage.get(q, {}).get(d, 0.0) for d in cands] for q in query_ids])

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        self.model.save_pretrained(directory)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True, **kwargs: Any) -> Any:  # type: ignore[override]
        return self.model.load_state_dict(state, strict=strict, **kwargs)


def train_on_store(
    model: MixEncoder,
    store: Any,
    examples: Sequence[MatchingExample],
    config: TrainingConfig,
    *,
    output_dir: str | os.PathLike,
    interaction: bool = True,
    first_stage: Mapping[str, Mapping[str, float]] | None = None,
    resume: bool = True,
    show_progress_bar: bool | None = None,
) -> TrainResult:
    """Train ``model``'s query side against ``store``'s frozen candidate reps (in place).

    Args:
        model: a MixEncoder with ``separate_query_encoder=True`` whose candidate side built
            ``store``.
        store: a :class:`~mixencoder.CandidateStore` holding every docid the examples name.
        examples: ``MatchingExample(query, positive_docid, negative_docids, query_id, ...)``;
            ``query_id`` is required with ``first_stage``.
        config: as for :func:`~mixencoder.training.train` (task ``"matching"``).
        output_dir: checkpoints and ``final`` (the trained MixEncoder, which serves ``store``).
        interaction: ``False``: a dual encoder's query side only (see :class:`StoreBackedTrainee`).
        first_stage: ``{query_id: {docid: first-stage score}}``: fusion-aware training.

    Returns:
        The :class:`~mixencoder.training.TrainResult`; ``model`` holds the trained weights.

    Raises:
        ValueError: a model without its own query encoder, a store it did not build, or
            ``first_stage`` with examples lacking a ``query_id``.
        KeyError: docids of the examples missing from the store.
    """
    if config.task != "matching":
        raise ValueError(f"train_on_store trains matching only, got task={config.task!r}")
    if first_stage is not None and any(e.query_id is None for e in examples):
        raise ValueError("fusion-aware training needs every example's query_id (to look up first-stage scores)")
    docids = [d for e in examples for d in (e.positive, *e.negatives)]
    trainee = StoreBackedTrainee(
        model, store, docids, interaction=interaction, first_stage=first_stage,
        query_ids={e.query: str(e.query_id) for e in examples} if first_stage is not None else None,
    )
    try:
        return train(trainee, examples, config, output_dir=output_dir, resume=resume,
                     show_progress_bar=show_progress_bar)
    finally:
        model.requires_grad_(True)
