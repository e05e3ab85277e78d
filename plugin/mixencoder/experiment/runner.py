"""One runner over any ranking task: every system of an experiment, trained per fold (or once
on a training source), reranking through the product's :class:`~mixencoder.Reranker` from its
own cached store, evaluated with ir-measures, fused with the first stage, written out.

Anchor: PyTerrier's ``pt.Experiment(systems, topics, qrels, eval_metrics, names=, baseline=)``;
here the systems are :class:`~.systems.SystemSpec` s that may need training, so the task's
folds and a :class:`~.systems.Recipe` come along.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..data import kfold_split
from ..models import DualEncoder, MixEncoder
from ..models.base import CandidateReps
from ..models.registry import load_model
from ..rerank import Reranker
from ..store import CandidateStore
from .cache import Budget, Recipe, build_fresh, store_cached, store_size, train_on_store_cached
from ..data.dialogue import left_truncate_texts
from .results import Results
from .systems import FIRST_STAGE, SystemSpec, train_spec
from .tasks import Fold, RankingTask, Run, TrainingData

logger = logging.getLogger(__name__)


def text_id(text: str) -> str:
    """The store docid of a candidate text (one store entry per distinct text)."""
    return "t" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


def rerank_queries(
    model: Any, store: CandidateStore, queries: Mapping[str, str], candidates: Mapping[str, Sequence[str]]
) -> tuple[Run, float]:
    """Rerank each query's candidates through the product's Reranker (store path).

    Returns the run and the measured online milliseconds per query (query encoding, gather
    from the store and scoring; tokenisation included).
    """
    reranker = Reranker(model, store)
    run: Run = {}
    start = time.perf_counter()
    for qid, query in queries.items():
        run[qid] = {r.docid: r.score for r in reranker.rerank(query, list(candidates[qid]))}
    return run, 1000 * (time.perf_counter() - start) / max(len(queries), 1)


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


class _Rows:
    """One system's runs over folds, merged into one row."""

    def __init__(self) -> None:
        self.run: Run = {}
        self.weighted_ms = 0.0
        self.bytes = 0

    def add(self, run: Run, ms: float, nbytes: int) -> None:
        self.run.update(run)
        self.weighted_ms += ms * len(run)
        self.bytes += nbytes

    def extra(self) -> dict[str, float]:
        return {"ms_per_query": self.weighted_ms / max(len(self.run), 1), "store_bytes": self.bytes}


def _warn_if_capped(info: Mapping[str, Any], budget: Budget, what: str) -> None:
    """Say so when the time cap stopped a run before its planned steps (such a run is cached as
    finished: delete its ``CACHE/train`` folder, or pass a steps budget, to train it fully)."""
    if info.get("stopped") == "max_seconds":
        logger.warning("%s: the time cap stopped training at step %s of %s planned (a loaded machine?); this "
                       "partly trained model is cached as final", what, info.get("steps"), budget.steps)


