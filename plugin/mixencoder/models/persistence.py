"""Saving and loading models, shared by :class:`~mixencoder.models.MixEncoder` and every baseline.

A saved model is a directory with ``config.json`` (``model_type``, ``format_version``,
``mixencoder_version`` and the model's ``config`` dict, which carries the backbone's own config
under ``backbone_config``), ``model.safetensors`` (the whole ``state_dict``; no pickles) and the
tokenizer files. Each file is written to a temporary name and renamed, so an interrupted save
never leaves a half-written file under the final name.

Also here: the candidate-fingerprint digest (weights that shape the stored reps, plus the
tokenizer), which keys candidate stores on disk. Changing what it hashes invalidates them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_BACKBONE_NAME = "all-MiniLM-L6-v2"


# ---------------------------------------------------------------------- JSON


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``path`` through a temporary file and a rename; a failed write leaves no temp file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")


def _as_os_error(e: BaseException, what: Path) -> BaseException:
    """An I/O failure as an ``OSError`` naming ``what``: safetensors and tokenizers raise their
    own types carrying only "(os error N)"; anything else is returned unchanged."""
    if isinstance(e, OSError):
        return e
    m = _OS_ERROR_CODE.search(str(e)) if isinstance(e, Exception) else None
    if m is None:
        return e
    code = int(m.group(1))
    hint = " (the disk is full)" if code == errno.ENOSPC else ""
    return OSError(code, f"could not save the model to {what}{hint}: {type(e).__name__}: {e}")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mixencoder")
    except PackageNotFoundError:
        return "0+unknown"


def read_config(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The parsed ``config.json`` of ``directory``; None when it has none (a hub name, say).

    The result may be a backbone's config as well as a saved model's: see :func:`is_saved_model`.
    """
    path = Path(directory) / CONFIG_FILE
    return read_json(path) if path.is_file() else None


def is_saved_model(data: dict[str, Any]) -> bool:
    """Whether a ``config.json`` was written by :func:`save_model` (not a backbone's)."""
    return "format_version" in data and "config" in data


# ---------------------------------------------------------------------- saving


def save_model(
    directory: str | os.PathLike, model_type: str, config: dict[str, Any], model: nn.Module, tokenizer: Any
) -> None:
    """Write ``model.safetensors``, the tokenizer files and ``config.json`` (in that order)."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = out / f".{WEIGHTS_FILE}.tmp"
    data = {
        "model_type": model_type,
        "format_version": FORMAT_VERSION,
        "mixencoder_version": package_version(),
        "config": config,
    }
    try:
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out / WEIGHTS_FILE)
        tokenizer.save_pretrained(str(out))
        write_json_atomic(out / CONFIG_FILE, data)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        error = _as_os_error(e, out)
        if error is e:
            raise
        raise error from e


# ---------------------------------------------------------------------- loading


def build_from_backbone(
    factory: Callable[[Any, nn.Module, Any], nn.Module],
    config_class: Callable[..., Any],
    name_or_dir: str | os.PathLike | None,
    path: str | os.PathLike,
    config: dict[str, Any],
) -> Any:
    """A fresh model ``factory(config_class(backbone=name, **config), backbone, tokenizer)`` on
    top of the backbone at ``path`` (hub name or directory), in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    # A checkpoint that has pooler weights (the bundled MiniLM has) loads them, so that
    # transformers reports nothing for it, and then drops the pooler: no model here uses it,
    # and its absence keeps the backbone's state dict (and every candidate fingerprint) as before.
    with_pooler = _has_pooler_weights(path)
    backbone = AutoModel.from_pretrained(str(path), add_pooling_layer=with_pooler)
    if with_pooler and getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    name = DEFAULT_BACKBONE_NAME if name_or_dir is None else str(name_or_dir)
    return factory(config_class(backbone=name, **config), backbone, tokenizer).eval()


def _has_pooler_weights(path: str | os.PathLike) -> bool:
    """Whether a local checkpoint's ``model.safetensors`` holds pooler weights (False for hub
    names and other formats: they load without a pooler, as before)."""
    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        return any(key.startswith("pooler.") or ".pooler." in key for key in f.keys())


def load_saved(
    factory: Callable[[Any, nn.Module, Any], nn.Module],
    config_class: Any,
    path: Path,
    data: dict[str, Any],
) -> Any:
    """A model saved by :func:`save_model` in ``path`` (whose parsed ``config.json`` is ``data``):
    ``factory(config_class.from_dict(data["config"]), backbone, tokenizer)`` with the saved
    weights loaded, in eval mode."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    version = data.get("format_version", 0)
    if version > FORMAT_VERSION:
        logger.warning(
            "%s was written by a newer mixencoder (format %s > %s); loading may fail",
            path, version, FORMAT_VERSION,
        )
    config = config_class.from_dict(data["config"])
    bcfg = dict(config.backbone_config)
    backbone_type = bcfg.pop("model_type")
    backbone_config = AutoConfig.for_model(backbone_type, **bcfg)
    backbone = AutoModel.from_config(backbone_config, add_pooling_layer=False)
    # Given the backbone's config, the tokenizer does not read config.json, whose model_type
    # ("virt", ...) transformers would warn is not a type it knows.
    tokenizer = AutoTokenizer.from_pretrained(str(path), config=backbone_config)
    model = factory(config, backbone, tokenizer)
    load_weights(model, path / WEIGHTS_FILE)
    return model.eval()


def load_weights(model: nn.Module, weights: Path) -> None:
    """Load a ``model.safetensors`` into ``model``; every tensor name must match."""
    from safetensors.torch import load_file

    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; the saved model is incomplete")
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{weights} is not a readable safetensors file: {e}") from e
    load_state_exactly(model, state, f"{weights} does not match its config.json")


def load_state_exactly(model: nn.Module, state: dict[str, Any], mismatch: str) -> None:
    """``model.load_state_dict(state)`` where every name must match; else ``ValueError`` that
    starts with ``mismatch`` and names the first missing and unexpected tensors."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{mismatch}: missing {missing[:5]}, unexpected {unexpected[:5]}")


# ---------------------------------------------------------------------- fingerprint


def tokenizer_bytes(tokenizer: Any) -> bytes:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # Truncation and padding are per-call state the tokenizer keeps after use, not identity.
        spec.pop("truncation", None)
        spec.pop("padding", None)
        return json.dumps(spec, sort_keys=True).encode()
    return json.dumps(sorted(tokenizer.get_vocab().items())).encode()


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()


def candidate_digest(
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    tokenizer: Any,
    unnamed: Iterable[torch.Tensor] = (),
) -> str:
    """sha256 hex of ``named_tensors`` (sorted by name; each name, then its raw bytes), then the
    raw bytes of each ``unnamed`` tensor in order, then the tokenizer (:func:`tokenizer_bytes`).

    Stores on disk are keyed by this value: do not change what or in which order it hashes.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda kv: kv[0]):
        digest.update(name.encode())
        digest.update(_tensor_bytes(tensor))
    for tensor in unnamed:
        digest.update(_tensor_bytes(tensor))
    digest.update(tokenizer_bytes(tokenizer))
    return digest.hexdigest()
