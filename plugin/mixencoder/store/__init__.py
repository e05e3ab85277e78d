"""On-disk store of precomputed candidate reps, served by docid (see :class:`CandidateStore`)."""

from __future__ import annotations

from .candidate_store import CandidateStore
from .errors import IncompleteStoreError, StoreCorruptError

__all__ = ["CandidateStore", "IncompleteStoreError", "StoreCorruptError"]
