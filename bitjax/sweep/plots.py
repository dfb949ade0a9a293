"""Scaling and training-curve plots for sweeps, written as PNG and SVG.

Figures are built with matplotlib.figure.Figure, which renders through Agg without touching
pyplot's global backend or figure registry, so plotting is safe inside a training process.
Every plot draws a precision in the same colour and marker (STYLES).
"""

from __future__ import annotations

import io
import os

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from bitjax import files

STYLES = {  # precision: (colour, marker); full precision in blues, quantized in warm tones
    "fp32": ("#08306b", "v"),
    "bf16": ("#1f77b4", "o"),
    "fp16": ("#6baed6", "P"),
    "b1.58": ("#d62728", "s"),
    "b1.58-median": ("#9467bd", "D"),
    "b1.58-ln": ("#ff7f0e", "p"),  # the 2411.05882 layer, beside BitNet's b1.58
    "1bit": ("#2ca02c", "^"),
}
OTHER_STYLES = [("#8c564b", "X"), ("#e377c2", "<"), ("#7f7f7f", ">"), ("#bcbd22", "h"),
                ("#17becf", "*")]
FIGSIZE = (7.5, 5.0)  # inches; at DPI, 1125 x 750 pixels
CURVES_FIGSIZE = (13.0, 5.0)  # two panels; 1950 x 750 pixels
DPI = 150
EMA = 0.6  # train-loss smoothing: light, so spikes still show


def _styles(precisions) -> dict[str, tuple[str, str]]:
  """STYLES for the known precisions, OTHER_STYLES in order of appearance for the rest."""
  precisions = list(dict.fromkeys(precisions))
  unknown = [p for p in precisions if p not in STYLES]
  extra = {p: OTHER_STYLES[i % len(OTHER_STYLES)] for i, p in enumerate(unknown)}
  return {p: STYLES.get(p) or extra[p] for p in precisions}


def _table_order(precision: str) -> int:
  return list(STYLES).index(precision) if precision in STYLES else len(STYLES)


def _save(fig: Figure, out_dir: str, name: str) -> list[str]:
  """Write out_dir/name.png and .svg; out_dir may be a gs:// URL (rendered to memory, then
  written as one object: savefig cannot open a URL)."""
  files.makedirs(out_dir)
  paths = []
  for ext in ("png", "svg"):
    buffer = io.BytesIO()
    fig.savefig(buffer, format=ext, dpi=DPI)
    paths.append(os.path.join(out_dir, f"{name}.{ext}"))
    files.write_bytes(paths[-1], buffer.getvalue())
  return paths


def _decorate(ax, title: str, xlabel: str, ylabel: str) -> None:
  ax.set_title(title)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(True, which="major", alpha=0.35)
  ax.grid(True, which="minor", alpha=0.12)


def _plain_log_y(ax) -> None:
  """Log y with evenly stepped plain-number ticks: losses often span less than a factor of
  two, where decade ticks would leave the axis unlabelled."""
  ax.set_yscale("log")
  ax.yaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10]))
  ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
  ax.yaxis.set_minor_formatter(NullFormatter())


def _fit_label(precision: str, fit, note: str) -> str:
  if fit is None:
    return f"{precision} (no fit: {note})"
  alpha = f"α = {fit.alpha:.3f}"
  if "alpha" in fit.intervals:
    lo, hi = fit.intervals["alpha"]
    alpha += f" [{lo:.3f}, {hi:.3f}]"
  tail = f", c = {fit.c:.3g}" if fit.c else ", c = 0"
  return f"{precision}: {alpha}{tail}"


def _scaling_figure(rows, summary, x_key, fit_key, title, xlabel, name, out_dir) -> list[str]:
  """Seed means with seed-spread error bars, single runs faintly, fits dashed (if fit_key)."""
  fig = Figure(figsize=FIGSIZE, layout="constrained")
  ax = fig.add_subplot()
  styles = _styles(summary)
  handles = []
  for precision, entry in summary.items():
    color, marker = styles[precision]
    runs = [r for r in rows if str(r["precision"]) == precision]
    ax.scatter([float(r[x_key]) for r in runs], [float(r["eval_loss"]) for r in runs],
               s=10, color=color, alpha=0.3, linewidths=0, zorder=2)
    x = np.asarray(entry[x_key])
    ax.errorbar(x, entry["eval_loss"], yerr=entry["eval_loss_std"], color=color, marker=marker,
                markersize=6, capsize=3, linestyle="none" if fit_key else "-", linewidth=1,
                zorder=3)
    if fit_key is None:
      handles.append(Line2D([], [], color=color, marker=marker, label=precision))
      continue
    fit = entry[fit_key]
    if fit is not None:
      grid = np.geomspace(x.min() / 1.5, x.max() * 1.5, 200)
      ax.plot(grid, fit.predict(grid), color=color, linestyle="--", linewidth=1.4, zorder=1)
    note = f"{len(x)} size{'s' * (len(x) != 1)}"
    handles.append(Line2D([], [], color=color, marker=marker, linestyle="--",
                          label=_fit_label(precision, fit, note)))
  ax.set_xscale("log")
  _plain_log_y(ax)
  _decorate(ax, title, xlabel, "eval loss (nats/token)")
  ax.legend(handles=handles, fontsize=8.5, framealpha=0.9)
  return _save(fig, out_dir, name)


