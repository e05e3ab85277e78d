"""Readers and writers for corpora, topics, qrels and runs in their official formats.

Model-free on purpose: importing this package pulls in neither torch nor Pyserini. Every reader
opens files through :func:`open_text` (UTF-8 only, ``.gz`` decompressed, errors naming file and
line); writers write through :func:`atomic_write`.
"""

from __future__ import annotations

from mixencoder.data._text_files import atomic_write, open_text
from mixencoder.data.corpus import Doc, read_corpus, write_jsonl_collection
from mixencoder.data.qrels import Qrels, read_qrels
from mixencoder.data.runs import Run, Top1000, read_run, read_top1000, sorted_hits, write_run
from mixencoder.data.topics import read_topics
from mixencoder.data.dialogue import (
    ResponseExample,
    TrainPair,
    join_context,
    read_dstc7,
    read_ubuntu_v2_eval,
    read_ubuntu_v2_train,
    to_qrels_and_candidates,
)
from mixencoder.data.folds import kfold_split
from mixencoder.data.nli import NLIExample, read_mnli
from mixencoder.data.triples import Triple, hard_negatives_from_run, qrels_training_pairs, read_id_triples, read_triples

__all__ = [
    "Doc",
    "NLIExample",
    "ResponseExample",
    "TrainPair",
    "Triple",
    "atomic_write",
    "hard_negatives_from_run",
    "join_context",
    "kfold_split",
    "open_text",
    "qrels_training_pairs",
    "read_dstc7",
    "read_id_triples",
    "read_mnli",
    "read_triples",
    "read_ubuntu_v2_eval",
    "read_ubuntu_v2_train",
    "to_qrels_and_candidates",
    "Qrels",
    "Run",
    "Top1000",
    "read_corpus",
    "read_qrels",
    "read_run",
    "read_top1000",
    "read_topics",
    "sorted_hits",
    "write_jsonl_collection",
    "write_run",
]
