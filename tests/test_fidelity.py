"""bitjax against the papers it follows, from outside: the 2411.05882 layer against an
independent numpy implementation of its formulas, the paper presets against the papers'
numbers (written here as a table, not read from docs/design.md), the two-stage schedule
against its closed form, and the README main job's first run repeated bit for bit."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax._compat import iter_modules, set_value
from bitjax.models import (DecoderConfig, EncDecConfig, Encoder, EncoderConfig, EncoderDecoder,
                           MLPConfig)
from bitjax.models.mlp import dense_stack
from bitjax.nn import BitDense
from bitjax.nn.norms import LayerNormNoAffine
from bitjax.train import train_and_evaluate
from bitjax.train.config import load_config, model_config, resolve_config
from bitjax.train.optim import OptimConfig
from bitjax.train.schedule_plot import plot_schedules, schedule_values

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM_CONFIG = os.path.join(ROOT, "configs", "lm.py")


# --- the 2411.05882 layer (b1.58-ln) -----------------------------------------------------

def np_bitlinear_ln(x, w, b, eps=1e-5, bits=8):
  """2411.05882's BitLinear as its formulas read (docs/design.md section 3), in float32
  numpy: y = Q(LN(x)) @ T(W) + b with LN without affine parameters, Q the per-token
  activation quantizer clip(round(x * Q_b / absmax), -Q_b, Q_b - 1) / (Q_b / absmax),
  Q_b = 2^(bits-1), and T absmean ternary weights. Returns y, the normalised input, the
  dequantized activations and weights, and the scaled activations x * Q_b / absmax."""
  x, w = np.asarray(x, np.float32), np.asarray(w, np.float32)
  centred = x - x.mean(-1, keepdims=True)
  normed = centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + np.float32(eps))
  q = np.float32(2 ** (bits - 1))
  inverse = q / np.maximum(np.abs(normed).max(-1, keepdims=True), np.float32(1e-5))
  scaled = normed * inverse
  x_hat = np.clip(np.round(scaled), -q, q - 1) / inverse
  gamma = max(np.abs(w).mean(), np.float32(1e-5))
  w_hat = np.clip(np.round(w / gamma), -1, 1) * gamma
  return x_hat @ w_hat + b, normed, x_hat, w_hat, scaled


def np_bitlinear_ln_grads(x, w, upstream, eps=1e-5):
  """Straight-through gradients of sum(y * upstream): the rounding passes gradients
  unchanged and the scales are constants (as the authors' BitLinear detaches them), so
  dW = x_hat^T g, db = sum g, and dx is LayerNorm's backward pass of g @ w_hat^T."""
  _, normed, x_hat, w_hat, _ = np_bitlinear_ln(x, w, 0.0, eps)
  g = np.asarray(upstream, np.float64)
  d_normed = g @ w_hat.T.astype(np.float64)
  centred = x - x.mean(-1, keepdims=True)
  inv_std = 1 / np.sqrt((centred.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps)
  n = normed.astype(np.float64)
  dx = inv_std * (d_normed - d_normed.mean(-1, keepdims=True)
                  - n * (d_normed * n).mean(-1, keepdims=True))
  return dx, x_hat.T.astype(np.float64) @ g, g.sum(0)


def b158_ln_layer(in_features, out_features):
  """The MLP's first BitDense under precision=b1.58-ln, as a model builds it."""
  cfg = MLPConfig(precision="b1.58-ln", input_dim=in_features, num_classes=out_features,
                  hidden_sizes=(8,), compute_dtype="float32")
  return dense_stack(cfg, rngs=nnx.Rngs(0))[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_b158_ln_layer_matches_the_paper_formulas(seed):
  rng = np.random.default_rng(1000 + seed)
  in_features, out_features = 48, 8
  layer = b158_ln_layer(in_features, out_features)
  assert isinstance(layer.norm, LayerNormNoAffine) and layer.norm.eps == 1e-5
  assert layer.bias is not None
  x = (rng.standard_normal((16, in_features)) * rng.uniform(0.1, 5.0, (16, 1))
       + rng.standard_normal((16, 1))).astype(np.float32)
  w = (rng.standard_normal((in_features, out_features)) * 0.2).astype(np.float32)
  b = rng.standard_normal(out_features).astype(np.float32)
  upstream = rng.standard_normal((16, out_features)).astype(np.float32)
  set_value(layer.kernel, jnp.asarray(w))
  set_value(layer.bias, jnp.asarray(b))
  expected, _, x_hat, _, scaled = np_bitlinear_ln(x, w, b)
  # Rows where a scaled value sits within float32 rounding of a .5 boundary may round
  # either way in two correct implementations; compare the others exactly-ish.
  clear = (np.abs(np.abs(scaled - np.floor(scaled)) - 0.5) > 1e-4).all(-1)
  assert clear.sum() >= 12
  y = np.asarray(layer(jnp.asarray(x)))
  np.testing.assert_allclose(y[clear], expected[clear], rtol=2e-5, atol=2e-5)
  # 128/absmax: every row's largest |value| lands on code 127 or -128.
  codes = np.round(x_hat * (128 / np.abs(x_hat).max(-1, keepdims=True)))
  assert set(np.abs(codes).max(-1)) <= {127.0, 128.0}

  grads, dx = nnx.grad(lambda layer, inputs: jnp.sum(layer(inputs) * upstream),
                       argnums=(0, 1))(layer, jnp.asarray(x))
  dw, db = grads["kernel"][...], grads["bias"][...]
  ref_dx, ref_dw, ref_db = np_bitlinear_ln_grads(x, w, upstream)
  np.testing.assert_allclose(np.asarray(db), ref_db, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dx)[clear], ref_dx[clear], rtol=1e-4, atol=1e-5)
  if clear.all():
    np.testing.assert_allclose(np.asarray(dw), ref_dw, rtol=1e-4, atol=1e-4)


def test_b158_ln_fields_resolve_from_the_preset_and_refuse_what_a_model_cannot_do():
  cfg = MLPConfig(precision="b1.58-ln")
  assert (cfg.inner_norm, cfg.norm_eps, cfg.use_bias) == ("layernorm", 1e-5, True)
  plain = MLPConfig(precision="b1.58")
  assert (plain.inner_norm, plain.norm_eps, plain.use_bias) == ("rms", 1e-6, False)
  assert MLPConfig(precision="b1.58-ln", use_bias=False, norm_eps=1e-6).norm_eps == 1e-6
  assert MLPConfig(precision="b1.58", dense_norm="layernorm").inner_norm == "layernorm"
  with pytest.raises(ValueError, match=r"config.model.dense_norm='batch' is not one of"):
    MLPConfig(precision="b1.58-ln", dense_norm="batch")
  with pytest.raises(ValueError, match=r"config.model.act_granularity='row' is not one of"):
    MLPConfig(precision="b1.58-ln", act_granularity="row")
  # The encoder takes the preset's bias; the decoder (BitNet's layout, and what Hugging Face
  # and GGUF exchange) has none to turn on.
  encoder = model_config(resolve_config(load_config(
      os.path.join(ROOT, "configs", "encoder.py") + ":mlm,precision=b1.58-ln")))
  assert (encoder.inner_norm, encoder.use_bias) == ("layernorm", True)
  assert DecoderConfig(precision="b1.58-ln").use_bias is False
  with pytest.raises(ValueError, match=r"config.model.use_bias=True is not possible"):
    DecoderConfig(precision="b1.58-ln", use_bias=True)


@pytest.mark.parametrize("family", ["encoder", "encdec"])
def test_transformer_projections_carry_the_b158_ln_bias(family):
  """Every projection of an encoder or encoder-decoder block has a bias under b1.58-ln,
  none under b1.58, and the bias is added after the quantized matmul."""
  cls, cfg_cls = {"encoder": (Encoder, EncoderConfig),
                  "encdec": (EncoderDecoder, EncDecConfig)}[family]
  shape = dict(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, mlp_hidden_size=48)
  for precision, biased in (("b1.58-ln", True), ("b1.58", False)):
    dense = quantized_dense(cls(cfg_cls(precision=precision, **shape), rngs=nnx.Rngs(0)))
    # q k v o gate up down per block; the decoder block adds cross-attention q k v o
    assert len(dense) == (7 if family == "encoder" else 7 + 11)
    assert dense and all((m.bias is not None) == biased for m in dense), precision
  layer = quantized_dense(cls(cfg_cls(precision="b1.58-ln", **shape), rngs=nnx.Rngs(1)))[0]
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 32)), jnp.float32)
  without = layer(x)
  layer.bias[...] = jnp.arange(layer.bias.shape[0], dtype=jnp.float32)
  np.testing.assert_allclose(np.asarray(layer(x) - without),
                             np.broadcast_to(np.arange(layer.bias.shape[0]), without.shape),
                             rtol=1e-5, atol=1e-5)


