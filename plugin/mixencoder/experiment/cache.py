"""One cache for what an experiment trains and builds, keyed by everything that determines it.

A trained model lives in ``CACHE/train/<name>-<key>`` and a candidate store in
``CACHE/stores/<name>-<key>``; ``key`` hashes the training examples, the training config, the
fresh model's fully resolved config, the backbone and (for VIRT) the teacher, or the model's
candidate fingerprint and the documents. A run with the same inputs reuses the entry; an
interrupted training resumes from its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..models.persistence import DEFAULT_BACKBONE_NAME
from ..models.registry import MODEL_TYPES, build_system, load_model, system_fields
from ..store import CandidateStore
from ..training import TrainingConfig, train
from .results import write_json

logger = logging.getLogger(__name__)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able inputs (texts, configs), naming cache entries."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Budget:
    """A training budget: a wall-clock cap in seconds, a step count, or both."""

    seconds: float | None = None
    steps: int | None = None

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``600s``, ``10m``, ``1h`` or ``500steps``."""
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|steps?)\s*", text)
        if not m:
            raise ValueError(f"--budget {text!r}: expected e.g. 600s, 10m, 1h or 500steps")
        value, unit = float(m.group(1)), m.group(2)
        if unit.startswith("step"):
            return cls(steps=int(value))
        return cls(seconds=value * {"s": 1, "m": 60, "h": 3600}[unit])


