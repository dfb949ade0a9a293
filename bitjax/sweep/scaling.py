"""Scaling analysis of language-model sweeps: seed-averaged points per group (model size),
power-law fits per precision, ratios to the reference precision, the comparison at equal
weight memory, and the report's per-run and per-size tables.

Rows are the sweep's result rows; they are grouped by their explicit fields `group`,
`precision` and `tokens` (bitjax.sweep.spec.run_group), never by a config argument's name.
"""

from __future__ import annotations

import math
import os
from operator import itemgetter

import numpy as np

from bitjax.sweep import runner
from bitjax.sweep.fit import POWER_LAW, fit_chinchilla, fit_power_law, matching_param_ratio
from bitjax.sweep.intervals import welch_difference
from bitjax.sweep.table import Column, format_table

_ROW_NUMBERS = ("non_embedding_params", "tokens", "train_flops", "weight_memory_bits",
                "eval_loss")


def _row_numbers(row) -> dict[str, float]:
  """The numeric fields of one run row (CSV strings included), checked finite and positive."""
  if not isinstance(row, dict):
    raise ValueError(f"rows must hold dicts (one per run), got {row!r}")
  missing = [k for k in ("name", "precision", "group", *_ROW_NUMBERS) if k not in row]
  if missing:
    raise ValueError(f"rows: run {row.get('name', '?')!r} lacks {missing}")
  values = {}
  for key in _ROW_NUMBERS:
    try:
      values[key] = float(row[key])
    except (TypeError, ValueError):
      values[key] = math.nan
    if not (math.isfinite(values[key]) and values[key] > 0):
      raise ValueError(f"rows: run {row['name']!r} has {key}={row[key]!r}; "
                       f"it must be a finite positive number")
  return values


def _points(rows, reference: str) -> dict[str, list[dict]]:
  """Per precision (reference first), one point per (group, tokens), ordered by N.

  A point holds the seed means of the row numbers, the seed standard deviation of the
  loss (`eval_loss_std`, 0 for one seed) for error bars, the number of seeds and each
  seed's loss (`eval_losses`, for the fits' seed bootstrap).
  """
  if not rows:
    raise ValueError("rows must be a non-empty list of run rows")
  groups: dict[str, dict[tuple, list[dict]]] = {}
  for row in rows:
    values = _row_numbers(row)
    key = (str(row["group"]), values["tokens"])
    groups.setdefault(str(row["precision"]), {}).setdefault(key, []).append(values)
  points = {}
  for precision in sorted(groups, key=lambda p: p != reference):
    points[precision] = sorted(
        ({"group": group, "seeds": len(runs),
          **{k: float(np.mean([r[k] for r in runs])) for k in _ROW_NUMBERS},
          "eval_loss_std": float(np.std([r["eval_loss"] for r in runs],
                                        ddof=1 if len(runs) > 1 else 0)),
          "eval_losses": [r["eval_loss"] for r in runs]}
         for (group, _), runs in groups[precision].items()),
        key=lambda p: (p["non_embedding_params"], p["tokens"]))
  return points


def _largest_budget(points: list[dict]) -> list[dict]:
  """One point per group: the longest-trained one (an L(N) fit wants one budget per size)."""
  best = {}
  for point in points:
    if point["group"] not in best or point["tokens"] > best[point["group"]]["tokens"]:
      best[point["group"]] = point
  return sorted(best.values(), key=lambda p: p["non_embedding_params"])


def _fit_sizes(x, loss, bootstrap: int, seed: int, seed_losses=None):
  """The power law that the number of sizes allows, and a note when it is not the full one.

  Four or more sizes: a * x^-alpha + c. Three: the pure power law a * x^-alpha (c = 0),
  since three points cannot pin three coefficients. Fewer: no fit. With `seed_losses`
  the intervals come from resampling each size's seeds (fit.fit_power_law).
  """
  sizes = len(np.unique(x))
  if sizes < 3:
    return None, f"{sizes} size(s): no fit (a power law needs >= 3 sizes, >= 4 with c)"
  fit = fit_power_law(x, loss, offset=sizes >= 4, bootstrap=bootstrap, seed=seed,
                      seed_losses=seed_losses)
  if sizes == 3:
    return fit, "3 sizes: c fixed at 0 (fitting c as well needs >= 4 sizes)"
  return fit, None


