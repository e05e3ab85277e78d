"""The text-file plumbing every reader of :mod:`mixencoder.data` shares.

Opening (UTF-8 only, ``.gz`` decompressed, errors naming file, line and byte), atomic writing,
identifier checks, and the loops the formats have in common: non-blank lines with their
``file:line`` (:func:`content_lines`), JSON lines, whole JSON files, ``id<TAB>text`` lines,
whitespace-separated columns and the ``<DOC>``/``<top>`` blocks of TREC SGML files. Each raises :class:`ValueError` naming ``file:line``.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import json
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, NamedTuple

PathLike = str | os.PathLike[str]


def open_text(path: PathLike, *, newline: str | None = None) -> IO[str]:
    """Opens a UTF-8 text file for reading, transparently decompressing ``.gz``.

    Universal-newline mode is kept, so CRLF files read like LF files (``newline=""`` turns it
    off, as the csv module needs). A UTF-8 byte-order mark at the start is dropped.

    Encoding policy (every loader of :mod:`mixencoder.data` reads through this): input must be
    UTF-8. Bytes that are not raise :class:`ValueError` naming the file, the line and the byte
    offset of the first bad byte (``corpus.tsv:17: invalid UTF-8 ...``), never a bare
    ``UnicodeDecodeError``: a replaced character would silently change a docid or a query.
    Re-encode such a file first, e.g. ``iconv -f latin1 -t utf-8``.
    """
    path = Path(path)
    if path.suffix == ".gz":
        handle = gzip.open(path, "rt", encoding="utf-8", newline=newline)
    else:
        handle = open(path, encoding="utf-8", newline=newline)
    return _Utf8Checked(handle, path)  # type: ignore[return-value]


class _Utf8Checked:
    """A text handle whose decoding errors name the file, line and byte offset."""

    def __init__(self, handle: IO[str], path: Path) -> None:
        self._handle = handle
        self._path = path
        # The BOM is dropped by hand: the "utf-8-sig" codec silently decodes a file holding
        # only a truncated BOM (b"\xef") as empty, which would hide a damaged file.
        self._at_start = True

    def _strip_bom(self, text: str) -> str:
        if self._at_start and text:
            self._at_start = False
            if text.startswith("\ufeff"):
                return text[1:]
        return text

    def __enter__(self) -> _Utf8Checked:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def __iter__(self) -> _Utf8Checked:
        return self

    def __next__(self) -> str:
        try:
            return self._strip_bom(next(self._handle))
        except UnicodeDecodeError as exc:
            raise self._error(exc) from None

    def read(self, size: int = -1) -> str:
        try:
            return self._strip_bom(self._handle.read(size))
        except UnicodeDecodeError as exc:
            raise self._error(exc) from None

    def readline(self, size: int = -1) -> str:
        try:
            return self._strip_bom(self._handle.readline(size))
        except UnicodeDecodeError as exc:
            raise self._error(exc) from None

    def __getattr__(self, name: str) -> object:
        return getattr(self._handle, name)

    def _error(self, exc: UnicodeDecodeError) -> ValueError:
        line, offset, byte = locate_invalid_utf8(self._path)
        if line is None:  # cannot happen for a file that failed to decode; keep the cause
            return ValueError(f"{self._path}: invalid UTF-8 ({exc.reason})")
        return ValueError(
            f"{self._path}:{line}: invalid UTF-8 (byte 0x{byte:02x} at byte offset {offset}"
            f"{' of the decompressed stream' if self._path.suffix == '.gz' else ''}); "
            "mixencoder reads UTF-8 only: re-encode the file (e.g. iconv -f latin1 -t utf-8)"
        )


def locate_invalid_utf8(path: PathLike) -> tuple[int | None, int | None, int | None]:
    """``(line, byte offset, byte)`` of the first byte of ``path`` that is not valid UTF-8.

    Lines are counted by ``\n``, 1-based; ``(None, None, None)`` if the file is valid UTF-8.
    Streams the file (decompressing ``.gz``), so memory stays bounded.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0  # bytes of the stream before ``chunk``
    newlines = 0
    with opener(path, "rb") as handle:
        while True:
            chunk = handle.read(1 << 20)
            pending = decoder.getstate()[0]  # an incomplete sequence carried over
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                data = pending + chunk
                bad = exc.start
                start = offset - len(pending)
                return newlines + data[:bad].count(b"\n") + 1, start + bad, data[bad]
            newlines += chunk.count(b"\n")
            offset += len(chunk)
            if not chunk:
                return None, None, None


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[IO[str]]:
    """Writes a UTF-8 text file atomically: a temp file in the same directory, then ``os.replace``.

    Readers never see a half-written file, and a crash leaves the previous version intact.

    Args:
        path: The destination file; its parent directories are created.

    Yields:
        A text handle to write to (``\\n`` newlines on every platform).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result ordinary permissions (or the old ones).
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_id(value: str, kind: str, where: str) -> str:
    """Validates an identifier (docid/qid): non-empty and free of whitespace.

    Whitespace would silently shift the columns of TREC run and qrels files.

    Raises:
        ValueError: Naming ``where`` (``file:line``).
    """
    if not value:
        raise ValueError(f"{where}: empty {kind}")
    if any(ch.isspace() for ch in value):
        raise ValueError(f"{where}: {kind} {value!r} contains whitespace")
    return value


def first_content_line(path: PathLike) -> tuple[int, str] | None:
    """Returns ``(line_no, line)`` of the first non-blank line, or None for an empty file."""
    with open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if line.strip():
                return line_no, line
    return None


class TextLine(NamedTuple):
    """One non-blank line of a text file."""

    number: int  # 1-based
    where: str  # ``file:line``, for error messages
    text: str  # without its line ending


def content_lines(path: PathLike) -> Iterator[TextLine]:
    """The non-blank lines of ``path`` (blank or whitespace-only lines are skipped)."""
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield TextLine(number, f"{path}:{number}", line.rstrip("\r\n"))


def json_lines(path: PathLike) -> Iterator[tuple[TextLine, dict[str, Any]]]:
    """``(line, object)`` for every non-blank line of a JSON-lines file; each must be a JSON object."""
    for line in content_lines(path):
        try:
            obj = json.loads(line.text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{line.where}: invalid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{line.where}: expected a JSON object, got {type(obj).__name__}")
        yield line, obj


def load_json(path: PathLike) -> Any:
    """The parsed content of a whole JSON file; invalid JSON names the line it failed at."""
    with open_text(path) as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None


def id_text_lines(path: PathLike, layout: str) -> Iterator[tuple[TextLine, str, str]]:
    """``(line, id, text)`` for every ``id<TAB>text`` line (the text may hold more tabs).

    ``layout`` names the columns in the error for a line without a tab, e.g. ``"docid<TAB>text"``.
    """
    for line in content_lines(path):
        ident, sep, text = line.text.partition("\t")
        if not sep:
            raise ValueError(f"{line.where}: expected '{layout}', found no tab")
        yield line, ident, text


def whitespace_columns(path: PathLike, columns: str) -> Iterator[tuple[TextLine, list[str]]]:
    """``(line, fields)`` for every line split on whitespace into exactly the named ``columns``
    (space-separated names, e.g. ``"qid iter docid rel"``)."""
    width = len(columns.split())
    for line in content_lines(path):
        fields = line.text.split()
        if len(fields) != width:
            raise ValueError(
                f"{line.where}: expected {width} columns '{columns}', got {len(fields)}: "
                f"{line.text.strip()[:80]!r}"
            )
        yield line, fields


def json_id(value: object, field: str, where: str) -> str:
    """A JSON record's id field as a string (an integer is taken in decimal); not yet checked
    for emptiness or whitespace (see :func:`check_id`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: '{field}' must be a string, got {type(value).__name__}")
    return value


def tagged_blocks(path: PathLike, tag: re.Pattern[str], name: str, nested_hint: str = "") -> Iterator[tuple[int, str]]:
    """``(line of the opening tag, text inside)`` for every ``<name>...</name>`` block of an SGML
    file (TREC documents and topics), wherever the tags sit on their lines.

    Args:
        tag: matches the opening and the closing tag (e.g. ``</?DOC>``).
        name: the tag's name in error messages.
        nested_hint: appended to the error for an opening tag inside an open block.

    Raises:
        ValueError: text outside a block, a closing tag without an opening one, a nested
            opening tag or a block left open at the end of the file, naming ``file:line``.
    """
    start_line: int | None = None  # line of the open tag, None when outside a block
    parts: list[str] = []
    with open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            pos = 0
            for match in tag.finditer(line):
                chunk = line[pos:match.start()]
                pos = match.end()
                closing = match.group().startswith("</")
                if start_line is None:
                    if chunk.strip():
                        raise ValueError(f"{path}:{line_no}: text outside <{name}>: {chunk.strip()[:60]!r}")
                    if closing:
                        raise ValueError(f"{path}:{line_no}: </{name}> without an open <{name}>")
                    start_line, parts = line_no, []
                else:
                    if not closing:
                        raise ValueError(
                            f"{path}:{line_no}: <{name}> inside the <{name}> opened at line {start_line}{nested_hint}"
                        )
                    parts.append(chunk)
                    yield start_line, "".join(parts)
                    start_line, parts = None, []
            rest = line[pos:]
            if start_line is None:
                if rest.strip():
                    raise ValueError(f"{path}:{line_no}: text outside <{name}>: {rest.strip()[:60]!r}")
            else:
                parts.append(rest)
    if start_line is not None:
        raise ValueError(f"{path}:{start_line}: <{name}> not closed by </{name}> before end of file")
