"""bitjax.load and `python -m bitjax generate`: a nano LM trained with a BPE tokenizer,
an MLP and a GNN come back with the trainer's eval metrics; a specific step, a run still
training, and the one-line errors."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import bitjax
from bitjax.data import tokenizers
from bitjax.train import train_and_evaluate
from bitjax.train.config import load_config
from bitjax.train.tasks import get_task
from bitjax.train.trainer import evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
TINY_TRAIN = {"train.steps": 4, "train.eval_every": 4, "train.log_every": 2,
              "train.checkpoint_every": 2, "train.max_checkpoints": 3,
              "train.progress_bar": False}


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
  """A 4-step nano LM on a small text_dir corpus with a BPE tokenizer trained on it."""
  root = tmp_path_factory.mktemp("load")
  corpus = root / "corpus"
  corpus.mkdir()
  for i in range(8):
    (corpus / f"module_{i}.py").write_text(
        f"def function_{i}(value):\n    \"\"\"Return value times {i}.\"\"\"\n"
        f"    return value * {i}\n\n" * 40)
  tokenizers.train_tokenizer([p.read_text() for p in corpus.iterdir()], "bpe", 300,
                             str(root / "bpe"))
  config = load_config(f"{CONFIGS}/lm.py:nano,precision=b1.58", {
      **TINY_TRAIN, "data.name": "text_dir", "data.text_dir": str(corpus),
      "data.text_glob": "*.py", "data.data_dir": str(root / "tfds"), "data.tokenizer": "bpe",
      "data.tokenizer_path": str(root / "bpe"), "train.seq_len": 32, "train.batch_size": 4,
      "train.eval_batches": 2, "model.compute_dtype": "float32"})
  workdir = str(root / "run")
  return workdir, train_and_evaluate(config, workdir)


def eval_metrics(run):
  """The run's task evaluated on its eval batches, as the trainer evaluates."""
  task = get_task(run.config)
  graphdef, params = nnx.split(run.model)
  eval_fn = jax.jit(lambda params, batch: task.eval_sums(nnx.merge(graphdef, params), batch))
  return evaluate(task, eval_fn, params, task.eval_batches())


def test_loads_the_lm_with_its_tokenizer_and_the_trainers_eval_loss(bpe_run):
  workdir, summary = bpe_run
  run = bitjax.load(workdir)
  assert run.step == 4 and run.config.model.vocab_size == 304  # 300 ids, rounded up to 8
  assert type(run.model).__name__ == "Decoder" and run.model.cfg.precision == "b1.58"
  assert run.tokenizer.kind == "bpe" and run.tokenizer.vocab_size == 300
  metrics = eval_metrics(run)
  for name in ("loss", "perplexity", "bits_per_byte"):
    np.testing.assert_allclose(metrics[name], summary[f"eval_{name}"], rtol=1e-5)
  # Tokens of several bytes: bits per byte well below nats per token / ln 2.
  assert summary["eval_bits_per_byte"] < 0.7 * summary["eval_loss"] / np.log(2)
  text = run.generate(["def function_", "return"], max_new_tokens=3)
  assert len(text) == 2 and all(isinstance(t, str) for t in text)


def test_loads_a_given_step_and_a_run_still_training(bpe_run, tmp_path):
  workdir, _ = bpe_run
  newest, earlier = bitjax.load(workdir), bitjax.load(workdir, step=2)
  assert earlier.step == 2
  assert not np.allclose(nnx.state(newest.model, nnx.Param).embed.embedding[...],
                         nnx.state(earlier.model, nnx.Param).embed.embedding[...])
  # Mid-run: step 4 not written yet, a save of it under way (Orbax's temporary name).
  live = tmp_path / "live"
  shutil.copytree(workdir, live)
  shutil.rmtree(live / "checkpoints" / "4")
  os.remove(live / "summary.json")
  (live / "checkpoints" / "4.orbax-checkpoint-tmp-1234567").mkdir()
  assert bitjax.load(str(live)).step == 2


