"""What every eval/run_*.py script shares: the command-line contract, cached stores and
checkpoints, reranking through the product's own Reranker, and the metrics/run outputs.

Contract (each script): ``--data-dir`` (evaluation data), ``--train-dir`` (training data),
``--folds K`` (without --train-dir: query-level K-fold cross-validation on the evaluation
data), ``--model`` (evaluate this checkpoint, skip training), ``--budget`` (training budget:
``600s``, ``10m`` or ``500steps``; split evenly over folds), ``--seed``, ``--out``. Each script
prints a table and writes ``OUT/metrics.json`` as ``{system: {measure: value}}`` (measure keys
are ``str(measure)`` of ir-measures, plus ``ms_per_query`` and ``store_bytes``), per-query
values in ``OUT/per_query.json``, and ``OUT/runs/<system>.trec``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from mixencoder import CandidateStore, MixEncoder, Reranker
from mixencoder.data import write_run
from mixencoder.evaluation import evaluate_per_query, paired_difference
from mixencoder.fusion import Fusion, cross_fit_fusion, fit_fusion
from mixencoder.models.registry import SYSTEMS as MODEL_SYSTEMS
from mixencoder.models.persistence import DEFAULT_BACKBONE_NAME
from mixencoder.models.registry import MODEL_TYPES, build_system, load_model, system_fields
from mixencoder.training import MatchingExample
from mixencoder.training import TrainingConfig, train

logger = logging.getLogger("eval")

Run = dict[str, dict[str, float]]


# ---------------------------------------------------------------------- arguments


def parser(
    description: str, *, data_dir: str, out: str, budget: str, folds: int = 0, new_params_lr_scale: float = 1.0
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path(data_dir), help=f"evaluation data (default {data_dir})")
    p.add_argument("--train-dir", type=Path, default=None, help="training data; without it, --folds cross-validation")
    p.add_argument("--folds", type=int, default=folds, help="query-level K-fold CV when there is no --train-dir")
    p.add_argument("--model", default=None, help="evaluate this saved MixEncoder; skip training")
    p.add_argument("--backbone", default=None, help="backbone for fresh models (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--budget", default=budget, help="training budget: e.g. 600s, 10m, 500steps (split over folds)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=16, help="training batch size (in-batch negatives)")
    p.add_argument("--distillation-weight", type=float, default=1.0,
                   help="weight of VIRT's distillation from the cross-encoder trained on the same data "
                   "(default 1)")
    p.add_argument("--new-params-lr-scale", type=float, default=new_params_lr_scale,
                   help="lr multiplier for parameters with no pre-trained counterpart (gates, special "
                   f"tokens, scalar mixing weights, heads); default {new_params_lr_scale:g}")
    p.add_argument("--out", type=Path, default=Path(out), help=f"output directory (default {out})")
    p.add_argument("--cache", type=Path, default=Path("work/cache"), help="cached stores/checkpoints")
    return p


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)


@dataclass(frozen=True)
class Budget:
    """A training budget: seconds or steps."""

    seconds: float | None = None
    steps: int | None = None

    @classmethod
    def parse(cls, text: str) -> Budget:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|steps?)\s*", text)
        if not m:
            raise ValueError(f"--budget {text!r}: expected e.g. 600s, 10m, 1h or 500steps")
        value, unit = float(m.group(1)), m.group(2)
        if unit.startswith("step"):
            return cls(steps=int(value))
        return cls(seconds=value * {"s": 1, "m": 60, "h": 3600}[unit])

    def split(self, parts: int) -> Budget:
        if self.steps is not None:
            return Budget(steps=max(1, self.steps // parts))
        return Budget(seconds=(self.seconds or 0) / parts)


def plan_budget(text: str, est_step_seconds: float, parts: int) -> Budget:
    """One training run's budget out of ``parts``: a time cap plus a planned step count.

    A time budget alone would plan the learning-rate schedule over 1000 epochs (train_cached
    cycles the data until the time is up), so warm-up would never end; planning it over the
    steps that fit the budget makes it warm up and decay within the budget.
    """
    budget = Budget.parse(text)
    if budget.steps is not None:
        return Budget(steps=max(1, budget.steps // parts))
    seconds = (budget.seconds or 0) / parts
    return Budget(seconds=seconds, steps=max(1, int(seconds / est_step_seconds)))



# ---------------------------------------------------------------------- systems

#: Trainable systems besides the script's own ``mixencoder``: the paper's baselines and
#: MixEncoder variants by their registry names (``dual``, ``cross``, ``poly-64``, ...).
#: Each is trained with the same data, budget and settings as ``mixencoder``.
BASELINE_SYSTEMS = tuple(MODEL_SYSTEMS)


def system_config(system: str, model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The fresh-model config of ``system``: the script's own ``mixencoder`` takes
    ``model_config`` whole; a registry system keeps its own architecture and takes only the
    truncation lengths (and the pooled-residual initialisation if it is a MixEncoder)."""
    if system == "mixencoder":
        return dict(model_config)
    config = {k: model_config[k] for k in ("query_max_length", "candidate_max_length") if k in model_config}
    if MODEL_SYSTEMS[system][0] == "mixencoder":
        config["pooled_residual"] = model_config.get("pooled_residual", True)
        # Training-recipe fields of MixEncoder, not architecture: they follow the script's options.
        for name in ("mixing", "interaction_trains_backbone"):
            if name in model_config:
                config[name] = model_config[name]
    return config


