"""The task plumbing: every task trains through the one trainer on tiny shapes, bad task
names and shapes fail naming the field, the small-model configs and sweeps load and
validate, and the seed-averaged report."""

import json
import os
import textwrap

import numpy as np
import pytest

from bitjax.sweep import seed_table
from bitjax.sweep.compare import format_comparison
from bitjax.sweep.spec import load_sweep
from bitjax.train import train_and_evaluate
from bitjax.train.config import ConfigError, default_config, load_config, validate_config
from bitjax.data.iterators import ArrayBatches, BatchIterator, MappedBatches
from bitjax.train.tasks import TASKS, get_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
TINY_TRAIN = {"train.steps": 3, "train.eval_every": 3, "train.log_every": 1,
              "train.checkpoint_every": 3, "train.progress_bar": False}
TINY_TRANSFORMER = {"train.seq_len": 32, "train.batch_size": 4, "train.eval_batches": 2}


@pytest.fixture(scope="module")
def python_corpus(tmp_path_factory):
  """A directory of small Python packages: a text_dir corpus for the sequence tasks,
  with documented functions for the docstring task and two package classes."""
  root = tmp_path_factory.mktemp("corpus")
  for package in ("alpha", "beta"):
    for i in range(6):
      path = root / package / f"module_{i}.py"
      path.parent.mkdir(exist_ok=True)
      path.write_text(textwrap.dedent(f'''
          def {package}_function_{i}(value, other=None):
              """Return {package} number {i} of the value."""
              total = value * {i} + len(str(other))
              return total + {i}


          class {package.title()}{i}:
              """Holds {package} state."""

              def method(self, item):
                  """Add the item to {package}."""
                  self.items = [item] * {i + 1}
                  return self.items
          ''') * 4)
  return root


def tiny_configs(corpus, data_dir):
  """One config per task, shrunk to seconds."""
  text_dir = {"data.name": "text_dir", "data.text_dir": str(corpus), "data.text_glob": "**/*.py",
              "data.data_dir": str(data_dir)}
  return {
      "lm": ("lm.py:nano", {**TINY_TRANSFORMER, **text_dir}),
      "classify_tabular": ("mlp.py:wine,hidden=16,precision=b1.58", {"train.batch_size": 16}),
      "classify_text": ("mlp.py:stdlib_packages,hidden=16,precision=1bit", {
          "data.name": "text_dir", "data.text_dir": str(corpus), "data.text_glob": "**/*.py",
          "data.max_features": 24, "model.input_dim": 24, "model.num_classes": 2,
          "data.chunk_chars": 200, "train.batch_size": 8}),
      "node_classification": ("gnn.py:karate_club,architecture=gcn,precision=b1.58-median", {}),
      "mlm": ("encoder.py:mlm,hidden=32,layers=1,precision=b1.58",
              {**TINY_TRANSFORMER, **text_dir}),
      "classify_sequence": ("encoder.py:classify_sequence,hidden=32,layers=1",
                            {**TINY_TRANSFORMER, "data.max_classes": 3,
                             "data.max_chunks_per_file": 1, "model.num_classes": 3}),
      "seq2seq": ("encdec.py:span_corruption,hidden=32,layers=1,precision=b1.58",
                  {**TINY_TRANSFORMER, **text_dir}),
      "docstrings": ("encdec.py:docstrings,hidden=32,layers=1",
                     {**TINY_TRANSFORMER, **text_dir, "data.target_len": 16}),
  }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lm", "classify_tabular", "classify_text",
                                  "node_classification", "mlm", "classify_sequence", "seq2seq",
                                  "docstrings"])
def test_each_task_trains_through_the_trainer(name, python_corpus, tmp_path):
  spec, overrides = tiny_configs(python_corpus, tmp_path / "tfds")[name]
  config = load_config(os.path.join(CONFIGS, spec), {**TINY_TRAIN, **overrides})
  summary = train_and_evaluate(config, str(tmp_path / "run"))
  task = TASKS[config.task]
  assert summary["task"] == config.task and summary["metric"] == task.metric
  assert summary["analysis"] == ("scaling" if config.task == "lm" else "seed_table")
  assert np.isfinite(summary[f"eval_{task.metric}"]) and summary["weight_memory_bits"] > 0
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]
  assert all(np.isfinite(r["loss"]) for r in records)
  train = [r for r in records if r["split"] == "train"]
  assert all(r["tflops_per_device"] > 0 and r[f"{task.unit}_per_s"] > 0 for r in train)
  assert {r["split"] for r in records} == {"train", "eval"}
  if config.task != "lm":  # the LM's table is the README's; other tasks name themselves
    assert f"task: {config.task}" in format_comparison([summary])
  # A finished run is read back, not trained again.
  assert train_and_evaluate(config, str(tmp_path / "run")) == summary
  # batch_spec gives the shapes the train iterator yields (a global batch: one block).
  bound = get_task(config)
  train_iter = bound.train_iterator(0, 1)
  assert isinstance(train_iter, BatchIterator)
  shapes = lambda batch: {name: (tuple(x.shape), np.dtype(x.dtype)) for name, x in batch.items()}
  assert shapes(next(train_iter)) == shapes(bound.batch_spec())
  assert set(bound.eval_batches()[0]) <= set(bound.batch_spec()) | {"weights"}


def test_unknown_task_is_named_with_the_choices():
  with pytest.raises(ValueError, match=r"config.task='foo' is not one of \['lm', "):
    default_config("foo")
  config = default_config()
  config.task = "foo"
  with pytest.raises(ConfigError, match=r"config.task='foo' is not one of \['lm', "):
    validate_config(config)