def test_loads_a_run_whose_config_json_left_derived_fields_to_run_time(bpe_run, tmp_path):
  """config.json as an earlier version wrote it (schedule "auto", stage1_end_lr None, a
  field this version added missing) still loads, with the same weights."""
  workdir, _ = bpe_run
  old = tmp_path / "old"
  shutil.copytree(workdir, old)
  record = json.loads((old / "config.json").read_text())
  record["optim"].update(schedule="auto", stage1_end_lr=None)
  del record["train"]["nonfinite"]
  (old / "config.json").write_text(json.dumps(record))
  loaded = bitjax.load(str(old))
  assert loaded.config.optim.schedule == "two_stage_restart"  # the reading runs had then
  assert np.array_equal(nnx.state(loaded.model, nnx.Param).embed.embedding[...],
                        nnx.state(bitjax.load(workdir).model, nnx.Param).embed.embedding[...])


def test_one_line_errors(bpe_run, tmp_path):
  workdir, _ = bpe_run
  with pytest.raises(ValueError, match=r"holds no bitjax run \(no config.json\)"):
    bitjax.load(str(tmp_path))
  with pytest.raises(ValueError, match="does not exist"):
    bitjax.load(str(tmp_path / "missing"))
  with pytest.raises(ValueError, match=r"step=3 is not a checkpoint of .*; its steps: \[2, 4\]"):
    bitjax.load(workdir, step=3)
  newer = tmp_path / "newer"
  shutil.copytree(workdir, newer)
  (newer / "bitjax_run.json").write_text(json.dumps({"format": 99}))
  with pytest.raises(ValueError, match=r"written by a newer bitjax \(run format 99; this "
                                       r"version reads up to 1\)"):
    bitjax.load(str(newer))


@pytest.mark.parametrize("spec, model_class, metric", [
    ("mlp.py:wine,hidden=16,precision=b1.58", "MLPClassifier", "accuracy"),
    ("gnn.py:karate_club,architecture=gcn,precision=b1.58-median", "GNN", "accuracy"),
])
def test_loads_an_mlp_and_a_gnn(spec, model_class, metric, tmp_path):
  config = load_config(os.path.join(CONFIGS, spec), {**TINY_TRAIN, "train.max_checkpoints": 1})
  summary = train_and_evaluate(config, str(tmp_path))
  run = bitjax.load(str(tmp_path))
  assert type(run.model).__name__ == model_class and run.tokenizer is None and run.step == 4
  np.testing.assert_allclose(eval_metrics(run)[metric], summary[f"eval_{metric}"], rtol=1e-6)


def generate_cli(workdir, *args):
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "bitjax", "generate", f"--workdir={workdir}",
                         *args], capture_output=True, text=True, env=env, timeout=300)


def test_generate_cli_prints_the_continuation(bpe_run):
  workdir, _ = bpe_run
  done = generate_cli(workdir, "--prompt=def function_", "--max_new_tokens=3")
  assert done.returncode == 0, done.stderr[-2000:]
  run = bitjax.load(workdir)
  assert done.stdout == "def function_" + run.generate("def function_", 3) + "\n"


@pytest.mark.parametrize("args, message", [
    (["--prompt="], "bitjax generate: --prompt is empty; give the text to continue"),
    (["--prompt=def", "--max_new_tokens=100"],
     "bitjax generate: max_new_tokens=100 goes past max_context=32 after a 2-token prompt; "
     "allowed: 1 to 30"),
    (["--prompt=def", "--max_new_tokens=2", "--temperature=1", "--top_p=1.5"],
     "bitjax generate: top_p=1.5 is outside the allowed range (0, 1]"),
])
def test_generate_cli_bad_input_is_one_line(bpe_run, args, message):
  done = generate_cli(bpe_run[0], *args)
  assert done.returncode != 0 and done.stderr.strip().splitlines()[-1] == message, done.stderr
  assert "Traceback" not in done.stderr
