"""MS MARCO passage reranking (TREC DL 2020 by default): BM25, dual encoder, MixEncoder.

Usage (from the project root)::

    python eval/run_msmarco.py                                 # DL20, 5-fold CV, every default
    python eval/run_msmarco.py --out runs/dl20-both --negatives both --lr 3e-5
    python eval/run_msmarco.py --train-dir ~/msmarco           # train on MS MARCO triples
    python eval/run_msmarco.py --model work/my-mixencoder      # evaluate a saved MixEncoder
    python eval/run_msmarco.py --limit-queries 6 --depth 20 --folds 2 --budget 3steps \\
        --out runs/dl20-quick                                  # a quick look

Data (``--data-dir``, default ``../shared/data/msmarco/dl20``), MS MARCO formats:

* ``collection.tsv`` (``pid<TAB>passage``): the candidates' texts;
* queries ``queries*.tsv`` and qrels ``qrels*`` (training files, ``*train*``, are not picked);
  ``--queries`` / ``--qrels`` name them when the folder holds several;
* optionally a first-stage run: a TREC run (``*.trec``/``*.run``, or MS MARCO
  ``qid<TAB>pid<TAB>rank``) or a ``top1000``-style tsv (``qid pid query passage``); ``--run``
  names it, ``--run none`` ignores it. A given run **is** the first stage ("bm25" in the
  table): its folder's collection holds only those candidates, so an index over it would have
  the wrong term statistics. Only without a run is a Pyserini BM25 index (k1=0.82, b=0.68, the
  tuned MS MARCO passage values; ``--k1``/``--b``) built over ``collection.tsv`` (cached under
  ``--cache``) and its top ``--depth`` retrieved.

Evaluated queries: those with judgments, query text and a first-stage ranking (DL20: 54).
``--limit-queries N`` keeps the first N of them (in qrels order). Candidates: each query's top
``--depth`` (default 1000; the DL20 run holds 100) first-stage passages.

Systems (``--systems``, default all):

* ``bm25``: the first stage itself.
* ``dual-zeroshot``: :class:`mixencoder.DualEncoder` over the backbone (bundled
  all-MiniLM-L6-v2): mean-pooled cosine, no training.
* ``mixencoder-zeroshot``: a fresh MixEncoder (``pooled_residual=True``): its mixing weights
  start at 0, so it scores exactly like ``dual-zeroshot`` (a check of the pipeline, reported
  on purpose). The two share one encoding pass of the candidates.
* ``mixencoder``: the trained MixEncoder, or ``--model``. Without ``--train-dir``: query-level
  ``--folds K`` cross-validation (default 5; :func:`mixencoder.data.kfold_split`, seeded by
  ``--seed``): for each fold a fresh MixEncoder is trained on the other folds' judged pairs and
  reranks the held-out queries; the run is the union over folds, so every query is scored by a
  model that never saw it. With ``--train-dir``: one model trained on MS MARCO triples
  (``triples.train.small.tsv``, or ``qidpidtriples.train.full.tsv`` with ``queries.train.tsv``
  and ``collection.tsv`` from ``--train-dir`` or ``--data-dir``; the first ``--train-limit``
  triples, each negative a hard negative), evaluated on every query.

* ``SYSTEM+bm25`` / ``SYSTEM+rrf`` beside every system when ``bm25`` runs (``--no-fusion``
  leaves them out): the system's scores fused with the first stage's (:mod:`mixencoder.fusion`):
  per-query min-max interpolation with alpha cross-fitted on ``--fusion-measure`` (default
  nDCG@10) over the CV folds (each fold's queries get the alpha best on the other folds;
  without CV, over 5 query folds), and RRF with k=60.
* ``dual-frozen``, ``mixencoder-frozen``, ``mixencoder-frozen-fusionloss`` (on request, with
  ``--folds``): the query side trained on the zero-shot store, which stays valid
  (:func:`mixencoder.training.frozen_store.train_on_store`): a dual encoder's query side alone,
  the MixEncoder's query side and interaction, and the latter with the normalised BM25 score
  added to its training scores. ``train_s_per_step`` reports their step cost.

CV training pairs: a positive is a passage judged grade >= 2 (``--min-grade``; 1 on binary
qrels) whose text is in
the collection (DL20: 613 pairs over 52 queries; 1,053 judged-relevant passages have no text
here). Hard negatives (``--negatives``) come from the first-stage ranking of the training
queries, best-ranked first, at most ``--max-negatives`` per query: ``judged`` (judged grade 0),
``unjudged`` (never judged), ``both`` (either), or ``none`` (in-batch negatives only); passages
judged grade 1 are never negatives. ``--hard-negatives h`` of them join each query's row per
step. A query without a negative of the chosen kind falls back to ``both``.

Measures (ir-measures, keys are ``str(measure)``): ``RR(rel=2)@10`` (MRR@10 with grades >= 2
relevant, the TREC DL convention), ``nDCG@10`` (graded), ``R(rel=2)@1`` and
``R(rel=2)@1000`` (recall at 1000 of the candidate set: the first stage's, so the same for
every reranker). On binary qrels (every grade <= 1, e.g. MS MARCO dev) the same measures are
taken at rel=1: ``RR@10``, ``nDCG@10``, ``R@1``, ``R@1000``. Also ``ms_per_query`` (online reranking time per query through the product's
Reranker: query encoding, store gather, scoring) and ``store_bytes`` (the candidate store on
disk without its FAISS search index; the sum over folds for the CV model, whose folds rerank
disjoint query sets with different models). The paired per-query differences of ``mixencoder``
against ``dual-zeroshot`` and ``bm25`` (nDCG@10, RR(rel=2)@10) are printed with their standard
errors: with 54 queries, a gap under about two standard errors is noise.

Training budget (``--budget``, default ``12m``, split evenly over the folds): a time budget is a
wall-clock cap per run *and* plans the learning-rate schedule (10% warm-up, linear decay) over
``budget / --est-step-seconds`` steps, so the schedule decays within the budget (a pure time
budget would plan it over 1000 epochs and never leave warm-up). On a loaded machine the cap
stops a run before its planned steps (the run's ``stopped`` note says so). ``--budget 500steps``
trains exactly that many steps in total, for reproducible runs. Trained models and stores are
cached under ``--cache`` and reused while inputs and settings are unchanged. The learning rate
of the parameters with no pre-trained counterpart (gates, special tokens, scalar mixing weights) is
``--lr`` x ``--new-params-lr-scale`` (default 20 here: with 1 they barely move in a few dozen
steps; measured on DL20, 5-fold: nDCG@10 -0.0009 against the dual encoder at 1, +0.0038 at 20,
both within one standard error; measured with the scalar mixing weights of session 2).

Outputs: ``OUT/metrics.json``, ``OUT/per_query.json``, ``OUT/notes.json`` (settings, data
counts, per-fold training info, timings, paired differences) and ``OUT/runs/<system>.trec``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import (  # noqa: E402
    BASELINE_SYSTEMS, Budget, Results, fingerprint, plan_budget, rerank_queries, setup_logging, store_cached,
    system_config, train_on_store_cached, train_system,
)

from mixencoder import CandidateReps, DualEncoder, MixEncoder  # noqa: E402
from mixencoder.data import (  # noqa: E402
    hard_negatives_from_run,
    kfold_split,
    qrels_training_pairs,
    read_corpus,
    read_qrels,
    read_run,
    read_top1000,
    read_topics,
    sorted_hits,
)
from mixencoder.training import MatchingExample  # noqa: E402

logger = logging.getLogger("eval.ir")

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]

SYSTEMS = ("bm25", "dual-zeroshot", "mixencoder-zeroshot", "mixencoder")
#: Trained on the zero-shot store, frozen: only the query side learns (``train_on_store``);
#: ``-fusionloss`` adds the normalised BM25 score to the training scores with a learned weight.
FROZEN_SYSTEMS = ("dual-frozen", "mixencoder-frozen", "mixencoder-frozen-fusionloss")
NEGATIVE_KINDS = ("judged", "unjudged", "both", "none")
MSMARCO_MEASURES = ["RR(rel=2)@10", "nDCG@10", "R(rel=2)@1", "R(rel=2)@1000"]
#: The same for binary qrels (MS MARCO dev: every judgment is grade 1).
MSMARCO_BINARY_MEASURES = ["RR@10", "nDCG@10", "R@1", "R@1000"]


# ---------------------------------------------------------------------- the task


@dataclass
class IRTask:
    """One reranking evaluation: what every system sees.

    Attributes:
        name: cache namespace (e.g. ``dl20``).
        queries: qid -> text of the evaluated queries.
        qrels: judgments of the evaluated queries only.
        run: the first stage's ranking of the evaluated queries, truncated to the depth.
        texts: docid -> text of every candidate and every judged passage with a text.
        measures: ir-measures strings.
        min_grade: smallest grade that makes a training positive.
        notes: data counts and settings worth reporting.
    """

    name: str
    queries: dict[str, str]
    qrels: Qrels
    run: Run
    texts: dict[str, str]
    measures: list[str]
    min_grade: int = 1
    notes: dict[str, Any] = field(default_factory=dict)

    def candidates(self, qids: Sequence[str] | None = None) -> dict[str, list[str]]:
        """qid -> its candidate docids, best first-stage rank first."""
        qids = list(self.queries) if qids is None else qids
        return {q: [d for d, _ in sorted_hits(self.run.get(q, {}))] for q in qids}

    def docs(self, qids: Sequence[str] | None = None) -> dict[str, str]:
        """docid -> text of the candidates of ``qids``."""
        return {d: self.texts[d] for ds in self.candidates(qids).values() for d in ds}


def select_queries(
    queries: Mapping[str, str], qrels: Qrels, run: Run, limit: int | None
) -> list[str]:
    """Judged queries with a text and a first-stage ranking, in qrels order (first ``limit``)."""
    qids = [q for q, judged in qrels.items() if judged and q in queries and run.get(q)]
    dropped = [q for q, judged in qrels.items() if judged and q not in qids]
    if dropped:
        logger.warning("%d judged queries lack a text or a first-stage ranking: %s", len(dropped), dropped[:10])
    if not qids:
        raise SystemExit("no judged query has both a text and a first-stage ranking")
    return qids[:limit] if limit else qids


def truncate_run(run: Run, qids: Sequence[str], depth: int) -> Run:
    """The top ``depth`` hits of each of ``qids`` (first-stage scores kept)."""
    return {q: dict(sorted_hits(run.get(q, {}))[:depth]) for q in qids}


# ---------------------------------------------------------------------- training data


def fold_examples(
    task: IRTask,
    train_qids: Sequence[str],
    *,
    negatives: str,
    max_negatives: int,
    as_docids: bool = False,
) -> tuple[list[MatchingExample], dict[str, Any]]:
    """MatchingExamples of the training queries: judged positives with hard negatives.

    ``as_docids``: positives and negatives as docids (for training on a frozen store), not texts.
    Returns the examples and counts for the notes.
    """
    pairs = qrels_training_pairs(task.qrels, task.queries, task.texts, task.min_grade, qids=train_qids)
    pool: dict[str, list[str]] = {}
    fallback = 0
    if negatives != "none":
        # Never a negative: anything judged >= 1 (on graded qrels, grade 1 "related" is neither
        # a clean positive nor a clean negative).
        ranked = hard_negatives_from_run(task.run, task.qrels, min_grade=1, qids=train_qids)
        for qid, docids in ranked.items():
            judged = task.qrels.get(qid, {})
            docids = [d for d in docids if d in task.texts]
            if negatives == "judged":
                chosen = [d for d in docids if d in judged]
            elif negatives == "unjudged":
                chosen = [d for d in docids if d not in judged]
            else:
                chosen = docids
            if not chosen and docids:
                fallback += 1
                chosen = docids
            pool[qid] = chosen[:max_negatives]
    examples = []
    no_negative = 0
    for p in pairs:
        negs = tuple(d if as_docids else task.texts[d] for d in pool.get(p.qid, ()))
        if negatives != "none" and not negs:
            no_negative += 1
            continue
        positive = p.docid if as_docids else p.text
        examples.append(MatchingExample(p.query, positive, negs, query_id=p.qid, positive_id=p.docid))
    counts = {
        "train_queries": len(set(train_qids)),
        "positive_pairs": len(pairs),
        "examples": len(examples),
        "queries_with_positives": len({p.qid for p in pairs}),
        "mean_negatives_per_query": round(sum(len(v) for v in pool.values()) / max(len(pool), 1), 1),
        "queries_falling_back_to_both": fallback,
        "pairs_dropped_without_negatives": no_negative,
    }
    return examples, counts


# ---------------------------------------------------------------------- shared encoding


class MemoEncoder:
    """A MixEncoder whose ``encode_candidates`` remembers its outputs by text.

    The zero-shot MixEncoder and the DualEncoder over the same backbone store the same backbone
    pass (the dual keeps only the pooled vectors), so building both stores through one
    MemoEncoder encodes each candidate once. Everything else is the wrapped model's.
    """

    def __init__(self, model: MixEncoder) -> None:
        self.model = model
        self._memo: dict[str, tuple[Any, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def encode_candidates(
        self, texts: Sequence[str], *, batch_size: int = 32, show_progress_bar: bool | None = None
    ) -> CandidateReps:
        import torch

        texts = list(texts)
        todo = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if todo:
            reps = self.model.encode_candidates(todo, batch_size=batch_size, show_progress_bar=show_progress_bar)
            for i, text in enumerate(todo):
                self._memo[text] = (reps.vectors[i], reps.pooled[i])
        k = self.model.config.k
        d = self.model.hidden_size
        if not texts:
            return CandidateReps(torch.zeros(0, k, d), torch.zeros(0, dtype=torch.int64), torch.zeros(0, d))
        vectors = torch.stack([self._memo[t][0] for t in texts])
        pooled = torch.stack([self._memo[t][1] for t in texts])
        return CandidateReps(vectors, torch.full((len(texts),), k, dtype=torch.int64), pooled)


def store_size(store: Any) -> int:
    """Bytes on disk of what reranking reads (the FAISS search index left out)."""
    return int(round(store.bytes_per_candidate(include_search_index=False) * len(store)))


# ---------------------------------------------------------------------- the evaluation


def add_ir_args(p: argparse.ArgumentParser, *, depth: int, negatives: str, lr: float, hard_negatives: int,
                est_step_seconds: float, min_grade: int | None) -> None:
    """The options shared by the IR scripts (beyond eval/common.py's)."""
    p.add_argument("--depth", type=int, default=depth, help=f"candidates per query (default {depth})")
    p.add_argument("--limit-queries", type=int, default=None, help="evaluate only the first N queries")
    p.add_argument(
        "--systems", nargs="+", choices=SYSTEMS + BASELINE_SYSTEMS + FROZEN_SYSTEMS, default=list(SYSTEMS),
        metavar="SYSTEM",
        help=f"default: {' '.join(SYSTEMS)}; also trainable: {' '.join(BASELINE_SYSTEMS)} (the paper's "
        "baselines and MixEncoder variants, trained exactly like mixencoder); with --folds, "
        f"{' '.join(FROZEN_SYSTEMS)} (query side trained on the zero-shot store, which stays valid)",
    )
    p.add_argument("--negatives", choices=NEGATIVE_KINDS, default=negatives,
                   help=f"hard negatives for CV training (default {negatives})")
    p.add_argument("--max-negatives", type=int, default=30, help="hard-negative pool per query (default 30)")
    p.add_argument("--hard-negatives", type=int, default=hard_negatives,
                   help=f"hard negatives per query per step (default {hard_negatives}; 0 with --negatives none)")
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr:g})")
    p.add_argument("--min-grade", type=int, default=min_grade,
                   help="smallest judged grade that is a training positive "
                   f"(default {min_grade or '2 on graded qrels, 1 on binary ones'})")
    p.add_argument("--k", type=int, default=1, help="context embeddings per candidate (fresh models)")
    p.add_argument("--interaction-layers", type=int, nargs="+", default=None,
                   help="1-based interaction layers of fresh models (default: the last)")
    p.add_argument("--query-max-length", type=int, default=None,
                   help="query truncation in tokens of fresh models (default: the model's, 32)")
    p.add_argument("--candidate-max-length", type=int, default=None,
                   help="candidate truncation in tokens of fresh models (default: the model's, 180)")
    p.add_argument("--est-step-seconds", type=float, default=est_step_seconds,
                   help="seconds per training step assumed to plan the schedule of a time budget "
                   f"(default {est_step_seconds:g}, measured on 2 CPU cores)")
    p.add_argument("--fusion-measure", default="nDCG@10",
                   help="measure the fused systems' alpha is fitted on, over the other folds' queries "
                   "(default nDCG@10)")
    p.add_argument("--no-fusion", action="store_true",
                   help="leave out the SYSTEM+bm25 (interpolation) and SYSTEM+rrf rows")
    p.add_argument("--k1", type=float, default=None, help="BM25 k1 (when an index is built)")
    p.add_argument("--b", type=float, default=None, help="BM25 b (when an index is built)")


