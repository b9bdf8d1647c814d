"""Logical axis names used by every model, and the default rules mapping them to mesh axes.

Models annotate parameters with `nn.with_logical_partitioning(init, names)` and activations with
`nn.with_logical_constraint(x, names)`, using only the names below. A config's `axis_rules`
maps each name to mesh axes (`data`, `fsdp`, `tensor`) or to `None` (replicated), so a layout
changes without touching a model.

Vocabulary:
  batch     leading batch dimension of activations
  length    sequence / token dimension of activations
  embed     model width (residual stream) of transformers
  mlp       hidden dimension of feed-forward blocks
  heads     flattened attention heads (heads * head_dim) of q/k/v/out projections
  kv        per-head dimension, when kept separate
  vocab     vocabulary / token-embedding table rows
  conv_in   input channels of a convolution kernel (U-Net kernels are [conv_out, kh, kw, conv_in])
  conv_out  output channels of a convolution kernel, and channel dim of U-Net activations
  norm      scales and biases of normalisation layers (always replicated: tiny)
"""

from __future__ import annotations

LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

MESH_AXES = ("data", "fsdp", "tensor")

# Data parallel over (data, fsdp); parameters sharded over fsdp (ZeRO-3 style) on their largest
# dimension; tensor parallelism over heads and MLP hidden units.
DEFAULT_RULES: LogicalRules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("norm", None),
)
