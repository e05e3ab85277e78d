"""An adapter for AnswerDotAI's ``rerankers`` (``pip install 'mixencoder[rerankers]'``).

Importing this module registers :class:`MixEncoderRanker` in ``rerankers.models.AVAILABLE_RANKERS``
under ``"MixEncoderRanker"``, so the library's own factory builds it:

    >>> import mixencoder.rerankers  # registers the ranker
    >>> from rerankers import Reranker
    >>> ranker = Reranker("work/ubuntu-model/final", model_type="MixEncoderRanker", verbose=0)
    >>> ranker.rank("dielectric constant", ["radio waves", "dielectric constant of water"]).top_k(1)

Any system of the registry works (a saved directory of any type; a backbone, or ``None`` for
the bundled MiniLM, builds a fresh MixEncoder); scores are the model's ``rank`` scores.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Union

try:
    from rerankers.documents import Document
    from rerankers.models import AVAILABLE_RANKERS
    from rerankers.models.ranker import BaseRanker
    from rerankers.results import RankedResults, Result
    from rerankers.utils import prep_docs
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("mixencoder.rerankers needs rerankers; install it with: pip install 'mixencoder[rerankers]'") from e

RANKER_NAME = "MixEncoderRanker"


def _load(model_name_or_path: str | os.PathLike | None) -> Any:
    from .models import MixEncoder, load_model
    from .models.persistence import is_saved_model, read_config

    if model_name_or_path is not None:
        data = read_config(model_name_or_path)
        if data is not None and is_saved_model(data):
            return load_model(model_name_or_path)
    return MixEncoder.from_pretrained(model_name_or_path)


class MixEncoderRanker(BaseRanker):
    """A ``rerankers`` ranker over any model of this package (``model.rank``).

    Args:
        model_name_or_path: a saved model directory, a backbone, or None (bundled MiniLM).
        verbose: accepted for the ``rerankers`` factory; this ranker prints nothing.
        model: an already loaded model to use instead of loading one.
        batch_size: candidates encoded per batch.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike | None = None,
        verbose: int = 1,
        *,
        model: Any = None,
        batch_size: int = 32,
        **_: Any,
    ):
        self.model = model if model is not None else _load(model_name_or_path)
        self.batch_size = batch_size
        self.verbose = verbose

    def score(self, query: str, doc: str) -> float:
        """The model's score of one document for ``query``."""
        return float(self.model.rank(query, [doc], batch_size=self.batch_size)[0]["score"])

    def rank(
        self,
        query: str,
        docs: Union[str, List[str], Document, List[Document]],
        doc_ids: Optional[Union[List[str], List[int]]] = None,
        metadata: Optional[List[dict]] = None,
    ) -> RankedResults:
        """All ``docs`` best first (ties by input position), ranks from 1, with scores."""
        documents = prep_docs(docs, doc_ids, metadata)
        hits = self.model.rank(query, [d.text for d in documents], batch_size=self.batch_size)
        results = [Result(document=documents[h["corpus_id"]], score=h["score"], rank=r) for r, h in enumerate(hits, 1)]
        return RankedResults(results=results, query=query, has_scores=True)


AVAILABLE_RANKERS[RANKER_NAME] = MixEncoderRanker
