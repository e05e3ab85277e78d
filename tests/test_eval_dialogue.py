"""Smoke tests of the dialogue and NLI experiments (``mixencoder eval ubuntu|dstc7|mnli``, what
eval/run_ubuntu.py, eval/run_dstc7.py and eval/run_mnli.py run): each runs in-process on a tiny
slice of the real data with the tiny random BERT and a 2-step budget, and writes the outputs of
the eval contract."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from mixencoder.experiment import cache, cli, dialogue
from mixencoder.experiment.systems import DEFAULT_SYSTEMS, with_sampled_negatives
from mixencoder.models import MixEncoder


def run_eval(task: str, argv: list[str]) -> int:
    return cli.main([task, *argv])


def tiny_args(tmp_path: Path, backbone: Path) -> list[str]:
    return [
        "--backbone", str(backbone),
        "--budget", "2steps",
        "--batch-size", "4",
        "--query-max-length", "64",
        "--candidate-max-length", "32",
        "--out", str(tmp_path / "out"),
        "--cache", str(tmp_path / "cache"),
    ]


def check_ranking_outputs(out: Path, measures: list[str], n_queries: int) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    fused = {f"{s}+{f}" for s in DEFAULT_SYSTEMS if s != "bm25" for f in ("bm25", "rrf")}
    assert set(metrics) == set(DEFAULT_SYSTEMS) | fused  # fused rows beside each system
    for system, values in metrics.items():
        for m in measures:
            assert 0.0 <= values[m] <= 1.0, (system, m)
        assert values["ms_per_query"] >= 0
        lines = (out / "runs" / f"{system}.trec").read_text().splitlines()
        assert len({line.split()[0] for line in lines}) == n_queries
    for system in ("dual-zeroshot", "mixencoder-zeroshot", "mixencoder"):
        assert metrics[system]["store_bytes"] > 0
    # Zero mixing maps at initialisation: the fresh MixEncoder scores exactly like the dual.
    for m in measures:
        assert metrics["mixencoder-zeroshot"][m] == metrics["dual-zeroshot"][m]
    notes = json.loads((out / "notes.json").read_text())
    assert "mixencoder - bm25 [RR]" in notes["paired_differences"]
    assert notes["training"]["all"]["steps"] == 2
    per_query = json.loads((out / "per_query.json").read_text())
    assert len(per_query["mixencoder"]["RR"]) == n_queries
    return metrics


def test_run_ubuntu_smoke(tmp_path, shared_data, tiny_backbone_dir, capsys):
    argv = tiny_args(tmp_path, tiny_backbone_dir) + [
        "--data-dir", str(shared_data / "ubuntu" / "v2"),
        "--limit-train", "120",
        "--limit-eval", "6",
    ]
    assert run_eval("ubuntu", argv) == 0
    metrics = check_ranking_outputs(tmp_path / "out", list(dialogue.UBUNTU_MEASURES), 6)
    assert "mixencoder - dual-zeroshot [R@1]" in capsys.readouterr().out
    # A second run reuses the cached checkpoint and stores and reproduces every figure.
    assert run_eval("ubuntu", argv + ["--systems", "mixencoder", "--ablate-interaction"]) == 0
    again = json.loads((tmp_path / "out" / "metrics.json").read_text())
    # The ablation row: the same trained weights scored with the interaction switched off.
    assert set(again) == {"mixencoder", "mixencoder-pooled"}
    notes = json.loads((tmp_path / "out" / "notes.json").read_text())
    assert "mixencoder - mixencoder-pooled [R@1]" in notes["paired_differences"]
    assert {k: v for k, v in again["mixencoder"].items() if k != "ms_per_query"} == {
        k: v for k, v in metrics["mixencoder"].items() if k != "ms_per_query"
    }


def test_run_ubuntu_folds_smoke(tmp_path, shared_data, tiny_backbone_dir):
    argv = tiny_args(tmp_path, tiny_backbone_dir) + [
        "--data-dir", str(shared_data / "ubuntu" / "v2"),
        "--limit-eval", "8",
        "--folds", "2",
        "--systems", "bm25", "mixencoder",
    ]
    assert run_eval("ubuntu", argv) == 0
    out = tmp_path / "out"
    notes = json.loads((out / "notes.json").read_text())
    assert set(notes["training"]) == {"fold0", "fold1"}
    assert all(info["steps"] == 1 for info in notes["training"].values())  # 2 steps split over 2 folds
    for system in ("bm25", "mixencoder"):
        lines = (out / "runs" / f"{system}.trec").read_text().splitlines()
        assert len({line.split()[0] for line in lines}) == 8


def test_run_dstc7_smoke(tmp_path, shared_data, tiny_backbone_dir):
    argv = tiny_args(tmp_path, tiny_backbone_dir) + [
        "--data-dir", str(shared_data / "ubuntu" / "dstc7"),
        "--limit-train", "40",
        "--limit-eval", "3",
    ]
    assert run_eval("dstc7", argv) == 0
    check_ranking_outputs(tmp_path / "out", list(dialogue.DSTC7_MEASURES), 3)
    run = (tmp_path / "out" / "runs" / "bm25.trec").read_text().splitlines()
    assert len(run) == 300  # every one of the 100 candidates of each example is ranked


def test_run_mnli_smoke(tmp_path, shared_data, tiny_backbone_dir):
    argv = tiny_args(tmp_path, tiny_backbone_dir) + [
        "--data-dir", str(shared_data / "mnli"),
        "--limit-eval", "30",
        "--folds", "2",
    ]
    assert run_eval("mnli", argv) == 0
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"majority-class", "mixencoder"}
    assert 0.0 <= metrics["mixencoder"]["accuracy"] <= 1.0
    rows = (out / "predictions" / "mixencoder.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:4] == ["pairID", "fold", "gold_label", "predicted_label"]
    assert len(rows) == 31
    majority = (out / "predictions" / "majority-class.tsv").read_text().splitlines()[1:]
    correct = sum(r.split("\t")[2] == r.split("\t")[3] for r in majority)
    assert metrics["majority-class"]["accuracy"] == pytest.approx(correct / 30)
    notes = json.loads((out / "notes.json").read_text())
    assert set(notes["training"]) == {"fold0", "fold1"}


def test_bm25_matches_hand_computation():
    bm25 = dialogue.BM25(["a b", "a c c", "d"], k1=0.9, b=0.4)
    assert bm25.n == 3 and bm25.avgdl == 2.0
    doc = dialogue.bm25_tokens("C c A")  # lowercased: ["c", "c", "a"], length 3
    norm = 0.9 * (1 - 0.4 + 0.4 * 3 / 2.0)
    idf_c = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    idf_a = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    expected = 2 * idf_c * 2 * 1.9 / (2 + norm) + idf_a * 1 * 1.9 / (1 + norm)
    assert bm25.score(Counter({"c": 2, "a": 1, "zzz": 1}), doc) == pytest.approx(expected)


def test_left_truncation_keeps_the_latest_tokens(minilm):
    text = " ".join(["hello"] * 300 + ["goodbye"])
    cut = dialogue.left_truncate_texts(minilm.tokenizer, [text, "short context"], 20)
    assert cut == [" ".join(["hello"] * 19 + ["goodbye"]), "short context"]


def test_run_ubuntu_trains_baselines_like_mixencoder(tmp_path, shared_data, tiny_backbone_dir):
    """Registry systems (the paper's baselines, MixEncoder variants) train and rerank through the
    same script; a cross-encoder (no in-batch matrix) gets one sampled negative per query."""
    systems = ["dual", "virt", "cross", "deformer", "mixencoder-b"]
    argv = tiny_args(tmp_path, tiny_backbone_dir) + [
        "--data-dir", str(shared_data / "ubuntu" / "v2"),
        "--limit-eval", "6",
        "--folds", "2",
        "--systems", *systems,
    ]
    assert run_eval("ubuntu", argv) == 0
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == set(systems)
    notes = json.loads((out / "notes.json").read_text())
    assert set(notes["training"]) == set(systems)
    assert all(info["steps"] == 1 for s in systems for info in notes["training"][s].values())
    for system in systems:
        assert 0.0 <= metrics[system]["R@1"] <= 1.0 and metrics[system]["ms_per_query"] > 0
        lines = (out / "runs" / f"{system}.trec").read_text().splitlines()
        assert len({line.split()[0] for line in lines}) == 6
    # VIRT is distilled from the cross-encoder trained on the same fold (reused, not retrained)
    for fold in ("fold0", "fold1"):
        assert notes["training"]["virt"][fold]["teacher"] == Path(notes["training"]["cross"][fold]["dir"]).name
    # Deformer stores per-token lower-layer states: a larger store than the dual encoder's
    assert metrics["deformer"]["store_bytes"] > metrics["dual"]["store_bytes"]


def test_sampled_negatives_never_pick_the_example_itself():
    from mixencoder.training import MatchingExample

    examples = [MatchingExample(f"q{i}", f"p{i}") for i in range(5)]
    out = with_sampled_negatives(examples, seed=0)
    assert [e.positive for e in out] == [e.positive for e in examples]
    assert all(len(e.negatives) == 1 and e.negatives[0] != e.positive for e in out)


def test_train_cache_key_follows_the_resolved_model_config(tmp_path, tiny_backbone_dir, monkeypatch):
    # A model default that changes (here: mixing) must not reuse a model trained under the old
    # one, even when the script passes the same overrides; identical inputs do reuse it.
    from mixencoder.training.examples import MatchingExample

    examples = [MatchingExample(f"query {i}", f"answer {i}") for i in range(8)]
    recipe = cache.Recipe(seed=0, batch_size=4, backbone=str(tiny_backbone_dir))
    kwargs = dict(cache=tmp_path, name="t", system="mixencoder", model_config={"k": 1})
    _, first = cache.train_cached(examples, recipe, cache.Budget(steps=1), **kwargs)
    _, again = cache.train_cached(examples, recipe, cache.Budget(steps=1), **kwargs)
    assert again["dir"] == first["dir"]
    # The same overrides under code whose default mixing is "scalar" (the old default).
    from dataclasses import dataclass

    from mixencoder.models.config import MixEncoderConfig

    @dataclass
    class OldDefaults(MixEncoderConfig):
        mixing: str = "scalar"

    monkeypatch.setattr(MixEncoder, "CONFIG_CLASS", OldDefaults)
    old_default, info = cache.train_cached(examples, recipe, cache.Budget(steps=1), **kwargs)
    assert old_default.config.mixing == "scalar"
    assert info["dir"] != first["dir"]