def trains_on_listed_negatives(system: str) -> bool:
    """Whether ``system`` trains only on each query's listed candidates (no B x B in-batch
    matrix: a cross-encoder or Deformer runs one joint forward per pair)."""
    cls = MixEncoder if system == "mixencoder" else MODEL_TYPES[MODEL_SYSTEMS[system][0]]
    return not getattr(cls, "supports_in_batch_negatives", True)


def with_sampled_negatives(examples: Sequence[MatchingExample], seed: int) -> list[MatchingExample]:
    """Each example plus one negative: another example's positive, drawn with a fixed seed.

    For models that cannot score a B x B in-batch matrix (a cross-encoder runs one forward per
    pair): they train on each query's own 1 + h candidates, so without listed negatives the
    random in-batch negatives are made explicit here.
    """
    rng = random.Random(seed)
    out = []
    n = len(examples)
    for i, e in enumerate(examples):
        if e.negatives or n < 2:
            out.append(e)
            continue
        j = rng.randrange(n - 1)
        j += j >= i
        out.append(MatchingExample(e.query, e.positive, (examples[j].positive,), e.query_id, e.positive_id))
    return out


# ---------------------------------------------------------------------- caching


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able inputs (texts, configs), naming cache entries."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def train_cached(
    examples: Sequence[Any],
    *,
    cache: Path,
    name: str,
    budget: Budget,
    seed: int,
    batch_size: int,
    backbone: str | None,
    model_config: Mapping[str, Any],
    task: str = "matching",
    hard_negatives: int = 0,
    learning_rate: float = 2e-5,
    system: str = "mixencoder",
    new_parameters_lr_scale: float = 1.0,
    teacher: tuple[Any, str] | None = None,
    distillation_weight: float = 1.0,
) -> tuple[Any, dict[str, Any]]:
    """Train a fresh ``system`` on ``examples`` (or reuse the finished run with the same inputs).

    ``system`` is ``"mixencoder"`` (a MixEncoder with ``model_config``) or a registry name
    (:data:`BASELINE_SYSTEMS`; ``model_config`` then overrides its config fields). An
    interrupted run resumes from its checkpoint when the script is run again. ``teacher``:
    ``(model, cache key)`` to distil from with ``distillation_weight`` (VIRT from a trained
    cross-encoder); the key (e.g. the teacher's training directory) names it in the cache key.
    """
    config = TrainingConfig(
        task=task,
        batch_size=batch_size,
        hard_negatives_per_query=hard_negatives,
        learning_rate=learning_rate,
        seed=seed,
        max_steps=budget.steps,
        max_seconds=budget.seconds,
        epochs=1000 if budget.steps is None else 1,  # a time budget: cycle the data until it ends
        checkpoint_every=200,
        new_parameters_lr_scale=new_parameters_lr_scale,
        distillation_weight=distillation_weight if teacher is not None else 0.0,
    )
    # The key holds the fresh model's whole resolved config, not just the overrides given
    # here: a changed default in the model code must not reuse a model trained under the old one.
    resolved = fresh_config(system, backbone, model_config)
    teacher_key = [teacher[1]] if teacher is not None else []
    key = fingerprint(
        name, [repr(e) for e in examples], config.identity(), resolved, backbone, system, *teacher_key
    )
    out = cache / "train" / f"{name}-{key}"
    done = out / "final" / "config.json"
    info_path = out / "train_info.json"
    if done.is_file() and info_path.is_file():
        logger.info("reusing trained model %s", out / "final")
        model = load_model(out / "final")
        return model, {**json.loads(info_path.read_text()), "dir": str(out), **_mixing_summary(model)}
    if system == "mixencoder":
        model = MixEncoder.from_pretrained(backbone, **model_config)
    else:
        model = build_system(system, backbone, **model_config)
    result = train(
        model, list(examples), config, output_dir=out, resume=True, teacher=None if teacher is None else teacher[0]
    )
    info = _train_info(result, len(examples))
    if teacher is not None:
        info["teacher"] = teacher[1]
        info["distillation_weight"] = distillation_weight
    _write_json(info_path, info)
    model = load_model(result.final_dir)
    return model, {**info, "dir": str(out), **_mixing_summary(model)}


