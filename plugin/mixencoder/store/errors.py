"""Errors raised by the candidate store.

Both subclass :class:`ValueError` so callers that only care about "the store is unusable" can
catch one built-in type, while code that wants to react (e.g. resume an interrupted build) can
catch the specific one.
"""

from __future__ import annotations


class StoreCorruptError(ValueError):
    """A store file is missing, truncated, or does not match what the manifest recorded."""


class IncompleteStoreError(StoreCorruptError):
    """The directory holds a build that never finished (there is no ``manifest.json``).

    Rerun :meth:`CandidateStore.build` with ``mode='resume'`` and the same model and corpus.
    """
