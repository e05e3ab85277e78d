"""Corpus readers and the Pyserini JsonCollection writer.

Supported inputs (auto-detected per file from its first non-blank line; ``.gz`` is decompressed):

* Pyserini ``JsonCollection``: one JSON object per line with ``"id"`` and ``"contents"`` (extra
  fields are ignored), or a ``.json`` file holding a JSON array of such objects; a directory of
  such files is read file by file in sorted order.
* MS MARCO ``collection.tsv``: ``docid<TAB>text`` per line.
* TREC SGML: ``<DOC><DOCNO>id</DOCNO> ... </DOC>``; the text is everything inside ``<DOC>``
  except the ``DOCNO`` (and ``DOCHDR``) elements, with the markup of upper-case TREC tags such as
  ``<TEXT>``/``<HEADLINE>`` removed and whitespace normalised.

Readers stream (one document in memory at a time, except for JSON-array files) and are strict: a
malformed record raises :class:`ValueError` naming the file and line, and duplicate docids are an
error, since a silently dropped or shadowed document would corrupt every downstream number.

The I/O helpers the readers share live in :mod:`mixencoder.data._text_files`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from mixencoder.data._text_files import (
    PathLike,
    atomic_write,
    check_id,
    first_content_line,
    id_text_lines,
    json_id,
    json_lines,
    load_json,
    tagged_blocks,
)

logger = logging.getLogger(__name__)

#: File name endings read when ``read_corpus`` is given a directory.
CORPUS_SUFFIXES = (".jsonl", ".json", ".tsv", ".trec", ".txt")


class Doc(NamedTuple):
    """One document of a corpus."""

    docid: str
    text: str


# ---------------------------------------------------------------------------------------------
# Format detection.


def detect_format(path: PathLike) -> str | None:
    """Detects the corpus format of one file from its first non-blank line.

    Args:
        path: A corpus file.

    Returns:
        ``"jsonl"``, ``"json"`` (a JSON array), ``"trec"`` or ``"tsv"``; None for an empty file.

    Raises:
        ValueError: If the first line matches no supported format.
    """
    first = first_content_line(path)
    if first is None:
        return None
    line_no, line = first
    head = line.lstrip()
    if head.startswith("{"):
        return "jsonl"
    if head.startswith("["):
        return "json"
    if head.startswith("<"):
        return "trec"
    if "\t" in line:
        return "tsv"
    raise ValueError(
        f"{path}:{line_no}: cannot detect the corpus format (expected a JSON object, a JSON "
        f"array, a TREC <DOC> or 'docid<TAB>text'), got {line[:80]!r}"
    )


def corpus_files(path: PathLike) -> list[Path]:
    """Lists the files making up a corpus: the file itself, or a directory's corpus files.

    Directory members are taken recursively in sorted order when their name ends with one of
    :data:`CORPUS_SUFFIXES` (optionally plus ``.gz``); hidden files are ignored and other files are
    skipped with a warning.

    Raises:
        FileNotFoundError: If ``path`` does not exist or a directory holds no corpus file.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"corpus not found: {path}")
    files: list[Path] = []
    skipped: list[str] = []
    for member in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = member.relative_to(path)
        if any(part.startswith(".") for part in rel.parts):
            continue
        name = member.name[:-3] if member.name.endswith(".gz") else member.name
        if name.endswith(CORPUS_SUFFIXES):
            files.append(member)
        else:
            skipped.append(str(rel))
    if skipped:
        logger.warning("Skipping %d non-corpus file(s) in %s: %s", len(skipped), path, skipped[:5])
    if not files:
        raise FileNotFoundError(f"no corpus files ({', '.join(CORPUS_SUFFIXES)}) in {path}")
    return files


# ---------------------------------------------------------------------------------------------
# Per-format readers (each yields (docid, text, line_no)).


def _json_doc(obj: object, where: str) -> Doc:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "id" not in obj:
        raise ValueError(f"{where}: JSON document has no 'id' field")
    docid = json_id(obj["id"], "id", where)
    if "contents" not in obj:
        raise ValueError(f"{where}: JSON document {docid!r} has no 'contents' field")
    contents = obj["contents"]
    if not isinstance(contents, str):
        raise ValueError(f"{where}: 'contents' of {docid!r} must be a string")
    return Doc(check_id(docid, "docid", where), contents)


def _read_jsonl(path: Path) -> Iterator[tuple[Doc, int]]:
    for line, obj in json_lines(path):
        yield _json_doc(obj, line.where), line.number


def _read_json_array(path: Path) -> Iterator[tuple[Doc, int]]:
    data = load_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}:1: expected a JSON array of documents")
    # Line numbers are lost by json.load; report the element index instead (as line 1).
    for index, obj in enumerate(data):
        yield _json_doc(obj, f"{path}:1 (array element {index})"), 1


def _read_tsv(path: Path) -> Iterator[tuple[Doc, int]]:
    for line, docid, text in id_text_lines(path, "docid<TAB>text"):
        yield Doc(check_id(docid, "docid", line.where), text), line.number


