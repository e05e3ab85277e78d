"""Response-selection data: Ubuntu Dialogue Corpus V2 CSV and DSTC7 track 1 JSON.

Both official layouts are read into the same structures:

* :class:`TrainPair` -- one ``(context, response, label)`` row of the Ubuntu V2 ``train.csv``
  (columns ``Context,Utterance,Label``; label 1 is the true response, 0 a random one).
* :class:`ResponseExample` -- one context with its candidate responses and the ids of the
  correct ones, from the Ubuntu V2 ``valid.csv``/``test.csv`` (columns ``Context,Ground Truth
  Utterance,Distractor_0..Distractor_8``) or from any DSTC7 subtask 1 JSON file.

Ubuntu V2 text carries two markers: ``__eou__`` ends an utterance and ``__eot__`` ends a turn (a
turn is one speaker's consecutive utterances). Contexts are split into turns on ``__eot__``
(oldest first) and every ``__eou__`` becomes a plain space, so the text stays readable for a
tokenizer that has never seen the markers.

:func:`to_qrels_and_candidates` turns examples into TREC-style qrels, queries and per-query
candidate texts so that ranking measures (R@1, R@2, R@5, R@10, RR) are computed by ir-measures
exactly as for ad-hoc retrieval.

Context truncation: dialogue contexts are truncated from the **head** -- the latest turns carry
the information needed to pick the next response, so they are the ones kept
(:func:`join_context`, :func:`left_truncate_tokens`, :func:`left_truncate_texts`). Models with a token limit should truncate
the context from the left for the same reason.

Readers are strict: a malformed row (wrong column count, missing field, empty text, bad label)
raises :class:`ValueError` naming the file and line (CSV) or the file and example index (JSON);
nothing is silently dropped, since a dropped example changes every reported figure.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

from mixencoder.data._text_files import PathLike, check_id, load_json, open_text
from mixencoder.data.qrels import Qrels

logger = logging.getLogger(__name__)

#: Ubuntu V2 end-of-utterance and end-of-turn markers.
EOU = "__eou__"
EOT = "__eot__"

_EOU_RE = re.compile(r"\s*__eou__\s*")
_EOT_RE = re.compile(r"\s*__eot__\s*")

#: Ubuntu V2 label values (the official files were written with ``"1"``/``"0"``; ``"1.0"``/``"0.0"``
#: are what pandas round-trips produce, so they are accepted too).
_LABELS = {"1": 1, "0": 0, "1.0": 1, "0.0": 0}

_TRAIN_COLUMNS = ("Context", "Utterance", "Label")
_GROUND_TRUTH = "Ground Truth Utterance"
_DISTRACTOR_RE = re.compile(r"^Distractor_(\d+)$")


@dataclass(frozen=True)
class TrainPair:
    """One labelled (context, response) row of the Ubuntu V2 training file.

    Attributes:
        context: The context turns, oldest first, markers removed.
        response: The candidate response.
        label: 1 for the true next response, 0 for a random one.
    """

    context: list[str]
    response: str
    label: int


@dataclass(frozen=True)
class ResponseExample:
    """One response-selection example: a context and candidate responses.

    Attributes:
        example_id: Unique id of the example (used as the qid in qrels/runs; no whitespace).
        context: The context turns, oldest first.
        candidates: Candidate response texts.
        candidate_ids: One id per candidate, unique within the example.
        positive_ids: The ids of the correct candidates (a subset of ``candidate_ids``; empty
            only for unlabelled test data).
    """

    example_id: str
    context: list[str]
    candidates: list[str]
    candidate_ids: list[str]
    positive_ids: list[str]

    def __post_init__(self) -> None:
        # Catch hand-built examples that would silently evaluate wrong.
        if len(self.candidates) != len(self.candidate_ids):
            raise ValueError(
                f"example {self.example_id!r}: {len(self.candidates)} candidates but "
                f"{len(self.candidate_ids)} candidate ids"
            )
        if len(set(self.candidate_ids)) != len(self.candidate_ids):
            raise ValueError(f"example {self.example_id!r}: duplicate candidate ids")
        unknown = set(self.positive_ids) - set(self.candidate_ids)
        if unknown:
            raise ValueError(
                f"example {self.example_id!r}: positive id(s) {sorted(unknown)} are not candidates"
            )


# ---------------------------------------------------------------------------------------------
# Text helpers.


def clean_utterance(text: str) -> str:
    """Removes Ubuntu V2 markers from one utterance or response.

    ``__eou__`` (and a stray ``__eot__``) become a single space; surrounding whitespace is
    stripped. Inner whitespace is otherwise kept (pasted command output relies on it).
    """
    return _EOT_RE.sub(" ", _EOU_RE.sub(" ", text)).strip()


def split_turns(context: str, where: str) -> list[str]:
    """Splits an Ubuntu V2 context into cleaned turns, oldest first.

    Args:
        context: The raw ``Context`` field (turns ended by ``__eot__``).
        where: ``file:line`` for error messages.

    Raises:
        ValueError: If the context or one of its turns is empty.
    """
    pieces = _EOT_RE.split(context)
    # A context normally ends with __eot__, which leaves one empty trailing piece.
    if pieces and not pieces[-1].strip():
        pieces.pop()
    if not pieces:
        raise ValueError(f"{where}: empty context")
    turns = []
    for number, piece in enumerate(pieces, start=1):
        turn = clean_utterance(piece)
        if not turn:
            raise ValueError(f"{where}: context turn {number} is empty")
        turns.append(turn)
    return turns


def join_context(
    turns: list[str],
    max_chars: int | None = None,
    sep: str = " ",
    max_turns: int | None = None,
) -> str:
    """Joins context turns into one string, truncating from the head.

    The latest turns are kept and the oldest dropped, since the turns right before the response
    matter most. If even the latest turn alone is longer than ``max_chars``, its last
    ``max_chars`` characters are kept (again dropping from the head). Models with a token limit
    should likewise truncate contexts from the left (see :func:`left_truncate_tokens`).

    Args:
        turns: Context turns, oldest first.
        max_chars: Maximum length of the result in characters; None for no limit.
        sep: Separator placed between turns (e.g. ``" [SEP] "``).
        max_turns: Keep at most this many latest turns; None for all.

    Returns:
        The joined context, ``len(result) <= max_chars`` when a limit is given.

    Raises:
        ValueError: If ``max_chars`` or ``max_turns`` is smaller than 1.
    """
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if max_turns is not None and max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    if max_turns is not None:
        turns = turns[-max_turns:]
    if max_chars is None:
        return sep.join(turns)
    kept: list[str] = []
    length = 0
    for turn in reversed(turns):
        extra = len(turn) + (len(sep) if kept else 0)
        if length + extra > max_chars:
            if not kept:
                kept.append(turn[-max_chars:])
            break
        kept.append(turn)
        length += extra
    return sep.join(reversed(kept))


def left_truncate_tokens(ids: list[int], max_len: int, keep_first: int = 0) -> list[int]:
    """Truncates a token-id sequence from the left (keeps the latest tokens).

    Args:
        ids: Token ids of a dialogue context, oldest first.
        max_len: Maximum length of the result.
        keep_first: Number of leading ids to always keep (e.g. 1 for a ``[CLS]`` token); the
            remaining ``max_len - keep_first`` positions hold the latest ids.

    Returns:
        ``ids`` unchanged if short enough, else
        ``ids[:keep_first] + ids[-(max_len - keep_first):]``.

    Raises:
        ValueError: If ``max_len < 1`` or ``keep_first`` is not in ``[0, max_len)``.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if not 0 <= keep_first < max_len:
        raise ValueError(f"keep_first must be in [0, {max_len}), got {keep_first}")
    if len(ids) <= max_len:
        return list(ids)
    return list(ids[:keep_first]) + list(ids[len(ids) - (max_len - keep_first):])


