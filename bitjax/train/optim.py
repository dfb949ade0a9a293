"""AdamW with the per-preset schedules of docs/design.md section 7, and the `config.optim` schema.

Quantized presets (b1.58, 1bit) use BitNet b1.58's two-stage recipe. `two_stage` is the
Training Tips figure as docs/design.md section 7 reads it: two straight lines from their
peaks (`lr`, `stage2_lr`) at the end of warmup down to 0 at the end of training; the
rate follows the first until half the run and the second from there, with weight decay
only in the first half. `two_stage_restart` is bitjax's earlier reading, kept because the
CPU configs' rates were chosen with it and the README and experiments were measured with
it: stage one decays from `lr` to `stage1_end_lr`, then the rate restarts at `stage2_lr`
and decays to 0 over the second half. Full precision uses one linear or cosine decay.

The rates depend on the precision, which a command-line override may change, so
they are derived after the overrides (`OptimConfig.resolved`, called by
`bitjax.train.config.resolve_config`): a field left None takes its value from the
model's learning-rate recipe in `config.optim.recipes`, and schedule "auto" the recipe's
schedule (two_stage for low_bit, linear for full_precision, unless the recipe names one).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax

from bitjax.schema import NON_NEGATIVE, NON_NEGATIVE_INT, Section, check_known, field

SCHEDULES = ("auto", "two_stage", "two_stage_restart", "linear", "cosine", "constant")
TWO_STAGE_SCHEDULES = ("two_stage", "two_stage_restart")
# QuantSpec.lr_recipe: "low_bit" for quantized presets, "full_precision" otherwise.
LR_RECIPES = ("low_bit", "full_precision")
RECIPE_FIELDS = ("lr", "stage2_lr", "stage1_end_lr")
# The fields OptimConfig.resolved fills: their values depend on other fields. A recipe may
# also name the schedule "auto" resolves to.
DERIVED_FIELDS = ("schedule", *RECIPE_FIELDS)
DEFAULT_SCHEDULES = {"low_bit": "two_stage", "full_precision": "linear"}


def default_recipes() -> dict[str, dict[str, float]]:
  return {recipe: {"lr": 1e-3, "stage2_lr": 6e-4} for recipe in LR_RECIPES}


@dataclasses.dataclass(frozen=True)
class OptimConfig(Section):
  """Schema of `config.optim`. The rates and the schedule are derived fields: None
  (and schedule "auto") means "from the model's recipe"; a value set wins."""

  section: ClassVar[str] = "optim"

  # auto: the recipe's "schedule", else two_stage (low_bit) or linear (full_precision)
  schedule: str = field("auto", allowed=SCHEDULES)
  lr: float | None = field(None, rule=NON_NEGATIVE)
  # two_stage: the peak of the second line; two_stage_restart: the rate at half the run
  stage2_lr: float | None = field(None, rule=NON_NEGATIVE)
  # two_stage_restart only; None: the recipe's, else halfway between lr and stage2_lr
  stage1_end_lr: float | None = field(None, rule=NON_NEGATIVE)
  # recipe name (LR_RECIPES) -> values of RECIPE_FIELDS (and "schedule") for the fields
  # left None (and "auto") above
  recipes: dict = field(default_factory=default_recipes)
  warmup_steps: int = field(375, rule=NON_NEGATIVE_INT)
  b1: float = 0.9
  b2: float = 0.95
  eps: float = field(1e-8, rule=NON_NEGATIVE)
  weight_decay: float = field(0.1, rule=NON_NEGATIVE)
  grad_clip: float = field(1.0, rule=NON_NEGATIVE)

  def __post_init__(self):
    super().__post_init__()
    check_known("optim.recipes", self.recipes, LR_RECIPES)
    for recipe, values in self.recipes.items():
      check_known(f"optim.recipes.{recipe}", values, ("schedule", *RECIPE_FIELDS))
      for name, value in values.items():
        if name == "schedule":
          if value not in SCHEDULES[1:]:
            raise self.error(f"recipes.{recipe}.schedule", f"is not one of {list(SCHEDULES[1:])}",
                             value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
          raise self.error(f"recipes.{recipe}.{name}", "must be a number >= 0", value)

  def resolved(self, recipe: str) -> OptimConfig:
    """Every derived field filled for a model of learning-rate `recipe`: a field set
    explicitly wins, else the recipe's value; the schedule "auto" becomes the recipe's
    schedule, else two_stage (low_bit) or linear; for two_stage_restart stage1_end_lr
    defaults to halfway between the two rates. A two-stage schedule must drop its rate at
    half the run: stage2_lr > lr is an error even when both were set explicitly, since no
    recipe rises there and the error cannot tell a deliberate rise from a rate left over
    from another recipe. stage1_end_lr set for two_stage is an error: its first line
    ends at 0, so the value would be ignored."""
    values = self.recipes.get(recipe, {})
    derived = {name: values.get(name) if getattr(self, name) is None else getattr(self, name)
               for name in RECIPE_FIELDS}
    schedule = self.schedule
    if schedule == "auto":
      schedule = values.get("schedule", DEFAULT_SCHEDULES.get(recipe, "linear"))
    two_stage = schedule in TWO_STAGE_SCHEDULES
    needed = ("lr", "stage2_lr") if two_stage else ("lr",)
    for name in needed:
      if derived[name] is None:
        raise ValueError(f"config.optim.{name} is not set and config.optim.recipes.{recipe} "
                         f"(the model's recipe) has no {name!r}")
    if two_stage and derived["stage2_lr"] > derived["lr"]:
      raise ValueError(
          f"config.optim.stage2_lr={derived['stage2_lr']!r} exceeds config.optim.lr="
          f"{derived['lr']!r}: the two-stage schedule drops the rate at half the run; "
          "set config.optim.stage2_lr <= config.optim.lr (or another config.optim.schedule)")
    if schedule == "two_stage" and derived["stage1_end_lr"] is not None:
      raise ValueError(
          f"config.optim.stage1_end_lr={derived['stage1_end_lr']!r} has no effect with "
          "config.optim.schedule='two_stage' (its first line decays to 0); leave it None "
          "or use config.optim.schedule='two_stage_restart'")
    if schedule == "two_stage_restart" and derived["stage1_end_lr"] is None:
      derived["stage1_end_lr"] = 0.5 * (derived["lr"] + derived["stage2_lr"])
    return dataclasses.replace(self, schedule=schedule, **derived)


def earlier_schedule_names(saved: dict, recipe: str) -> dict:
  """A saved optim section (a run's config.json) in this version's schedule names.
  Before `two_stage_restart` had its name, every two-stage run used that reading and
  saved it as "two_stage" with a stage1_end_lr (or, earlier still, "auto" under the
  low_bit recipe); this version's "two_stage" saves stage1_end_lr None."""
  schedule = saved.get("schedule")
  earlier = ((schedule == "two_stage" and saved.get("stage1_end_lr") is not None)
             or (schedule == "auto" and recipe == "low_bit"))
  return {**saved, "schedule": "two_stage_restart"} if earlier else saved


def learning_rate_schedule(optim, total_steps: int) -> optax.Schedule:
  """Linear warmup to `optim.lr`, then the decay the schedule names. `optim` is a
  resolved optim section (OptimConfig.resolved): concrete schedule and rates."""
  kind = _resolved_schedule(optim)
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
    elif kind == "two_stage":
      half = total_steps // 2
      decayed = jnp.where(step < half, peak, optim.stage2_lr) * (1.0 - progress)
    else:  # two_stage_restart
      half = total_steps // 2
      p1 = jnp.clip((step - warmup) / max(half - warmup, 1), 0.0, 1.0)
      p2 = jnp.clip((step - half) / max(total_steps - half, 1), 0.0, 1.0)
      decayed = jnp.where(step < half, peak + (optim.stage1_end_lr - peak) * p1,
                          optim.stage2_lr * (1.0 - p2))
    return jnp.where(step < warmup, warm, decayed)

  return schedule


def weight_decay_schedule(optim, total_steps: int) -> optax.Schedule:
  """Constant decay, or (two-stage schedules) decay only in the first half."""
  wd = optim.weight_decay
  if _resolved_schedule(optim) not in TWO_STAGE_SCHEDULES:
    return lambda step: jnp.asarray(wd, jnp.float32)
  half = total_steps // 2
  return lambda step: jnp.where(step < half, wd, 0.0).astype(jnp.float32)


def _resolved_schedule(optim) -> str:
  """The schedule of a resolved section; an unresolved one ("auto", no lr) is refused
  rather than read as some schedule."""
  if optim.schedule == "auto" or optim.lr is None:
    raise ValueError("config.optim is not resolved: build the optimizer from "
                     "bitjax.train.config.resolve_config(config).optim")
  return optim.schedule


def decay_mask(params):
  """Weight decay on matrices only (kernels, embeddings), never on norm scales."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim, total_steps: int) -> optax.GradientTransformation:
  """AdamW of a resolved optim section (OptimConfig.resolved)."""
  return optax.chain(
      optax.clip_by_global_norm(optim.grad_clip),
      optax.adamw(
          learning_rate=learning_rate_schedule(optim, total_steps),
          b1=optim.b1, b2=optim.b2, eps=optim.eps,
          weight_decay=weight_decay_schedule(optim, total_steps),
          mask=decay_mask,
      ),
  )
