"""Graph networks for node classification: SGC (Wu et al. 2019) and GCN (Kipf & Welling 2017).

Both propagate with the symmetrically normalised adjacency with self loops,
Â = D^-1/2 (A + I) D^-1/2 (D: degrees of A + I). The graph comes as an edge
list (senders -> receivers, both directions for an undirected graph, no self
loops: the model adds them) with an edge mask, so a graph padded to fixed node
and edge counts (padded edges masked out, padded nodes without edges) reuses
one compiled program; `bitjax.data.graphs` does that padding.

SGC: propagate the features K times, then a linear classifier (an MLP when
`hidden_sizes` is not empty). GCN: per layer, a dense map then one propagation,
ReLU between layers.

Quantization follows the MLP (see `bitjax.models.mlp`): every linear layer is a
BitDense under a quantized preset, first and last included; propagation stays
in float32, since Â is data, not weights.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from bitjax.models.mlp import DROPOUT_RATE, dense_stack, dropout
from bitjax.models.precision import ModelConfig
from bitjax.schema import POSITIVE_INT, Rule, field

GNN_ARCHITECTURES = ("sgc", "gcn")
LAYER_SIZES = Rule(lambda sizes: all(s > 0 for s in sizes), "a tuple of positive integers")


@dataclasses.dataclass(frozen=True)
class GNNConfig(ModelConfig):
  """Schema of `config.model` for the GNN; validated on construction. `use_bias` as in
  the MLP (ModelConfig: None takes the preset's)."""

  takes_bias: ClassVar[bool] = True
  architecture: str = field("sgc", allowed=GNN_ARCHITECTURES)
  input_dim: int = field(1433, rule=POSITIVE_INT)  # Cora's bag of words
  num_classes: int = field(7, rule=POSITIVE_INT)
  # SGC's K (a GCN propagates once per layer instead)
  propagation_steps: int = field(2, rule=POSITIVE_INT)
  # SGC: () is logistic regression; GCN: e.g. (64,)
  hidden_sizes: tuple[int, ...] = field((), rule=LAYER_SIZES)
  # on every dense layer's input while training (GCN: 0.5)
  dropout: float = field(0.0, rule=DROPOUT_RATE)


def normalized_adjacency(senders: jax.Array, receivers: jax.Array, edge_mask: jax.Array,
                         num_nodes: int) -> tuple[jax.Array, jax.Array]:
  """Weights of Â: (per edge 1/sqrt(d_s d_r), 0 where masked; per node 1/d for its self loop)."""
  weight = edge_mask.astype(jnp.float32)
  degree = 1.0 + jax.ops.segment_sum(weight, receivers, num_segments=num_nodes)
  inv_sqrt = jax.lax.rsqrt(degree)
  return weight * inv_sqrt[senders] * inv_sqrt[receivers], 1.0 / degree


def propagate(x: jax.Array, senders: jax.Array, receivers: jax.Array, edge_weight: jax.Array,
              self_weight: jax.Array) -> jax.Array:
  """Â x for node rows x [nodes, features], in float32."""
  x32 = x.astype(jnp.float32)
  messages = x32[senders] * edge_weight[:, None]
  out = jax.ops.segment_sum(messages, receivers, num_segments=x.shape[0])
  return (out + x32 * self_weight[:, None]).astype(x.dtype)


class GNN(nnx.Module):
  """(features [nodes, input_dim], senders [edges], receivers [edges], edge_mask [edges])
  -> logits [nodes, num_classes] (float32); `dropout_rng` (training) applies
  `cfg.dropout` before every dense layer."""

  def __init__(self, cfg: GNNConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.layers = dense_stack(cfg, rngs=rngs)

  def __call__(self, features: jax.Array, senders: jax.Array, receivers: jax.Array,
               edge_mask: jax.Array | None = None,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    if edge_mask is None:
      edge_mask = jnp.ones(senders.shape, bool)
    edge_weight, self_weight = normalized_adjacency(senders, receivers, edge_mask,
                                                    features.shape[0])
    x = features
    if self.cfg.architecture == "sgc":
      for _ in range(self.cfg.propagation_steps):
        x = propagate(x, senders, receivers, edge_weight, self_weight)
    for i, layer in enumerate(self.layers):
      key = None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
      x = layer(dropout(x, self.cfg.dropout, key))
      if self.cfg.architecture == "gcn":
        x = propagate(x, senders, receivers, edge_weight, self_weight)
      if i < len(self.layers) - 1:
        x = jax.nn.relu(x)
    return x.astype(jnp.float32)
