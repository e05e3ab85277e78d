"""Every architecture by name: loading a saved model by its ``config.json``'s ``model_type``,
and building the paper's systems (``mixencoder-a``, ``poly-64``, ...) from a backbone.

An explicit table, no guessing from names: a saved model's ``config.json`` says which class
wrote it; a backbone directory says nothing, so loading one needs ``model_type=``.
"""

from __future__ import annotations

import os
from typing import Any

from .backbone import default_backbone_path
from .base import RankingModel
from .biencoder import BiEncoder
from .colbert import ColBERT
from .cross import CrossEncoder
from .deformer import Deformer
from .mixencoder import MixEncoder
from .persistence import is_saved_model, read_config
from .poly import PolyEncoder
from .virt import VIRT

MODEL_TYPES: dict[str, type[RankingModel]] = {
    "mixencoder": MixEncoder,
    "dual": BiEncoder,
    "cross": CrossEncoder,
    "poly": PolyEncoder,
    "colbert": ColBERT,
    "deformer": Deformer,
    "virt": VIRT,
}


def load_model(
    path_or_name: str | os.PathLike | None = None, model_type: str | None = None, **config: Any
) -> RankingModel:
    """Load a saved model of any registered type, or build a fresh one from a backbone.

    Args:
        path_or_name: a directory written by some model's ``save_pretrained`` (its
            ``config.json`` names the class); or a backbone (hub name or BERT directory);
            ``None`` for the bundled all-MiniLM-L6-v2.
        model_type: required for a backbone (which class to build); for a saved model it must
            match the saved ``model_type`` if given.
        **config: config fields of a fresh model.

    Raises:
        ValueError: unknown ``model_type``, a mismatch with the saved one, or a backbone
            without ``model_type``.
    """
    if model_type is not None and model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; known: {sorted(MODEL_TYPES)}")
    path = default_backbone_path() if path_or_name is None else path_or_name
    saved_type = None
    data = read_config(path)
    if data is not None and is_saved_model(data):
        saved_type = data.get("model_type")
        if saved_type not in MODEL_TYPES:
            raise ValueError(
                f"{path} was saved with model_type {saved_type!r}, which this version does "
                f"not know; known: {sorted(MODEL_TYPES)}"
            )
    if saved_type is not None:
        if model_type is not None and model_type != saved_type:
            raise ValueError(f"{path} holds a saved {saved_type!r} model, not {model_type!r}")
        return MODEL_TYPES[saved_type].from_pretrained(path_or_name, **config)
    if model_type is None:
        raise ValueError(
            f"{path} is a backbone, not a saved model: pass model_type= one of {sorted(MODEL_TYPES)}"
        )
    return MODEL_TYPES[model_type].from_pretrained(path_or_name, **config)


def _num_layers(backbone: str | os.PathLike | None) -> int:
    from transformers import AutoConfig

    path = default_backbone_path() if backbone is None else backbone
    return int(AutoConfig.from_pretrained(str(path)).num_hidden_layers)


def _last(n: int):
    return lambda layers: list(range(layers - n + 1, layers + 1))


# name -> (model_type, config); a callable value is given the backbone's depth.
SYSTEMS: dict[str, tuple[str, dict[str, Any]]] = {
    "dual": ("dual", {}),
    "cross": ("cross", {}),
    "poly-64": ("poly", {"num_codes": 64}),
    "poly-360": ("poly", {"num_codes": 360}),
    "colbert": ("colbert", {}),
    "deformer": ("deformer", {}),
    "virt": ("virt", {}),
    "mixencoder-a": ("mixencoder", {"k": 1}),  # k=1, last layer
    "mixencoder-b": ("mixencoder", {"k": 1, "interaction_layers": _last(3)}),
    "mixencoder-c": ("mixencoder", {"k": 2, "interaction_layers": _last(3)}),
    "mixencoder-a-C": ("mixencoder", {"k": 1, "strategy": "C"}),
    **{f"mixencoder-k{k}": ("mixencoder", {"k": k}) for k in (1, 2, 3, 4, 10)},  # Table 4
}


def build_system(name: str, backbone: str | os.PathLike | None = None, **overrides: Any) -> RankingModel:
    """A fresh (untrained) model of one of the paper's systems, by its exact name.

    Args:
        name: a key of :data:`SYSTEMS` (``mixencoder-a``, ``poly-64``, ``colbert``, ...).
        backbone: backbone name or directory; ``None`` for the bundled all-MiniLM-L6-v2.
        **overrides: config fields that replace the system's own.
    """
    model_type, resolved = system_fields(name, backbone, **overrides)
    return MODEL_TYPES[model_type].from_pretrained(backbone, **resolved)


def system_fields(name: str, backbone: str | os.PathLike | None = None, **overrides: Any) -> tuple[str, dict[str, Any]]:
    """``(model_type, config fields)`` that :func:`build_system` builds ``name`` with, without
    loading any weights (only the backbone's depth, for systems that name "the last n layers")."""
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; known: {sorted(SYSTEMS)}")
    model_type, config = SYSTEMS[name]
    resolved = {}
    for key, value in config.items():
        resolved[key] = value(_num_layers(backbone)) if callable(value) else value
    resolved.update(overrides)
    return model_type, resolved
