"""Multi-layer perceptrons on feature vectors: WideMLP (Galke & Scherp 2022: one hidden
layer of 1024 over bag-of-words / TF-IDF) and deeper stacks, for dense features too.

Quantization: under a quantized preset *every* linear layer is a BitDense, the
first (vocabulary -> hidden) and the last (hidden -> classes) included. This is
how we read Nielsen et al. (2411.05882), who swap each linear layer for a
BitLinear; an MLP has no embedding or LM head that the decoder convention would
exempt, and the first layer holds most of the weights, so keeping it in full
precision would forfeit most of the memory saving. Each BitDense normalises its
own input; full-precision MLPs have no norms at all.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from bitjax.models.precision import ModelConfig
from bitjax.nn import BitDense
from bitjax.schema import POSITIVE_INT, Rule, field

DROPOUT_RATE = Rule(lambda rate: 0 <= rate < 1, "a rate in [0, 1)")
HIDDEN_SIZES = Rule(lambda sizes: len(sizes) > 0 and all(s > 0 for s in sizes),
                    "a non-empty tuple of positive integers")


@dataclasses.dataclass(frozen=True)
class MLPConfig(ModelConfig):
  """Schema of `config.model` for the MLP; validated on construction. `use_bias`
  (ModelConfig) puts a bias on every layer: None takes the preset's (b1.58-ln's BitLinear
  has one; BitNet b1.58 has none)."""

  takes_bias: ClassVar[bool] = True
  input_dim: int = field(64, rule=POSITIVE_INT)
  num_classes: int = field(10, rule=POSITIVE_INT)
  # one entry: WideMLP; more: a deeper MLP
  hidden_sizes: tuple[int, ...] = field((1024,), rule=HIDDEN_SIZES)
  # on every layer's input while training (WideMLP: 0.5)
  dropout: float = field(0.0, rule=DROPOUT_RATE)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  """Inverted dropout drawn from an explicit key, so a train step stays a pure function
  of (state, batch, key); no key (evaluation) or rate 0 leaves x unchanged."""
  if rng is None or not rate:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def hidden_axis(index: int) -> str:
  """Logical name of hidden layer `index`'s width: `mlp` and `embed` alternate, so
  consecutive kernels are split along different mesh axes (no resharding between)."""
  return "mlp" if index % 2 == 0 else "embed"


def dense_stack(cfg, *, rngs: nnx.Rngs) -> nnx.List:
  """BitDense layers input_dim -> *hidden_sizes -> num_classes (the MLP's and the GNN's).

  The input axis is named `vocab` (bag-of-words features are a vocabulary); the
  class axis is left replicated (None): it is small and no logical name fits.
  """
  dense = dict(cfg.dense_kwargs(), rngs=rngs)
  widths = (cfg.input_dim, *cfg.hidden_sizes, cfg.num_classes)
  axes = ("vocab", *(hidden_axis(i) for i in range(len(cfg.hidden_sizes))), None)
  return nnx.List([
      BitDense(widths[i], widths[i + 1], kernel_axes=(axes[i], axes[i + 1]), **dense)
      for i in range(len(widths) - 1)
  ])


class MLPClassifier(nnx.Module):
  """features [batch, input_dim] (float) -> logits [batch, num_classes] (float32);
  `dropout_rng` (training) applies `cfg.dropout` before every layer."""

  def __init__(self, cfg: MLPConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.layers = dense_stack(cfg, rngs=rngs)

  def __call__(self, features: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
    x = features
    for i, layer in enumerate(self.layers):
      key = None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
      x = layer(dropout(x, self.cfg.dropout, key))
      if i < len(self.layers) - 1:
        x = jax.nn.relu(x)
    return x.astype("float32")