def left_truncate_texts(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> list[str]:
    """Cuts each text from the **left** to ``max_tokens`` tokens of ``tokenizer``, keeping the latest.

    A model's tokenizer truncates from the right, which drops the turns of a dialogue context
    that decide the response; cutting the string first makes the model see its end. The cut
    falls at a token's character offset, so no text is re-spelt. A slow tokenizer has no
    offsets: the cut then keeps about 4 characters per token (:func:`join_context`).

    Args:
        tokenizer: a Hugging Face tokenizer (e.g. ``model.tokenizer``).
        texts: the texts to cut.
        max_tokens: tokens to keep, special tokens not counted.
    """
    texts = list(texts)
    if not tokenizer.is_fast:
        return [join_context([t], max_chars=4 * max_tokens) for t in texts]
    out: list[str] = []
    # Chunks bound the memory of the offset mappings over a whole training file.
    for start in range(0, len(texts), 4096):
        chunk = texts[start : start + 4096]
        # verbose=False: these texts are meant to be longer than the model's limit before the cut.
        enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        for text, offsets in zip(chunk, enc["offset_mapping"]):
            out.append(text if len(offsets) <= max_tokens else text[offsets[len(offsets) - max_tokens][0] :])
    return out


# ---------------------------------------------------------------------------------------------
# Ubuntu Dialogue Corpus V2 (CSV).


def _open_csv(path: PathLike) -> IO[str]:
    # newline="" is what the csv module needs for quoted fields holding newlines; open_text
    # turns bytes that are not UTF-8 into an error naming the file, line and byte offset.
    return open_text(path, newline="")


def _csv_rows(
    path: PathLike, on_header: Callable[[list[str]], None]
) -> Iterator[tuple[int, list[str]]]:
    """Yields ``(start_line, row)`` for each non-blank data row of a CSV file.

    ``on_header`` receives the header first (so a bad header fails even without data rows).
    ``start_line`` is the physical line where the record starts (records may span lines).

    Raises:
        ValueError: On an empty file or broken quoting, naming ``file:line``.
    """
    with _open_csv(path) as handle:
        # strict: a stray quote is an error instead of silently merging rows.
        reader = csv.reader(handle, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}:1: empty file (expected a CSV header)")
            on_header([name.strip() for name in header])
            end_line = reader.line_num
            for row in reader:
                start_line, end_line = end_line + 1, reader.line_num
                if not row:  # a blank line holds no record
                    continue
                yield start_line, row
        except csv.Error as exc:
            raise ValueError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None


def _column_index(header: list[str], names: Iterable[str], path: PathLike) -> dict[str, int]:
    index = {name: i for i, name in enumerate(header)}
    missing = [name for name in names if name not in index]
    if missing:
        raise ValueError(f"{path}:1: CSV header {header} lacks column(s) {missing}")
    return index


def _check_width(row: list[str], width: int, where: str) -> None:
    if len(row) != width:
        raise ValueError(f"{where}: expected {width} columns, got {len(row)}")


def _response(text: str, column: str, where: str) -> str:
    cleaned = clean_utterance(text)
    if not cleaned:
        raise ValueError(f"{where}: empty {column!r}")
    return cleaned


def read_ubuntu_v2_train(path: PathLike) -> Iterator[TrainPair]:
    """Streams the Ubuntu V2 training file (``Context,Utterance,Label``).

    Args:
        path: ``train.csv`` (``.gz`` is decompressed).

    Yields:
        :class:`TrainPair` per row, in file order.

    Raises:
        ValueError: On a missing column, a row with the wrong number of fields, an empty
            context/turn/response or a label other than 1/0, naming ``file:line``.
    """
    col: dict[str, int] = {}

    def on_header(header: list[str]) -> None:
        col.update(_column_index(header, _TRAIN_COLUMNS, path))
        col["_width"] = len(header)

    count = 0
    for line, row in _csv_rows(path, on_header):
        where = f"{path}:{line}"
        _check_width(row, col["_width"], where)
        label_text = row[col["Label"]].strip()
        if label_text not in _LABELS:
            raise ValueError(f"{where}: label {label_text!r} is not 1 or 0")
        context = split_turns(row[col["Context"]], where)
        response = _response(row[col["Utterance"]], "Utterance", where)
        count += 1
        yield TrainPair(context, response, _LABELS[label_text])
    logger.debug("Read %d Ubuntu V2 training pairs from %s", count, path)


def read_ubuntu_v2_eval(path: PathLike) -> Iterator[ResponseExample]:
    """Streams the Ubuntu V2 validation/test file (ground truth plus distractors).

    Candidate ids are **positions**: ``"0"`` is the ground truth, ``"1".."9"`` are
    ``Distractor_0..Distractor_8``. Evaluation must therefore never depend on candidate order or
    ids: our runs break score ties by docid (ascending, as Anserini does), so a model giving
    tied scores would put candidate ``"0"`` first and look perfect, while trec_eval breaks ties
    the other way. Pass ``docid_salt`` to :func:`to_qrels_and_candidates` to make tie order
    carry no information.

    ``example_id`` is the 0-based number of the data row (header excluded); it is stable and
    does not depend on how many physical lines a quoted field spans.

    Args:
        path: ``valid.csv`` or ``test.csv`` (``.gz`` is decompressed).

    Yields:
        :class:`ResponseExample` per row with ``positive_ids == ["0"]``.

    Raises:
        ValueError: On a missing column, the wrong number of fields or an empty
            context/turn/candidate, naming ``file:line``.
    """
    col: dict[str, int] = {}
    candidate_cols: list[str] = []

    def on_header(header: list[str]) -> None:
        numbered = sorted(
            (int(m.group(1)), name) for name in header if (m := _DISTRACTOR_RE.match(name))
        )
        if not numbered or [n for n, _ in numbered] != list(range(len(numbered))):
            raise ValueError(
                f"{path}:1: CSV header {header} needs columns Distractor_0..Distractor_N"
            )
        candidate_cols.extend([_GROUND_TRUTH, *(name for _, name in numbered)])
        col.update(_column_index(header, ("Context", *candidate_cols), path))
        col["_width"] = len(header)

    row_index = -1
    for line, row in _csv_rows(path, on_header):
        where = f"{path}:{line}"
        _check_width(row, col["_width"], where)
        row_index += 1
        context = split_turns(row[col["Context"]], where)
        candidates = [_response(row[col[name]], name, where) for name in candidate_cols]
        yield ResponseExample(
            example_id=str(row_index),
            context=context,
            candidates=candidates,
            candidate_ids=[str(i) for i in range(len(candidates))],
            positive_ids=["0"],
        )
    logger.debug("Read %d Ubuntu V2 evaluation examples from %s", row_index + 1, path)


# ---------------------------------------------------------------------------------------------
# DSTC7 track 1 (JSON).


def _json_field(obj: dict, key: str, kind: type | tuple[type, ...], where: str) -> object:
    if key not in obj:
        raise ValueError(f"{where}: missing field {key!r}")
    value = obj[key]
    # bool is an int subclass, but true/false is never a valid id or text.
    if not isinstance(value, kind) or isinstance(value, bool):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        expected = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"{where}: field {key!r} must be {expected}, got {type(value).__name__}")
    return value


