"""Readers/writers in mixencoder.data on excerpts of the real data in ../shared/data."""

from __future__ import annotations

import gzip
import itertools
import re
from pathlib import Path

import pytest

from mixencoder.data import (
    Doc,
    read_corpus,
    read_qrels,
    read_run,
    read_top1000,
    read_topics,
    sorted_hits,
    write_jsonl_collection,
    write_run,
)

# Same location as conftest's `shared_data` fixture (../shared/data beside the repo).
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DL20 = DATA / "msmarco" / "dl20"
VASWANI = DATA / "vaswani"


@pytest.fixture(autouse=True)
def _real_data(shared_data: Path) -> None:
    """Fails (via conftest) when the real data is missing, instead of passing vacuously."""


def head(path: Path, n: int) -> list[str]:
    """First n lines of a real data file (with newlines)."""
    with open(path, encoding="utf-8") as handle:
        return list(itertools.islice(handle, n))


def excerpt(src: Path, dst: Path, n: int) -> list[str]:
    lines = head(src, n)
    dst.write_text("".join(lines), encoding="utf-8")
    return lines


def trec_docs_excerpt(n_docs: int) -> list[str]:
    """Lines of the first n_docs <DOC>s of the Vaswani corpus."""
    lines: list[str] = []
    with open(VASWANI / "doc-text.trec", encoding="utf-8") as handle:
        for line in handle:
            lines.append(line)
            if line.strip() == "</DOC>":
                n_docs -= 1
                if n_docs == 0:
                    break
    return lines


def loc(path: Path, line: int) -> str:
    """Regex matching 'file:line' in an error message."""
    return re.escape(f"{path}:{line}")


# ------------------------------------------------------------------------------------ corpus


def test_read_corpus_msmarco_tsv(tmp_path: Path) -> None:
    lines = excerpt(DL20 / "collection.tsv", tmp_path / "collection.tsv", 20)
    docs = list(read_corpus(tmp_path / "collection.tsv"))
    assert len(docs) == 20
    assert all(isinstance(d, Doc) for d in docs)
    expected = [tuple(line.rstrip("\n").split("\t", 1)) for line in lines]
    assert [(d.docid, d.text) for d in docs] == expected


def test_read_corpus_trec_vaswani(tmp_path: Path) -> None:
    lines = trec_docs_excerpt(3)
    path = tmp_path / "doc-text.trec"
    path.write_text("".join(lines), encoding="utf-8")
    docs = list(read_corpus(path))
    assert [d.docid for d in docs] == ["1", "2", "3"]
    # Text = the lines between DOCNO and </DOC>, whitespace-normalised (doc 1 has a double space).
    body = lines[2:lines.index("</DOC>\n")]
    assert docs[0].text == " ".join("".join(body).split())
    assert docs[0].text.startswith("compact memories have flexible capacities a digital")


def test_read_corpus_trec_text_tags_and_same_line(tmp_path: Path) -> None:
    path = tmp_path / "docs.trec"
    path.write_text(
        "<DOC>\n<DOCNO> FT-1 </DOCNO>\n<HEADLINE>Big news</HEADLINE>\n<TEXT>\nline one\n"
        "line  two <b>bold</b>\n</TEXT>\n</DOC>\n<DOC><DOCNO>FT-2</DOCNO><TEXT>short</TEXT></DOC>\n",
        encoding="utf-8",
    )
    docs = list(read_corpus(path))
    assert docs == [Doc("FT-1", "Big news line one line two <b>bold</b>"), Doc("FT-2", "short")]


def test_jsonl_collection_round_trip_and_directory(tmp_path: Path) -> None:
    excerpt(DL20 / "collection.tsv", tmp_path / "collection.tsv", 30)
    docs = list(read_corpus(tmp_path / "collection.tsv"))
    out = tmp_path / "jsonl"
    assert write_jsonl_collection(docs, out, shards=3) == 30
    assert sorted(p.name for p in out.iterdir()) == [f"docs-0000{i}.jsonl" for i in range(3)]
    back = list(read_corpus(out))  # a directory: read file by file
    assert sorted(back) == sorted(docs)
    # A single JSONL file is read in order.
    single = tmp_path / "single"
    write_jsonl_collection(docs, single)
    assert list(read_corpus(single / "docs-00000.jsonl")) == docs
    with pytest.raises(FileExistsError):
        write_jsonl_collection(docs, single)