def run_experiment(
    task: RankingTask,
    systems: Sequence[SystemSpec],
    *,
    folds: Sequence[Fold],
    recipe: Recipe,
    cache: Path,
    out: Path,
    model_config: Mapping[str, Any],
    fusion_measure: str | None = None,
    comparisons: Sequence[tuple[str, str]] = (),
    compare_on: Sequence[str] = (),
    ablate_interaction: bool = False,
    frozen_examples: Callable[[Sequence[str]], TrainingData] | None = None,
    notes: Mapping[str, Any] | None = None,
) -> Results:
    """Run ``systems`` on ``task`` and write the outputs to ``out``.

    Args:
        task: the evaluation (a task adapter's :class:`RankingTask`).
        systems: the rows, in order (``bm25`` is the task's first stage).
        folds: what trained systems train on and rerank: K CV folds, or one fold over every
            query trained on a training source.
        recipe: how every trained system trains (the budget is split over the folds).
        cache, out: the cache root and the output directory.
        model_config: the fresh MixEncoder config of the zero-shot systems (and of query
            truncation for a ``left_truncate`` task).
        fusion_measure: fit ``S+bm25`` / ``S+rrf`` rows on this measure (None: no fused rows).
        comparisons, compare_on: paired differences (a, b) to report, on these measures.
        ablate_interaction: also evaluate each trained model's :meth:`ablated` self (``S-pooled``).
        frozen_examples: train_qids -> docid examples, for the frozen-store systems.
        notes: settings and data counts for ``notes.json``.
    """
    wall = time.perf_counter()
    timings: dict[str, float] = {}
    results = Results(out, task.qrels, task.measures)
    results.notes.update({"data": task.notes, "queries": len(task.queries),
                          "candidates": sum(len(v) for v in task.candidates.values()),
                          "model_config": dict(model_config), **(notes or {})})
    qids = list(task.queries)
    cv = len(folds) >= 2
    pairs = [(a, b, m) for a, b in comparisons for m in compare_on]
    fresh: MixEncoder | None = None

    def fresh_model() -> MixEncoder:
        nonlocal fresh
        if fresh is None:
            fresh = build_fresh("mixencoder", recipe.backbone, model_config, recipe.seed)
        return fresh

    def rerank(scorer: Any, fold_qids: Sequence[str], store_name: str, *, builder: Any = None,
               tokenizer_model: Any = None) -> tuple[Run, float, int]:
        def store_id(docid: str) -> str:
            return text_id(task.texts[docid]) if task.dedupe_texts else docid

        texts = [task.queries[q] for q in fold_qids]
        if task.left_truncate:
            cutter = tokenizer_model or fresh_model()
            texts = left_truncate_texts(cutter.tokenizer, texts, cutter.config.query_max_length - 2)
        docs = {store_id(d): task.texts[d] for q in fold_qids for d in task.candidates[q]}
        start = time.perf_counter()
        store = store_cached(builder or scorer, docs, cache=cache, name=store_name)
        timings[f"store_{store_name}_s"] = time.perf_counter() - start
        unique = {q: list(dict.fromkeys(store_id(d) for d in task.candidates[q])) for q in fold_qids}
        by_id, ms = rerank_queries(scorer, store, dict(zip(fold_qids, texts)), unique)
        run = {q: {d: by_id[q][store_id(d)] for d in task.candidates[q]} for q in fold_qids}
        return run, ms, store_size(store)

    names = [s.name for s in systems]
    if FIRST_STAGE in names:
        run, extra = task.first_stage_run(folds)
        results.add(FIRST_STAGE, run, **extra)

    zeroshot = [s for s in systems if s.kind == "zeroshot"]
    if zeroshot:
        start = time.perf_counter()
        memo = MemoEncoder(fresh_model())
        for spec in zeroshot:
            dual = spec.name == "dual-zeroshot"
            scorer = DualEncoder(fresh_model()) if dual else fresh_model()
            builder = DualEncoder(memo) if dual else memo  # type: ignore[arg-type]
            run, ms, nbytes = rerank(scorer, qids, f"{task.name}-{spec.name}", builder=builder)
            results.add(spec.name, run, ms_per_query=ms, store_bytes=nbytes)
        timings["zeroshot_s"] = time.perf_counter() - start

    training: dict[str, Any] = {}
    truncated: dict[str, list[Any]] = {}
    for spec in [s for s in systems if s.kind == "trained"]:
        rows, ablated_rows, info_of = _Rows(), _Rows(), {}
        if spec.given is None and not folds:
            logger.warning("no saved model, no training source and fewer than 2 folds: skipping %s", spec.name)
            continue
        if spec.given is not None:
            model = load_model(spec.given)
            results.notes["given_model"] = str(spec.given)
            results.notes["model_config"] = {k: v for k, v in model.config.to_dict().items() if k != "backbone_config"}
            rows.add(*rerank(model, qids, f"{task.name}-{spec.name}-given", tokenizer_model=model))
        else:
            budget = recipe.budget_per_run(len(folds))
            results.notes["budget_per_run"] = {"seconds": budget.seconds, "planned_steps": budget.steps}
            if cv:
                results.notes["folds"] = [f.test_qids for f in folds]
            for fold in folds:
                data = fold.load()
                if fold.name not in truncated:  # every system trains on the same (cut) queries
                    truncated[fold.name] = _cut_queries(data.examples, fresh_model() if task.left_truncate else None)
                start = time.perf_counter()
                model, info = train_spec(spec, truncated[fold.name], recipe, budget, cache=cache,
                                         name_of=lambda s, fold=fold: f"{task.name}-{s}-{fold.name}",
                                         hard_negatives=fold.hard_negatives)
                timings[f"train_{spec.name}_{fold.name}_s"] = time.perf_counter() - start
                info_of[fold.name] = {**data.counts, **info}
                _warn_if_capped(info, budget, f"{spec.name} {fold.name}")
                logger.info("%s %s trained: %s", spec.name, fold.name, info_of[fold.name])
                rows.add(*rerank(model, fold.test_qids, f"{task.name}-{spec.name}-{fold.name}",
                                 tokenizer_model=fresh_model() if task.left_truncate else None))
                ablated = model.ablated() if ablate_interaction else None
                if ablated is not None:  # same trained weights, interaction off
                    ablated_rows.add(*rerank(ablated, fold.test_qids, f"{task.name}-{spec.name}-pooled-{fold.name}",
                                             tokenizer_model=fresh_model() if task.left_truncate else None))
                del model
        steps = sum(i.get("steps") or 0 for i in info_of.values())
        per_step = {"train_s_per_step": sum(i.get("seconds") or 0 for i in info_of.values()) / steps} if steps else {}
        results.add(spec.name, rows.run, **rows.extra(), **per_step)
        if ablated_rows.run:
            results.add(f"{spec.name}-pooled", ablated_rows.run, **ablated_rows.extra())
            pairs += [(spec.name, f"{spec.name}-pooled", m) for m in compare_on]
        if spec.name != "dual" and "dual" in names:
            pairs += [(spec.name, "dual", m) for m in compare_on]
        if info_of:
            training[spec.name] = info_of

    frozen = [s for s in systems if s.kind == "frozen"]
    if frozen:
        if not cv or frozen_examples is None:
            logger.warning("%s need --folds >= 2: skipped", " ".join(s.name for s in frozen))
        else:
            training.update(_frozen_rows(task, frozen, folds, recipe, fresh_model(), frozen_examples, results,
                                         cache=cache, timings=timings))
    if training:
        # one system: {fold: info}; several: {system: {fold: info}}
        results.notes["training"] = next(iter(training.values())) if len(training) == 1 else training

    if FIRST_STAGE in results.runs and fusion_measure:
        # The CV folds when there are any (each fold's alpha from the other folds' queries), else
        # 5 folds over the evaluated queries: never a query's own judgments.
        fit_folds = [f.test_qids for f in folds] if cv else [
            t for _, t in kfold_split(qids, min(5, len(qids)), recipe.seed)]
        pairs += results.add_fused(FIRST_STAGE, fit_folds, fusion_measure)
        pairs += [(f"{s}+bm25", "dual+bm25", m) for s in names if s != "dual" and "dual" in names
                  and f"{s}+bm25" in results.runs for m in compare_on]
    timings["wall_s"] = time.perf_counter() - wall
    results.notes["timings"] = {k: round(v, 1) for k, v in timings.items()}
    results.write(pairs)
    print(f"evaluation wall time {timings['wall_s'] / 60:.1f} min; outputs in {out}")
    return results


