"""Training any model (a :class:`~mixencoder.models.RankingModel`): examples, losses, the
trainer and its resumable checkpoints.

Example:
    >>> from mixencoder import MixEncoder
    >>> from mixencoder.training import MatchingExample, TrainingConfig, train
    >>> model = MixEncoder.from_pretrained()
    >>> examples = [MatchingExample("what is a lobster roll", "A lobster roll is a sandwich."), ...]
    >>> result = train(model, examples, TrainingConfig(max_steps=1000), output_dir="runs/demo")
    >>> MixEncoder.from_pretrained(result.final_dir)
"""

from __future__ import annotations

from .batches import MatchingBatch, PairBatch
from .checkpoint import CHECKPOINT_NAME, TrainerState, load_checkpoint, save_checkpoint
from .config import TrainingConfig
from .examples import MatchingExample, PairExample
from .losses import (
    classification_loss,
    in_batch_negatives_loss,
    same_query_mask,
)
from .trainer import (
    TrainResult,
    build_optimizer,
    collate_matching,
    collate_pairs,
    epoch_order,
    lr_factor,
    train,
    train_step,
)

__all__ = [
    "CHECKPOINT_NAME",
    "MatchingBatch",
    "MatchingExample",
    "PairBatch",
    "PairExample",
    "TrainResult",
    "TrainerState",
    "TrainingConfig",
    "build_optimizer",
    "classification_loss",
    "collate_matching",
    "collate_pairs",
    "epoch_order",
    "in_batch_negatives_loss",
    "load_checkpoint",
    "lr_factor",
    "same_query_mask",
    "save_checkpoint",
    "train",
    "train_step",
]