def test_read_corpus_gzip(tmp_path: Path) -> None:
    lines = head(DL20 / "collection.tsv", 5)
    path = tmp_path / "collection.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(lines)
    assert [d.docid for d in read_corpus(path)] == [line.split("\t")[0] for line in lines]


def test_read_corpus_malformed_tsv(tmp_path: Path) -> None:
    lines = head(DL20 / "collection.tsv", 4)
    lines[2] = lines[2].replace("\t", " ", 1)
    path = tmp_path / "collection.tsv"
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match=loc(path, 3) + ".*no tab"):
        list(read_corpus(path))


def test_read_corpus_malformed_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": "a", "contents": "x"}\n{"id": "b", "contents": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=loc(path, 2) + ".*invalid JSON"):
        list(read_corpus(path))
    path.write_text('{"id": "a", "contents": "x"}\n\n{"id": "b", "text": "y"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=loc(path, 3) + ".*no 'contents'"):
        list(read_corpus(path))


@pytest.mark.parametrize(
    ("mutate", "line", "message"),
    [
        (lambda ls: ls[:-1], 7, "not closed"),  # drop the last </DOC> (doc 2 opens at line 7)
        (lambda ls: [ls[0]] + ls, 2, "inside the <DOC>"),  # nested <DOC>
        (lambda ls: [ls[0]] + ls[2:], 1, "without <DOCNO>"),
        (lambda ls: ls[:6] + ["stray text\n"] + ls[6:], 7, "outside <DOC>"),
    ],
)
def test_read_corpus_malformed_trec(tmp_path: Path, mutate, line: int, message: str) -> None:
    lines = trec_docs_excerpt(2)
    path = tmp_path / "doc-text.trec"
    path.write_text("".join(mutate(lines)), encoding="utf-8")
    with pytest.raises(ValueError, match=loc(path, line) + ".*" + re.escape(message)):
        list(read_corpus(path))


def test_read_corpus_duplicate_docid(tmp_path: Path) -> None:
    lines = head(DL20 / "collection.tsv", 3)
    path = tmp_path / "collection.tsv"
    path.write_text("".join(lines + [lines[0]]), encoding="utf-8")
    docid = lines[0].split("\t")[0]
    with pytest.raises(ValueError, match=loc(path, 4) + f".*duplicate docid '{docid}'"):
        list(read_corpus(path))


# ------------------------------------------------------------------------------------ topics


def test_read_topics_vaswani(tmp_path: Path) -> None:
    path = tmp_path / "query-text.trec"
    excerpt(VASWANI / "query-text.trec", path, 15)  # 5 lines per topic
    topics = read_topics(path)
    assert list(topics) == ["1", "2", "3"]
    assert topics["1"] == "MEASUREMENT OF DIELECTRIC CONSTANT OF LIQUIDS BY THE USE OF MICROWAVE TECHNIQUES"
    full = read_topics(VASWANI / "query-text.trec")
    assert len(full) == 93 and all(full.values())


def test_read_topics_msmarco_tsv(tmp_path: Path) -> None:
    path = tmp_path / "queries.tsv"
    lines = excerpt(DL20 / "queries.tsv", path, 10)
    topics = read_topics(path)
    assert topics == dict(line.rstrip("\n").split("\t", 1) for line in lines)
    # MS MARCO dev query 2 starts with a space in the official file.
    dev = read_topics(DATA / "msmarco" / "dev-small" / "queries.dev.small.tsv")
    assert len(dev) == 6980 and dev["2"] == "Androgen receptor define"


def test_read_topics_classic_trec(tmp_path: Path) -> None:
    path = tmp_path / "topics.301"
    path.write_text(
        "<top>\n<num> Number: 301\n<title> International Organized Crime\n\n<desc> Description:\n"
        "Identify organizations.\n\n<narr> Narrative:\nA relevant document...\n</top>\n",
        encoding="utf-8",
    )
    assert read_topics(path) == {"301": "International Organized Crime"}
    assert read_topics(path, field="desc") == {"301": "Identify organizations."}


def test_read_topics_empty_query(tmp_path: Path) -> None:
    path = tmp_path / "queries.tsv"
    lines = head(DL20 / "queries.tsv", 3)
    path.write_text(lines[0] + "123456\t   \n" + lines[1], encoding="utf-8")
    with pytest.raises(ValueError, match=loc(path, 2) + ".*empty query text for qid '123456'"):
        read_topics(path)
    trec = tmp_path / "query-text.trec"
    trec.write_text("".join(head(VASWANI / "query-text.trec", 5))
                    + "<top>\n<num>2</num><title>\n\n</title>\n</top>\n", encoding="utf-8")
    with pytest.raises(ValueError, match=loc(trec, 6) + ".*empty query text for qid '2'"):
        read_topics(trec)


# ------------------------------------------------------------------------------------- qrels


def test_read_qrels_real(tmp_path: Path) -> None:
    path = tmp_path / "qrels.txt"
    lines = excerpt(DL20 / "qrels.txt", path, 30)
    qrels = read_qrels(path)
    first = lines[0].split()
    assert qrels[first[0]][first[2]] == int(first[3])
    assert sum(len(v) for v in qrels.values()) == 30
    # Space-separated (Vaswani) and tab-separated (MS MARCO dev) files.
    assert sum(len(v) for v in read_qrels(VASWANI / "qrels").values()) == 2083
    dev = read_qrels(DATA / "msmarco" / "dev-small" / "qrels.dev.small.tsv")
    assert dev["300674"] == {"7067032": 1}


def test_read_qrels_malformed(tmp_path: Path) -> None:
    path = tmp_path / "qrels.txt"
    lines = head(DL20 / "qrels.txt", 5)
    path.write_text("".join(lines[:3]) + "23849 0 1020327\n", encoding="utf-8")
    with pytest.raises(ValueError, match=loc(path, 4) + ".*expected 4 columns"):
        read_qrels(path)
    path.write_text("".join(lines[:2]) + "23849 0 99 high\n", encoding="utf-8")
    with pytest.raises(ValueError, match=loc(path, 3) + ".*not an integer"):
        read_qrels(path)
    path.write_text("".join(lines[:2]) + lines[0], encoding="utf-8")
    with pytest.raises(ValueError, match=loc(path, 3) + ".*duplicate judgement"):
        read_qrels(path)


# -------------------------------------------------------------------------------------- runs


def test_read_trec_run_and_write_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "bm25.trec"
    lines = excerpt(DL20 / "bm25.top100.trec", src, 300)  # 3 queries x 100
    run = read_run(src)
    assert len(run) == 3 and all(len(h) == 100 for h in run.values())
    out = tmp_path / "out.trec"
    write_run(run, out, tag="bm25")
    written = out.read_text(encoding="utf-8").splitlines()
    # Same qid/docid/rank sequence as the original (Anserini also breaks ties by docid); the
    # score is re-formatted as Pyserini does.
    assert [l.split()[:4] for l in written] == [l.split()[:4] for l in lines]
    first = lines[0].split()
    assert written[0] == f"{first[0]} Q0 {first[2]} 1 {float(first[4]):.6f} bm25"
    back = read_run(out)
    assert list(back) == list(run)
    for qid in run:
        assert back[qid] == pytest.approx(run[qid], abs=1e-6)


def test_msmarco_run_round_trip(tmp_path: Path) -> None:
    run = read_run(DL20 / "bm25.top100.trec")
    out = tmp_path / "run.msmarco.tsv"
    write_run(run, out, fmt="msmarco")
    first = out.read_text(encoding="utf-8").splitlines()[0]
    top = sorted_hits(run["23849"])[0][0]
    assert first == f"23849\t{top}\t1"
    back = read_run(out)
    assert list(back) == list(run)
    for qid in run:
        assert [d for d, _ in sorted_hits(back[qid])] == [d for d, _ in sorted_hits(run[qid])]
        assert max(back[qid].values()) == 1.0  # score = 1 / rank


def test_read_top1000(tmp_path: Path) -> None:
    path = tmp_path / "top100.tsv"
    lines = excerpt(DL20 / "top100.tsv", path, 150)
    top = read_top1000(path)
    qid, docid, query, passage = lines[0].rstrip("\n").split("\t", 3)
    assert top.queries[qid] == query
    assert top.passages[docid] == passage
    assert sorted_hits(top.run[qid])[0][0] == docid
    assert read_run(path) == top.run  # auto-detected
    # Same order as the TREC run it came from.
    trec = read_run(DL20 / "bm25.top100.trec")
    assert [d for d, _ in sorted_hits(top.run[qid])] == [d for d, _ in sorted_hits(trec[qid])]


def test_sorted_hits_tie_break_and_write_order(tmp_path: Path) -> None:
    hits = {"d3": 1.0, "d10": 2.0, "d2": 1.0, "d1": 0.5}
    assert sorted_hits(hits) == [("d10", 2.0), ("d2", 1.0), ("d3", 1.0), ("d1", 0.5)]
    out = tmp_path / "run.trec"
    write_run({"q2": hits, "q1": {"x": 3.0}}, out)
    assert out.read_text(encoding="utf-8") == (
        "q2 Q0 d10 1 2.000000 mixencoder\n"
        "q2 Q0 d2 2 1.000000 mixencoder\n"
        "q2 Q0 d3 3 1.000000 mixencoder\n"
        "q2 Q0 d1 4 0.500000 mixencoder\n"
        "q1 Q0 x 1 3.000000 mixencoder\n"
    )


def test_write_run_atomic_and_strict(tmp_path: Path) -> None:
    out = tmp_path / "run.trec"
    write_run({"q": {"a": 1.0}}, out)
    with pytest.raises(ValueError, match="whitespace"):
        write_run({"q": {"a b": 1.0}}, out)
    with pytest.raises(ValueError, match="NaN"):
        write_run({"q": {"a": float("nan")}}, out)
    # The failed writes left the previous file intact and no temp files behind.
    assert out.read_text(encoding="utf-8") == "q Q0 a 1 1.000000 mixencoder\n"
    assert [p.name for p in tmp_path.iterdir()] == ["run.trec"]


def test_read_run_malformed(tmp_path: Path) -> None:
    path = tmp_path / "run.trec"
    lines = head(DL20 / "bm25.top100.trec", 4)
    path.write_text("".join(lines[:2]) + "23849 Q0 123 3 9.5\n", encoding="utf-8")
    with pytest.raises(ValueError, match=loc(path, 3) + ".*expected 6 columns"):
        read_run(path)
    path.write_text("".join(lines[:2]) + lines[1], encoding="utf-8")
    with pytest.raises(ValueError, match=loc(path, 3) + ".*duplicate docid"):
        read_run(path)
    path.write_text(lines[0].replace(" 1 ", " x ", 1), encoding="utf-8")
    with pytest.raises(ValueError, match=loc(path, 1) + ".*rank 'x'"):
        read_run(path)
    msm = tmp_path / "run.tsv"
    msm.write_text("q1\td1\t1\nq1\td2\t1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=loc(msm, 2) + ".*duplicate rank 1"):
        read_run(msm)
    bad = tmp_path / "what.txt"
    bad.write_text("one two\n", encoding="utf-8")
    with pytest.raises(ValueError, match=loc(bad, 1) + ".*cannot detect"):
        read_run(bad)
