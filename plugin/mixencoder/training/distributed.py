"""Data-parallel training helpers: process-group set-up, a differentiable all-gather, and the
global in-batch-negatives step.

``torchrun --nproc_per_node N -m mixencoder.training.cli ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`setup` turns that
into a process group (NCCL on GPUs, gloo on CPU) the first time :func:`~.trainer.train` runs.

How the numbers stay those of single-process training on the same global batch of ``B``
queries split over ``W`` ranks (``b = B / W`` each):

* every rank encodes only its own ``b`` queries and their candidates
  (``model.encode_query_batch`` / ``model.encode_candidate_batch``), then all-gathers the
  candidate encodings, so each query is scored against the *global* candidate pool by
  ``model.score_matrix`` (the same ``B x (B + B*h)`` score matrix, row-sliced); this works for
  every model with ``supports_in_batch_negatives``; the others (cross-encoders) score each
  query's own group, which needs nothing from other ranks;
* each rank's loss is the mean over its ``b`` rows; DDP averages gradients over ranks, so the
  update is the gradient of the mean over all ``B`` rows;
* the gather's backward sums the candidate gradients from every rank (all-reduce) before
  taking this rank's slice: a candidate encoded here is scored by every rank's queries.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

from .batches import MatchingBatch
from .losses import in_batch_negatives_loss, same_query_mask

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel run.

    Attributes:
        rank: this process's rank (0 for single-process training).
        world_size: number of processes (1 for single-process training).
        local_rank: rank on this node (selects the GPU).
        created_group: whether :func:`setup` created the process group (and so destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False

    @property
    def distributed(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that logs and writes checkpoints."""
        return self.rank == 0


def setup(timeout_s: float = 1800.0) -> DistContext:
    """The data-parallel context: an existing process group, one from torchrun's env, or none.

    A process group that already exists (the caller initialised it) is used as is. Otherwise,
    if ``WORLD_SIZE`` > 1 is set (torchrun), one is created with NCCL when CUDA is available
    and gloo otherwise; :func:`teardown` destroys it again.

    Args:
        timeout_s: collective timeout for a group created here.
    """
    if dist.is_available() and dist.is_initialized():
        return DistContext(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError(
            f"WORLD_SIZE={world} asks for distributed training but this torch build has no "
            "torch.distributed"
        )
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world} is set but {missing} are not; launch with torchrun "
            "(torchrun --nproc_per_node N -m mixencoder.training.cli ...)"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, created_group=True)
    logger.info("initialised %s process group: rank %d of %d", backend, ctx.rank, ctx.world_size)
    return ctx


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if ctx.created_group and dist.is_initialized():
        dist.destroy_process_group()


def default_device(ctx: DistContext) -> torch.device:
    """This rank's device: its GPU (``cuda:LOCAL_RANK``) under NCCL, else the CPU."""
    if ctx.distributed and dist.get_backend() == "nccl":
        return torch.device("cuda", ctx.local_rank)
    if not ctx.distributed and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op when training alone)."""
    if ctx.distributed:
        dist.barrier()


def mean_over_ranks(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean of a scalar over ranks (detached): the global-batch loss for logging."""
    value = value.detach().float().clone()
    if ctx.distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= ctx.world_size
    return value


def any_rank(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True on every rank if ``flag`` is True on any: ranks must stop at the same step."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def on_main(ctx: DistContext, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result (or its exception) to every rank.

    Filesystem decisions (which checkpoint to resume, cleaning up a crashed save) must be made
    once: two ranks cleaning the same directory race each other. An exception on rank 0 is
    re-raised on every rank, so no rank is left waiting in a collective.
    """
    if not ctx.distributed:
        return fn()
    payload: list[Any] = [None]
    if ctx.is_main:
        try:
            payload[0] = ("ok", fn())
        except Exception as e:  # re-raised below, on every rank
            payload[0] = ("error", e)
    dist.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "error":
        raise value
    return value


class _AllGather(torch.autograd.Function):
    """Concatenate equal-sized tensors from every rank along dim 0, with gradients.

    Backward all-reduces (sums) the gradient of the whole gathered tensor, then returns this
    rank's slice: the gradient a local row receives is the sum of what every rank's loss sent
    it. Only ``all_gather`` and ``all_reduce`` are used, which gloo supports (its lack of
    ``reduce_scatter`` rules out ``torch.distributed.nn.functional.all_gather`` on CPU).
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor)
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable all-gather: ``(world * n, ...)`` from every rank's ``(n, ...)``.

    Every rank must pass the same shape. Without a process group it returns ``tensor``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _AllGather.apply(tensor)


