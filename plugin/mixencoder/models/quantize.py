"""Dynamic int8 linear layers for CPU inference.

Weights are quantized once, symmetrically per output channel; activations are quantized per row
at each call (absmax), and the product runs as an int8 x int8 -> int32 GEMM through
``torch._int_mm``, which on x86 dispatches to oneDNN's VNNI/AMX kernels.

Why this path and not another:

* ``torch.ao.quantization`` (``quantize_dynamic``) builds on quantized tensors, which PyTorch
  marks deprecated; code written on it now has to move again.
* ``torchao`` (the maintained successor) runs the same ``torch._int_mm`` for dynamic int8 on CPU;
  in eager mode it adds nothing here but a dependency the project does not pin.
* ONNX Runtime's dynamic quantization needs the model exported to ONNX (the ``onnx`` package,
  not installed) and would split the scoring math across two runtimes.

The layer keeps ``nn.Linear``'s call signature, so the backbone's own BERT modules and the
interaction layers use it unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

_QMAX = 127.0


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization of each row of ``x (m, n)``: ``(q int8 (m, n), scale (m, 1))``
    with ``x ~= q * scale``. An all-zero row gets scale 1 (its codes are zero anyway)."""
    # amax and amin separately: two plain reductions are faster than abs() then amax (one
    # temporary fewer), and multiplying by the reciprocal is faster than dividing.
    amax = torch.maximum(x.amax(-1, keepdim=True), x.amin(-1, keepdim=True).neg_())
    scale = torch.where(amax > 0, amax / _QMAX, torch.ones_like(amax))
    return torch.mul(x, scale.reciprocal()).round_().to(torch.int8), scale


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored as int8 (per output channel scales) and ``x`` quantized
    per row on the fly; int32 accumulation, float32 output.

    State dict: ``weight_int8 (in, out)`` (transposed: the layout ``torch._int_mm`` reads, and a
    column block of ``W`` is then a contiguous row block), ``weight_scale (out,)``, ``bias``. A
    float ``weight`` in a state dict (a float32 checkpoint) is quantized on load.
    """

    def __init__(self, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("weight_scale", weight_scale)
        if bias is None:
            self.bias = None
        else:
            self.register_buffer("bias", bias)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> Int8Linear:
        """Quantize a float ``weight (out, in)`` per output channel."""
        q, scale = quantize_rows(weight.detach().float())
        return cls(q.t().contiguous(), scale.squeeze(1), None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls.from_float(linear.weight, linear.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized ``(out, in)`` float weight (what the int8 codes stand for)."""
        return self.weight_int8.t().float() * self.weight_scale[:, None]

    def columns(self, start: int, stop: int, *, with_bias: bool) -> Int8Linear:
        """The layer restricted to input features ``start:stop`` (a block of ``W``'s columns),
        sharing this layer's codes: ``linear(cat([a, b]))`` is ``columns(a) (a) + columns(b) (b)``."""
        return Int8Linear(self.weight_int8[start:stop], self.weight_scale, self.bias if with_bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        if rows.shape[0] == 0:
            return x.new_zeros(*shape[:-1], self.out_features, dtype=torch.float32)
        q, scale = quantize_rows(rows)
        # Convert first, then scale in place (int32 * float broadcasting is ~3x slower); the
        # weight scales and the bias go in one fused pass.
        out = torch._int_mm(q, self.weight_int8).to(torch.float32).mul_(scale)
        if self.bias is None:
            out.mul_(self.weight_scale)
        else:
            out = torch.addcmul(self.bias, out, self.weight_scale)
        return out.view(*shape[:-1], self.out_features)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A float32 checkpoint's ``weight`` becomes codes and scales here, so a saved fp32 model
        # loads straight into its int8 version.
        weight = state_dict.pop(prefix + "weight", None)
        if weight is not None:
            q, scale = quantize_rows(weight.float())
            state_dict[prefix + "weight_int8"] = q.t().contiguous()
            state_dict[prefix + "weight_scale"] = scale.squeeze(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_linear_layers(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by its :class:`Int8Linear`, in place.

    Returns:
        How many layers were replaced.
    """
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Int8Linear.from_linear(child))
                replaced += 1
    return replaced


def linear_columns(layer: nn.Module, start: int, stop: int, *, with_bias: bool) -> Any:
    """A callable computing ``layer``'s output from input features ``start:stop`` alone (float
    or int8 layer alike): the gate reads ``[mean E; new; H]`` this way without concatenating."""
    if isinstance(layer, Int8Linear):
        return layer.columns(start, stop, with_bias=with_bias)
    weight, bias = layer.weight[:, start:stop], layer.bias if with_bias else None
    return lambda x: F.linear(x, weight, bias)

