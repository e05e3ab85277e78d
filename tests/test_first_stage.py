"""Java set-up and the BM25 first stage, on a real Lucene index of Vaswani documents."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mixencoder
from mixencoder.data import read_corpus, read_topics, sorted_hits, write_run
from mixencoder.first_stage import (
    BM25Searcher,
    LuceneDocSource,
    bm25_run,
    build_bm25_index,
    configure_java,
    find_java_home,
)
from mixencoder.first_stage.java import MIN_JAVA_VERSION, java_version

N_DOCS = 500


@pytest.fixture(scope="module")
def vaswani(shared_data: Path) -> Path:
    return shared_data / "vaswani"


@pytest.fixture(scope="module")
def docs(vaswani: Path) -> dict[str, str]:
    return {d.docid: d.text for d in itertools.islice(read_corpus(vaswani / "doc-text.trec"), N_DOCS)}


@pytest.fixture(scope="module")
def topics(vaswani: Path) -> dict[str, str]:
    return read_topics(vaswani / "query-text.trec")


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, docs: dict[str, str]) -> Path:
    out = tmp_path_factory.mktemp("bm25") / "vaswani-500"
    assert build_bm25_index(docs.items(), out, threads=2) == out.resolve()
    return out


@pytest.fixture(scope="module")
def searcher(index_dir: Path) -> BM25Searcher:
    with BM25Searcher(index_dir) as s:
        yield s


def child_env() -> dict[str, str]:
    """Environment in which a child Python imports this checkout's mixencoder."""
    env = dict(os.environ)
    plugin = str(Path(mixencoder.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (plugin, env.get("PYTHONPATH")) if p)
    return env


def old_system_java() -> str | None:
    """A Java home older than 21 on this machine (the system Java here is 17), if any."""
    # configure_java may already have put a newer java first on PATH, so also look at the usual
    # install location.
    candidates = [Path(p) for p in sorted(Path("/usr/lib/jvm").glob("*")) if p.is_dir()]
    java = shutil.which("java")
    if java is not None:
        candidates.insert(0, Path(os.path.realpath(java)).parent.parent)
    for home in candidates:
        version = java_version(home)
        if version is not None and version < MIN_JAVA_VERSION:
            return str(home)
    return None


# ---------------------------------------------------------------------------------------- Java


def test_configure_java_gives_java_21_plus_and_is_idempotent() -> None:
    home = configure_java()
    assert java_version(home) >= MIN_JAVA_VERSION
    assert os.environ["JAVA_HOME"] == home
    assert configure_java() == home
    from jnius import autoclass

    running = autoclass("java.lang.System").getProperty("java.version")
    assert int(running.split(".")[0].split("-")[0]) >= MIN_JAVA_VERSION
    # Pyserini imports and uses the JVM we started.
    from pyserini.search.lucene import LuceneSearcher  # noqa: F401


def test_old_java_is_rejected() -> None:
    old = old_system_java()
    if old is None:
        pytest.skip("no Java < 21 on this machine")
    with pytest.raises(RuntimeError, match=r"Java 1\d"):
        find_java_home(old)


def test_jvm_already_started_with_old_java_is_an_error(tmp_path: Path) -> None:
    old = old_system_java()
    if old is None:
        pytest.skip("no Java < 21 on this machine")
    code = (
        "import jnius\n"  # starts a Java 17 JVM first, as careless code would
        "from mixencoder.first_stage.java import configure_java\n"
        "try:\n    configure_java()\nexcept RuntimeError as e:\n    print('ERR', e)\n"
    )
    env = child_env() | {"JAVA_HOME": old}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ERR A JVM is already running in this process with Java 17" in proc.stdout


# ----------------------------------------------------------------------------------- searching


def test_search_real_query(searcher: BM25Searcher, topics: dict[str, str], docs: dict[str, str]) -> None:
    hits = searcher.search(topics["1"], k=20)
    assert 0 < len(hits) <= 20
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    assert all(h.docid in docs for h in hits)
    # The top document really is about the query (dielectric constant of liquids).
    assert "dielectric" in docs[hits[0].docid]
    assert len(searcher) == N_DOCS


def test_doc_text_is_the_raw_text(searcher: BM25Searcher, docs: dict[str, str]) -> None:
    for docid in ("1", "250", str(N_DOCS)):
        assert searcher.doc_text(docid) == docs[docid]
        assert searcher[docid] == docs[docid]
    assert "1" in searcher
    with pytest.raises(KeyError, match="'99999'"):
        searcher.doc_text("99999")
    assert searcher.get("99999") is None
    assert "99999" not in searcher
    source = LuceneDocSource(searcher=searcher.searcher)
    assert source.get("7") == docs["7"]


def test_batch_search_matches_search(searcher: BM25Searcher, topics: dict[str, str]) -> None:
    qids = ["1", "2", "3", "10"]
    batch = searcher.batch_search([topics[q] for q in qids], qids, k=15, threads=2)
    assert set(batch) == set(qids)
    for qid in qids:
        single = searcher.search(topics[qid], k=15)
        assert [(h.docid, h.score) for h in batch[qid]] == [(h.docid, h.score) for h in single]


def test_bm25_run_matches_pyserini_cli(
    searcher: BM25Searcher, index_dir: Path, topics: dict[str, str], tmp_path: Path
) -> None:
    """Our run file is byte-identical to `pyserini.search.lucene --bm25` on the same index."""
    subset = {q: topics[q] for q in list(topics)[:10]}
    run = bm25_run(searcher, subset, k=50)
    assert list(run) == list(subset)
    for hits in run.values():
        assert [s for _, s in sorted_hits(hits)] == sorted(hits.values(), reverse=True)
    ours = tmp_path / "ours.trec"
    write_run(run, ours, tag="Anserini")

    queries = tmp_path / "queries.tsv"
    queries.write_text("".join(f"{q}\t{t}\n" for q, t in subset.items()), encoding="utf-8")
    theirs = tmp_path / "pyserini.trec"
    proc = subprocess.run(
        [sys.executable, "-m", "mixencoder.pyserini", "pyserini.search.lucene",
         "--index", str(index_dir), "--topics", str(queries), "--output", str(theirs),
         "--bm25", "--k1", "0.9", "--b", "0.4", "--hits", "50"],
        capture_output=True, text=True, env=child_env(), timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert ours.read_text(encoding="utf-8") == theirs.read_text(encoding="utf-8")


def test_pyserini_module_runner_rejects_non_pyserini(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mixencoder.pyserini", "os"],
                          capture_output=True, text=True, env=child_env(), timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "not a pyserini module" in proc.stderr


# ------------------------------------------------------------------------------------ indexing


def test_build_index_refuses_existing_and_overwrites(index_dir: Path, docs: dict[str, str],
                                                     tmp_path: Path) -> None:
    with pytest.raises(FileExistsError, match="overwrite"):
        build_bm25_index(docs.items(), index_dir)
    small = tmp_path / "small"
    build_bm25_index(list(docs.items())[:20], small, threads=1)
    build_bm25_index(list(docs.items())[20:30], small, threads=1, overwrite=True)
    with LuceneDocSource(small) as source:
        assert len(source) == 10 and source.get("1") is None and source.get("21") == docs["21"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]  # no staging left behind


def test_build_index_malformed_corpus_leaves_nothing(tmp_path: Path, vaswani: Path) -> None:
    corpus = tmp_path / "bad.trec"
    lines = (vaswani / "doc-text.trec").read_text(encoding="utf-8").splitlines(keepends=True)[:20]
    corpus.write_text("".join(lines[:3] + ["<DOC>\n"] + lines[3:]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.trec:4"):
        build_bm25_index(corpus, tmp_path / "idx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.trec"]