def global_candidate_order(world: int, local_queries: int, hard_negatives: int) -> torch.Tensor:
    """Index that reorders gathered candidates into the single-process column layout.

    Rank r contributes ``[b positives, b*h negatives]``; the global layout is all ``B = W*b``
    positives in query order, then every query's ``h`` negatives in query order.
    """
    b, h = local_queries, hard_negatives
    per_rank = b + b * h
    positives = [torch.arange(r * per_rank, r * per_rank + b) for r in range(world)]
    negatives = [torch.arange(r * per_rank + b, (r + 1) * per_rank) for r in range(world)]
    return torch.cat(positives + negatives)


def pad_to(tensor: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``tensor`` zero-padded (False for bool) at the end of every dim after the first up to
    ``shape[1:]``; differentiable."""
    if tuple(tensor.shape[1:]) == tuple(int(s) for s in shape[1:]):
        return tensor
    out = tensor.new_zeros((tensor.shape[0], *(int(s) for s in shape[1:])))
    out[tuple(slice(0, n) for n in tensor.shape)] = tensor
    return out


def gather_candidate_batch(parts: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor | None, ...]:
    """Every rank's candidate encodings, concatenated along dim 0 in rank order.

    Each tensor is first zero-padded to the largest size any rank has in each later dim (token
    states of different lengths; their masks pad with False), then all-gathered; float tensors
    keep their gradients (:func:`all_gather_with_grad`). ``None`` parts stay ``None``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tuple(parts)
    out: list[torch.Tensor | None] = []
    for part in parts:
        if part is None:
            out.append(None)
            continue
        sizes = torch.tensor(part.shape, device=part.device)
        dist.all_reduce(sizes, op=dist.ReduceOp.MAX)
        padded = pad_to(part, sizes.tolist())
        if padded.is_floating_point():
            out.append(all_gather_with_grad(padded))
        else:
            gathered = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, padded.contiguous())
            out.append(torch.cat(gathered))
    return tuple(out)


def gathered_in_batch_loss(model: Any, batch: MatchingBatch) -> torch.Tensor:
    """This rank's in-batch-negatives loss with the candidates of every rank as negatives.

    Computes exactly the rows ``first_row .. first_row + b - 1`` of the single-process
    ``B x (B + B*h)`` score matrix (same columns, same masking, same targets) and returns their
    mean cross-entropy.

    Args:
        model: a model with ``supports_in_batch_negatives`` (its ``encode_query_batch``,
            ``encode_candidate_batch`` and ``score_matrix``).
        batch: this rank's slice of the global batch (see ``collate_matching(rows=...)``).
    """
    if not model.supports_in_batch_negatives:
        raise ValueError(
            f"{type(model).__name__} does not support in-batch negatives; it is trained on "
            "each query's own group (forward_grouped), which needs no gathering"
        )
    world = dist.get_world_size() if dist.is_initialized() else 1
    query = model.encode_query_batch(batch.queries)
    candidates = model.encode_candidate_batch(batch.candidates)
    rows_here = next(c for c in candidates if c is not None).shape[0]  # b + b*h
    b = rows_here // (1 + batch.hard_negatives)
    order = global_candidate_order(world, b, batch.hard_negatives)
    gathered = tuple(
        None if c is None else c[order.to(c.device)] for c in gather_candidate_batch(candidates)
    )
    scores = model.score_matrix(query, gathered)  # (b, B + B*h): this rank's rows of the global matrix
    rows = slice(batch.first_row, batch.first_row + b)
    mask = same_query_mask(
        scores.shape[1], batch.query_ids, batch.positive_ids, device=scores.device
    )[rows]
    targets = torch.arange(rows.start, rows.stop, device=scores.device)
    return in_batch_negatives_loss(scores, mask=mask, targets=targets)


def local_rows(global_size: int, ctx: DistContext) -> slice:
    """This rank's slice of a global batch of ``global_size`` examples (equal slices)."""
    if global_size % ctx.world_size:
        raise ValueError(
            f"a global batch of {global_size} examples cannot be split evenly over "
            f"{ctx.world_size} ranks; use a batch_size divisible by the number of processes"
        )
    per_rank = global_size // ctx.world_size
    return slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)


def step_seed(seed: int, step: int, rank: int) -> int:
    """Dropout seed of one rank at one step under DDP (independent across ranks, and
    reproducible after a resume without per-rank RNG state in the checkpoint)."""
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)
