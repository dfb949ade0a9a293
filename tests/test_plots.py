"""Sweep plots: every figure is written as PNG and SVG, at the documented pixel size."""

import math
import os
import struct

import numpy as np
import pytest

from bitjax.sweep.scaling import summarize
from bitjax.sweep.plots import CURVES_FIGSIZE, DPI, FIGSIZE, plot_scaling, plot_training_curves

LAWS = {"bf16": (3.0, 0.5, 16.0), "b1.58": (3.9, 0.5, math.log2(3)), "1bit": (5.0, 0.45, 1.0)}


def make_rows(rng, sizes=4, seeds=2):
  """Synthetic sweep rows; 1bit gets two sizes only, too few for a fit."""
  rows = []
  for precision, (r0, alpha, bits) in LAWS.items():
    for i, n in enumerate(np.geomspace(1e6, 1e8, sizes)[:2 if precision == "1bit" else None]):
      for seed in range(seeds):
        loss = (r0 * (n / 1e6) ** -alpha + 0.7) * math.exp(rng.normal(0, 0.01))
        rows.append(dict(name=f"s{i}-{precision}-{seed}", precision=precision, group=f"s{i}",
                         seed=seed, params=n + 2**14, non_embedding_params=n, tokens=1e9,
                         train_flops=6e9 * n, eval_loss=loss, eval_perplexity=math.exp(loss),
                         eval_bits_per_byte=loss / math.log(2),
                         weight_memory_bits=bits * n + 16 * 2**14, wall_time_s=1.0))
  return rows


def make_curves(rng, rows):
  """metrics.jsonl records: noisy train loss every 20 steps, eval loss every 100."""
  curves = {}
  for row in rows:
    records = []
    for step in range(0, 501, 20):
      loss = row["eval_loss"] + 3.0 * math.exp(-step / 80)
      records.append({"step": step, "split": "train", "loss": loss * math.exp(rng.normal(0, 0.03)),
                      "learning_rate": 1e-3})
      if step and step % 100 == 0:
        records.append({"step": step, "split": "eval", "loss": loss, "perplexity": math.exp(loss),
                        "bits_per_byte": loss / math.log(2)})
    curves[row["name"]] = records
  return curves


def png_size(path):
  """(width, height) from the PNG header (the IHDR chunk follows the 8-byte signature)."""
  with open(path, "rb") as f:
    head = f.read(24)
  assert head[:8] == b"\x89PNG\r\n\x1a\n"
  return struct.unpack(">II", head[16:24])


def check_written(paths, names, figsize):
  assert sorted(paths) == sorted(f"{n}.{ext}" for n in names for ext in ("png", "svg"))
  for path in paths:
    assert os.path.getsize(path) > 1000, path
    if path.endswith(".png"):
      assert png_size(path) == (round(figsize[0] * DPI), round(figsize[1] * DPI))
    else:
      with open(path) as f:
        assert "<svg" in f.read(2000)


def test_plot_scaling_writes_three_figures(rng, tmp_path):
  rows = make_rows(rng)
  paths = plot_scaling(rows, summarize(rows, bootstrap=0), str(tmp_path / "plots"))
  check_written(paths, [str(tmp_path / "plots" / n) for n in
                        ("scaling_params", "scaling_flops", "scaling_memory")], FIGSIZE)


def test_plot_training_curves_with_and_without_rows(rng, tmp_path):
  rows = make_rows(rng, sizes=3, seeds=1)
  curves = make_curves(rng, rows)
  paths = plot_training_curves(curves, str(tmp_path), rows=rows)
  check_written(paths, [str(tmp_path / "training_curves")], CURVES_FIGSIZE)
  # Without rows the precision comes from the run name; an unknown one still gets a colour.
  curves["s0-int4-0"] = curves.pop("s0-1bit-0")
  paths = plot_training_curves(curves, str(tmp_path / "guessed"))
  check_written(paths, [str(tmp_path / "guessed" / "training_curves")], CURVES_FIGSIZE)


def test_plots_refuse_empty_input(tmp_path):
  with pytest.raises(ValueError, match="summary must be a non-empty"):
    plot_scaling([], {}, str(tmp_path))
  with pytest.raises(ValueError, match="curves must map at least one run"):
    plot_training_curves({}, str(tmp_path))
  with pytest.raises(ValueError, match=r"curves\['r'\]: every train record needs a 'step'"):
    plot_training_curves({"r": [{"split": "train", "loss": 1.0}]}, str(tmp_path))
