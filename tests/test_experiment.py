"""mixencoder.experiment: the shared model flags, the results table with paired differences, the
judged-query training examples, and the runner over a task built in code (no files)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mixencoder.experiment import Fold, RankingTask, Recipe, Results, cli, run_experiment, system_spec
from mixencoder.experiment.ir import judged_examples
from mixencoder.experiment.systems import model_config_from_args, resolve_layers


@pytest.mark.parametrize("task", ["msmarco", "trec", "ubuntu", "dstc7", "mnli"])
def test_interaction_layers_count_from_the_end_in_every_task(task, tiny_backbone_dir):
    """One flag parser: ``--interaction-layers -1`` is the backbone's last layer everywhere (the
    tiny BERT has 3), and positive numbers are taken as given."""
    args, _ = cli.parse_args([task, "--backbone", str(tiny_backbone_dir), "--interaction-layers", "-1", "1"])
    assert model_config_from_args(args)["interaction_layers"] == [1, 3]
    args, _ = cli.parse_args([task, "--backbone", str(tiny_backbone_dir), "--interaction-layers", "-3", "-2", "-1"])
    assert model_config_from_args(args)["interaction_layers"] == [1, 2, 3]


def test_interaction_layers_outside_the_backbone_are_rejected(tiny_backbone_dir):
    with pytest.raises(ValueError, match="the backbone has 3 layers"):
        resolve_layers([-4], str(tiny_backbone_dir))


def test_results_frame_has_paired_differences_against_the_baseline(tmp_path):
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    results = Results(tmp_path, qrels, ["RR"])
    results.add("base", {"q1": {"a": 2, "x": 1}, "q2": {"x": 2, "b": 1}, "q3": {"x": 2, "c": 1}})  # RR 1, .5, .5
    results.add("better", {"q1": {"a": 2, "x": 1}, "q2": {"b": 2, "x": 1}, "q3": {"x": 2, "c": 1}}, ms_per_query=3.0)
    frame = results.frame(baseline="base")
    assert list(frame.index) == ["base", "better"]
    assert frame.loc["better", "RR"] == pytest.approx(2.5 / 3)
    assert frame.loc["better", "RR diff"] == pytest.approx(0.5 / 3)  # per-query diffs 0, .5, 0
    assert frame.loc["better", "RR se"] == pytest.approx(math.sqrt(((0.5 - 0.5 / 3) ** 2 + 2 * (0.5 / 3) ** 2) / 2 / 3))
    assert frame.loc["base", "RR diff"] == 0.0 and math.isnan(frame.loc["base", "ms_per_query"])
    with pytest.raises(KeyError, match="baseline 'nope'"):
        results.frame(baseline="nope")


def _task() -> RankingTask:
    texts = {"d1": "pasta recipe with tomato", "d2": "the stock market fell", "d3": "bake bread at home",
             "d4": "football results today", "d5": "tomato soup", "d6": "bond yields rise"}
    run = {"q1": {"d2": 3.0, "d1": 2.0, "d5": 1.0}, "q2": {"d4": 3.0, "d6": 2.0, "d2": 1.0},
           "q3": {"d1": 3.0, "d3": 2.0, "d4": 1.0}, "q4": {"d5": 3.0, "d2": 2.0, "d1": 1.0}}
    return RankingTask(
        name="toy",
        queries={"q1": "how to cook pasta", "q2": "finance news", "q3": "bread baking", "q4": "soup"},
        qrels={"q1": {"d1": 2, "d2": 0}, "q2": {"d6": 2, "d4": 0}, "q3": {"d3": 1}, "q4": {"d5": 2, "d2": 0}},
        candidates={q: list(hits) for q, hits in run.items()},
        texts=texts, measures=["nDCG@10", "RR"], first_stage=run, min_grade=2,
    )


def test_judged_examples_take_hard_negatives_from_the_run():
    task = _task()
    data = judged_examples(task, ["q1", "q2", "q3"], negatives="judged", max_negatives=5)
    # q3's only judgment is grade 1: no positive at min_grade 2, and never a negative
    assert [(e.query_id, e.positive_id) for e in data.examples] == [("q1", "d1"), ("q2", "d6")]
    assert [e.negatives for e in data.examples] == [(task.texts["d2"],), (task.texts["d4"],)]
    unjudged = judged_examples(task, ["q1"], negatives="unjudged", max_negatives=5)
    assert unjudged.examples[0].negatives == (task.texts["d5"],)
    assert judged_examples(task, ["q1"], negatives="none", max_negatives=5).examples[0].negatives == ()
    with pytest.raises(ValueError, match="negatives 'hard'"):
        judged_examples(task, ["q1"], negatives="hard", max_negatives=5)


def test_run_experiment_over_a_task_built_in_code(tmp_path, tiny_backbone_dir):
    """Any RankingTask runs: bm25 (its given run), the zero-shot pair (equal by construction),
    and a trained system cross-validated over folds given by the caller; fused rows beside them."""
    task = _task()
    config = {"query_max_length": 16, "candidate_max_length": 16}
    folds = []
    for i, test in enumerate((["q1", "q2"], ["q3", "q4"])):
        train = [q for q in task.queries if q not in test]
        folds.append(Fold(f"fold{i}", test, lambda train=train: judged_examples(
            task, train, negatives="both", max_negatives=2), hard_negatives=1, train_qids=train))
    systems = [system_spec(s, config) for s in ("bm25", "dual-zeroshot", "mixencoder-zeroshot", "mixencoder")]
    results = run_experiment(task, systems, folds=folds, cache=tmp_path / "cache", out=tmp_path / "out",
                             recipe=Recipe(budget="2steps", batch_size=2, backbone=str(tiny_backbone_dir)),
                             model_config=config, fusion_measure="nDCG@10",
                             comparisons=[("mixencoder", "dual-zeroshot")], compare_on=["nDCG@10"])
    assert set(results.metrics) >= {"bm25", "mixencoder", "mixencoder+bm25", "dual-zeroshot+rrf"}
    assert results.per_query["mixencoder-zeroshot"] == results.per_query["dual-zeroshot"]
    assert results.metrics["bm25"]["RR"] == pytest.approx((0.5 + 0.5 + 0.5 + 1) / 4)
    notes = json.loads((tmp_path / "out" / "notes.json").read_text())
    assert notes["folds"] == [["q1", "q2"], ["q3", "q4"]]
    assert all(notes["training"][f]["steps"] == 1 for f in ("fold0", "fold1"))
    assert "mixencoder - dual-zeroshot [nDCG@10]" in notes["paired_differences"]
    frame = results.frame(baseline="bm25")
    assert frame.loc["bm25", "RR diff"] == 0.0 and "nDCG@10 se" in frame.columns


@pytest.mark.parametrize("config", sorted((Path(__file__).resolve().parents[1] / "eval" / "configs").glob("*.json")))
def test_committed_configs_parse_and_later_flags_win(config):
    args, _ = cli.parse_args(["--config", str(config), "--seed", "7"])
    flags = json.loads(config.read_text())["flags"]
    assert args.task == json.loads(config.read_text())["task"] and args.seed == 7
    assert args.systems == flags["systems"] and args.budget == flags["budget"]


def test_a_bad_config_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"flags": {}}')
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--config", str(bad)])
    assert exc.value.code == 2 and f"--config {bad}" in capsys.readouterr().err


def test_find_file_rules(tmp_path):
    from mixencoder.experiment.tasks import find_file

    (tmp_path / "queries.dev.tsv").write_text("")
    (tmp_path / "queries.train.tsv").write_text("")
    (tmp_path / "qrels.a").write_text("")
    (tmp_path / "qrels.b").write_text("")
    # no name: the first match, training files left out
    assert find_file(tmp_path, ["queries*.tsv"], "queries") == tmp_path / "queries.dev.tsv"
    assert find_file(tmp_path, ["runs*"], "run") is None
    # a name wins, even a missing one (its reader then names it)
    assert find_file(tmp_path, ["qrels*"], "qrels", "mine.txt") == tmp_path / "mine.txt"
    # a default name falls back to the single match, and names the candidates when there are several
    assert find_file(tmp_path, ["queries.dev*"], "topics", "topics.trec", fallback=True) == tmp_path / "queries.dev.tsv"
    with pytest.raises(ValueError, match=r"no qrels.txt; 2 candidate qrels files \['qrels.a', 'qrels.b'\]"):
        find_file(tmp_path, ["qrels*"], "qrels", "qrels.txt", fallback=True)


def test_the_same_seed_trains_the_same_model_whatever_the_global_rng(tmp_path, tiny_backbone_dir):
    """New layers (the interaction's gate) initialise from torch's global RNG, which torch seeds
    randomly per process: train_cached draws them from the recipe's seed instead."""
    import torch

    from mixencoder.experiment.cache import Budget, train_cached
    from mixencoder.training import MatchingExample

    examples = [MatchingExample(f"query {i}", f"answer {i}") for i in range(4)]
    recipe = Recipe(seed=3, batch_size=2, backbone=str(tiny_backbone_dir))
    weights = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        model, _ = train_cached(examples, recipe, Budget(steps=1), cache=tmp_path / f"c{global_seed}", name="t",
                                model_config={"k": 1})
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
