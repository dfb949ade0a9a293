"""train_and_evaluate: the one training loop, a pure jitted step on (graphdef, state)."""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from bitjax.models import count_params, train_flops_per_token, weight_memory_bits
from bitjax.parallel import global_batch, make_mesh, process_batch_block, sharded_jit
from bitjax.train.checkpoint import Checkpointer, guard_config
from bitjax.train.config import ConfigError, check_workdir, validate_config
from bitjax.train.metrics import MetricWriter, lm_metrics, throughput_metrics
from bitjax.train.optim import learning_rate_schedule, make_optimizer
from bitjax.train.step import batch_sharding, eval_step, jit_train_step, state_layout


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
