"""The trainer end to end on the embedded corpus: learning, ternary weights, resume,
refusals, schedules and config errors."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from types import SimpleNamespace

import bitjax.data
from bitjax.models import Decoder, DecoderConfig, quantized_kernels
from bitjax.train import optim, train_and_evaluate
from bitjax.train.config import (ConfigError, TrainConfig, load_config, parse_config_arg,
                                 resolve_config, validate_config)
from bitjax.train.checkpoint import Checkpointer
from bitjax.parallel import make_mesh
from bitjax.train.step import state_layout
from multidevice import json_result, start_processes
from preemption import Preempted, preempt_after

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM_CONFIG = os.path.join(ROOT, "configs", "lm.py")


def small_config(data_dir, precision, **overrides):
  """configs/lm.py:nano shrunk so a run takes seconds on two cores."""
  fields = {
      "data.data_dir": str(data_dir), "train.seq_len": 64, "train.batch_size": 8,
      "train.steps": 120, "train.eval_every": 60, "train.eval_batches": 4,
      "train.log_every": 20, "train.checkpoint_every": 40, "train.progress_bar": False,
      "optim.warmup_steps": 10, "model.compute_dtype": "float32", **overrides}
  return load_config(f"{LM_CONFIG}:nano,precision={precision}", fields)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="session")
def trained(tmp_path_factory, data_dir):
  """One short bf16 run and one b1.58 run, shared by the tests below."""
  runs = {}
  for precision in ("bf16", "b1.58"):
    workdir = str(tmp_path_factory.mktemp(precision))
    config = small_config(data_dir, precision)
    runs[precision] = (config, workdir, train_and_evaluate(config, workdir))
  return runs


def eval_records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == "eval"]


@pytest.mark.parametrize("precision", ["bf16", "b1.58"])
def test_validation_loss_falls_clearly(trained, precision):
  config, workdir, summary = trained[precision]
  chance = np.log(resolve_config(config).model.vocab_size)
  assert summary["eval_loss"] < chance - 1.5, summary
  records = eval_records(workdir)
  assert [r["step"] for r in records] == [60, 120]
  assert np.isclose(summary["eval_perplexity"], np.exp(summary["eval_loss"]))
  # bits/byte = nats/token / ln 2 for a byte tokenizer (EOS tokens carry no bytes).
  assert summary["eval_bits_per_byte"] >= summary["eval_loss"] / np.log(2)
  assert summary["eval_bits_per_byte"] < 1.02 * summary["eval_loss"] / np.log(2)
  assert os.listdir(os.path.join(workdir, "tensorboard"))


def restore_model(config, workdir):
  model_cfg = validate_config(config)
  tx = optim.make_optimizer(resolve_config(config).optim, config.train.steps)
  layout = state_layout(model_cfg, tx, 123, make_mesh(devices=jax.devices()[:1]), Decoder)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), 2)
  state, _ = ckpt.restore(ckpt.latest_step(), layout.abstract)
  ckpt.close()
  return nnx.merge(layout.graphdef, state.params)


def test_trained_b158_weights_take_three_values(trained):
  config, workdir, _ = trained["b1.58"]
  model = restore_model(config, workdir)
  kernels = quantized_kernels(model)
  assert len(kernels) == 7 * config.model.num_layers
  for name, kernel in kernels.items():
    values = np.unique(np.asarray(kernel))
    assert len(values) == 3, name
    np.testing.assert_allclose(values, [-values[-1], 0.0, values[-1]])
  # The latent weights stay float32 and far from ternary.
  latent = model.layers[0].mlp.up_proj.kernel[...]
  assert latent.dtype == jnp.float32 and len(np.unique(np.asarray(latent))) > 100


def test_finished_run_is_not_trained_again(trained):
  config, workdir, summary = trained["bf16"]
  lines = len(open(os.path.join(workdir, "metrics.jsonl")).readlines())
  assert train_and_evaluate(config, workdir) == summary
  assert len(open(os.path.join(workdir, "metrics.jsonl")).readlines()) == lines


def test_workdir_of_another_config_is_refused(trained):
  config, workdir, _ = trained["bf16"]
  other = small_config(config.data.data_dir, "bf16", **{"optim.lr": 1e-4})
  with pytest.raises(ValueError, match=r"different config \(optim.lr: 0.004 -> 0.0001\)"):
    train_and_evaluate(other, workdir)


def test_workdir_from_before_a_field_existed_resumes_while_it_holds_its_default(trained,
                                                                                tmp_path):
  """A run begun before `model.scan_layers` existed: its config.json lacks the field."""
  config, workdir, summary = trained["bf16"]
  old = tmp_path / "old_run"
  shutil.copytree(workdir, old)
  saved = json.loads((old / "config.json").read_text())
  del saved["model"]["scan_layers"]
  (old / "config.json").write_text(json.dumps(saved))
  assert train_and_evaluate(config, str(old)) == summary  # finished: read back, not retrained
  scanned = small_config(config.data.data_dir, "bf16", **{"model.scan_layers": True})
  with pytest.raises(ValueError, match=r"different config \(model.scan_layers: None -> True\)"):
    train_and_evaluate(scanned, str(old))


def test_config_json_holds_the_derived_fields_and_earlier_versions_resume(trained, tmp_path):
  """config.json holds the resolved schedule and rates. A workdir of a version that
  derived them at run time (schedule 'auto', stage1_end_lr None), or that named the
  earlier two-stage reading 'two_stage', still resumes."""
  config, workdir, summary = trained["b1.58"]
  saved = json.loads(open(os.path.join(workdir, "config.json")).read())
  assert saved["optim"]["schedule"] == "two_stage_restart" and "recipes" not in saved["optim"]
  assert (saved["optim"]["lr"], saved["optim"]["stage2_lr"]) == (4e-3, 2.5e-3)
  assert saved["optim"]["stage1_end_lr"] == 0.5 * (4e-3 + 2.5e-3)
  old = tmp_path / "old_run"
  shutil.copytree(workdir, old)
  saved["optim"].update(schedule="auto", stage1_end_lr=None)
  (old / "config.json").write_text(json.dumps(saved))
  assert train_and_evaluate(config, str(old)) == summary  # finished: read back, not retrained
  # the versions before two_stage_restart had its name saved it as two_stage
  saved["optim"].update(schedule="two_stage", stage1_end_lr=0.5 * (4e-3 + 2.5e-3))
  (old / "config.json").write_text(json.dumps(saved))
  assert train_and_evaluate(config, str(old)) == summary
  slower = small_config(config.data.data_dir, "b1.58", **{"optim.stage1_end_lr": 1e-3})
  with pytest.raises(ValueError, match=r"different config \(optim.stage1_end_lr: "
                                       r"0.00325\d* -> 0.001\)"):
    train_and_evaluate(slower, str(old))


def test_interrupted_run_resumes_to_the_same_result(trained, tmp_path, monkeypatch):
  config, _, straight = trained["b1.58"]
  make_iterator = bitjax.data.make_train_iterator
  with monkeypatch.context() as patch:
    patch.setattr(bitjax.data, "make_train_iterator",
                  preempt_after(make_iterator, 90))
    with pytest.raises(Preempted):
      train_and_evaluate(config, str(tmp_path))
  ckpt = Checkpointer(str(tmp_path / "checkpoints"), 2)
  assert ckpt.latest_step() == 80  # checkpoints every 40 steps
  ckpt.close()
  resumed = train_and_evaluate(config, str(tmp_path))
  assert resumed["steps_this_session"] == 40
  np.testing.assert_allclose(resumed["eval_loss"], straight["eval_loss"], rtol=1e-6)
  a = restore_model(config, str(tmp_path))
  b = restore_model(*trained["b1.58"][:2])
  for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_two_stage_restart_schedule_matches_its_formula():
  o = optim.OptimConfig(schedule="two_stage_restart", lr=3e-3, stage2_lr=1e-3, warmup_steps=10,
                        weight_decay=0.1)
  total = 100
  lr = optim.learning_rate_schedule(o.resolved("low_bit"), total)
  wd = optim.weight_decay_schedule(o.resolved("low_bit"), total)
  steps = np.arange(total)
  expected = np.where(
      steps < 10, 3e-3 * (steps + 1) / 10,
      np.where(steps < 50, 3e-3 + (2e-3 - 3e-3) * (steps - 10) / 40,
               1e-3 * (1 - (steps - 50) / 50)))
  np.testing.assert_allclose([float(lr(s)) for s in steps], expected, rtol=1e-5, atol=1e-9)
  assert [float(wd(s)) for s in (0, 49, 50, 99)] == pytest.approx([0.1, 0.1, 0.0, 0.0])
  full = optim.OptimConfig(lr=3e-3, warmup_steps=10, weight_decay=0.1).resolved("full_precision")
  assert float(optim.learning_rate_schedule(full, total)(55)) == pytest.approx(3e-3 * (1 - 45 / 90))
  assert float(optim.weight_decay_schedule(full, total)(99)) == pytest.approx(0.1)
  with pytest.raises(ValueError, match="config.optim is not resolved"):
    optim.learning_rate_schedule(optim.OptimConfig(lr=3e-3), total)  # schedule "auto"


def test_weight_decay_skips_norm_scales_and_stops_in_stage_two():
  o = SimpleNamespace(schedule="two_stage", lr=1e-2, stage2_lr=1e-2, stage1_end_lr=1e-2,
                      warmup_steps=0, weight_decay=0.5, b1=0.9, b2=0.95, eps=1e-8,
                      grad_clip=1.0)
  tx = optim.make_optimizer(o, total_steps=4)
  params = {"kernel": jnp.ones((2, 2)), "scale": jnp.ones(2)}
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  moves = []
  for _ in range(4):
    updates, state = tx.update(zeros, state, params)
    moves.append((float(updates["kernel"][0, 0]), float(updates["scale"][0])))
  assert moves[0][0] == pytest.approx(-1e-2 * 0.5) and moves[0][1] == 0.0
  assert moves[3] == (0.0, 0.0)


def test_config_argument_parsing():
  parsed = parse_config_arg("small,precision=b1.58", size="tiny", precision="bf16")
  assert (parsed.size, parsed.precision) == ("small", "b1.58")
  with pytest.raises(ValueError, match="config argument 'precison' is not one of"):
    parse_config_arg("tiny,precison=b1.58", size="tiny", precision="bf16")


@pytest.mark.parametrize("spec, overrides, message", [
    ("nano,precision=b3", {}, "config.model.precision='b3' is not one of"),
    ("huge", {}, "size 'huge' is not one of"),
    ("nano", {"model.num_heads": 3}, "config.model.hidden_size=64 is not divisible by "
                                     "config.model.num_heads=3"),
    ("nano", {"data.name": "wiki"}, "config.data.name='wiki' is not one of"),
    ("nano", {"data.name": "text_dir", "data.text_dir": "/no/such/dir"}, "/no/such/dir"),
    ("nano", {"train.batch_size": 0}, "config.train.batch_size=0 must be a positive integer"),
    ("nano", {"optim.schedule": "step"}, "config.optim.schedule='step' is not one of"),
    ("nano", {"model.vocab_size": 100}, "config.model.vocab_size=100 is smaller than"),
    ("nano", {"model.hidden": 3}, "config has no field 'hidden'"),
])
def test_bad_configs_fail_naming_the_field(spec, overrides, message):
  with pytest.raises(ValueError) as info:
    validate_config(load_config(f"{LM_CONFIG}:{spec}", overrides))
  assert message in str(info.value)


def test_learning_rate_recipe_follows_the_precision_after_overrides():
  """The paper presets pick their rates by the final precision: a precision override
  gets the b1.58 recipe, and a rate set explicitly still wins."""
  resolved = lambda spec, **overrides: resolve_config(load_config(f"{LM_CONFIG}:{spec}",
                                                                  overrides)).optim
  rates = lambda o: (o.schedule, o.lr, o.stage2_lr, o.stage1_end_lr)
  assert rates(resolved("700m"))[:2] == ("linear", 2.5e-4)
  quantized = resolved("700m", **{"model.precision": "b1.58"})
  assert rates(quantized) == ("two_stage", 1.5e-3, 1e-3, None)
  assert rates(quantized) == rates(resolved("700m,precision=b1.58"))
  # Weight-only ternary is quantized too, so it trains with the low-bit recipe.
  assert resolved("1.3b", **{"model.weight_quant": "absmean"}).lr == 1.2e-3
  assert resolved("700m", **{"model.precision": "b1.58", "optim.lr": 2e-3}).lr == 2e-3
  assert resolved("700m", **{"optim.recipes.full_precision.lr": 3e-4}).lr == 3e-4
  assert resolved("700m,precision=b1.58", **{"optim.schedule": "cosine"}).schedule == "cosine"


@pytest.mark.parametrize("overrides, message", [
    ({"optim.lr": 5e-4}, "config.optim.stage2_lr=0.001 exceeds config.optim.lr=0.0005"),
    ({"optim.lr": 5e-4, "optim.stage2_lr": 8e-4},
     "config.optim.stage2_lr=0.0008 exceeds config.optim.lr=0.0005"),
    ({"optim.recipes": {"low_bit": {"rate": 1e-3}}},
     "config.optim.recipes.low_bit has unknown fields ['rate']"),
    ({"optim.recipes": {"int4": {"lr": 1e-3}}}, "config.optim.recipes has unknown fields ['int4']"),
    ({"optim.recipes.low_bit.lr": -1.0}, "config.optim.recipes.low_bit.lr=-1.0 must be"),
    ({"optim.warmup_steps": -1}, "config.optim.warmup_steps=-1 must be an integer >= 0"),
])
def test_bad_learning_rates_name_the_fields(overrides, message):
  config = load_config(f"{LM_CONFIG}:700m,precision=b1.58", overrides)
  with pytest.raises(ConfigError) as info:
    resolve_config(config)
  assert message in str(info.value)


def test_every_section_comes_from_its_schema():
  """Defaults and checks of each section come from one Section dataclass."""
  from bitjax.data.config import CorpusData
  from bitjax.parallel import MeshConfig
  from bitjax.train.config import default_config

  config = default_config()
  schemas = {"model": DecoderConfig, "data": CorpusData, "train": TrainConfig,
             "mesh": MeshConfig, "optim": optim.OptimConfig}
  for name, schema in schemas.items():
    assert sorted(config[name]) == sorted(schema.field_names()), name
  config.optim.lr = 2e-3  # a None default keeps its declared type, so a flag can set it
  config.data.tfds_name = "lm1b"
  with pytest.raises(TypeError):
    config.optim.stage2_lr = "half"
  config.mesh.pipeline = 2
  with pytest.raises(ConfigError, match=r"config.mesh has unknown fields \['pipeline'\]; "
                                        r"known: \['data', 'dcn_data'"):
    validate_config(config)


@pytest.mark.parametrize("make, message", [
    (lambda: TrainConfig(seed=1.5), "config.train.seed=1.5 must be an integer"),
    (lambda: TrainConfig(progress_bar=1), "config.train.progress_bar=1 must be True or False"),
    (lambda: TrainConfig(steps=True), "config.train.steps=True must be a positive integer"),
    (lambda: optim.OptimConfig(lr="fast"), "config.optim.lr='fast' must be None or >= 0"),
    (lambda: optim.OptimConfig(schedule=None), "config.optim.schedule=None is not one of"),
])
def test_schema_checks_types_naming_the_field(make, message):
  with pytest.raises(ValueError) as info:
    make()
  assert message in str(info.value)


def test_resolving_keeps_the_given_config_and_is_idempotent():
  config = load_config(f"{LM_CONFIG}:3b,precision=1bit")
  resolved = resolve_config(config)
  assert config.optim.lr is None and config.optim.schedule == "auto"
  assert resolve_config(resolved).to_dict() == resolved.to_dict()


def test_every_size_preset_is_a_valid_config():
  for size in ("nano", "tiny", "small", "base", "700m", "1.3b", "3b", "3.9b", "2b4t"):
    for precision in ("bf16", "b1.58"):
      validate_config(load_config(f"{LM_CONFIG}:{size},precision={precision}"))


def test_cli_reports_bad_config_and_missing_flags(tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, "-m", "bitjax", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
  bad = run("train", f"--config={LM_CONFIG}:nano", "--config.model.num_heads=5",
            f"--workdir={tmp_path}")
  assert bad.returncode != 0
  assert "config.model.hidden_size=64 is not divisible by config.model.num_heads=5" in bad.stderr
  usage = run("fly", f"--config={LM_CONFIG}:nano", f"--workdir={tmp_path}")
  assert usage.returncode != 0 and "usage: python -m bitjax" in usage.stderr


def test_compare_trains_each_precision_once_and_tabulates(data_dir, tmp_path):
  from bitjax.sweep.compare import compare_precisions, format_comparison

  overrides = {"data.data_dir": str(data_dir), "train.seq_len": 32, "train.batch_size": 4,
               "train.steps": 6, "train.eval_every": 6, "train.eval_batches": 1,
               "train.checkpoint_every": 6, "train.progress_bar": False}
  rows = compare_precisions(f"{LM_CONFIG}:nano", str(tmp_path), ["bf16", "1bit"], overrides)
  assert [r["precision"] for r in rows] == ["bf16", "1bit"]
  assert sorted(os.listdir(tmp_path)) == ["1bit", "bf16"]
  # The precision goes through the config file's argument, so each run has its own.
  configs = [json.load(open(tmp_path / p / "config.json")) for p in ("bf16", "1bit")]
  assert [c["model"]["precision"] for c in configs] == ["bf16", "1bit"]
  table = format_comparison(rows)
  assert "1bit / bf16 perplexity ratio" in table and "sha256" in table
  # A sweep like any other: result.json per run, read back, and `plot` reads the workdir.
  assert compare_precisions(f"{LM_CONFIG}:nano", str(tmp_path), ["bf16", "1bit"], overrides,
                            log=lambda line: None) == rows
  assert [r["group"] for r in rows] == ["nano", "nano"]
  from bitjax.sweep import report
  assert "note (1bit): 1 size(s): no fit" in report.analyze(str(tmp_path))
  with pytest.raises(ValueError, match="precision='b9'"):
    compare_precisions(f"{LM_CONFIG}:nano", str(tmp_path / "bad"), ["bf16", "b9"], overrides)
  assert not (tmp_path / "bad" / "bf16").exists()  # nothing trained before the refusal


@pytest.mark.parametrize("device_kind, peak", [
    ("TPU v5 lite", 197.0), ("TPU v5p", 459.0), ("TPU v4", 275.0), ("TPU v6 lite", 918.0),
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA H200", 989.0),
    ("cpu", None)])
def test_throughput_metrics_and_mfu(device_kind, peak):
  from bitjax.train.metrics import throughput_metrics
  out = throughput_metrics(units_per_s=1e5, flops_per_unit=6e9, num_devices=4,
                           device_kind=device_kind)
  assert out["tflops_per_device"] == pytest.approx(1e5 * 6e9 / 4 / 1e12)
  if peak is None:
    assert "mfu" not in out
  else:
    assert out["mfu"] == pytest.approx(150.0 / peak)


def test_logged_throughput(trained):
  _, workdir, _ = trained["bf16"]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    train = [r for r in map(json.loads, f) if r["split"] == "train"]
  assert all(r["tflops_per_device"] > 0 and r["tokens_per_s"] > 0 for r in train)


SHARDED_RUN = """
import json, sys
from bitjax.parallel import initialize_distributed
initialize_distributed("auto")  # two hosts when the test sets JAX_COORDINATOR_ADDRESS
import bitjax.data
from bitjax.train import train_and_evaluate
from bitjax.train.config import load_config
sys.path.insert(0, "tests")
from preemption import Preempted, preempt_after