def _dstc7_options(options: list, key: str, where: str) -> list[tuple[str, str]]:
    result = []
    for i, option in enumerate(options):
        at = f"{where}, {key}[{i}]"
        if not isinstance(option, dict):
            raise ValueError(f"{at}: expected an object, got {type(option).__name__}")
        cid = _json_field(option, "candidate-id", (str, int), at)
        cid = check_id(str(cid), "candidate-id", at)
        text = clean_utterance(_json_field(option, "utterance", str, at))
        if not text:
            raise ValueError(f"{at}: empty utterance for candidate {cid!r}")
        result.append((cid, text))
    return result


def _dstc7_example(obj: object, where: str, require_answers: bool) -> ResponseExample:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    example_id = _json_field(obj, "example-id", (str, int), where)
    example_id = check_id(str(example_id), "example-id", where)
    where = f"{where} ({example_id})"
    messages = _json_field(obj, "messages-so-far", list, where)
    context = []
    for i, message in enumerate(messages):
        at = f"{where}, messages-so-far[{i}]"
        if not isinstance(message, dict):
            raise ValueError(f"{at}: expected an object, got {type(message).__name__}")
        text = clean_utterance(_json_field(message, "utterance", str, at))
        if not text:
            raise ValueError(f"{at}: empty utterance")
        context.append(text)
    if not context:
        raise ValueError(f"{where}: empty messages-so-far")
    raw_options = _json_field(obj, "options-for-next", list, where)
    options = _dstc7_options(raw_options, "options-for-next", where)
    if not options:
        raise ValueError(f"{where}: empty options-for-next")
    ids = [cid for cid, _ in options]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: duplicate candidate-id in options-for-next")
    if "options-for-correct-answers" in obj or require_answers:
        answers = _dstc7_options(
            _json_field(obj, "options-for-correct-answers", list, where),
            "options-for-correct-answers",
            where,
        )
        if not answers:
            raise ValueError(f"{where}: empty options-for-correct-answers")
    else:
        answers = []
    known = set(ids)
    for cid, _ in answers:
        if cid not in known:
            raise ValueError(f"{where}: correct answer {cid!r} is not among options-for-next")
    return ResponseExample(
        example_id=example_id,
        context=context,
        candidates=[text for _, text in options],
        candidate_ids=ids,
        positive_ids=[cid for cid, _ in answers],
    )


