"""Models: MixEncoder and (later) the paper's baselines, all behind the Scorer protocol."""

from __future__ import annotations

from .base import CandidateReps, Scorer
from .config import MixEncoderConfig
from .mixencoder import MixEncoder, QueryState

__all__ = ["CandidateReps", "MixEncoder", "MixEncoderConfig", "QueryState", "Scorer"]
