"""AdamW with the per-preset schedules of DESIGN.md section 3.

Quantized presets (b1.58, 1bit) use the two-stage recipe of BitNet b1.58:
stage one decays linearly from `lr` to `stage1_end_lr` with weight decay;
at half the run the rate drops to `stage2_lr` and decays linearly to 0 with
weight decay off. Full precision uses one linear or cosine decay.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("auto", "two_stage", "linear", "cosine", "constant")


def resolve_schedule(name: str, quantized: bool) -> str:
  if name not in SCHEDULES:
    raise ValueError(f"config.optim.schedule={name!r} is not one of {list(SCHEDULES)}")
  if name == "auto":
    return "two_stage" if quantized else "linear"
  return name


def learning_rate_schedule(optim, total_steps: int, quantized: bool) -> optax.Schedule:
  """Linear warmup to `optim.lr`, then the decay the schedule names."""
  kind = resolve_schedule(optim.schedule, quantized)
  warmup = min(optim.warmup_steps, max(total_steps // 2, 1))
  peak = optim.lr

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * jnp.minimum((step + 1) / warmup, 1.0)
    progress = jnp.clip((step - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
    if kind == "constant":
      decayed = jnp.full_like(progress, peak)
    elif kind == "linear":
      decayed = peak * (1.0 - progress)
    elif kind == "cosine":
      decayed = peak * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    else:
      half = total_steps // 2
      stage1_end = optim.stage1_end_lr
      if stage1_end is None:
        stage1_end = 0.5 * (peak + optim.stage2_lr)
      p1 = jnp.clip((step - warmup) / max(half - warmup, 1), 0.0, 1.0)
      p2 = jnp.clip((step - half) / max(total_steps - half, 1), 0.0, 1.0)
      decayed = jnp.where(step < half, peak + (stage1_end - peak) * p1,
                          optim.stage2_lr * (1.0 - p2))
    return jnp.where(step < warmup, warm, decayed)

  return schedule


def weight_decay_schedule(optim, total_steps: int, quantized: bool) -> optax.Schedule:
  """Constant decay, or (two-stage recipe) decay only in the first half."""
  kind = resolve_schedule(optim.schedule, quantized)
  wd = optim.weight_decay
  if kind != "two_stage":
    return lambda step: jnp.asarray(wd, jnp.float32)
  half = total_steps // 2
  return lambda step: jnp.where(step < half, wd, 0.0).astype(jnp.float32)


def decay_mask(params):
  """Weight decay on matrices only (kernels, embeddings), never on norm scales."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim, total_steps: int, quantized: bool) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(optim.grad_clip),
      optax.adamw(
          learning_rate=learning_rate_schedule(optim, total_steps, quantized),
          b1=optim.b1, b2=optim.b2, eps=optim.eps,
          weight_decay=weight_decay_schedule(optim, total_steps, quantized),
          mask=decay_mask,
      ),
  )