def _cut_queries(examples: Sequence[Any], tokenizer_model: Any) -> list[Any]:
    """``examples`` with their queries cut from the left to the model's query length (when a
    ``tokenizer_model`` is given; else unchanged)."""
    if tokenizer_model is None:
        return list(examples)
    contexts = left_truncate_texts(tokenizer_model.tokenizer, [e.query for e in examples],
                                   tokenizer_model.config.query_max_length - 2)
    return [type(e)(c, e.positive, e.negatives, e.query_id, e.positive_id) for c, e in zip(contexts, examples)]


def _frozen_rows(
    task: RankingTask, specs: Sequence[SystemSpec], folds: Sequence[Fold], recipe: Recipe, fresh: MixEncoder,
    examples_of: Callable[[Sequence[str]], TrainingData], results: Results, *, cache: Path,
    timings: dict[str, float],
) -> dict[str, Any]:
    """CV of the frozen-store systems: in each fold, the fresh model's query side trains against
    the zero-shot store (built once over every candidate, as a user's existing store would be)
    and reranks the held-out queries from that same store."""
    docs = task.docs()
    store = store_cached(MemoEncoder(fresh), docs, cache=cache, name=f"{task.name}-mixencoder-zeroshot")
    dual_store = None
    budget = recipe.budget_per_run(len(folds))
    info: dict[str, Any] = {}
    for spec in specs:
        rows, per_step = _Rows(), []
        for fold in folds:
            data = examples_of(fold.train_qids)
            examples = [e for e in data.examples if e.positive in docs and all(n in docs for n in e.negatives)]
            first = {q: task.first_stage[q] for q in fold.train_qids} if spec.name.endswith("-fusionloss") else None
            start = time.perf_counter()
            model, fold_info = train_on_store_cached(
                fresh, store, examples, recipe, budget, cache=cache, name=f"{task.name}-{spec.name}-{fold.name}",
                hard_negatives=fold.hard_negatives, interaction=spec.name != "dual-frozen", first_stage=first,
            )
            timings[f"train_{spec.name}_{fold.name}_s"] = time.perf_counter() - start
            info.setdefault(spec.name, {})[fold.name] = {**data.counts, **fold_info, "examples_in_store": len(examples)}
            per_step.append(fold_info["s_per_step"])
            queries = {q: task.queries[q] for q in fold.test_qids}
            candidates = {q: task.candidates[q] for q in fold.test_qids}
            if spec.name == "dual-frozen":
                if dual_store is None:
                    dual_store = store_cached(DualEncoder(MemoEncoder(fresh)), docs, cache=cache,  # type: ignore[arg-type]
                                              name=f"{task.name}-dual-zeroshot")
                run, ms = rerank_queries(DualEncoder(model), dual_store, queries, candidates)
            else:
                run, ms = rerank_queries(model, store, queries, candidates)
            rows.add(run, ms, 0)
        results.add(spec.name, rows.run, ms_per_query=rows.extra()["ms_per_query"],
                    train_s_per_step=sum(per_step) / len(per_step))
    return info
