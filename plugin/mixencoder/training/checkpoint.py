"""Resumable training checkpoints without pickles.

Layout of ``<output_dir>/checkpoint-latest``::

    model/                  the model's save_pretrained: config.json, model.safetensors, tokenizer
    optimizer.safetensors   AdamW state flattened per parameter: "<name>.exp_avg", ...
    rng.safetensors         torch CPU (and CUDA) generator states as uint8 tensors, numpy keys
    trainer_state.json      step counters, configs, numpy/python RNG scalars; written last

A checkpoint is written into a hidden temporary directory and then swapped in by renames, so a
crash at any moment leaves either the previous checkpoint or the new one, never a half-written
one; leftovers of a crash are removed by :func:`clean_stale`.

A save that fails (a full disk, say) removes its temporary directory, leaves the previous
checkpoint in place and raises an ``OSError`` with the write's errno, naming the checkpoint, the
step and the previous checkpoint's state. safetensors and tokenizers report I/O errors as their own
exception types (``SafetensorError``, a bare ``Exception`` carrying "os error 28"); those are
re-raised as ``OSError`` too, so a caller can catch one type.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..models.base import RankingModel
from ..models.persistence import load_state_exactly
from .config import TrainingConfig

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint-latest"
CHECKPOINT_FORMAT_VERSION = 1
STATE_FILE = "trainer_state.json"
_TMP_PREFIX = f".{CHECKPOINT_NAME}.tmp-"
_OLD_PREFIX = f".{CHECKPOINT_NAME}.old-"
# Model-config fields that do not shape the weights: the backbone name is informational once a
# model carries its backbone_config, and a path may be spelt differently between two runs.
_MODEL_CONFIG_IGNORED = frozenset({"backbone"})


@dataclass
class TrainerState:
    """Where a run stands.

    Attributes:
        global_step: optimisation steps done so far (also the scheduler's step).
        epoch: the current epoch (0-based).
        position: batches of the current epoch already consumed.
    """

    global_step: int = 0
    epoch: int = 0
    position: int = 0


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    """``<output_dir>/checkpoint-latest``."""
    return Path(output_dir) / CHECKPOINT_NAME


def clean_stale(output_dir: str | os.PathLike) -> None:
    """Removes what an interrupted :func:`save_checkpoint` left behind.

    A temporary directory is always garbage. A backup of the previous checkpoint is garbage once
    ``checkpoint-latest`` exists; if a crash hit between the two renames of the swap, the backup
    is the newest complete checkpoint and is moved back into place.
    """
    out = Path(output_dir)
    if not out.is_dir():
        return
    for tmp in out.glob(_TMP_PREFIX + "*"):
        logger.warning("Removing %s, left by an interrupted checkpoint save", tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    latest = checkpoint_dir(out)
    backups = sorted(out.glob(_OLD_PREFIX + "*"), key=lambda p: p.stat().st_mtime)
    if not latest.exists() and backups and (backups[-1] / STATE_FILE).is_file():
        logger.warning("Restoring %s from %s (interrupted swap)", latest, backups[-1])
        os.rename(backups[-1], latest)
        backups = backups[:-1]
    for old in backups:
        shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint under ``output_dir``, or ``None``."""
    clean_stale(output_dir)
    latest = checkpoint_dir(output_dir)
    if not latest.exists():
        return None
    if not (latest / STATE_FILE).is_file():
        raise ValueError(f"{latest} has no {STATE_FILE}: it is not a checkpoint of this trainer")
    return latest


def data_fingerprint(examples: Sequence[Any]) -> str:
    """sha256 over the examples in order, so a run cannot resume on different data."""
    digest = hashlib.sha256()
    digest.update(str(len(examples)).encode())
    for ex in examples:
        digest.update(json.dumps(asdict(ex), sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()


def save_checkpoint(
    output_dir: str | os.PathLike,
    model: RankingModel,
    optimizer: torch.optim.Optimizer,
    param_names: Sequence[str],
    state: TrainerState,
    config: TrainingConfig,
    data_hash: str,
) -> Path:
    """Writes ``checkpoint-latest`` atomically and returns its path.

    Args:
        output_dir: the run's output directory.
        model: the model being trained.
        optimizer: its AdamW; ``param_names`` names its parameters in param-group order.
        param_names: one name per optimizer parameter, in the order of ``optimizer.param_groups``.
        state: the counters after the last finished step.
        config: the run's training config.
        data_hash: :func:`data_fingerprint` of the training examples.
    """
    from safetensors.torch import save_file

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    latest = checkpoint_dir(out)
    tmp = out / f"{_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
    except OSError as e:
        raise _save_error(e, latest, state) from e
    try:
        model.save_pretrained(tmp / "model")
        opt_tensors, opt_scalars = _flatten_optimizer(optimizer, param_names)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"), metadata={"format": "pt"})
        rng_tensors, rng_scalars = _capture_rng()
        save_file(rng_tensors, str(tmp / "rng.safetensors"), metadata={"format": "pt"})
        data = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "global_step": state.global_step,
            "epoch": state.epoch,
            "position": state.position,
            "scheduler_step": state.global_step,
            "training_config": config.to_dict(),
            "model_config": model.config.to_dict(),
            "data_fingerprint": data_hash,
            "optimizer": {"param_names": list(param_names), "scalars": opt_scalars},
            "rng": rng_scalars,
        }
        # Written last: a directory holding trainer_state.json is a complete checkpoint.
        with open(tmp / STATE_FILE, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        translated = _save_error(e, latest, state)
        if translated is None:
            raise
        raise translated from e
    # rename() cannot replace a non-empty directory, so swap via a backup; clean_stale()
    # recovers the backup if a crash lands between the two renames.
    backup = None
    try:
        if latest.exists():
            backup = out / f"{_OLD_PREFIX}{uuid.uuid4().hex[:8]}"
            os.rename(latest, backup)
        os.rename(tmp, latest)
    except BaseException as e:
        # A failed rename (ENOSPC on a full directory, say): put the previous checkpoint back
        # and drop the new one, so nothing but the previous checkpoint is left.
        if backup is not None and backup.exists() and not latest.exists():
            try:
                os.rename(backup, latest)
            except OSError:  # left for clean_stale(), which moves the backup back
                logger.warning("could not move %s back to %s", backup, latest)
        shutil.rmtree(tmp, ignore_errors=True)
        translated = _save_error(e, latest, state, backup)
        if translated is None:
            raise
        raise translated from e
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    logger.debug("Saved checkpoint at step %d to %s", state.global_step, latest)
    return latest


def load_checkpoint(
    path: str | os.PathLike,
    model: RankingModel,
    optimizer: torch.optim.Optimizer,
    param_names: Sequence[str],
    config: TrainingConfig,
    data_hash: str,
) -> TrainerState:
    """Restores model weights, optimizer state and RNG states from a checkpoint, in place.

    Raises:
        ValueError: the checkpoint belongs to a different model config, training config,
            parameter set or training data, or is unreadable.
    """
    from safetensors.torch import load_file

    path = Path(path)
    try:
        data = json.loads((path / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path / STATE_FILE} is not a readable checkpoint state: {e}") from e
    if data.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"{path} was written by a newer trainer (format {data.get('format_version')})"
        )
    _check_same(
        "training config",
        TrainingConfig.from_dict(data["training_config"]).identity(),
        config.identity(),
        path,
    )
    ignore = _MODEL_CONFIG_IGNORED
    saved_model = {k: v for k, v in data["model_config"].items() if k not in ignore}
    current_model = {k: v for k, v in model.config.to_dict().items() if k not in ignore}
    _check_same("model config", saved_model, current_model, path)
    if data["data_fingerprint"] != data_hash:
        raise ValueError(
            f"{path} was trained on different examples (data fingerprint differs); resume with "
            "the same examples in the same order, or use a new output directory / resume=False"
        )
    saved_names = data["optimizer"]["param_names"]
    if list(saved_names) != list(param_names):
        raise ValueError(f"{path} holds optimizer state for a different set of parameters")

    try:
        weights = load_file(str(path / "model" / "model.safetensors"))
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        rng_tensors = load_file(str(path / "rng.safetensors"))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path} holds an unreadable safetensors file: {e}") from e
    load_state_exactly(model, weights, f"{path} does not match the model")
    _restore_optimizer(optimizer, param_names, opt_tensors, data["optimizer"]["scalars"])
    _restore_rng(rng_tensors, data["rng"])
    return TrainerState(
        global_step=int(data["global_step"]),
        epoch=int(data["epoch"]),
        position=int(data["position"]),
    )


# ---------------------------------------------------------------------- helpers

_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")


def _save_error(
    e: BaseException, latest: Path, state: TrainerState, backup: Path | None = None
) -> OSError | None:
    """The ``OSError`` to raise for a failed save, or ``None`` if ``e`` is not an I/O error.

    Keeps the errno (also of safetensors' and tokenizers' own error types, which carry it only
    as "(os error N)" in their message) and says which checkpoint is left.
    """
    if isinstance(e, OSError):
        code, detail = e.errno, e.strerror or str(e)
        if e.filename is not None:
            detail = f"{detail}: {e.filename}"
    elif isinstance(e, Exception) and (m := _OS_ERROR_CODE.search(str(e))):
        code, detail = int(m.group(1)), f"{type(e).__name__}: {e}"
    else:
        return None
    if (latest / STATE_FILE).is_file():
        left = f"{latest} still holds the previous checkpoint"
        try:
            left += f" (step {json.loads((latest / STATE_FILE).read_text())['global_step']})"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    elif backup is not None and backup.exists():
        left = f"the previous checkpoint is at {backup}; the next train() moves it back"
    else:
        left = "no earlier checkpoint exists"
    hint = " (the disk is full: free space, then resume)" if code == errno.ENOSPC else ""
    message = (
        f"could not save the training checkpoint of step {state.global_step} to {latest}: "
        f"{detail}{hint}; {left}; nothing else was written"
    )
    return OSError(message) if code is None else OSError(code, message)


def _check_same(what: str, saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    # Round-trip through JSON so tuples/lists and int/float spellings compare as stored.
    saved = json.loads(json.dumps(saved))
    current = json.loads(json.dumps(current))
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
        for k in sorted(set(saved) | set(current))
        if saved.get(k) != current.get(k)
    ]
    if diffs:
        shown = "; ".join(d if len(d) < 200 else d[:200] + "..." for d in diffs[:8])
        raise ValueError(
            f"cannot resume from {path}: its {what} differs ({shown}). Use the original "
            "settings, another output directory, or resume=False to start over"
        )


def _flatten_optimizer(
    optimizer: torch.optim.Optimizer, param_names: Sequence[str]
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if len(params) != len(param_names):
        raise ValueError("param_names does not name every optimizer parameter")
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, p in zip(param_names, params):
        for key, value in optimizer.state.get(p, {}).items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}.{key}"] = value.detach().contiguous().cpu()
            else:  # e.g. a float step in older torch versions
                scalars.setdefault(name, {})[key] = value
    return tensors, scalars


def _restore_optimizer(
    optimizer: torch.optim.Optimizer,
    param_names: Sequence[str],
    tensors: dict[str, torch.Tensor],
    scalars: dict[str, dict[str, Any]],
) -> None:
    per_param: dict[int, dict[str, Any]] = {}
    index = {name: i for i, name in enumerate(param_names)}
    for key, value in tensors.items():
        name, _, field = key.rpartition(".")
        if name not in index:
            raise ValueError(f"optimizer state for unknown parameter {name!r}")
        per_param.setdefault(index[name], {})[field] = value
    for name, fields in scalars.items():
        per_param.setdefault(index[name], {}).update(fields)
    state_dict = optimizer.state_dict()
    # load_state_dict moves each state tensor to its parameter's device and dtype (keeping
    # "step" as is), exactly as it does for torch's own pickled state.
    optimizer.load_state_dict({"state": per_param, "param_groups": state_dict["param_groups"]})


def _capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s.cpu()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # uint32 keys stored as int64: safetensors' uint32 support varies across torch versions.
    tensors["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    scalars = {
        "numpy": {
            "kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)
        },
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }
    return tensors, scalars


def _restore_rng(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"].to(torch.uint8))
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda_states])
        else:
            logger.warning(
                "checkpoint holds %d CUDA RNG states but %d devices are visible; CUDA dropout "
                "will not replay exactly", len(cuda_states), torch.cuda.device_count(),
            )
    np_state = scalars["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            tensors["numpy.keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    py = scalars["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
