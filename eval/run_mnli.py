"""MNLI pair classification (entailment / neutral / contradiction) with MixEncoder's classifier head.

The data (``../shared/data/mnli/dev_matched_sample.jsonl``: 1,000 MNLI dev-matched pairs, the
ChaosNLI subset, i.e. items with low annotator agreement) is split into ``--folds K``
query-level (pair-level) folds (``mixencoder.data.kfold_split``, seeded by ``--seed``); for each
fold a fresh MixEncoder with a 3-way classifier head (premise as query, hypothesis as
candidate, ``TrainingConfig(task="nli")``) is trained on the other K-1 folds and predicts the
held-out one, so every pair is predicted exactly once by a model that never saw it.

Usage (from the project root)::

    python eval/run_mnli.py                                    # 5 folds, 10m budget in total
    python eval/run_mnli.py --folds 10 --budget 20m --lr 1e-4 --out runs/mnli-10fold
    python eval/run_mnli.py --train-dir ../data/multinli_1.0 \\
        --train-file multinli_1.0_train.jsonl --limit-train 50000   # train once, evaluate all
    python eval/run_mnli.py --model work/cache/train/mnli-mixencoder-fold0-.../final
    python eval/run_mnli.py --limit-eval 100 --folds 2 --budget 10steps --out runs/mnli-quick

Systems:

* ``majority-class``: the most frequent label of the training folds (ties: MNLI label order).
* ``mixencoder``: the trained classifier (argmax of ``MixEncoder.predict``), or the ``--model``
  given (then evaluated on every pair, no training).

Measure: ``accuracy`` (not an ir-measure), the fraction of pairs whose predicted label is the
gold label; ``ms_per_query`` is the prediction time per pair (batched by 32, tokenisation
included). Paired differences (mixencoder - majority-class, per-pair accuracy) with their
standard errors go to ``OUT/notes.json`` and the console.

Budget: ``--budget`` is split evenly over the folds; as in eval/run_ubuntu.py a time budget is
a wall-clock cap and the learning-rate schedule is planned over ``budget / --est-step-seconds``
steps; ``--budget 500steps`` trains exactly 500 steps (split over folds). Trained models are
cached under ``--cache`` and reused while inputs and settings are unchanged.

Options beyond the shared contract: ``--data-file`` (file in --data-dir), ``--train-file``
(file in --train-dir), ``--limit-train N`` / ``--limit-eval N`` (first N pairs), ``--lr``,
``--k``, ``--interaction-layers`` (negative = from the last layer), ``--query-max-length``
(premise tokens, default 128: 99% of premises are <= 92), ``--candidate-max-length``
(hypothesis tokens, default 64: the longest is 53), ``--est-step-seconds``, ``--systems``.

Outputs: ``OUT/metrics.json`` ({system: {"accuracy": value, ...}}), ``OUT/per_query.json``
({system: {"accuracy": {pairID: 0 or 1}}}), ``OUT/predictions/<system>.tsv`` (pairID, fold,
gold, predicted and, for mixencoder, the class probabilities) and ``OUT/notes.json``. There
are no run files: this is classification, not ranking.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see eval/run_ubuntu.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import Results, setup_logging, train_cached  # noqa: E402
from common import plan_budget  # noqa: E402
from run_ubuntu import fresh_model_config, resolve_path  # noqa: E402

from mixencoder import MixEncoder  # noqa: E402
from mixencoder.data import kfold_split, read_mnli  # noqa: E402
from mixencoder.data.nli import LABELS, NLIExample  # noqa: E402
from mixencoder.training import PairExample  # noqa: E402

logger = logging.getLogger("eval")

SYSTEMS = ("majority-class", "mixencoder")


def majority_label(examples: list[NLIExample]) -> str:
    counts = Counter(e.label for e in examples)
    return max(LABELS, key=lambda label: (counts[label], -LABELS.index(label)))


def read_pairs(path: Path, limit: int | None) -> list[NLIExample]:
    examples, skipped = read_mnli(path)
    if skipped:
        logger.info("%s: %d pairs without a gold label skipped", path, skipped)
    return examples[:limit] if limit is not None else examples


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.split("\n\n")[0], data_dir="../shared/data/mnli", out="runs/mnli", budget="10m", folds=5)
    p.add_argument("--data-file", default="dev_matched_sample.jsonl", help="file in --data-dir")
    p.add_argument("--train-file", default="multinli_1.0_train.jsonl", help="file in --train-dir")
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training pairs")
    p.add_argument("--limit-eval", type=int, default=None, help="evaluate only the first N pairs")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--interaction-layers", type=int, nargs="+", default=[-1],
                   help="1-based backbone layers; negative numbers count from the end (default -1: the last)")
    p.add_argument("--query-max-length", type=int, default=128, help="premise tokens (default 128)")
    p.add_argument("--candidate-max-length", type=int, default=64, help="hypothesis tokens (default 64)")
    p.add_argument("--est-step-seconds", type=float, default=1.5,
                   help="seconds per step assumed to plan the schedule of a time budget (default 1.5)")
    args = p.parse_args(argv)
    setup_logging()
    wall = time.perf_counter()

    pairs = read_pairs(resolve_path(args.data_dir, args.data_file), args.limit_eval)
    by_id = {e.pair_id: e for e in pairs}
    model_config = fresh_model_config(args, num_labels=len(LABELS))
    if args.train_dir is not None:
        train_pairs = read_pairs(resolve_path(args.train_dir, args.train_file), args.limit_train)
        folds = [("all", train_pairs, list(by_id))]
        protocol = f"train on {args.train_dir}, evaluate every pair"
    elif args.folds >= 2:
        splits = kfold_split(list(by_id), args.folds, args.seed)
        folds = [(f"fold{i}", [by_id[q] for q in train], test) for i, (train, test) in enumerate(splits)]
        protocol = f"{args.folds}-fold pair-level CV"
    else:
        p.error("give --train-dir or --folds K (K >= 2)")

    fold_of = {q: name for name, _, test in folds for q in test}
    predictions: dict[str, dict[str, str]] = {s: {} for s in args.systems}
    probabilities: dict[str, list[float]] = {}
    timings: dict[str, float] = {}
    extras: dict[str, dict[str, float]] = {s: {} for s in args.systems}
    train_info: dict[str, dict] = {}
    budget_info = None

    if "majority-class" in args.systems:
        for _, train, test in folds:
            label = majority_label(train)
            predictions["majority-class"].update({q: label for q in test})

    if "mixencoder" in args.systems:
        predict_seconds = 0.0
        if args.model is not None:
            given = MixEncoder.from_pretrained(args.model)
            if not given.config.num_labels:
                p.error(f"{args.model} has no classifier head (num_labels=0)")
            folds_to_predict = [("all", None, list(by_id))]
        else:
            given = None
            folds_to_predict = folds
        budget = plan_budget(args.budget, args.est_step_seconds, len(folds_to_predict))
        if given is None:
            budget_info = {"seconds": budget.seconds, "planned_steps": budget.steps}
        for name, train, test in folds_to_predict:
            if given is None:
                examples = [PairExample(e.premise, e.hypothesis, e.label_id) for e in train]
                start = time.perf_counter()
                model, info = train_cached(
                    examples,
                    cache=args.cache,
                    name=f"mnli-mixencoder-{name}",
                    budget=budget,
                    seed=args.seed,
                    batch_size=args.batch_size,
                    backbone=args.backbone,
                    model_config=model_config,
                    task="nli",
                    learning_rate=args.lr,
                )
                timings[f"train_{name}_s"] = time.perf_counter() - start
                train_info[name] = info
                logger.info("trained %s: %s", name, info)
            else:
                model = given
            start = time.perf_counter()
            probs = model.predict([(by_id[q].premise, by_id[q].hypothesis) for q in test])
            predict_seconds += time.perf_counter() - start
            for q, row in zip(test, probs):
                predictions["mixencoder"][q] = LABELS[int(row.argmax())]
                probabilities[q] = [float(x) for x in row]
        extras["mixencoder"]["ms_per_query"] = 1000 * predict_seconds / max(len(by_id), 1)
        timings["predict_s"] = predict_seconds

    # Results is used for its outputs only (metrics/per_query/notes, table, paired differences).
    results = Results(args.out, qrels={}, measures=["accuracy"])
    for system in args.systems:
        correct = {q: float(predictions[system][q] == by_id[q].label) for q in by_id}
        results.per_query[system] = {"accuracy": correct}
        results.metrics[system] = {"accuracy": sum(correct.values()) / max(len(correct), 1), **extras[system]}
        write_predictions(args.out / "predictions" / f"{system}.tsv", by_id, fold_of, predictions[system],
                          probabilities if system == "mixencoder" else None)
    timings["wall_s"] = time.perf_counter() - wall
    results.notes.update(
        task="mnli",
        protocol=protocol,
        pairs=len(by_id),
        label_counts=dict(Counter(e.label for e in pairs)),
        model_config=model_config if args.model is None else str(args.model),
        budget_per_run=budget_info,
        training=train_info,
        timings={k: round(v, 1) for k, v in timings.items()},
        args={k: str(v) for k, v in vars(args).items()},
    )
    results.write([("mixencoder", "majority-class", "accuracy")])
    print(f"wall time {timings['wall_s'] / 60:.1f} min; outputs in {args.out}")
    return 0


def write_predictions(path: Path, by_id: dict[str, NLIExample], fold_of: dict[str, str],
                      predicted: dict[str, str], probabilities: dict[str, list[float]] | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
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
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
