"""Models: MixEncoder and the baselines, all behind the Scorer protocol (math only: no store,
no search engine)."""

from __future__ import annotations

from .base import CandidateReps, Scorer
from .config import MixEncoderConfig
from .dual import DualEncoder
from .mixencoder import MixEncoder, QueryState

__all__ = ["CandidateReps", "DualEncoder", "MixEncoder", "MixEncoderConfig", "QueryState", "Scorer"]
