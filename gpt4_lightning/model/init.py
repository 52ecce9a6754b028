"""Weight initialisation: fan-in scaled at every width, residual outputs scaled by depth.

- Every matmul weight: normal with std sqrt(2 / (5 · fan_in)), the "small init" of Nguyen & Salazar (2019,
  "Transformers without Tears"), which GPT-NeoX uses for its input layers: unit-variance inputs give outputs of
  variance 0.4 at any width. (PyTorch's default Linear init, which x-transformers keeps, has std
  1 / sqrt(3 · fan_in), as close.)
- Outputs of the residual branches (attention `to_out`, feed-forward `proj_out`): that std / sqrt(depth), so the
  2 · depth branches together add O(1) variance to the residual stream at any depth. GPT-2 and Megatron divide by
  sqrt(2 · depth), twice as small, and the lineage by nothing: no factor did better at depth 2, worse on the
  default run (depth 4), and sqrt(depth) was close to the best on both (bench/learning_parity.py; BENCHMARKS.md).
- Token embedding: std 1 / sqrt(dim), the scale of the untied head's weights and of every other matrix. With
  Adam, each element moves by ~lr per step whatever its size, so a table much larger than the matrices (std 1)
  learns far slower (worse held-out loss in bench/learning_parity.py); OLMo's "mitchell" init uses 1 / sqrt(dim) too.

The fixed std 0.02 of GPT-2 this replaces equals the small init only at fan_in ~1000 and was 2-4x too small at the
small presets (bench/learning_parity.py: 1.04-1.07x x-transformers' held-out loss before, see BENCHMARKS.md).
"""

from __future__ import annotations

import math

from torch import Tensor, nn


def matmul_std(fan_in: int, residual_depth: int | None = None) -> float:
    """std of a weight that multiplies `fan_in` features; `residual_depth`: the model's depth, for the
    output projection of a residual branch."""
    std = math.sqrt(2 / (5 * fan_in))
    return std / math.sqrt(residual_depth) if residual_depth else std


def init_linear_(linear: nn.Linear, residual_depth: int | None = None) -> None:
    nn.init.normal_(linear.weight, std=matmul_std(linear.in_features, residual_depth))
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def init_embedding_(weight: Tensor) -> None:
    """`(num_tokens, dim)` table: std 1 / sqrt(dim)."""
    nn.init.normal_(weight, std=weight.shape[1] ** -0.5)