def train_on_store_cached(
    model: MixEncoder,
    store: CandidateStore,
    examples: Sequence[MatchingExample],
    *,
    cache: Path,
    name: str,
    budget: Budget,
    seed: int,
    batch_size: int,
    hard_negatives: int,
    learning_rate: float,
    new_parameters_lr_scale: float,
    interaction: bool,
    first_stage: Mapping[str, Mapping[str, float]] | None = None,
) -> tuple[MixEncoder, dict[str, Any]]:
    """:func:`mixencoder.training.train_on_store` of ``model``'s query side against ``store``
    (or the finished run with the same inputs). ``model`` is a fresh MixEncoder; it is copied
    with its own query encoder first, so it and the store stay untouched."""
    from mixencoder.training.frozen_store import train_on_store

    config = TrainingConfig(
        batch_size=batch_size, hard_negatives_per_query=hard_negatives, learning_rate=learning_rate, seed=seed,
        max_steps=budget.steps, max_seconds=budget.seconds, epochs=1000 if budget.steps is None else 1,
        checkpoint_every=200, new_parameters_lr_scale=new_parameters_lr_scale,
    )
    resolved = {k: v for k, v in model.config.to_dict().items() if k != "backbone_config"}
    from mixencoder.training.frozen_store import FIRST_STAGE_WEIGHT

    key = fingerprint(name, [repr(e) for e in examples], config.identity(), resolved, interaction,
                      FIRST_STAGE_WEIGHT if first_stage is not None else None,
                      sorted((q, sorted(s.items())) for q, s in (first_stage or {}).items()),
                      model.candidate_fingerprint(), len(store))
    out = cache / "train" / f"{name}-{key}"
    info_path = out / "train_info.json"
    if (out / "final" / "config.json").is_file() and info_path.is_file():
        logger.info("reusing trained model %s", out / "final")
        return load_model(out / "final"), {**json.loads(info_path.read_text()), "dir": str(out)}
    trainee = model.with_separate_query_encoder()
    result = train_on_store(trainee, store, list(examples), config, output_dir=out, interaction=interaction,
                            first_stage=first_stage)
    info = {**_train_info(result, len(examples)), "s_per_step": round(result.seconds / max(result.global_step, 1), 4)}
    _write_json(info_path, info)
    return load_model(result.final_dir), {**info, "dir": str(out), **_mixing_summary(trainee)}


def _train_info(result: Any, examples: int) -> dict[str, Any]:
    """What a training run's ``train_info.json`` records."""
    recent = result.losses[-20:]
    return {
        "steps": result.global_step,
        "seconds": round(result.seconds, 1),
        "stopped": result.stopped_reason,
        "examples": examples,
        "first_loss": round(result.losses[0], 4) if result.losses else None,
        "last_loss": round(sum(recent) / len(recent), 4) if recent else None,
    }


def fresh_config(system: str, backbone: str | None, model_config: Mapping[str, Any]) -> dict[str, Any]:
    """Every config field of the fresh model ``train_cached`` would build (its backbone's own
    config aside), resolved without loading weights: what names the trained model in the cache."""
    if system == "mixencoder":
        model_type, fields = "mixencoder", dict(model_config)
    else:
        model_type, fields = system_fields(system, backbone, **model_config)
    name = DEFAULT_BACKBONE_NAME if backbone is None else str(backbone)
    config = MODEL_TYPES[model_type].CONFIG_CLASS(backbone=name, **fields).to_dict()
    # A field added later and left at its default trains exactly what the models cached before
    # it existed trained: it does not rename them.
    if not config.get("separate_query_encoder", False):
        config.pop("separate_query_encoder", None)
    return {k: v for k, v in config.items() if k != "backbone_config"}


