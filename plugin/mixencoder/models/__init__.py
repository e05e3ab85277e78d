"""Models: MixEncoder and the paper's baselines, all subclasses of :class:`RankingModel` behind
the Scorer protocol (math only: no store, no search engine). ``load_model`` picks the class from
a saved config's model_type."""

from __future__ import annotations

from .base import CandidateReps, PairwiseModel, RankingModel, Scorer
from .biencoder import BiEncoder
from .colbert import ColBERT
from .config import MixEncoderConfig
from .cross import CrossEncoder
from .deformer import Deformer
from .dual import DualEncoder
from .mixencoder import MixEncoder, QueryState
from .poly import PolyEncoder
from .registry import MODEL_TYPES, load_model
from .text import padding_fraction
from .virt import VIRT

__all__ = [
    "BiEncoder",
    "CandidateReps",
    "ColBERT",
    "CrossEncoder",
    "Deformer",
    "DualEncoder",
    "MODEL_TYPES",
    "MixEncoder",
    "MixEncoderConfig",
    "PairwiseModel",
    "PolyEncoder",
    "QueryState",
    "RankingModel",
    "Scorer",
    "VIRT",
    "load_model",
    "padding_fraction",
]