def plan_budget(text: str, est_step_seconds: float, parts: int) -> Budget:
    """One training run's budget out of ``parts``: a time cap plus a planned step count.

    A time budget alone would plan the learning-rate schedule over 1000 epochs (training cycles
    the data until the time is up), so warm-up would never end; planning it over the steps that
    fit the budget makes it warm up and decay within the budget.
    """
    budget = Budget.parse(text)
    if budget.steps is not None:
        return Budget(steps=max(1, budget.steps // parts))
    seconds = (budget.seconds or 0) / parts
    return Budget(seconds=seconds, steps=max(1, int(seconds / est_step_seconds)))


@dataclass(frozen=True)
class Recipe:
    """How every trained system of an experiment is trained (the same for all of them).

    ``budget`` (``600s``, ``10m``, ``500steps``) is the whole experiment's, split over its runs;
    ``est_step_seconds`` plans a time budget's learning-rate schedule (:func:`plan_budget`);
    ``hard_negatives`` per query per step; ``backbone`` of fresh models (None: the bundled one).
    """

    budget: str = "10m"
    est_step_seconds: float = 3.0
    batch_size: int = 16
    learning_rate: float = 2e-5
    new_parameters_lr_scale: float = 1.0
    hard_negatives: int = 0
    distillation_weight: float = 1.0
    seed: int = 42
    backbone: str | None = None

    def budget_per_run(self, runs: int) -> Budget:
        return plan_budget(self.budget, self.est_step_seconds, runs)


def fresh_config(system: str, backbone: str | None, model_config: Mapping[str, Any]) -> dict[str, Any]:
    """Every config field of the fresh model :func:`train_cached` would build (its backbone's own
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


def _training_config(recipe: Recipe, budget: Budget, hard_negatives: int, **fields: Any) -> TrainingConfig:
    """The trainer's config of one run of ``recipe`` (``fields``: the task, distillation)."""
    return TrainingConfig(
        batch_size=recipe.batch_size,
        hard_negatives_per_query=hard_negatives,
        learning_rate=recipe.learning_rate,
        seed=recipe.seed,
        new_parameters_lr_scale=recipe.new_parameters_lr_scale,
        max_steps=budget.steps,
        max_seconds=budget.seconds,
        epochs=1000 if budget.steps is None else 1,  # a time budget: cycle the data until it ends
        checkpoint_every=200,
        **fields,
    )


def build_fresh(system: str, backbone: str | None, model_config: Mapping[str, Any], seed: int) -> Any:
    """A fresh ``system`` (``"mixencoder"`` or a registry name) whose new parameters are drawn from
    ``seed``: layers such as the interaction's gate, ColBERT's projection or a classifier head
    initialise from torch's global RNG, which torch seeds randomly in every process, so without
    this the same seed would not train the same model. The global RNG is left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if system == "mixencoder":
            return MODEL_TYPES["mixencoder"].from_pretrained(backbone, **model_config)
        return build_system(system, backbone, **model_config)


def train_info(result: Any, examples: int) -> dict[str, Any]:
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


def _mixing_summary(model: Any) -> dict[str, float]:
    """The learned mixing weights, rounded (how far a MixEncoder moved from the dual)."""
    return {name: round(value, 5) for name, value in model.mixing_summary().items()}


def _reuse(out: Path) -> tuple[Any, dict[str, Any]] | None:
    """The finished run in ``out`` (model and its train_info), or None."""
    info_path = out / "train_info.json"
    if (out / "final" / "config.json").is_file() and info_path.is_file():
        logger.info("reusing trained model %s", out / "final")
        return load_model(out / "final"), {**json.loads(info_path.read_text()), "dir": str(out)}
    return None


def train_cached(
    examples: Sequence[Any],
    recipe: Recipe,
    budget: Budget,
    *,
    cache: Path,
    name: str,
    model_config: Mapping[str, Any],
    system: str = "mixencoder",
    task: str = "matching",
    hard_negatives: int = 0,
    teacher: tuple[Any, str] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train a fresh ``system`` on ``examples`` (or reuse the finished run with the same inputs).

    ``system`` is ``"mixencoder"`` (a MixEncoder with ``model_config``) or a registry name
    (``mixencoder.models.registry.SYSTEMS``; ``model_config`` then overrides its config fields),
    trained under ``recipe`` for ``budget`` with ``hard_negatives`` per query. ``teacher``:
    ``(model, cache key)`` to distil from with the recipe's ``distillation_weight`` (VIRT from a
    trained cross-encoder); the key (e.g. the teacher's cache folder) is part of this run's key.
    Returns the trained model and its training info (with ``dir``, the cache folder).
    """
    config = _training_config(
        recipe, budget, hard_negatives, task=task,
        distillation_weight=recipe.distillation_weight if teacher is not None else 0.0,
    )
    backbone = recipe.backbone
    # The key holds the fresh model's whole resolved config, not just the overrides given
    # here: a changed default in the model code must not reuse a model trained under the old one.
    resolved = fresh_config(system, backbone, model_config)
    teacher_key = [teacher[1]] if teacher is not None else []
    key = fingerprint(
        name, [repr(e) for e in examples], config.identity(), resolved, backbone, system, *teacher_key
    )
    out = cache / "train" / f"{name}-{key}"
    done = _reuse(out)
    if done is not None:
        return done[0], {**done[1], **_mixing_summary(done[0])}
    model = build_fresh(system, backbone, model_config, recipe.seed)
    result = train(
        model, list(examples), config, output_dir=out, resume=True, teacher=None if teacher is None else teacher[0]
    )
    info = train_info(result, len(examples))
    if teacher is not None:
        info["teacher"] = teacher[1]
        info["distillation_weight"] = recipe.distillation_weight
    write_json(out / "train_info.json", info)
    model = load_model(result.final_dir)
    return model, {**info, "dir": str(out), **_mixing_summary(model)}


def train_on_store_cached(
    model: Any,
    store: CandidateStore,
    examples: Sequence[Any],
    recipe: Recipe,
    budget: Budget,
    *,
    cache: Path,
    name: str,
    hard_negatives: int,
    interaction: bool,
    first_stage: Mapping[str, Mapping[str, float]] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """:func:`mixencoder.training.frozen_store.train_on_store` of ``model``'s query side against
    ``store`` (or the finished run with the same inputs). ``model`` is a fresh MixEncoder; it is
    copied with its own query encoder first, so it and the store stay untouched."""
    from ..training.frozen_store import FIRST_STAGE_WEIGHT, train_on_store

    config = _training_config(recipe, budget, hard_negatives)
    resolved = {k: v for k, v in model.config.to_dict().items() if k != "backbone_config"}
    key = fingerprint(name, [repr(e) for e in examples], config.identity(), resolved, interaction,
                      FIRST_STAGE_WEIGHT if first_stage is not None else None,
                      sorted((q, sorted(s.items())) for q, s in (first_stage or {}).items()),
                      model.candidate_fingerprint(), len(store))
    out = cache / "train" / f"{name}-{key}"
    done = _reuse(out)
    if done is not None:
        return done
    trainee = model.with_separate_query_encoder()
    result = train_on_store(trainee, store, list(examples), config, output_dir=out, interaction=interaction,
                            first_stage=first_stage)
    info = {**train_info(result, len(examples)), "s_per_step": round(result.seconds / max(result.global_step, 1), 4)}
    write_json(out / "train_info.json", info)
    return load_model(result.final_dir), {**info, "dir": str(out), **_mixing_summary(trainee)}


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


def store_size(store: CandidateStore) -> int:
    """Bytes on disk of what reranking reads (the FAISS search index left out)."""
    return int(round(store.bytes_per_candidate(include_search_index=False) * len(store)))