def model_config_of(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {"k": args.k}
    if args.interaction_layers:
        config["interaction_layers"] = sorted(args.interaction_layers)
    for name in ("query_max_length", "candidate_max_length"):
        if getattr(args, name) is not None:
            config[name] = getattr(args, name)
    return config


def evaluate(
    args: argparse.Namespace,
    task: IRTask,
    *,
    train_examples: Callable[[], list[MatchingExample]] | None = None,
    first_stage_extra: Mapping[str, float] | None = None,
    comparisons_on: Sequence[str] = ("nDCG@10",),
) -> dict[str, dict[str, float]]:
    """Runs the systems of ``args.systems`` on ``task`` and writes the outputs.

    Args:
        args: parsed options (eval/common.py's contract plus :func:`add_ir_args`').
        task: the evaluation.
        train_examples: loads the ``--train-dir`` training examples (None: CV on the task).
        first_stage_extra: extra columns of the ``bm25`` row (e.g. its ``ms_per_query``).
        comparisons_on: measures of the printed paired differences.
    """
    wall = time.perf_counter()
    timings: dict[str, float] = {}
    qids = list(task.queries)
    results = Results(args.out, task.qrels, task.measures)
    model_config = model_config_of(args)
    results.notes.update(
        {
            "data": task.notes,
            "queries": len(qids),
            "candidates": sum(len(v) for v in task.run.values()),
            "distinct_candidates": len(task.docs()),
            "model_config": model_config,
            "backbone": args.backbone or "bundled all-MiniLM-L6-v2",
            "args": {k: str(v) for k, v in vars(args).items()},
        }
    )

    if "bm25" in args.systems:
        results.add("bm25", task.run, **dict(first_stage_extra or {}))

    zeroshot = [s for s in ("dual-zeroshot", "mixencoder-zeroshot") if s in args.systems]
    if zeroshot:
        start = time.perf_counter()
        fresh = MixEncoder.from_pretrained(args.backbone, **model_config)
        memo = MemoEncoder(fresh)
        docs = task.docs()
        for system in zeroshot:
            scorer = DualEncoder(fresh) if system == "dual-zeroshot" else fresh
            builder = DualEncoder(memo) if system == "dual-zeroshot" else memo  # type: ignore[arg-type]
            store = store_cached(builder, docs, cache=args.cache, name=f"{task.name}-{system}")
            run, ms = rerank_queries(scorer, store, task.queries, task.candidates())
            results.add(system, run, ms_per_query=ms, store_bytes=store_size(store))
        del memo, fresh
        timings["zeroshot_s"] = time.perf_counter() - start

    trained = [s for s in args.systems if s == "mixencoder" or s in BASELINE_SYSTEMS]
    all_training: dict[str, Any] = {}
    for system in trained:
        parts: list[Run] = []
        ms_weighted = 0.0
        bytes_total = 0
        train_info: dict[str, Any] = {}

        config = system_config(system, model_config)

        def rerank_with(model: Any, fold_qids: list[str], store_name: str) -> None:
            nonlocal ms_weighted, bytes_total
            store = store_cached(model, task.docs(fold_qids), cache=args.cache, name=store_name)
            run, ms = rerank_queries(model, store, {q: task.queries[q] for q in fold_qids}, task.candidates(fold_qids))
            parts.append(run)
            ms_weighted += ms * len(fold_qids)
            bytes_total += store_size(store)

        if system == "mixencoder" and args.model is not None:
            model = MixEncoder.from_pretrained(args.model)
            results.notes["mixencoder_model"] = str(args.model)
            results.notes["model_config"] = {k: v for k, v in model.config.to_dict().items() if k != "backbone_config"}
            rerank_with(model, qids, f"{task.name}-mixencoder-given")
        elif train_examples is not None:
            examples = train_examples()
            budget = plan_budget(args.budget, args.est_step_seconds, 1)
            results.notes["budget_per_run"] = {"seconds": budget.seconds, "planned_steps": budget.steps}
            start = time.perf_counter()
            model, info = train_system(
                system, examples, name_of=lambda s: f"{task.name}-{s}-train-dir", hard_negatives=args.hard_negatives,
                seed=args.seed, cache=args.cache, budget=budget, batch_size=args.batch_size, backbone=args.backbone,
                model_config=config, learning_rate=args.lr, new_parameters_lr_scale=args.new_params_lr_scale,
                distillation_weight=args.distillation_weight,
            )
            timings[f"train_{system}_s"] = time.perf_counter() - start
            train_info["train-dir"] = info
            _warn_if_capped(info, budget, f"the --train-dir {system}")
            rerank_with(model, qids, f"{task.name}-{system}-train-dir")
        elif args.folds >= 2:
            folds = kfold_split(qids, args.folds, args.seed)
            budget = plan_budget(args.budget, args.est_step_seconds, len(folds))
            results.notes["budget_per_run"] = {"seconds": budget.seconds, "planned_steps": budget.steps}
            results.notes["folds"] = [test for _, test in folds]
            for i, (train_qids, test_qids) in enumerate(folds):
                examples, counts = fold_examples(
                    task, train_qids, negatives=args.negatives, max_negatives=args.max_negatives
                )
                h = args.hard_negatives if args.negatives != "none" else 0
                start = time.perf_counter()
                model, info = train_system(
                    system, examples, name_of=lambda s, i=i: f"{task.name}-{s}-fold{i}of{len(folds)}",
                    hard_negatives=h, seed=args.seed, cache=args.cache, budget=budget, batch_size=args.batch_size,
                    backbone=args.backbone, model_config=config, learning_rate=args.lr,
                    new_parameters_lr_scale=args.new_params_lr_scale, distillation_weight=args.distillation_weight,
                )
                timings[f"train_{system}_fold{i}_s"] = time.perf_counter() - start
                train_info[f"fold{i}"] = {**counts, **info}
                _warn_if_capped(info, budget, f"{system} fold {i}")
                logger.info("%s fold %d/%d trained: %s", system, i + 1, len(folds), train_info[f"fold{i}"])
                start = time.perf_counter()
                rerank_with(model, test_qids, f"{task.name}-{system}-fold{i}of{len(folds)}")
                timings[f"rerank_{system}_fold{i}_s"] = time.perf_counter() - start
                del model
        else:
            logger.warning("no --model, no --train-dir and --folds < 2: skipping the trained %s", system)
        if parts:
            run = {q: hits for part in parts for q, hits in part.items()}
            steps = sum(i.get("steps") or 0 for i in train_info.values())
            per_step = {"train_s_per_step": sum(i.get("seconds") or 0 for i in train_info.values()) / steps} if steps else {}
            results.add(system, run, ms_per_query=ms_weighted / max(len(run), 1), store_bytes=bytes_total, **per_step)
            all_training[system] = train_info
    frozen = [s for s in args.systems if s in FROZEN_SYSTEMS]
    if frozen:
        all_training.update(train_frozen_systems(args, task, frozen, model_config, results, timings))
    if all_training:
        # one system: {fold: info} as before; several: {system: {fold: info}}
        results.notes["training"] = next(iter(all_training.values())) if len(all_training) == 1 else all_training

    comparisons = []
    if "bm25" in results.runs and not args.no_fusion:
        # The CV folds when there are any (each fold's alpha from the other folds' held-out
        # runs), else 5 folds over the evaluated queries: never a query's own judgments.
        folds = results.notes.get("folds") or [t for _, t in kfold_split(qids, min(5, len(qids)), args.seed)]
        comparisons += results.add_fused("bm25", folds, args.fusion_measure)
    for measure in comparisons_on:
        for a, b in (("mixencoder", "dual-zeroshot"), ("mixencoder", "bm25"), ("dual-zeroshot", "bm25"),
                     ("mixencoder-zeroshot", "dual-zeroshot"), ("mixencoder+bm25", "dual-zeroshot"),
                     ("mixencoder+bm25", "dual-zeroshot+bm25"), ("mixencoder+bm25", "bm25"),
                     ("dual-zeroshot+bm25", "dual-zeroshot")):
            comparisons.append((a, b, measure))
    timings["wall_s"] = time.perf_counter() - wall
    results.notes["timings"] = {k: round(v, 1) for k, v in timings.items()}
    results.write(comparisons)
    print(f"evaluation wall time {timings['wall_s'] / 60:.1f} min; outputs in {args.out}")
    return results.metrics


def train_frozen_systems(
    args: argparse.Namespace, task: IRTask, systems: Sequence[str], model_config: Mapping[str, Any],
    results: Results, timings: dict[str, float],
) -> dict[str, Any]:
    """CV over ``task`` of the frozen-store systems: in each fold, the fresh model's query side
    trains against the zero-shot store (built once over every candidate, as a user's existing
    store would be) and reranks the held-out queries from that same store."""
    if args.folds < 2:
        logger.warning("%s need --folds >= 2: skipped", " ".join(systems))
        return {}
    fresh = MixEncoder.from_pretrained(args.backbone, **model_config)
    docs = task.docs()
    store = store_cached(MemoEncoder(fresh), docs, cache=args.cache, name=f"{task.name}-mixencoder-zeroshot")
    dual_store = None
    folds = kfold_split(list(task.queries), args.folds, args.seed)
    budget = plan_budget(args.budget, args.est_step_seconds, len(folds))
    info: dict[str, Any] = {}
    h = args.hard_negatives if args.negatives != "none" else 0
    for system in systems:
        parts, ms_weighted, per_step = [], 0.0, []
        for i, (train_qids, test_qids) in enumerate(folds):
            examples, counts = fold_examples(
                task, train_qids, negatives=args.negatives, max_negatives=args.max_negatives, as_docids=True
            )
            in_store = set(docs)
            examples = [e for e in examples if e.positive in in_store and all(n in in_store for n in e.negatives)]
            first = {q: task.run[q] for q in train_qids} if system.endswith("-fusionloss") else None
            start = time.perf_counter()
            model, fold_info = train_on_store_cached(
                fresh, store, examples, cache=args.cache, name=f"{task.name}-{system}-fold{i}of{len(folds)}",
                budget=budget, seed=args.seed, batch_size=args.batch_size, hard_negatives=h,
                learning_rate=args.lr, new_parameters_lr_scale=args.new_params_lr_scale,
                interaction=system != "dual-frozen", first_stage=first,
            )
            timings[f"train_{system}_fold{i}_s"] = time.perf_counter() - start
            info.setdefault(system, {})[f"fold{i}"] = {**counts, **fold_info, "examples_in_store": len(examples)}
            per_step.append(fold_info["s_per_step"])
            queries = {q: task.queries[q] for q in test_qids}
            if system == "dual-frozen":
                if dual_store is None:
                    dual_store = store_cached(DualEncoder(MemoEncoder(fresh)), docs, cache=args.cache,  # type: ignore[arg-type]
                                              name=f"{task.name}-dual-zeroshot")
                run, ms = rerank_queries(DualEncoder(model), dual_store, queries, task.candidates(test_qids))
            else:
                run, ms = rerank_queries(model, store, queries, task.candidates(test_qids))
            parts.append(run)
            ms_weighted += ms * len(test_qids)
        run = {q: hits for part in parts for q, hits in part.items()}
        results.add(system, run, ms_per_query=ms_weighted / len(run), train_s_per_step=sum(per_step) / len(per_step))
    return info


def _warn_if_capped(info: Mapping[str, Any], budget: Budget, what: str) -> None:
    """Say so when the time cap stopped a run before its planned steps.

    train_cached keeps such a run as finished: a re-run with the same settings reuses it (delete
    its ``CACHE/train`` folder, or pass a steps budget, to train it fully).
    """
    if info.get("stopped") == "max_seconds":
        logger.warning(
            "%s: the time cap stopped training at step %s of %s planned (a loaded machine?); this "
            "partly trained model is cached as final", what, info.get("steps"), budget.steps,
        )


# ---------------------------------------------------------------------- MS MARCO data


def _pick(folder: Path, patterns: Sequence[str], what: str, override: str | None) -> Path | None:
    """A file of ``folder`` matching ``patterns`` (training files excluded), or ``override``."""
    if override:
        path = Path(override)
        return path if path.is_absolute() or path.exists() else folder / path
    found = sorted(
        {p for pat in patterns for p in folder.glob(pat) if p.is_file() and "train" not in p.name.lower()}
    )
    if len(found) > 1:
        logger.info("several %s files in %s: %s; using %s (override with --%s)", what, folder,
                    [p.name for p in found], found[0].name, what)
    return found[0] if found else None


def find_run_file(folder: Path, override: str | None) -> Path | None:
    """The first-stage run of ``folder``: a TREC/MS MARCO run file, else a top1000-style tsv."""
    if override == "none":
        return None
    if override:
        return _pick(folder, [], "run", override)
    trec = _pick(folder, ["*.trec", "*.trec.gz", "*.run", "*.run.gz"], "run", None)
    if trec is not None:
        return trec
    return _pick(folder, ["top*.tsv", "top*.tsv.gz", "*top1000*.tsv", "*top100*.tsv"], "run", None)


def read_first_stage(path: Path) -> tuple[Run, dict[str, str], dict[str, str]]:
    """A run file: (run, query texts it carries, passage texts it carries)."""
    from mixencoder.data.runs import detect_run_format

    fmt = detect_run_format(path)
    if fmt == "top1000":
        top = read_top1000(path)
        return top.run, top.queries, top.passages
    return read_run(path), {}, {}


def load_texts(path: Path | None, wanted: set[str], given: Mapping[str, str]) -> dict[str, str]:
    """docid -> text for ``wanted`` docids, streamed from the collection (only those are kept)."""
    texts = {d: t for d, t in given.items() if d in wanted}
    if path is not None and path.exists():
        for doc in read_corpus(path):
            if doc.docid in wanted:
                texts[doc.docid] = doc.text
    return texts


def bm25_first_stage(
    collection: Path, queries: Mapping[str, str], depth: int, *, cache: Path, k1: float, b: float, name: str
) -> tuple[Run, float]:
    """BM25 over a Pyserini index of ``collection`` (built once, cached): run and ms/query."""
    from mixencoder.first_stage import BM25Searcher, bm25_run, build_bm25_index

    stat = collection.stat()
    key = fingerprint(str(collection.resolve()), stat.st_size, stat.st_mtime_ns)
    index = cache / "indexes" / f"{name}-{key}"
    if not index.is_dir():  # build_bm25_index moves a finished index into place atomically
        logger.info("building a BM25 index of %s at %s", collection, index)
        build_bm25_index(collection, index, threads=2, overwrite=True)
    searcher = BM25Searcher(index, k1=k1, b=b)
    start = time.perf_counter()
    run = bm25_run(searcher, queries, depth, threads=2)
    ms = 1000 * (time.perf_counter() - start) / max(len(queries), 1)
    searcher.close()
    return run, ms


def load_msmarco_triples(
    train_dir: Path, data_dir: Path, limit: int
) -> list[MatchingExample]:
    """The first ``limit`` MS MARCO training triples as examples (the negative as a hard one).

    ``triples.train.small.tsv`` (texts) if present, else ``qidpidtriples.train.full.tsv`` with
    ``queries.train.tsv`` and ``collection.tsv`` (from ``train_dir`` or ``data_dir``); only the
    passages those triples use are kept in memory.
    """
    from mixencoder.data import read_id_triples, read_triples
    from mixencoder.data import open_text

    def first(names: Sequence[str], *folders: Path) -> Path | None:
        for folder in folders:
            for name in names:
                for candidate in (folder / name, folder / f"{name}.gz"):
                    if candidate.is_file():
                        return candidate
        return None

    text_path = first(["triples.train.small.tsv"], train_dir)
    if text_path is not None:
        triples = list(itertools.islice(read_triples(text_path), limit))
        source = str(text_path)
    else:
        id_path = first(["qidpidtriples.train.full.tsv", "qidpidtriples.train.full.2.tsv"], train_dir)
        queries_path = first(["queries.train.tsv"], train_dir, data_dir)
        collection_path = first(["collection.tsv"], train_dir, data_dir)
        if id_path is None or queries_path is None or collection_path is None:
            raise SystemExit(
                f"--train-dir {train_dir}: expected triples.train.small.tsv, or "
                "qidpidtriples.train.full.tsv with queries.train.tsv and collection.tsv"
            )
        pids: set[str] = set()
        with open_text(id_path) as handle:
            for line in itertools.islice(handle, limit):
                fields = line.split()
                pids.update(fields[1:3])
        passages = {doc.docid: doc.text for doc in read_corpus(collection_path) if doc.docid in pids}
        triples = list(itertools.islice(read_id_triples(id_path, read_topics(queries_path), passages), limit))
        source = str(id_path)
    logger.info("read %d training triples from %s", len(triples), source)
    if not triples:
        raise SystemExit(f"no training triples in {source}")
    return [MatchingExample(t.query, t.positive, (t.negative,)) for t in triples]


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = common.parser(
        __doc__.split("\n\n")[0], data_dir="../shared/data/msmarco/dl20", out="runs/msmarco", budget="12m", folds=5,
        new_params_lr_scale=20.0,  # DL20: nDCG@10 +0.0038 over the dual at 20, -0.0009 at 1 (5-fold CV)
    )
    add_ir_args(p, depth=1000, negatives="judged", lr=2e-5, hard_negatives=1, est_step_seconds=3.0, min_grade=None)
    p.add_argument("--queries", default=None, help="queries file in --data-dir (default: queries*.tsv)")
    p.add_argument("--qrels", default=None, help="qrels file in --data-dir (default: qrels*)")
    p.add_argument("--run", default=None, help="first-stage run in --data-dir ('none': build a BM25 index)")
    p.add_argument("--collection", default="collection.tsv", help="passages file in --data-dir")
    p.add_argument("--train-limit", type=int, default=100_000, help="training triples read with --train-dir")
    p.epilog = __doc__.split("\n\n", 1)[1]
    args = p.parse_args(argv)
    setup_logging()
    start = time.perf_counter()

    data = args.data_dir
    queries_path = _pick(data, ["queries*.tsv", "queries*.tsv.gz"], "queries", args.queries)
    qrels_path = _pick(data, ["qrels*"], "qrels", args.qrels)
    if queries_path is None or qrels_path is None:
        raise SystemExit(f"{data}: needs a queries*.tsv and a qrels* file (or --queries/--qrels)")
    queries = read_topics(queries_path)
    qrels = read_qrels(qrels_path)
    collection = _pick(data, [], "collection", args.collection)
    run_path = find_run_file(data, args.run)
    notes: dict[str, Any] = {"queries_file": str(queries_path), "qrels_file": str(qrels_path)}
    extra: dict[str, float] = {}
    if run_path is not None:
        run, run_queries, run_passages = read_first_stage(run_path)
        for q, text in run_queries.items():
            queries.setdefault(q, text)
        qids = select_queries(queries, qrels, run, args.limit_queries)
        run = truncate_run(run, qids, args.depth)
        notes["first_stage"] = f"given run {run_path}"
    else:
        if collection is None or not collection.exists():
            raise SystemExit(f"{data}: no first-stage run and no {args.collection} to index")
        k1 = 0.82 if args.k1 is None else args.k1
        b = 0.68 if args.b is None else args.b
        judged = [q for q in qrels if q in queries]
        qids_all = judged[: args.limit_queries] if args.limit_queries else judged
        run, ms = bm25_first_stage(
            collection, {q: queries[q] for q in qids_all}, args.depth, cache=args.cache, k1=k1, b=b,
            name=f"msmarco-{data.name}",
        )
        qids = select_queries(queries, qrels, run, args.limit_queries)
        run = truncate_run(run, qids, args.depth)
        extra["ms_per_query"] = ms
        notes["first_stage"] = f"Pyserini BM25 k1={k1} b={b} over {collection}"
        run_passages = {}
    wanted = {d for hits in run.values() for d in hits} | {d for q in qids for d in qrels[q]}
    texts = load_texts(collection, wanted, run_passages)
    lacking = {d for hits in run.values() for d in hits} - set(texts)
    if lacking:
        raise SystemExit(f"{len(lacking)} candidates have no text in {collection}: {sorted(lacking)[:5]}")
    graded = max((g for q in qids for g in qrels[q].values()), default=0) >= 2
    notes["qrels"] = "graded (relevant: grade >= 2)" if graded else "binary (relevant: grade >= 1)"
    task = IRTask(
        name=f"msmarco-{data.name}",
        queries={q: queries[q] for q in qids},
        qrels={q: qrels[q] for q in qids},
        run=run,
        texts=texts,
        measures=list(MSMARCO_MEASURES if graded else MSMARCO_BINARY_MEASURES),
        min_grade=args.min_grade if args.min_grade is not None else (2 if graded else 1),
        notes=notes,
    )
    loader = None
    if args.train_dir is not None and args.model is None:
        limit = args.train_limit
        budget = Budget.parse(args.budget)
        if budget.steps is not None:
            limit = min(limit, budget.steps * args.batch_size)
        loader = lambda: load_msmarco_triples(args.train_dir, data, limit)  # noqa: E731
    metrics = evaluate(
        args, task, train_examples=loader, first_stage_extra=extra, comparisons_on=("nDCG@10", task.measures[0])
    )
    print(f"total wall time {(time.perf_counter() - start) / 60:.1f} min")
    return metrics


if __name__ == "__main__":
    main()
