"""The training loop: AdamW, linear warm-up/decay, clipping, checkpoints, exact resume, DDP.

* :func:`collate_matching` / :func:`collate_pairs` turn examples into a tokenised batch;
* :func:`train_step` computes one batch's loss from a (possibly DDP-wrapped) model, nothing
  else;
* :func:`train` owns the data order, optimizer, schedule, precision, checkpoints and budget.

Data-parallel training: under ``torchrun --nproc_per_node N`` (or any initialised process
group) :func:`train` wraps the model in DistributedDataParallel. ``TrainingConfig.batch_size``
stays the *global* batch: each rank collates its ``batch_size / N`` slice of every global
batch, in-batch negatives are gathered from all ranks (:mod:`.distributed`), and per-step losses
and updates equal single-process training on the same global batch. Rank 0 logs and writes
checkpoints; every rank loads one to resume (a checkpoint resumes with any number of ranks).

The trainer reads a model's capabilities (:class:`~mixencoder.models.RankingModel`) and never
probes for methods. Models that cannot score all query-candidate pairs of a batch
(cross-encoders) declare ``supports_in_batch_negatives = False`` and are trained through
``forward_grouped(q_tok, c_tok, group_size) -> (B, group_size)``: each query is scored against
its own positive (column 0) and its ``hard_negatives_per_query`` hard negatives.

Teacher distillation (``supports_distillation``: VIRT): ``train(..., teacher=cross_encoder)`` with
``TrainingConfig.distillation_weight = lambda > 0`` adds ``lambda x model.distillation_loss(
teacher, queries, candidates)`` to every matching step's loss, over the pairs of
:func:`distillation_pairs` (each query with its positive and its hard negatives). The teacher is
frozen (eval mode, no gradients) and is not checkpointed: pass the same teacher on resume.
Single-process only (a process group with several ranks refuses a teacher).

Determinism: the data order of epoch e is a permutation drawn from ``(seed, e)``, hard negatives
of batch b from ``(seed, e, b)``, and the torch/numpy/python RNG states (dropout) travel in the
checkpoint, so a run interrupted and resumed ends with the same weights as one run straight
through (on the same device and thread count). Under DDP, dropout is re-seeded per step and
rank from ``(seed, step, rank)``, which keeps resumes exact without per-rank RNG state.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..models.base import RankingModel
from ..models.text import show_progress
from . import distributed as D
from .batches import Batch, MatchingBatch, PairBatch
from .checkpoint import (
    TrainerState,
    checkpoint_dir,
    data_fingerprint,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .config import TrainingConfig
from .examples import MatchingExample, PairExample
from .losses import classification_loss, grouped_loss, in_batch_negatives_loss

logger = logging.getLogger(__name__)

FINAL_NAME = "final"


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
        global_step: optimisation steps done in total (across resumes).
        epoch: the epoch the run stands in (0-based; equals ``epochs`` after a full run).
        stopped_reason: ``"completed"`` (planned steps done) or ``"max_seconds"``.
        losses: the loss of each step run by this invocation (with a teacher: the total,
            ``loss + distillation_weight x distillation``).
        distillation_losses: with a teacher, the unweighted distillation term of each step run
            by this invocation; empty without one.
        output_dir: the run's directory.
        final_dir: where the final model was saved (``output_dir/final``).
        checkpoint_dir: the resumable checkpoint (``output_dir/checkpoint-latest``).
        resumed_from_step: the step a checkpoint was resumed from, or ``None``.
        seconds: wall-clock seconds of this invocation's training loop.
        steps_per_second: steps of this invocation divided by ``seconds``.
    """

    global_step: int
    epoch: int
    stopped_reason: str
    output_dir: Path
    final_dir: Path
    checkpoint_dir: Path
    losses: list[float] = field(default_factory=list)
    distillation_losses: list[float] = field(default_factory=list)
    resumed_from_step: int | None = None
    seconds: float = 0.0
    steps_per_second: float = 0.0


