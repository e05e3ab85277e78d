"""Task loaders (dialogue, NLI, MS MARCO training data, folds) on small excerpts of the real data.

Excerpts are written to tmp_path at test time; the shared data is never copied into the repo.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
import sys
from pathlib import Path

import ir_measures
import pytest
from ir_measures import RR, R

from mixencoder.data import read_corpus, read_qrels, read_run, read_topics
from mixencoder.data.dialogue import (
    ResponseExample,
    candidate_docid,
    join_context,
    left_truncate_tokens,
    read_dstc7,
    read_ubuntu_v2_eval,
    read_ubuntu_v2_train,
    to_qrels_and_candidates,
)
from mixencoder.data.folds import kfold_split
from mixencoder.data.nli import LABELS, read_mnli
from mixencoder.data.triples import (
    Triple,
    hard_negatives_from_run,
    load_ir_datasets,
    qrels_training_pairs,
    read_id_triples,
    read_triples,
)


def _csv_head(src: Path, dst: Path, n_rows: int) -> list[list[str]]:
    """Copies the header and the first ``n_rows`` records of a CSV file; returns the records."""
    with open(src, encoding="utf-8", newline="") as handle:
        rows = list(itertools.islice(csv.reader(handle), n_rows + 1))
    with open(dst, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return rows[1:]


def _where(path: Path, line: int | str) -> str:
    return re.escape(f"{path}:{line}")


@pytest.fixture(scope="module")
def dstc7_dev(shared_data: Path) -> list[dict]:
    with open(shared_data / "ubuntu/dstc7/ubuntu_dev_subtask_1.json", encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture()
def v2_valid_excerpt(shared_data: Path, tmp_path: Path) -> tuple[Path, list[list[str]]]:
    path = tmp_path / "valid.csv"
    rows = _csv_head(shared_data / "ubuntu/v2/valid.csv", path, 20)
    return path, rows


# ---------------------------------------------------------------------------------------------
# Ubuntu V2


def test_ubuntu_v2_train_excerpt(shared_data: Path, tmp_path: Path):
    path = tmp_path / "train.csv"
    rows = _csv_head(shared_data / "ubuntu/v2/train.csv", path, 20)
    pairs = list(read_ubuntu_v2_train(path))
    assert len(pairs) == 20
    assert [p.label for p in pairs] == [int(r[2]) for r in rows]
    assert sum(p.label for p in pairs) == 10  # 1 positive : 1 negative
    # Row 5 of the file has a two-turn context; turns come oldest first and without markers.
    assert pairs[4].context == [
        "I popped in earlier talking about building an older kernel",
        "the vanilla kernel.org kernel that I built panics on boot, failing to recognize its "
        "root filesystem",
    ]
    assert pairs[4].response.startswith("(built from the .config")
    for pair in pairs:
        assert len(pair.context) == rows[pairs.index(pair)][0].count("__eot__")
        texts = [*pair.context, pair.response]
        assert all("__eou__" not in t and "__eot__" not in t for t in texts)


def test_ubuntu_v2_eval_excerpt_candidate_zero_is_positive(v2_valid_excerpt):
    path, rows = v2_valid_excerpt
    examples = list(read_ubuntu_v2_eval(path))
    assert len(examples) == 20
    assert [e.example_id for e in examples] == [str(i) for i in range(20)]
    for example, row in zip(examples, rows):
        assert example.candidate_ids == [str(i) for i in range(10)]
        assert example.positive_ids == ["0"]
        assert example.candidates[0] == row[1].replace(" __eou__", "").strip()
        assert example.candidates[1:] == [c.strip() for c in row[2:]]
    assert examples[1].context == [
        "can anyone recommend any app to create/open *.rar file?",
        "__user__, why not WinRAR?",
    ]


def test_ubuntu_v2_train_errors_name_file_and_line(tmp_path: Path):
    path = tmp_path / "bad.csv"
    header = "Context,Utterance,Label\n"
    # Records span lines 2-3 and 4-5 (quoted newlines): errors name the line a record starts on.
    good = '"hi __eou__\nthere __eou__ __eot__",hello __eou__,1\n'
    cases = {
        '"a __eou__\n__eot__",b,1,extra\n': "expected 3 columns, got 4",
        '"a __eou__\n__eot__",b,2\n': "label '2' is not 1 or 0",
        '"a __eou__\n__eot__", __eou__ ,0\n': "empty 'Utterance'",
        '"a __eou__\n__eot__ __eot__ b __eot__",c,0\n': "context turn 2 is empty",
    }
    for bad, message in cases.items():
        path.write_text(header + good + bad, encoding="utf-8")
        with pytest.raises(ValueError, match=_where(path, 4) + ".*" + re.escape(message)):
            list(read_ubuntu_v2_train(path))
    path.write_text("Context,Response,Label\n", encoding="utf-8")
    with pytest.raises(ValueError, match=_where(path, 1) + ".*lacks column"):
        list(read_ubuntu_v2_train(path))


def test_ubuntu_v2_eval_errors_name_file_and_line(v2_valid_excerpt, tmp_path: Path):
    src, _ = v2_valid_excerpt
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    bad = tmp_path / "bad_valid.csv"
    bad.write_text("".join(lines[:3]) + "ctx __eou__ __eot__,only,three\n", encoding="utf-8")
    with pytest.raises(ValueError, match=_where(bad, 4) + ".*expected 11 columns, got 3"):
        list(read_ubuntu_v2_eval(bad))
    bad.write_text("Context,Ground Truth Utterance,Distractor_1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=_where(bad, 1) + ".*Distractor_0"):
        list(read_ubuntu_v2_eval(bad))


# ---------------------------------------------------------------------------------------------
# DSTC7


def test_dstc7_excerpt(dstc7_dev: list[dict], tmp_path: Path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(dstc7_dev[:3]), encoding="utf-8")
    examples = list(read_dstc7(path))
    assert [e.example_id for e in examples] == ["dev-0", "dev-1", "dev-2"]
    for example, raw in zip(examples, dstc7_dev[:3]):
        assert len(example.candidates) == 100
        assert len(example.context) == len(raw["messages-so-far"])
        [correct] = raw["options-for-correct-answers"]
        assert example.positive_ids == [correct["candidate-id"]]
        position = example.candidate_ids.index(correct["candidate-id"])
        assert example.candidates[position] == correct["utterance"]


def test_dstc7_and_v2_hold_the_same_examples(dstc7_dev: list[dict], v2_valid_excerpt, tmp_path):
    # README: both layouts are built from the same threads; the ground truths must agree.
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(dstc7_dev[:5]), encoding="utf-8")
    dstc7 = list(read_dstc7(path))
    v2 = list(itertools.islice(read_ubuntu_v2_eval(v2_valid_excerpt[0]), 5))
    for a, b in zip(dstc7, v2):
        assert a.context == b.context
        assert a.candidates[a.candidate_ids.index(a.positive_ids[0])] == b.candidates[0]


def test_dstc7_errors_name_file_and_example(dstc7_dev: list[dict], tmp_path: Path):
    path = tmp_path / "bad.json"
    broken = json.loads(json.dumps(dstc7_dev[:2]))
    broken[1]["options-for-correct-answers"][0]["candidate-id"] = "not-an-option"
    path.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}: example 1") + ".*not among options"):
        list(read_dstc7(path))
    del broken[1]["options-for-correct-answers"]
    path.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}: example 1") + ".*missing field"):
        list(read_dstc7(path))
    # Unlabelled (test) files are readable when answers are not required.
    del broken[0]["options-for-correct-answers"]
    path.write_text(json.dumps(broken), encoding="utf-8")
    assert [e.positive_ids for e in read_dstc7(path, require_answers=False)] == [[], []]
    broken[0]["messages-so-far"][0]["utterance"] = "  "
    path.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}: example 0") + ".*empty utterance"):
        list(read_dstc7(path, require_answers=False))


# ---------------------------------------------------------------------------------------------
# Context truncation and evaluation structures


def test_context_truncation_keeps_latest_turns():
    turns = ["first turn", "second", "third one", "latest"]
    assert join_context(turns) == "first turn second third one latest"
    assert join_context(turns, max_chars=16) == "third one latest"
    assert join_context(turns, max_chars=15) == "latest"
    assert join_context(turns, max_chars=3) == "est"  # a too-long last turn loses its head
    assert join_context(turns, max_turns=2, sep=" [SEP] ") == "third one [SEP] latest"
    for limit in range(1, 40):
        out = join_context(turns, max_chars=limit, sep=" | ")
        assert len(out) <= limit and out.endswith("latest"[-limit:])
    assert left_truncate_tokens([101, 1, 2, 3, 4, 102], 4) == [2, 3, 4, 102]
    assert left_truncate_tokens([101, 1, 2, 3, 4, 102], 4, keep_first=1) == [101, 3, 4, 102]
    assert left_truncate_tokens([1, 2], 4) == [1, 2]
    with pytest.raises(ValueError):
        join_context(turns, max_chars=0)


def test_qrels_from_examples_evaluate_with_ir_measures(v2_valid_excerpt):
    examples = list(read_ubuntu_v2_eval(v2_valid_excerpt[0]))
    qrels, queries, candidates = to_qrels_and_candidates(examples)
    assert len(qrels) == len(queries) == len(candidates) == 20
    assert qrels["3"]["3:0"] == 1 and sum(qrels["3"].values()) == 1
    assert candidates["3"]["3:0"] == examples[3].candidates[0]
    assert queries["1"] == join_context(examples[1].context)
    measures = [R @ 1, R @ 2, R @ 5, R @ 10, RR]
    perfect = {q: {d: float(g) for d, g in judged.items()} for q, judged in qrels.items()}
    scores = ir_measures.calc_aggregate(measures, qrels, perfect)
    assert all(value == 1.0 for value in scores.values())
    # The positive ranked last of ten: R@1..R@5 are 0, R@10 is 1 and RR 1/10.
    reversed_run = {q: {d: -float(g) for d, g in judged.items()} for q, judged in qrels.items()}
    scores = ir_measures.calc_aggregate(measures, qrels, reversed_run)
    assert scores[R @ 1] == 0.0 and scores[R @ 5] == 0.0 and scores[R @ 10] == 1.0
    assert scores[RR] == pytest.approx(0.1)
    # Salted docids hide candidate positions from tie-breaking, and the qrels stay consistent.
    salted, _, salted_texts = to_qrels_and_candidates(examples, docid_salt="s")
    assert all(not d.endswith(":0") for judged in salted.values() for d in judged)
    pos = candidate_docid("3", "0", "s")
    assert salted["3"][pos] == 1 and salted_texts["3"][pos] == examples[3].candidates[0]
    with pytest.raises(ValueError, match="duplicate example id"):
        to_qrels_and_candidates(examples[:2] + examples[:1])
    with pytest.raises(ValueError, match="not candidates"):
        ResponseExample("x", ["c"], ["a"], ["0"], ["1"])


# ---------------------------------------------------------------------------------------------
# MNLI


def test_mnli_jsonl_and_tsv_excerpt(shared_data: Path, tmp_path: Path):
    with open(shared_data / "mnli/dev_matched_sample.jsonl", encoding="utf-8") as handle:
        lines = list(itertools.islice(handle, 30))
    records = [json.loads(line) for line in lines]
    # The sample holds no '-' pair; add one to check that it is skipped and counted.
    no_gold = dict(records[0], pairID="999999x", gold_label="-")
    jsonl = tmp_path / "mnli.jsonl"
    jsonl.write_text("".join(lines) + json.dumps(no_gold) + "\n", encoding="utf-8")
    examples, skipped = read_mnli(jsonl)
    assert (len(examples), skipped) == (30, 1)
    assert [e.pair_id for e in examples] == [r["pairID"] for r in records]
    assert examples[0].premise == records[0]["sentence1"]
    assert examples[0].hypothesis == records[0]["sentence2"]
    assert {e.label for e in examples} <= set(LABELS)
    assert examples[0].label_id == LABELS.index(records[0]["gold_label"])
    # The same pairs in GLUE's TSV layout (extra columns, no quoting) read identically.
    tsv = tmp_path / "mnli.tsv"
    header = ["index", "pairID", "sentence1", "sentence2", "label1", "gold_label"]
    rows = [
        [str(i), r["pairID"], r["sentence1"], r["sentence2"], r["gold_label"], r["gold_label"]]
        for i, r in enumerate([*records, no_gold])
    ]
    tsv.write_text("\n".join("\t".join(row) for row in [header, *rows]) + "\n", encoding="utf-8")
    assert read_mnli(tsv) == (examples, 1)


def test_mnli_errors_name_file_and_line(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    good = {
        "pairID": "1e", "sentence1": "A man.", "sentence2": "A person.", "gold_label": "entailment"
    }
    no_hypothesis = {k: v for k, v in good.items() if k != "sentence2"} | {"pairID": "2e"}
    cases = [
        (dict(good, pairID="2e", gold_label="entails"), "unknown gold_label 'entails'"),
        (no_hypothesis, "missing field 'sentence2'"),
        (dict(good, pairID="2e", sentence1=" "), "empty 'sentence1'"),
        (good, "duplicate pairID '1e'"),
    ]
    for bad, message in cases:
        path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
        with pytest.raises(ValueError, match=_where(path, 2) + ".*" + re.escape(message)):
            read_mnli(path)
    tsv = tmp_path / "bad.tsv"
    tsv.write_text(
        "pairID\tsentence1\tsentence2\tgold_label\n1e\tA man.\tneutral\n", encoding="utf-8"
    )
    with pytest.raises(ValueError, match=_where(tsv, 2) + ".*expected 4 tab-separated columns"):
        read_mnli(tsv)


# ---------------------------------------------------------------------------------------------
# MS MARCO training data (built from the real DL20 files)


@pytest.fixture(scope="module")
def dl20(shared_data: Path):
    base = shared_data / "msmarco/dl20"
    return (
        read_topics(base / "queries.tsv"),
        read_qrels(base / "qrels.txt"),
        dict(read_corpus(base / "collection.tsv")),
        read_run(base / "bm25.top100.trec"),
    )


def test_qrels_pairs_and_hard_negatives_on_dl20(dl20):
    queries, qrels, collection, run = dl20
    pairs = qrels_training_pairs(qrels, queries, collection, min_grade=2)
    expected = sum(
        1 for judged in qrels.values() for d, g in judged.items() if g >= 2 and d in collection
    )
    assert len(pairs) == expected > 0
    assert all(qrels[p.qid][p.docid] >= 2 and p.text == collection[p.docid] for p in pairs)
    with pytest.raises(KeyError, match="has no text"):
        qrels_training_pairs(qrels, queries, collection, on_missing_doc="error")
    fold = sorted(qrels)[:5]
    assert {p.qid for p in qrels_training_pairs(qrels, queries, collection, qids=fold)} <= set(fold)

    negatives = hard_negatives_from_run(run, qrels, k=10, qids=fold)
    assert set(negatives) == set(fold)
    for qid, docids in negatives.items():
        assert len(docids) == 10
        assert all(qrels[qid].get(d, 0) < 1 for d in docids)
        scores = [run[qid][d] for d in docids]
        assert scores == sorted(scores, reverse=True)  # top-first
        # Nothing non-relevant ranked above the first chosen negative was skipped.
        ranked = sorted(run[qid], key=lambda d: (-run[qid][d], d))
        above = ranked[: ranked.index(docids[0])]
        assert all(qrels[qid].get(d, 0) >= 1 for d in above)


def test_triples_readers(dl20, tmp_path: Path):
    queries, qrels, collection, run = dl20
    pairs = qrels_training_pairs(qrels, queries, collection)
    qid, pos = pairs[0].qid, pairs[0].docid
    negs = hard_negatives_from_run(run, qrels, k=3, qids=[qid])[qid]
    ids = tmp_path / "qidpidtriples.tsv"
    ids.write_text("".join(f"{qid}\t{pos}\t{n}\n" for n in negs), encoding="utf-8")
    triples = list(read_id_triples(ids, queries, collection))
    assert triples == [Triple(queries[qid], collection[pos], collection[n]) for n in negs]
    texts = tmp_path / "triples.tsv"
    texts.write_text("".join("\t".join(t) + "\n" for t in triples), encoding="utf-8")
    assert list(read_triples(texts)) == triples

    ids.write_text(f"{qid}\t{pos}\t{negs[0]}\n{qid}\t{pos}\tnope\n", encoding="utf-8")
    with pytest.raises(KeyError, match=_where(ids, 2) + ".*unknown pid 'nope'"):
        list(read_id_triples(ids, queries, collection))
    texts.write_text("q\tp\tn\nq\tp\n", encoding="utf-8")
    with pytest.raises(ValueError, match=_where(texts, 2) + ".*expected 3 tab-separated"):
        list(read_triples(texts))


def test_load_ir_datasets_without_package(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "ir_datasets", None)  # makes `import ir_datasets` fail
    with pytest.raises(ImportError, match="pip install ir_datasets"):
        load_ir_datasets("msmarco-passage/trec-dl-2020/judged")


# ---------------------------------------------------------------------------------------------
# Folds


def test_kfold_split_partitions_queries():
    qids = [f"q{i}" for i in range(23)]
    splits = kfold_split(qids, k=5, seed=13)
    assert len(splits) == 5
    tests = [test for _, test in splits]
    assert sorted(q for test in tests for q in test) == sorted(qids)  # each qid in one test fold
    assert {len(t) for t in tests} == {4, 5}
    for train, test in splits:
        assert set(train).isdisjoint(test) and set(train) | set(test) == set(qids)
    assert kfold_split(list(reversed(qids)), k=5, seed=13) == splits  # order does not matter
    assert kfold_split(qids, k=5, seed=14) != splits
    with pytest.raises(ValueError, match="repeated"):
        kfold_split(["a", "b", "a"], k=2, seed=0)
    with pytest.raises(ValueError, match="k must be"):
        kfold_split(qids, k=1, seed=0)


# ---------------------------------------------------------------------------------------------
# Training files (mixencoder train --format)


def test_training_files_every_format_on_real_excerpts(shared_data: Path, dstc7_dev: list[dict], tmp_path: Path):
    from mixencoder.data.training_files import read_training_examples

    train_csv = tmp_path / "train.csv"
    rows = _csv_head(shared_data / "ubuntu/v2/train.csv", train_csv, 20)
    ubuntu = read_training_examples(train_csv, "ubuntu-v2")
    # Label-0 rows are dropped; a label-1 row's turns are joined oldest first.
    assert len(ubuntu) == sum(r[2] == "1" for r in rows) == 10
    pair = next(p for p in read_ubuntu_v2_train(train_csv) if p.label == 1)
    assert (ubuntu[0].query, ubuntu[0].positive, ubuntu[0].negatives) == (" ".join(pair.context), pair.response, ())

    dev_json = tmp_path / "dev.json"
    dev_json.write_text(json.dumps(dstc7_dev[:2]), encoding="utf-8")
    dstc7 = read_training_examples(dev_json, "dstc7")
    assert len(dstc7) == 2 and [e.query_id for e in dstc7] == ["dev-0", "dev-1"]
    [correct] = dstc7_dev[0]["options-for-correct-answers"]
    assert dstc7[0].positive == correct["utterance"] and len(dstc7[0].negatives) == 99
    assert correct["utterance"] not in dstc7[0].negatives
    from mixencoder.data.training_files import response_matching_examples

    bare = list(response_matching_examples(read_dstc7(dev_json), with_negatives=False))
    assert [(e.query, e.positive, e.negatives) for e in bare] == [(e.query, e.positive, ()) for e in dstc7]

    mnli = read_training_examples(shared_data / "mnli/dev_matched_sample.jsonl", "mnli", "nli", limit=5)
    pairs, _ = read_mnli(shared_data / "mnli/dev_matched_sample.jsonl")
    assert [(e.premise, e.hypothesis, e.label) for e in mnli] == [(p.premise, p.hypothesis, p.label_id) for p in pairs[:5]]

    triples = tmp_path / "triples.tsv"
    triples.write_text("what is rain\twater falling\ta city\nbread\tbaked dough\tthe sea\n", encoding="utf-8")
    [first, second] = read_training_examples(triples, "msmarco-triples")
    assert (second.query, second.positive, second.negatives) == ("bread", "baked dough", ("the sea",))
    assert read_training_examples(triples, "msmarco-triples", limit=1) == [first]


def test_training_files_errors_name_the_problem(tmp_path: Path):
    from mixencoder.data.training_files import read_training_examples

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"premise": "a", "hypothesis": "b", "label": 1}\n[1, 2]\n', encoding="utf-8")
    assert read_training_examples(pairs, "pairs-jsonl", "nli", limit=1)[0].label == 1
    with pytest.raises(ValueError, match=_where(pairs, 2) + ": expected a JSON object, got list"):
        read_training_examples(pairs, "pairs-jsonl", "nli")
    pairs.write_text('{"query": "q", "positive": "p", "negatives": ["  "]}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=_where(pairs, 1) + r": bad matching record: MatchingExample.negatives\[0\]"):
        read_training_examples(pairs, "pairs-jsonl")
    with pytest.raises(ValueError, match="format 'mnli' does not fit task 'matching'"):
        read_training_examples(pairs, "mnli")


def test_left_truncate_texts_keeps_the_latest_tokens():
    from transformers import AutoTokenizer

    from mixencoder.data.dialogue import left_truncate_texts

    tokenizer = AutoTokenizer.from_pretrained(str(Path(__file__).parent / "fixtures" / "tiny-bert"))
    assert tokenizer.is_fast
    text = "the rain of the city is water and the bread is a roll"
    [cut, short] = left_truncate_texts(tokenizer, [text, "a roll"], 4)
    assert cut == "the bread is a roll"[-len(cut):] and text.endswith(cut)
    assert len(tokenizer(cut, add_special_tokens=False)["input_ids"]) == 4
    assert short == "a roll"  # within the budget: unchanged
    assert left_truncate_texts(tokenizer, [], 4) == []
