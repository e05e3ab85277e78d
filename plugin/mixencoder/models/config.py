"""Model configs as JSON-serialisable dataclasses: :class:`MixEncoderConfig` (every
hyper-parameter of MixEncoder) and :class:`BaselineConfig` (the fields every baseline shares)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Strategy = Literal["S", "C"]
Similarity = Literal["dot", "cosine"]
Mixing = Literal["linear", "scalar"]
CandidateLayout = Literal["embeddings", "precomputed"]
Quantization = Literal["none", "int8"]


class DictConfig:
    """``to_dict``/``from_dict`` of a config dataclass, as ``config.json`` stores it."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """The inverse of :meth:`to_dict`; unknown keys are an error (likely a typo)."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
        return cls(**{**cls._saved_defaults(), **data})

    @classmethod
    def _saved_defaults(cls) -> dict[str, Any]:
        """Values of fields that a config saved before they existed must load with."""
        return {}


@dataclass
class MixEncoderConfig(DictConfig):
    """Configuration of a :class:`~mixencoder.MixEncoder`.

    Attributes:
        backbone: name or directory the backbone was first loaded from (informational once saved:
            a saved model carries its own backbone weights and ``backbone_config``).
        k: number of context embeddings per candidate (the paper's k).
        strategy: ``"S"`` (k learned special tokens replace [CLS]; the paper's default) or ``"C"``
            (k learned context codes attend over the candidate's last-layer token states).
        interaction_layers: 1-based backbone layers at which candidates attend over the query.
            ``None`` means the last layer only (MixEncoder-a); the last three is MixEncoder-b.
        similarity: ``"cosine"`` (the paper's text) or ``"dot"`` (the authors' released code).
        scale: multiplier on cosine scores (a temperature for in-batch softmax training).
        learnable_scale: train ``scale`` as a parameter.
        pooled_residual: our addition, off in the paper. The score compares
            ``qbar + alpha * h`` with ``cbar + beta * mean(E)``, where ``qbar``/``cbar`` are the
            backbone's mean-pooled query/candidate embeddings and ``alpha = beta = 0`` at
            initialisation, so an untrained model scores exactly like the backbone used as a dual
            encoder (what a mean-pooled sentence encoder such as all-MiniLM already knows) and
            training adds the interaction on top instead of starting from random scores.
        mixing: how ``h`` and ``mean(E)`` join the pooled vectors when ``pooled_residual``.
            ``"linear"``: ``qbar + A h`` and ``cbar + B mean(E)`` with ``d x d`` maps ``A``, ``B``
            initialised to zero (ControlNet's "zero convolution"): still the dual encoder at
            step 0, but ``A`` and ``B`` get a full-rank gradient at once, and through them the
            interaction layers. ``"scalar"``: scalars ``alpha``, ``beta`` (the first design, and
            what configs saved before this field existed mean): at ``alpha = beta = 0`` the
            interaction layers get exactly zero gradient, and on Ubuntu-IRC the two scalars
            stayed near zero through training, so the interaction never trained.
        interaction_trains_backbone: whether training gradients flow from the interaction
            layers back into the backbone (through the query's keys/values and the candidates'
            E0). ``False`` detaches them: the backbone is then trained by the pooled vectors
            alone, as a dual encoder's would be, and the interaction learns on top of it. No
            effect on inference. (Ubuntu-IRC, MixEncoder-b, 240 steps, two seeds: no
            difference from ``True``: R@1 -0.0067 against a trained dual, ``True`` -0.0062.)
        separate_query_encoder: ``True``: queries go through their own copy of the backbone
            (``query_backbone``), candidates through ``backbone``. Training then can change the
            query side alone and leave the candidate fingerprint, and so every store built
            with it, valid (:meth:`MixEncoder.with_separate_query_encoder`,
            :func:`mixencoder.training.train_on_store`). ``False``: one shared backbone.
        num_labels: size of the classifier head over ``[h; e; |h - e|]`` (3 for NLI, 0: none).
        query_max_length: query truncation, in tokens.
        candidate_max_length: candidate truncation, in tokens (the k special tokens included).
        candidate_layout: what ``encode_candidates`` stores per candidate. ``"embeddings"``: the
            k context embeddings E0. ``"precomputed"``: E0 followed by everything of the first
            interaction layer that reads E0 alone (its Q', K', V' rows and the gate's mean-E
            term), which online scoring then reads instead of computing; same scores, more
            bytes per candidate. Recorded in the candidate fingerprint, so a store of one layout
            never serves a model of the other.
        quantization: ``"none"`` (float32) or ``"int8"``: every linear layer (backbone,
            interaction, mixing maps) runs as a dynamic int8 layer on CPU
            (:mod:`mixencoder.models.quantize`), for online scoring and for store builds alike.
            Inference only; part of the candidate fingerprint.
        backbone_config: the backbone's own config dict, filled in by the model; lets a saved
            model rebuild its backbone without the original files.
    """

    backbone: str = "all-MiniLM-L6-v2"
    k: int = 1
    strategy: Strategy = "S"
    interaction_layers: list[int] | None = None
    similarity: Similarity = "cosine"
    scale: float = 20.0
    learnable_scale: bool = False
    pooled_residual: bool = True
    mixing: Mixing = "linear"
    interaction_trains_backbone: bool = True
    separate_query_encoder: bool = False
    num_labels: int = 0
    query_max_length: int = 32
    candidate_max_length: int = 180
    candidate_layout: CandidateLayout = "embeddings"
    quantization: Quantization = "none"
    backbone_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1 context embeddings, got {self.k}")
        if self.strategy not in ("S", "C"):
            raise ValueError(f"strategy must be 'S' or 'C', got {self.strategy!r}")
        if self.similarity not in ("dot", "cosine"):
            raise ValueError(f"similarity must be 'dot' or 'cosine', got {self.similarity!r}")
        if self.mixing not in ("linear", "scalar"):
            raise ValueError(f"mixing must be 'linear' or 'scalar', got {self.mixing!r}")
        if self.candidate_layout not in ("embeddings", "precomputed"):
            raise ValueError(
                f"candidate_layout must be 'embeddings' or 'precomputed', got {self.candidate_layout!r}"
            )
        if self.quantization not in ("none", "int8"):
            raise ValueError(f"quantization must be 'none' or 'int8', got {self.quantization!r}")
        if self.strategy == "S" and self.candidate_max_length <= self.k + 1:
            raise ValueError(
                f"candidate_max_length={self.candidate_max_length} leaves no room for text "
                f"after k={self.k} special tokens"
            )
        if self.interaction_layers is not None:
            self.interaction_layers = sorted(int(j) for j in self.interaction_layers)
            if not self.interaction_layers or len(set(self.interaction_layers)) != len(
                self.interaction_layers
            ):
                raise ValueError(
                    f"interaction_layers must be distinct layer numbers, got "
                    f"{self.interaction_layers}"
                )

    def resolved_layers(self, num_layers: int) -> list[int]:
        """The interaction layers as 1-based layer numbers, checked against the backbone depth."""
        layers = self.interaction_layers or [num_layers]
        bad = [j for j in layers if not 1 <= j <= num_layers]
        if bad:
            raise ValueError(
                f"interaction_layers {bad} outside the backbone's layers 1..{num_layers}"
            )
        return layers

    @classmethod
    def _saved_defaults(cls) -> dict[str, Any]:
        # Configs saved before ``mixing`` existed mixed by scalars (their weights hold alpha/beta).
        return {"mixing": "scalar"}


@dataclass
class BaselineConfig(DictConfig):
    """Fields every baseline has (a subclass adds its own).

    Attributes:
        backbone: name or directory the backbone was first loaded from (informational once
            saved: a saved model carries its weights and ``backbone_config``).
        query_max_length: query truncation, in tokens ([CLS] and [SEP] included).
        candidate_max_length: candidate truncation, in tokens ([CLS] and [SEP] included).
        backbone_config: the backbone's own config dict, filled in by the model.
    """

    backbone: str = "all-MiniLM-L6-v2"
    query_max_length: int = 32
    candidate_max_length: int = 180
    backbone_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("query_max_length", "candidate_max_length"):
            if int(getattr(self, name)) < 3:
                raise ValueError(f"{name} must be >= 3 tokens, got {getattr(self, name)}")
        for name, allowed in (("similarity", ("dot", "cosine")), ("pooling", ("mean", "cls"))):
            value = getattr(self, name, None)
            if value is not None and value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