def _equal_memory(precision: str, entry: dict, ref: dict, fit_note: str | None) -> list[dict]:
  """The precision's predicted loss at each of the reference's measured weight memories."""
  fit = entry["memory_fit"]
  memory = np.asarray(entry["weight_memory_bits"])
  records = []
  for group, bits, ref_loss in zip(ref["groups"], ref["weight_memory_bits"], ref["eval_loss"]):
    loss = float(fit.predict(bits)) if fit else math.nan
    records.append({
        "precision": precision, "reference": ref["reference"], "group": group,
        "weight_memory_bits": bits, "reference_loss": ref_loss, "loss": loss,
        "loss_ratio": loss / ref_loss,
        "extrapolated": not memory.min() <= bits <= memory.max(),
        "fit": fit.form if fit else fit_note})
  return records


def summarize(rows, reference: str = "bf16", *, bootstrap: int = 200, seed: int = 0) -> dict:
  """Per precision: seed-averaged points per group, power-law fits, and ratios to `reference`.

  The fits use non-embedding parameters N, as Kaplan et al. and DESIGN.md do: embeddings
  (and here the LM head) stay full precision at every preset, so N counts exactly the
  weights whose precision the sweep varies, and its power laws come out cleaner.
  Each entry holds:
    groups, non_embedding_params, tokens, train_flops, weight_memory_bits, eval_loss,
      eval_loss_std, seeds: per group (seed means; with several token budgets, the largest);
    fit: PowerLawFit of loss against N, or None (see notes);
    memory_fit: PowerLawFit of loss against weight_memory_bits (no intervals), or None;
    chinchilla: ChinchillaFit of L(N, D) when some group has several token budgets, else None;
    loss_ratio: {group: loss / reference loss} for the groups both precisions have;
    difference: {group: intervals.Difference} of the seed-mean loss minus the reference's,
      with its 95% Welch interval over seeds;
    matching_ratio: {reference group: N'/N} from matching_param_ratio (inf: never matches);
    equal_memory: equal_memory_comparison's records for this precision;
    notes: why a fit is missing or reduced, in words.
  A precision with too few sizes gets notes instead of an error, so small sweeps still report.
  """
  summary = {}
  for precision, all_points in _points(rows, reference).items():  # reference first
    per_group = _largest_budget(all_points)
    entry = {"reference": reference, "groups": [p["group"] for p in per_group]}
    for key in (*_ROW_NUMBERS, "eval_loss_std", "seeds"):
      entry[key] = [p[key] for p in per_group]
    n, memory, loss = (np.asarray(entry[k]) for k in
                       ("non_embedding_params", "weight_memory_bits", "eval_loss"))
    entry["fit"], note = _fit_sizes(n, loss, bootstrap, seed,
                                    seed_losses=[p["eval_losses"] for p in per_group])
    entry["memory_fit"], _ = _fit_sizes(memory, loss, 0, seed)  # same sizes, same note
    notes = [note] if note else []
    entry.update(chinchilla=None, loss_ratio={}, difference={}, matching_ratio={},
                 equal_memory=[], notes=notes)
    summary[precision] = entry
    if len(all_points) > len(per_group):
      notes.append("several token budgets per size: L(N) uses each size's largest")
      try:
        entry["chinchilla"] = fit_chinchilla(*([p[k] for p in all_points] for k in (
            "non_embedding_params", "tokens", "eval_loss")), bootstrap=bootstrap, seed=seed)
      except ValueError as e:
        notes.append(f"L(N, D): {e}")

    ref = summary.get(reference)
    if precision == reference:
      continue
    if ref is None:
      notes.append(f"no ratios: the reference precision {reference!r} is not in rows")
      continue
    ref_loss = dict(zip(ref["groups"], ref["eval_loss"]))
    entry["loss_ratio"] = {group: value / ref_loss[group]
                           for group, value in zip(entry["groups"], entry["eval_loss"])
                           if group in ref_loss}
    ref_at = {group: i for i, group in enumerate(ref["groups"])}
    entry["difference"] = {
        group: welch_difference(entry["eval_loss"][i], entry["eval_loss_std"][i],
                                entry["seeds"][i], ref["eval_loss"][ref_at[group]],
                                ref["eval_loss_std"][ref_at[group]], ref["seeds"][ref_at[group]])
        for i, group in enumerate(entry["groups"]) if group in ref_at}
    if ref["fit"] and entry["fit"] and entry["fit"].alpha > 0:
      ratios = matching_param_ratio(ref["fit"], entry["fit"], ref["non_embedding_params"])
      entry["matching_ratio"] = dict(zip(ref["groups"], map(float, ratios)))
    else:
      notes.append(f"no matching ratio: it needs fits with alpha > 0 for both {precision} "
                   f"and {reference}")
    entry["equal_memory"] = _equal_memory(precision, entry, ref, note)
  return summary


