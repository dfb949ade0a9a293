"""train_and_evaluate: the one training loop, a pure jitted step on (graphdef, state)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from bitjax.models import (Decoder, DecoderConfig, count_params, train_flops_per_token,
                           weight_memory_bits)
from bitjax.parallel import (global_batch, logical_sharding, make_mesh, process_batch_block,
                             sharded_jit, state_shardings)
from bitjax.train.checkpoint import Checkpointer, guard_config
from bitjax.train.config import ConfigError, check_workdir, validate_config
from bitjax.train.metrics import MetricWriter, lm_metrics, throughput_metrics
from bitjax.train.optim import learning_rate_schedule, make_optimizer

BATCH_AXES = ("batch", "length")  # logical axes of inputs and targets


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


def state_layout(model_cfg: DecoderConfig, tx: optax.GradientTransformation, seed: int,
                 mesh: Mesh) -> StateLayout:
  """Shapes by abstract evaluation, shardings from the parameters' logical axes
  (optimizer moments inherit them; step and counts are replicated), and an init that
  writes each shard on its device, so no device ever holds the full state."""
  def create() -> TrainState:
    params = nnx.state(Decoder(model_cfg, rngs=nnx.Rngs(seed)))
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(seed))))
  shapes = jax.eval_shape(create)
  shardings = state_shardings(shapes, mesh)
  abstract = jax.tree.map(
      lambda leaf, sharding: jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), leaf),
      shapes, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return StateLayout(graphdef, shardings, abstract, jax.jit(create, out_shardings=shardings))


def init_state(model_cfg: DecoderConfig, tx: optax.GradientTransformation, seed: int,
               mesh: Mesh | None = None):
  """The model and its optimizer state, sharded over `mesh` (default: one device);
  returns (graphdef, TrainState)."""
  layout = state_layout(model_cfg, tx, seed, mesh or make_mesh(devices=jax.devices()[:1]))
  return layout.graphdef, layout.init()


def batch_sharding(mesh: Mesh, batch_size: int, seq_len: int) -> NamedSharding:
  return logical_sharding((batch_size, seq_len), BATCH_AXES, mesh)


def jit_train_step(layout: StateLayout, tx, lr_schedule, mesh: Mesh, batch: NamedSharding):
  """The jitted train step: state in and out in its shardings (donated), metrics replicated."""
  return sharded_jit(functools.partial(train_step, layout.graphdef, tx, lr_schedule), mesh,
                     in_shardings=(layout.shardings, batch),
                     out_shardings=(layout.shardings, NamedSharding(mesh, PartitionSpec())),
                     donate_argnums=0)


def cross_entropy(graphdef, params, batch) -> jax.Array:
  """Per-token next-token loss in nats, float32, shape of targets."""
  logits = nnx.merge(graphdef, params)(batch["inputs"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])


def train_step(graphdef, tx, lr_schedule, state: TrainState, batch):
  loss_fn = lambda params: cross_entropy(graphdef, params, batch).mean()
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr_schedule(state.step)}
  return new_state, metrics


def eval_step(graphdef, bytes_per_token, params, batch):
  """Summed loss, token count and byte count, so bits per byte is exact over batches."""
  losses = cross_entropy(graphdef, params, batch)
  return {"loss_sum": losses.sum(), "tokens": jnp.asarray(losses.size, jnp.float32),
          "bytes": bytes_per_token[batch["targets"]].sum()}


def evaluate(eval_fn, params, batches) -> dict[str, float]:
  totals = {"loss_sum": 0.0, "tokens": 0.0, "bytes": 0.0}
  for batch in batches:
    for key, value in jax.device_get(eval_fn(params, batch)).items():
      totals[key] += float(value)
  return lm_metrics(totals["loss_sum"], totals["tokens"], totals["bytes"])


def _run_summary(config, model_cfg, model_stats, eval_metrics, wall, steps_run, tokens_s,
                 data_info):
  tokens = config.train.steps * config.train.batch_size * config.train.seq_len
  return {
      "precision": model_cfg.precision,
      "compute_dtype": jnp.dtype(model_cfg.dtype).name,
      "params": model_stats["total"],
      "non_embedding_params": model_stats["non_embedding"],
      "weight_memory_bits": model_stats["weight_memory_bits"],
      "steps": config.train.steps,
      "tokens": tokens,
      "train_flops": float(train_flops_per_token(model_cfg, config.train.seq_len) * tokens),
      "eval_loss": eval_metrics["loss"],
      "eval_perplexity": eval_metrics["perplexity"],
      "eval_bits_per_byte": eval_metrics["bits_per_byte"],
      "train_wall_s": wall,
      "steps_this_session": steps_run,
      "tokens_per_s": tokens_s,  # this session's steps over its wall time (compile, eval too)
      "device_kind": jax.devices()[0].device_kind,
      "data": data_info,
  }


def make_config_mesh(config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """The mesh `config.mesh` asks for over `devices` (default: all), checked against the
  batch size; a ConfigError naming the field when they do not fit."""
  try:
    mesh = make_mesh(**config.mesh, devices=devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.train.batch_size % batch_shards:
    raise ConfigError(
        f"config.train.batch_size={config.train.batch_size} is not divisible by the mesh's "
        f"data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']} = {batch_shards}")
  return mesh


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train `config` in `workdir`, resuming from its newest checkpoint; returns the summary.

  The state is sharded over the mesh of `config.mesh` (by default data parallel over
  every device; one device trains exactly as unsharded code would). With several
  processes (bitjax.parallel.initialize_distributed) each reads only its rows of
  every batch; only process 0 writes metrics and the summary.
  A finished workdir returns its stored summary without training again.
  """
  from bitjax import data as bitjax_data

  model_cfg = validate_config(config)
  workdir = check_workdir(workdir)
  lead = jax.process_index() == 0
  # The mesh says how a run is laid out, not what it computes: a run may resume on another.
  guard_config(workdir, {k: v for k, v in config.to_dict().items() if k != "mesh"}, write=lead)
  summary_path = os.path.join(workdir, "summary.json")
  tcfg = config.train
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), tcfg.max_checkpoints)
  if checkpointer.latest_step() == tcfg.steps and os.path.exists(summary_path):
    checkpointer.close()
    with open(summary_path) as f:
      return json.load(f)

  mesh = make_config_mesh(config)
  quantized = model_cfg.spec.quantized
  tx = make_optimizer(config.optim, tcfg.steps, quantized)
  lr_schedule = learning_rate_schedule(config.optim, tcfg.steps, quantized)
  layout = state_layout(model_cfg, tx, tcfg.seed, mesh)
  batch_layout = batch_sharding(mesh, tcfg.batch_size, tcfg.seq_len)
  block, num_blocks = process_batch_block(batch_layout, (tcfg.batch_size, tcfg.seq_len))
  rows = tcfg.batch_size // num_blocks

  train_iter = bitjax_data.make_train_iterator(
      config.data, seq_len=tcfg.seq_len, global_batch_size=tcfg.batch_size, seed=tcfg.seed,
      process_index=block, process_count=num_blocks)
  eval_batches = [
      global_batch({k: v[block * rows:(block + 1) * rows] for k, v in batch.items()},
                   batch_layout, tcfg.batch_size)
      for batch in bitjax_data.make_eval_batches(config.data, seq_len=tcfg.seq_len,
                                                 batch_size=tcfg.batch_size,
                                                 num_batches=tcfg.eval_batches)]
  bytes_per_token = jnp.asarray(bitjax_data.get_tokenizer(config.data).bytes_per_token)
  data_info = ({"name": config.data.name, **bitjax_data.corpus_metadata(config.data)}
               if config.data.name in ("stdlib", "text_dir")
               else {"name": "tfds", "tfds_name": config.data.tfds_name})

  start = checkpointer.latest_step()
  if start is None:
    state = layout.init()
  else:
    state, data_state = checkpointer.restore(start, layout.abstract)
    train_iter.set_state(data_state)
    if lead:
      tqdm.write(f"Resuming {workdir} from step {start}")
  start = start or 0
  model = nnx.merge(layout.graphdef, state.params)
  model_stats = {**count_params(model), "weight_memory_bits": weight_memory_bits(model)}

  step_fn = jit_train_step(layout, tx, lr_schedule, mesh, batch_layout)
  eval_fn = sharded_jit(functools.partial(eval_step, layout.graphdef, bytes_per_token), mesh,
                        in_shardings=(layout.shardings.params, batch_layout),
                        out_shardings=NamedSharding(mesh, PartitionSpec()))
  writer = MetricWriter(workdir) if lead else None
  tokens_per_step = tcfg.batch_size * tcfg.seq_len
  flops_per_token = train_flops_per_token(model_cfg, tcfg.seq_len)
  bar = tqdm(total=tcfg.steps, initial=start, disable=not (tcfg.progress_bar and lead),
             mininterval=2.0, desc=f"{model_cfg.precision} {model_stats['total'] / 1e6:.2f}M",
             unit="step", dynamic_ncols=True)
  t_start = t_log = time.perf_counter()
  step_log = start
  eval_metrics = None
  try:
    for step in range(start + 1, tcfg.steps + 1):
      batch = global_batch(next(train_iter), batch_layout, tcfg.batch_size)
      state, metrics = step_fn(state, batch)
      bar.update(1)
      if step % tcfg.log_every == 0 or step == tcfg.steps:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        tokens_s = (step - step_log) * tokens_per_step / (now - t_log)
        t_log, step_log = now, step
        if writer:
          writer.write(step, "train", {**metrics, **throughput_metrics(
              tokens_s, flops_per_token, jax.device_count(), jax.devices()[0].device_kind)})
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{tokens_s:,.0f}")
      if step % tcfg.eval_every == 0 or step == tcfg.steps:
        eval_metrics = evaluate(eval_fn, state.params, eval_batches)
        if writer:
          writer.write(step, "eval", eval_metrics)
          bar.write(f"step {step}: eval loss {eval_metrics['loss']:.4f}, "
                    f"perplexity {eval_metrics['perplexity']:.3f}, "
                    f"bits/byte {eval_metrics['bits_per_byte']:.4f}")
      if step % tcfg.checkpoint_every == 0 or step == tcfg.steps:
        checkpointer.save(step, state, train_iter.get_state())
  finally:
    bar.close()
    if writer:
      writer.close()
    checkpointer.close()
  if eval_metrics is None:  # resumed at the last step without a summary
    eval_metrics = evaluate(eval_fn, state.params, eval_batches)
  wall = time.perf_counter() - t_start
  steps_run = tcfg.steps - start
  summary = _run_summary(config, model_cfg, model_stats, eval_metrics, wall, steps_run,
                         steps_run * tokens_per_step / wall, data_info)
  summary["workdir"] = workdir
  if lead:
    with open(summary_path, "w") as f:
      json.dump(summary, f, indent=2)
  return summary
