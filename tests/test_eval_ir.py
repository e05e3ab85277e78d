"""Smoke tests of the IR experiments (``mixencoder eval msmarco`` / ``trec``, what eval/run_msmarco.py
and eval/run_trec.py run): each runs
in-process on a tiny slice of the real data with the tiny random BERT and a few training steps,
and must write the contract's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixencoder.experiment import cli


def run_eval(task: str, argv: list[str]) -> None:
    assert cli.main([task, *argv]) == 0

# The tiny BERT has 128 positions.
TINY = ["--query-max-length", "24", "--candidate-max-length", "64"]
SYSTEMS = ["bm25", "dual-zeroshot", "mixencoder-zeroshot", "mixencoder"]


def with_fused(systems: list[str]) -> list[str]:
    """The systems plus the fused rows the scripts add beside each one when bm25 runs."""
    if "bm25" not in systems:
        return list(systems)
    return [*systems, *(f"{s}+{f}" for s in systems if s != "bm25" for f in ("bm25", "rrf"))]


def _check_outputs(out: Path, measures: list[str], systems: list[str] = SYSTEMS) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics) == sorted(with_fused(systems))
    for system in systems:
        assert (out / "runs" / f"{system}.trec").is_file()
        assert set(measures) <= set(metrics[system])
        for m in measures:
            assert 0.0 <= metrics[system][m] <= 1.0
    for system in systems:
        if system != "bm25":
            assert metrics[system]["ms_per_query"] > 0
            assert metrics[system]["store_bytes"] > 0
    notes = json.loads((out / "notes.json").read_text())
    assert "paired_differences" in notes
    return metrics


def _same_per_query(out: Path, a: str, b: str) -> None:
    per_query = json.loads((out / "per_query.json").read_text())
    for measure, values in per_query[a].items():
        assert values == pytest.approx(per_query[b][measure], abs=1e-9), measure


def test_run_msmarco_cv_smoke(shared_data: Path, tiny_backbone_dir: Path, tmp_path: Path, capsys) -> None:

    out = tmp_path / "out"
    args = [
        "--data-dir", str(shared_data / "msmarco" / "dl20"), "--limit-queries", "6", "--depth", "20",
        "--folds", "2", "--budget", "3steps", "--backbone", str(tiny_backbone_dir), *TINY,
        "--out", str(out), "--cache", str(tmp_path / "cache"),
    ]
    run_eval("msmarco", args)
    measures = ["RR(rel=2)@10", "nDCG@10", "R(rel=2)@1", "R(rel=2)@1000"]
    metrics = _check_outputs(out, measures)
    printed = capsys.readouterr().out
    assert "mixencoder - dual-zeroshot [nDCG@10]" in printed
    assert "mixencoder - bm25 [RR(rel=2)@10]" in printed
    # The untrained pooled-residual MixEncoder is the dual encoder, query by query.
    _same_per_query(out, "mixencoder-zeroshot", "dual-zeroshot")
    # Reranking keeps the candidate set: recall at 1000 is the first stage's for every system.
    assert len({round(v["R(rel=2)@1000"], 9) for v in metrics.values()}) == 1
    runs = {s: (out / "runs" / f"{s}.trec").read_text().split("\n") for s in SYSTEMS}
    assert all(len([line for line in r if line]) == 6 * 20 for r in runs.values())
    # Every query is scored by the fold model that did not train on it.
    notes = json.loads((out / "notes.json").read_text())
    folds = notes["folds"]
    assert sorted(q for fold in folds for q in fold) == sorted({line.split()[0] for line in runs["mixencoder"] if line})
    assert all(info["train_queries"] == 6 - len(test) for info, test in zip(notes["training"].values(), folds))

    # A second run reuses the trained models and stores and gives the same numbers.
    run_eval("msmarco", args + ["--systems", "mixencoder"])
    again = json.loads((out / "metrics.json").read_text())
    assert again["mixencoder"]["nDCG@10"] == pytest.approx(metrics["mixencoder"]["nDCG@10"])


def test_run_msmarco_train_dir_and_bm25_index(shared_data: Path, tiny_backbone_dir: Path, tmp_path: Path) -> None:
    """Without a run file a BM25 index is built over collection.tsv; --train-dir reads triples."""
    from mixencoder.data import read_qrels, read_run, read_topics

    dl20 = shared_data / "msmarco" / "dl20"
    queries = read_topics(dl20 / "queries.tsv")
    qrels = read_qrels(dl20 / "qrels.txt")
    run = read_run(dl20 / "bm25.top100.trec")
    qids = list(qrels)[:3]
    keep = {d for q in qids for d in run[q]}
    data = tmp_path / "data"
    data.mkdir()
    lines = [line for line in (dl20 / "collection.tsv").read_text(encoding="utf-8").splitlines()
             if line.split("\t", 1)[0] in keep]
    (data / "collection.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (data / "queries.tsv").write_text("".join(f"{q}\t{queries[q]}\n" for q in qids), encoding="utf-8")
    (data / "qrels.txt").write_text(
        "".join(f"{q} 0 {d} {g}\n" for q in qids for d, g in qrels[q].items()), encoding="utf-8"
    )
    texts = dict(line.split("\t", 1) for line in lines)
    train = tmp_path / "train"
    train.mkdir()
    triples = []
    for q in qids:
        pos = [d for d, g in qrels[q].items() if g >= 2 and d in texts][:2]
        neg = [d for d in run[q] if qrels[q].get(d, 0) == 0 and d in texts][:2]
        triples += [f"{queries[q]}\t{texts[p]}\t{texts[n]}\n" for p, n in zip(pos, neg)]
    (train / "triples.train.small.tsv").write_text("".join(triples), encoding="utf-8")

    out = tmp_path / "out"
    run_eval("msmarco", [
        "--data-dir", str(data), "--train-dir", str(train), "--depth", "10", "--budget", "2steps",
        "--batch-size", "4", "--backbone", str(tiny_backbone_dir), *TINY, "--out", str(out),
        "--cache", str(tmp_path / "cache"),
    ])
    metrics = _check_outputs(out, ["RR(rel=2)@10", "nDCG@10", "R(rel=2)@1", "R(rel=2)@1000"])
    assert metrics["bm25"]["ms_per_query"] > 0  # retrieved here, so timed
    notes = json.loads((out / "notes.json").read_text())
    assert notes["data"]["first_stage"].startswith("Pyserini BM25 k1=0.82 b=0.68")
    assert notes["training"]["train-dir"]["examples"] == len(triples)
    bm25_lines = [line for line in (out / "runs" / "bm25.trec").read_text().splitlines() if line]
    assert len(bm25_lines) == 3 * 10


def test_run_trec_cv_smoke(shared_data: Path, tiny_backbone_dir: Path, tmp_path: Path) -> None:

    out = tmp_path / "out"
    run_eval("trec", [
        "--data-dir", str(shared_data / "vaswani"), "--limit-queries", "6", "--depth", "20", "--folds", "2",
        "--budget", "3steps", "--backbone", str(tiny_backbone_dir), *TINY, "--out", str(out),
        "--cache", str(tmp_path / "cache"),
    ])
    metrics = _check_outputs(out, ["nDCG@10", "RR@10", "AP", "R@20"])
    assert metrics["bm25"]["ms_per_query"] > 0
    _same_per_query(out, "mixencoder-zeroshot", "dual-zeroshot")
    assert len({round(v["R@20"], 9) for v in metrics.values()}) == 1
    notes = json.loads((out / "notes.json").read_text())
    assert notes["data"]["first_stage"] == "Pyserini BM25 k1=0.9 b=0.4, top 20"
    assert notes["data"]["documents"] == 11429


def test_run_msmarco_trains_baselines(shared_data: Path, tiny_backbone_dir: Path, tmp_path: Path) -> None:
    """The paper's baselines train on the same folds and rerank through the same stage."""

    systems = ["dual", "cross", "poly-64"]
    metrics, _ = _train_two_folds_of_four_queries(shared_data, tiny_backbone_dir, tmp_path, systems)
    for system in systems:
        assert metrics[system]["R(rel=2)@1000"] == pytest.approx(metrics["bm25"]["R(rel=2)@1000"])