def equal_memory_comparison(rows, reference: str = "bf16") -> list[dict]:
  """Who wins at equal weight memory: each precision's loss at the reference's memory points.

  Per precision, loss is fitted as a power law in weight_memory_bits (seed means; see
  summarize for the sizes a fit needs), and evaluated at every weight memory the reference
  precision measured. One dict per (precision, reference group), reference excluded:
    precision, reference, group (the reference's), weight_memory_bits, reference_loss
    (measured), loss (the precision's fit there; nan without a fit), loss_ratio
    (loss / reference_loss: below 1, the precision wins at that memory), extrapolated
    (the memory lies outside the precision's measured range), fit (its form, or why none).
  """
  summary = summarize(rows, reference, bootstrap=0)
  if reference not in summary:
    raise ValueError(f"reference={reference!r} is not a precision in rows; "
                     f"they have {list(summary)}")
  return [record for entry in summary.values() for record in entry["equal_memory"]]


def _count(x: float) -> str:
  for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if x >= scale:
      return f"{x / scale:.3g}{unit}"
  return f"{x:.3g}"


def _with_interval(fit, name: str) -> str:
  value = f"{getattr(fit, name):.4g}"
  if name not in fit.intervals:
    return value
  lo, hi = fit.intervals[name]
  return f"{value} [{lo:.3g}, {hi:.3g}]"


RUN_COLUMNS = (
    Column("run", "<28", itemgetter("name")),
    Column("non-emb params", ">15", lambda r: f"{r['non_embedding_params']:,}"),
    Column("tokens", ">9", lambda r: f"{r['tokens'] / 1e6:.2f}M"),
    Column("TFLOPs", ">9", lambda r: f"{r['train_flops'] / 1e12:.2f}"),
    Column("val loss", ">10", lambda r: f"{r['eval_loss']:.4f}"),
    Column("val ppl", ">9", lambda r: f"{r['eval_perplexity']:.3f}"),
    Column("bits/byte", ">10", lambda r: f"{r['eval_bits_per_byte']:.4f}"),
    Column("weight MB", ">10", lambda r: f"{r['weight_memory_bits'] / 8e6:.3f}"),
)


def format_runs(rows: list[dict]) -> str:
  """One line per run, smallest first: parameters, tokens, compute, validation metrics."""
  return format_table(RUN_COLUMNS, sorted(
      rows, key=lambda r: (r["non_embedding_params"], r["precision"], r["name"])))


def _group_columns(reference: str) -> tuple[Column, ...]:
  """format_summary's per-size table, over the cells _group_cells gives."""
  widths = ("<10", "<14", ">8", ">9", ">17", ">9", ">8", ">8")
  headers = ("size", "precision", "N", "tokens", "loss", "/" + reference, "N'/N", "mem")
  return tuple(Column(h, w, itemgetter(i)) for i, (h, w) in enumerate(zip(headers, widths)))