def plot_scaling(rows, summary: dict, out_dir: str) -> list[str]:
  """Loss against non-embedding parameters, training FLOPs and weight memory, per precision.

  `summary` is bitjax.sweep.scaling.summarize(rows): its seed means and spreads give the points
  and error bars, its fits the dashed curves (alpha and its 95% interval in the legend);
  `rows` add every single run as a faint dot. Returns the PNG and SVG paths.
  """
  if not summary:
    raise ValueError("summary must be a non-empty summarize() result")
  reduced = any(e["fit"] is not None and not e["fit"].c for e in summary.values())
  title = "Eval loss vs model size" + ("  (dashed: power-law fits; c = 0 where 3 sizes)"
                                       if reduced else "  (dashed: power-law fits)")
  return [
      *_scaling_figure(rows, summary, "non_embedding_params", "fit", title,
                       "non-embedding parameters N", "scaling_params", out_dir),
      *_scaling_figure(rows, summary, "train_flops", None, "Eval loss vs training compute",
                       "training compute (FLOPs)", "scaling_flops", out_dir),
      *_scaling_figure(rows, summary, "weight_memory_bits", "memory_fit",
                       "Eval loss vs weight memory  (dashed: power-law fits)",
                       "weight memory (bits)", "scaling_memory", out_dir),
  ]


def _ema(values: np.ndarray, decay: float) -> np.ndarray:
  """Bias-corrected exponential moving average (the first points are not pulled to zero)."""
  out = np.empty_like(values)
  acc = 0.0
  for i, v in enumerate(values):
    acc = decay * acc + (1 - decay) * v
    out[i] = acc / (1 - decay ** (i + 1))
  return out


def _series(name: str, records: list[dict], split: str) -> tuple[np.ndarray, np.ndarray]:
  picked = [r for r in records if r.get("split") == split and "loss" in r]
  if any("step" not in r for r in picked):
    raise ValueError(f"curves[{name!r}]: every {split} record needs a 'step'")
  picked.sort(key=lambda r: r["step"])
  return (np.array([r["step"] for r in picked], dtype=float),
          np.array([r["loss"] for r in picked], dtype=float))


def _run_labels(names, rows) -> dict[str, tuple[str, str, float]]:
  """Run name -> (precision, label, size order) from rows, or guessed from the name.

  Without rows a run's precision is the longest STYLES name inside its run name, and runs
  of one precision are shaded in name order.
  """
  by_name = {str(r["name"]): r for r in rows or ()}
  labels = {}
  for order, name in enumerate(sorted(names)):
    if name in by_name:
      row = by_name[name]
      labels[name] = (str(row["precision"]), f"{row['precision']} {row['group']}",
                      float(row["non_embedding_params"]))
    else:
      known = [p for p in STYLES if p in name]
      labels[name] = (max(known, key=len) if known else name, name, float(order))
  return labels


def _shade(color: str, rank: int, count: int) -> tuple:
  """The precision's colour, lightened for smaller sizes (rank 0) and full for the largest."""
  lighten = 0.6 * (1 - rank / (count - 1)) if count > 1 else 0.0
  rgb = np.array(mcolors.to_rgb(color))
  return tuple(rgb + (1 - rgb) * lighten)


def plot_training_curves(curves: dict[str, list[dict]], out_dir: str, rows=None) -> list[str]:
  """Train loss (EMA-smoothed) and eval loss against step, side by side.

  `curves` maps run names to their metrics.jsonl records. Colour is the precision; within
  a precision, smaller sizes are lighter. `rows` (the sweep's rows) name each run's precision
  and group; without them they are guessed from the run names. Seeds of one group share a
  legend entry. Returns the PNG and SVG paths.
  """
  if not curves:
    raise ValueError("curves must map at least one run name to its metrics records")
  labels = _run_labels(curves, rows)
  styles = _styles(p for p, _, _ in labels.values())
  sizes = {}  # precision (STYLES order first) -> {label: size order}
  for precision, label, order in sorted(labels.values(), key=lambda v: _table_order(v[0])):
    sizes.setdefault(precision, {})[label] = order
  ranks = {p: {label: i for i, label in enumerate(sorted(by, key=by.get))}
           for p, by in sizes.items()}

  fig = Figure(figsize=CURVES_FIGSIZE, layout="constrained")
  train_ax, eval_ax = fig.subplots(1, 2, sharey=True)
  handles = {}
  for name in sorted(curves, key=lambda n: (list(sizes).index(labels[n][0]), labels[n][2])):
    precision, label, _ = labels[name]
    color = _shade(styles[precision][0], ranks[precision][label], len(ranks[precision]))
    steps, loss = _series(name, curves[name], "train")
    if len(steps):
      train_ax.plot(steps, _ema(loss, EMA), color=color, linewidth=1.3)
    steps, loss = _series(name, curves[name], "eval")
    if len(steps):
      eval_ax.plot(steps, loss, color=color, marker=styles[precision][1], markersize=4,
                   linewidth=1.3)
    handles.setdefault(label, Line2D([], [], color=color, marker=styles[precision][1],
                                     label=label))
  for ax in (train_ax, eval_ax):
    _plain_log_y(ax)
  _decorate(train_ax, f"Training loss (EMA {EMA})", "step", "loss (nats/token)")
  _decorate(eval_ax, "Evaluation loss", "step", "loss (nats/token)")
  eval_ax.tick_params(labelleft=True)
  fig.legend(handles=list(handles.values()), loc="outside right upper", fontsize=8.5)
  return _save(fig, out_dir, "training_curves")