def quantized_dense(model) -> list[BitDense]:
  return [m for _, m in iter_modules(model) if isinstance(m, BitDense)
          and m.spec.weight_quantizer.quantized]


@pytest.mark.parametrize("path, arg", [
    ("mlp.py", "digits"), ("mlp.py", "stdlib_packages"), ("gnn.py", "csbm"),
    ("gnn.py", "csbm,architecture=gcn"), ("encoder.py", "mlm"), ("encdec.py", "span_corruption")])
def test_small_model_configs_accept_b158_ln(path, arg):
  config = resolve_config(load_config(os.path.join(ROOT, "configs", path) + f":{arg},precision=b1.58-ln"))
  model = model_config(config)
  assert model.spec.act_granularity == "token_qb" and model.inner_norm == "layernorm"
  assert model.use_bias


def test_small_models_sweep_runs_both_layers():
  from bitjax.train.config import call_python_file
  runs = call_python_file(os.path.join(ROOT, "configs", "sweeps", "small_models.py") + ":all,seeds=1",
                          "get_sweep")
  for family in ("mlp.py", "gnn.py", "encoder.py", "encdec.py"):
    precisions = {run.config.split("precision=")[1].split(",")[0] for run in runs
                  if run.config.split(":")[0].endswith(family)}
    assert {"b1.58", "b1.58-ln"} <= precisions, family