@pytest.mark.parametrize("spec, overrides, message", [
    ("mlp.py:wine", {"model.input_dim": 12}, r"config.model.input_dim=12 does not match the "
     r"data's feature count \(13\)"),
    ("mlp.py:digits", {"data.name": "iris"}, r"config.data.name='iris' is not one of"),
    ("mlp.py:digits", {"model.dropout": 1.0}, r"config.model.dropout=1.0 must be a rate"),
    ("gnn.py:karate_club", {"model.num_classes": 3}, r"config.model.num_classes=3 does not"),
    ("gnn.py:csbm", {"data.eval_split": "dev"}, r"config.data.eval_split='dev' is not one of"),
    ("encdec.py", {"data.objective": "copy"}, r"config.data.objective='copy' is not one of"),
    ("encdec.py", {"model.vocab_size": 270}, r"config.model.vocab_size=270 leaves no room"),
    ("encoder.py:mlm", {"model.vocab_size": 259}, r"config.model.vocab_size=259 leaves no"),
    ("encoder.py:mlm", {"model.hidden_sizes": (3,)}, r"config has no field 'hidden_sizes'"),
])
def test_bad_small_model_configs_name_the_field(spec, overrides, message):
  with pytest.raises((ConfigError, ValueError), match=message):
    validate_config(load_config(os.path.join(CONFIGS, spec), overrides))


def test_dropout_only_with_a_key():
  import jax
  from flax import nnx

  from bitjax.models import MLPClassifier, MLPConfig

  model = MLPClassifier(MLPConfig(input_dim=8, num_classes=3, hidden_sizes=(64,), dropout=0.5),
                        rngs=nnx.Rngs(0))
  x = np.ones((4, 8), np.float32)
  np.testing.assert_array_equal(model(x), model(x))
  key = jax.random.key(1)
  assert not np.allclose(model(x, dropout_rng=key), model(x))
  np.testing.assert_array_equal(model(x, dropout_rng=key), model(x, dropout_rng=key))


def test_array_batches_resume_from_their_state():
  arrays = {"x": np.arange(10)[:, None], "y": np.arange(10)}
  batches = ArrayBatches(arrays, 4, seed=3, block=0, num_blocks=1)
  seen = [next(batches)["y"] for _ in range(5)]  # crosses an epoch (2 batches per epoch)
  assert sorted(np.concatenate(seen[:2])) == sorted(set(np.concatenate(seen[:2])))
  resumed = ArrayBatches(arrays, 4, seed=3, block=1, num_blocks=2)
  resumed.set_state(json.loads(json.dumps({"batches": 3})))
  np.testing.assert_array_equal(next(resumed)["y"], seen[3][2:])  # process 1's half
  mapped = MappedBatches(ArrayBatches(arrays, 4, 0, 0, 1), lambda b, rng: rng.random(), 7)
  first = [next(mapped) for _ in range(3)]
  again = MappedBatches(ArrayBatches(arrays, 4, 0, 0, 1), lambda b, rng: rng.random(), 7)
  again.set_state(json.loads(json.dumps({"inner": {"batches": 2}, "batches": 2})))
  assert next(again) == first[2]


@pytest.mark.slow
def test_small_model_sweep_loads_and_validates():
  runs = load_sweep(os.path.join(CONFIGS, "sweeps", "small_models.py:all"))
  # (mlp 4 data sets + gnn 3 settings) x 5 precisions, (encoder + encdec) 2 sizes x 4; 3 seeds
  assert len(runs) == (4 * 5 + 3 * 5 + 2 * 4 + 2 * 4) * 3
  assert {run.labels["seed"] for run in runs} == {0, 1, 2}
  for run in runs:
    config = load_config(run.config, run.overrides)
    model = validate_config(config)
    assert model.precision == run.labels["precision"]
  assert len(load_sweep(os.path.join(CONFIGS, "sweeps", "small_models.py:gnn,seeds=1"))) == 15


def test_seed_cells_table_and_plot(tmp_path):
  rows = []
  for precision, base in (("bf16", 0.8), ("b1.58", 0.7)):
    for seed in range(3):
      rows.append({"task": "node_classification", "metric": "accuracy", "precision": precision,
                   "group": "csbm", "steps": 10,
                   "labels": {"dataset": "csbm", "precision": precision, "seed": seed},
                   "eval_accuracy": base + 0.01 * seed, "params": 100,
                   "weight_memory_bits": 1600})
  rows.append({"task": "mlm", "metric": "loss", "precision": "bf16", "params": 5,
               "group": "64", "steps": 10,
               "labels": {"hidden": 64, "precision": "bf16", "seed": 0}, "eval_loss": 2.5,
               "weight_memory_bits": 80})
  cells = seed_table.seed_cells(rows)
  assert [(c["precision"], c["seeds"]) for c in cells] == [("bf16", 3), ("b1.58", 3), ("bf16", 1)]
  assert cells[0]["mean"] == pytest.approx(0.81) and cells[0]["std"] == pytest.approx(0.01)
  table = seed_table.format_cells(cells)
  assert "| node_classification | dataset=csbm | accuracy % | 81.00 ± 1.00 | 71.00 ± 1.00 |" \
      in table
  assert "| mlm | hidden=64 | loss | 2.50 ± nan |" in table
  from bitjax.sweep import plots
  for path in plots.plot_task_comparison(cells, str(tmp_path)):
    assert os.path.getsize(path) > 1000
