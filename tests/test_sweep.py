"""Sweep definitions and the runner: names, shares, skipping, resuming, refusals."""

import json
import math
import os

import pytest

from bitjax.sweep import report, runner
from bitjax.sweep.spec import Run, check_unique, load_sweep, make_runs, product, zipped
from bitjax.sweep.table import Column, format_table

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


@pytest.mark.parametrize("preset, count", [("cpu", 6), ("cpu_large", 15), ("cpu_equal_tokens", 6),
                                           ("paper", 8),
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


def write_sweep(tmp_path, data_dir, precisions=("bf16", "b1.58", "1bit"), **overrides):
  """tmp_path/sweep.py: configs/lm.py:nano in each of `precisions`, six steps of batch 4
  (checkpoints at 3 and 6), with `overrides` ({"train.steps": 4}) on top; data_dir None
  keeps the config's own data_dir. Returns its path."""
  shared = {**({} if data_dir is None else {"data.data_dir": str(data_dir)}),
            "train.seq_len": 32, "train.batch_size": 4, "train.steps": 6,
            "train.eval_every": 6, "train.eval_batches": 1, "train.log_every": 3,
            "train.checkpoint_every": 3, "train.progress_bar": False, **overrides}
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


def test_groups_are_the_labels_but_precision_seed_and_steps():
  assert [r.group for r in load_sweep(f"{SWEEPS}:cpu")] == [
      g for g in ("nano", "micro", "tiny") for _ in range(2)]
  # The token-budget axis stays out of the group: sizes are compared across budgets.
  assert {r.group for r in load_sweep(f"{SWEEPS}:cpu_chinchilla")} == {
      "nano", "micro", "tiny", "mini"}
  small = load_sweep(os.path.join(ROOT, "configs", "sweeps", "small_models.py:all,seeds=1"))
  assert {r.name: r.group for r in small}["csbm-sgc-1bit-seed=0"] == "csbm-sgc"
  runs = make_runs("c.py", product(width=[64], precision=["bf16"],
                                   **{"model.depth": [2], "train.seed": [0]}))
  assert (runs[0].name, runs[0].group) == ("64-bf16-depth=2-seed=0", "64-depth=2")


def write_result(workdir, name, **row):
  os.makedirs(os.path.join(workdir, name))
  with open(os.path.join(workdir, name, runner.RESULT_FILE), "w") as f:
    json.dump({"name": name, **row}, f)


def test_rows_of_the_previous_version_get_their_group_from_labels(tmp_path):
  """result.json written before rows carried `group` (the main job's and a token sweep's)."""
  write_result(tmp_path, "nano-bf16-seed=0", size="nano", precision="bf16", seed=0,
               labels={"size": "nano", "precision": "bf16", "seed": 0},
               overrides={"train.seq_len": 128, "train.seed": 0})
  write_result(tmp_path, "tiny-b1.58-seed=1-steps=40", labels={
      "size": "tiny", "precision": "b1.58", "seed": 1, "steps": 40},
      overrides={"train.seed": 1, "train.steps": 40})
  write_result(tmp_path, "x", group="given", labels={"size": "other"}, overrides={})
  assert [r["group"] for r in runner.collect_results(str(tmp_path))] == ["nano", "tiny", "given"]


@pytest.mark.parametrize("row, analysis", [
    ({"task": "lm"}, "scaling"),
    ({}, "scaling"),  # rows from before tasks were recorded
    ({"task": "classify_tabular"}, "seed_table"),
    ({"task": "lm", "analysis": "seed_table"}, "seed_table"),  # the row's own word wins
])
def test_analysis_of_a_row_and_the_fallback_for_old_rows(row, analysis):
  assert report.analysis_of(row) == analysis


def test_report_dispatches_each_analysis_its_rows(tmp_path, monkeypatch):
  calls = []

  def echo(rows, workdir):
    calls.append(sorted(r["name"] for r in rows))
    return f"echo of {len(rows)} runs", [os.path.join(workdir, "plots", "echo.png")]

  monkeypatch.setitem(report.ANALYSES, "echo", echo)
  for name in ("b", "a"):
    write_result(tmp_path, name, analysis="echo", labels={}, eval_loss=1.0)
  text = report.analyze(str(tmp_path))
  assert calls == [["a", "b"]]
  assert text == (f"echo of 2 runs\n\nresults: {tmp_path}/results.csv\n"
                  f"plots: {tmp_path}/plots/echo.png")
  write_result(tmp_path, "c", analysis="histogram", labels={})
  with pytest.raises(ValueError, match=r"run 'c' has analysis='histogram'; it must be one of "
                                       r"\['scaling', 'seed_table', 'echo'\]"):
    report.analyze(str(tmp_path))


def test_one_table_formatter_for_text_and_markdown():
  columns = [Column("name", "<6", lambda r: r["name"]),
             Column("loss", ">8", lambda r: f"{r['loss']:.2f}")]
  rows = [{"name": "a", "loss": 1.234}, {"name": "longer", "loss": 10.0}]
  assert format_table(columns, rows) == (
      "name      loss\n"
      "--------------\n"
      "a         1.23\n"
      "longer   10.00")
  assert format_table(columns, rows, indent="  ").splitlines()[:2] == [
      "  name      loss", "  --------------"]
  assert format_table(columns, rows, markdown=True) == (
      "| name | loss |\n|---|---|\n| a | 1.23 |\n| longer | 10.00 |")


def test_cpu_sweeps_take_steps_and_sizes():
  runs = load_sweep(f"{SWEEPS}:cpu,seeds=2,steps=7,sizes=nano+tiny")
  assert [r.name for r in runs][:2] == ["nano-bf16-seed=0", "nano-bf16-seed=1"]
  assert {r.group for r in runs} == {"nano", "tiny"} and len(runs) == 8
  assert all(r.overrides["train.steps"] == 7 for r in runs)
  assert "train.steps" not in load_sweep(f"{SWEEPS}:cpu")[0].overrides
  with pytest.raises(ValueError, match=r"\['small'\] not in preset cpu's"):
    load_sweep(f"{SWEEPS}:cpu,sizes=nano+small")


def test_committed_results_csv_reads_back_as_rows_an_analysis_takes(tmp_path):
  """A results.csv without its runs (experiments/*) gives rows with labels and groups
  rebuilt; several seeds per cell are averaged by the scaling analysis."""
  from bitjax.sweep import scaling, seed_table

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  rows = runner.sweep_rows(os.path.join(root, "experiments", "small_models"))
  assert all(isinstance(r["eval_accuracy"], float) for r in rows if "eval_accuracy" in r)
  cells = seed_table.seed_cells(rows)
  assert {c["seeds"] for c in cells} == {3}
  assert any(c["setting"] == "dataset=csbm, architecture=sgc" for c in cells)
  rows = runner.read_results_csv(os.path.join(root, "experiments", "scaling", "results.csv"))
  assert {r["group"] for r in rows} >= {"nano", "micro", "tiny"}
  committed = scaling.summarize(rows, bootstrap=0)
  assert set(committed["bf16"]["seeds"]) == {3}  # the committed three-seed rerun
  # One seed's rows with a second seed each: one point per cell, with a spread.
  rows = [r for r in rows if int(r["seed"]) == 0]
  seeded = [*rows, *({**r, "seed": 1, "eval_loss": r["eval_loss"] + 0.01} for r in rows)]
  runner.write_csv(seeded, str(tmp_path / "results.csv"))
  summary = scaling.summarize(runner.sweep_rows(str(tmp_path)), bootstrap=0)
  assert set(summary["bf16"]["seeds"]) == {2}
  assert all(s > 0 for s in summary["bf16"]["eval_loss_std"])
  with pytest.raises(ValueError, match="neither finished runs"):
    runner.sweep_rows(str(tmp_path / "nothing"))


def test_published_ratios_beside_ours(tmp_path):
  from bitjax.sweep import papers, plots, scaling

  published = papers.b158_perplexity_ratios()
  assert [p["size"] for p in published] == ["700M", "1.3B", "3B"]
  assert published[0]["ratio"] == pytest.approx(12.87 / 12.33)
  rows = [{"name": f"{g}-{p}", "group": g, "precision": p, "non_embedding_params": n,
           "tokens": 1e6, "train_flops": 1e12, "weight_memory_bits": n * (16 if p == "bf16" else 2),
           "eval_loss": loss}
          for g, n, losses in (("a", 1e5, (2.0, 2.1)), ("b", 2e5, (1.9, 1.95)))
          for p, loss in zip(("bf16", "b1.58"), losses)]
  ours = papers.perplexity_ratios(scaling.summarize(rows, bootstrap=0))
  assert [o["size"] for o in ours] == ["a", "b"]
  assert ours[0]["ratio"] == pytest.approx(math.exp(0.1))
  paths = plots.plot_ratio_beside_papers(ours, published, str(tmp_path), ours_label="ours",
                                         published_label="paper")
  assert [os.path.basename(p) for p in paths] == ["ratio_beside_papers.png",
                                                  "ratio_beside_papers.svg"]
  assert all(os.path.getsize(p) > 0 for p in paths)
