"""Text input checks, tokenisation with a truncation count, and length-bucketed batching:
what every model's ``tokenize_*`` and ``encode_candidates`` share (pure helpers, no modules)."""

from __future__ import annotations

import logging
import threading
from typing import Any, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)


def check_texts(texts: Sequence[str], what: str, allow_empty_list: bool = False) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``texts`` is a list of non-empty strings.

    Args:
        texts: the texts to check.
        what: how the error names them (``"query"``, ``"candidate"``).
        allow_empty_list: accept ``[]`` (an encoder of zero candidates returns empty reps).
    """
    if isinstance(texts, str):
        raise TypeError(f"expected a list of {what} texts, got a single string")
    if not texts and not allow_empty_list:
        raise ValueError(f"no {what} texts given")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what} text {i} is {type(t).__name__}, not str")
        if not t.strip():
            raise ValueError(f"{what} text {i} is empty")


def show_progress(flag: bool | None) -> bool:
    """Whether to show a progress bar: ``flag``, or (``None``) when logging is at INFO or below."""
    return logger.getEffectiveLevel() <= logging.INFO if flag is None else flag


class _TruncationCounter(threading.local):
    """Texts cut at ``max_length`` by :func:`tokenize_texts`, per thread (read by the encoders,
    which report the count once per call)."""

    count = 0


TRUNCATED = _TruncationCounter()


def tokenize_texts(
    tokenizer: Any, texts: Sequence[str], max_length: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Padded, truncated ``input_ids`` and ``attention_mask`` on ``device``; texts cut at
    ``max_length`` are counted in :data:`TRUNCATED`."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    if enc.encodings:  # fast tokenizers say what they cut
        TRUNCATED.count += sum(1 for e in enc.encodings if e.overflowing)
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}


def report_truncation(before: int, n: int, max_length: int) -> None:
    """Log how many of the ``n`` candidate texts just encoded were cut at ``max_length`` tokens
    (``before``: :data:`TRUNCATED`'s count when the encoding started)."""
    cut = TRUNCATED.count - before
    if cut:
        logger.info("%d of %d candidate texts are longer than %d tokens and were truncated", cut, n, max_length)


def token_lengths(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[int]:
    """Each text's token count after truncation at ``max_length`` (special tokens included)."""
    if not texts:
        return []
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return [len(i) for i in ids]


def batch_order(lengths: Sequence[int], bucketed: bool) -> np.ndarray:
    """The order texts are batched in: longest first (ties in input order) when ``bucketed``,
    so each batch holds texts of similar length; else the input order."""
    if not bucketed:
        return np.arange(len(lengths))
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")


def padding_fraction(lengths: Sequence[int], batch_size: int, bucketed: bool) -> float:
    """The fraction of token positions that are padding when texts of these token ``lengths``
    are encoded ``batch_size`` at a time, each batch padded to its longest text, in the order
    :func:`batch_order` gives (``bucketed``) or in input order.

    Example:
        >>> padding_fraction([1, 9, 1, 9], 2, bucketed=False)
        0.4444444444444444
        >>> padding_fraction([1, 9, 1, 9], 2, bucketed=True)
        0.0
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ordered = np.asarray(lengths, dtype=np.int64)[batch_order(lengths, bucketed)]
    if not ordered.size:
        return 0.0
    padded = sum(
        int(ordered[i : i + batch_size].max()) * len(ordered[i : i + batch_size])
        for i in range(0, len(ordered), batch_size)
    )
    return 1.0 - float(ordered.sum()) / padded if padded else 0.0
