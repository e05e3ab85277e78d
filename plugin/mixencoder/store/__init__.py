"""On-disk store of precomputed candidate reps, served by docid (see :class:`CandidateStore`).

:class:`StoreRows` (``store.rows``) is the read-only view of a store's shards and docid lookup
by global row, and :class:`Shard` one memory-mapped shard of it.
"""

from __future__ import annotations

from .candidate_store import CandidateStore
from .errors import IncompleteStoreError, StoreCorruptError
from .rows import StoreRows
from .shard import Shard

__all__ = ["CandidateStore", "IncompleteStoreError", "Shard", "StoreCorruptError", "StoreRows"]
