"""Conversions between this package's dicts and the long DataFrames of PyTerrier (pandas only).

* a run ``{qid: {docid: score}}`` <-> ``qid, docno, score, rank`` (one row per hit; ``rank`` is
  0-based as in PyTerrier; rows sorted by query, then best first with ties by docno, the order
  of every run in this package);
* topics ``{qid: text}`` <-> ``qid, query``; qrels ``{qid: {docid: grade}}`` <-> ``qid, docno,
  label``;
* per-query metrics ``{measure: {qid: value}}`` (:func:`mixencoder.evaluation.evaluate_per_query`)
  <-> ``qid, measure, value`` (``name`` first when given), the shape of
  ``pt.Experiment(..., perquery=True)``.

Readers accept ir-measures' column names too (``query_id``, ``doc_id``, ``relevance``).
"""

from __future__ import annotations

import math
from typing import Mapping

import pandas as pd

Run = dict[str, dict[str, float]]

RUN_COLUMNS = ["qid", "docno", "score", "rank"]
_ALIASES = {"query_id": "qid", "doc_id": "docno", "relevance": "label"}


def _normalise(frame: pd.DataFrame, required: list[str], what: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame of {what}, got {type(frame).__name__}")
    frame = frame.rename(columns={k: v for k, v in _ALIASES.items() if k in frame.columns and v not in frame.columns})
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise KeyError(
            f"a frame of {what} needs columns {required} (or ir-measures' query_id/doc_id/relevance); "
            f"missing {missing}, found {list(frame.columns)}"
        )
    return frame


def run_to_frame(run: Mapping[str, Mapping[str, float]], topics: Mapping[str, str] | None = None) -> pd.DataFrame:
    """A run as a ``qid, docno, score, rank`` frame (plus ``query`` when ``topics`` is given).

    Queries keep the run's order; within a query rows go best first, ties by docno.

    Raises:
        KeyError: ``topics`` lacks a query of the run.
    """
    rows: list[tuple[str, str, float, int]] = []
    for qid, hits in run.items():
        ordered = sorted(((str(d), float(s)) for d, s in hits.items()), key=lambda x: (-x[1], x[0]))
        rows.extend((str(qid), d, s, r) for r, (d, s) in enumerate(ordered))
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS).astype({"qid": object, "docno": object, "score": "float64", "rank": "int64"})
    if topics is not None:
        lacking = sorted({q for q in frame["qid"] if q not in topics})
        if lacking:
            raise KeyError(f"{len(lacking)} run queries have no topic text: {lacking[:10]}")
        frame.insert(1, "query", [topics[q] for q in frame["qid"]])
    return frame


def frame_to_run(frame: pd.DataFrame) -> Run:
    """``{qid: {docno: score}}`` from a frame with ``qid, docno, score`` (a ``rank`` column,
    if any, is ignored: the score decides the order).

    Raises:
        KeyError: a required column is missing.
        ValueError: a (qid, docno) pair appears twice, or a score is NaN.
    """
    frame = _normalise(frame, ["qid", "docno", "score"], "a run")
    run: Run = {}
    for qid, docno, score in zip(frame["qid"].astype(str), frame["docno"].astype(str), frame["score"]):
        score = float(score)
        if math.isnan(score):
            raise ValueError(f"query {qid!r}, docno {docno!r}: the score is NaN")
        hits = run.setdefault(qid, {})
        if docno in hits:
            raise ValueError(f"query {qid!r} lists docno {docno!r} twice; a run holds each document once per query")
        hits[docno] = score
    return run


def topics_to_frame(topics: Mapping[str, str]) -> pd.DataFrame:
    """``{qid: text}`` as a ``qid, query`` frame, in the mapping's order."""
    return pd.DataFrame({"qid": [str(q) for q in topics], "query": [str(t) for t in topics.values()]})


def frame_to_topics(frame: pd.DataFrame) -> dict[str, str]:
    """``{qid: query}`` from a ``qid, query`` frame.

    Raises:
        ValueError: a qid appears twice with different texts.
    """
    frame = _normalise(frame, ["qid", "query"], "topics")
    topics: dict[str, str] = {}
    for qid, query in zip(frame["qid"].astype(str), frame["query"]):
        if qid in topics and topics[qid] != query:
            raise ValueError(f"qid {qid!r} has two different query texts: {topics[qid]!r} and {query!r}")
        topics[qid] = str(query)
    return topics


def qrels_to_frame(qrels: Mapping[str, Mapping[str, int]]) -> pd.DataFrame:
    """``{qid: {docid: grade}}`` as PyTerrier's ``qid, docno, label`` frame."""
    rows = [(str(q), str(d), int(g)) for q, docs in qrels.items() for d, g in docs.items()]
    return pd.DataFrame(rows, columns=["qid", "docno", "label"]).astype({"qid": object, "docno": object, "label": "int64"})


def frame_to_qrels(frame: pd.DataFrame) -> dict[str, dict[str, int]]:
    """``{qid: {docno: label}}`` from a ``qid, docno, label`` frame."""
    frame = _normalise(frame, ["qid", "docno", "label"], "qrels")
    qrels: dict[str, dict[str, int]] = {}
    for qid, docno, label in zip(frame["qid"].astype(str), frame["docno"].astype(str), frame["label"]):
        qrels.setdefault(qid, {})[docno] = int(label)
    return qrels


def per_query_to_frame(per_query: Mapping[str, Mapping[str, float]], name: str | None = None) -> pd.DataFrame:
    """``{measure: {qid: value}}`` as a long ``[name,] qid, measure, value`` frame, sorted by
    qid then measure (as ``pt.Experiment(..., perquery=True)`` lays it out)."""
    rows = [(str(q), str(m), float(v)) for m, values in per_query.items() for q, v in values.items()]
    frame = pd.DataFrame(rows, columns=["qid", "measure", "value"]).sort_values(["qid", "measure"], kind="stable")
    frame = frame.reset_index(drop=True)
    if name is not None:
        frame.insert(0, "name", name)
    return frame


def frame_to_per_query(frame: pd.DataFrame, name: str | None = None) -> dict[str, dict[str, float]]:
    """``{measure: {qid: value}}`` from a long ``qid, measure, value`` frame; ``name`` selects
    one system's rows of a frame with a ``name`` column (as ``pt.Experiment`` returns).

    Raises:
        ValueError: the frame holds several systems and no ``name`` was given, or ``name`` is
            not among them.
    """
    frame = _normalise(frame, ["qid", "measure", "value"], "per-query metrics")
    if "name" in frame.columns:
        names = list(dict.fromkeys(frame["name"]))
        if name is None and len(names) > 1:
            raise ValueError(f"the frame holds the systems {names}; pass name= one of them")
        if name is not None:
            if name not in names:
                raise ValueError(f"no system named {name!r} in the frame; it holds {names}")
            frame = frame[frame["name"] == name]
    out: dict[str, dict[str, float]] = {}
    for qid, measure, value in zip(frame["qid"].astype(str), frame["measure"].astype(str), frame["value"]):
        out.setdefault(measure, {})[qid] = float(value)
    return out