def precision_order(precisions) -> list[str]:
  """Distinct precisions, full precision first, in the order of STYLES."""
  return sorted(dict.fromkeys(precisions), key=_table_order)


def plot_task_comparison(cells: list[dict], out_dir: str) -> list[str]:
  """One panel per task, a group of bars per setting, one bar per precision: the mean
  over seeds with the standard deviation as error bar (cells from seed_table.seed_cells)."""
  tasks = list(dict.fromkeys(c["task"] for c in cells))
  precisions = precision_order(c["precision"] for c in cells)
  styles = _styles(precisions)
  cols = min(len(tasks), 3)
  rows = -(-len(tasks) // cols)
  fig = Figure(figsize=(5.2 * cols, 4.2 * rows), layout="constrained")
  width = 0.8 / len(precisions)
  for index, task in enumerate(tasks):
    ax = fig.add_subplot(rows, cols, index + 1)
    mine = [c for c in cells if c["task"] == task]
    settings = list(dict.fromkeys(c["setting"] for c in mine))
    metric = mine[0]["metric"]
    scale = 100.0 if metric == "accuracy" else 1.0
    lows = []
    for p_index, precision in enumerate(precisions):
      by_setting = {c["setting"]: c for c in mine if c["precision"] == precision}
      xs = [i + (p_index - (len(precisions) - 1) / 2) * width
            for i, s in enumerate(settings) if s in by_setting]
      means = [by_setting[s]["mean"] * scale for s in settings if s in by_setting]
      stds = [np.nan_to_num(by_setting[s]["std"]) * scale for s in settings if s in by_setting]
      lows += [m - d for m, d in zip(means, stds)]
      ax.bar(xs, means, width, yerr=stds, capsize=2, color=styles[precision][0],
             label=precision)
    ax.set_xticks(range(len(settings)), [s.replace(", ", "\n") for s in settings], fontsize=8)
    if lows:  # zoom in on the differences instead of starting at zero
      top = max(c["mean"] * scale + np.nan_to_num(c["std"]) * scale for c in mine)
      ax.set_ylim(min(lows) - 0.15 * (top - min(lows) + 1e-9), top + 0.1 * (top - min(lows)))
    _decorate(ax, task, "", "accuracy (%)" if scale == 100.0 else f"eval {metric}")
  fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside lower center",
             ncols=len(precisions))
  return _save(fig, out_dir, "small_models")


def plot_ratio_beside_papers(ours: list[dict], published: list[dict], out_dir: str,
                             *, ours_label: str, published_label: str) -> list[str]:
  """The b1.58 / BF16 perplexity ratio against parameters: ours (bitjax.sweep.papers
  perplexity_ratios: size, params, ratio; seed means) beside a paper's published points
  (b158_perplexity_ratios), in two marker styles on one log axis, with 1 (parity) drawn.
  The two sets differ in scale, data and training length; the labels say whose is whose."""
  fig = Figure(figsize=FIGSIZE, layout="constrained")
  ax = fig.add_subplot()
  for points, label, color, marker in ((ours, ours_label, STYLES["b1.58"][0], "s"),
                                       (published, published_label, "#555555", "*")):
    xs, ys = [p["params"] for p in points], [p["ratio"] for p in points]
    ax.plot(xs, ys, marker=marker, color=color, label=label, markersize=9)
    for p in points:
      ax.annotate(p["size"], (p["params"], p["ratio"]), textcoords="offset points",
                  xytext=(4, 6), fontsize=8)
  ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
  ax.set_xscale("log")
  _decorate(ax, "b1.58 / BF16 perplexity at the same size (below 1: b1.58 better)",
            "parameters", "perplexity ratio b1.58 / BF16")
  ax.legend(fontsize=8)
  return _save(fig, out_dir, "ratio_beside_papers")
