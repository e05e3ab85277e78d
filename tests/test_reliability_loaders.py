"""Property-based tests of every loader: random bytes and mutated real lines.

For each loader (corpora in the TSV, JSONL, JSON-array and TREC formats, topics in TSV and TREC,
qrels, TREC and MS MARCO runs, top1000, text and id triples, Ubuntu V2 train and valid, DSTC7,
MNLI), hypothesis writes a file and reads it back. Whatever the bytes, the loader must either

* parse it, and then return exactly one record per record in the input (no silently dropped
  line: the expected count is computed independently of the loader), or
* raise the project's error: a plain ``ValueError`` (``KeyError`` for an id triple naming an
  unknown id) whose message starts with ``PATH:LINE:`` (``PATH:`` for a whole-file problem
  such as an empty file), the line within the file;

never another exception type (``UnicodeDecodeError``, ``IndexError``, ``JSONDecodeError``...).
The default run tries a few hundred examples in total; ``-m slow`` tries thousands.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixencoder.data import (
    read_corpus,
    read_dstc7,
    read_id_triples,
    read_mnli,
    read_qrels,
    read_run,
    read_top1000,
    read_topics,
    read_triples,
    read_ubuntu_v2_eval,
    read_ubuntu_v2_train,
)
from mixencoder.data._text_files import locate_invalid_utf8

FAST = 12  # examples per loader and property in the default run (x 16 loaders x 2 properties)
SLOW = 400
N_LINES = 12  # real lines (records) per seed file


def _head(path: Path, n: int) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            out.append(line)
            if len(out) == n:
                break
    return out


def _until_last(lines: list[str], closing: str) -> bytes:
    """The lines up to and including the last one holding ``closing`` (whole records only)."""
    last = max(i for i, line in enumerate(lines) if closing in line)
    return "".join(lines[: last + 1]).encode()


def _text_lines(data: bytes) -> list[str]:
    """The lines a text-mode (universal newline) reader sees, after UTF-8(-sig) decoding."""
    return list(io.StringIO(data.decode("utf-8-sig"), newline=None))


def nonblank(data: bytes) -> int:
    return sum(1 for line in _text_lines(data) if line.strip())


def count_tag(tag: str, flags: int = 0) -> Callable[[bytes], int]:
    return lambda data: len(re.findall(tag, data.decode("utf-8-sig"), flags))


def topics_records(data: bytes) -> int:
    """read_topics reads a file as TREC topics when its first non-blank line starts with '<', and
    as ``qid<TAB>query`` lines otherwise (random bytes such as ``b"\\x00\\t\\x00"`` are one TSV topic)."""
    lines = [line for line in _text_lines(data) if line.strip()]
    if lines and not lines[0].lstrip().startswith("<"):
        return len(lines)
    return count_tag("<top>", re.I)(data)


def csv_records(data: bytes) -> int:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""), strict=True))
    return sum(1 for row in rows[1:] if row)


def json_array_len(data: bytes) -> int:
    text = data.decode("utf-8-sig")
    return len(json.loads(text)) if text.strip() else 0  # an empty file holds no records


@dataclass
class Loader:
    name: str
    suffix: str
    read: Callable[[Path], int]  # parses the file, returns the number of records
    expected: Callable[[bytes], int]  # the number of records a successful parse must return
    seed: Callable[[Path], bytes]  # real content (from the shared data) to mutate
    key_errors: bool = False  # KeyError naming file:line is part of the contract


def _corpus_count(path: Path) -> int:
    return sum(1 for _ in read_corpus(path))


def _run_count(path: Path) -> int:
    return sum(len(hits) for hits in read_run(path).values())


def _qrels_count(path: Path) -> int:
    return sum(len(j) for j in read_qrels(path).values())


def _mnli_count(path: Path) -> int:
    examples, skipped = read_mnli(path)
    return len(examples) + skipped


_QUERIES = {"q1": "first query", "q2": "second query"}
_COLLECTION = {str(i): f"passage {i}" for i in range(20)}


def _id_triples_count(path: Path) -> int:
    return sum(1 for _ in read_id_triples(path, _QUERIES, _COLLECTION))


def _dstc7_seed(data: Path) -> bytes:
    with open(data / "ubuntu/dstc7/ubuntu_dev_subtask_1.json", encoding="utf-8") as f:
        examples = json.load(f)[:3]
    for ex in examples:  # keep the correct answer and 4 distractors: small enough to mutate
        correct = {c["candidate-id"] for c in ex["options-for-correct-answers"]}
        opts = ex["options-for-next"]
        ex["options-for-next"] = [o for o in opts if o["candidate-id"] in correct] + [
            o for o in opts if o["candidate-id"] not in correct
        ][:4]
    return json.dumps(examples, indent=1).encode()


def _tsv_from_collection(data: Path) -> list[str]:
    return _head(data / "msmarco/dl20/collection.tsv", N_LINES)


def _build_loaders(data: Path) -> list[Loader]:
    coll = _tsv_from_collection(data)
    pairs = [line.rstrip("\n").split("\t", 1) for line in coll]
    return [
        Loader("corpus-tsv", ".tsv", _corpus_count, nonblank, lambda d: "".join(coll).encode()),
        Loader(
            "corpus-jsonl", ".jsonl", _corpus_count, nonblank,
            lambda d: "".join(
                json.dumps({"id": i, "contents": t}, ensure_ascii=False) + "\n" for i, t in pairs
            ).encode(),
        ),
        Loader(
            "corpus-json-array", ".json", _corpus_count, json_array_len,
            lambda d: json.dumps([{"id": i, "contents": t} for i, t in pairs], indent=1).encode(),
        ),
        Loader(
            "corpus-trec", ".trec", _corpus_count, count_tag("<DOC>"),
            lambda d: _until_last(_head(d / "vaswani/doc-text.trec", 6 * N_LINES), "</DOC>"),
        ),
        Loader(
            "topics-tsv", ".tsv", lambda p: len(read_topics(p)), nonblank,
            lambda d: "".join(_head(d / "msmarco/dl20/queries.tsv", N_LINES)).encode(),
        ),
        Loader(
            "topics-trec", ".trec", lambda p: len(read_topics(p)), topics_records,
            lambda d: _until_last(_head(d / "vaswani/query-text.trec", 5 * N_LINES), "</top>"),
        ),
        Loader(
            "qrels", ".txt", _qrels_count, nonblank,
            lambda d: "".join(_head(d / "msmarco/dl20/qrels.txt", N_LINES)).encode(),
        ),
        Loader(
            "run-trec", ".trec", _run_count, nonblank,
            lambda d: "".join(_head(d / "msmarco/dl20/bm25.top100.trec", N_LINES)).encode(),
        ),
        Loader(
            "run-msmarco", ".tsv", _run_count, nonblank,
            lambda d: "".join(
                "\t".join(line.split()[i] for i in (0, 2, 3)) + "\n"
                for line in _head(d / "msmarco/dl20/bm25.top100.trec", N_LINES)
            ).encode(),
        ),
        Loader(
            "top1000", ".tsv", lambda p: sum(len(h) for h in read_top1000(p).run.values()),
            nonblank, lambda d: "".join(_head(d / "msmarco/dl20/top100.tsv", N_LINES)).encode(),
        ),
        Loader(
            "triples", ".tsv", lambda p: sum(1 for _ in read_triples(p)), nonblank,
            lambda d: "".join(
                f"{pairs[i][1][:60]}\t{pairs[i + 1][1][:200]}\t{pairs[i + 2][1][:200]}\n"
                for i in range(len(pairs) - 2)
            ).encode(),
        ),
        Loader(
            "id-triples", ".tsv", _id_triples_count, nonblank,
            lambda d: "".join(f"q{1 + i % 2}\t{i}\t{i + 1}\n" for i in range(N_LINES)).encode(),
            key_errors=True,
        ),
        Loader(
            "ubuntu-v2-train", ".csv", lambda p: sum(1 for _ in read_ubuntu_v2_train(p)),
            csv_records,
            lambda d: "".join(_head(d / "ubuntu/v2/train.csv", N_LINES)).encode(),
        ),
        Loader(
            "ubuntu-v2-valid", ".csv", lambda p: sum(1 for _ in read_ubuntu_v2_eval(p)),
            csv_records, lambda d: "".join(_head(d / "ubuntu/v2/valid.csv", 6)).encode(),
        ),
        Loader("dstc7", ".json", lambda p: sum(1 for _ in read_dstc7(p)), json_array_len,
               _dstc7_seed),
        Loader(
            "mnli", ".jsonl", _mnli_count, nonblank,
            lambda d: "".join(_head(d / "mnli/dev_matched_sample.jsonl", N_LINES)).encode(),
        ),
    ]


LOADER_NAMES = [
    "corpus-tsv", "corpus-jsonl", "corpus-json-array", "corpus-trec", "topics-tsv", "topics-trec",
    "qrels", "run-trec", "run-msmarco", "top1000", "triples", "id-triples", "ubuntu-v2-train",
    "ubuntu-v2-valid", "dstc7", "mnli",
]


@pytest.fixture(scope="module")
def loaders(shared_data: Path) -> dict[str, tuple[Loader, bytes]]:
    built = {ld.name: ld for ld in _build_loaders(shared_data)}
    assert sorted(built) == sorted(LOADER_NAMES)
    return {name: (ld, ld.seed(shared_data)) for name, ld in built.items()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("loaders")


_LINE = re.compile(r":(\d+)[: ]")


def check(loader: Loader, path: Path, data: bytes) -> str:
    """Write ``data``, read it with ``loader``; assert the contract. Returns the outcome."""
    path.write_bytes(data)
    allowed: tuple[type[BaseException], ...] = (ValueError, KeyError) if loader.key_errors else (
        ValueError,
    )
    try:
        n = loader.read(path)
    except allowed as exc:
        assert type(exc) in (ValueError, KeyError), f"{type(exc).__name__} leaked: {exc!r}"
        msg = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        prefix = f"{path}:"
        assert msg.startswith(prefix), f"error does not name the file: {msg!r}"
        m = _LINE.match(msg[len(str(path)) :])
        if m:  # a line number must point into the file
            assert 1 <= int(m.group(1)) <= data.count(b"\n") + data.count(b"\r") + 1, msg
        else:
            assert msg[len(prefix) :].startswith(" "), f"no line and no whole-file message: {msg!r}"
        if b"\xff" in data or locate_invalid_utf8(path)[0] is not None:
            return "error-encoding" if "invalid UTF-8" in msg else "error"
        return "error"
    assert locate_invalid_utf8(path)[0] is None, "invalid UTF-8 was accepted"
    expected = loader.expected(data)
    assert n == expected, f"{loader.name}: parsed {n} records, the input holds {expected}"
    return "parsed"


# --- strategies --------------------------------------------------------------------------------

_nasty_text = st.text(
    alphabet=st.sampled_from(list("\t\n\r \x00\x0b\x0c\x1c\x85\u2028\ufeff\"'{}[]<>/\\,:#-0123456789aZ"))
    | st.characters(),
    max_size=8,
)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["insert-text", "insert-bytes", "delete", "flip", "dup-line",
                                   "truncate", "swap-sep"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "insert-text":
            data[pos:pos] = draw(_nasty_text).encode("utf-8", "surrogatepass")  # lone surrogates too
        elif op == "insert-bytes":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 12))]
        elif op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "dup-line":
            start = data.rfind(b"\n", 0, pos) + 1
            end = data.find(b"\n", pos)
            end = len(data) if end < 0 else end + 1
            data[end:end] = data[start:end]
        elif op == "truncate":
            del data[pos:]
        elif op == "swap-sep" and data:
            idx = [i for i, b in enumerate(data) if b in b"\t ,:"]
            if idx:
                i = idx[draw(st.integers(0, len(idx) - 1))]
                data[i] = draw(st.sampled_from(b"\t ,:\n"))
    return bytes(data)


def _settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=n == FAST,  # CI: the same examples every run
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large],
        database=None,
    )


def _run_property(loaders, workdir, name: str, n: int, mode: str) -> None:
    loader, seed = loaders[name]
    path = workdir / f"{name}{loader.suffix}"
    assert check(loader, path, seed) == "parsed"  # the seed itself is well-formed

    strategy = st.binary(max_size=300) if mode == "random" else mutated(seed)

    @_settings(n)
    @given(data=strategy)
    def prop(data: bytes) -> None:
        check(loader, path, data)

    prop()


@pytest.mark.parametrize("name", LOADER_NAMES)
@pytest.mark.parametrize("mode", ["random", "mutated"])
def test_loader_parses_or_names_file_and_line(loaders, workdir, name: str, mode: str) -> None:
    _run_property(loaders, workdir, name, FAST, mode)


@pytest.mark.slow
@pytest.mark.parametrize("name", LOADER_NAMES)
@pytest.mark.parametrize("mode", ["random", "mutated"])
def test_loader_parses_or_names_file_and_line_slow(loaders, workdir, name: str, mode: str) -> None:
    _run_property(loaders, workdir, name, SLOW, mode)


# --- the encoding policy, one case per loader --------------------------------------------------


@pytest.mark.parametrize("name", LOADER_NAMES)
def test_one_bad_byte_names_file_line_and_offset(loaders, workdir, name: str) -> None:
    """A latin-1 byte in an otherwise valid file: ValueError with file, line and byte offset."""
    loader, seed = loaders[name]
    lines = seed.split(b"\n")
    target = min(2, len(lines) - 1)
    # Inside a value on line 3 (after the first separator), so the line is otherwise intact.
    line = lines[target]
    cut = max(line.find(b"\t") + 1, line.find(b'"', 10) + 1, 1) if line else 0
    lines[target] = line[:cut] + b"\xe9" + line[cut:]
    data = b"\n".join(lines)
    offset = data.index(b"\xe9")
    path = workdir / f"enc-{name}{loader.suffix}"
    path.write_bytes(data)
    with pytest.raises(ValueError) as info:
        loader.read(path)
    assert type(info.value) is ValueError
    assert str(info.value).startswith(
        f"{path}:{target + 1}: invalid UTF-8 (byte 0xe9 at byte offset {offset})"
    ), str(info.value)


def test_utf8_bom_is_dropped(workdir: Path) -> None:
    path = workdir / "bom.tsv"
    path.write_bytes(b"\xef\xbb\xbfd1\thello\nd2\tworld\n")
    assert [d.docid for d in read_corpus(path)] == ["d1", "d2"]


def test_gzip_offsets_are_in_the_decompressed_stream(workdir: Path) -> None:
    import gzip

    path = workdir / "c.tsv.gz"
    path.write_bytes(gzip.compress(b"d1\thello\nd2\tw\xe9rld\n"))
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: invalid UTF-8 (byte 0xe9 at byte "
                                                   "offset 13 of the decompressed stream)")):
        list(read_corpus(path))


def test_locate_invalid_utf8_across_chunk_boundaries(workdir: Path) -> None:
    path = workdir / "big.txt"
    good = ("é" * 10).encode()  # 2-byte sequences, so chunk boundaries split them
    data = (good + b"\n") * 100_000 + b"x\xc3(" + b"\n"
    path.write_bytes(data)
    assert locate_invalid_utf8(path) == (100_001, len(data) - 3, 0xC3)
    path.write_bytes((good + b"\n") * 100_000)
    assert locate_invalid_utf8(path) == (None, None, None)