def test_run_msmarco_frozen_store_systems(shared_data, tiny_backbone_dir, tmp_path):

    systems = ["dual-frozen", "mixencoder-frozen", "mixencoder-frozen-fusionloss"]
    metrics, notes = _train_two_folds_of_four_queries(shared_data, tiny_backbone_dir, tmp_path, systems)
    for system in systems:
        assert metrics[system]["train_s_per_step"] > 0
        assert all(info["steps"] == 1 for info in notes["training"][system].values())


def _train_two_folds_of_four_queries(shared_data: Path, tiny_backbone_dir: Path, tmp_path: Path, systems: list[str]):
    """``run_msmarco`` on 4 DL20 queries x 10 candidates, 2 folds, 2 training steps, BM25 plus
    ``systems``; checks what every such run must hold and returns ``(metrics, notes)``."""
    out = tmp_path / "out"
    run_eval("msmarco", [
        "--data-dir", str(shared_data / "msmarco" / "dl20"), "--limit-queries", "4", "--depth", "10",
        "--folds", "2", "--budget", "2steps", "--backbone", str(tiny_backbone_dir), *TINY,
        "--out", str(out), "--cache", str(tmp_path / "cache"), "--systems", "bm25", *systems,
    ])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == set(with_fused(["bm25", *systems]))
    notes = json.loads((out / "notes.json").read_text())
    assert set(notes["training"]) == set(systems)
    for system in systems:
        lines = [line for line in (out / "runs" / f"{system}.trec").read_text().split("\n") if line]
        assert len(lines) == 4 * 10
    return metrics, notes


