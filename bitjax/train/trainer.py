"""train_and_evaluate: the one training loop, a pure jitted step on (graphdef, state)."""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from bitjax.models import (Decoder, DecoderConfig, count_params, train_flops_per_token,
                           weight_memory_bits)
from bitjax.train.checkpoint import Checkpointer, guard_config
from bitjax.train.config import check_workdir, validate_config
from bitjax.train.metrics import MetricWriter, lm_metrics, throughput_metrics
from bitjax.train.optim import learning_rate_schedule, make_optimizer


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState


def init_state(model_cfg: DecoderConfig, tx: optax.GradientTransformation, seed: int):
  """Build the model and its optimizer state; returns (graphdef, TrainState)."""
  graphdef, params = nnx.split(Decoder(model_cfg, rngs=nnx.Rngs(seed)))
  return graphdef, TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train `config` in `workdir`, resuming from its newest checkpoint; returns the summary.

  A finished workdir returns its stored summary without training again.
  """
  from bitjax import data as bitjax_data

  model_cfg = validate_config(config)
  workdir = check_workdir(workdir)
  guard_config(workdir, config.to_dict())
  summary_path = os.path.join(workdir, "summary.json")
  tcfg = config.train
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), tcfg.max_checkpoints)
  if checkpointer.latest_step() == tcfg.steps and os.path.exists(summary_path):
    checkpointer.close()
    with open(summary_path) as f:
      return json.load(f)

  quantized = model_cfg.spec.quantized
  tx = make_optimizer(config.optim, tcfg.steps, quantized)
  lr_schedule = learning_rate_schedule(config.optim, tcfg.steps, quantized)
  graphdef, state = init_state(model_cfg, tx, tcfg.seed)
  model = nnx.merge(graphdef, state.params)
  model_stats = {**count_params(model), "weight_memory_bits": weight_memory_bits(model)}

  train_iter = bitjax_data.make_train_iterator(
      config.data, seq_len=tcfg.seq_len, global_batch_size=tcfg.batch_size, seed=tcfg.seed)
  eval_batches = bitjax_data.make_eval_batches(
      config.data, seq_len=tcfg.seq_len, batch_size=tcfg.batch_size,
      num_batches=tcfg.eval_batches)
  bytes_per_token = jnp.asarray(bitjax_data.get_tokenizer(config.data).bytes_per_token)
  data_info = ({"name": config.data.name, **bitjax_data.corpus_metadata(config.data)}
               if config.data.name in ("stdlib", "text_dir")
               else {"name": "tfds", "tfds_name": config.data.tfds_name})

  start = checkpointer.latest_step()
  if start is not None:
    state, data_state = checkpointer.restore(start, jax.eval_shape(lambda: state))
    train_iter.set_state(data_state)
    tqdm.write(f"Resuming {workdir} from step {start}")
  start = start or 0

  step_fn = jax.jit(functools.partial(train_step, graphdef, tx, lr_schedule), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(eval_step, graphdef, bytes_per_token))
  writer = MetricWriter(workdir)
  tokens_per_step = tcfg.batch_size * tcfg.seq_len
  flops_per_token = train_flops_per_token(model_cfg, tcfg.seq_len)
  bar = tqdm(total=tcfg.steps, initial=start, disable=not tcfg.progress_bar, mininterval=2.0,
             desc=f"{model_cfg.precision} {model_stats['total'] / 1e6:.2f}M", unit="step",
             dynamic_ncols=True)
  t_start = t_log = time.perf_counter()
  step_log = start
  eval_metrics = None
  try:
    for step in range(start + 1, tcfg.steps + 1):
      state, metrics = step_fn(state, next(train_iter))
      bar.update(1)
      if step % tcfg.log_every == 0 or step == tcfg.steps:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        tokens_s = (step - step_log) * tokens_per_step / (now - t_log)
        t_log, step_log = now, step
        writer.write(step, "train", {**metrics, **throughput_metrics(
            tokens_s, flops_per_token, jax.device_count(), jax.devices()[0].device_kind)})
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{tokens_s:,.0f}")
      if step % tcfg.eval_every == 0 or step == tcfg.steps:
        eval_metrics = evaluate(eval_fn, state.params, eval_batches)
        writer.write(step, "eval", eval_metrics)
        bar.write(f"step {step}: eval loss {eval_metrics['loss']:.4f}, "
                  f"perplexity {eval_metrics['perplexity']:.3f}, "
                  f"bits/byte {eval_metrics['bits_per_byte']:.4f}")
      if step % tcfg.checkpoint_every == 0 or step == tcfg.steps:
        checkpointer.save(step, state, train_iter.get_state())
  finally:
    bar.close()
    writer.close()
    checkpointer.close()
  if eval_metrics is None:  # resumed at the last step without a summary
    eval_metrics = evaluate(eval_fn, state.params, eval_batches)
  wall = time.perf_counter() - t_start
  steps_run = tcfg.steps - start
  summary = _run_summary(config, model_cfg, model_stats, eval_metrics, wall, steps_run,
                         steps_run * tokens_per_step / wall, data_info)
  summary["workdir"] = workdir
  with open(summary_path, "w") as f:
    json.dump(summary, f, indent=2)
  return summary