# --- paper presets against the papers' numbers ---------------------------------------------

# size: hidden, GLU, heads, layers, (b1.58 peak of line one, of line two), LLaMA peak.
# BitNet b1.58 Training Tips, table of model configurations and learning rates.
PAPER_TABLE = {
    "700m": (1536, 4096, 24, 24, (1.5e-3, 1e-3), 2.5e-4),
    "1.3b": (2048, 5460, 32, 24, (1.2e-3, 8e-4), 2e-4),
    "3b": (3200, 8640, 32, 26, (1.2e-3, 8e-4), 2e-4),
    "3.9b": (3200, 12800, 32, 26, (1.2e-3, 8e-4), 2e-4),
}
# BitNet b1.58 2B4T: the technical report and the released config.json.
BITNET_2B4T = dict(hidden_size=2560, num_layers=30, num_heads=20, num_kv_heads=5,
                   mlp_hidden_size=6912, mlp_type="relu2_glu", rope_theta=500000.0,
                   tie_embeddings=True, vocab_size=128256, norm_eps=1e-5, max_seq_len=4096)


def resolved_lm(arg, **overrides):
  config = resolve_config(load_config(f"{LM_CONFIG}:{arg}", overrides))
  return config, model_config(config)


@pytest.mark.parametrize("size", list(PAPER_TABLE))
def test_paper_presets_have_the_papers_numbers(size):
  hidden, glu, heads, layers, (lr1, lr2), llama_lr = PAPER_TABLE[size]
  config, model = resolved_lm(f"{size},precision=b1.58")
  assert (model.hidden_size, model.mlp_hidden_size, model.num_heads, model.num_layers) == (
      hidden, glu, heads, layers)
  assert (model.vocab_size, model.norm_eps, model.tie_embeddings) == (32000, 1e-5, False)
  assert not model.use_bias and model.inner_norm == "rms"
  assert (config.train.seq_len, config.train.batch_size * config.train.seq_len) == (
      2048, 512 * 2048)  # sequence 2048, about 1M-token batches
  assert config.train.steps * 512 * 2048 == pytest.approx(100e9, rel=1e-5)  # 100B tokens
  assert (config.optim.schedule, config.optim.lr, config.optim.stage2_lr) == (
      "two_stage", lr1, lr2)
  assert (config.optim.b1, config.optim.b2, config.optim.weight_decay) == (0.9, 0.95, 0.1)
  bf16, _ = resolved_lm(f"{size},precision=bf16")
  assert (bf16.optim.schedule, bf16.optim.lr) == ("linear", llama_lr)


def test_2b4t_is_bitnet_b158_by_default_with_the_released_config():
  config, model = resolved_lm("2b4t")
  assert model.precision == "b1.58" and model.spec.quantized
  assert {name: getattr(model, name) for name in BITNET_2B4T} == BITNET_2B4T
  assert not model.use_bias and model.norm_layout == "subln"  # the released SubLN norms
  assert (config.optim.schedule, config.optim.lr, config.optim.stage2_lr) == (
      "two_stage", 1.5e-3, 1e-3)
  _, bf16 = resolved_lm("2b4t,precision=bf16")
  assert not bf16.spec.quantized


# --- the two-stage schedule ------------------------------------------------------------------