config_spec, overrides, workdir, stop_after = sys.argv[1:]
overrides = json.loads(overrides)
if int(stop_after):
  bitjax.data.make_train_iterator = preempt_after(bitjax.data.make_train_iterator,
                                                  int(stop_after))
try:
  print(json.dumps(train_and_evaluate(load_config(config_spec, overrides), workdir)))
except Preempted:
  import jax
  print(json.dumps({"preempted": True, "processes": jax.process_count(),
                    "devices": jax.device_count()}))
"""


def test_two_host_run_resumed_on_one_host_and_another_mesh_matches_one_device(
    data_dir, tmp_path):
  """Two processes of 4 CPU devices each (jax.distributed on localhost) train on a 2x2x2
  mesh, each feeding its own rows, and are preempted after step 5; one process of 8
  devices resumes the checkpoint as 8-way data parallel. Both halves give the losses
  of one device, and only host 0 wrote metrics."""
  overrides = {"data.data_dir": str(data_dir), "train.seq_len": 32, "train.batch_size": 8,
               "train.steps": 8, "train.eval_every": 4, "train.eval_batches": 2,
               "train.log_every": 2, "train.checkpoint_every": 4, "train.progress_bar": False,
               "optim.warmup_steps": 2, "model.compute_dtype": "float32"}
  spec = f"{LM_CONFIG}:nano,precision=b1.58"
  bitjax.data.data_source(load_config(spec, overrides).data, "train")  # build it once, here
  workdir = str(tmp_path / "sharded")
  mixed = {**overrides, "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
  hosts = start_processes(SHARDED_RUN, 2, 4, spec, json.dumps(mixed), workdir, "5")
  one_device = train_and_evaluate(load_config(spec, overrides), str(tmp_path / "1"))
  for host in hosts:
    assert json_result(host) == {"preempted": True, "processes": 2, "devices": 8}
  resumed = json_result(start_processes(SHARDED_RUN, 1, 8, spec, json.dumps(
      {**overrides, "mesh.data": -1}), workdir, "0")[0])
  assert resumed["steps_this_session"] == 4
  np.testing.assert_allclose(resumed["eval_loss"], one_device["eval_loss"], rtol=5e-4)
  train_losses = lambda run: [r["loss"] for r in map(json.loads, open(f"{run}/metrics.jsonl"))
                              if r["split"] == "train"]
  assert len(train_losses(workdir)) == len(train_losses(tmp_path / "1")) == 4
  np.testing.assert_allclose(train_losses(workdir), train_losses(tmp_path / "1"), rtol=5e-4)
