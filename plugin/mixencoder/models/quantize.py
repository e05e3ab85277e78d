"""Dynamic int8 linear layers for CPU inference.

Weights are quantized once, symmetrically per output channel. Activations are quantized at
each call, per tensor (absmax, as PyTorch's own dynamic quantization does), to uint8 with zero
point 128, and the layer runs as oneDNN's int8 GEMM with the dequantization, the bias and an
optional GELU fused into its output stage (``torch.ops.onednn.qlinear_pointwise``, the kernel
PyTorch's x86 inductor backend lowers quantized linears to; VNNI/AMX on this CPU). The fusion
matters: in eager PyTorch each separate elementwise pass over the activations costs about as
much as the int8 GEMM itself, and with them unfused int8 was no faster than float32 at
``d = 384``. Where the oneDNN op is missing (a non-x86 build), ``torch._int_mm`` with per-row
activation scales and unfused dequantization runs instead.

Why this path and not another:

* ``torch.ao.quantization`` (``quantize_dynamic``) builds on quantized tensors, which PyTorch
  marks deprecated; code written on it now has to move again.
* ``torchao`` (the maintained successor) runs ``torch._int_mm`` with unfused Python-level
  (de)quantization in eager mode on CPU (the slow variant above) unless the model goes through
  ``torch.compile``, which took 80 s here for two small functions; it is also not pinned.
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
_ZERO_POINT = 128
# 128.5 then truncation: round half up to the uint8 code, in one fused multiply-add.
_HALF_ZERO_POINT = torch.tensor(_ZERO_POINT + 0.5)
_ONEDNN = hasattr(torch.ops.onednn, "qlinear_pointwise") and torch.backends.mkldnn.is_available()


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
    on the fly, per tensor (oneDNN, fused dequantization) or with ``per_row`` per row
    (``torch._int_mm``); int32 accumulation, float32 output.

    State dict: ``weight_int8 (in, out)`` (transposed: the layout ``torch._int_mm`` reads, and a
    column block of ``W`` is then a contiguous row block), ``weight_scale (out,)``, ``bias``. A
    float ``weight`` in a state dict (a float32 checkpoint) is quantized on load.
    """

    def __init__(
        self, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
        *, per_row: bool = False,
    ):
        super().__init__()
        self.per_row = per_row
        self.in_features, self.out_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("weight_scale", weight_scale)
        if bias is None:
            self.bias = None
        else:
            self.register_buffer("bias", bias)
        self._drop_caches()
        self.eval()  # inference only (see forward)

    def _drop_caches(self) -> None:
        # oneDNN's packed layout of the codes and the column blocks, made on first use and
        # never saved, copied or pickled (a packed tensor is opaque).
        self._packed: torch.Tensor | None = None
        self._zero_points: torch.Tensor | None = None
        self._columns: dict[tuple[int, int, bool], Int8Linear] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_packed=None, _zero_points=None, _columns={})
        return state

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None, *, per_row: bool = False) -> Int8Linear:
        """Quantize a float ``weight (out, in)`` per output channel."""
        q, scale = quantize_rows(weight.detach().float())
        bias = None if bias is None else bias.detach().float().clone()
        return cls(q.t().contiguous(), scale.squeeze(1), bias, per_row=per_row)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, per_row: bool = False) -> Int8Linear:
        return cls.from_float(linear.weight, linear.bias, per_row=per_row)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized ``(out, in)`` float weight (what the int8 codes stand for)."""
        return self.weight_int8.t().float() * self.weight_scale[:, None]

    def columns(self, start: int, stop: int, *, with_bias: bool) -> Int8Linear:
        """The layer restricted to input features ``start:stop`` (a block of ``W``'s columns),
        sharing this layer's codes: ``linear(cat([a, b]))`` is ``columns(a) (a) + columns(b) (b)``."""
        key = (start, stop, with_bias)
        if key not in self._columns:
            self._columns[key] = Int8Linear(
                self.weight_int8[start:stop], self.weight_scale, self.bias if with_bias else None, per_row=self.per_row
            )
        return self._columns[key]

    def forward(self, x: torch.Tensor, post_op: str = "none") -> torch.Tensor:
        """``x (..., in)`` -> ``(..., out)`` float32; ``post_op="gelu"`` applies the exact GELU
        in the same pass."""
        if self.training:
            # The codes are buffers: training would run and silently change nothing.
            raise RuntimeError("int8 layers are for inference; train the float32 model and quantize it after")
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        if rows.shape[0] == 0:
            return x.new_zeros(*shape[:-1], self.out_features, dtype=torch.float32)
        out = self._int_mm(rows, post_op) if self.per_row or not _ONEDNN else self._onednn(rows, post_op)
        return out.view(*shape[:-1], self.out_features)

    def _onednn(self, rows: torch.Tensor, post_op: str) -> torch.Tensor:
        low, high = torch.aminmax(rows)
        amax = max(float(high), -float(low))
        scale = amax / _QMAX if amax > 0 else 1.0
        codes = torch.add(_HALF_ZERO_POINT, rows, alpha=1.0 / scale).to(torch.uint8)
        if self._packed is None:
            self._packed = torch.ops.onednn.qlinear_prepack(self.weight_int8.t().contiguous(), None)
            self._zero_points = torch.zeros(self.out_features, dtype=torch.int64)
        return torch.ops.onednn.qlinear_pointwise(
            codes, scale, _ZERO_POINT, self._packed, self.weight_scale, self._zero_points, self.bias,
            1.0, 0, torch.float32, post_op, [], "none" if post_op == "gelu" else "",
        )

    def _int_mm(self, rows: torch.Tensor, post_op: str) -> torch.Tensor:
        q, scale = quantize_rows(rows)
        # Convert first, then scale in place (int32 * float broadcasting is ~3x slower); the
        # weight scales and the bias go in one fused pass.
        out = torch._int_mm(q, self.weight_int8).to(torch.float32).mul_(scale)
        if self.bias is None:
            out.mul_(self.weight_scale)
        else:
            out = torch.addcmul(self.bias, out, self.weight_scale)
        return F.gelu(out) if post_op == "gelu" else out

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A float32 checkpoint's ``weight`` becomes codes and scales here, so a saved fp32 model
        # loads straight into its int8 version.
        weight = state_dict.pop(prefix + "weight", None)
        if weight is not None:
            q, scale = quantize_rows(weight.float())
            state_dict[prefix + "weight_int8"] = q.t().contiguous()
            state_dict[prefix + "weight_scale"] = scale.squeeze(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._drop_caches()  # the codes were overwritten in place

    def extra_repr(self) -> str:
        scales = "per-row" if self.per_row else "per-tensor"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8, {scales} activations"


def quantize_linear_layers(module: nn.Module, *, per_row: bool = False) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by its :class:`Int8Linear`, in place.

    Args:
        per_row: quantize activations per row (token) instead of per tensor: for inputs whose
            rows differ widely in magnitude (a transformer's tokens), at the cost of unfused
            dequantization.

    Returns:
        How many layers were replaced.
    """
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Int8Linear.from_linear(child, per_row=per_row))
                replaced += 1
    return replaced


def linear_columns(layer: nn.Module, start: int, stop: int, *, with_bias: bool) -> Any:
    """A callable computing ``layer``'s output from input features ``start:stop`` alone (float
    or int8 layer alike): the gate reads ``[mean E; new; H]`` this way without concatenating."""
    if isinstance(layer, Int8Linear):
        return layer.columns(start, stop, with_bias=with_bias)
    weight, bias = layer.weight[:, start:stop], layer.bias if with_bias else None
    return lambda x: F.linear(x, weight, bias)

