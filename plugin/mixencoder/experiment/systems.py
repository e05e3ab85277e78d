"""What a system in an experiment is: a :class:`SystemSpec` (how its model is made), a
:class:`Recipe` (how it is trained), and the model-config flags every task shares.

System names: ``bm25`` (the task's first stage), ``dual-zeroshot`` / ``mixencoder-zeroshot``
(untrained, sharing one encoding pass), ``mixencoder`` (a MixEncoder with the experiment's
model config, or a saved ``--model``), every registry system (``dual``, ``cross``, ``poly-64``,
``mixencoder-b``, ...: trained exactly like ``mixencoder``; ``virt`` is distilled from the
``cross`` model trained on the same examples), and the frozen-store systems (``dual-frozen``,
``mixencoder-frozen``, ``mixencoder-frozen-fusionloss``: only the query side trains, against
the zero-shot store).
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..models.registry import MODEL_TYPES
from ..models.registry import SYSTEMS as REGISTRY_SYSTEMS
from ..training import MatchingExample
from .cache import Budget, Recipe, train_cached

FIRST_STAGE = "bm25"
ZEROSHOT_SYSTEMS = ("dual-zeroshot", "mixencoder-zeroshot")
#: Trainable systems besides ``mixencoder``: the paper's baselines and MixEncoder variants.
REGISTRY_NAMES = tuple(REGISTRY_SYSTEMS)
#: Trained on the zero-shot store, frozen: only the query side learns (``train_on_store``);
#: ``-fusionloss`` adds the normalised BM25 score to the training scores with a learned weight.
FROZEN_SYSTEMS = ("dual-frozen", "mixencoder-frozen", "mixencoder-frozen-fusionloss")
#: What the ranking tasks run by default.
DEFAULT_SYSTEMS = (FIRST_STAGE, *ZEROSHOT_SYSTEMS, "mixencoder")
ALL_SYSTEMS = (*DEFAULT_SYSTEMS, *REGISTRY_NAMES, *FROZEN_SYSTEMS)


@dataclass(frozen=True)
class SystemSpec:
    """One row of an experiment.

    Attributes:
        name: the row's name (a system name of this module's docstring).
        kind: ``first-stage``, ``zeroshot``, ``trained`` or ``frozen``.
        model: ``mixencoder`` or a registry system name: the architecture a trained system gets.
        config: the fresh model's config fields (for a registry system, overrides of its own).
        teacher: the system this one is distilled from (``cross`` for ``virt``), trained first.
        given: a saved model to evaluate instead of training one.
    """

    name: str
    kind: str
    model: str = "mixencoder"
    config: Mapping[str, Any] = field(default_factory=dict)
    teacher: str | None = None
    given: Path | None = None

    @property
    def trains_on_listed_negatives(self) -> bool:
        """Whether the architecture trains only on each query's listed candidates (no B x B
        in-batch matrix: a cross-encoder or Deformer runs one joint forward per pair)."""
        model_type = "mixencoder" if self.model == "mixencoder" else REGISTRY_SYSTEMS[self.model][0]
        return not MODEL_TYPES[model_type].supports_in_batch_negatives


def system_spec(name: str, model_config: Mapping[str, Any], given: Path | None = None) -> SystemSpec:
    """The spec of system ``name`` under the experiment's ``model_config``.

    ``mixencoder`` takes ``model_config`` whole; a registry system keeps its own architecture
    and takes only the truncation lengths (and, for a MixEncoder variant, the pooled-residual
    initialisation and the mixing recipe).
    """
    if name == FIRST_STAGE:
        return SystemSpec(name, "first-stage")
    if name in ZEROSHOT_SYSTEMS:
        return SystemSpec(name, "zeroshot", config=dict(model_config))
    if name in FROZEN_SYSTEMS:
        return SystemSpec(name, "frozen", config=dict(model_config))
    if name == "mixencoder":
        return SystemSpec(name, "trained", config=dict(model_config), given=given)
    if name not in REGISTRY_SYSTEMS:
        raise ValueError(f"unknown system {name!r}; known: {' '.join(ALL_SYSTEMS)}")
    config = {k: model_config[k] for k in ("query_max_length", "candidate_max_length") if k in model_config}
    if REGISTRY_SYSTEMS[name][0] == "mixencoder":
        config["pooled_residual"] = model_config.get("pooled_residual", True)
        # Training-recipe fields of MixEncoder, not architecture: they follow the experiment's.
        for key in ("mixing", "interaction_trains_backbone"):
            if key in model_config:
                config[key] = model_config[key]
    return SystemSpec(name, "trained", model=name, config=config, teacher="cross" if name == "virt" else None)


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


def train_spec(
    spec: SystemSpec,
    examples: Sequence[MatchingExample],
    recipe: Recipe,
    budget: Budget,
    *,
    cache: Path,
    name_of: Callable[[str], str],
    hard_negatives: int,
) -> tuple[Any, dict[str, Any]]:
    """Train ``spec`` on ``examples`` under ``recipe`` (or reuse the cached run).

    A system that scores only listed pairs gets one sampled negative per query when there are
    no hard negatives; a system with a ``teacher`` is distilled from the teacher trained on the
    same examples (trained first, or reused). ``name_of(system)`` names each run in the cache.
    """
    h = hard_negatives
    train_on = list(examples)
    if h == 0 and spec.trains_on_listed_negatives:
        train_on, h = with_sampled_negatives(train_on, recipe.seed), 1
    teacher = None
    if spec.teacher is not None:
        teacher_spec = system_spec(spec.teacher, spec.config)
        model, info = train_spec(teacher_spec, examples, recipe, budget, cache=cache, name_of=name_of,
                                 hard_negatives=hard_negatives)
        teacher = (model, Path(info["dir"]).name)
    return train_cached(train_on, recipe, budget, cache=cache, name=name_of(spec.name), model_config=spec.config,
                        system=spec.model, hard_negatives=h, teacher=teacher)


# ---------------------------------------------------------------------- shared flags


def add_model_args(
    p: argparse.ArgumentParser,
    *,
    layers: Sequence[int] | None = None,
    query_max_length: int | None = None,
    candidate_max_length: int | None = None,
) -> None:
    """The fresh-model config flags, the same for every task (defaults vary by task)."""
    p.add_argument("--k", type=int, default=1, help="context embeddings per candidate (default 1)")
    p.add_argument(
        "--interaction-layers", type=int, nargs="+", default=None if layers is None else list(layers),
        help="1-based backbone layers that interact; negative numbers count from the end (-1 = the "
        "last); default " + ("the model's (the last)" if layers is None else " ".join(map(str, layers))),
    )
    p.add_argument("--query-max-length", type=int, default=query_max_length,
                   help=f"query tokens of fresh models (default {query_max_length or 'the model s, 32'})")
    p.add_argument("--candidate-max-length", type=int, default=candidate_max_length,
                   help=f"candidate tokens of fresh models (default {candidate_max_length or 'the model s, 180'})")


def resolve_layers(spec: Sequence[int] | None, backbone: str | None) -> list[int] | None:
    """Interaction layers as sorted 1-based numbers; negative entries count from the backbone's end."""
    if not spec:
        return None
    if all(j > 0 for j in spec):
        return sorted(spec)
    from transformers import AutoConfig

    from ..models.backbone import default_backbone_path

    depth = AutoConfig.from_pretrained(str(backbone or default_backbone_path())).num_hidden_layers
    layers = sorted(j if j > 0 else depth + 1 + j for j in spec)
    if any(j < 1 or j > depth for j in layers) or 0 in spec:
        raise ValueError(f"--interaction-layers {list(spec)}: the backbone has {depth} layers")
    return layers


def model_config_from_args(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The fresh-model config of :func:`add_model_args`' flags (flags left unset are left out)."""
    config: dict[str, Any] = {"k": args.k}
    layers = resolve_layers(args.interaction_layers, args.backbone)
    if layers:
        config["interaction_layers"] = layers
    for name in ("query_max_length", "candidate_max_length"):
        value = vars(args)[name]
        if value is not None:
            config[name] = value
    return {**config, **extra}
