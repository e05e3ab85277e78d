"""The `mixencoder` command: each subcommand's main(argv) on tiny real inputs (a slice of Vaswani,
tiny random BERTs saved as real model directories): --help, a bad input exits non-zero naming the
problem, a good input writes what it says."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mixencoder import CandidateStore, Reranker
from mixencoder.cli import SUBCOMMANDS
from mixencoder.cli import main as mixencoder
from mixencoder.data import read_corpus, read_run, read_topics, write_run
from mixencoder.models import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_DOCS = 40
#: The tiny BERT has 128 positions; the models' default candidate length is 180.
LENGTHS = {"query_max_length": 24, "candidate_max_length": 64}
LENGTH_FLAGS = ["--query-max-length", "24", "--candidate-max-length", "64"]


@pytest.fixture(scope="module")
def vaswani(shared_data: Path) -> Path:
    return shared_data / "vaswani"


@pytest.fixture(scope="module")
def work(tmp_path_factory, vaswani: Path, tiny_backbone_dir: Path) -> dict:
    """A 40-document corpus, three topics, a run over the corpus, and two saved tiny models of
    different kinds (a MixEncoder and a BiEncoder)."""
    root = tmp_path_factory.mktemp("cli")
    docs = list(itertools.islice(read_corpus(vaswani / "doc-text.trec"), N_DOCS))
    corpus = root / "corpus.tsv"
    corpus.write_text("".join(f"{d.docid}\t{d.text}\n" for d in docs), encoding="utf-8")
    topics = dict(itertools.islice(read_topics(vaswani / "query-text.trec").items(), 3))
    topics_file = root / "topics.tsv"
    topics_file.write_text("".join(f"{q}\t{t}\n" for q, t in topics.items()), encoding="utf-8")
    run = {q: {d.docid: float(N_DOCS - i) for i, d in enumerate(docs[j : j + 10])} for j, q in enumerate(topics)}
    write_run(run, root / "first.trec", tag="first")
    models = {}
    for kind in ("mixencoder", "dual"):
        models[kind] = root / f"model-{kind}"
        load_model(tiny_backbone_dir, model_type=kind, **LENGTHS).save_pretrained(models[kind])
    return dict(root=root, corpus=corpus, docs=docs, topics=topics_file, run=root / "first.trec", models=models)


def _store(work: dict, kind: str) -> Path:
    """A store of the corpus built by `mixencoder store build` with the saved ``kind`` model (once)."""
    out = work["root"] / f"store-{kind}"
    if not out.is_dir():
        code = mixencoder(["store", "build", "--corpus", str(work["corpus"]), "--out", str(out),
                           "--model", str(work["models"][kind]), "--batch-size", "16"])
        assert code == 0
    return out


# ---------------------------------------------------------------------- the dispatcher


def test_usage_lists_every_subcommand(capsys):
    assert mixencoder(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in SUBCOMMANDS)
    assert mixencoder([]) == 2  # no subcommand: usage, and a failing exit code
    assert mixencoder(["nope"]) == 2 and "unknown subcommand 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        mixencoder([name, "--help"])
    assert exit_.value.code == 0
    assert f"mixencoder {name}" in capsys.readouterr().out


def test_python_dash_m_mixencoder_is_the_command():
    done = subprocess.run([sys.executable, "-m", "mixencoder", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "rerank" in done.stdout and "store" in done.stdout


# ---------------------------------------------------------------------- index


def test_index_builds_and_writes_a_bm25_run(tmp_path, vaswani):
    run_path = tmp_path / "run.trec"
    # In a child process: a JVM started in the test process before Ray's in-process driver
    # (tests/test_distributed_store.py) makes the JVM's next call segfault the whole run.
    done = subprocess.run(
        [sys.executable, "-m", "mixencoder", "index", "--log-level", "WARNING", "--corpus", str(vaswani / "doc-text.trec"),
         "--index", str(tmp_path / "idx"), "--threads", "1",
         "--topics", str(vaswani / "query-text.trec"), "--run", str(run_path), "--k", "5"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run = read_run(run_path)
    assert len(run) == len(read_topics(vaswani / "query-text.trec"))
    assert all(len(h) == 5 for h in run.values())
    assert run_path.read_text(encoding="utf-8").split("\n", 1)[0].endswith(" bm25")


def test_index_bad_inputs_name_the_problem(tmp_path, work, capsys):
    assert mixencoder(["index", "--corpus", str(tmp_path / "nowhere.tsv"), "--index", str(tmp_path / "idx")]) == 2
    assert "nowhere.tsv" in capsys.readouterr().err
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\tfirst\n2 no tab here\n", encoding="utf-8")
    assert mixencoder(["index", "--corpus", str(bad), "--index", str(tmp_path / "idx")]) == 2
    assert "bad.tsv:2: expected 'docid<TAB>text', found no tab" in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()
    # Topics are read before indexing: a bad topics file fails without building anything.
    assert mixencoder(["index", "--corpus", str(work["corpus"]), "--index", str(tmp_path / "idx"),
                       "--topics", str(bad), "--run", str(tmp_path / "run.trec")]) == 2
    assert "bad.tsv:2" in capsys.readouterr().err and not (tmp_path / "idx").exists()
    with pytest.raises(SystemExit) as exit_:
        mixencoder(["index", "--corpus", str(work["corpus"]), "--index", str(tmp_path / "idx"), "--topics", str(bad)])
    assert exit_.value.code == 2 and "--topics and --run go together" in capsys.readouterr().err


# ---------------------------------------------------------------------- store


@pytest.mark.parametrize("kind", ["mixencoder", "dual"])
def test_store_build_loads_any_saved_model_and_prints_its_figures(work, kind, tmp_path, capsys):
    out = tmp_path / "store"
    assert mixencoder(["store", "build", "--corpus", str(work["corpus"]), "--out", str(out),
                       "--model", str(work["models"][kind]), "--batch-size", "16"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["count"] == N_DOCS and stats["builder"] == "single-process" and stats["bytes_per_candidate"] > 0
    model = load_model(work["models"][kind])
    store = CandidateStore.open(out, model=model)  # built by this very model (else a ValueError)
    assert store.manifest["search_metric"] == model.search_metric
    assert mixencoder(["store", "verify", str(out)]) == 0


def test_store_build_bad_inputs_name_the_problem(work, tmp_path, capsys):
    dup = tmp_path / "dup.tsv"
    dup.write_text("1\tone\n2\ttwo\n1\tagain\n", encoding="utf-8")
    assert mixencoder(["store", "build", "--corpus", str(dup), "--out", str(tmp_path / "s"),
                       "--model", str(work["models"]["mixencoder"])]) == 2
    assert "duplicate" in capsys.readouterr().err
    existing = _store(work, "mixencoder")
    assert mixencoder(["store", "build", "--corpus", str(work["corpus"]), "--out", str(existing),
                       "--model", str(work["models"]["mixencoder"])]) == 2
    assert str(existing) in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        mixencoder(["store", "build", "--corpus", str(work["corpus"]), "--out", str(tmp_path / "s2"), "--ray", "--workers", "0"])
    assert exit_.value.code == 2 and "--workers must be >= 1, got 0" in capsys.readouterr().err


def test_store_compare_same_and_different(work, tmp_path, capsys):
    a = _store(work, "mixencoder")
    assert mixencoder(["store", "compare", str(a), str(a)]) == 0
    assert "SAME (within --atol)" in capsys.readouterr().out
    model = load_model(work["models"]["mixencoder"])
    fewer = CandidateStore.build(tmp_path / "fewer", model, [(d.docid, d.text) for d in work["docs"][:-1]])
    assert mixencoder(["store", "compare", str(a), str(fewer.path)]) == 1
    out = capsys.readouterr().out
    assert "only_in_one: 1" in out and out.rstrip().endswith("DIFFERENT")
    assert mixencoder(["store", "compare", str(a), str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


# ---------------------------------------------------------------------- rerank


@pytest.mark.parametrize("kind", ["mixencoder", "dual"])
def test_rerank_writes_what_the_reranker_ranks(work, kind, tmp_path):
    store = _store(work, kind)
    out = tmp_path / "reranked.trec"
    assert mixencoder(["rerank", "--run", str(work["run"]), "--topics", str(work["topics"]), "--store", str(store),
                       "--model", str(work["models"][kind]), "--output", str(out)]) == 0
    model = load_model(work["models"][kind])
    expected = Reranker(model, CandidateStore.open(store)).rerank_run(read_run(work["run"]), read_topics(work["topics"]))
    write_run(expected, tmp_path / "expected.trec", tag="mixencoder")
    assert out.read_bytes() == (tmp_path / "expected.trec").read_bytes()
    assert read_run(out).keys() == read_run(work["run"]).keys()


def test_rerank_bad_inputs_name_the_problem(work, tmp_path, capsys):
    store = str(_store(work, "mixencoder"))
    common = ["--topics", str(work["topics"]), "--store", store, "--output", str(tmp_path / "out.trec")]
    bad_run = tmp_path / "bad.trec"
    bad_run.write_text("1 Q0 2 1 3.5 tag\n1 Q0 3 2 3.0\n", encoding="utf-8")
    assert mixencoder(["rerank", "--run", str(bad_run), "--model", str(work["models"]["mixencoder"]), *common]) == 2
    assert "bad.trec:2: expected 6 columns 'qid Q0 docid rank score tag', got 5" in capsys.readouterr().err
    # A store built by another model is refused, naming it.
    assert mixencoder(["rerank", "--run", str(work["run"]), "--model", str(work["models"]["dual"]), *common]) == 2
    assert "different model" in capsys.readouterr().err
    # A run query without topic text.
    (tmp_path / "topics.tsv").write_text("1\tonly one topic\n", encoding="utf-8")
    assert mixencoder(["rerank", "--run", str(work["run"]), "--model", str(work["models"]["mixencoder"]),
                       "--topics", str(tmp_path / "topics.tsv"), "--store", store,
                       "--output", str(tmp_path / "out.trec")]) == 2
    assert "no topic text" in capsys.readouterr().err
    assert not (tmp_path / "out.trec").exists()


# ---------------------------------------------------------------------- train


def _pairs(path: Path, n: int = 8) -> Path:
    path.write_text("".join(json.dumps({"query": f"what is {w}", "positive": f"{w} is a thing of the city"}) + "\n"
                            for w in ("rain", "bread", "water", "lobster", "sandwich", "roll", "city", "a")[:n]))
    return path


@pytest.mark.parametrize("kind", ["mixencoder", "dual"])
def test_train_writes_a_loadable_model_of_the_kind_asked(tiny_backbone_dir, tmp_path, kind):
    out = tmp_path / "run"
    code = mixencoder(["train", "--format", "pairs-jsonl", "--train", str(_pairs(tmp_path / "pairs.jsonl")),
                       "--model", str(tiny_backbone_dir), "--model-type", kind, "--out", str(out), *LENGTH_FLAGS,
                       "--batch-size", "4", "--max-steps", "2", "--device", "cpu", "--log-level", "WARNING"])
    assert code == 0
    trained = load_model(out / "final")
    untrained = load_model(tiny_backbone_dir, model_type=kind, **LENGTHS)
    assert type(trained) is type(untrained) and trained.config == untrained.config
    before = untrained.state_dict()
    assert any(not (v == before[k]).all() for k, v in trained.state_dict().items() if k in before)  # it trained


def test_train_bad_inputs_name_the_problem(tiny_backbone_dir, work, tmp_path, capsys):
    base = ["train", "--model", str(tiny_backbone_dir), "--out", str(tmp_path / "run"), "--max-steps", "1", *LENGTH_FLAGS]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positive": "p"}\n{"query": "q"}\n', encoding="utf-8")
    assert mixencoder([*base, "--format", "pairs-jsonl", "--train", str(bad)]) == 2
    assert "bad.jsonl:2: bad matching record: no field 'positive'" in capsys.readouterr().err
    pairs = str(_pairs(tmp_path / "pairs.jsonl"))
    assert mixencoder([*base, "--format", "pairs-jsonl", "--train", pairs, "--model-type", "dual", "--k", "2"]) == 2
    assert "['k'] are not settings of a dual model" in capsys.readouterr().err
    saved = ["train", "--model", str(work["models"]["mixencoder"]), "--out", str(tmp_path / "run"), "--max-steps", "1"]
    assert mixencoder([*saved, "--format", "pairs-jsonl", "--train", pairs, "--k", "3"]) == 2
    assert "different config than {'k': 3}" in capsys.readouterr().err
    assert mixencoder([*saved, "--format", "pairs-jsonl", "--train", pairs, "--model-type", "dual"]) == 2
    assert "holds a saved 'mixencoder' model, not 'dual'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        mixencoder([*base, "--format", "mnli", "--train", pairs])
    assert exit_.value.code == 2 and "--format mnli does not fit --task matching" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_on_dialogue_contexts_cut_from_the_left(tiny_backbone_dir, shared_data, tmp_path):
    # The Ubuntu V2 training layout: contexts longer than the query length are cut from the left.
    lines = (shared_data / "ubuntu/v2/train.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    head = tmp_path / "train.csv"
    head.write_text("".join(lines[:13]), encoding="utf-8")  # a header and 12 single-line rows
    out = tmp_path / "run"
    assert mixencoder(["train", "--format", "ubuntu-v2", "--train", str(head), "--model", str(tiny_backbone_dir),
                       "--out", str(out), *LENGTH_FLAGS, "--batch-size", "2", "--max-steps", "1",
                       "--device", "cpu", "--log-level", "WARNING"]) == 0
    assert load_model(out / "final").config.query_max_length == 24


# ---------------------------------------------------------------------- inference options


def test_int8_store_and_rerank_go_together(work, tmp_path, capsys):
    out = tmp_path / "store-int8"
    assert mixencoder(["store", "build", "--corpus", str(work["corpus"]), "--out", str(out),
                       "--model", str(work["models"]["mixencoder"]), "--quantization", "int8", "--batch-size", "16"]) == 0
    capsys.readouterr()
    common = ["--run", str(work["run"]), "--topics", str(work["topics"]), "--store", str(out),
              "--model", str(work["models"]["mixencoder"])]
    # The float32 model refuses the int8 store (the fingerprint records the quantization) ...
    assert mixencoder(["rerank", *common, "--output", str(tmp_path / "f32.trec")]) == 2
    assert "different model" in capsys.readouterr().err
    # ... and the int8 one ranks what the library's int8 model ranks.
    assert mixencoder(["rerank", *common, "--quantization", "int8", "--output", str(tmp_path / "int8.trec")]) == 0
    model = load_model(work["models"]["mixencoder"]).with_inference_options(quantization="int8")
    expected = Reranker(model, CandidateStore.open(out, model=model)).rerank_run(read_run(work["run"]), read_topics(work["topics"]))
    write_run(expected, tmp_path / "expected.trec", tag="mixencoder")
    assert (tmp_path / "int8.trec").read_bytes() == (tmp_path / "expected.trec").read_bytes()


def test_inference_options_are_refused_by_a_model_without_them(work, tmp_path, capsys):
    assert mixencoder(["store", "build", "--corpus", str(work["corpus"]), "--out", str(tmp_path / "s"),
                       "--model", str(work["models"]["dual"]), "--quantization", "int8"]) == 2
    assert "BiEncoder has no candidate layouts or quantization" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
