"""The pure pieces of a training step: train state, its sharded layout, the jitted
step, for any model class and loss (a task's: bitjax.train.tasks). They import only
jax, flax, optax and bitjax.parallel, so benchmarks (experiments/bench/train_step.py)
and the AOT compile (bitjax.train.compile) time exactly what trains."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bitjax.parallel import sharded_jit, state_shardings

LossFn = Callable[[nnx.Module, Any, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class StateLayout:
  """Where every leaf of the TrainState lives, known before anything is allocated."""

  graphdef: nnx.GraphDef
  shardings: Any  # TrainState of NamedShardings (a prefix of the state's tree)
  abstract: Any  # TrainState of ShapeDtypeStructs with their shardings: restore and AOT target
  init: Callable[[], TrainState]  # jitted: creates the state directly in its shardings


def state_layout(model_cfg, tx: optax.GradientTransformation, seed: int, mesh: Mesh,
                 model_class: Callable[..., nnx.Module]) -> StateLayout:
  """Shapes by abstract evaluation, shardings from the parameters' logical axes
  (optimizer moments inherit them; step and counts are replicated), and an init that
  writes each shard on its device, so no device ever holds the full state.
  `model_class(model_cfg, rngs=...)` builds the model (a task's model_class)."""
  def create() -> TrainState:
    params = nnx.state(model_class(model_cfg, rngs=nnx.Rngs(seed)))
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

  graphdef = nnx.graphdef(nnx.eval_shape(lambda: model_class(model_cfg, rngs=nnx.Rngs(seed))))
  shapes = jax.eval_shape(create)
  shardings = state_shardings(shapes, mesh)
  abstract = jax.tree.map(
      lambda leaf, sharding: jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), leaf),
      shapes, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return StateLayout(graphdef, shardings, abstract, jax.jit(create, out_shardings=shardings))


def jit_train_step(layout: StateLayout, tx, lr_schedule, mesh: Mesh, batch: NamedSharding,
                   loss_fn: LossFn, seed: int = 0, skip_nonfinite: bool = False):
  """The jitted train step: state in and out in its shardings (donated), the batch in
  `batch` (a sharding for every array), metrics replicated. `loss_fn`, `seed` and
  `skip_nonfinite` as in train_step."""
  step = functools.partial(train_step, layout.graphdef, tx, lr_schedule, loss_fn=loss_fn,
                           seed=seed, skip_nonfinite=skip_nonfinite)
  return sharded_jit(step, mesh,
                     in_shardings=(layout.shardings, batch),
                     out_shardings=(layout.shardings, NamedSharding(mesh, PartitionSpec())),
                     donate_argnums=0)


def train_step(graphdef, tx, lr_schedule, state: TrainState, batch, *,
               loss_fn: LossFn, seed: int = 0, skip_nonfinite: bool = False):
  """One optimizer step on `loss_fn(model, batch, rng) -> (loss, metrics)`. The rng (for
  dropout) is derived from `seed` and the step count, so the step stays a pure function
  of (state, batch) and a resumed run draws the same keys.

  `skip_nonfinite` (config.train.nonfinite="skip"): where the loss or the gradient norm
  is not finite, the parameters and optimizer state stay as they were (only the step
  count advances) and metrics["skipped"] is 1. A select keeps every finite update's values
  bit for bit; the old state must stay alive meanwhile, so the step holds two states."""
  rng = jax.random.fold_in(jax.random.key(seed), state.step)
  loss_of = lambda params: loss_fn(nnx.merge(graphdef, params), batch, rng)
  (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads)
  metrics = {"loss": loss, **aux, "grad_norm": grad_norm, "lr": lr_schedule(state.step)}
  if skip_nonfinite:
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep_old = lambda new, old: jnp.where(finite, new, old)
    params = jax.tree.map(keep_old, params, state.params)
    opt_state = jax.tree.map(keep_old, opt_state, state.opt_state)
    metrics["skipped"] = (~finite).astype(jnp.int32)
  return TrainState(state.step + 1, params, opt_state), metrics

