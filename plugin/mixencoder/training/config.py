"""TrainingConfig: every knob of a training run, as one JSON-serialisable dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..models.config import DictConfig

Task = Literal["matching", "nli"]
MixedPrecision = Literal["auto", "bf16", "fp32"]

# Fields that only bound or observe one invocation; a resumed run may change them freely.
# Every other field shapes the weights, so a checkpoint refuses to resume under a different one.
RUNTIME_FIELDS = frozenset({"max_seconds", "checkpoint_every"})


@dataclass
class TrainingConfig(DictConfig):
    """How to train a :class:`~mixencoder.MixEncoder`.

    Defaults suit the small bundled backbone (all-MiniLM-L6-v2) on a CPU. The paper (A.1, A.3)
    fine-tunes BERT-base with AdamW at ``learning_rate=1e-5``, a linear schedule and in-batch
    negatives with ``batch_size=64``; larger batches help (A.3), so use 64 on a GPU.

    Attributes:
        task: ``"matching"`` (in-batch negatives over ``MatchingExample``) or ``"nli"``
            (cross-entropy over the classifier head, ``PairExample``).
        batch_size: examples per optimisation step (queries per step for matching).
        hard_negatives_per_query: ``h``, extra candidates per query taken from
            ``MatchingExample.negatives``; the score matrix is ``B x (B + B*h)``.
        learning_rate: peak AdamW learning rate (2e-5 for MiniLM; the paper's 1e-5 for
            BERT-base).
        warmup_ratio: fraction of the total steps spent warming the learning rate up linearly;
            it then decays linearly to zero.
        weight_decay: AdamW weight decay, not applied to biases, LayerNorm and scalar
            parameters.
        max_grad_norm: gradient clipping threshold (global L2 norm); ``0`` disables it.
        epochs: passes over the examples.
        max_steps: optimisation steps in total; when set it overrides ``epochs`` (the data
            is cycled epoch after epoch as needed) and the schedule is planned over it.
        max_seconds: wall-clock budget of one invocation; training stops at the first step
            boundary past it and saves a checkpoint. Not part of the run's identity.
        checkpoint_every: save ``checkpoint-latest`` every this many steps (``0``: only at the
            end). Not part of the run's identity.
        seed: seeds torch, numpy and ``random``, and the per-epoch data order.
        mixed_precision: ``"auto"`` (bf16 autocast on a CUDA device that supports it, else
            fp32), ``"bf16"`` (require it; CUDA only) or ``"fp32"``.
        new_parameters_lr_scale: learning-rate multiplier for the parameters a model names in
            ``new_parameter_names()`` (MixEncoder: the gates, special tokens or context codes,
            the pooled-residual weights, the classifier). They start from an initialisation,
            not from pre-training, and at the backbone's fine-tuning rate (1e-5..5e-5) they
            barely move in a short run (measured: the residual weights moved ~2e-4 in 600
            steps); ``1`` trains everything at one rate.
        distillation_weight: ``lambda``, the weight of the teacher-distillation term: with a
            teacher passed to :func:`~mixencoder.training.train` (``teacher=``, a frozen
            cross-encoder), each matching step's loss is ``loss + lambda x
            model.distillation_loss(teacher, ...)`` (the model must have ``distillation_loss``,
            e.g. :class:`~mixencoder.models.virt.VIRT`, whose paper trains with it). Used only
            when a teacher is given; ``train`` refuses a teacher with ``0`` and a value ``> 0``
            without a teacher. The teacher itself is not checkpointed: a resumed run must be
            given the same teacher.
    """

    task: Task = "matching"
    batch_size: int = 16
    hard_negatives_per_query: int = 0
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    epochs: int = 1
    max_steps: int | None = None
    max_seconds: float | None = None
    checkpoint_every: int = 100
    seed: int = 42
    mixed_precision: MixedPrecision = "auto"
    new_parameters_lr_scale: float = 1.0
    distillation_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.task not in ("matching", "nli"):
            raise ValueError(f"task must be 'matching' or 'nli', got {self.task!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.hard_negatives_per_query < 0:
            raise ValueError(
                f"hard_negatives_per_query must be >= 0, got {self.hard_negatives_per_query}"
            )
        if self.task == "nli" and self.hard_negatives_per_query:
            raise ValueError("hard_negatives_per_query only applies to task='matching'")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not self.new_parameters_lr_scale > 0:
            raise ValueError(
                f"new_parameters_lr_scale must be > 0, got {self.new_parameters_lr_scale}"
            )
        if not self.distillation_weight >= 0:  # also refuses NaN
            raise ValueError(
                f"distillation_weight must be >= 0, got {self.distillation_weight}"
            )
        if self.task == "nli" and self.distillation_weight:
            raise ValueError("distillation_weight only applies to task='matching'")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0 (0 disables), got {self.max_grad_norm}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {self.max_seconds}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.mixed_precision not in ("auto", "bf16", "fp32"):
            raise ValueError(
                f"mixed_precision must be 'auto', 'bf16' or 'fp32', got {self.mixed_precision!r}"
            )

    def identity(self) -> dict[str, Any]:
        """The fields that shape the trained weights (what a resumed run must keep)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}