def two_stage_closed_form(step, total, warmup, lr1, lr2):
  """Training Tips figure as read: warmup to lr1, then line one lr1 * (1 - p) before half
  the run and line two lr2 * (1 - p) from there, p = (step - warmup) / (total - warmup)."""
  if step < warmup:
    return lr1 * (step + 1) / warmup
  p = (step - warmup) / (total - warmup)
  return (lr1 if step < total // 2 else lr2) * (1 - p)


@pytest.mark.parametrize("size", ["700m", "1.3b", "2b4t"])
def test_paper_schedules_follow_the_closed_form(size):
  config = load_config(f"{LM_CONFIG}:{size},precision=b1.58")
  resolved = resolve_config(config)
  total, warmup = resolved.train.steps, resolved.optim.warmup_steps
  lr1, lr2, half = resolved.optim.lr, resolved.optim.stage2_lr, total // 2
  steps = [0, warmup - 1, warmup, warmup + 1, half - 1, half, half + 1, total - 2, total - 1]
  values = schedule_values(config, steps)
  expected = [two_stage_closed_form(s, total, warmup, lr1, lr2) for s in steps]
  # float32 steps: 1 - p loses digits near the end, so an absolute floor of 1e-6 x peak
  np.testing.assert_allclose(values["learning_rate"], expected, rtol=1e-5, atol=1e-6 * lr1)
  assert values["learning_rate"][steps.index(warmup - 1)] == pytest.approx(lr1, rel=1e-6)
  # at the midpoint the rate drops by lr2 / lr1, both lines near half their peak
  before, after = (values["learning_rate"][steps.index(s)] for s in (half - 1, half))
  assert after / before == pytest.approx(lr2 / lr1, rel=1e-3)
  assert before == pytest.approx(lr1 * 0.5, rel=1e-2)
  assert values["learning_rate"][-1] == pytest.approx(lr2 / (total - warmup), abs=1e-6 * lr1)
  np.testing.assert_allclose(values["weight_decay"], [0.1 if s < half else 0.0 for s in steps],
                             rtol=1e-7)  # 0.1 in float32


def test_old_reading_stays_available_and_every_step_is_covered(tmp_path):
  config = load_config(f"{LM_CONFIG}:700m,precision=b1.58",
                       {"optim.schedule": "two_stage_restart"})
  resolved = resolve_config(config)
  half = resolved.train.steps // 2
  values = schedule_values(config, [half - 1, half])
  assert values["learning_rate"][0] == pytest.approx(1.25e-3, rel=1e-3)
  assert values["learning_rate"][1] == pytest.approx(1e-3, rel=1e-6)
  every = schedule_values(config)
  assert len(every["learning_rate"]) == resolved.train.steps == len(every["weight_decay"])
  with pytest.raises(ValueError, match=r"config.optim.stage1_end_lr=0.001 has no effect"):
    resolve_config(load_config(f"{LM_CONFIG}:700m,precision=b1.58",
                               {"optim.stage1_end_lr": 1e-3}))
  with pytest.raises(ValueError, match=r"config.optim.recipes.low_bit.schedule='steps' is not one"):
    OptimConfig(recipes={"low_bit": {"lr": 1e-3, "schedule": "steps"}})
  path = plot_schedules({"nano b1.58": load_config(f"{LM_CONFIG}:nano,precision=b1.58")},
                        str(tmp_path / "schedule.svg"))
  assert os.path.getsize(path) > 1000


# --- reproducibility of the README main job --------------------------------------------------

def test_main_job_first_run_repeats_bit_for_bit(tmp_path):
  """The README main job's first run (configs/sweeps/lm_scaling.py:cpu -> configs/lm.py:nano,
  bf16) trained twice from scratch in one process, a few steps each: the same losses."""
  from bitjax.train.config import call_python_file
  first = call_python_file(os.path.join(ROOT, "configs", "sweeps", "lm_scaling.py") + ":cpu",
                           "get_sweep")[0]
  assert first.name == "nano-bf16-seed=0"
  overrides = {**first.overrides, "data.data_dir": str(tmp_path / "tfds"), "train.steps": 6,
               "train.eval_every": 3, "train.eval_batches": 2, "train.log_every": 3,
               "train.checkpoint_every": 6, "train.progress_bar": False}
  summaries = [train_and_evaluate(load_config(first.config, overrides), str(tmp_path / name))
               for name in ("a", "b")]
  losses = [{key: value for key, value in summary.items() if "loss" in key}
            for summary in summaries]
  assert losses[0] and losses[0] == losses[1]
