"""MNLI pair classification (entailment / neutral / contradiction) with MixEncoder's classifier
head: the premise is the query, the hypothesis the candidate, ``TrainingConfig(task="nli")``.

Systems: ``majority-class`` (the training folds' most frequent label; ties: MNLI label order)
and ``mixencoder`` (argmax of ``MixEncoder.predict``, trained per fold or given). The measure is
``accuracy`` (not an ir-measure); ``ms_per_query`` is the prediction time per pair (batched by
32, tokenisation included). Besides the usual outputs, ``OUT/predictions/<system>.tsv`` holds
pairID, fold, gold, predicted and, for mixencoder, the class probabilities.
"""

from __future__ import annotations

import csv
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..data import kfold_split, read_mnli
from ..data.corpus import atomic_write
from ..data.nli import LABELS, NLIExample
from ..models.registry import load_model
from ..training import PairExample
from .cache import Recipe, train_cached
from .results import Results

logger = logging.getLogger(__name__)

SYSTEMS = ("majority-class", "mixencoder")
#: (name, training pairs, evaluated pair ids)
NLIFold = tuple[str, list[NLIExample], list[str]]


def read_pairs(path: Path, limit: int | None) -> list[NLIExample]:
    """The labelled pairs of an MNLI file (the first ``limit``)."""
    examples, skipped = read_mnli(path)
    if skipped:
        logger.info("%s: %d pairs without a gold label skipped", path, skipped)
    return examples[:limit] if limit is not None else examples


def majority_label(examples: Sequence[NLIExample]) -> str:
    counts = Counter(e.label for e in examples)
    return max(LABELS, key=lambda label: (counts[label], -LABELS.index(label)))


def nli_folds(pairs: Sequence[NLIExample], k: int, seed: int) -> list[NLIFold]:
    """Pair-level K-fold CV: each fold trains on the other K-1 and predicts its own pairs."""
    by_id = {e.pair_id: e for e in pairs}
    return [(f"fold{i}", [by_id[q] for q in train], list(test))
            for i, (train, test) in enumerate(kfold_split(list(by_id), k, seed))]


def run_nli(
    pairs: Sequence[NLIExample], folds: Sequence[NLIFold], systems: Sequence[str], recipe: Recipe, *,
    model_config: Mapping[str, Any], cache: Path, out: Path, given: Path | None = None,
    notes: Mapping[str, Any] | None = None,
) -> Results:
    """Predict every pair with each of ``systems`` and write the outputs (see the module docstring)."""
    wall = time.perf_counter()
    by_id = {e.pair_id: e for e in pairs}
    fold_of = {q: name for name, _, test in folds for q in test}
    predictions: dict[str, dict[str, str]] = {s: {} for s in systems}
    probabilities: dict[str, list[float]] = {}
    extras: dict[str, dict[str, float]] = {s: {} for s in systems}
    timings: dict[str, float] = {}
    train_info: dict[str, Any] = {}
    budget_info = None
    if "majority-class" in systems:
        for _, train, test in folds:
            predictions["majority-class"].update({q: majority_label(train) for q in test})
    if "mixencoder" in systems:
        predict_seconds = 0.0
        model = None if given is None else load_model(given)
        if model is not None and not model.config.num_labels:
            raise ValueError(f"{given} has no classifier head (num_labels=0)")
        to_predict = folds if model is None else [("all", [], list(by_id))]
        budget = recipe.budget_per_run(len(to_predict))
        if model is None:
            budget_info = {"seconds": budget.seconds, "planned_steps": budget.steps}
        for name, train, test in to_predict:
            if given is None:
                start = time.perf_counter()
                model, info = train_cached(
                    [PairExample(e.premise, e.hypothesis, e.label_id) for e in train], recipe, budget, cache=cache,
                    name=f"mnli-mixencoder-{name}", model_config=model_config, task="nli",
                )
                timings[f"train_{name}_s"] = time.perf_counter() - start
                train_info[name] = info
                logger.info("trained %s: %s", name, info)
            start = time.perf_counter()
            probs = model.predict([(by_id[q].premise, by_id[q].hypothesis) for q in test])
            predict_seconds += time.perf_counter() - start
            for q, row in zip(test, probs):
                predictions["mixencoder"][q] = LABELS[int(row.argmax())]
                probabilities[q] = [float(x) for x in row]
        extras["mixencoder"]["ms_per_query"] = 1000 * predict_seconds / max(len(by_id), 1)
        timings["predict_s"] = predict_seconds
    results = Results(out, qrels={}, measures=["accuracy"])
    for system in systems:
        correct = {q: float(predictions[system][q] == by_id[q].label) for q in by_id}
        results.add_values(system, {"accuracy": correct}, **extras[system])
        write_predictions(out / "predictions" / f"{system}.tsv", by_id, fold_of, predictions[system],
                          probabilities if system == "mixencoder" else None)
    timings["wall_s"] = time.perf_counter() - wall
    results.notes.update(
        task="mnli", pairs=len(by_id), label_counts=dict(Counter(e.label for e in pairs)),
        model_config=dict(model_config) if given is None else str(given), budget_per_run=budget_info,
        training=train_info, timings={k: round(v, 1) for k, v in timings.items()}, **(notes or {}),
    )
    results.write([("mixencoder", "majority-class", "accuracy")])
    return results


def write_predictions(path: Path, by_id: Mapping[str, NLIExample], fold_of: Mapping[str, str],
                      predicted: Mapping[str, str], probabilities: Mapping[str, list[float]] | None) -> None:
    """One TSV row per pair: id, fold, gold and predicted label (and the class probabilities)."""
    with atomic_write(path) as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        header = ["pairID", "fold", "gold_label", "predicted_label"]
        if probabilities is not None:
            header += [f"p_{label}" for label in LABELS]
        writer.writerow(header)
        for q, example in by_id.items():
            row = [q, fold_of.get(q, "all"), example.label, predicted[q]]
            if probabilities is not None:
                row += [f"{x:.6f}" for x in probabilities[q]]
            writer.writerow(row)