_DOC_TAG = re.compile(r"</?DOC>")
_DOCNO = re.compile(r"<DOCNO>(.*?)</DOCNO>", re.DOTALL)
_DOCHDR = re.compile(r"<DOCHDR>.*?</DOCHDR>", re.DOTALL)
# Upper-case SGML tags (TREC convention, optionally with attributes such as <F P=105>); the
# markup goes, the content stays. Lower-case (HTML) tags are document text and are kept.
_TREC_TAG = re.compile(r"</?[A-Z][A-Z0-9_]*(?:\s[^<>]*)?>")


def _trec_doc(body: str, path: Path, start_line: int) -> Doc:
    where = f"{path}:{start_line}"
    docnos = _DOCNO.findall(body)
    if not docnos:
        raise ValueError(f"{where}: <DOC> without <DOCNO>...</DOCNO>")
    if len(docnos) > 1:
        raise ValueError(f"{where}: <DOC> with {len(docnos)} <DOCNO> elements")
    docid = check_id(docnos[0].strip(), "docid", where)
    text = _DOCHDR.sub(" ", _DOCNO.sub(" ", body))
    text = _TREC_TAG.sub(" ", text)
    return Doc(docid, " ".join(text.split()))


def _read_trec(path: Path) -> Iterator[tuple[Doc, int]]:
    for start_line, body in tagged_blocks(path, _DOC_TAG, "DOC", nested_hint=" (missing </DOC>)"):
        yield _trec_doc(body, path, start_line), start_line


_READERS = {"jsonl": _read_jsonl, "json": _read_json_array, "tsv": _read_tsv, "trec": _read_trec}


def read_corpus(
    path: PathLike, *, fmt: str | None = None, check_duplicates: bool = True
) -> Iterator[Doc]:
    """Streams the documents of a corpus file or directory.

    Args:
        path: A corpus file, or a directory of corpus files (e.g. a Pyserini JsonCollection).
        fmt: Force a format (``"jsonl"``, ``"json"``, ``"tsv"``, ``"trec"``) instead of detecting
            it per file.
        check_duplicates: Raise on a repeated docid. Keeps a set of all docids seen (about
            100 bytes each: ~1 GB for the 8.8M MS MARCO passages); turn off only for corpora known
            to be clean.

    Yields:
        :class:`Doc` tuples in file order.

    Raises:
        FileNotFoundError: If the corpus does not exist.
        ValueError: On a malformed record or a duplicate docid, naming the file and line.
    """
    if fmt is not None and fmt not in _READERS:
        raise ValueError(f"unknown corpus format {fmt!r}; expected one of {sorted(_READERS)}")
    seen: set[str] = set()
    for file in corpus_files(path):
        file_fmt = fmt or detect_format(file)
        if file_fmt is None:
            logger.warning("Empty corpus file %s", file)
            continue
        logger.debug("Reading %s as %s", file, file_fmt)
        for doc, line_no in _READERS[file_fmt](file):
            if check_duplicates:
                if doc.docid in seen:
                    raise ValueError(f"{file}:{line_no}: duplicate docid {doc.docid!r}")
                seen.add(doc.docid)
            yield doc


def write_jsonl_collection(
    docs: Iterable[Doc | tuple[str, str]],
    out_dir: PathLike,
    *,
    shards: int = 1,
    prefix: str = "docs",
) -> int:
    """Writes documents as a Pyserini JsonCollection (``{"id": ..., "contents": ...}`` lines).

    Anserini indexes one file per thread, so ``shards > 1`` spreads the documents round-robin
    over that many files to let a multi-threaded indexer work in parallel. Each file is written
    atomically.

    Args:
        docs: :class:`Doc` or ``(docid, text)`` pairs.
        out_dir: Directory to write into; created if missing, and must not already hold files.
        shards: Number of ``.jsonl`` files to spread the documents over.
        prefix: File name prefix (``{prefix}-00000.jsonl``, ...).

    Returns:
        The number of documents written.

    Raises:
        FileExistsError: If ``out_dir`` exists and is not empty.
        ValueError: On an invalid or duplicate docid, or non-string text.
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        # Mixing with stale files would index documents nobody asked for.
        raise FileExistsError(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    count = 0
    with contextlib.ExitStack() as stack:
        handles = [
            stack.enter_context(atomic_write(out / f"{prefix}-{i:05d}.jsonl")) for i in range(shards)
        ]
        for index, item in enumerate(docs):
            docid, text = item
            where = f"document #{index}"
            if not isinstance(docid, str):
                raise ValueError(f"{where}: docid must be a string, got {type(docid).__name__}")
            check_id(docid, "docid", where)
            if not isinstance(text, str):
                raise ValueError(f"{where}: text of {docid!r} must be a string")
            if docid in seen:
                raise ValueError(f"{where}: duplicate docid {docid!r}")
            seen.add(docid)
            handles[index % shards].write(
                json.dumps({"id": docid, "contents": text}, ensure_ascii=False) + "\n"
            )
            count += 1
    logger.info("Wrote %d documents to JsonCollection %s (%d file(s))", count, out, shards)
    return count