def _mixing_summary(model: Any) -> dict[str, float]:
    """A MixEncoder's learned mixing weights, rounded (how far it moved from the dual)."""
    summary = model.mixing_summary() if hasattr(model, "mixing_summary") else {}
    return {name: round(value, 5) for name, value in summary.items()}


def train_system(
    system: str,
    examples: Sequence[MatchingExample],
    *,
    name_of: Callable[[str], str],
    hard_negatives: int,
    seed: int,
    **kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """:func:`train_cached` for any system, with what its architecture needs.

    A system that scores only listed pairs (cross, Deformer) gets one sampled negative per
    query when there are no hard negatives; ``virt`` is distilled from the ``cross`` model
    trained on the same examples (trained first, or reused from the cache). ``name_of(system)``
    names each run in the cache.
    """
    h = hard_negatives
    train_on = list(examples)
    if h == 0 and trains_on_listed_negatives(system):
        train_on, h = with_sampled_negatives(train_on, seed), 1
    teacher = None
    if system == "virt":
        cross, cross_info = train_system(
            "cross", examples, name_of=name_of, hard_negatives=hard_negatives, seed=seed, **kwargs
        )
        teacher = (cross, Path(cross_info["dir"]).name)
    else:
        kwargs.pop("distillation_weight", None)
    return train_cached(
        train_on, name=name_of(system), hard_negatives=h, seed=seed, system=system, teacher=teacher, **kwargs
    )


def store_cached(model: Any, docs: Mapping[str, str], *, cache: Path, name: str) -> CandidateStore:
    """A store of ``docs`` built by ``model``, reused when model and docs are unchanged."""
    key = fingerprint(name, model.candidate_fingerprint(), sorted(docs.items()))
    path = cache / "stores" / f"{name}-{key}"
    if (path / "manifest.json").is_file():
        return CandidateStore.open(path, model=model)
    mode = "resume" if path.exists() else "create"
    # Keep pooled vectors (and their FAISS copy) only for models that produce them: a
    # cross-encoder, ColBERT or a Poly-encoder stores token states or ids and no pooled vector.
    first = next(iter(docs.values()))
    with_pooled = model.encode_candidates([first], batch_size=1, show_progress_bar=False).pooled is not None
    return CandidateStore.build(
        path, model, sorted(docs.items()), mode=mode, show_progress_bar=True, with_pooled=with_pooled
    )


# ---------------------------------------------------------------------- reranking


def rerank_queries(
    model: Any,
    store: CandidateStore,
    queries: Mapping[str, str],
    candidates: Mapping[str, Sequence[str]],
) -> tuple[Run, float]:
    """Rerank each query's candidates through the product's Reranker (store path).

    Returns the run and the measured online milliseconds per query (query encoding, gather
    from the store and scoring; tokenisation included).
    """
    reranker = Reranker(model, store)
    run: Run = {}
    start = time.perf_counter()
    for qid, query in queries.items():
        ranked = reranker.rerank(query, list(candidates[qid]))
        run[qid] = {r.docid: r.score for r in ranked}
    ms = 1000 * (time.perf_counter() - start) / max(len(queries), 1)
    return run, ms


# ---------------------------------------------------------------------- results


@dataclass
class Results:
    """Collects systems' runs, evaluates them with ir-measures and writes the outputs."""

    out: Path
    qrels: Mapping[str, Mapping[str, int]]
    measures: Sequence[str]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    per_query: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)

    def add(self, system: str, run: Run, **extra: float) -> dict[str, float]:
        per_query = evaluate_per_query(run, self.qrels, self.measures)
        values = {m: sum(v.values()) / max(len(v), 1) for m, v in per_query.items()}
        values.update({k: float(v) for k, v in extra.items()})
        self.metrics[system] = values
        self.per_query[system] = per_query
        self.runs[system] = run
        (self.out / "runs").mkdir(parents=True, exist_ok=True)
        write_run(run, self.out / "runs" / f"{system}.trec", fmt="trec", tag=system)
        logger.info("%s: %s", system, {k: round(v, 4) for k, v in values.items()})
        return values

    def add_fused(
        self, first_stage: str, folds: Sequence[Sequence[str]], measure: str, *, rrf_k: float = 60.0
    ) -> list[tuple[str, str, str]]:
        """Each system fused with the ``first_stage`` system's run: ``S+bm25`` (per-query min-max
        interpolation, alpha cross-fitted: each fold's queries get the alpha that maximises
        ``measure`` on the other folds, so no query informs its own weight) and ``S+rrf``.

        ``ms_per_query`` of a fused system is the system's plus the measured fusion time.
        Returns the paired comparisons worth printing (each fused system against its unfused self
        and against the first stage).
        """
        first = self.runs[first_stage]
        comparisons: list[tuple[str, str, str]] = []
        fusion_notes: dict[str, Any] = {}
        for system in [s for s in list(self.runs) if s != first_stage and "+" not in s]:
            run = self.runs[system]
            start = time.perf_counter()
            fused, alphas = cross_fit_fusion(run, first, self.qrels, folds, measure=measure)
            fit_s = time.perf_counter() - start
            start = time.perf_counter()
            for fold_alpha, fold in zip(alphas, folds):  # time the fusion alone, as a user pays it
                for q in fold:
                    if q in run:
                        Fusion("interpolate", alpha=fold_alpha).fuse(run[q], first.get(q, {}))
            fuse_ms = 1000 * (time.perf_counter() - start) / max(len(run), 1)
            rrf = Fusion("rrf", rrf_k=rrf_k)
            start = time.perf_counter()
            rrf_run = rrf.fuse_run(run, first)
            rrf_ms = 1000 * (time.perf_counter() - start) / max(len(run), 1)
            base_ms = self.metrics[system].get("ms_per_query")
            extra = {} if base_ms is None else {"ms_per_query": base_ms + fuse_ms}
            self.add(f"{system}+{first_stage}", fused, **extra)
            self.add(f"{system}+rrf", rrf_run, **({} if base_ms is None else {"ms_per_query": base_ms + rrf_ms}))
            # The whole alpha curve over every evaluated query: not used for any row (that would
            # fit on the evaluation queries), reported to choose a package default across tasks.
            _, curve = fit_fusion(run, first, self.qrels, list(run), measure=measure)
            fusion_notes[system] = {
                "alpha_per_fold": alphas, "fit_measure": measure, "fit_seconds": round(fit_s, 2),
                "curve_all_queries": curve,
                "fusion_ms_per_query": round(fuse_ms, 4), "rrf_ms_per_query": round(rrf_ms, 4), "rrf_k": rrf_k,
            }
            for m in (measure,):
                comparisons += [(f"{system}+{first_stage}", system, m), (f"{system}+{first_stage}", first_stage, m)]
        self.notes["fusion"] = {"first_stage": first_stage, "folds": [list(f) for f in folds], "systems": fusion_notes}
        return comparisons

    def paired(self, a: str, b: str, measure: str) -> dict[str, float]:
        """Paired per-query difference a - b of ``measure``, with its standard error."""
        mean, se, n = paired_difference(self.per_query[a][measure], self.per_query[b][measure])
        return {"mean": mean, "se": se, "n": n}

    def write(self, comparisons: Iterable[tuple[str, str, str]] = ()) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        _write_json(self.out / "metrics.json", self.metrics)
        _write_json(self.out / "per_query.json", self.per_query)
        diffs = {f"{a} - {b} [{m}]": self.paired(a, b, m) for a, b, m in comparisons if a in self.metrics and b in self.metrics}
        _write_json(self.out / "notes.json", {**self.notes, "paired_differences": diffs})
        print(self.table())
        for name, d in diffs.items():
            print(f"{name}: {d['mean']:+.4f} (paired SE {d['se']:.4f}, n={d['n']})")

    def table(self) -> str:
        columns = list(self.measures) + sorted({k for v in self.metrics.values() for k in v} - set(self.measures))
        width = max([len(s) for s in self.metrics] + [6])
        head = f"{'system':<{width}}  " + "  ".join(f"{c:>14}" for c in columns)
        lines = [head, "-" * len(head)]
        for system, values in self.metrics.items():
            cells = [f"{values[c]:>14.4f}" if c in values else f"{'-':>14}" for c in columns]
            lines.append(f"{system:<{width}}  " + "  ".join(cells))
        return "\n".join(lines)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=float))
    os.replace(tmp, path)