def read_dstc7(path: PathLike, *, require_answers: bool = True) -> Iterator[ResponseExample]:
    """Reads a DSTC7 track 1 (subtask 1) JSON file: a JSON array of examples.

    Each example has ``example-id``, ``messages-so-far`` (``[{speaker, utterance}]``, oldest
    first), ``options-for-next`` (``[{candidate-id, utterance}]``) and, for train/dev files,
    ``options-for-correct-answers`` whose ids must occur among ``options-for-next``. The whole
    file is loaded with :func:`json.load` (the train file is ~34 MB).

    Args:
        path: The JSON file (``.gz`` is decompressed).
        require_answers: Require ``options-for-correct-answers`` (train/dev). Set False for
            unlabelled test files: examples then have empty ``positive_ids``.

    Yields:
        :class:`ResponseExample` per example, in file order; ``candidate_ids`` are the file's
        (opaque) candidate ids.

    Raises:
        ValueError: On invalid JSON, a missing or empty field, a duplicate example/candidate id
            or a correct answer not among the options, naming the file and example index.
    """
    data = load_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of examples, got {type(data).__name__}")
    seen: set[str] = set()
    for index, obj in enumerate(data):
        example = _dstc7_example(obj, f"{path}: example {index}", require_answers)
        if example.example_id in seen:
            raise ValueError(
                f"{path}: example {index}: duplicate example-id {example.example_id!r}"
            )
        seen.add(example.example_id)
        yield example
    logger.debug("Read %d DSTC7 examples from %s", len(data), path)