def test_run_msmarco_trains_on_another_judged_folder(shared_data: Path, tiny_backbone_dir: Path, tmp_path: Path) -> None:
    """--train-dir may be a judged folder (queries, qrels, run, passages) like the evaluation data:
    the model trains on its judged positives with hard negatives from its run, as the folds do."""
    from mixencoder.data import read_qrels, read_run, read_topics
    from mixencoder.experiment import ir

    dl20 = shared_data / "msmarco" / "dl20"
    queries, qrels, run = read_topics(dl20 / "queries.tsv"), read_qrels(dl20 / "qrels.txt"), read_run(dl20 / "bm25.top100.trec")
    evaluated = ir.select_queries(queries, qrels, run, 3)
    train_qids = [q for q in ir.select_queries(queries, qrels, run, None) if q not in evaluated][:3]
    train = tmp_path / "judged-train"
    train.mkdir()
    keep = {d for q in train_qids for d in list(run[q])[:10]} | {d for q in train_qids for d in qrels[q]}
    (train / "collection.tsv").write_text("".join(
        line + "\n" for line in (dl20 / "collection.tsv").read_text(encoding="utf-8").splitlines()
        if line.split("\t", 1)[0] in keep), encoding="utf-8")
    (train / "queries.tsv").write_text("".join(f"{q}\t{queries[q]}\n" for q in train_qids), encoding="utf-8")
    (train / "qrels.txt").write_text("".join(f"{q} 0 {d} {g}\n" for q in train_qids for d, g in qrels[q].items()),
                                     encoding="utf-8")
    (train / "bm25.trec").write_text("".join(
        f"{q} Q0 {d} {i + 1} {s} bm25\n" for q in train_qids for i, (d, s) in enumerate(list(run[q].items())[:10])),
        encoding="utf-8")

    out = tmp_path / "out"
    run_eval("msmarco", [
        "--data-dir", str(dl20), "--limit-queries", "3", "--train-dir", str(train), "--depth", "10",
        "--budget", "2steps", "--batch-size", "4", "--backbone", str(tiny_backbone_dir), *TINY,
        "--out", str(out), "--cache", str(tmp_path / "cache"), "--systems", "bm25", "mixencoder",
    ])
    notes = json.loads((out / "notes.json").read_text())
    info = notes["training"]["train-dir"]
    expected = ir.judged_training(train, depth=10, negatives="judged", max_negatives=30, cache=tmp_path / "cache")
    assert info["train_queries"] == 3 and info["examples"] == len(expected.examples) > 0
    assert info["steps"] == 2 and info["mean_negatives_per_query"] > 0  # hard negatives from its run
    assert {e.query_id for e in expected.examples} <= set(train_qids)  # none of the evaluated queries
    lines = [line for line in (out / "runs" / "mixencoder.trec").read_text().splitlines() if line]
    assert sorted({line.split()[0] for line in lines}) == sorted(evaluated) and len(lines) == 3 * 10


def test_a_train_dir_that_is_neither_triples_nor_judged_is_named(shared_data: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("nothing to train on")
    with pytest.raises(SystemExit) as exc:
        cli.main(["msmarco", "--data-dir", str(shared_data / "msmarco" / "dl20"), "--limit-queries", "2",
                  "--depth", "5", "--train-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert f"--train-dir {tmp_path}: neither MS MARCO triples" in capsys.readouterr().err
