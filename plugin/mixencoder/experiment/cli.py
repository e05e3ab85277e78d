"""``mixencoder eval TASK [flags]``: one experiment over one task, Pyserini-style thin: parse the
flags, build the task adapter, its folds and the systems, one :func:`run_experiment`, write.

``mixencoder eval --config eval/configs/NAME.json [flags]`` runs a committed experiment (its task
and flags; flags given after it win). Tasks: ``msmarco`` (a judged folder, DL20 by default), ``trec`` (a TREC collection, Vaswani by
default), ``ubuntu`` (Ubuntu V2 CSV), ``dstc7`` (DSTC7 track 1 JSON), ``mnli`` (classification).
Every task shares one set of flags for the data (``--data-dir``, ``--train-dir``, ``--folds K``,
``--model``), the training recipe (``--budget`` 600s / 10m / 500steps, split over the folds;
``--lr``, ``--batch-size``, ``--seed``, ...) and the fresh-model config (``--k``,
``--interaction-layers`` with negative numbers counting from the last layer,
``--query-max-length``, ``--candidate-max-length``); the defaults are the task's. Without
``--train-dir`` the trained systems are cross-validated over ``--folds K`` query folds of the
evaluation data; with it, trained once and evaluated on every query. ``--train-dir`` of an IR
task is MS MARCO triples or another judged folder (its judged positives with hard negatives
from its run). Outputs: see :mod:`mixencoder.experiment.results`, plus ``OUT/results.csv`` (the
table with paired differences against ``--baseline``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other jobs, spinning threads
# made training steps 3-5x slower. Set before the imports below load torch; an explicit
# OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cache import Budget  # noqa: E402
from .results import Results  # noqa: E402
from .systems import (  # noqa: E402
    ALL_SYSTEMS, DEFAULT_SYSTEMS, FROZEN_SYSTEMS, REGISTRY_NAMES, Recipe, add_model_args, model_config_from_args,
    system_spec,
)
from .tasks import in_folder  # noqa: E402

logger = logging.getLogger(__name__)

TASKS = ("msmarco", "trec", "ubuntu", "dstc7", "mnli")
#: Paired differences every ranking task reports (on its comparison measures).
RANKING_COMPARISONS = (
    ("mixencoder", "dual-zeroshot"), ("mixencoder", "bm25"), ("dual-zeroshot", "bm25"),
    ("mixencoder-zeroshot", "dual-zeroshot"), ("mixencoder+bm25", "dual-zeroshot"),
    ("mixencoder+bm25", "dual-zeroshot+bm25"), ("mixencoder+bm25", "bm25"), ("dual-zeroshot+bm25", "dual-zeroshot"),
)

#: Per task: data/out defaults and the flags' defaults.
DEFAULTS: dict[str, dict[str, Any]] = {
    "msmarco": dict(data_dir="../shared/data/msmarco/dl20", out="runs/msmarco", budget="12m", folds=5,
                    new_params_lr_scale=20.0, lr=2e-5, est_step_seconds=3.0, hard_negatives=1),
    "trec": dict(data_dir="../shared/data/vaswani", out="runs/vaswani", budget="10m", folds=5,
                 new_params_lr_scale=20.0, lr=2e-5, est_step_seconds=2.0, hard_negatives=1),
    "ubuntu": dict(data_dir="../shared/data/ubuntu/v2", out="runs/ubuntu", budget="10m", folds=0,
                   new_params_lr_scale=1.0, lr=5e-5, est_step_seconds=5.0, hard_negatives=0),
    "dstc7": dict(data_dir="../shared/data/ubuntu/dstc7", out="runs/dstc7", budget="10m", folds=0,
                  new_params_lr_scale=1.0, lr=5e-5, est_step_seconds=5.0, hard_negatives=0),
    "mnli": dict(data_dir="../shared/data/mnli", out="runs/mnli", budget="10m", folds=5,
                 new_params_lr_scale=1.0, lr=1e-4, est_step_seconds=1.5, hard_negatives=0),
}


def _common_args(p: argparse.ArgumentParser, task: str) -> None:
    d = DEFAULTS[task]
    p.add_argument("--data-dir", type=Path, default=Path(d["data_dir"]), help=f"evaluation data (default {d['data_dir']})")
    p.add_argument("--train-dir", type=Path, default=None, help="training data; without it, --folds cross-validation")
    p.add_argument("--folds", type=int, default=d["folds"], help="query-level K-fold CV when there is no --train-dir")
    p.add_argument("--model", type=Path, default=None, help="evaluate this saved model as 'mixencoder'; skip its training")
    p.add_argument("--backbone", default=None, help="backbone for fresh models (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--budget", default=d["budget"], help="training budget: e.g. 600s, 10m, 500steps (split over folds)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=16, help="training batch size (in-batch negatives)")
    p.add_argument("--lr", type=float, default=d["lr"], help=f"peak learning rate (default {d['lr']:g})")
    p.add_argument("--hard-negatives", type=int, default=d["hard_negatives"],
                   help=f"hard negatives per query per step (default {d['hard_negatives']})")
    p.add_argument("--distillation-weight", type=float, default=1.0,
                   help="weight of VIRT's distillation from the cross-encoder trained on the same data (default 1)")
    p.add_argument("--new-params-lr-scale", type=float, default=d["new_params_lr_scale"],
                   help="lr multiplier for parameters with no pre-trained counterpart (gates, special tokens, "
                   f"mixing weights, heads); default {d['new_params_lr_scale']:g}")
    p.add_argument("--est-step-seconds", type=float, default=d["est_step_seconds"],
                   help="seconds per training step assumed to plan the schedule of a time budget "
                   f"(default {d['est_step_seconds']:g}, measured on 2 CPU cores)")
    p.add_argument("--out", type=Path, default=Path(d["out"]), help=f"output directory (default {d['out']})")
    p.add_argument("--cache", type=Path, default=Path("work/cache"), help="cached stores/checkpoints")
    p.add_argument("--baseline", default=None, help="results.csv's paired differences are against this system "
                   "(default dual-zeroshot, or majority-class for mnli)")


def _ranking_args(p: argparse.ArgumentParser, systems: Sequence[str], fusion_measure: str) -> None:
    p.add_argument("--systems", nargs="+", choices=systems, default=list(DEFAULT_SYSTEMS), metavar="SYSTEM",
                   help=f"default: {' '.join(DEFAULT_SYSTEMS)}; also trainable: {' '.join(REGISTRY_NAMES)} (trained "
                   "exactly like mixencoder)" + (f"; with --folds, {' '.join(FROZEN_SYSTEMS)}" if
                                                 FROZEN_SYSTEMS[0] in systems else ""))
    p.add_argument("--fusion-measure", default=fusion_measure,
                   help=f"measure the fused rows' alpha is fitted on, over the other folds (default {fusion_measure})")
    p.add_argument("--no-fusion", action="store_true", help="leave out the SYSTEM+bm25 and SYSTEM+rrf rows")


def _ir_args(p: argparse.ArgumentParser, *, depth: int, negatives: str, min_grade: int | None) -> None:
    from .ir import NEGATIVE_KINDS

    add_model_args(p)
    _ranking_args(p, ALL_SYSTEMS, "nDCG@10")
    p.add_argument("--depth", type=int, default=depth, help=f"candidates per query (default {depth})")
    p.add_argument("--limit-queries", type=int, default=None, help="evaluate only the first N queries")
    p.add_argument("--negatives", choices=NEGATIVE_KINDS, default=negatives,
                   help=f"hard negatives of judged training queries (default {negatives})")
    p.add_argument("--max-negatives", type=int, default=30, help="hard-negative pool per query (default 30)")
    p.add_argument("--min-grade", type=int, default=min_grade, help="smallest judged grade that is a training "
                   f"positive (default {min_grade or '2 on graded qrels, 1 on binary ones'})")
    p.add_argument("--k1", type=float, default=None, help="BM25 k1 (when an index is built)")
    p.add_argument("--b", type=float, default=None, help="BM25 b (when an index is built)")


def _dialogue_args(p: argparse.ArgumentParser, *, eval_file: str, train_file: str, salt: str) -> None:
    add_model_args(p, layers=(-1,), query_max_length=256, candidate_max_length=64)
    _ranking_args(p, (*DEFAULT_SYSTEMS, *REGISTRY_NAMES), "RR")
    p.add_argument("--eval-file", default=eval_file, help=f"file in --data-dir (default {eval_file})")
    p.add_argument("--train-file", default=train_file, help=f"file in --train-dir (default {train_file})")
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training records")
    p.add_argument("--limit-eval", type=int, default=None, help="evaluate only the first N examples")
    p.add_argument("--docid-salt", default=salt, help="salt of the candidate docids")
    p.add_argument("--detach-interaction", action="store_true",
                   help="train MixEncoders with interaction_trains_backbone=False (the backbone learns from the "
                   "pooled vectors only; the interaction learns on top)")
    p.add_argument("--ablate-interaction", action="store_true",
                   help="also evaluate each trained model with its interaction switched off, as SYSTEM-pooled")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixencoder eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="task", required=True, metavar="TASK")
    msmarco = sub.add_parser("msmarco", help="a judged folder (queries, qrels, passages, a first-stage run)")
    _common_args(msmarco, "msmarco")
    _ir_args(msmarco, depth=1000, negatives="judged", min_grade=None)
    msmarco.add_argument("--queries", default=None, help="queries file in --data-dir (default: queries*.tsv)")
    msmarco.add_argument("--qrels", default=None, help="qrels file in --data-dir (default: qrels*)")
    msmarco.add_argument("--run", default=None, help="first-stage run in --data-dir ('none': build a BM25 index)")
    msmarco.add_argument("--collection", default="collection.tsv", help="passages file in --data-dir")
    msmarco.add_argument("--train-limit", type=int, default=100_000, help="triples read from a --train-dir of triples")
    trec = sub.add_parser("trec", help="a TREC collection (corpus, topics, qrels), BM25 first stage")
    _common_args(trec, "trec")
    _ir_args(trec, depth=100, negatives="unjudged", min_grade=1)
    trec.add_argument("--corpus", default="doc-text.trec", help="corpus file/folder in --data-dir")
    trec.add_argument("--topics", default="query-text.trec", help="topics file in --data-dir")
    trec.add_argument("--topic-field", default="title", choices=("title", "desc", "narr"))
    trec.add_argument("--qrels", default="qrels", help="qrels file in --data-dir")
    ubuntu = sub.add_parser("ubuntu", help="Ubuntu V2 response selection (valid.csv, train.csv)")
    _common_args(ubuntu, "ubuntu")
    _dialogue_args(ubuntu, eval_file="valid.csv", train_file="train.csv", salt="ubuntu-irc-eval")
    dstc7 = sub.add_parser("dstc7", help="DSTC7 track 1 response selection (JSON)")
    _common_args(dstc7, "dstc7")
    _dialogue_args(dstc7, eval_file="ubuntu_dev_subtask_1.json", train_file="ubuntu_train_subtask_1.json",
                   salt="dstc7-irc-eval")
    mnli = sub.add_parser("mnli", help="MNLI pair classification with MixEncoder's classifier head")
    _common_args(mnli, "mnli")
    add_model_args(mnli, layers=(-1,), query_max_length=128, candidate_max_length=64)
    mnli.add_argument("--systems", nargs="+", choices=("majority-class", "mixencoder"),
                      default=["majority-class", "mixencoder"])
    mnli.add_argument("--data-file", default="dev_matched_sample.jsonl", help="file in --data-dir")
    mnli.add_argument("--train-file", default="multinli_1.0_train.jsonl", help="file in --train-dir")
    mnli.add_argument("--limit-train", type=int, default=None, help="use only the first N training pairs")
    mnli.add_argument("--limit-eval", type=int, default=None, help="evaluate only the first N pairs")
    return p


def recipe_of(args: argparse.Namespace) -> Recipe:
    return Recipe(budget=args.budget, est_step_seconds=args.est_step_seconds, batch_size=args.batch_size,
                  learning_rate=args.lr, new_parameters_lr_scale=args.new_params_lr_scale,
                  hard_negatives=args.hard_negatives, distillation_weight=args.distillation_weight, seed=args.seed,
                  backbone=args.backbone)


def _ir(args: argparse.Namespace, p: argparse.ArgumentParser) -> Results:
    from . import ir
    from .runner import run_experiment
    from .tasks import Fold

    if args.task == "msmarco":
        task = ir.load_judged_folder(
            args.data_dir, depth=args.depth, limit_queries=args.limit_queries, queries_file=args.queries,
            qrels_file=args.qrels, run_file=args.run, collection_file=args.collection, min_grade=args.min_grade,
            cache=args.cache, k1=0.82 if args.k1 is None else args.k1, b=0.68 if args.b is None else args.b)
        compare_on = list(dict.fromkeys(["nDCG@10", task.measures[0]]))
    else:
        if args.train_dir is not None:
            p.error("trec has no --train-dir path: there is no standard training set; train elsewhere, pass --model")
        task = ir.load_trec_collection(
            args.data_dir, depth=args.depth, limit_queries=args.limit_queries, corpus=args.corpus,
            topics=args.topics, topic_field=args.topic_field, qrels_file=args.qrels, min_grade=args.min_grade,
            cache=args.cache, k1=0.9 if args.k1 is None else args.k1, b=0.4 if args.b is None else args.b)
        compare_on = ["nDCG@10", "AP"]
    if args.train_dir is not None:
        if ir.has_triples(args.train_dir):
            limit = args.train_limit
            steps = Budget.parse(args.budget).steps
            if steps is not None:
                limit = min(limit, steps * args.batch_size)
            load: Callable[[], Any] = lambda: ir.msmarco_triples(args.train_dir, args.data_dir, limit)  # noqa: E731
        elif ir.is_judged_folder(args.train_dir):
            load = lambda: ir.judged_training(  # noqa: E731
                args.train_dir, depth=args.depth, negatives=args.negatives, max_negatives=args.max_negatives,
                cache=args.cache, min_grade=args.min_grade)
        else:
            p.error(f"--train-dir {args.train_dir}: neither MS MARCO triples (triples.train.small.tsv, "
                    "qidpidtriples.train.full.tsv) nor a judged folder (queries*.tsv and qrels*)")
        folds = [Fold("train-dir", list(task.queries), load, args.hard_negatives)]
    elif args.folds >= 2:
        folds = ir.judged_folds(task, args.folds, args.seed, negatives=args.negatives,
                                max_negatives=args.max_negatives, hard_negatives=args.hard_negatives)
    else:
        folds = []
    model_config = model_config_from_args(args)
    return run_experiment(
        task, [system_spec(s, model_config, args.model if s == "mixencoder" else None) for s in args.systems],
        folds=folds, recipe=recipe_of(args), cache=args.cache, out=args.out, model_config=model_config,
        fusion_measure=None if args.no_fusion else args.fusion_measure, comparisons=RANKING_COMPARISONS,
        compare_on=compare_on,
        frozen_examples=lambda qids: ir.judged_examples(task, qids, negatives=args.negatives,
                                                        max_negatives=args.max_negatives, as_docids=True),
        notes={"backbone": args.backbone or "bundled all-MiniLM-L6-v2", "args": _args_note(args)},
    )


def _dialogue(args: argparse.Namespace, p: argparse.ArgumentParser) -> Results:
    from . import dialogue
    from .runner import run_experiment

    if args.folds >= 2 and args.train_dir is not None:
        p.error("give either --train-dir or --folds K, not both")
    train_path = in_folder(args.train_dir or args.data_dir, args.train_file)
    if args.task == "ubuntu":
        if args.hard_negatives and args.folds < 2:
            p.error("--hard-negatives: train.csv pairs carry no negatives (label-0 rows are dropped); "
                    "training uses in-batch negatives")
        examples = dialogue.ubuntu_eval_examples(in_folder(args.data_dir, args.eval_file), args.limit_eval)
        load = lambda: dialogue.ubuntu_training(train_path, args.limit_train)  # noqa: E731
        measures = dialogue.UBUNTU_MEASURES
    else:
        examples = dialogue.dstc7_examples(in_folder(args.data_dir, args.eval_file), args.limit_eval)
        load = lambda: dialogue.dstc7_training(train_path, args.limit_train, args.hard_negatives)  # noqa: E731
        measures = dialogue.DSTC7_MEASURES
    task = dialogue.response_selection_task(args.task, examples, measures=measures, docid_salt=args.docid_salt)
    if args.folds >= 2:
        folds = dialogue.response_folds(examples, args.folds, args.seed, args.hard_negatives)
        protocol = f"{args.folds}-fold query-level CV on the evaluation examples"
    else:
        folds = [dialogue.train_file_fold(task, load, args.hard_negatives)]
        protocol = "train on the training file, evaluate every example"
    model_config = model_config_from_args(args, pooled_residual=True,
                                          interaction_trains_backbone=not args.detach_interaction)
    return run_experiment(
        task, [system_spec(s, model_config, args.model if s == "mixencoder" else None) for s in args.systems],
        folds=folds, recipe=recipe_of(args), cache=args.cache, out=args.out, model_config=model_config,
        fusion_measure=None if args.no_fusion else args.fusion_measure, comparisons=RANKING_COMPARISONS,
        compare_on=["R@1", "RR"], ablate_interaction=args.ablate_interaction,
        notes={"task": args.task, "protocol": protocol, "args": _args_note(args)},
    )


def _mnli(args: argparse.Namespace, p: argparse.ArgumentParser) -> Results:
    from . import nli

    pairs = nli.read_pairs(in_folder(args.data_dir, args.data_file), args.limit_eval)
    if args.train_dir is not None:
        train = nli.read_pairs(in_folder(args.train_dir, args.train_file), args.limit_train)
        folds = [("all", train, [e.pair_id for e in pairs])]
        protocol = f"train on {args.train_dir}, evaluate every pair"
    elif args.folds >= 2:
        folds = nli.nli_folds(pairs, args.folds, args.seed)
        protocol = f"{args.folds}-fold pair-level CV"
    else:
        p.error("give --train-dir or --folds K (K >= 2)")
    model_config = model_config_from_args(args, pooled_residual=True, interaction_trains_backbone=True,
                                          num_labels=len(nli.LABELS))
    try:
        return nli.run_nli(pairs, folds, args.systems, recipe_of(args), model_config=model_config,
                           cache=args.cache, out=args.out, given=args.model,
                           notes={"protocol": protocol, "args": _args_note(args)})
    except ValueError as e:
        p.error(str(e))


def _args_note(args: argparse.Namespace) -> dict[str, str]:
    return {k: str(v) for k, v in vars(args).items()}


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> Results:
    """The experiment ``args`` (parsed by :func:`build_parser`) describe, with its outputs written."""
    parser = parser or build_parser()
    if args.task in ("msmarco", "trec"):
        results = _ir(args, parser)
    elif args.task in ("ubuntu", "dstc7"):
        results = _dialogue(args, parser)
    else:
        results = _mnli(args, parser)
    baseline = args.baseline or ("majority-class" if args.task == "mnli" else "dual-zeroshot")
    if baseline in results.metrics:
        from ..data.corpus import atomic_write

        with atomic_write(args.out / "results.csv") as f:
            results.frame(baseline=baseline).to_csv(f)
    return results


def config_argv(path: Path) -> list[str]:
    """A committed experiment config as flags: ``{"task": TASK, "flags": {name: value}}``; a name
    is a flag without its dashes (``"budget"``, ``"interaction_layers"``), a list gives several
    values, ``true`` a bare switch (``false`` leaves it out)."""
    import json

    try:
        config = json.loads(Path(path).read_text())
        task, flags = config["task"], config.get("flags", {})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--config {path}: expected a JSON object with \"task\" and \"flags\" ({e})") from e
    argv = [task]
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False and value is not None:
            argv += [flag, *(map(str, value) if isinstance(value, list) else [str(value)])]
    return argv


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """Parse ``TASK [flags]``, or ``--config FILE [flags]`` (the file's flags, then these, which win)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--config"]:
        if len(argv) < 2:
            parser.error("--config needs a file")
        try:
            argv = [*config_argv(Path(argv[1])), *argv[2:]]
        except ValueError as e:
            parser.error(str(e))
    return parser.parse_args(argv), parser


def main(argv: Sequence[str] | None = None) -> int:
    args, parser = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    start = time.perf_counter()
    try:
        run(args, parser)
    except ValueError as e:  # bad data or flags, said plainly
        parser.exit(2, f"mixencoder eval {args.task}: error: {e}\n")
    print(f"total wall time {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
