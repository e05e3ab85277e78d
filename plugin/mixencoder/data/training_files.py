"""Training files of every supported format as the trainer's examples.

:func:`read_training_examples` turns one file into :class:`~mixencoder.training.MatchingExample`
(task ``matching``) or :class:`~mixencoder.training.PairExample` (task ``nli``) objects:

* ``msmarco-triples``: ``query<TAB>positive<TAB>negative`` (``triples.train.small.tsv``); the
  negative becomes the example's hard negative.
* ``ubuntu-v2``: the Ubuntu V2 ``train.csv``; label-1 rows become (context, response) pairs and
  label-0 rows are dropped, since training draws its negatives from the batch.
* ``dstc7``: DSTC7 track 1 JSON; each correct answer is a positive, the other options are its
  hard negatives.
* ``mnli``: MultiNLI jsonl/TSV (task ``nli``); pairs without a gold label are skipped.
* ``pairs-jsonl``: one JSON object per line, ``{"query", "positive", "negatives", "query_id",
  "positive_id"}`` for matching (only query and positive required) or ``{"premise",
  "hypothesis", "label"}`` for nli.

Dialogue contexts come back whole; cut them from the left to the model's query length with
:func:`mixencoder.data.dialogue.left_truncate_texts` (:data:`DIALOGUE_FORMATS` says which).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Iterable, Iterator

from mixencoder.data._text_files import PathLike, json_lines

logger = logging.getLogger(__name__)

MATCHING_FORMATS = ("ubuntu-v2", "dstc7", "msmarco-triples", "pairs-jsonl")
NLI_FORMATS = ("mnli", "pairs-jsonl")
#: Formats whose queries are dialogue contexts, to be cut from the left.
DIALOGUE_FORMATS = ("ubuntu-v2", "dstc7")


def read_training_examples(path: PathLike, fmt: str, task: str = "matching", limit: int | None = None) -> list[Any]:
    """The first ``limit`` (all when None) examples of the training file ``path`` of format ``fmt``.

    Raises:
        ValueError: a format that does not fit ``task``, or a malformed record (naming
            ``file:line`` or the example index, as the format's reader does).
    """
    formats = MATCHING_FORMATS if task == "matching" else NLI_FORMATS if task == "nli" else None
    if formats is None:
        raise ValueError(f"unknown task {task!r}; known: matching, nli")
    if fmt not in formats:
        raise ValueError(f"format {fmt!r} does not fit task {task!r}; known: {', '.join(formats)}")
    stream = _examples(path, fmt, task)
    examples = list(itertools.islice(stream, limit) if limit else stream)
    logger.info("Read %d %s examples from %s", len(examples), fmt, path)
    return examples


def _examples(path: PathLike, fmt: str, task: str) -> Iterable[Any]:
    from mixencoder.training.examples import MatchingExample, PairExample

    if fmt == "pairs-jsonl":
        return _pairs_jsonl(path, task)
    if fmt == "msmarco-triples":
        from mixencoder.data.triples import read_triples

        return (MatchingExample(t.query, t.positive, (t.negative,)) for t in read_triples(path))
    if fmt == "ubuntu-v2":
        from mixencoder.data.dialogue import read_ubuntu_v2_train

        return ubuntu_v2_matching_examples(read_ubuntu_v2_train(path))
    if fmt == "dstc7":
        from mixencoder.data.dialogue import read_dstc7

        return response_matching_examples(read_dstc7(path))
    from mixencoder.data.nli import read_mnli

    pairs, skipped = read_mnli(path)
    logger.info("MNLI: %d labelled pairs, %d without gold label skipped", len(pairs), skipped)
    return (PairExample(p.premise, p.hypothesis, p.label_id) for p in pairs)


def ubuntu_v2_matching_examples(rows: Iterable[Any]) -> Iterator[Any]:
    """Matching examples of the label-1 rows of :func:`~mixencoder.data.read_ubuntu_v2_train`
    (a label-0 row is a random response; in-batch negatives replace it)."""
    from mixencoder.training.examples import MatchingExample

    dropped = 0
    for row in rows:
        if row.label != 1:
            dropped += 1
            continue
        yield MatchingExample(" ".join(row.context), row.response)
    logger.info("Ubuntu V2: dropped %d label-0 rows (training uses in-batch negatives)", dropped)


def response_matching_examples(examples: Iterable[Any], *, with_negatives: bool = True) -> Iterator[Any]:
    """One matching example per correct answer of each :class:`~mixencoder.data.ResponseExample`
    (DSTC7, or the Ubuntu V2 valid/test files), the example's other candidates as its hard
    negatives (none with ``with_negatives=False``, for training on in-batch negatives alone)."""
    from mixencoder.training.examples import MatchingExample

    for ex in examples:
        context = " ".join(ex.context)
        positives = set(ex.positive_ids)
        negatives = tuple(t for t, c in zip(ex.candidates, ex.candidate_ids) if c not in positives) if with_negatives else ()
        for text, cid in zip(ex.candidates, ex.candidate_ids):
            if cid in positives:
                yield MatchingExample(
                    context, text, negatives, query_id=ex.example_id, positive_id=f"{ex.example_id}:{cid}"
                )


def _pairs_jsonl(path: PathLike, task: str) -> Iterator[Any]:
    from mixencoder.training.examples import MatchingExample, PairExample

    for line, obj in json_lines(path):
        try:
            if task == "matching":
                yield MatchingExample(
                    obj["query"], obj["positive"], tuple(obj.get("negatives", ())),
                    query_id=_optional_str(obj.get("query_id")), positive_id=_optional_str(obj.get("positive_id")),
                )
            else:
                yield PairExample(obj["premise"], obj["hypothesis"], obj["label"])
        except KeyError as e:
            raise ValueError(f"{line.where}: bad {task} record: no field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"{line.where}: bad {task} record: {e}") from None


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)