# ---------------------------------------------------------------------------------------------
# Evaluation structures.


def candidate_docid(example_id: str, candidate_id: str, docid_salt: str | None = None) -> str:
    """The docid of one candidate in qrels/runs: unique across examples.

    Args:
        example_id: The example (qid).
        candidate_id: The candidate's id within the example.
        docid_salt: None for ``f"{example_id}:{candidate_id}"``; otherwise the candidate part is
            replaced by a salted hash so that docid order (the tie-breaker of run writers and of
            trec_eval) says nothing about candidate positions.
    """
    if docid_salt is None:
        return f"{example_id}:{candidate_id}"
    digest = hashlib.sha1(f"{docid_salt}\0{example_id}\0{candidate_id}".encode()).hexdigest()
    return f"{example_id}:{digest[:12]}"


def to_qrels_and_candidates(
    examples: Iterable[ResponseExample],
    *,
    sep: str = " ",
    max_chars: int | None = None,
    docid_salt: str | None = None,
) -> tuple[Qrels, dict[str, str], dict[str, dict[str, str]]]:
    """Builds qrels, query texts and per-query candidate texts from examples.

    Every candidate is judged: positives get grade 1, the others 0, so ir-measures computes
    R@1, R@2, R@5, R@10 and RR over a run ``{example_id: {docid: score}}`` directly.

    Args:
        examples: Response-selection examples with unique ids.
        sep: Turn separator for the query text (see :func:`join_context`).
        max_chars: Head-truncate the query text to this many characters; None for no limit.
        docid_salt: See :func:`candidate_docid`; pass a string to hide candidate positions from
            tie-breaking (recommended for Ubuntu V2, whose candidate ``"0"`` is always correct).

    Returns:
        ``(qrels, queries, candidates)``: qid -> docid -> grade, qid -> context text, and
        qid -> docid -> candidate text (candidates in example order).

    Raises:
        ValueError: On a duplicate example id or a docid collision.
    """
    qrels: Qrels = {}
    queries: dict[str, str] = {}
    candidates: dict[str, dict[str, str]] = {}
    for example in examples:
        qid = example.example_id
        if qid in qrels:
            raise ValueError(f"duplicate example id {qid!r}")
        positives = set(example.positive_ids)
        judged: dict[str, int] = {}
        texts: dict[str, str] = {}
        for cid, text in zip(example.candidate_ids, example.candidates):
            docid = candidate_docid(qid, cid, docid_salt)
            if docid in judged:
                raise ValueError(f"example {qid!r}: docid collision for candidate {cid!r}")
            judged[docid] = int(cid in positives)
            texts[docid] = text
        qrels[qid] = judged
        queries[qid] = join_context(example.context, max_chars=max_chars, sep=sep)
        candidates[qid] = texts
    logger.debug("Built qrels for %d response-selection examples", len(qrels))
    return qrels, queries, candidates