def _group_cells(group: str, precision: str, entry: dict) -> list[str]:
  i = entry["groups"].index(group)
  memory = {r["group"]: r for r in entry["equal_memory"]}.get(group)
  loss = f"{entry['eval_loss'][i]:.4f}" + (
      f" +-{entry['eval_loss_std'][i]:.4f}" if entry["seeds"][i] > 1 else " " * 8)
  return [group, precision, _count(entry["non_embedding_params"][i]), _count(entry["tokens"][i]),
          loss,
          f"{entry['loss_ratio'][group]:.3f}" if group in entry["loss_ratio"] else "",
          f"{entry['matching_ratio'][group]:.3g}" if group in entry["matching_ratio"] else "",
          f"{memory['loss_ratio']:.3f}{'*' if memory['extrapolated'] else ''}"
          if memory and not math.isnan(memory["loss"]) else ""]


def format_summary(summary: dict) -> str:
  """A plain-text report: fitted exponents with 95% intervals, then ratios per size."""
  if not summary:
    raise ValueError("summary must be a non-empty summarize() result")
  reference = next(iter(summary.values()))["reference"]
  lines = ["Scaling fits: eval loss (nats/token) vs non-embedding parameters N, seeds averaged; "
           "[95% bootstrap interval]: seeds resampled within each size where sizes have "
           "several, else sizes resampled where there are more than the fit's minimum"]
  for precision, entry in summary.items():
    fit = entry["fit"]
    head = f"  {precision:<14}{len(entry['groups'])} sizes  "
    if fit is None:
      lines.append(head + "no fit")
      continue
    names = ("alpha", "a", "c") if fit.form == POWER_LAW else ("alpha", "a")
    lines.append(head + f"{fit.form}: " + ", ".join(f"{k} {_with_interval(fit, k)}"
                                                    for k in names))
    if entry["chinchilla"]:
      lines.append(f"  {'':<14}L(N, D) = E + A/N^alpha + B/D^beta: " + ", ".join(
          f"{k} {_with_interval(entry['chinchilla'], k)}" for k in ("E", "alpha", "beta")))
  for precision, entry in summary.items():
    lines.extend(f"  note ({precision}): {note}" for note in entry["notes"])

  lines += ["", f"Per size: loss = seed mean +- std over seeds; /{reference} = loss ratio; "
            f"N'/N = parameters needed to match {reference}'s loss (inf: never); "
            f"mem = loss ratio at {reference}'s weight memory (* extrapolated)"]
  ref_groups = next(iter(summary.values()))["groups"]
  groups = ref_groups + [g for e in summary.values() for g in e["groups"] if g not in ref_groups]
  cells = [_group_cells(group, precision, entry) for group in dict.fromkeys(groups)
           for precision, entry in summary.items() if group in entry["groups"]]
  lines.append(format_table(_group_columns(reference), cells, indent="  "))
  lines += ["", f"Loss minus {reference}'s per size: seed means, [95% Welch interval over "
            f"seeds]; 'not distinguishable' where the interval contains 0"]
  lines += [f"  {group:<10}{precision:<14}{entry['difference'][group].format()}"
            for group in dict.fromkeys(groups) for precision, entry in summary.items()
            if group in entry["difference"]]
  return "\n".join(lines)


def analyze(rows: list[dict], workdir: str) -> tuple[str, list[str]]:
  """The scaling report of language-model rows (runs table, fits, ratios per size) and
  the paths of its plots (loss against N, FLOPs and weight memory; training curves)."""
  from bitjax.sweep import plots

  summary = summarize(rows)
  out_dir = os.path.join(workdir, runner.PLOTS_DIR)
  paths = plots.plot_scaling(rows, summary, out_dir)
  paths += plots.plot_training_curves(runner.read_curves(workdir, [r["name"] for r in rows]),
                                      out_dir, rows=rows)
  return "\n".join([format_runs(rows), "", format_summary(summary)]), paths
