"""Sweep definitions and the runner: names, shares, skipping, resuming, refusals."""

import json
import os

import pytest

from bitjax.sweep import report, runner
from bitjax.sweep.spec import Run, check_unique, load_sweep, make_runs, product, zipped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM_CONFIG = os.path.join(ROOT, "configs", "lm.py")
SWEEPS = os.path.join(ROOT, "configs", "sweeps", "lm_scaling.py")


def test_product_zipped_and_names():
  items = product(size=["nano", "tiny"], precision=["bf16", "b1.58"], **{"train.seed": [0]})
  assert [(i["size"], i["precision"]) for i in items] == [
      ("nano", "bf16"), ("nano", "b1.58"), ("tiny", "bf16"), ("tiny", "b1.58")]
  runs = make_runs("configs/lm.py", items, shared={"train.steps": 5})
  assert runs[1] == Run("nano-b1.58-seed=0", "configs/lm.py:size=nano,precision=b1.58",
                        {"train.steps": 5, "train.seed": 0},
                        {"size": "nano", "precision": "b1.58", "seed": 0})
  assert zipped(size=["a", "b"], precision=["x", "y"]) == [
      {"size": "a", "precision": "x"}, {"size": "b", "precision": "y"}]
  with pytest.raises(ValueError, match="zipped axes need equal lengths"):
    zipped(size=["a", "b"], precision=["x"])


def test_runs_that_would_share_a_workdir_are_refused():
  runs = make_runs("c.py", [{"size": "tiny"}, {"size": "tiny"}, {"size": "nano"}])
  with pytest.raises(ValueError, match=r"same workdir name: \['tiny'\]"):
    check_unique(runs)


@pytest.mark.parametrize("preset, count", [("cpu", 6), ("cpu_large", 15), ("paper", 8),
                                           ("cpu_chinchilla", 32), ("paper_chinchilla", 18)])
def test_shipped_sweeps_load(preset, count):
  runs = load_sweep(f"{SWEEPS}:{preset}")
  assert len(runs) == count and len({r.name for r in runs}) == count
  assert len(load_sweep(f"{SWEEPS}:{preset},seeds=2")) == 2 * count


def test_unknown_sweep_preset():
  with pytest.raises(ValueError, match="sweep preset 'huge' is not one of"):
    load_sweep(f"{SWEEPS}:huge")


def test_task_shares_partition_the_runs():
  runs = load_sweep(f"{SWEEPS}:cpu_large")
  shares = [runner.task_share(runs, i, 4) for i in range(4)]
  assert sorted(r.name for share in shares for r in share) == sorted(r.name for r in runs)
  with pytest.raises(ValueError, match=r"--task_index=4 must be in \[0, --num_tasks=4\)"):
    runner.task_share(runs, 4, 4)


def write_sweep(tmp_path, data_dir, precisions=("bf16", "b1.58", "1bit")):
  shared = {"data.data_dir": str(data_dir), "train.seq_len": 32, "train.batch_size": 4,
            "train.steps": 6, "train.eval_every": 6, "train.eval_batches": 1,
            "train.log_every": 3, "train.checkpoint_every": 3, "train.progress_bar": False}
  path = tmp_path / "sweep.py"
  path.write_text(
      "from bitjax.sweep.spec import make_runs, product\n"
      "def get_sweep(arg=None):\n"
      f"  return make_runs({LM_CONFIG!r}, product(size=['nano'], precision={list(precisions)!r}),"
      f" shared={shared!r})\n")
  return str(path)


class Killed(Exception):
  pass


def test_killed_sweep_reruns_only_what_is_missing(tmp_path, monkeypatch):
  sweep = write_sweep(tmp_path, tmp_path / "tfds")
  workdir = str(tmp_path / "runs")
  import bitjax.train as train_lib
  real_train = train_lib.train_and_evaluate
  calls = []

  def train_then_die(config, run_dir):
    calls.append(os.path.basename(run_dir))
    if len(calls) == 2:
      raise Killed
    return real_train(config, run_dir)

  monkeypatch.setattr(train_lib, "train_and_evaluate", train_then_die)
  with pytest.raises(Killed):
    runner.run_sweep(sweep, workdir, log=lambda line: None)
  first = os.path.join(workdir, "nano-bf16", runner.RESULT_FILE)
  before = (open(first).read(), os.stat(first).st_mtime_ns)
  assert not os.path.exists(os.path.join(workdir, "nano-b1.58", runner.RESULT_FILE))

  lines = []
  rows = runner.run_sweep(sweep, workdir, log=lines.append)
  assert calls == ["nano-bf16", "nano-b1.58", "nano-b1.58", "nano-1bit"]
  assert lines[0] == "[1/3] nano-bf16: finished earlier"
  assert (open(first).read(), os.stat(first).st_mtime_ns) == before
  assert [r["precision"] for r in rows] == ["bf16", "b1.58", "1bit"]
  for row in rows:
    assert row["tokens"] == 6 * 4 * 32 and row["train_flops"] > 6 * row["params"] * row["tokens"]
    assert row["config"]["model"]["precision"] == row["precision"]
  assert rows[1]["weight_memory_bits"] < rows[0]["weight_memory_bits"]

  collected = runner.collect_results(workdir)
  assert [r["name"] for r in collected] == ["nano-1bit", "nano-b1.58", "nano-bf16"]
  csv_path = runner.write_csv(collected, str(tmp_path / "results.csv"))
  header, *lines = open(csv_path).read().splitlines()
  assert "eval_loss" in header.split(",") and "config" not in header.split(",")
  assert len(lines) == 3

  shares = [runner.run_sweep(sweep, workdir, i, 2, log=lambda line: None) for i in range(2)]
  assert [len(s) for s in shares] == [2, 1]  # all finished: read back, nothing trained
  assert len(calls) == 4

  text = report.analyze(workdir)  # one size per precision: a table and notes, no fits
  assert "nano-1bit" in text and "results.csv" in text
  for name in ("scaling_params", "scaling_flops", "scaling_memory", "training_curves"):
    for ext in ("png", "svg"):
      assert os.path.getsize(os.path.join(workdir, runner.PLOTS_DIR, f"{name}.{ext}")) > 1000


def test_collect_results_needs_finished_runs(tmp_path):
  with pytest.raises(ValueError, match="no finished runs"):
    runner.collect_results(str(tmp_path))