# ---------------------------------------------------------------------- batches and the step


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of one epoch: a permutation of ``range(n)`` fixed by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch; the partial tail is dropped (in-batch negatives want full
    batches), and a set smaller than one batch makes a single smaller batch."""
    return max(1, n // batch_size)


def collate_matching(
    model: Any,
    examples: Sequence[MatchingExample],
    hard_negatives: int = 0,
    rng: np.random.Generator | None = None,
    *,
    rows: slice | None = None,
    grouped: bool = False,
) -> MatchingBatch:
    """Tokenises matching examples into the ``B x (B + B*h)`` layout of the in-batch loss.

    Each query contributes exactly ``hard_negatives`` negatives: all of them, in order, when it
    has exactly that many; drawn without replacement by ``rng`` when it has more; cycled when it
    has fewer (so that the score matrix keeps its fixed layout).

    Args:
        model: provides ``tokenize_queries`` / ``tokenize_candidates``.
        examples: the (global) batch's examples.
        hard_negatives: h per query.
        rng: draws the hard negatives; the draws are made for the whole global batch, in order,
            so a rank's slice gets exactly the negatives single-process training would use.
        rows: tokenise only these examples (a data-parallel rank's slice); ids and negatives
            still cover the global batch.
        grouped: lay candidates out per query (positive first, then its negatives) for models
            scored through ``forward_grouped``.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    negatives: list[list[str]] = [[] for _ in examples]
    for i, ex in enumerate(examples):
        if not hard_negatives:
            break
        negs = ex.negatives
        if not negs:
            raise ValueError(
                f"hard_negatives_per_query={hard_negatives} but the example for query "
                f"{ex.query[:60]!r} has no negatives"
            )
        if len(negs) == hard_negatives:
            negatives[i] = list(negs)
        elif len(negs) > hard_negatives:
            picked = rng.choice(len(negs), size=hard_negatives, replace=False)
            negatives[i] = [negs[int(j)] for j in picked]
        else:
            order = rng.permutation(len(negs))
            negatives[i] = [negs[int(order[j % len(negs)])] for j in range(hard_negatives)]
    rows = rows if rows is not None else slice(0, len(examples))
    local = range(len(examples))[rows]
    if grouped:
        candidates = [t for i in local for t in [examples[i].positive, *negatives[i]]]
    else:
        candidates = [examples[i].positive for i in local]
        candidates.extend(t for i in local for t in negatives[i])
    return MatchingBatch(
        queries=model.tokenize_queries([examples[i].query for i in local]),
        candidates=model.tokenize_candidates(candidates),
        query_ids=[ex.query if ex.query_id is None else ex.query_id for ex in examples],
        positive_ids=[ex.positive if ex.positive_id is None else ex.positive_id for ex in examples],
        hard_negatives=hard_negatives,
        group_size=1 + hard_negatives if grouped else 0,
        first_row=local.start if len(local) else 0,
    )


def collate_pairs(model: RankingModel, examples: Sequence[PairExample]) -> PairBatch:
    """Tokenises pair examples: premises as queries, hypotheses as candidates."""
    return PairBatch(
        queries=model.tokenize_queries([ex.premise for ex in examples]),
        candidates=model.tokenize_candidates([ex.hypothesis for ex in examples]),
        labels=torch.tensor([ex.label for ex in examples], dtype=torch.long, device=model.device),
    )


def batch_loss(model: Any, batch: Batch) -> torch.Tensor:
    """One batch's loss from an unwrapped model; what :class:`LossModule` runs under DDP.

    Matching: all-pairs in-batch negatives (gathered from every rank when a process group with
    more than one rank exists), or, for a model with ``supports_in_batch_negatives = False``,
    ``forward_grouped`` scores with cross-entropy on column 0. Pairs: classification loss.
    """
    if isinstance(batch, MatchingBatch):
        if batch.group_size:
            b = next(iter(batch.queries.values())).shape[0]
            scores = model.forward_grouped(batch.queries, batch.candidates, batch.group_size)
            if tuple(scores.shape) != (b, batch.group_size):
                raise ValueError(
                    f"{type(model).__name__}.forward_grouped returned scores of shape "
                    f"{tuple(scores.shape)}; expected ({b}, {batch.group_size})"
                )
            return grouped_loss(scores)
        if _world_size() > 1:
            return D.gathered_in_batch_loss(model, batch)
        scores = model(batch.queries, batch.candidates)  # (B, B + B*h)
        return in_batch_negatives_loss(scores, batch.query_ids, batch.positive_ids)
    if isinstance(batch, PairBatch):
        logits = model.classify_torch(batch.queries, batch.candidates)
        return classification_loss(logits, batch.labels)
    raise TypeError(f"unknown batch type {type(batch).__name__}")


class LossModule(nn.Module):
    """The module DDP wraps: its forward is the batch loss, so every forward pass (matching,
    grouped or pairs) goes through DDP's ``forward`` as DDP requires."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> torch.Tensor:
        return batch_loss(self.model, batch)


def train_step(model: nn.Module, batch: Batch) -> torch.Tensor:
    """One batch's loss (no backward, no optimizer): what a data-parallel worker computes.

    Args:
        model: a :class:`~mixencoder.models.RankingModel` (or any model with its training API), a
            :class:`LossModule`, or a DistributedDataParallel wrapping a LossModule (then the
            forward pass runs through DDP).
        batch: a :class:`MatchingBatch` or :class:`PairBatch`.

    Returns:
        The scalar float32 loss of this process's rows (the mean over them).
    """
    if isinstance(model, (LossModule, DistributedDataParallel)):
        return model(batch)
    return batch_loss(model, batch)


def distillation_pairs(batch: MatchingBatch) -> torch.Tensor:
    """For each candidate row of a matching batch, the row of its own query.

    ``model.distillation_loss(teacher, queries, candidates)`` (VIRT) takes *aligned* pairs
    (query i, candidate i), so the pairs distilled are each query with its positive and with its
    hard negatives (its queries repeated to align with every candidate row it owns): exactly the
    candidates collated for it, with no extra tokenisation. The in-batch pairs (query i with
    query j's positive) are left out: they would cost ``B x B`` teacher passes over the
    concatenated pairs for a term the paper computes on each query's own candidates.

    Returns:
        ``(number of candidate rows,)`` long indices into the batch's queries.
    """
    b = next(iter(batch.queries.values())).shape[0]
    rows = torch.arange(b)
    if batch.group_size:  # query i's positive then its negatives, group by group
        return rows.repeat_interleave(batch.group_size)
    # b positives in query order, then each query's h hard negatives in query order
    return torch.cat([rows, rows.repeat_interleave(batch.hard_negatives)])


def distillation_term(model: Any, teacher: nn.Module, batch: MatchingBatch) -> torch.Tensor:
    """The unweighted distillation loss of a matching batch: ``model.distillation_loss`` over
    :func:`distillation_pairs` (queries repeated to align with their candidates)."""
    model = _unwrap(model)
    q_rows = distillation_pairs(batch)
    queries = {k: v[q_rows.to(v.device)] for k, v in batch.queries.items()}
    return model.distillation_loss(teacher, queries, batch.candidates)


# ---------------------------------------------------------------------- optimisation pieces


def build_optimizer(
    model: RankingModel, config: TrainingConfig
) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW with weight decay on weight matrices only.

    Biases, LayerNorm parameters and 0-d scalars (the pooled-residual mixing weights, a learned
    scale) get no decay: decaying them is a prior on their value, not a regulariser.

    Returns:
        The optimizer and the names of its parameters in param-group order (the checkpoint's
        key for each parameter's state).
    """
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    fresh = set(model.new_parameter_names())
    # (decay?, fresh?) -> names; fixed group order so a checkpoint's state maps back by name.
    buckets: dict[tuple[bool, bool], list[tuple[str, nn.Parameter]]] = {
        key: [] for key in ((True, False), (False, False), (True, True), (False, True))
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = not (id(p) in no_decay_ids or name.endswith("bias") or p.dim() == 0)
        buckets[(decays, name in fresh)].append((name, p))
    groups, names = [], []
    for (decays, is_fresh), members in buckets.items():
        if not members:
            continue
        groups.append({
            "params": [p for _, p in members],
            "weight_decay": config.weight_decay if decays else 0.0,
            # the trainer sets each step's lr as peak x schedule x this scale
            "lr_scale": config.new_parameters_lr_scale if is_fresh else 1.0,
        })
        names.extend(n for n, _ in members)
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate)
    return optimizer, names


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier on the peak learning rate for 0-based ``step``: linear warm-up over
    ``warmup_steps`` steps, then linear decay towards 0 at ``total_steps``. Never 0 on a step
    that is run (a zero-lr step would only waste the batch)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def seed_everything(seed: int) -> None:
    """Seeds python ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_precision(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (``torch.bfloat16``) or ``None`` for plain fp32."""
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if mixed_precision == "fp32":
        return None
    if mixed_precision == "bf16":
        if not bf16_ok:
            raise ValueError(
                f"mixed_precision='bf16' needs a CUDA device with bf16 support, got {device}; "
                "use 'auto' or 'fp32'"
            )
        return torch.bfloat16
    return torch.bfloat16 if bf16_ok else None


# ---------------------------------------------------------------------- the loop


def train(
    model: RankingModel,
    examples: Sequence[MatchingExample] | Sequence[PairExample],
    config: TrainingConfig,
    *,
    output_dir: str | os.PathLike,
    resume: bool = True,
    show_progress_bar: bool | None = None,
    device: str | torch.device | None = None,
    on_step: Callable[[int, float], None] | None = None,
    teacher: nn.Module | None = None,
) -> TrainResult:
    """Trains ``model`` in place and saves it to ``output_dir/final``.

    Runs data-parallel (DistributedDataParallel) when a process group with more than one rank
    exists or torchrun's environment asks for one (``WORLD_SIZE`` > 1; the group is then
    created here, NCCL on GPUs and gloo on CPU, and destroyed at the end). Every rank must call
    this with the same arguments and examples (the output directory on a shared filesystem).

    Args:
        model: the model; its parameters are trained as they are (never re-initialised, so an
            untrained pooled-residual MixEncoder starts exactly as the backbone's dual encoder).
            Models with ``supports_in_batch_negatives = False`` are trained through
            ``forward_grouped`` (needs ``hard_negatives_per_query >= 1``).
        examples: :class:`MatchingExample` for ``task="matching"``, :class:`PairExample` for
            ``task="nli"`` (the model then needs ``num_labels > 0``).
        config: the run's settings; ``batch_size`` is the global batch (split over ranks).
        output_dir: where ``checkpoint-latest`` and ``final`` go.
        resume: continue from ``output_dir/checkpoint-latest`` if it exists (the model's and the
            training config's weight-shaping fields must match, else ValueError); ``False``
            starts over and overwrites it.
        show_progress_bar: ``None``: when logging is at INFO or below (rank 0 only).
        device: ``None``: this rank's GPU under NCCL, else CUDA if available, else CPU.
        on_step: called as ``on_step(global_step, loss)`` after each step (and its checkpoint),
            on every rank; ``loss`` is the global batch's loss.
        teacher: a teacher to distill from (task ``"matching"``, single process only), e.g. a
            trained :class:`~mixencoder.models.cross.CrossEncoder` for a
            :class:`~mixencoder.models.virt.VIRT` student: each step's loss becomes ``loss +
            config.distillation_weight x model.distillation_loss(teacher, ...)`` over
            :func:`distillation_pairs`. The model must have ``supports_distillation`` and
            ``distillation_weight`` must be > 0. The teacher is frozen here (moved to the
            device, eval mode, ``requires_grad_(False)``) and is *not* checkpointed: resume with
            the same teacher (a resumed run without one is refused, since its checkpointed
            ``distillation_weight`` is > 0).

    Returns:
        A :class:`TrainResult` (identical on every rank).

    Raises:
        ValueError: bad examples for the task, a batch size the ranks cannot split evenly, a
            checkpoint that does not fit this run, or a teacher that does not fit (see
            ``teacher``).
    """
    ctx = D.setup()
    try:
        return _train(
            model,
            examples,
            config,
            output_dir=Path(output_dir),
            resume=resume,
            show_progress_bar=show_progress_bar,
            device=device,
            on_step=on_step,
            teacher=teacher,
            ctx=ctx,
        )
    finally:
        D.teardown(ctx)


def _train(
    model: RankingModel,
    examples: Sequence[MatchingExample] | Sequence[PairExample],
    config: TrainingConfig,
    *,
    output_dir: Path,
    resume: bool,
    show_progress_bar: bool | None,
    device: str | torch.device | None,
    on_step: Callable[[int, float], None] | None,
    teacher: nn.Module | None,
    ctx: D.DistContext,
) -> TrainResult:
    examples = list(examples)
    _validate(model, examples, config, ctx)
    _validate_teacher(model, teacher, config, ctx)
    out = output_dir
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device) if device is not None else D.default_device(ctx)
    autocast_dtype = resolve_precision(config.mixed_precision, dev)
    grouped = config.task == "matching" and not model.supports_in_batch_negatives

    n = len(examples)
    per_epoch = batches_per_epoch(n, config.batch_size)
    total_steps = config.max_steps if config.max_steps is not None else config.epochs * per_epoch
    warmup_steps = math.ceil(config.warmup_ratio * total_steps)
    data_hash = data_fingerprint(examples)

    seed_everything(config.seed)
    model.to(dev)
    if teacher is not None:
        teacher.to(dev).eval().requires_grad_(False)
    optimizer, param_names = build_optimizer(model, config)

    state = TrainerState()
    resumed_from = None
    # Only rank 0 looks (find_checkpoint cleans up after a crashed save; two ranks doing that
    # at once would race); every rank then loads the checkpoint it found.
    ckpt = D.on_main(ctx, lambda: find_checkpoint(out))
    if ckpt is not None and resume:
        state = load_checkpoint(ckpt, model, optimizer, param_names, config, data_hash)
        resumed_from = state.global_step
        logger.info("Resumed from %s at step %d", ckpt, state.global_step)
    elif ckpt is not None and ctx.is_main:
        logger.warning("resume=False: starting over; %s will be overwritten", ckpt)

    if ctx.distributed:
        # find_unused_parameters: a model may hold heads a task never uses (a classifier during
        # matching); DDP would otherwise wait for their gradients forever. Globally unused
        # parameters keep grad None, so AdamW skips them exactly as single-process does.
        wrapped: nn.Module = DistributedDataParallel(
            LossModule(model),
            device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=True,
        )
    else:
        wrapped = model
    if ctx.is_main:
        logger.info(
            "Training %s on %d examples: %d steps (%d per epoch, batch %d%s, h=%d%s), warm-up "
            "%d, lr %.2g, device %s, %s",
            config.task, n, total_steps, per_epoch, config.batch_size,
            f" = {ctx.world_size} ranks x {config.batch_size // ctx.world_size}"
            if ctx.distributed else "",
            config.hard_negatives_per_query, ", grouped scoring" if grouped else "",
            warmup_steps, config.learning_rate, dev,
            "bf16 autocast" if autocast_dtype else "fp32",
        )

    def save() -> None:
        if ctx.is_main:
            save_checkpoint(out, model, optimizer, param_names, state, config, data_hash)
        D.barrier(ctx)

    losses: list[float] = []
    distill_losses: list[float] = []
    recent: deque[float] = deque(maxlen=50)
    stopped = "completed"
    show = show_progress(show_progress_bar) and ctx.is_main
    params = [p for group in optimizer.param_groups for p in group["params"]]
    model.train()
    start = time.monotonic()
    bar = tqdm(total=total_steps, initial=state.global_step, desc="Training", disable=not show)
    try:
        order = epoch_order(config.seed, state.epoch, n)
        while state.global_step < total_steps:
            b = state.position
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            batch_examples = [examples[int(i)] for i in idx]
            rows = D.local_rows(len(batch_examples), ctx)
            if config.task == "matching":
                rng = np.random.default_rng([config.seed, state.epoch, b])
                batch: Batch = collate_matching(
                    model, batch_examples, config.hard_negatives_per_query, rng,
                    rows=rows, grouped=grouped,
                )
            else:
                batch = collate_pairs(model, batch_examples[rows])
            if ctx.distributed:
                torch.manual_seed(D.step_seed(config.seed, state.global_step, ctx.rank))

            lr = config.learning_rate * lr_factor(state.global_step, total_steps, warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            with _autocast(dev, autocast_dtype):
                loss = train_step(wrapped, batch)
                if teacher is not None:
                    distill = distillation_term(model, teacher, batch)
                    loss = loss + config.distillation_weight * distill
            # The global batch's loss (the mean of the ranks' equal-sized slices): identical on
            # every rank, so every rank takes the same decisions below.
            global_loss = D.mean_over_ranks(loss, ctx)
            if not torch.isfinite(global_loss):
                raise FloatingPointError(
                    f"non-finite loss {global_loss.item()} at step {state.global_step}; try a "
                    "lower learning rate or mixed_precision='fp32'"
                )
            loss.backward()  # DDP averages the ranks' gradients: the global batch's gradient
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            value = float(global_loss)
            losses.append(value)
            if teacher is not None:
                distill_losses.append(float(distill.detach()))
            recent.append(value)
            state.global_step += 1
            state.position += 1
            if state.position >= per_epoch:
                state.epoch += 1
                state.position = 0
                order = epoch_order(config.seed, state.epoch, n)
            bar.update(1)
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{lr:.2e}")

            done = state.global_step >= total_steps
            over_budget = (
                config.max_seconds is not None and time.monotonic() - start >= config.max_seconds
            )
            if config.max_seconds is not None:
                over_budget = D.any_rank(over_budget, ctx, dev)  # stop together, at one step
            every = config.checkpoint_every
            if not done and every and state.global_step % every == 0:
                save()
            if on_step is not None:
                on_step(state.global_step, value)
            if over_budget and not done:
                stopped = "max_seconds"
                if ctx.is_main:
                    logger.info(
                        "Time budget of %.0fs reached at step %d/%d; checkpointing",
                        config.max_seconds, state.global_step, total_steps,
                    )
                break
    finally:
        bar.close()
    seconds = time.monotonic() - start
    save()
    model.eval()
    final = out / FINAL_NAME
    if ctx.is_main:
        model.save_pretrained(final)
    D.barrier(ctx)
    steps = len(losses)
    if ctx.is_main:
        logger.info(
            "Stopped (%s) at step %d after %d steps in %.1fs; mean loss of the last %d steps "
            "%.4f; model saved to %s",
            stopped, state.global_step, steps, seconds, len(recent),
            sum(recent) / len(recent) if recent else float("nan"), final,
        )
    return TrainResult(
        global_step=state.global_step,
        epoch=state.epoch,
        stopped_reason=stopped,
        output_dir=out,
        final_dir=final,
        checkpoint_dir=checkpoint_dir(out),
        losses=losses,
        distillation_losses=distill_losses,
        resumed_from_step=resumed_from,
        seconds=seconds,
        steps_per_second=steps / seconds if seconds > 0 else 0.0,
    )


# ---------------------------------------------------------------------- helpers


def _validate(
    model: Any, examples: list[Any], config: TrainingConfig, ctx: D.DistContext | None = None
) -> None:
    if not examples:
        raise ValueError("no training examples")
    if ctx is not None and ctx.distributed:
        if config.batch_size % ctx.world_size:
            raise ValueError(
                f"batch_size={config.batch_size} (the global batch) must be divisible by the "
                f"{ctx.world_size} data-parallel processes so that each gets an equal slice"
            )
        if len(examples) < config.batch_size:
            raise ValueError(
                f"{len(examples)} examples make no full global batch of {config.batch_size}; "
                "data-parallel training needs at least batch_size examples"
            )
    if config.task == "matching":
        bad = next((e for e in examples if not isinstance(e, MatchingExample)), None)
        if bad is not None:
            raise ValueError(f"task='matching' needs MatchingExample, got {type(bad).__name__}")
        h = config.hard_negatives_per_query
        if not model.supports_in_batch_negatives and h < 1:
            raise ValueError(
                f"{type(model).__name__} does not support in-batch negatives "
                "(supports_in_batch_negatives=False): it is trained on each query's own "
                "positive and hard negatives, so hard_negatives_per_query must be >= 1, got "
                f"{h}"
            )
        if h:
            empty = sum(1 for e in examples if not e.negatives)
            if empty:
                raise ValueError(
                    f"hard_negatives_per_query={h} but {empty} examples have no negatives"
                )
            short = sum(1 for e in examples if len(e.negatives) < h)
            if short:
                logger.warning(
                    "%d examples have fewer than %d negatives; theirs are repeated", short, h
                )
        elif min(config.batch_size, len(examples)) < 2:
            raise ValueError(
                "in-batch negatives need at least 2 queries per batch (or hard negatives)"
            )
    else:
        bad = next((e for e in examples if not isinstance(e, PairExample)), None)
        if bad is not None:
            raise ValueError(f"task='nli' needs PairExample, got {type(bad).__name__}")
        num_labels = model.num_labels
        if not num_labels:
            raise ValueError(
                "task='nli' needs a classifier head: build the model with num_labels=3"
            )
        top = max(e.label for e in examples)
        if top >= num_labels:
            raise ValueError(f"label {top} outside the model's {num_labels} classes")


def _validate_teacher(
    model: Any, teacher: nn.Module | None, config: TrainingConfig, ctx: D.DistContext | None = None
) -> None:
    w = config.distillation_weight
    if teacher is None:
        if w:
            raise ValueError(
                f"distillation_weight={w} but no teacher was given: pass train(..., teacher=...) "
                "(on resume too: the teacher is not checkpointed), or set it to 0"
            )
        return
    name = type(model).__name__
    if config.task != "matching":
        raise ValueError(f"a teacher only applies to task='matching', got task={config.task!r}")
    if not model.supports_distillation:
        raise ValueError(
            f"a teacher was given but {name} does not distill from one "
            "(supports_distillation=False; VIRT does)"
        )
    if not w > 0:
        raise ValueError(
            "a teacher was given but distillation_weight is 0: set TrainingConfig("
            "distillation_weight=lambda > 0) (the teacher would otherwise be ignored)"
        )
    if teacher is model:
        raise ValueError("the teacher must be a separate model, not the model being trained")
    if ctx is not None and ctx.distributed:
        raise ValueError(
            "teacher distillation is single-process only; run without torchrun (or on one rank)"
        )
    # The teacher reads the concatenated pair ([CLS] q [SEP] c [SEP]): it must fit its positions.
    max_pos, q_len, c_len = teacher.max_positions, model.query_max_length, model.candidate_max_length
    if q_len + c_len - 1 > max_pos:
        raise ValueError(
            f"query_max_length + candidate_max_length - 1 = {q_len + c_len - 1} tokens exceed "
            f"the teacher's {max_pos} positions; shorten the student's max lengths"
        )


def _unwrap(model: nn.Module) -> Any:
    """The trained model inside DDP and/or :class:`LossModule` wrappers."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return model.model if isinstance(model, LossModule) else model


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

